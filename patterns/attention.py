"""Attention patterns: SDPA in its post-grad forms and hand-written ``softmax(q @ k.T * scale + mask) @ v``.

What the post-grad ATen graph holds (printed from real models with a custom pass):

- ``F.scaled_dot_product_attention`` (HF ``sdpa`` attention, torchvision ViT's ``nn.MultiheadAttention``,
  and every hand-written form Inductor's joint-graph ``fuse_attention`` already recognised) is one node:
  ``_scaled_dot_product_flash_attention_for_cpu`` on the CPU; ``_scaled_dot_product_efficient_attention``,
  ``_scaled_dot_product_flash_attention`` or ``_scaled_dot_product_cudnn_attention`` on CUDA; its output
  is ``getitem(node, 0)``. Mask, scale and causality are read from the node's arguments.
- Hand-written attention that ``fuse_attention`` leaves alone (HF BERT and Llama ``eager``: the mask is
  built from the padding mask with ``where``; Llama repeats K/V heads with expand + reshape) stays as
  ``bmm -> reshape -> mul|div (scale) -> add|where (mask) -> [fp32 upcast] -> amax, sub, exp, sum, div ->
  [downcast] -> bmm``. The bmm operands are [B*H, S, D] reshapes of 4-D tensors; the pattern captures the
  reshapes and ``_unflatten`` looks through the expand/clone to the 4-D tensors, and ``_repeat_kv_source``
  through a repeat of K/V heads (the kernel indexes KV heads instead).

  Two more shapes of it: Inductor's joint graph rewrites ``softmax(s * c)`` with no mask so the scale
  follows the max subtraction (``_scaled_softmax_search``, traced), and SDPA's math path (no fused kernel
  applies) pre-scales q and k and zeroes rows with no key left (``zero_rows``).

Both are replaced by ``tritonfuse::attention``. Sites whose attention probabilities are used elsewhere
(``output_attentions=True``) do not match. Left to Inductor, with the reason counted: dropout, cuDNN SDPA
nodes (faster than ours, measured), unsupported head dims, dtypes or mask shapes.

Masks are read for what they are (``_read_mask``): a mask operand built from no graph input is computed at
compile time (``_constant_value``), so that HF's decoder mask without a KV cache (causal & a packed-sequence
test over its own positions, True everywhere) is seen to be exactly causal: the kernels get the causal flag
and no mask, and a site left to SDPA gets SDPA's ``is_causal`` instead of the mask (``_sdpa_without_mask``,
``_causal_without_mask``), the mask then not built at all.

In a training compile an SDPA forward's log-sum-exp feeds its backward op, and the post-grad passes see the
two in separate graphs. ``train_pattern_pass`` runs on the joint graph before AOTAutograd splits it (the
backend installs it as Inductor's ``joint_custom_post_pass``) and replaces each forward/backward pair together
by ``tritonfuse::attention_fwd`` and ``tritonfuse::attention_bwd``; on a GPU the pair is timed against SDPA's
forward and backward. A pair with dropout, a mask that gets a gradient, or outputs read elsewhere stays
Inductor's, with the reason.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
from typing import Optional

import torch
from torch._inductor.pattern_matcher import (
    CallFunction,
    CallFunctionVarArgs,
    Ignored,
    KeywordArg,
    MULTIPLE,
    Match,
    PatternMatcherPass,
    gen_pattern,
    register_graph_pattern,
)
from torch.fx.operator_schemas import normalize_function

from tritonfuse import registry
from tritonfuse.kernels import attention as K
from tritonfuse.patterns.common import fake_value, hinted_sizes, trace_pattern

FAMILY = "attention"
aten = torch.ops.aten
prims = torch.ops.prims

SDPA_OPS = tuple(
    getattr(aten, name).default
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_cudnn_attention",
    )
    if hasattr(aten, name)
)


# --- search patterns -----------------------------------------------------------------------------------


def _sdpa_pattern(op):
    # getitem(sdpa(...), 0): the op's other outputs (log-sum-exp, seeds) may have users; checked later
    return CallFunction(operator.getitem, CallFunctionVarArgs(op, users=MULTIPLE), 0)


def _flat(name: str):
    # a [B*H, S, D] operand of a bmm: reshape(expand(x4)) with or without a clone between them
    return CallFunction(aten.reshape.default, KeywordArg(name), Ignored())


def _handwritten_pattern(scale_op: str, mask_op: str, upcast: bool, downcast: bool, zero_rows: bool = False):
    # the chain up to softmax as (fn, args) steps; its last node has two users (amax and sub), three with
    # ``zero_rows``: SDPA's math decomposition then zeroes rows whose scores are all -inf (as our kernel does)
    users = 3 if zero_rows else 2
    steps = []
    if scale_op == "mul":
        steps.append((aten.mul.Tensor, lambda x: (x, KeywordArg("scale"))))
    elif scale_op == "div":
        steps.append((aten.div.Tensor, lambda x: (x, KeywordArg("scale"))))
    if mask_op == "add":
        steps.append((aten.add.Tensor, lambda x: (x, KeywordArg("mask"))))
    elif mask_op == "add_rev":
        steps.append((aten.add.Tensor, lambda x: (KeywordArg("mask"), x)))
    elif mask_op == "fill":
        # masked_fill(s, cond, value) -> where(cond, value, s)
        steps.append((aten.where.self, lambda x: (KeywordArg("cond"), KeywordArg("fill"), x)))
    elif mask_op == "window":
        # Swin's shifted windows: a bias, then the window mask added through a [B/nW, nW, H, S, S] view
        steps.append((aten.add.Tensor, lambda x: (x, KeywordArg("mask"))))
        steps.append((aten.reshape.default, lambda x: (x, Ignored())))
        steps.append((aten.add.Tensor, lambda x: (x, KeywordArg("wmask"))))
        steps.append((aten.reshape.default, lambda x: (x, Ignored())))
    if upcast:
        steps.append((prims.convert_element_type.default, lambda x: (x, Ignored())))
    s = CallFunction(aten.reshape.default, CallFunction(aten.bmm.default, _flat("q_flat"), _flat("k_flat")),
                     Ignored(), _users=1 if steps else users)
    for i, (fn, args) in enumerate(steps):
        s = CallFunction(fn, *args(s), _users=users if i == len(steps) - 1 else 1)
    # the post-grad decomposition of softmax(s, -1)
    amax = CallFunction(aten.amax.default, s, Ignored(), True)
    e = CallFunction(aten.exp.default, CallFunction(aten.sub.Tensor, s, amax), _users=2)
    p = CallFunction(aten.div.Tensor, e, CallFunction(aten.sum.dim_IntList, e, Ignored(), True))
    if zero_rows:
        live = CallFunction(aten.logical_not.default, CallFunction(aten.eq.Scalar, s, float("-inf")))
        dead = CallFunction(aten.logical_not.default, CallFunction(aten.any.dim, live, Ignored(), True))
        p = CallFunction(aten.where.self, dead, Ignored(), p)
    if downcast:
        p = CallFunction(prims.convert_element_type.default, p, Ignored())
    p = CallFunction(aten.reshape.default, CallFunction(aten.expand.default, p, Ignored()), Ignored())
    out = CallFunction(aten.bmm.default, p, _flat("v_flat"))
    return CallFunction(aten.reshape.default, out, Ignored())


def _scaled_softmax_search(scale_op: str, upcast: bool, downcast: bool, keep_nonfinite: bool):
    """softmax(s * c) @ v after Inductor's joint-graph ``mul_softmax_pattern``/``div_softmax_pattern`` moved the
    scale past the max subtraction (``keep_nonfinite``: the newer form that also keeps the plain expression
    for rows with non-finite scores). Traced into a pattern by ``gen_pattern``."""

    def search(q_flat, k_flat, v_flat, scale):
        B, H, S, D = q_flat.shape
        s = torch.bmm(q_flat.reshape(B * H, S, D), k_flat.reshape(B * H, D, S)).reshape(B, H, S, S)
        scaled = s * scale if scale_op == "mul" else s / scale
        inp = s
        if upcast:
            scaled, inp = scaled.float(), inp.float()
        inp = inp * 1
        shifted = inp - torch.amax(inp, dim=-1, keepdim=True)
        x = shifted * (1 * scale) if scale_op == "mul" else shifted / (1 * scale)
        if keep_nonfinite:
            original = scaled - torch.amax(scaled, dim=-1, keepdim=True)
            x = torch.where(torch.all(torch.isfinite(scaled), dim=[-1], keepdim=True), x, original)
        e = torch.exp(x)
        p = e / e.sum(dim=-1, keepdim=True)
        if downcast:
            p = p.half()
        out = torch.bmm(p.expand(B, H, S, S).reshape(B * H, S, S), v_flat.reshape(B * H, S, D))
        return out.reshape(B, H, S, D)

    return search


# --- graph helpers -------------------------------------------------------------------------------------


def _val(node) -> Optional[torch.Tensor]:
    v = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return v if isinstance(v, torch.Tensor) else None


def _unflatten(node: torch.fx.Node) -> Optional[torch.fx.Node]:
    """The 4-D tensor under ``[clone](expand(x4, x4.shape))`` feeding a bmm reshape, or None."""
    if isinstance(node, torch.fx.Node) and node.target == aten.clone.default:
        node = node.args[0]
    if not isinstance(node, torch.fx.Node) or node.target != aten.expand.default:
        return None
    src = node.args[0]
    v, e = _val(src), _val(node)
    if v is None or e is None or v.dim() != 4 or tuple(v.shape) != tuple(e.shape):
        return None
    return src


def _repeat_kv_source(node: torch.fx.Node, heads: int) -> torch.fx.Node:
    """x for ``reshape(clone(expand(unsqueeze(x, 2), [B, Hkv, n, S, D])), [B, Hkv*n, S, D])`` (HF repeat_kv),
    else ``node`` itself."""
    n = node
    if n.target != aten.reshape.default:
        return node
    n = n.args[0]
    if isinstance(n, torch.fx.Node) and n.target == aten.clone.default:
        n = n.args[0]
    if not isinstance(n, torch.fx.Node) or n.target != aten.expand.default:
        return node
    u = n.args[0]
    if not isinstance(u, torch.fx.Node) or u.target != aten.unsqueeze.default or u.args[1] != 2:
        return node
    x = u.args[0]
    xv, rv = _val(x), _val(node)
    if xv is None or rv is None or xv.dim() != 4:
        return node
    B, hkv, S, D = xv.shape
    # [B, Hkv, n, S, D] -> [B, Hkv * n, S, D]: KV head j serves query heads j*n .. j*n+n-1, as the kernel's
    # h // GROUP indexing
    if tuple(rv.shape) != (B, heads, S, D) or heads % hkv:
        return node
    return x


def _unrepeat(node: torch.fx.Node, heads: int) -> tuple[torch.fx.Node, Optional[torch.dtype]]:
    """(x, None) for a repeat of x's KV heads (``_repeat_kv_source``), (x, dtype) for a cast of one to dtype
    (autocast casts a repeated K whose RoPE made it fp32, not V), else (node, None)."""
    if node.target == prims.convert_element_type.default and isinstance(node.args[0], torch.fx.Node):
        src = _repeat_kv_source(node.args[0], heads)
        if src is not node.args[0]:
            return src, node.args[1]
    return _repeat_kv_source(node, heads), None


def _cast_val(val: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    # the value a cast of ``val`` to dtype has (None: no cast), layout kept as Inductor's cast keeps it
    return val if dtype is None else val.new_empty_strided(val.shape, val.stride(), dtype=dtype)


def _cast(t: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    return t if dtype is None else t.to(dtype)


def _scale_from_graph(match: Match, scale_op: str):
    """The scale constant of the matched mul/div nodes (all equal; the sign multiply by 1 aside), for
    matchers that drop scalar_workaround arguments from ``match.kwargs`` (torch 2.11)."""
    target = aten.mul.Tensor if scale_op == "mul" else aten.div.Tensor
    consts = {a for n in match.nodes if n.target == target for a in n.args[1:2]
              if isinstance(a, (int, float)) and not isinstance(a, bool) and a != 1}
    return consts.pop() if len(consts) == 1 else None


def _keep_of_additive_mask(node) -> Optional[torch.fx.Node]:
    """For an additive mask built as ``where(keep, 0, -inf)`` (HF's sdpa path), or ``where(~keep, -inf, 0)``
    (SDPA's own conversion of a bool mask on CUDA: ``zeros_like(mask).masked_fill(~mask, -inf)``), cast or
    not, the bool ``keep``: the kernel then reads 1 byte per score instead of 4. Finite fills (finfo.min) are kept
    additive: a row with every key masked averages V there, as eager does."""
    while isinstance(node, torch.fx.Node) and node.target in (prims.convert_element_type.default,
                                                              aten.clone.default):
        node = node.args[0]  # (a cast of 0 and -inf to the half dtype keeps them)
    if not isinstance(node, torch.fx.Node) or node.target != aten.where.self:
        return None
    cond, a, b = node.args[:3]
    keep = _val(cond)
    if keep is None or keep.dtype != torch.bool:
        return None
    fills = []
    for x in (a, b):
        if isinstance(x, torch.fx.Node):
            fill = _val(x)  # one value, of a shape cond's covers (SDPA's zeros_like(mask) on CUDA)
            if fill is None or x.target not in (aten.full.default, aten.scalar_tensor.default) \
                    or not _broadcasts_into(fill.shape, keep.shape):
                return None
        fills.append(_scalar_fill(x))
    if any(isinstance(f, bool) or not isinstance(f, (int, float)) for f in fills):
        return None
    if fills == [0, float("-inf")]:
        return cond
    if fills == [float("-inf"), 0] and isinstance(cond, torch.fx.Node) \
            and cond.target in (aten.logical_not.default, aten.bitwise_not.default):
        return cond.args[0]
    return None


def _broadcasts_into(shape, into) -> bool:
    """A tensor of ``shape`` broadcasts to ``into`` without growing it."""
    try:
        return torch.broadcast_shapes(shape, into) == into
    except RuntimeError:
        return False


def _zero_offset(node: torch.fx.Node) -> bool:
    """``x + 0`` (Inductor leaves that offset on positions in CUDA graphs)."""
    return (node.target in (aten.add.Tensor, aten.add.Scalar) and len(node.args) == 2
            and isinstance(node.args[1], (int, float)) and node.args[1] == 0 and node.kwargs.get("alpha", 1) == 1)


def _nonnegative_positions(node) -> bool:
    """``node`` is ``arange(n)`` (iota from 0, step >= 0) under unsqueezes, expands and ``+ 0``: every value is
    >= 0."""
    while isinstance(node, torch.fx.Node) and (
            node.target in (aten.unsqueeze.default, aten.expand.default) or _zero_offset(node)):
        node = node.args[0]
    return (isinstance(node, torch.fx.Node) and node.target == prims.iota.default
            and node.kwargs.get("start", 0) == 0 and node.kwargs.get("step", 1) >= 0)


def _always_true(node) -> bool:
    """A bool operand that is True everywhere: ``full(True)``, ``position >= 0`` (HF's bidirectional mask
    function, ``q_idx >= 0``, which only gives the mask its query axis), or a tensor computed from no graph
    input that is True everywhere at this compile's sizes (``_constant_value``: HF's packed-sequence test
    ``seq[q] == seq[kv]`` when the positions are its own ``arange``, as without position ids)."""
    if not isinstance(node, torch.fx.Node):
        return node is True
    if node.target == aten.full.default:
        return node.args[1] is True
    if node.target == aten.ge.Scalar and node.args[1] == 0 and _nonnegative_positions(node.args[0]):
        return True
    if _ALL_TRUE not in node.meta:  # (computed once a graph for each mask leaf)
        with torch.utils._python_dispatch._disable_current_modes():  # (real tensors under a fake mode too)
            v = _constant_value(node)
            node.meta[_ALL_TRUE] = v is not None and v.dtype == torch.bool and bool(v.all())
    return node.meta[_ALL_TRUE]


CONSTANT_NUMEL = 1 << 28  # the largest tensor _constant_value computes (256 Mi elements: HF's b8 s4096 mask
# leaf, [8, 1, 4096, 4096] bools, takes about 0.2 s on a CPU core, once a graph)
CONSTANT_BYTES = 1 << 30  # the most bytes its tensors take together
CONSTANT_NODES = 256  # and the most nodes it runs
_ALL_TRUE = "tritonfuse_all_true"  # node.meta key: _always_true's verdict from _constant_value


def _constant_value(node: torch.fx.Node) -> Optional[torch.Tensor]:
    """The value of ``node`` when it depends on no graph input (placeholder or attribute), only on
    deterministic ATen ops of static sizes over integers and bools (iota, full, arithmetic, comparisons,
    indexing, cumsum, ...: what a mask is built from), computed on the CPU (the caller disables a fake
    mode; no floating-point step, whose last bits may differ from the GPU's); None where it does not, or
    where it would exceed ``CONSTANT_NUMEL`` elements in one tensor, ``CONSTANT_BYTES`` in all or
    ``CONSTANT_NODES`` nodes."""
    seen, stack = set(), [node]
    ok, nbytes = True, 0
    while stack and ok:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        v = n.meta.get("val")
        target = n.target
        ok = (n.op == "call_function" and isinstance(target, torch._ops.OpOverload)
              and not target._schema.is_mutable and torch.Tag.nondeterministic_seeded not in target.tags
              and not target._schema.name.split("::")[-1].startswith(("empty", "new_empty"))  # (no values)
              and isinstance(v, torch.Tensor) and all(isinstance(d, int) for d in v.shape)
              and not v.is_floating_point() and not v.is_complex()
              and v.numel() <= CONSTANT_NUMEL and len(seen) <= CONSTANT_NODES)
        nbytes += v.numel() * v.element_size() if ok else 0
        ok = ok and nbytes <= CONSTANT_BYTES
        stack.extend(n.all_input_nodes)
    if not ok:
        return None
    env = {}
    cpu = torch.device("cpu")

    def arg(a):
        if isinstance(a, torch.fx.Node):
            return env[a]
        return cpu if isinstance(a, torch.device) else a

    try:
        for n in [n for n in node.graph.nodes if n in seen]:  # (in graph order: operands first)
            out = n.target(*torch.fx.node.map_aggregate(n.args, arg), **torch.fx.node.map_aggregate(n.kwargs, arg))
            if not isinstance(out, torch.Tensor) or out.shape != n.meta["val"].shape:
                return None
            env[n] = out
    except Exception:  # an op that does not run so on the CPU: not treated as a constant
        return None
    return env[node]


def _and_leaves(node) -> list:
    """The operands of a tree of ``&`` (through expands), those that are True everywhere left out."""
    while isinstance(node, torch.fx.Node) and node.target == aten.expand.default:
        node = node.args[0]
    if isinstance(node, torch.fx.Node) and node.target in (aten.bitwise_and.Tensor, aten.logical_and.default):
        return [leaf for a in node.args[:2] for leaf in _and_leaves(a)]
    return [] if _always_true(node) else [node]


def _narrow_mask(mask_node, sq: int, sk: int):
    """A bool or additive mask that is the same for every query row but built at the scores' size, as HF's
    masks are (``where(expand(keep[B, 1, 1, Sk] & (q_idx >= 0)), 0, fill)``, materialised [B, 1, Sq, Sk]):
    (node, build, value, causal, empty_fill, fills) with ``node`` the bool keys-only tensor it is built from,
    ``build(node)`` the mask the kernel gets ([..., 1, Sk], read as one vector of keys per tile instead of a
    score-sized tensor: ``where(node, fills[0], fills[1])`` in dtype ``fills[2]`` for an additive mask, else
    ``node`` itself, ``fills`` None) and ``value`` a stand-in of that mask; None when the mask is not of that
    form.

    A mask that is also causal (HF's decoders with padding: ``keep & (kv_idx <= q_idx)``) gives ``causal``
    True: the kernel's causal flag then stands for that part (it skips the key blocks past the diagonal).
    A bool (-inf) one needs nothing more. An additive one with a finite fill (0 where kept; HF's on the
    GPU, -65536) gives that fill as ``empty_fill`` (else None): eager adds it to every score of a row that
    keeps no key, and such a row attends over all keys, which only ``attention_causal_padded`` reproduces."""
    mask = _val(mask_node)
    if mask is None or mask.dim() < 2 or mask.shape[-2] == 1:
        return None
    cond, fills = mask_node, None
    if mask.dtype != torch.bool:
        node = mask_node  # through casts and copies of the where (CUDA graphs cast SDPA's mask to its dtype)
        while isinstance(node, torch.fx.Node) and node.target in (
                prims.convert_element_type.default, aten.expand.default, aten.clone.default):
            node = node.args[0]
        if not isinstance(node, torch.fx.Node) or node.target != aten.where.self:
            return None
        cond = node.args[0]
        fills = [_scalar_fill(x) for x in node.args[1:3]]
        if not all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in fills):
            return None
    leaves = _and_leaves(cond)
    keys_only = [leaf for leaf in leaves if not _causal_cond(leaf, sq, sk)]
    causal = len(keys_only) < len(leaves)
    if len(keys_only) != 1 or not isinstance(keys_only[0], torch.fx.Node):
        return None
    empty_fill = None
    if causal and fills is not None:
        if fills[0] != 0 or not (math.isfinite(fills[1]) and fills[1] < 0):
            return None
        empty_fill = float(fills[1])
    keys = keys_only[0]
    kv = _val(keys)
    if kv is None or kv.dtype != torch.bool or kv.dim() > mask.dim() or (kv.dim() >= 2 and kv.shape[-2] != 1):
        return None
    if not _broadcasts_into(kv.shape, mask.shape):
        return None
    if fills is None:
        return keys, lambda m: m, kv, causal, None, None
    dtype = mask.dtype

    def build(m):
        yes = torch.full((), fills[0], dtype=dtype, device=m.device)
        no = torch.full((), fills[1], dtype=dtype, device=m.device)
        return torch.where(m, yes, no)

    return keys, build, kv.new_empty(kv.shape, dtype=dtype), causal, empty_fill, (fills[0], fills[1], dtype)


def _position_index(node, length: int, dim: int) -> bool:
    """Whether ``node`` is ``arange(length)`` (iota from 0, step 1) laid along ``dim`` (from the end) of a
    shape of ones: [1, 1, 1, S] as HF builds key positions, [S, 1] as SDPA's math path builds query ones;
    or such positions gathered from a batch of position rows (``_gathered_positions``)."""
    v = _val(node)
    if v is None or v.dim() < 2 or v.shape[dim] != length:
        return False
    if isinstance(node, torch.fx.Node) and node.target == aten.index.Tensor:
        return _gathered_positions(node, length, dim)
    if v.numel() != length:
        return False
    # unsqueezes, and ``+ 0`` (a zero offset; Inductor leaves it in on CUDA graphs)
    while isinstance(node, torch.fx.Node) and (node.target == aten.unsqueeze.default or _zero_offset(node)):
        node = node.args[0]
    return (isinstance(node, torch.fx.Node) and node.target == prims.iota.default and node.args[0] == length
            and node.kwargs.get("start", 0) == 0 and node.kwargs.get("step", 1) == 1)


def _gathered_positions(node, length: int, dim: int) -> bool:
    """``rows[b_idx, p_idx]`` with ``rows`` [B, n] holding ``arange(n)`` in every row (HF's mask functions
    index the batch's positions so: ``expand(arange(n)[None], [B, -1])`` when no position ids are given) and
    ``p_idx`` ``arange(length)`` laid along ``dim``: every batch's positions 0..length-1 there, whatever
    ``b_idx`` picks."""
    src, idx = node.args[0], node.args[1]
    if not isinstance(idx, (list, tuple)) or len(idx) != 2 or any(i is None for i in idx):
        return False
    if isinstance(src, torch.fx.Node) and src.target == aten.expand.default:
        src = src.args[0]
    if not (isinstance(src, torch.fx.Node) and src.target == aten.unsqueeze.default and src.args[1] == 0):
        return False
    iota = src.args[0]
    return (isinstance(iota, torch.fx.Node) and iota.target == prims.iota.default and iota.args[0] >= length
            and iota.kwargs.get("start", 0) == 0 and iota.kwargs.get("step", 1) == 1
            and _val(idx[1]) is not None and _val(idx[1]).numel() == length and _position_index(idx[1], length, dim))


def _implies_causal(mask_node, sq: int, sk: int) -> bool:
    """A bool mask that is ``causal & others`` (a user's; HF's decoder mask without a cache where its
    packed-sequence test ``seq[q] == seq[kv]`` is too large to compute at compile time): the kernels'
    causal flag may join it, the mask read as it is; it then skips the key blocks past the diagonal, a half
    of the work at Sq = Sk, where SDPA computes them under the mask. (Not an additive mask with a finite
    fill: a row without keys would attend over other keys with the flag.)"""
    mask = _val(mask_node)
    return (mask is not None and mask.dtype == torch.bool
            and any(_causal_cond(leaf, sq, sk) for leaf in _and_leaves(mask_node)))


def _read_mask(mask_node, q, k, is_causal: bool):
    """How the kernels read an SDPA site's mask (inference and training alike): (mask node, is_causal,
    ``_narrow_mask``'s reading or None). A causal mask built in the graph (HF Llama's sdpa path on CUDA)
    becomes the causal flag (no mask), as does a bool one whose other ``&`` operands are True everywhere
    (``_only_causal``); a -inf additive mask its bool; a bool mask with a causal leaf and others keeps the
    mask and gets the flag too (``_implies_causal``). The caller decides whether to take the narrowed
    padding mask (its ``empty_fill`` case needs ``attention_causal_padded``)."""
    if mask_node is None or q.dim() != 4 or k.dim() != 4:
        return mask_node, is_causal, None
    sq, sk = q.shape[2], k.shape[2]
    if not is_causal and _is_causal_mask(mask_node, sq, sk):
        return None, True, None
    mask_node = _keep_of_additive_mask(mask_node) or mask_node
    mask = _val(mask_node)
    if mask is not None and mask.dtype == torch.bool and _only_causal(mask_node, sq, sk):
        return None, True, None
    narrow = _narrow_mask(mask_node, sq, sk)
    if narrow is None and _implies_causal(mask_node, sq, sk):
        is_causal = True
    return mask_node, is_causal, narrow


def _scalar_fill(x):
    """The value of a ``full``/``scalar_tensor`` node (how ``where``'s scalar operands are traced), or ``x``."""
    if isinstance(x, torch.fx.Node) and x.target == aten.full.default:
        return x.args[1]
    if isinstance(x, torch.fx.Node) and x.target == aten.scalar_tensor.default:
        return x.args[0]
    return x


def _leading_unsqueeze(node: torch.fx.Node) -> bool:
    """An unsqueeze that adds a dimension before the last two (a batch or head axis of a mask)."""
    if node.target != aten.unsqueeze.default or _val(node) is None:
        return False
    rank = _val(node).dim()
    d = node.args[1] if node.args[1] >= 0 else node.args[1] + rank
    return d < rank - 2


def _is_causal_mask(node, sq: int, sk: int) -> bool:
    """``where(key_pos <= query_pos, 0, very negative)`` as HF's eager path builds it without padding: exactly
    SDPA's top-left causal mask (every row keeps its diagonal, so finite fills change nothing)."""
    while isinstance(node, torch.fx.Node) and (
            node.target in (prims.convert_element_type.default, aten.expand.default) or _leading_unsqueeze(node)):
        node = node.args[0]  # the mask broadcast over batch and heads
    if not isinstance(node, torch.fx.Node) or node.target != aten.where.self:
        return False
    cond, a, b = node.args[:3]
    fills = [_scalar_fill(x) for x in (a, b)]
    if fills[0] != 0 or not isinstance(fills[1], (int, float)) or fills[1] > -1e4:
        return False
    return _only_causal(cond, sq, sk)


def _only_causal(cond, sq: int, sk: int) -> bool:
    """A bool mask that is SDPA's top-left causal mask: ``_causal_cond``, alone or ``&`` operands that are True
    everywhere (SDPA's math path: ``logical_and(causal, full(True))``; HF Llama without a cache: ``causal &
    seq[q] == seq[kv]`` over its own positions)."""
    leaves = _and_leaves(cond)
    return bool(leaves) and all(_causal_cond(leaf, sq, sk) for leaf in leaves)


def _causal_cond(cond, sq: int, sk: int) -> bool:
    """``cond`` is ``key_pos <= query_pos`` (or a mirrored form) over positions from 0: SDPA's top-left causal
    mask as a bool tensor."""
    if isinstance(cond, torch.fx.Node) and cond.target in (aten.le.Scalar, aten.ge.Scalar) and cond.args[1] == 0:
        # SDPA's math path: (key_pos - query_pos) <= 0, or (query_pos - key_pos) >= 0
        diff = cond.args[0]
        if not isinstance(diff, torch.fx.Node) or diff.target != aten.sub.Tensor:
            return False
        key, query = diff.args[:2] if cond.target == aten.le.Scalar else diff.args[1::-1]
    elif isinstance(cond, torch.fx.Node) and cond.target in (aten.le.Tensor, aten.ge.Tensor):
        # HF: key_pos <= query_pos, or query_pos >= key_pos
        key, query = cond.args[:2] if cond.target == aten.le.Tensor else cond.args[1::-1]
    else:
        return False
    return _position_index(key, sk, -1) and _position_index(query, sq, -2)


def _merges_batch_heads(match: Match, captured: torch.fx.Node, x4: torch.fx.Node) -> bool:
    """The matched reshape of ``captured`` is [B, H, S, D] -> [B*H, S, D] (the bmm batch is batch x heads)."""
    v = _val(x4)
    for u in captured.users:
        if u.target == aten.reshape.default and u in match.nodes and _val(u) is not None:
            return tuple(_val(u).shape) == (v.shape[0] * v.shape[1], v.shape[2], v.shape[3])
    return False


def _is_transpose_of_last(node: torch.fx.Node) -> bool:
    return node.target == aten.permute.default and list(node.args[1]) == [0, 1, 3, 2]


def _describe(q, k, mask, is_causal) -> str:
    B, H, Sq, D = q.shape
    m = "none" if mask is None else f"{tuple(mask.shape)} {str(mask.dtype).replace('torch.', '')}"
    return (f"B={B} Hq={H} Hkv={k.shape[1]} Sq={Sq} Sk={k.shape[2]} D={D} "
            f"{str(q.dtype).replace('torch.', '')} mask={m}{' causal' if is_causal else ''}")


def _mask_kind(mask) -> str:
    if mask is None:
        return "none"
    return "bool" if mask.dtype == torch.bool else str(mask.dtype).replace("torch.", "")


def _hinted(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A meta stand-in with the example sizes of a (possibly symbolic) fake tensor: checks read sizes without
    adding guards to a graph already traced. None when a size has no hint (data-dependent)."""
    sizes = hinted_sizes(t) if t is not None else None
    return None if sizes is None else torch.empty(sizes, dtype=t.dtype, device="meta")


def _decide(site: torch.fx.Node, q, k, v, mask, is_causal: bool, kernel: str, padded: bool = False,
            train: bool = False, fallback_note: str = "") -> bool:
    """Check the operands and probe the kernel variant (``padded``: ``attention_causal_padded``'s; ``train``:
    the forward that keeps its log-sum-exp and the backward, timed together); record the site either way
    (``fallback_note`` appended to the reason of one left to Inductor)."""
    detail = _describe(q, k, mask, is_causal)
    hq, hk, hv, hm = (_hinted(t) for t in (q, k, v, mask))
    if hq is None or hk is None or hv is None or (mask is not None and hm is None):
        reason = "data-dependent sizes"
    elif isinstance(q.shape[-1], torch.SymInt):
        reason = "symbolic head dim (the kernel's tile width is fixed per compile)"
    else:
        reason = K.unsupported(hq, hk, hv, hm, device=q.device)
    if reason is None:
        reason = K.probe(str(q.device), q.dtype, q.shape[-1], _mask_kind(mask), is_causal,
                         hk.shape[1] != hq.shape[1], K._use_decode(hq, hk, is_causal), padded=padded, train=train)
    if reason is None:
        # the hinted stand-ins are meta tensors: the site's own device is where it is timed
        rec = K.measure(hq, hk, hv, hm, is_causal, device=q.device, train=train)
        if not rec["use"]:
            reason = registry.slower_reason(rec, rec.get("vs", "SDPA"))
    return registry.settle(FAMILY, site, kernel, reason and reason + fallback_note, detail)


CAUSAL_NOTE = "; SDPA given the causal flag instead of its mask"
_SIMPLIFIED = "tritonfuse_sdpa_simplified"  # node.meta key: an SDPA node this pass made (not a new site)


def _set_arg(node: torch.fx.Node, name: str, value) -> None:
    """Set the argument ``name`` of an ATen op node in place, positional or keyword as the node has it."""
    names = [a.name for a in node.target._schema.arguments]
    i = names.index(name)
    if i < len(node.args):
        node.args = node.args[:i] + (value,) + node.args[i + 1:]
    else:
        node.kwargs = {**node.kwargs, name: value}


# SDPA takes K/V with fewer heads than Q (the A/B scripts turn it off); where a fused kernel serves them:
# kernels.attention.sdpa_takes_gqa
SDPA_GQA = K.SDPA_HAS_GQA


def _sdpa_takes_gqa(q: torch.Tensor) -> bool:
    return SDPA_GQA and K.sdpa_takes_gqa(q.device, q.dtype, q.shape[-1])


def _sdpa_without_mask(match: Match, q_node, k_node, v_node, scale, is_causal: bool, casts=(None, None)) -> None:
    """An inference SDPA site left to Inductor, without a mask once read (``_read_mask``): replaced by
    ``scaled_dot_product_attention(is_causal=...)`` without one, the SDPA the kernels' timing ran (the
    dispatcher then picks the fused kernel it picked there: without a mask, flash or cuDNN's on the GPU).
    Where the mask was exactly the causal one (``_read_mask`` dropped it, ``is_causal``), it is then not built
    at all, and SDPA's kernel skips the blocks past the diagonal.

    K and V with fewer heads than q (``_unrepeat``'s sources, cast by ``casts``) are given to SDPA with
    ``enable_gqa``: the graph's repeat of K and V is then not made. At llama-1b-prefill's attention (B8 H16/8
    S1024 D128, causal, bf16) on the H100, cuDNN took 0.0913 ms on the 8 K/V heads against 0.0939 on K/V
    repeated, and the repeat alone 0.084 ms (55th session, ``scripts/gqa_probe.py``); llama int8's forward on
    the H200 went from 20.55 to 20.10 ms."""
    graph = match.graph
    before = set(graph.nodes)
    gqa = {"enable_gqa": True} if _val(k_node).shape[1] != _val(q_node).shape[1] else {}

    def repl(q, k, v):
        k, v = _cast(k, casts[0]), _cast(v, casts[1])
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale, **gqa)

    match.replace_by_example(repl, [q_node, k_node, v_node])
    for n in graph.nodes:
        if n not in before and n.target in SDPA_OPS:
            n.meta[_SIMPLIFIED] = True


def _causal_without_mask(*nodes: torch.fx.Node) -> None:
    """A training SDPA forward and backward left to Inductor whose mask is exactly the causal one
    (``_read_mask`` dropped it): the ops get ``is_causal`` and no mask, as in the kernels' timing of SDPA.
    The mask is then not built at all, and SDPA's kernels skip the blocks past the diagonal."""
    for node in nodes:
        names = {a.name for a in node.target._schema.arguments}
        for name in ("attn_bias", "attn_mask"):
            if name in names:
                _set_arg(node, name, None)
        _set_arg(node, "is_causal", True)
        if "grad_input_mask" in names:  # (the efficient backward: no gradient of a mask it no longer has)
            norm = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
            _set_arg(node, "grad_input_mask", tuple(norm.kwargs["grad_input_mask"][:3]) + (False,))


# --- SDPA nodes ----------------------------------------------------------------------------------------


def _site_of(match: Match) -> torch.fx.Node:
    """The node a site is recorded on: the SDPA node (its output is ``getitem(node, 0)``), or the second bmm
    of a hand-written attention (its output is a reshape of it)."""
    return match.output_node().args[0]


def _sdpa_handler(match: Match, *args, **kwargs) -> None:
    getitem = match.output_node()
    node = _site_of(match)
    if node.meta.get(JOINT_SITE) or node.meta.get(_SIMPLIFIED):
        return  # the joint-graph pass recorded this training site (train_pattern_pass), or this pass made it
    kernel = "attention[sdpa]"
    norm = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
    if norm is None:
        return
    a = norm.kwargs
    q_node, k_node, v_node = a["query"], a["key"], a["value"]
    mask_node = a.get("attn_mask", a.get("attn_bias"))
    q, k, v = _val(q_node), _val(k_node), _val(v_node)
    if q is None or k is None or v is None:
        return
    given = mask_node
    mask_node, is_causal, narrow = _read_mask(mask_node, q, k, bool(a.get("is_causal", False)))
    dropped = given is not None and mask_node is None  # the mask is exactly the causal flag
    mask = _val(mask_node)
    if mask_node is not None and mask is None:
        return
    others = [u for u in node.users if u is not getitem]
    empty_fill = narrow[4] if narrow is not None else None
    if empty_fill is not None and (others or k.dim() != 4 or q.shape[2] != k.shape[2]
                                   or (narrow[2].dim() >= 3 and narrow[2].shape[-3] != 1)):
        # attention_causal_padded: inference, as many keys as queries, one key mask for all heads
        narrow = empty_fill = None
    build = (lambda m: m) if narrow is None else narrow[1]
    if narrow is not None:
        mask_node, mask, is_causal = narrow[0], narrow[2], is_causal or narrow[3]
    detail = _describe(q, k, mask, is_causal) if q.dim() == 4 and k.dim() == 4 else ""
    if empty_fill is not None:  # the op that also serves the rows without keys
        kernel = "attention[sdpa,causal_padded]"
    if others:
        registry.note_fallback(FAMILY, node, kernel, "log-sum-exp or RNG state used (training graph): left to "
                               "Inductor's SDPA forward/backward pair", detail)
        return
    if a.get("dropout_p", 0.0) not in (0, 0.0):
        registry.note_fallback(FAMILY, node, kernel, f"dropout_p={a['dropout_p']} (training)", detail)
        return
    k_cast = v_cast = None
    k_orig, v_orig = k_node, v_node
    if q.dim() == 4 and k.dim() == 4:
        (k_src, k_cast), (v_src, v_cast) = _unrepeat(k_node, q.shape[1]), _unrepeat(v_node, q.shape[1])
        if _val(k_src).shape[1] == _val(v_src).shape[1]:  # else only one is a visible repeat: both stay repeated
            k_node, v_node = k_src, v_src
            k, v = _cast_val(_val(k_node), k_cast), _cast_val(_val(v_node), v_cast)
        else:
            k_cast = v_cast = None
    if not _decide(node, q, k, v, mask, is_causal, kernel, padded=empty_fill is not None,
                   fallback_note=CAUSAL_NOTE if dropped else ""):
        # (k_node, v_node: the K/V heads unrepeated where the graph repeats them)
        gqa = mask_node is None and k_node is not k_orig and _sdpa_takes_gqa(q)
        if gqa:
            _sdpa_without_mask(match, q_node, k_node, v_node, a.get("scale"), is_causal, (k_cast, v_cast))
        elif dropped:
            _sdpa_without_mask(match, q_node, k_orig, v_orig, a.get("scale"), True)
        return
    scale = a.get("scale")
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    out_dtype = _val(getitem).dtype

    if mask_node is None:
        def repl(q, k, v):
            k, v = _cast(k, k_cast), _cast(v, v_cast)
            return torch.ops.tritonfuse.attention(q, k, v, None, scale, is_causal).to(out_dtype)

        match.replace_by_example(repl, [q_node, k_node, v_node])
    elif empty_fill is not None:
        def repl(q, k, v, m):
            k, v = _cast(k, k_cast), _cast(v, v_cast)
            return torch.ops.tritonfuse.attention_causal_padded(q, k, v, build(m), scale, empty_fill).to(out_dtype)

        match.replace_by_example(repl, [q_node, k_node, v_node, mask_node])
    else:
        def repl(q, k, v, m):
            k, v = _cast(k, k_cast), _cast(v, v_cast)
            return torch.ops.tritonfuse.attention(q, k, v, build(m), scale, is_causal).to(out_dtype)

        match.replace_by_example(repl, [q_node, k_node, v_node, mask_node])


# --- hand-written attention ----------------------------------------------------------------------------


def _make_handwritten_handler(scale_op: str, mask_op: str):
    kernel = "attention[handwritten]"

    def handler(match: Match, *args, **kwargs) -> None:
        out = match.output_node()
        site = _site_of(match)  # the second bmm
        q4, kt4, v4 = (_unflatten(kwargs[n]) for n in ("q_flat", "k_flat", "v_flat"))
        if q4 is None or kt4 is None or v4 is None:
            return
        if not all(_merges_batch_heads(match, kwargs[n], x4) for n, x4 in
                   (("q_flat", q4), ("k_flat", kt4), ("v_flat", v4))):
            return
        q = _val(q4)
        if tuple(_val(out).shape) != (*q.shape[:3], _val(v4).shape[-1]):
            return
        if scale_op == "none":
            scale = 1.0
        else:
            s = kwargs["scale"] if "scale" in kwargs else _scale_from_graph(match, scale_op)
            if not isinstance(s, (int, float)) or (scale_op == "div" and s == 0):
                return
            scale = float(s) if scale_op == "mul" else 1.0 / float(s)
        mask_node = kwargs.get("mask")
        cond_node, fill_node = kwargs.get("cond"), kwargs.get("fill")
        if mask_op in ("add", "add_rev") and _val(mask_node) is None:
            return  # a scalar added to the scores, not a mask
        bool_keep = None
        if mask_op == "fill":
            cond, fill = _val(cond_node), _val(fill_node)
            if cond is None or cond.dtype != torch.bool or fill is None or fill.dim() != 0:
                return
            # masked_fill(~m, -inf) is the bool mask m; any other fill value becomes an additive mask
            fill_value = fill_node.args[1] if fill_node.target == aten.full.default else None
            if (fill_value == float("-inf") and cond_node.target == aten.bitwise_not.default
                    and _val(cond_node.args[0]) is not None):
                bool_keep = cond_node.args[0]
        # k enters the first bmm transposed; SDPA's math path scales it after the transpose (q too: q4 keeps
        # its scale, k's moves into the kernel's) so the repeat of its heads is found under the scale
        if (kt4.target == aten.mul.Scalar and isinstance(kt4.args[1], (int, float))
                and not isinstance(kt4.args[1], bool) and _is_transpose_of_last(kt4.args[0])):
            scale *= float(kt4.args[1])
            kt4 = kt4.args[0]
        # under autocast the matmul casts the transposed K: the cast moves onto K below its repeat
        top_cast = None
        if (kt4.target == prims.convert_element_type.default and isinstance(kt4.args[0], torch.fx.Node)
                and _is_transpose_of_last(kt4.args[0])
                and _unrepeat(kt4.args[0].args[0], q.shape[1])[0] is not kt4.args[0].args[0]):
            top_cast, kt4 = kt4.args[1], kt4.args[0]
        k_node = kt4.args[0] if _is_transpose_of_last(kt4) else None
        k_src, k_cast = _unrepeat(k_node, q.shape[1]) if k_node is not None else (kt4, None)
        k_cast = k_cast or top_cast
        v_src, v_cast = _unrepeat(v4, q.shape[1])
        if _val(k_src).shape[1] != _val(v_src).shape[1]:
            # only one of K/V is a visible repeat: keep both repeated
            k_src, k_cast, v_src, v_cast = (k_node if k_node is not None else kt4), top_cast, v4, None
        k_val = _cast_val(_val(k_src) if k_node is not None else _val(kt4).transpose(-2, -1), k_cast)
        v = _cast_val(_val(v_src), v_cast)
        if mask_op == "window":
            _window_site(match, site, kernel, (q4, k_src, v_src), (q, k_val, v), mask_node, kwargs["wmask"],
                         scale, transposed=k_node is None, out_dtype=_val(out).dtype, casts=(k_cast, v_cast))
            return
        if mask_op == "fill":
            mask = _val(bool_keep) if bool_keep is not None else _val(cond_node)
            mask_val = mask if bool_keep is not None else mask.new_empty(mask.shape, dtype=_val(fill_node).dtype)
        # a causal mask written out as a tensor becomes the kernel's causal flag: no mask reads, half the work
        is_causal = mask_op in ("add", "add_rev") and _is_causal_mask(mask_node, q.shape[2], k_val.shape[2])
        if mask_op != "fill":
            if mask_op != "none":
                mask_node = _keep_of_additive_mask(mask_node) or mask_node
            mask_val = _val(mask_node) if mask_op != "none" else None
        use = "none" if is_causal else mask_op
        if is_causal:
            mask_val = None
        narrow = _narrow_mask(mask_node, q.shape[2], k_val.shape[2]) if use in ("add", "add_rev") else None
        if narrow is not None and narrow[4] is not None:
            # a causal + padding mask with a finite fill: its rows without keys stay eager's (a hand-written
            # softmax adds the fill in the model's dtype, whose rounding the kernel would not reproduce)
            narrow = None
        build = (lambda m: m) if narrow is None else narrow[1]
        if narrow is not None:
            mask_node, mask_val, is_causal = narrow[0], narrow[2], narrow[3]
        if not _decide(site, q, k_val, v, mask_val, is_causal, kernel):
            return
        out_dtype = _val(out).dtype
        transposed = k_node is None

        def attn(q, k, v, m):
            k, v = _cast(k, k_cast), _cast(v, v_cast)
            if transposed:
                k = k.transpose(-2, -1)
            return torch.ops.tritonfuse.attention(q, k, v, m, scale, is_causal).to(out_dtype)

        if use == "none":
            match.replace_by_example(lambda q, k, v: attn(q, k, v, None), [q4, k_src, v_src])
        elif use == "fill" and bool_keep is not None:
            match.replace_by_example(attn, [q4, k_src, v_src, bool_keep])
        elif use == "fill":
            def repl(q, k, v, cond, fill):
                return attn(q, k, v, torch.where(cond, fill, torch.zeros_like(fill)))

            match.replace_by_example(repl, [q4, k_src, v_src, cond_node, fill_node])
        else:
            match.replace_by_example(lambda q, k, v, m: attn(q, k, v, build(m)), [q4, k_src, v_src, mask_node])

    return registry.guarded(FAMILY, handler, _site_of)


def _window_site(match: Match, site, kernel: str, nodes, vals, bias_node, wmask_node, scale: float,
                 transposed: bool, out_dtype, casts=(None, None)) -> None:
    """Swin's shifted-window attention: scores [B', H, S, S] (B' = batch x nW windows) plus a bias broadcast
    over the windows, plus a window mask [1, nW, *, S, S] added through a [B'/nW, nW, H, S, S] view. The
    windows join the heads: q, k, v as [B'/nW, nW*H, S, D] and one [1, nW*H, S, S] mask of bias + window mask
    (small: it has no batch), then the output back to [B', H, S, D]."""
    q, k, v = vals
    bias, wmask = _val(bias_node), _val(wmask_node)
    add5 = next((n for n in match.nodes if n.target == aten.add.Tensor and wmask_node in n.args), None)
    if bias is None or wmask is None or add5 is None or _val(add5) is None or _val(add5).dim() != 5:
        return
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    Bn, nW = _val(add5).shape[:2]
    if tuple(_val(add5).shape) != (Bn, nW, H, Sq, Sk) or Bn * nW != B or k.shape[1] != H or v.shape[1] != H:
        return
    # no batch in either mask (each window's mask is the same for every image), else nothing to gain
    if bias.dim() > 4 or (bias.dim() == 4 and bias.shape[0] != 1) or (wmask.dim() == 5 and wmask.shape[0] != 1):
        registry.note_fallback(FAMILY, site, kernel, f"window masks {tuple(bias.shape)}, {tuple(wmask.shape)} "
                               "vary with the batch", _describe(q, k, None, False))
        return
    try:
        torch.broadcast_shapes(bias.shape, (1, H, Sq, Sk))
        torch.broadcast_shapes(wmask.shape, (1, nW, H, Sq, Sk))
    except RuntimeError:
        return
    dtype = torch.result_type(bias, wmask)
    joined = [t.new_empty((Bn, nW * H) + tuple(t.shape[2:])) for t in (q, k, v)]
    mask = q.new_empty((1, nW * H, Sq, Sk), dtype=dtype)
    if not _decide(site, *joined, mask, False, kernel):
        return

    def replacement(q, k, v, bias, wmask):
        bias, wmask = (t.reshape((1,) * (5 - t.dim()) + tuple(t.shape)) for t in (bias, wmask))
        m = (bias + wmask).expand(1, nW, H, Sq, Sk)
        k, v = _cast(k, casts[0]), _cast(v, casts[1])
        q, k, v = (t.reshape(Bn, nW * H, *t.shape[2:]) for t in (q, k, v))
        if transposed:
            k = k.transpose(-2, -1)
        out = torch.ops.tritonfuse.attention(q, k, v, m.reshape(1, nW * H, Sq, Sk), scale, False)
        return out.reshape(B, H, Sq, out.shape[-1]).to(out_dtype)

    match.replace_by_example(replacement, [*nodes, bias_node, wmask_node])


# --- training graphs: SDPA forward/backward pairs in the joint graph ------------------------------------
# In a training compile the post-grad passes see the forward and the backward graph apart: the forward's
# log-sum-exp (and RNG state) is saved for a backward op compiled later, so the forward cannot change alone.
# The joint graph (before AOTAutograd partitions it) holds both halves: each pair is replaced together by
# ``tritonfuse::attention_fwd`` (output and log-sum-exp) and ``tritonfuse::attention_bwd`` (dQ, dK, dV).

SDPA_BACKWARD = {
    fwd: getattr(aten, bwd).default
    for fwd_name, bwd in (
        ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward"),
        ("_scaled_dot_product_efficient_attention", "_scaled_dot_product_efficient_attention_backward"),
        ("_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_backward"),
        ("_scaled_dot_product_cudnn_attention", "_scaled_dot_product_cudnn_attention_backward"),
    )
    for fwd in [getattr(aten, fwd_name).default] if hasattr(aten, fwd_name) and hasattr(aten, bwd)
}
JOINT_SITE = "tritonfuse_joint_site"  # node.meta key: the joint-graph pass recorded this SDPA forward


def _through_aliases(node):
    while isinstance(node, torch.fx.Node) and node.target in (aten.alias.default, aten.detach.default):
        node = node.args[0]
    return node


def _getitems(node: torch.fx.Node) -> Optional[dict]:
    """index → getitem node for each user of a multi-output node; None if a user is not a getitem."""
    out = {}
    for u in node.users:
        if u.target is not operator.getitem or not isinstance(u.args[1], int):
            return None
        out[u.args[1]] = u
    return out


def _train_site_of(match: Match) -> torch.fx.Node:
    return _train_site_of_node(match.output_node())


def _train_pair(bwd: torch.fx.Node):
    """(forward node, its normalized kwargs, the backward's) for an SDPA backward node, or Nones where its
    log-sum-exp is not its own forward's (the forward's post-grad pass then records that site)."""
    fwd = _train_site_of_node(bwd)
    if fwd is bwd or SDPA_BACKWARD.get(fwd.target) != bwd.target:
        return None, None, None
    f = normalize_function(fwd.target, fwd.args, fwd.kwargs, normalize_to_only_use_kwargs=True)
    b = normalize_function(bwd.target, bwd.args, bwd.kwargs, normalize_to_only_use_kwargs=True)
    if f is None or b is None:
        return None, None, None
    return fwd, f.kwargs, b.kwargs


def _train_site_of_node(bwd: torch.fx.Node) -> torch.fx.Node:
    """The SDPA forward of a backward node (its log-sum-exp argument is ``getitem(forward, 1)``), else the
    backward itself."""
    norm = normalize_function(bwd.target, bwd.args, bwd.kwargs, normalize_to_only_use_kwargs=True)
    lse = norm.kwargs.get("logsumexp") if norm is not None else None
    return lse.args[0] if isinstance(lse, torch.fx.Node) and lse.target is operator.getitem else bwd


def _sdpa_train_handler(match: Match, *args, **kwargs) -> None:
    bwd = match.output_node()
    fwd, a, b = _train_pair(bwd)
    if fwd is None:
        return
    kernel = "attention[sdpa,train]"
    fwd.meta[JOINT_SITE] = True
    q_node, k_node, v_node = a["query"], a["key"], a["value"]
    mask_node = a.get("attn_mask", a.get("attn_bias"))
    q, k, v = _val(q_node), _val(k_node), _val(v_node)
    if q is None or k is None or v is None:
        registry.note_fallback(FAMILY, fwd, kernel, "operands without values")
        return
    is_causal = bool(a.get("is_causal", False))
    detail = _describe(q, k, _val(mask_node), is_causal) if q.dim() == 4 and k.dim() == 4 else ""
    outs, grads = _getitems(fwd), _getitems(bwd)
    reason = None
    if a.get("dropout_p", 0.0) not in (0, 0.0) or b.get("dropout_p", 0.0) not in (0, 0.0):
        reason = f"dropout_p={a.get('dropout_p')} (training with attention dropout)"
    elif outs is None or grads is None or 0 not in outs or 1 not in outs:
        reason = "an SDPA output read other than by index"
    elif (b["query"], b["key"], b["value"]) != (q_node, k_node, v_node) \
            or b.get("attn_mask", b.get("attn_bias")) is not mask_node:
        reason = "the backward reads other operands than its forward"
    elif _through_aliases(b["out"]) is not outs[0]:
        reason = "the backward reads another output than its forward's"
    elif any(u is not bwd for i, g in outs.items() if i != 0 for u in g.users):
        reason = "the log-sum-exp or RNG state is read outside the backward"
    elif any(i > 2 and g.users for i, g in grads.items()):
        reason = "the mask's gradient is used (a learned attention bias)"
    if reason is not None:
        registry.note_fallback(FAMILY, fwd, kernel, reason, detail)
        return
    given = mask_node
    mask_node, is_causal, narrow = _read_mask(mask_node, q, k, is_causal)
    dropped = given is not None and mask_node is None  # the mask is exactly the causal flag
    mask = _val(mask_node)
    if mask_node is not None and mask is None:
        registry.note_fallback(FAMILY, fwd, kernel, "a mask without a value", detail)
        return
    fills = None
    # a padding mask built at the scores' size as its keys, as at inference; not a causal one with a finite
    # fill: its rows without keys need attention_causal_padded, which has no backward
    if narrow is not None and narrow[4] is None:
        mask_node, mask, is_causal, fills = narrow[0], narrow[2], is_causal or narrow[3], narrow[5]
    if q.dim() == 4 and k.dim() == 4:
        detail = _describe(q, k, mask, is_causal)
    if not _decide(fwd, q, k, v, mask, is_causal, kernel, train=True, fallback_note=CAUSAL_NOTE if dropped else ""):
        if dropped:
            _causal_without_mask(fwd, bwd)
        return
    scale = a.get("scale")
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    _replace_train_pair(fwd, bwd, outs, grads, b, q_node, k_node, v_node, mask_node, scale, is_causal, fills)


def _replace_train_pair(fwd, bwd, outs, grads, b, q_node, k_node, v_node, mask_node, scale, is_causal,
                        fills=None) -> None:
    """The surgery: new nodes first (values from the ops' fake implementations), then the uses moved, then
    the SDPA nodes erased. ``fills``: ``mask_node`` is a bool keys mask and the kernels get the additive mask
    ``where(mask_node, fills[0], fills[1])`` of dtype ``fills[2]`` (``_narrow_mask``)."""
    from torch._guards import detect_fake_mode

    graph = fwd.graph
    dout = b["grad_out" if "grad_out" in b else "grad_out_"]  # (the efficient backward's name)
    fake = detect_fake_mode([v for v in (_val(n) for n in (q_node, k_node, v_node, dout)) if v is not None])

    def call(target, args, val, kwargs=None):
        node = graph.call_function(target, args, kwargs)
        node.meta.update({k: fwd.meta[k] for k in ("stack_trace", "nn_module_stack") if k in fwd.meta})
        node.meta["val"] = val
        return node

    if fills is not None:
        keys = _val(mask_node)
        const = dict(dtype=fills[2], device=keys.device)
        with fake or contextlib.nullcontext():
            c_vals = [torch.full((), f, **const) for f in fills[:2]]
            m_val = torch.where(keys, *c_vals)
        with graph.inserting_before(fwd):
            c_nodes = [call(aten.full.default, ([], f), c, const) for f, c in zip(fills[:2], c_vals)]
            mask_node = call(aten.where.self, (mask_node, *c_nodes), m_val)
    vals = [_val(n) for n in (q_node, k_node, v_node, mask_node, dout)]
    ops = torch.ops.tritonfuse
    with fake or contextlib.nullcontext():
        o_val, lse_val = ops.attention_fwd.default(*vals[:4], scale, is_causal)
        grad_vals = ops.attention_bwd.default(vals[4], *vals[:3], o_val, lse_val, vals[3], scale, is_causal)

    with graph.inserting_before(fwd):
        res = call(ops.attention_fwd.default, (q_node, k_node, v_node, mask_node, scale, is_causal), (o_val, lse_val))
        o = call(operator.getitem, (res, 0), o_val)
        lse = call(operator.getitem, (res, 1), lse_val)
    with graph.inserting_before(bwd):
        gres = call(ops.attention_bwd.default, (dout, q_node, k_node, v_node, o, lse, mask_node, scale, is_causal),
                    tuple(grad_vals))
        new_grads = [call(operator.getitem, (gres, i), grad_vals[i]) for i in range(3)]
    outs[0].replace_all_uses_with(o)
    for i, g in grads.items():
        if i < 3:
            g.replace_all_uses_with(new_grads[i])
    for g in grads.values():
        graph.erase_node(g)
    alias = b["out"]
    graph.erase_node(bwd)
    while isinstance(alias, torch.fx.Node) and alias.target in (aten.alias.default, aten.detach.default) \
            and not alias.users:
        nxt = alias.args[0]
        graph.erase_node(alias)
        alias = nxt
    for g in outs.values():
        if not g.users:
            graph.erase_node(g)
    if not fwd.users:
        graph.erase_node(fwd)


def train_pattern_spec(graph_ops: frozenset) -> bool:
    """Whether a joint graph holding ``graph_ops`` may hold an SDPA forward/backward pair."""
    return any(op in graph_ops for op in SDPA_BACKWARD.values())


@functools.lru_cache(maxsize=None)
def train_pattern_pass() -> PatternMatcherPass:
    """The SDPA backward ops of a joint graph, each with its forward (``_sdpa_train_handler``)."""
    pm = _AttentionPass(pass_name="tritonfuse_attention_train")
    for op in SDPA_BACKWARD.values():
        register_graph_pattern(CallFunctionVarArgs(op), pass_dict=pm)(
            registry.guarded(FAMILY, _sdpa_train_handler, _train_site_of))
    return pm


# --- registration --------------------------------------------------------------------------------------


class _AttentionPass(PatternMatcherPass):
    """The patterns, then dead-code elimination: the expand/clone/repeat nodes the replacements looked
    through (outside the matched nodes) are dropped once nothing uses them."""

    def apply(self, gm):
        count = super().apply(gm)
        if count:
            graph = gm.graph if isinstance(gm, torch.fx.GraphModule) else gm
            graph.eliminate_dead_code()
        return count


def pattern_spec(graph_ops: frozenset, graph=None):
    """``()`` where a graph holding ``graph_ops`` may hold an attention site, None where it cannot: every
    pattern holds a fused SDPA op or a batched GEMM (tests/test_attention.py checks each one)."""
    return () if aten.bmm.default in graph_ops or any(op in graph_ops for op in SDPA_OPS) else None


@functools.lru_cache(maxsize=None)
def pattern_pass() -> PatternMatcherPass:
    """All attention patterns in one pass, built once per process."""
    pm = _AttentionPass(pass_name="tritonfuse_attention")
    for op in SDPA_OPS:
        register_graph_pattern(_sdpa_pattern(op), pass_dict=pm)(registry.guarded(FAMILY, _sdpa_handler, _site_of))
    for scale_op in ("mul", "div", "none"):
        for mask_op in ("add", "add_rev", "fill", "window", "none"):
            for upcast in (False, True):
                for downcast in (False, True):
                    register_graph_pattern(_handwritten_pattern(scale_op, mask_op, upcast, downcast), pass_dict=pm)(
                        _make_handwritten_handler(scale_op, mask_op))
    # SDPA's math decomposition (where no fused SDPA kernel applies): q and k pre-scaled, mask added, all in fp32
    for mask_op in ("add", "none"):
        register_graph_pattern(_handwritten_pattern("none", mask_op, False, False, zero_rows=True), pass_dict=pm)(
            _make_handwritten_handler("none", mask_op))
    for scale_op in ("mul", "div"):
        for upcast, downcast in ((False, False), (True, True), (False, True)):
            dtype = torch.float16 if upcast or downcast else torch.float32
            args = [torch.empty(2, 2, 8, 16, dtype=dtype), torch.empty(2, 2, 16, 8, dtype=dtype),
                    torch.empty(2, 2, 8, 16, dtype=dtype)]
            for keep_nonfinite in (True, False):
                search = _scaled_softmax_search(scale_op, upcast, downcast, keep_nonfinite)
                pattern = gen_pattern(search, args, trace_pattern, scalar_workaround={"scale": 0.1234})
                register_graph_pattern(pattern, pass_dict=pm)(_make_handwritten_handler(scale_op, "none"))
    return pm


# --- attention inputs read in place --------------------------------------------------------------------

# module switch (the A/B scripts; part of the graph-cache key, registry.switches). On the H200 (55th session,
# CUDA graphs) vit_b_16 int8 took 4.632 ms with it against 4.985 without, and its GPU tests passed
STRIDED_INPUTS = True

_VIEW_OPS = frozenset(
    op for op in (
        aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.permute.default,
        aten.transpose.int, aten.t.default, aten.select.int, aten.squeeze.default, aten.squeeze.dim,
        getattr(aten.squeeze, "dims", None), aten.unsqueeze.default, aten.slice.Tensor, aten.expand.default,
        aten.alias.default,
    ) if op is not None
)


def _attention_input_ops() -> tuple:
    """The inference attention ops whose q, k and v (arguments 0-2) may be any strided views with a dense last
    dimension: ours (the kernels take every stride) and SDPA's (Inductor copies an input whose strides the
    fused kernels cannot take, ``sdpa_constraint``)."""
    ours = tuple(getattr(torch.ops.tritonfuse, name).default for name in ("attention", "attention_causal_padded")
                 if hasattr(torch.ops.tritonfuse, name))
    return ours + SDPA_OPS


def _view_top(node):
    # the first node above ``node`` that is not a view op (``node`` itself if it is none)
    while isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in _VIEW_OPS:
        node = node.args[0]
    return node


_GEMMS = (aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default)


def _fixed_layout(x) -> bool:
    """A node whose output Inductor lays out as its example value says: a GEMM's or an op call's (ours; or one
    of their outputs). A pointwise node's layout Inductor may still choose, and a graph input's values a
    mutation may change before the attention reads them."""
    if isinstance(x, torch.fx.Node) and x.target is operator.getitem:
        x = x.args[0]
    return (isinstance(x, torch.fx.Node) and x.op == "call_function"
            and (x.target in _GEMMS or getattr(x.target, "namespace", None) == "tritonfuse"))


def _bias_parts(add):
    """``(gemm, reshape, bias)`` for ``add(reshape(gemm), bias)`` (the bias of a Linear on a 3-D input: a 2-D GEMM
    whose output a reshape keeps in rows, then a broadcast add): a bias-less GEMM, ``mm`` or a W8A8 op without
    activation, read by this add alone, and a 1-D bias of its dtype; else None."""
    if not (isinstance(add, torch.fx.Node) and add.target == aten.add.Tensor and len(add.args) == 2
            and not add.kwargs):
        return None
    for view, bias in (add.args, add.args[::-1]):
        if not (isinstance(view, torch.fx.Node) and view.target in (aten.reshape.default, aten.view.default)
                and isinstance(bias, torch.fx.Node) and len(view.users) == 1):
            continue
        gemm = view.args[0]
        if not isinstance(gemm, torch.fx.Node) or len(gemm.users) != 1:
            continue
        g, b, out = _val(gemm), _val(bias), _val(add)
        if (g is None or b is None or out is None or g.dim() != 2 or b.dim() != 1 or b.shape[0] != g.shape[1]
                or out.shape[-1] != g.shape[1] or not (g.dtype == b.dtype == out.dtype) or not g.is_contiguous()):
            continue
        if gemm.target == aten.mm.default:
            return gemm, view, bias
        ops = torch.ops.tritonfuse
        if (gemm.target in (ops.int8_linear.default, ops.int8_linear_prequant.default)
                and gemm.args[-3] is None and gemm.args[-2] == "none" and not gemm.kwargs):
            return gemm, view, bias
    return None


def _fold_bias(add: torch.fx.Node) -> torch.fx.Node:
    """``add(reshape(gemm), bias)`` (``_bias_parts``) as the GEMM with the bias in its epilogue (``addmm``, or
    the W8A8 op given ``b``), reshaped: one less pass over the output, which Inductor had fused into the copy
    of q/k/v that ``strided_inputs_pass`` drops. Returns the new GEMM node."""
    gemm, view, bias = _bias_parts(add)
    graph = add.graph
    with graph.inserting_before(add):
        if gemm.target == aten.mm.default:
            new = graph.call_function(aten.addmm.default, (bias, *gemm.args))
        else:
            args = list(gemm.args)
            args[-3] = bias
            new = graph.call_function(gemm.target, tuple(args))
        new.meta = {**gemm.meta, "val": fake_value(new)}
        shaped = graph.call_function(view.target, (new, view.args[1]))
        shaped.meta["val"] = fake_value(shaped)
    add.replace_all_uses_with(shaped)
    for n in (add, view, gemm):
        graph.erase_node(n)
    _refresh_views(shaped)  # (views of the new output: another attention op's inputs find it by their storage)
    return new


def _refresh_views(node: torch.fx.Node) -> None:
    for user in node.users:
        if user.target in _VIEW_OPS:
            user.meta["val"] = fake_value(user)
            _refresh_views(user)


def _static(t: torch.Tensor) -> bool:
    return all(isinstance(d, int) for d in (*t.shape, *t.stride(), t.storage_offset()))


def compose_strides(tshape, tstride, toff: int, fshape, fstride, foff: int):
    """Where ``F`` (``fshape``/``fstride``/``foff``, a view of ``C``, a contiguous copy of ``T``) reads ``T``'s
    storage: (strides, offset) such that ``as_strided(T's storage, fshape, strides, offset)`` holds ``F``'s
    elements, or None where no strides do.

    ``C``'s offsets are mixed-radix numbers whose digits are ``T``'s indices (size-1 dims dropped; adjacent
    dims merged where ``T``'s strides make them one). ``F`` is strided in ``T`` when each of its dims steps
    one digit by a whole multiple and no digit ever carries: then each digit, and so ``T``'s offset, is
    affine in ``F``'s indices. (MultiheadAttention's packed q/k/v: ``[S, B, 3E]`` made ``[3, S, B, E]``
    contiguous, each of q/k/v viewed as ``[B*H, S, D]`` then ``[B, H, S, D]``, are strided views of the
    projection's output; its ``.contiguous()`` is a copy the attention need not read.)"""
    digits = []  # [size, stride in T, stride in C], outermost first
    numel = 1
    for size in tshape:
        numel *= size
    cstride = numel
    for size, ts in zip(tshape, tstride):
        cstride //= size
        if size == 1:
            continue
        if digits and digits[-1][1] == ts * size:  # the outer digit steps over this one whole in T too: merge
            digits[-1] = [digits[-1][0] * size, ts, cstride]
        else:
            digits.append([size, ts, cstride])
    if not 0 <= foff < max(numel, 1):
        return None
    base = [(foff // cs) % size for size, _, cs in digits]
    reach = [0] * len(digits)
    strides, span = [], 1
    for n, s in zip(fshape, fstride):
        if n == 1:
            strides.append(None)  # any stride: given below
            continue
        if s == 0:  # (an expand)
            strides.append(0)
            continue
        k = next((i for i, (size, _, cs) in enumerate(digits) if cs <= s < cs * size), None)
        if k is None or s % digits[k][2]:
            return None
        m = s // digits[k][2]
        reach[k] += m * (n - 1)
        strides.append(m * digits[k][1])
        span = max(span, strides[-1] * n)
    if any(b + r >= d[0] for b, r, d in zip(base, reach, digits)):
        return None
    offset = toff + sum(b * d[1] for b, d in zip(base, digits))
    return [span if s is None else s for s in strides], offset


def _strided_source(node):
    """``(x, strides, offset)`` for an attention input that is views of a contiguous copy (``clone``) of views
    of ``x`` where ``as_strided(x, shape, strides, offset)`` holds the same elements (``compose_strides``),
    else None. ``x`` is contiguous from offset 0 and laid out as its example value says (``_fixed_layout``),
    or a bias add to fold into its GEMM first (``_bias_parts``)."""
    clone = _view_top(node)
    if not (isinstance(clone, torch.fx.Node) and clone.target == aten.clone.default):
        return None
    x = _view_top(clone.args[0])
    if not (_fixed_layout(x) or _bias_parts(x) is not None):
        return None
    f, c, t, xv = _val(node), _val(clone), _val(clone.args[0]), _val(x)
    if any(v is None or not _static(v) for v in (f, c, t, xv)) or f.dim() == 0 or f.stride(-1) != 1:
        return None
    if not (c.is_contiguous() and c.storage_offset() == 0 and xv.is_contiguous() and xv.storage_offset() == 0):
        return None
    from torch.multiprocessing.reductions import StorageWeakRef

    def same_storage(a, b):
        return StorageWeakRef(a.untyped_storage()) == StorageWeakRef(b.untyped_storage())

    if not (same_storage(f, c) and same_storage(t, xv)):  # (a reshape that copied is no view)
        return None
    got = compose_strides(tuple(t.shape), t.stride(), t.storage_offset(), tuple(f.shape), f.stride(),
                          f.storage_offset())
    return None if got is None else (x, *got)


def _erase_dead_views(node) -> None:
    # the views and the copy an input was read through, once nothing reads them
    while (isinstance(node, torch.fx.Node) and not node.users
           and (node.target in _VIEW_OPS or node.target == aten.clone.default)):
        up = node.args[0]
        node.graph.erase_node(node)
        node = up


def strided_inputs_pass(graph: torch.fx.Graph) -> int:
    """Inference attention ops read q, k and v where a copy (``clone``) reordered them only to view them
    (MultiheadAttention's ``.contiguous()`` of its packed q/k/v projection): each such input becomes
    ``as_strided`` of the copy's source (``_strided_source``), and the copy goes where nothing else reads it.
    For SDPA's kernels Inductor realized the copy as one kernel per input (about 11 us each at vit_b_16's
    12608 x 768 on the H200, three a layer). Returns the inputs rewritten."""
    if not STRIDED_INPUTS or registry.training_graph():
        return 0
    ops = _attention_input_ops()
    made = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in ops:
            continue
        sources = {i: src for i, arg in enumerate(node.args[:3]) for src in [_strided_source(arg)] if src is not None}
        if not sources:
            continue
        views = {i: _val(x).as_strided(tuple(_val(node.args[i]).shape), strides, offset)
                 for i, (x, strides, offset) in sources.items()}
        val = fake_value(node, views)  # (first: a node whose new example value cannot be had stays as it is)
        folded = {}
        old = []
        for i, (x, strides, offset) in sources.items():
            if not _fixed_layout(x):  # (the bias add all three inputs read: folded once)
                x = folded[x] if x in folded else folded.setdefault(x, _fold_bias(x))
            with graph.inserting_before(node):
                view = graph.call_function(aten.as_strided.default,
                                           (x, list(views[i].shape), list(strides), offset))
            view.meta["val"] = views[i]
            old.append(node.args[i])
            node.update_arg(i, view)
        node.meta["val"] = val
        if isinstance(val, (tuple, list)):
            for user in node.users:
                if user.target is operator.getitem:
                    user.meta["val"] = val[user.args[1]]
        for arg in old:
            _erase_dead_views(arg)
        made += len(old)
    return made


# --- position tables stored once -----------------------------------------------------------------------

# module switch (the A/B scripts; part of the graph-cache key, registry.switches)
TABLES = True
# a table's reader has at least this many times its elements (it reads the table broadcast)
TABLE_FACTOR = 8
# elements its readers would compute the table's values for, at the least, to be worth a kernel of its own
TABLE_MIN_READS = 1 << 20
_TABLE_OPS = (aten.cos.default, aten.sin.default)


def _numel(node) -> Optional[int]:
    v = _val(node)
    if v is None or any(isinstance(s, torch.SymInt) for s in v.shape):
        return None
    return v.numel()


def tables_pass(graph: torch.fx.Graph) -> int:
    """Position tables computed once in a model and read broadcast by much larger tensors get stored once.

    HF's rotary embedding computes ``cos`` and ``sin`` of [1, S, D] once, and every layer's q and k
    ([B, H, S, D]) multiply by them. Inductor inlines such a pointwise table into each reader, so every
    element of q and k computes its own cos and sin. Those are libdevice calls with a range reduction.

    Seen on the H100 (54th session's profile, llama-1b-prefill int8): the RoPE kernels of q and of the
    repeated k took 53 and 52 us a layer. Their copies move about half the bytes in 21 us and 16 us.

    Each such table (``_TABLE_OPS``, then the same-sized pointwise ops and views below it) is marked with
    Inductor's ``inductor_realize_to_strides``, at its last op before a reader at least ``TABLE_FACTOR``
    times its size, so Inductor stores it (one small kernel) and the readers load it. A table whose readers
    compute fewer than ``TABLE_MIN_READS`` of its values is left inline. A stored table is rounded to its
    dtype as eager rounds it; inlined, Inductor keeps its casts' values in fp32 within the kernel. In
    training graphs the backward's recomputed tables are stored once too. Returns the nodes marked."""
    if not TABLES:
        return 0
    marked = 0
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in _TABLE_OPS:
            continue
        size = _numel(node)
        if not size:
            continue
        chain, todo, reads = {node}, [node], {}
        while todo:  # the table: the op, then users no larger than it
            n = todo.pop()
            for user in n.users:
                if user.op != "call_function":
                    continue
                numel = _numel(user)
                if numel is None:
                    continue
                if numel <= size:
                    if user not in chain:
                        chain.add(user)
                        todo.append(user)
                elif numel >= TABLE_FACTOR * size:  # a broadcast reader: the table is stored above it
                    top = n
                    while top.target in _VIEW_OPS and top.args[0] in chain:
                        top = top.args[0]
                    reads[top] = reads.get(top, 0) + numel
        for top, count in reads.items():
            if count >= TABLE_MIN_READS and not top.meta.get("inductor_realize_to_strides"):
                top.meta["inductor_realize_to_strides"] = True
                marked += 1
    return marked
