"""Helpers shared by the families' pattern modules."""

from __future__ import annotations

import re

import torch
from torch._inductor.pattern_matcher import Match, fwd_only


def trace_pattern(fn, args, **kwargs) -> torch.fx.GraphModule:
    """Trace a search or replacement function the way the post-grad graph looks.

    Inductor turns every ``view`` into ``reshape`` before its post-grad passes, so patterns do the same.
    """
    gm = fwd_only(fn, args, **kwargs)
    for node in gm.graph.find_nodes(op="call_function", target=torch.ops.aten.view.default):
        node.target = torch.ops.aten.reshape.default
    gm.recompile()
    return gm


def arg_val(match: Match, name: str):
    """The fake tensor (``meta["val"]``) of the pattern argument ``name``, or None."""
    node = match.kwargs.get(name)
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def module_name(node: torch.fx.Node) -> str:
    """The dotted name of the module a node came from (``layers.0.mlp.up_proj``), best effort."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    for prefix in ("L['self'].", "L__self__.", "self."):
        path = path.replace(prefix, "")
    return re.sub(r"\[(\d+)\]", r".\1", path).replace("['", ".").replace("']", "").strip(".")
