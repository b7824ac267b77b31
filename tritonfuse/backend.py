"""The ``tritonfuse`` torch.compile backend: Inductor with tritonfuse's pattern passes on the ATen graph.

``torch.compile(model, backend="tritonfuse")`` finds this through the ``torch_dynamo_backends`` entry point.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pathlib
import warnings

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

from . import config, registry
from .report import report, site_table


def _family_pass(family: str):
    """The family's PatternMatcherPass, or None while that family has no patterns module."""
    name = f"tritonfuse.patterns.{family}"
    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name).pattern_pass()


@torch.no_grad()
def _source_hash() -> str:
    # the graph cache must not reuse a graph compiled by other tritonfuse code
    h = hashlib.sha256()
    root = pathlib.Path(__file__).resolve().parent
    for d in (root, *(pathlib.Path(importlib.import_module(p).__file__).parent for p in
                      ("tritonfuse.patterns", "tritonfuse.kernels"))):
        for f in sorted(d.glob("*.py")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


_SOURCE_HASH = None


class TritonfusePasses(CustomGraphPass):
    """The pipeline: each enabled family's patterns, in order, on the post-grad ATen graph."""

    def __init__(self, families: tuple[str, ...]):
        self.families = families

    def __call__(self, graph: torch.fx.Graph) -> None:
        for family in self.families:
            try:
                pm = _family_pass(family)
                if pm is not None:
                    pm.apply(graph)
            except Exception as e:
                # each replacement is atomic: the graph stays valid, the family's other sites stay Inductor's
                if not config.fallback_enabled():
                    raise
                _warn_once(f"tritonfuse: the {family} pass failed ({type(e).__name__}: {e}); "
                           "its remaining sites are left to Inductor")

    def uuid(self) -> str:
        # part of Inductor's FX-graph cache key: other settings or other code never reuse this graph
        global _SOURCE_HASH
        if _SOURCE_HASH is None:
            _SOURCE_HASH = _source_hash()
        return hashlib.sha256(repr((sorted(config.snapshot().items()), _SOURCE_HASH)).encode()).hexdigest()


_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, stacklevel=3)


def _compile(gm, example_inputs, families):
    from torch._inductor.compile_fx import compile_fx

    patches = {"post_grad_custom_pre_pass": TritonfusePasses(families)} if families else {}
    return compile_fx(gm, example_inputs, config_patches=patches)


def tritonfuse_backend(gm: torch.fx.GraphModule, example_inputs, **kwargs):
    """Compile ``gm`` with Inductor plus tritonfuse's passes.

    Example::

        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU())
        >>> compiled = torch.compile(model, backend="tritonfuse")
        >>> y = compiled(torch.randn(8, 64))
    """
    config.validate()
    families = config.enabled_families()
    registry.begin_graph()
    try:
        compiled = _compile(gm, example_inputs, families)
        registry.end_graph()
    except Exception as e:
        if not families or not config.fallback_enabled():
            registry.end_graph()
            raise
        # retry with Inductor alone; if that fails too, the error is the model's and is raised as Inductor's
        reason = f"graph failed to compile with tritonfuse kernels ({type(e).__name__}); Inductor alone used"
        registry.end_graph(failed_reason=reason)
        compiled = _compile(gm, example_inputs, ())
        _warn_once(f"tritonfuse: {reason}: {e}")
    if config.log != "off":
        print(report())
        if config.log == "debug":
            print(site_table())
    return compiled
