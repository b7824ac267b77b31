"""Linear + activation patterns: ``act(linear(x, w, b))`` and the gated MLP ``act(x @ wg.T) * (x @ wu.T)``.

Each pattern is traced from plain PyTorch code by Inductor's pattern matcher, in fp32 and in fp16 (the
half-precision graph carries the fp32 upcast around GELU/SiLU), for 2-D inputs and for batched inputs
(the reshapes around ``addmm``). The replacement calls ``tritonfuse::linear_act`` or
``tritonfuse::gated_mlp``.

Each pattern is registered pre-traced (``search_fn_pattern``) with the sizes its trace burned in (reshape
sizes, the split size of a fused gate/up projection) and its dtypes left open; ``_consistent`` checks them
on the match instead. Inductor's own re-trace of the search function at the site's shapes fails on graphs
with symbolic shapes: every Linear's reshape there reads one shared ``s0 * s1`` size node, which the re-traced
pattern expects to have only its own users, so no Linear of a dynamic-shape graph (the second call of a
model with a new sequence length) was ever matched.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import operator
from typing import Optional

import torch
import torch.nn.functional as F
from torch._inductor.pattern_matcher import (
    CallFunction,
    Ignored,
    Match,
    MultiOutputPattern,
    PatternExpr,
    PatternMatcherPass,
    fx_to_pattern,
    register_replacement,
)
from torch.fx.experimental.symbolic_shapes import statically_known_true

from tritonfuse import config, inline, registry
from tritonfuse.patterns.common import (ACTIVATION_OPS, COMPUTED_WEIGHT, WEIGHT_VIEWS, arg_val, hinted,
                                        int8_weight_source, memo_trace, recorded_pattern, search_only,
                                        trace_pattern)
from tritonfuse.kernels import linear_act as K

FAMILY = "linear_act"
aten = torch.ops.aten


# activations as models write them out by hand, served by one of the kernel's activations
_HAND_WRITTEN = {
    # HF NewGELUActivation ("gelu_new": GPT-2, Phi-1/2, GPT-J, CodeGen): GELU's tanh approximation
    "gelu_new": "gelu_tanh",
    # HF BLOOM's bloom_gelu_forward: the same approximation, as Megatron-DeepSpeed writes it (its constant
    # 0.79788456 is sqrt(2/pi) to 8 digits: 8e-10 apart, below fp32's rounding)
    "gelu_bloom": "gelu_tanh",
}


def _act(y, act):
    if act == "gelu_new":
        return 0.5 * y * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (y + 0.044715 * torch.pow(y, 3.0))))
    if act == "gelu_bloom":
        return y * 0.5 * (1.0 + torch.tanh(0.79788456 * y * (1 + 0.044715 * y * y)))
    return K.act_ref(y, act)


def _kernel_act(act: str) -> str:
    return _HAND_WRITTEN.get(act, act)


# --- search and replacement functions ------------------------------------------------------------------


def _linear_act_pattern(act):
    def pattern(x, w, b):
        return _act(F.linear(x, w, b), act)

    return pattern


def _linear_act_nobias_pattern(act):
    def pattern(x, w):
        return _act(F.linear(x, w), act)

    return pattern


def _flat(x):
    return x.reshape(-1, x.shape[-1])


# The check of a match runs right before its replacement: it leaves here which kernel serves the site
# (the float kernels or, with TRITONFUSE_QUANT, the int8 ones, and whether x is quantized in the graph)
# for the replacement to call.
# quant: where a W8A8 site's rows are quantized: "graph" (ATen ops Inductor fuses into x's producer),
# "kernel" (the inlinable row-kernel op, for graph-constant sites) or "op" (inside the int8 op).
# lt: cuBLASLt's GEMM with the bias and activation in its epilogue serves the site (kernels.linear_act.linear_lt).
_serve = {"int8": None, "quant": "graph", "lt": False}


def _trace(fn, args, **kwargs) -> torch.fx.GraphModule:
    # a replacement reads how its check chose to serve the site (``_serve``): one trace per choice
    return memo_trace(trace_pattern, fn, args, state=tuple(sorted(_serve.items())), **kwargs)


def _quantized(x2):
    from tritonfuse.kernels import int8 as I8

    if _serve["quant"] == "graph":  # as graph ops: Inductor fuses them into the kernel that produces x
        return I8.quant_rows_ref(x2)
    return torch.ops.tritonfuse.int8_quant_rows(x2)


def _linear(x2, w, b, act):
    if _serve["lt"]:
        return K.linear_lt(x2, w, b, act)
    mode = _serve["int8"]
    if mode:
        from tritonfuse.kernels import int8 as I8
        if _serve["quant"] != "op" and I8.fused_quant(x2.shape[0], mode):
            xq, xs = _quantized(x2)
            return torch.ops.tritonfuse.int8_linear_prequant(xq, xs, w, b, act, x2.dtype)
        return torch.ops.tritonfuse.int8_linear(x2, w, b, act, mode)
    return torch.ops.tritonfuse.linear_act(x2, w, b, act)


def _gated(x2, wg, wu, bg, bu, act):
    act = _kernel_act(act)
    mode = _serve["int8"]
    if mode:
        from tritonfuse.kernels import int8 as I8
        if _serve["quant"] != "op" and I8.fused_quant(x2.shape[0], mode):
            xq, xs = _quantized(x2)
            return torch.ops.tritonfuse.int8_gated_mlp_prequant(xq, xs, wg, wu, bg, bu, act, x2.dtype)
        return torch.ops.tritonfuse.int8_gated_mlp(x2, wg, wu, bg, bu, act, mode)
    return torch.ops.tritonfuse.gated_mlp(x2, wg, wu, bg, bu, act)


def _linear_act_replacement(act):
    act = _kernel_act(act)

    def replacement(x, w, b):
        return _linear(_flat(x), w, b, act).reshape(*x.shape[:-1], w.shape[0])

    return replacement


def _linear_act_nobias_replacement(act):
    act = _kernel_act(act)

    def replacement(x, w):
        return _linear(_flat(x), w, None, act).reshape(*x.shape[:-1], w.shape[0])

    return replacement


# HF's Conv1D (GPT-2 and its descendants): ``addmm(b, x.view(-1, K), w)`` with the weight stored [K, N]


def _conv1d_act_pattern(act):
    def pattern(x, w, b):
        y = torch.addmm(b, x.reshape(math.prod(x.shape[:-1]), x.shape[-1]), w)
        return _act(y.reshape(*x.shape[:-1], w.shape[1]), act)

    return pattern


def _conv1d_act_replacement(act):
    act = _kernel_act(act)

    def replacement(x, w, b):
        return _linear(_flat(x), w.t(), b, act).reshape(*x.shape[:-1], w.shape[1])

    return replacement


# Training: the forward graph also returns the GEMM output (the activation's backward reads it) and,
# for batched inputs, the flattened input (the weight gradient reads it). The pattern returns them too.


def _linear_act_train_pattern(act, batched, has_bias, save_pre):
    def pattern(x, w, b=None):
        # concrete sizes: the matcher re-traces this with the site's shapes and compares constants
        x2 = x.reshape(math.prod(x.shape[:-1]), x.shape[-1]) if batched else x
        pre = torch.addmm(b, x2, w.t()) if has_bias else torch.mm(x2, w.t())
        y = _act(pre.reshape(*x.shape[:-1], w.shape[0]) if batched else pre, act)
        # the matcher anchors a multi-output pattern on its first output: the activation, the most specific
        return (y,) + ((pre,) if save_pre else ()) + ((x2,) if batched else ())

    return pattern if has_bias else (lambda x, w: pattern(x, w))


def _linear_act_train_replacement(act, batched, has_bias, save_pre):
    def replacement(x, w, b=None):
        x2 = _flat(x)
        if save_pre:
            pre, y = torch.ops.tritonfuse.linear_act_pre(x2, w, b, act)
        else:
            y = torch.ops.tritonfuse.linear_act(x2, w, b, act)
        if batched:
            y = y.reshape(*x.shape[:-1], w.shape[0])
        return (y,) + ((pre,) if save_pre else ()) + ((x2,) if batched else ())

    return replacement if has_bias else (lambda x, w: replacement(x, w))


def _gated_pattern(act, gate_first):
    # HF Llama: down(act(gate(x)) * up(x)); some models write the product the other way round
    def pattern(x, wg, wu):
        g = _act(F.linear(x, wg), act)
        u = F.linear(x, wu)
        return g * u if gate_first else u * g

    return pattern


def _gated_replacement(act):
    def replacement(x, wg, wu):
        return _gated(_flat(x), wg, wu, None, None, act).reshape(*x.shape[:-1], wg.shape[0])

    return replacement


def _gated_fused_pattern(act, gate_first=True):
    # one Linear producing [gate | up], split in two (GeGLU as in diffusers, fused SwiGLU projections); the
    # product either way round (HF Phi-3: ``up * act(gate)``)
    def pattern(x, w, b):
        g, u = F.linear(x, w, b).chunk(2, dim=-1)
        return _act(g, act) * u if gate_first else u * _act(g, act)

    return pattern


def _gated_fused_nobias_pattern(act, gate_first=True):
    def pattern(x, w):
        g, u = F.linear(x, w).chunk(2, dim=-1)
        return _act(g, act) * u if gate_first else u * _act(g, act)

    return pattern


def _gated_fused_replacement(act):
    def replacement(x, w, b):
        n = w.shape[0] // 2
        return _gated(_flat(x), w[:n], w[n:], b[:n], b[n:], act).reshape(*x.shape[:-1], n)

    return replacement


def _gated_fused_nobias_replacement(act):
    def replacement(x, w):
        n = w.shape[0] // 2
        return _gated(_flat(x), w[:n], w[n:], None, None, act).reshape(*x.shape[:-1], n)

    return replacement


# --- checks --------------------------------------------------------------------------------------------


def _gemm_node(match: Match) -> torch.fx.Node:
    # the site is its GEMM: several patterns may try the same one, it is counted once
    for n in match.nodes:
        if n.target in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            return n
    return match.output_node()


def _describe(x, w, dtype) -> str:
    m = 1
    for s in x.shape[:-1]:
        m *= s
    return f"M={m} K={x.shape[-1]} N={w.shape[0]} {str(dtype).replace('torch.', '')}"


def _int8_sqnr(match: Match, x2, act: str, gated: bool, mode: str, conv1d: bool = False):
    """SQNR (dB) of the int8 layer vs the float one, with the site's real weights and Gaussian activations of
    its shape (activations inside the graph do not exist at compile time); None without real weights.
    ``conv1d``: the weight is stored [K, N] (HF Conv1D)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from tritonfuse.kernels import int8 as I8

    names = ("wg", "wu") if "wg" in match.kwargs else ("w",)
    ws = [registry.real_value(match.kwargs[n]) for n in names]
    b = registry.real_value(match.kwargs["b"]) if "b" in match.kwargs else None
    if any(w is None for w in ws) or ("b" in match.kwargs and b is None):
        return None
    if conv1d:
        ws = [ws[0].t()]
    if gated and len(ws) == 1:  # one fused [gate | up] projection
        n = ws[0].shape[0] // 2
        ws = [ws[0][:n], ws[0][n:]]
        b = (b[:n], b[n:]) if b is not None else None
    bg, bu = b if isinstance(b, tuple) else (b, None)
    with unset_fake_temporarily():
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(min(x2.shape[0], 256), x2.shape[1], generator=g, device="cpu").to(ws[0].device, ws[0].dtype)
        return I8.layer_sqnr(x, ws[0], bg, act, mode, wu=ws[1] if gated else None, bu=bu if gated else None)


# Quantizing x in the graph pays where x's producer is a normalization Inductor computes: its kernel holds
# each row, and the quantization adds an epilogue (H200, 16384x768 fp16, 39th session: LayerNorm 19.8 us,
# with the quantization 25.9 us; scripts/quant_fusion_probe.py). Anywhere else Inductor makes it a reduction
# kernel of its own, slower than the row kernel inside the int8 op (12th session, the quantizers' first
# forms: 16384x3072 139 against 67 us, 16384x768 61 against 26 us; the row kernel now takes 42 and 13), so
# the op quantizes: after a GEMM (+ activation), attention, a graph input, or rows longer than this
FUSED_QUANT_MAX_K = 1024
_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)
_NORM_STEPS = {aten.mul.Tensor, aten.add.Tensor, aten.sub.Tensor, aten.rsqrt.default,
               torch.ops.prims.convert_element_type.default, aten.clone.default, *_VIEWS}


def _keeps_rows(n: torch.fx.Node) -> bool:
    """Whether a permute or transpose leaves the last dimension in place, so the rows a GEMM reads after it are
    still the norm's rows: torchvision ViT's ``nn.MultiheadAttention`` reads its LayerNorm's output through
    ``clone(permute(x, [1, 0, 2]))``, and with the walk through it its Q/K/V input is quantized in the
    LayerNorm's kernel (H200, 42nd session, vit_b_16 b64 int8 from CUDA graphs: 5.52 against 5.61 ms with the
    row kernel; scripts/norm_walk_probe.py)."""
    val = n.args[0].meta.get("val") if isinstance(n.args[0], torch.fx.Node) else None
    if val is None or val.dim() == 0:
        return False
    last = val.dim() - 1
    if n.target is aten.permute.default:
        dims = n.args[1]
        return len(dims) == val.dim() and dims[-1] % val.dim() == last
    return all(d % val.dim() != last for d in n.args[1:3])  # transpose.int


def _norm_produced(x_node, depth: int = 7) -> bool:
    """Whether ``x_node`` is a LayerNorm's or RMSNorm's output as the decomposed graph computes it: an
    ``rsqrt`` of the row statistics within a few pointwise steps (views, casts, copies, the affine multiply-add,
    a permute that keeps the rows)."""
    frontier, seen = [x_node], set()
    for _ in range(depth):
        nxt = []
        for n in frontier:
            if not isinstance(n, torch.fx.Node) or n in seen or n.op != "call_function":
                continue
            seen.add(n)
            if n.target in (aten.rsqrt.default, aten.native_layer_norm.default):
                return True
            if n.target in _NORM_STEPS or (n.target in (aten.permute.default, aten.transpose.int) and _keeps_rows(n)):
                nxt.extend(a for a in n.args if isinstance(a, torch.fx.Node))
        frontier = nxt
    return False


def _quant_fuses(match: Match, k) -> bool:
    """Whether a W8A8 site quantizes x in graph ops fused into x's producer (a norm), rather than with the
    row kernel (inside its op, or for a graph-constant site as an inlined op of its own)."""
    return isinstance(k, int) and k <= FUSED_QUANT_MAX_K and _norm_produced(match.kwargs.get("x"))


_GEMMS = (aten.mm.default, aten.addmm.default)


def _quant_share(match: Match) -> float:
    """This site's share of the quantization x's producer does once for every GEMM that reads x (through
    views): its GEMMs over all of them (Q, K and V reading one LayerNorm's output: 1/3 each). Counted when
    the first of them is decided, before any is replaced, and kept on x's node for the others."""
    x = match.kwargs.get("x")
    mine = sum(1 for n in match.nodes if n.target in _GEMMS)
    if not isinstance(x, torch.fx.Node) or not mine:
        return 1.0
    if "tritonfuse_gemm_readers" not in x.meta:
        readers, frontier = set(), [x]
        while frontier:
            for u in frontier.pop().users:
                if u.target in _VIEWS:
                    frontier.append(u)
                elif u.target in _GEMMS:
                    readers.add(u)
        x.meta["tritonfuse_gemm_readers"] = len(readers)
    return min(1.0, mine / max(1, x.meta["tritonfuse_gemm_readers"]))


def _int8_constant_site(match: Match, x2, gated: bool, conv1d: bool) -> bool:
    """The site's weights will be graph constants (``int8_constants_pass``: graph inputs whose values are
    known now, not views of a fused projection) and it will call ``int8_mm`` / ``int8_gated_mm``."""
    from tritonfuse.kernels import int8 as I8

    if not INT8_CONSTANTS or conv1d:
        return False  # a Conv1D's GEMM reads a transposed view of its weight: not a graph input itself
    names = ("wg", "wu") if "wg" in match.kwargs else ("w",)
    if (gated and len(names) == 1) or not all(registry.real_value(match.kwargs[n]) is not None for n in names):
        return False  # a fused [gate | up] projection reaches the GEMM as two views of one weight
    m = x2.shape[0]
    return isinstance(m, int) and m > I8.DECODE_M  # the decode kernel stays an op call


def _int8_choice(site, x2, ws, b, act, gated, train, site_match=None, conv1d=False, float_ok=False):
    """(mode, kernel name, None) when the int8 kernels serve this site, else (None, None, why not).
    ``float_ok``: the float kernel could serve the site too; int8 then serves it only where it measures
    faster than that (each against cuBLAS + epilogue).

    A dynamic graph's number of rows is symbolic: the site then calls the ops that pick W8A8 or the
    weight-only decode kernel per call (by M at run time) and quantize x themselves; it is checked, gated
    and timed at its example size."""
    mode = config.quant
    if mode == "none":
        return None, None, None
    if train or registry.training_graph():
        return None, None, "int8 is for inference graphs"
    for n in ("w", "wg", "wu"):
        w_node = site_match.kwargs.get(n) if site_match is not None else None
        if isinstance(w_node, torch.fx.Node) and int8_weight_source(w_node) is None:
            return None, None, COMPUTED_WEIGHT
    dynamic = not isinstance(x2.shape[0], int)
    x2s = x2
    x2 = hinted(x2)
    if x2 is None:
        return None, None, "int8: data-dependent number of rows"
    ws = [hinted(w) for w in ws]
    if any(w is None for w in ws):
        return None, None, "int8: data-dependent weight shape"
    name = registry.module_name(site)
    if name and config.quant_skipped(name):
        return None, None, f"{name} kept in floating point (TRITONFUSE_QUANT_SKIP)"
    from tritonfuse.kernels import int8 as I8

    bg, bu = (b[: b.shape[0] // 2], b[b.shape[0] // 2:]) if gated and b is not None else (b, None)
    reason = I8.int8_unsupported(x2, ws[0], bg, act, mode, wu=ws[1] if gated else None, bu=bu)
    if reason is None:
        reason = I8.probe(str(x2.device), x2.dtype, act, b is not None, gated, mode)
    if reason:
        return None, None, f"int8: {reason}"
    gate = float(config.quant_min_sqnr)
    if gate > 0:
        sqnr = _int8_sqnr(site_match, x2, act, gated, mode, conv1d)
        if sqnr is None:
            return None, None, "int8 SQNR gate: the weights are not available at compile time"
        if sqnr < gate:
            return None, None, f"int8 SQNR {sqnr:.1f} dB < TRITONFUSE_QUANT_MIN_SQNR {gate:g} dB"
    fuse = not dynamic and _quant_fuses(site_match, x2.shape[1])
    constant = _int8_constant_site(site_match, x2s, gated, conv1d)
    # a graph-constant site's GEMM is inlined into Inductor's code on the GPU: timed as it will run there
    inlined = constant and inline.will_inline(torch.ops.tritonfuse.int8_mm.default, x2.device)
    share = _quant_share(site_match) if fuse else 1.0
    rec = K.measure(x2, ws, b, act, gated, False, int8_mode=mode, int8_fused=fuse, int8_inlined=inlined,
                    quant_share=share)
    w_node = site_match.kwargs.get("w") if site_match is not None else None
    if isinstance(w_node, torch.fx.Node):  # (siblings_pass weighs the site's time as it is served)
        _weight_root(w_node).meta.setdefault("tritonfuse_int8_recs", {})[site.name] = rec
    if not rec["use"]:
        if not rec.get("unmeasured"):  # (qload_pass may yet pair it with the int8 GEMM producing x)
            site.meta["tritonfuse_int8_slower"] = True
        return None, None, "int8 " + registry.slower_reason(rec, "cuBLAS + epilogue")
    # ... and faster than every float path that serves the site too (_float_rivals): else int8 mode would run
    # the site slower than the float backend does (an int8 op call pays host time an inlined float kernel or
    # cuBLASLt does not). The float timings are the ones the site would use next.
    r8 = registry.cost_ratio(rec)
    for name, flt in _float_rivals(x2, ws, b, act, gated, float_ok):
        rf = registry.cost_ratio(flt)
        if flt.get("use") and r8 is not None and rf is not None and rf < r8:
            return None, None, (f"int8 measured {r8:.2f}x cuBLAS + epilogue's time, {name} "
                                f"{rf:.2f}x: {name}")
    # a graph-constant site calls int8_mm on quantized rows: the row kernel as an op of its own (inlined
    # on the GPU) where no norm quantizes them
    _serve["quant"] = "graph" if fuse else "kernel" if constant else "op"
    return mode, I8.int8_kernel_name(x2s.shape[0], mode, gated, fuse), None


def _same(a, b) -> bool:
    """Sizes equal for every value of their symbols (no guard added to the graph)."""
    return len(a) == len(b) and all(statically_known_true(x == y) for x, y in zip(a, b))


def _consistent(match: Match) -> bool:
    """What the pattern leaves open (see the module docstring), checked on the matched nodes: x is flattened
    to [M, K], every GEMM output is unflattened to x's leading dims, a fused projection is split in equal
    halves, and the activation is computed in fp32 or in x's dtype."""
    x_node = match.kwargs.get("x")
    x = x_node.meta.get("val") if isinstance(x_node, torch.fx.Node) else None
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        return False
    lead = tuple(x.shape[:-1])
    for n in match.nodes:
        if n.op != "call_function":
            continue
        out = n.meta.get("val")
        if n.target == aten.reshape.default:
            src = n.args[0].meta.get("val") if isinstance(n.args[0], torch.fx.Node) else None
            if not isinstance(out, torch.Tensor) or not isinstance(src, torch.Tensor):
                return False
            want = (math.prod(lead), x.shape[-1]) if n.args[0] is x_node else (*lead, src.shape[-1])
            if not _same(tuple(out.shape), want):
                return False
        elif n.target == aten.split.Tensor:
            src = n.args[0].meta.get("val") if isinstance(n.args[0], torch.fx.Node) else None
            size = n.args[1].meta.get("val") if isinstance(n.args[1], torch.fx.Node) else n.args[1]
            if not isinstance(src, torch.Tensor) or not isinstance(size, (int, torch.SymInt)) \
                    or not _same((2 * size,), (src.shape[-1],)):
                return False
        elif n.target == torch.ops.prims.convert_element_type.default:
            if n.args[1] not in (torch.float32, x.dtype):
                return False
    first = match.output_nodes()[0]
    y = first.meta.get("val") if first is not None else None
    return isinstance(y, torch.Tensor) and y.dtype == x.dtype


def _pre_used_elsewhere(match: Match) -> bool:
    """A training form's pre-activation (its second output) is also read outside the match, as the
    activation's backward reads it. In an inference graph it is not, and the training form would only
    measure the site again with an extra store."""
    outs = match.output_nodes()
    inside = set(match.nodes)
    return len(outs) > 1 and outs[1] is not None and any(u not in inside for u in outs[1].users)


def _float_rivals(x2, ws, b, act, gated, float_ok):
    """(name, measured choice) of each float path that could serve an inference site in int8's place, each
    timed against cuBLAS + epilogue as the int8 kernel is: the Triton kernel (where it serves the site: an
    activation, or plain GEMMs served) and cuBLASLt's fused epilogue (where that serves it)."""
    if float_ok and (act != "none" or config.linear_plain_enabled()):
        yield "the float kernel", K.measure(x2, ws, b, act, gated, False)
    bh = b if b is None else hinted(b)
    if not gated and K.lt_unsupported(x2, ws[0], bh, act) is None:
        yield "cuBLASLt's fused epilogue", K.measure_lt(x2, ws[0], bh, act)


def _make_check(act: str, gated: bool, fused: bool, has_bias: bool, store_pre: bool = False, conv1d: bool = False):
    act = _kernel_act(act)
    float_kernel = f"{'gated_mlp' if gated else 'linear_act'}[{act}]"

    def check(match: Match) -> bool:
        kernel = float_kernel
        _serve["int8"], _serve["lt"] = None, False
        if not _consistent(match):
            return False
        if store_pre and not _pre_used_elsewhere(match):
            return False  # an inference graph: the inference pattern has decided this site (and measured it)
        if act == "none" and registry.training_graph() and not config.linear_plain_enabled():
            return False  # a GEMM without activation is a site for int8 alone, which training graphs do not get
        site = _gemm_node(match)
        x = arg_val(match, "x")
        ws = [arg_val(match, n) for n in (("w",) if not gated or fused else ("wg", "wu"))]
        b = arg_val(match, "b") if has_bias else None
        if x is None or any(w is None for w in ws):
            return False
        if x.dim() < 2 or any(w.dim() != 2 for w in ws) or (b is not None and b.dim() != 1):
            return False
        if conv1d:
            w_node = match.kwargs.get("w")
            if isinstance(w_node, torch.fx.Node) and w_node.target in (aten.permute.default, aten.t.default):
                return False  # an nn.Linear (addmm of the transposed weight): the Linear patterns serve it
            ws = [ws[0].t()]  # a Conv1D weight is [K, N]: the kernel reads it as the [N, K] view
        detail = _describe(x, ws[0], x.dtype)
        if gated and fused:
            n2 = ws[0].shape[0]
            if n2 % 2:
                registry.note_fallback(FAMILY, site, kernel, "fused gate/up projection with an odd width", detail)
                return False
            half = ws[0].shape[0] // 2
            ws = [ws[0][:half], ws[0][half:]]
        x2 = x.reshape(-1, x.shape[-1]) if x.dim() > 2 else x
        reason = K.unsupported(x2, *ws, b, act=act, gated=gated)
        if reason is None and x.shape[-1] != ws[0].shape[1]:
            reason = "inner dimensions differ"
        if reason is None:
            reason = K.probe(str(x.device), x.dtype, act, b is not None, gated, store_pre)
        x2h = hinted(x2)
        if reason is None and x2h is None:
            reason = "data-dependent number of rows"
        wsh = [hinted(w) for w in ws]  # weights that are graph inputs of a dynamic graph have symbolic sizes
        if reason is None and any(w is None for w in wsh):
            reason = "data-dependent weight shape"
        int8_mode, int8_kernel, int8_why = _int8_choice(site, x2, ws, b, act, gated, store_pre, match, conv1d,
                                                        float_ok=reason is None)
        if int8_mode:
            _serve["int8"] = int8_mode
            registry.note_replaced(FAMILY, site, int8_kernel, detail)
            for n in ("w", "wg"):  # (qload_pass finds the site's record through its weight)
                w_node = match.kwargs.get(n)
                if isinstance(w_node, torch.fx.Node):
                    w_node.meta.setdefault("tritonfuse_int8_sites", []).append(site.name)
            return True
        if int8_why:
            detail += f" ({int8_why})"
        if reason is None and act == "none" and not config.linear_plain_enabled():
            reason = int8_why or "no activation and no int8 kernel: cuBLAS's addmm kept"
        bh = b if b is None else hinted(b)
        rec = K.measure(x2h, wsh, bh, act, gated, store_pre) if reason is None else None
        # an inference site with a ReLU or GELU: cuBLASLt's fused epilogue too, where it is the faster of the two
        lt_why = (K.lt_unsupported(x2h, wsh[0], bh, act) if not gated and not store_pre and x2h is not None
                  and wsh[0] is not None else "not an inference Linear of known sizes")
        lt_rec = K.measure_lt(x2h, wsh[0], bh, act) if lt_why is None else None
        if lt_rec is not None and lt_rec["use"] and (rec is None or not rec["use"]
                                                       or registry.cheaper(lt_rec, rec)):
            _serve["lt"] = True
            kernel, reason = f"cublaslt[{act}]", None
        else:
            if lt_rec is not None and rec is not None:
                registry.show_measured(rec)  # the report shows the timing of the kernel the site takes
            if rec is not None and not rec["use"]:
                reason = registry.slower_reason(rec, "cuBLAS + epilogue")
        return registry.settle(FAMILY, site, kernel, reason, detail)

    return registry.guarded(FAMILY, check, _gemm_node)


# --- registration --------------------------------------------------------------------------------------


def _open_pattern(search, args) -> PatternExpr:
    """``search`` traced into a pattern that keeps its constants but leaves open the sizes the example
    burned in (reshape sizes, split sizes) and its dtypes; ``_consistent`` checks those on each match."""
    gm = trace_pattern(search, args)
    pattern = fx_to_pattern(gm, ignore_types=(torch.dtype,), argnames=list(inspect.signature(search).parameters))
    seen = set()

    def walk(p):
        if not isinstance(p, PatternExpr) or id(p) in seen:
            return
        seen.add(id(p))
        if isinstance(p, MultiOutputPattern):
            for o in p.outputs:
                walk(o)
            return
        if not isinstance(p, CallFunction):
            return
        for a in p.flat_args_kwargs[0]:
            walk(a)
        if p.fns[0] in (aten.reshape.default, aten.split.Tensor):
            CallFunction.__init__(p, p.fns, p.args[0], Ignored(), *p.args[2:], _users=p.users, **p.kwargs)

    walk(pattern)
    return pattern


# the activations a Linear site may carry, with the ops each one's patterns hold (patterns.common.ACTIVATION_OPS)
ACT_OPS = {a: ACTIVATION_OPS[a] for a in ("relu", "gelu", "gelu_tanh", "gelu_new", "gelu_bloom", "silu",
                                          "quick_gelu", "none")}


def _serves_plain() -> bool:
    """Linears without activation are sites when ``linear_plain`` is on or int8 quantization is."""
    return config.linear_plain_enabled() or config.quant != "none"


def pattern_spec(graph_ops: frozenset, graph: Optional[torch.fx.Graph] = None):
    """``(activations, gated)``: the activations whose patterns a graph holding ``graph_ops`` may match, and
    whether it may hold a gated MLP (``gated_product``; True without ``graph``), or None where it holds no
    GEMM or none of them (cold, building every pattern took 4.2-4.9 s on this project's 2-core CPU machine;
    the gated patterns are 48 of a BERT graph's 84)."""
    if aten.mm.default not in graph_ops and aten.addmm.default not in graph_ops:
        return None
    acts = tuple(a for a, ops in ACT_OPS.items() if all(op in graph_ops for op in ops))
    if acts == ("none",) and not _serves_plain():
        return None
    return (acts, graph is None or gated_product(graph))


# where a walk back from a product stops without a GEMM: reductions (a norm's statistics), other matmuls
_WALK_STOPS = (aten.bmm.default, aten.var_mean.correction, aten.mean.dim, aten.sum.dim_IntList, aten.amax.default,
               aten.convolution.default)
# parts of one GEMM's output (a fused gate/up projection split in two): each its own source
_PARTS = (operator.getitem, aten.slice.Tensor, aten.narrow.default)
_WALK_DEPTH = 24  # nodes from a product back to its GEMM: 7-14 in the gated patterns' fp16 graphs


def _gemm_sources(node: torch.fx.Node) -> set:
    """The GEMMs ``node`` is computed from without passing another GEMM or a reduction, within
    _WALK_DEPTH nodes, each with the part of its output it is read through (or None)."""
    out, seen, frontier = set(), set(), [(node, None)]
    for _ in range(_WALK_DEPTH):
        nxt = []
        for n, part in frontier:
            if (n, part) in seen or n.op != "call_function":
                continue
            seen.add((n, part))
            if n.target in _GEMMS:
                out.add((n, part))
            elif n.target not in _WALK_STOPS:
                part = n if part is None and n.target in _PARTS else part
                nxt.extend((a, part) for a in n.all_input_nodes)
        frontier = nxt
    return out


def gated_product(graph: torch.fx.Graph) -> bool:
    """Whether ``graph`` multiplies two values computed from different GEMMs (or different parts of one GEMM's
    output): the shape of every gated MLP, act(x @ wg.T) * (x @ wu.T). A GELU multiplies values of one GEMM, a
    norm its input by statistics a reduction computes, so a BERT or ViT graph builds no gated patterns."""
    for mul in graph.find_nodes(op="call_function", target=aten.mul.Tensor):
        a, b = (mul.args + (None, None))[:2]
        if isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node):
            sa, sb = _gemm_sources(a), _gemm_sources(b)
            if sa and sb and sa != sb:
                return True
    return False


_TRANSPOSES = (aten.permute.default, aten.t.default, aten.transpose.int)


def prepare_graph(graph: torch.fx.Graph) -> int:
    """Move autocast's cast of a GEMM operand above the view before it: ``mm(convert(view(x)), w)`` becomes
    ``mm(view(convert(x)), w)``, the order the patterns (and ``nn.Linear`` under autocast) have. HF's Conv1D
    (GPT-2) flattens its fp32 input and then calls ``torch.addmm``, which autocast casts: no pattern matched its
    GEMMs (GPT-2 under autocast: the Q/K/V and MLP projections, which read a LayerNorm computed in fp32, and on
    CUDA the MLP's output projection, whose GELU autocast computes in fp32). Falcon's Linear computes
    ``x @ w.T``, and autocast casts the transposed weight: none of its GEMMs matched. The same values from a
    cast of the same elements; a view that something else reads too stays for it. Then ``_merge_casts``, and
    ``_own_weight_transposes``. Returns the number of casts moved or merged and transposes copied."""
    moved = 0
    convert = torch.ops.prims.convert_element_type.default
    for gemm in _gemm_nodes(graph):
        for i in _gemm_operands(gemm):
            cast = gemm.args[i] if len(gemm.args) > i else None
            if not (isinstance(cast, torch.fx.Node) and cast.target == convert
                    and cast.args[1] in (torch.float16, torch.bfloat16)):
                continue
            view = cast.args[0]
            if not (isinstance(view, torch.fx.Node) and view.target in (*_VIEWS, *_TRANSPOSES)
                    and isinstance(view.args[0], torch.fx.Node)):
                continue
            src, out = view.args[0].meta.get("val"), cast.meta.get("val")
            if not isinstance(src, torch.Tensor) or not isinstance(out, torch.Tensor) \
                    or (view.target in _VIEWS and not src.is_contiguous()):
                continue
            with graph.inserting_before(view):
                new_cast = graph.call_function(convert, (view.args[0], cast.args[1]), dict(cast.kwargs))
                new_view = graph.call_function(view.target, (new_cast, *view.args[1:]), dict(view.kwargs))
            new_cast.meta.update({k: v for k, v in cast.meta.items() if k in ("stack_trace", "nn_module_stack")})
            with _fake_mode(graph) or contextlib.nullcontext():
                new_cast.meta["val"] = src.to(cast.args[1])
            _replace(graph, cast, new_view)
            if not view.users:
                graph.erase_node(view)
            moved += 1
    return moved + _merge_casts(graph) + _own_weight_transposes(graph)


def _gemm_nodes(graph: torch.fx.Graph) -> list:
    return [n for t in _GEMMS for n in graph.find_nodes(op="call_function", target=t)]


def _gemm_operands(gemm: torch.fx.Node) -> tuple[int, int]:
    """The argument indices of an mm's or addmm's two matrix operands (input, weight)."""
    return (0, 1) if gemm.target is aten.mm.default else (1, 2)


def _own_weight_transposes(graph: torch.fx.Graph) -> int:
    """Give each GEMM its own transpose of its weight where the transpose has other users. A training forward
    under autocast saves the transposed half-precision weight for the backward (bert-base's MLP: the weight's
    ``permute`` read by the ``addmm`` and returned), and a pattern's ``w.t()`` may have no user outside the
    match: no Linear of such a graph matched. A transpose is a view; the copy is the same values."""
    copied = 0
    for gemm in _gemm_nodes(graph):
        i = _gemm_operands(gemm)[1]
        view = gemm.args[i] if len(gemm.args) > i else None
        if not (isinstance(view, torch.fx.Node) and view.target in _TRANSPOSES and len(view.users) > 1):
            continue
        with graph.inserting_before(gemm):
            own = graph.call_function(view.target, view.args, dict(view.kwargs))
        own.meta.update(view.meta)
        gemm.replace_input_with(view, own)
        copied += 1
    return copied


def _mutates(node: torch.fx.Node) -> bool:
    t = node.target
    return node.op == "call_function" and (not isinstance(t, torch._ops.OpOverload) or t._schema.is_mutable)


def _merge_casts(graph: torch.fx.Graph) -> int:
    """One cast where autocast made several of the same value: each ``F.linear`` casts its own input, so Llama's
    gate and up projections read two casts of the norm's output, and the gated patterns (one x read by both
    GEMMs) matched neither (Llama, Mistral, Qwen2 under autocast: gate + SiLU and up as two sites, the product
    Inductor's). Returns the number merged."""
    first, merged = {}, 0
    convert = torch.ops.prims.convert_element_type.default
    for cast in [n for n in graph.nodes if n.op == "call_function" and n.target == convert]:  # (in order)
        src = cast.args[0]
        if cast.args[1] not in (torch.float16, torch.bfloat16) or cast.kwargs or not isinstance(src, torch.fx.Node) \
                or any(_mutates(u) for u in src.users):  # (a value written in place: two casts may differ)
            continue
        kept = first.setdefault((src, cast.args[1]), cast)
        if kept is not cast:  # (the one kept comes first)
            cast.replace_all_uses_with(kept)
            graph.erase_node(cast)
            merged += 1
    return merged


def pattern_pass(acts=None, gated: bool = True) -> PatternMatcherPass:
    """The linear_act patterns of ``acts`` (default: every activation; ``pattern_spec`` picks them for a
    graph), with the gated MLP ones or without, in one pass, built once per process (and per plain-Linear
    setting, ``_serves_plain``)."""
    return _build(_serves_plain(), None if acts is None else tuple(acts), gated)


@functools.lru_cache(maxsize=None)
def _build(with_plain: bool, acts=None, gated: bool = True) -> PatternMatcherPass:
    # a Linear with no activation is cuBLAS's own fused addmm: matched only when asked for, so training
    # graphs' backward GEMMs are not counted as sites
    pm = PatternMatcherPass(pass_name="tritonfuse_linear_act")

    def reg(search, replace, args, extra_check):
        register_replacement(search_only(search), replace, args, trace_fn=_trace, pass_dicts=pm,
                             extra_check=extra_check, search_fn_pattern=recorded_pattern(_open_pattern, search, args),
                             skip_duplicates=True)
    for dtype in (torch.float32, torch.float16):
        # gated patterns first: their GEMMs would otherwise be taken one by one
        # gelu_new: T5 v1.1 / Flan-T5 / mT5 ("gated-gelu": NewGELUActivation), served as gelu_tanh
        for act in K.GATED_ACTIVATIONS + ("gelu_new",) if gated else ():
            if acts is not None and act not in acts:
                continue
            if act == "gelu_new" and dtype != torch.float32:
                continue  # no upcast around it: the fp32 trace serves every dtype
            for shape in ((8, 16), (2, 4, 16)):
                x = torch.empty(shape, dtype=dtype)
                wg, wu = torch.empty(24, 16, dtype=dtype), torch.empty(24, 16, dtype=dtype)
                w12, b12 = torch.empty(48, 16, dtype=dtype), torch.empty(48, dtype=dtype)
                for gate_first in (True, False):
                    reg(_gated_pattern(act, gate_first), _gated_replacement(act), [x, wg, wu],
                        extra_check=_make_check(act, True, False, False))
                    reg(_gated_fused_pattern(act, gate_first), _gated_fused_replacement(act), [x, w12, b12],
                        extra_check=_make_check(act, True, True, True))
                    reg(_gated_fused_nobias_pattern(act, gate_first), _gated_fused_nobias_replacement(act),
                        [x, w12], extra_check=_make_check(act, True, True, False))
        for act in ("relu", "gelu", "gelu_tanh", "gelu_new", "gelu_bloom", "silu", "quick_gelu") + (
                ("none",) if with_plain else ()):
            if acts is not None and act not in acts:
                continue
            if act in ("none", "relu", "gelu_new", "gelu_bloom", "quick_gelu") and dtype != torch.float32:
                continue  # no upcast around these: the fp32 trace serves every dtype
            for shape in ((8, 16), (2, 4, 16)):
                x = torch.empty(shape, dtype=dtype)
                w, b = torch.empty(24, 16, dtype=dtype), torch.empty(24, dtype=dtype)
                reg(_linear_act_pattern(act), _linear_act_replacement(act), [x, w, b],
                    extra_check=_make_check(act, False, False, True))
                reg(_linear_act_nobias_pattern(act), _linear_act_nobias_replacement(act), [x, w],
                    extra_check=_make_check(act, False, False, False))
                # training graphs: ReLU's backward reads its output, the others their input (save_pre)
                save_pre = act not in ("relu", "none")
                batched = len(shape) == 3
                if act in ("gelu_new", "gelu_bloom", "quick_gelu"):
                    continue  # written out by hand: its backward saves more than the pre-activation
                if not (batched or save_pre):
                    continue  # that is the inference pattern above
                for has_bias in (True, False):
                    args = [x, w, b] if has_bias else [x, w]
                    reg(_linear_act_train_pattern(act, batched, has_bias, save_pre),
                        _linear_act_train_replacement(act, batched, has_bias, save_pre), args,
                        extra_check=_make_check(act, False, False, has_bias, store_pre=save_pre))
            # HF Conv1D (GPT-2), after the Linear patterns, which share its shape (the check leaves them their
            # sites); without an activation (GPT-2's attention projections) only when plain GEMMs are served
            x, w, b = torch.empty(2, 4, 16, dtype=dtype), torch.empty(16, 24, dtype=dtype), torch.empty(24, dtype=dtype)
            reg(_conv1d_act_pattern(act), _conv1d_act_replacement(act), [x, w, b],
                extra_check=_make_check(act, False, False, True, conv1d=True))
    return pm


# --- int8 weights as graph constants ---------------------------------------------------------------------

# Off by default. On the H200, at c001e6c (benchmarks/results/diagnostics/int8-epilogue-and-inline-nvidia-h200.json),
# with the inlined W8A8 GEMMs on the device-descriptor TMA kernel and rows no norm produces quantized by the
# inlined row kernel, against the op calls in the same run: bert-base 7.41 against 7.72 ms, vit_b_16 6.89
# against 6.69, llama-1b-prefill 26.18 against 26.41 (Inductor: 7.9, 7.1, 35.0). vit_b_16's fc1 sites measure a
# near-tie alone and lose in the model. Its compiles are slower too: the graph holds the int8 weights, so
# Inductor's FX graph cache is off for it (_compile), and a second compile in the same process took 21-38 s
# against 1-2 s. The tests turn it on.
INT8_CONSTANTS = False


def _int8_rewrites():
    """op -> (positions of its float weights, whether a call serves it, the new call's builder, the K group
    of its weights' scales)."""
    from tritonfuse.kernels import int8 as I8

    ops = torch.ops.tritonfuse

    def weight_only(x, mode):
        v = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        return isinstance(v, torch.Tensor) and isinstance(v.shape[0], int) and I8.uses_weight_only(v.shape[0], mode)

    def out_dtype(x):
        return x.meta["val"].dtype

    return {
        # (xq, xs, w, b, act, out_dtype) -> int8_mm(xq, xs, wq, ws, b, act, out_dtype)
        ops.int8_linear_prequant.default: (
            (2,), lambda a: True,
            lambda a, q: (ops.int8_mm.default, (a[0], a[1], *q[0], a[3], a[4], a[5])), lambda a: 0),
        # (xq, xs, wg, wu, bg, bu, act, out_dtype)
        ops.int8_gated_mlp_prequant.default: (
            (2, 3), lambda a: True,
            lambda a, q: (ops.int8_gated_mm.default, (a[0], a[1], *q[0], *q[1], a[4], a[5], a[6], a[7])),
            lambda a: 0),
        # weight-only calls: (x, w, b, act, mode)
        ops.int8_linear.default: (
            (1,), lambda a: weight_only(a[0], a[4]),
            lambda a, q: (ops.int8_mm.default, (a[0], None, *q[0], a[2], a[3], out_dtype(a[0]))),
            lambda a: I8.layer_group([registry.real_value(a[1])], a[4])),
        # (x, wg, wu, bg, bu, act, mode)
        ops.int8_gated_mlp.default: (
            (1, 2), lambda a: weight_only(a[0], a[6]),
            lambda a, q: (ops.int8_gated_mm.default, (a[0], None, *q[0], *q[1], a[3], a[4], a[5], out_dtype(a[0]))),
            lambda a: I8.layer_group([registry.real_value(a[1]), registry.real_value(a[2])], a[6])),
    }


def _fake_mode(graph: torch.fx.Graph):
    """The fake mode of ``graph``'s example values (its placeholders'), or None."""
    from torch._guards import detect_fake_mode

    return detect_fake_mode([n.meta.get("val") for n in graph.nodes if n.op == "placeholder"])


def _replace(graph: torch.fx.Graph, old: torch.fx.Node, new: torch.fx.Node, keep=("val",)) -> None:
    """``new`` in place of ``old``, with ``old``'s stack trace and module path (and its ``keep`` metadata)."""
    new.meta.update({k: v for k, v in old.meta.items() if k in (*keep, "stack_trace", "nn_module_stack")})
    old.replace_all_uses_with(new)
    graph.erase_node(old)


def _view(graph: torch.fx.Graph, const: torch.fx.Node, fake_mode) -> torch.fx.Node:
    """``const`` seen through a view of itself: Inductor propagates an op's fake inputs with the real value
    of a constant it is handed directly, which fails its fake mode, and with a fake tensor for a view."""
    val = const.meta["val"]
    node = graph.call_function(aten.as_strided.default, (const, list(val.shape), list(val.stride()), 0))
    with fake_mode:
        node.meta["val"] = torch.as_strided(val, val.shape, val.stride(), 0)
    return node


def int8_constants_pass(graph: torch.fx.Graph) -> int:
    """Quantize the int8 sites' weights once, now, into constants of the graph being compiled, and call the
    int8 ops that take them (``kernels.int8.int8_mm``; inlined into Inductor's code on the GPU) instead of the
    ones that look them up at run time. One ``int8_weights`` call at the graph's start re-quantizes a
    constant whose float weight was updated in place or replaced. A call whose weights are not the compiled
    graph's inputs with values known now (a view of a fused projection, a backward graph) keeps its op.
    Returns how many calls were rewritten."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from tritonfuse.kernels import int8 as I8

    if not INT8_CONSTANTS:
        return 0
    gm = graph.owning_module
    rewrites = _int8_rewrites()
    calls = []
    for node in graph.nodes:
        spec = rewrites.get(node.target) if node.op == "call_function" else None
        if spec is None or node.kwargs or not spec[1](node.args):
            continue
        w_nodes = [node.args[i] for i in spec[0]]
        if all(registry.real_value(w) is not None for w in w_nodes):
            calls.append((node, w_nodes, spec[2], spec[3](node.args)))
    if gm is None or not calls:
        return 0
    fake_mode = _fake_mode(graph)
    if fake_mode is None:
        return 0
    # (weight placeholder, K group of its scales) -> (its int8 constant, its scales, offset in the scales vector)
    weights: dict = {}
    offset = 0
    with unset_fake_temporarily(), torch.no_grad():
        for _, w_nodes, _, group in calls:
            for w in w_nodes:
                if (w, group) not in weights:
                    wq, ws = I8.quantize_weight(registry.real_value(w), group)
                    weights[(w, group)] = (wq, ws.reshape(-1), offset)
                    offset += ws.numel()
        scales = torch.cat([ws for _, ws, _ in weights.values()])
    # everything is computed: now the graph changes
    prefix = "_tritonfuse_int8_"
    n = 0
    while hasattr(gm, f"{prefix}{n}_scales"):
        n += 1
    prefix = f"{prefix}{n}_"
    first = next(n for n in graph.nodes if n.op != "placeholder")
    per_weight = {}
    with graph.inserting_before(first):  # each node goes before `first`, after the one made before it
        consts = []
        for i, ((w, _), (wq, _, _)) in enumerate(weights.items()):
            gm.register_buffer(f"{prefix}w{i}", wq, persistent=False)
            node = graph.get_attr(f"{prefix}w{i}")
            node.meta["val"] = fake_mode.from_tensor(wq, static_shapes=True)
            consts.append(_view(graph, node, fake_mode))
            I8.remember(wq, registry.real_value(w))
        gm.register_buffer(f"{prefix}scales", scales, persistent=False)
        s_node = graph.get_attr(f"{prefix}scales")
        s_node.meta["val"] = fake_mode.from_tensor(scales, static_shapes=True)
        s_node = _view(graph, s_node, fake_mode)
        fresh = graph.call_function(torch.ops.tritonfuse.int8_weights.default,
                                    ([w for w, _ in weights], consts, s_node, [g for _, g in weights]))
        with fake_mode:
            fresh.meta["val"] = torch.empty_like(s_node.meta["val"])
        for (w, (wq, ws, off)), const in zip(weights.items(), consts):
            sl = graph.call_function(aten.slice.Tensor, (fresh, 0, off, off + ws.numel()))
            with fake_mode:
                sl.meta["val"] = fresh.meta["val"][off:off + ws.numel()]
            per_weight[w] = (const, sl)
    for node, w_nodes, build, group in calls:
        target, args = build(node.args, [per_weight[(w, group)] for w in w_nodes])
        with graph.inserting_before(node):
            new = graph.call_function(target, args)
        _replace(graph, node, new)  # (not eager_input_vals: those are the old op's arguments)
    return len(calls)


# --- quantize on load: one int8 GEMM's output handed to the next -------------------------------------------

# Off: every W8A8 consumer of a W8A8 producer's output quantizes it with the row kernel (or stays cuBLAS's).
QLOAD = True


def _w8a8_producer(node: torch.fx.Node) -> Optional[tuple]:
    """``int8_linear_amax``'s arguments for a W8A8 op call the linear_act pass made (a static number of rows
    above the decode kernel's), or None."""
    from tritonfuse.kernels import int8 as I8

    ops = torch.ops.tritonfuse
    a, t = node.args, node.target
    if node.op != "call_function" or node.kwargs:
        return None
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() != 2 or not isinstance(val.shape[0], int) \
            or I8.uses_weight_only(val.shape[0], "int8"):
        return None
    if t == ops.int8_linear_prequant.default:
        return (a[0], a[1], a[2], None, a[3], None, a[4], a[5])
    if t == ops.int8_gated_mlp_prequant.default:
        return tuple(a)
    if t == ops.int8_linear.default and a[4] == "int8":
        return (a[0], None, a[1], None, a[2], None, a[3], val.dtype)
    if t == ops.int8_gated_mlp.default and a[6] == "int8":
        return (a[0], None, a[1], a[2], a[3], a[4], a[5], val.dtype)
    return None


def _sole_reader(node: torch.fx.Node) -> Optional[tuple]:
    """(the one node that reads ``node``'s value through views, the view it reads), or None where the value
    (or any view of it) has another reader: the graph's output, a second GEMM, a residual add."""
    cur = node
    while True:
        users = list(cur.users)
        if len(users) != 1:
            return None
        if users[0].target in _VIEWS:
            cur = users[0]
            continue
        return users[0], cur


def _weight_of(node) -> Optional[torch.fx.Node]:
    # an nn.Linear weight w as an mm/addmm operand: w.t() (permute [1, 0] after decomposition)
    if isinstance(node, torch.fx.Node) and node.op == "call_function" and not node.kwargs:
        if node.target == aten.permute.default and list(node.args[1]) == [1, 0]:
            return node.args[0]
        if node.target == aten.t.default:
            return node.args[0]
    return None


def _qload_consumer(reader: torch.fx.Node, view: torch.fx.Node) -> Optional[tuple]:
    """(w, b, act, how the site is served now: "int8" or "cublas") where ``reader`` is a Linear site that an
    int8 GEMM quantizing on load may serve: an int8 op call of the pass, or cuBLAS's GEMM left by the pass
    because int8 measured slower (``tritonfuse_int8_slower``: not for want of support, SQNR or a skip)."""
    ops = torch.ops.tritonfuse
    if reader.op != "call_function" or reader.kwargs:
        return None
    a = reader.args
    if reader.target == ops.int8_linear.default and a[0] is view and a[4] == "int8":
        return a[1], a[2], a[3], "int8"
    if not reader.meta.get("tritonfuse_int8_slower"):
        return None
    if reader.target == aten.addmm.default and a[1] is view and _weight_of(a[2]) is not None:
        return _weight_of(a[2]), a[0], "none", "cublas"
    if reader.target == aten.mm.default and a[0] is view and _weight_of(a[1]) is not None:
        return _weight_of(a[1]), None, "none", "cublas"
    return None


def _val(n):
    return n.meta["val"] if isinstance(n, torch.fx.Node) else n


def _weight_root(w_node):
    # a weight's node under the views an op reads it through (WEIGHT_VIEWS)
    while isinstance(w_node, torch.fx.Node) and w_node.op == "call_function" and w_node.target in WEIGHT_VIEWS:
        w_node = w_node.args[0]
    return w_node


def _int8_site_of(w_node) -> Optional[str]:
    # the site whose int8 call reads weight ``w_node`` (noted by its check), where exactly one does. Calls
    # may read it through a view: an HF Conv1D's [K, N] weight transposed, a fused [gate | up] projection's
    # halves
    while isinstance(w_node, torch.fx.Node) and w_node.op == "call_function" and w_node.target in WEIGHT_VIEWS:
        w_node = w_node.args[0]
    sites = w_node.meta.get("tritonfuse_int8_sites", []) if isinstance(w_node, torch.fx.Node) else []
    return sites[0] if len(sites) == 1 else None


def qload_pass(graph: torch.fx.Graph) -> int:
    """Pair W8A8 sites whose output only the next Linear reads (a transformer's MLP: up-projection +
    activation, then the down-projection): where measured faster, the first also writes its rows' abs-max
    (``int8_linear_amax``) and the second quantizes that output as it loads it (``int8_linear_qload``), so
    the row kernel's pass between them disappears. The second may be an int8 site or one left to cuBLAS
    because int8 with the row kernel measured slower there. Not with int8 weights as graph constants
    (``INT8_CONSTANTS``). Returns how many pairs were made."""
    from tritonfuse.kernels import int8 as I8

    if not QLOAD or INT8_CONSTANTS or config.quant != "int8":
        return 0
    ops = torch.ops.tritonfuse
    fake_mode = None
    made = 0
    for node in list(graph.nodes):
        prod = _w8a8_producer(node)
        read = _sole_reader(node) if prod is not None else None
        cons = _qload_consumer(*read) if read is not None else None
        if cons is None:
            continue
        reader, view = read
        w2, b2, act2, served = cons
        x, xs, w, wu, b, bu, act, dtype = prod
        hv, w2v = _val(view), _val(w2)
        # the second GEMM reads the first's rows as they are (a view that regroups them would need other
        # rows' abs-max)
        if tuple(hv.shape) != tuple(_val(node).shape) or w2v.dim() != 2 or hv.dtype != dtype \
                or w2v.shape[1] != hv.shape[1] or (registry.real_value(w2) is None and served == "cublas"):
            continue
        M, N = hv.shape
        K = _val(x).shape[1]
        if I8.int8_unsupported(hv, w2v, _val(b2), act2, "int8") is not None \
                or I8.qload_probe(str(hv.device), dtype, act, wu is not None, b is not None, act2, b2 is not None):
            continue
        rec = I8.measure_qload(M, K, N, w2v.shape[0], dtype, hv.device, act, wu is not None, b is not None,
                               xs is not None, act2, b2 is not None, served)
        site2 = _int8_site_of(w2) if served == "int8" else reader.name
        if not rec.get("use"):
            if "ours_ms" in rec and site2:  # timed and lost: the report says so at the second site
                registry.annotate(graph, site2, f"the int8 handoff from the previous GEMM measured "
                                                f"{rec['ours_ms']:.3f} vs {rec['theirs_ms']:.3f} ms as a pair: not taken")
            continue
        if fake_mode is None:
            fake_mode = _fake_mode(graph)
            if fake_mode is None:
                return made
        site1 = _int8_site_of(w)
        pair_args = (x, xs, w, wu, b, bu, act, dtype)
        with fake_mode:  # (before the graph changes)
            vals = ops.int8_linear_amax.default(*[_val(a) for a in pair_args])
            out_val = ops.int8_linear_qload.default(hv, vals[1], w2v, _val(b2), act2)
        with graph.inserting_before(node):
            pair = graph.call_function(ops.int8_linear_amax.default, pair_args)
            y = graph.call_function(operator.getitem, (pair, 0))
            amax = graph.call_function(operator.getitem, (pair, 1))
        with graph.inserting_before(reader):
            out = graph.call_function(ops.int8_linear_qload.default, (view, amax, w2, b2, act2))
        pair.meta["val"] = vals
        y.meta["val"], amax.meta["val"] = vals
        out.meta["val"] = out_val
        _replace(graph, node, y, keep=())
        _replace(graph, reader, out, keep=())
        measured = [rec["ours_ms"], rec["theirs_ms"]] if "ours_ms" in rec else None
        if site1:
            registry.restate(graph, site1, suffix="row abs-max out")
        if site2:
            registry.restate(graph, site2, kernel=I8.int8_kernel_name(M, "int8", False, fused=False)[:-1]
                             + ",quantized on load]", measured=measured,
                             why="quantized on load: its rows' abs-max from the previous GEMM's epilogue, "
                                 "the pair measured" + (f" {measured[0]:.3f} vs {measured[1]:.3f} ms"
                                                        if measured else " (not timed)"))
        made += 1
    return made


# --- one quantization of x for every int8 GEMM that reads it -----------------------------------------------

# Off: each W8A8 site quantizes its input itself (bert's Q, K and V each their copy of the LayerNorm's output).
SHARE_QUANT = True


def _pure(node) -> bool:
    # an ATen/prims op that computes a value from its arguments alone: merging two such calls of equal arguments
    # changes nothing (no mutation, no random numbers)
    t = node.target
    return (node.op == "call_function" and isinstance(t, torch._ops.OpOverload) and t.namespace in ("aten", "prims")
            and not t._schema.is_mutable and torch.Tag.nondeterministic_seeded not in t.tags)


def _frozen(a):
    if isinstance(a, float) and math.isnan(a):
        return ("nan",)  # (NaN != NaN: two full(nan) nodes would never share a key)
    if isinstance(a, (list, tuple)):
        return tuple(_frozen(v) for v in a)
    if isinstance(a, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in a.items()))
    hash(a)  # (TypeError: not a key, the node is left alone)
    return a


def _merge_equal(graph: torch.fx.Graph, roots, depth: int = 32) -> int:
    """Merge pure nodes within ``depth`` steps up from ``roots`` that compute the same op on the same
    arguments (each site's replacement flattened and quantized x anew: some 20 nodes); returns how many went."""
    mine, frontier = set(), [r for r in roots if isinstance(r, torch.fx.Node)]
    for _ in range(depth):
        nxt = []
        for n in frontier:
            if n not in mine and _pure(n):
                mine.add(n)
                nxt.extend(n.all_input_nodes)
        frontier = nxt
    seen, merged = {}, 0
    for n in list(graph.nodes):  # in order: a node's arguments are merged before it is
        if n not in mine:
            continue
        try:
            key = (n.target, _frozen(n.args), _frozen(n.kwargs))
            other = seen.setdefault(key, n)
        except TypeError:
            continue
        if other is not n:
            n.replace_all_uses_with(other)
            graph.erase_node(n)
            merged += 1
    return merged


@functools.lru_cache(maxsize=None)
def _realize_shared_inputs() -> None:
    # Inductor lowers an op call's input that is still a pointwise computation (int8 values and scales that
    # it fuses into the norm's kernel) into a buffer of its own for each op that reads it, recomputed in the
    # producing kernel for each: one node read by three GEMMs came out as three int8 copies. Ops in its
    # needs_realized_inputs have such an input computed once, into one buffer, as it does for mm (the row
    # scales, [M] floats a copy, still come out once per GEMM: their node reads too little to be realized)
    from torch._inductor.lowering import add_needs_realized_inputs

    ops = torch.ops.tritonfuse
    add_needs_realized_inputs([ops.int8_linear_prequant.default, ops.int8_gated_mlp_prequant.default,
                               ops.int8_linear.default, ops.int8_gated_mlp.default, ops.int8_linear_amax.default,
                               ops.int8_linear_qload.default, ops.int8_mm.default, ops.int8_gated_mm.default,
                               ops.int8_quant_rows.default])


def share_quant_pass(graph: torch.fx.Graph) -> int:
    """One per-token quantization of x for all the W8A8 sites that read it, where each quantized its own copy:
    the graph ops a norm's kernel computes (bert's Q, K and V: Inductor wrote three int8 copies, 37.0 against
    25.9 us at 16384x768 on the H200, 39th session) are merged, and op calls that each ran the row kernel on the
    same x (a norm over rows longer than FUSED_QUANT_MAX_K: Llama's Q, K and V) become one ``int8_quant_rows``
    and ``*_prequant`` calls. The sites were timed with their share of a shared quantization (``_quant_share``)
    or with one each: sharing costs none of them time. Returns how many quantizations went."""
    if not SHARE_QUANT or config.quant != "int8":
        return 0
    _realize_shared_inputs()
    ops = torch.ops.tritonfuse
    pre = (ops.int8_linear_prequant.default, ops.int8_gated_mlp_prequant.default)
    calls = [n for n in graph.nodes if n.op == "call_function" and n.target in pre]
    before = len({n.args[0] for n in calls})
    _merge_equal(graph, [a for n in calls for a in n.args[:2]])
    gone = before - len({n.args[0] for n in calls})
    # op calls quantizing the same x (merged views of it) with the row kernel, each its own (W8A8 calls: the
    # producers qload_pass takes)
    own = (ops.int8_linear.default, ops.int8_gated_mlp.default)
    calls = [n for n in graph.nodes if n.target in own and _w8a8_producer(n) is not None]
    _merge_equal(graph, [n.args[0] for n in calls])
    groups: dict = {}
    for n in calls:
        groups.setdefault(n.args[0], []).append(n)
    fake_mode = None
    for x, group in groups.items():
        if len(group) < 2:
            continue
        if fake_mode is None:
            fake_mode = _fake_mode(graph)
            if fake_mode is None:
                break
        with fake_mode:
            qval = ops.int8_quant_rows.default(_val(x))
        with graph.inserting_before(group[0]):  # (calls, so each group, in graph order)
            q = graph.call_function(ops.int8_quant_rows.default, (x,))
            xq = graph.call_function(operator.getitem, (q, 0))
            xs = graph.call_function(operator.getitem, (q, 1))
        q.meta["val"] = qval
        xq.meta["val"], xs.meta["val"] = qval
        for n in group:
            a, dtype = n.args, n.meta["val"].dtype
            if n.target == ops.int8_linear.default:  # (x, w, b, act, mode)
                target, args = ops.int8_linear_prequant.default, (xq, xs, a[1], a[2], a[3], dtype)
            else:  # (x, wg, wu, bg, bu, act, mode)
                target, args = ops.int8_gated_mlp_prequant.default, (xq, xs, *a[1:6], dtype)
            with graph.inserting_before(n):
                new = graph.call_function(target, args)
            _replace(graph, n, new)
            site = _int8_site_of(args[2])
            if site:
                registry.restate(graph, site, suffix=f"rows quantized once for {len(group)} GEMMs")
        gone += len(group) - 1
    return gone


# --- sibling Linears as one int8 GEMM ------------------------------------------------------------------------

# Off: sibling Linears on one x (a decoder's q, k and v projections) stay one GEMM each.
SIBLINGS = True


def _sibling(node: torch.fx.Node) -> Optional[dict]:
    """How a Linear site stacks with its siblings: its x (float rows, or int8 rows and their scales ``xs``),
    weight, bias, activation and output dtype; how it is served now (``int8``: an int8 op call of the pass;
    ``cublas``: cuBLAS's GEMM left by the pass because int8 measured slower there, ``tritonfuse_int8_slower``,
    not for want of support, SQNR or a skip) and its site's name. None for any other node."""
    from tritonfuse.kernels import int8 as I8

    ops = torch.ops.tritonfuse
    val = node.meta.get("val")
    if node.op != "call_function" or node.kwargs or not isinstance(val, torch.Tensor) or val.dim() != 2 \
            or not isinstance(val.shape[0], int):
        return None
    a, t = node.args, node.target
    if t == ops.int8_linear.default and a[4] == config.quant:
        m = dict(x=a[0], xs=None, w=a[1], b=a[2], act=a[3], served="int8", site=_int8_site_of(a[1]))
    elif t == ops.int8_linear_prequant.default:
        m = dict(x=a[0], xs=a[1], w=a[2], b=a[3], act=a[4], served="int8", site=_int8_site_of(a[2]))
        q = a[0].args[0] if isinstance(a[0], torch.fx.Node) and a[0].target == operator.getitem \
            and a[0].args[1] == 0 else None
        if isinstance(q, torch.fx.Node) and q.target == ops.int8_quant_rows.default:
            m.update(x=q.args[0], xs=None)  # the row kernel's (share_quant_pass): the stacked op quantizes x itself
    elif node.meta.get("tritonfuse_int8_slower") and t == aten.addmm.default and _weight_of(a[2]) is not None \
            and len(a) == 3:
        m = dict(x=a[1], xs=None, w=_weight_of(a[2]), b=a[0], act="none", served="cublas", site=node.name)
        if _val(m["b"]).dim() != 1:
            return None
    elif node.meta.get("tritonfuse_int8_slower") and t == aten.mm.default and _weight_of(a[1]) is not None:
        m = dict(x=a[0], xs=None, w=_weight_of(a[1]), b=None, act="none", served="cublas", site=node.name)
    else:
        return None
    found = int8_weight_source(m["w"])
    if found is None or not m["site"]:
        return None  # a computed weight
    gemm_w = _val(m["w"])  # the weight as the GEMM reads it (autocast: its half-precision cast)
    if found[2] is not None:
        if found[1]:
            return None  # autocast's cast seen through views
        # autocast's cast of an fp32 weight: the stack reads the fp32 weight itself, quantized from it once per
        # version (as autocast_weight_pass rewires single calls; the cast is a buffer of the graph's)
        m.update(w=found[0], cast=found[2])
    m.update(node=node, dtype=val.dtype, N=val.shape[1], gemm_dtype=gemm_w.dtype)
    return m


def _rows_root(x):
    # the tensor whose rows a float x views (Q, K and V read views of one norm output)
    while isinstance(x, torch.fx.Node) and x.target in _VIEWS:
        x = x.args[0]
    return x


_OUT_VIEWS = (*_VIEWS, aten.permute.default, aten.transpose.int, aten.t.default, aten.unsqueeze.default,
              aten.squeeze.dim, aten.expand.default, aten.slice.Tensor, aten.select.int, aten.alias.default)


def _reaches_output(node: torch.fx.Node) -> bool:
    # whether the graph returns the node's value or a view of it (its strides are then the user's to see)
    frontier = [node]
    while frontier:
        for u in frontier.pop().users:
            if u.op == "output":
                return True
            if u.target in _OUT_VIEWS:
                frontier.append(u)
    return False


def _restrided_views(node: torch.fx.Node, val, fake_mode) -> Optional[dict]:
    """The example values the views reading ``node`` (through views) take when ``node`` holds ``val`` (another
    layout of the same values), or None where one of them cannot view it so."""
    vals, frontier = {node: val}, [node]
    try:
        while frontier:
            n = frontier.pop()
            for u in n.users:
                if u.op == "call_function" and u.target in _OUT_VIEWS:
                    args = torch.fx.node.map_arg(u.args, lambda a: vals.get(a, a.meta.get("val")))
                    kwargs = torch.fx.node.map_arg(u.kwargs, lambda a: vals.get(a, a.meta.get("val")))
                    with fake_mode:
                        vals[u] = u.target(*args, **kwargs)
                    frontier.append(u)
    except Exception:  # noqa: BLE001 - a view that these strides do not allow
        return None
    del vals[node]
    return vals


def _parent_module(node: torch.fx.Node, site: Optional[str] = None) -> str:
    """The module that holds the Linear a node came from (``layers.3.self_attn`` for its q_proj), "" where
    unknown. Siblings stack within one such module (a block's Q, K and V): an x that every layer reads (an
    encoder's output, by each decoder layer's cross-attention K and V) would otherwise make one GEMM at the
    first layer, every layer's outputs alive from there on. A site our op serves is found by ``site`` (its
    anchor's name): its check recorded the module from the ATen node it replaced. The op's own node carries
    none, and where the pattern matcher puts a replacement's module differs between torch versions (the output
    view under torch 2.14; under 2.11 on the H100 reading it there told no layer from another, 58th session)."""
    name = (registry.site_module(node.graph, site) if site else "") or registry.module_name(node)
    return name.rpartition(".")[0]


def _column_parts(members: list, owns: list, out_val, fake_mode) -> Optional[tuple]:
    """How each of ``members`` (sites with their output columns ``N``, in order) reads its columns of a stacked
    output ``out_val``: (its columns' offset, their example value, ``owns``: a copy of its own where the user
    gets its output, or a view of it), and the new example values of the views that read the columns in place
    (an op with a fixed stride order that reads them would otherwise be handed copies at the strides it was
    traced with). None where such a view cannot take the columns' strides (it would need a copy)."""
    parts, views, off = [], {}, 0
    for m, own in zip(members, owns):
        val = out_val[:, off:off + m["N"]]
        if not own:
            got = _restrided_views(m["node"], val, fake_mode)
            if got is None:
                return None
            views.update(got)
        parts.append((off, val, own))
        off += m["N"]
    return parts, views


def _read_columns(graph: torch.fx.Graph, out: torch.fx.Node, members: list, column_parts: tuple) -> None:
    """Each of ``members``' nodes replaced by its columns of the stacked ``out``, as ``_column_parts`` said."""
    parts, views = column_parts
    for n, val in views.items():
        n.meta["val"] = val
    for m, (off, val, own) in zip(members, parts):
        with graph.inserting_after(out):
            part = graph.call_function(aten.slice.Tensor, (out, 1, off, off + m["N"]))
        part.meta["val"] = val
        if own:
            with graph.inserting_after(part):
                copy = graph.call_function(aten.clone.default, (part,), {"memory_format": torch.contiguous_format})
            copy.meta["val"] = val.clone(memory_format=torch.contiguous_format)
            part = copy
        _replace(graph, m["node"], part, keep=())


def _served_ms(m: dict) -> Optional[float]:
    # the time of the site as it is served now (its int8 op call, or cuBLAS's GEMM), as its check measured it
    rec = _weight_root(m["cast"] if "cast" in m else m["w"]).meta.get("tritonfuse_int8_recs", {}).get(m["site"])
    if not rec:
        return None
    return rec.get("ours_ms") if m["served"] == "int8" else rec.get("theirs_ms")


def siblings_pass(graph: torch.fx.Graph) -> int:
    """Linear sites that read the same x with the same activation and output dtype within one module
    (``_parent_module``: a decoder's q, k and v projections, BERT's Q, K and V) become one int8 GEMM over
    their weights stacked (``kernels.int8.int8_linear_siblings``), each reading its columns of the output,
    where that GEMM measures faster than the sites as they are served: their int8 calls, and the GEMMs left to cuBLAS
    because int8 measured slower alone (Llama-1B's 512-wide k and v). W8A8, or weight-only as the sites
    are (``int8-weight``; a decode step's rows, M <= 16: one kernel launch instead of three). On a CPU
    (nothing timed) only sites int8 serves already are stacked. Under autocast the stack reads the fp32
    weights (not their casts). Not with int8 weights as graph constants. Returns how many GEMMs were made."""
    from tritonfuse.kernels import int8 as I8

    mode = config.quant
    if not SIBLINGS or INT8_CONSTANTS or mode not in ("int8", "int8-weight"):
        return 0
    groups: dict = {}
    for node in graph.nodes:
        m = _sibling(node)
        if m is None:
            continue
        # int8 rows and their scales as nodes (share_quant_pass merged equal ones), or float rows by what they view
        rows = (m["x"], m["xs"]) if m["xs"] is not None else (_rows_root(m["x"]), tuple(_val(m["x"]).shape))
        groups.setdefault((rows, m["act"], m["dtype"], _parent_module(node, m["site"])), []).append(m)
    order = {n: i for i, n in enumerate(graph.nodes)}
    fake_mode, made, casts = None, 0, set()
    for (_, act, dtype, _), members in groups.items():
        if len(members) < 2:
            continue
        first = members[0]  # (in graph order) the stacked GEMM goes where the first of them was
        where = order[first["node"]]
        late = [a for m in members for a in (m["w"], m["b"]) if isinstance(a, torch.fx.Node) and order[a] >= where]
        if any(a.op != "call_function" or any(i.op not in ("placeholder", "get_attr") for i in a.all_input_nodes)
               for a in late):
            continue  # a weight or bias computed after the first site from more than graph inputs (one computed
            # from graph inputs alone, such as autocast's cast of a bias, moves up to the first site)
        x, xs = first["x"], first["xs"]
        xv, wvs = _val(x), [_val(m["w"]) for m in members]
        if any(w.dim() != 2 or w.shape[1] != xv.shape[1] or w.dtype != wvs[0].dtype for w in wvs) \
                or len({m["gemm_dtype"] for m in members}) > 1:
            continue
        n_all = sum(m["N"] for m in members)
        stack = wvs[0].new_empty((n_all, xv.shape[1]), dtype=first["gemm_dtype"])  # (timed as the GEMMs read it)
        has_bias = any(m["b"] is not None for m in members)
        bias = stack.new_empty((n_all,), dtype=dtype) if has_bias else None
        rows = xv if xs is None else xv.new_empty(xv.shape, dtype=dtype)
        if I8.int8_unsupported(rows, stack, bias, act, mode) is not None:
            continue
        # the stacked GEMM (quantizing x itself unless its producer did) against the sites as served now
        rec = K.measure(rows, [stack], bias, act, False, False, int8_mode=mode, int8_fused=xs is not None)
        registry.show_measured(None)
        served = [_served_ms(m) for m in members]
        if "ours_ms" in rec and all(t is not None for t in served):
            take = rec["ours_ms"] < sum(served)
            measured = [rec["ours_ms"], sum(served)]
        else:  # not timed (a CPU): the sites int8 serves alone
            take = rec.get("use", False) and all(m["served"] == "int8" for m in members)
            measured = None
        if not take:
            continue
        if fake_mode is None:
            fake_mode = _fake_mode(graph)
            if fake_mode is None:
                return made
        ws, bs = [m["w"] for m in members], [m["b"] for m in members]
        args = (x, xs, ws, bs, act, dtype, mode)
        with fake_mode:
            out_val = torch.ops.tritonfuse.int8_linear_siblings.default(
                *[[_val(a) for a in v] if isinstance(v, list) else _val(v) for v in args])
        parts = _column_parts(members, [_reaches_output(m["node"]) for m in members], out_val, fake_mode)
        if parts is None:
            continue
        for a in late:
            first["node"].prepend(a)
        with graph.inserting_before(first["node"]):
            out = graph.call_function(torch.ops.tritonfuse.int8_linear_siblings.default, args)
        out.meta["val"] = out_val
        _read_columns(graph, out, members, parts)
        names = ", ".join(m["site"] for m in members)
        for m in members:
            why = (f"one int8 GEMM with its siblings ({names}): {n_all} columns"
                   + (f", measured {measured[0]:.3f} vs {measured[1]:.3f} ms as served alone" if measured else ""))
            kernel = I8.int8_kernel_name(rows.shape[0], mode, False, fused=xs is not None)
            registry.restate(graph, m["site"], kernel=kernel[:-1] + ",siblings]", measured=measured, why=why)
            if "cast" in m:  # (with the views cuBLAS's GEMM read it through)
                c = m["cast"]
                casts.update([c, *(u for u in c.users if u.target in (aten.permute.default, aten.t.default))])
        made += 1
    if made:  # row-kernel quantizations (share_quant_pass's) and autocast's weight casts no GEMM reads now
        ops = torch.ops.tritonfuse
        for n in reversed(list(graph.nodes)):
            src = n.args[0] if n.target == operator.getitem and isinstance(n.args[0], torch.fx.Node) else n
            if not n.users and (src.target == ops.int8_quant_rows.default or n in casts):
                graph.erase_node(n)
    return made


# --- sibling Linears as one floating-point GEMM --------------------------------------------------------------

# On: floating-point sibling Linears on one x (BERT's, Llama's Q, K and V projections) become one GEMM where
# that measures faster; off (the default): a GEMM each, as Inductor leaves them (its group_fusion is off). On
# the H100 (57th session, CUDA graphs) bert-base stacked its 12 Q/K/V groups and ran 6.62 ms against 6.56 off
# (rounds overlapping: no gain), and llama-1b-prefill stacked none (28.75 against 28.85): not worth its
# compile-time measurements.
FLOAT_SIBLINGS = False


def _float_sibling(node: torch.fx.Node) -> Optional[dict]:
    """A floating-point Linear left to cuBLAS, ``mm(x, w.t())`` or ``addmm(b, x, w.t())`` on a static number of
    rows, with w (and b) graph inputs and one dtype throughout: its x, w, b and output columns N. None for any
    other node (a weight computed in the graph, autocast's cast of one: the stack would concatenate it anew)."""
    if node.op != "call_function" or node.kwargs:
        return None
    if node.target == aten.addmm.default and len(node.args) == 3:
        b, x, wt = node.args
    elif node.target == aten.mm.default:
        (x, wt), b = node.args, None
    else:
        return None
    w = _weight_of(wt)
    if not isinstance(x, torch.fx.Node) or w is None or any(
            not isinstance(a, torch.fx.Node) or a.op not in ("placeholder", "get_attr") for a in (w, b) if a is not None):
        return None
    xv, wv, out = _val(x), _val(w), node.meta.get("val")
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or not out.dtype.is_floating_point \
            or wv.dim() != 2 or {xv.dtype, wv.dtype, out.dtype} != {out.dtype} or not isinstance(xv.shape[0], int) \
            or (b is not None and (_val(b).dim() != 1 or _val(b).dtype != out.dtype)):
        return None
    return dict(node=node, x=x, w=w, b=b, N=wv.shape[0])


def float_siblings_pass(graph: torch.fx.Graph) -> int:
    """Floating-point Linears that read the same x (through views of one tensor), all with a bias or all
    without, become one cuBLAS GEMM over their weights concatenated in the graph, each reading its columns of
    the output, where that measures faster than their GEMMs apart (``kernels.linear_act.measure_siblings``; off
    the GPU, always). The concatenation runs on every call, so a weight updated in place is read as it is. A
    sibling whose output (or a view of it) the graph returns (Llama's v in the KV cache it returns) reads a
    contiguous copy of its columns, as its own GEMM wrote them, timed with the stack; in a training graph,
    whose outputs are the tensors its backward saves, such siblings stay apart. Returns how many GEMMs were
    made."""
    if not FLOAT_SIBLINGS:
        return 0
    groups: dict = {}
    for node in graph.nodes:
        m = _float_sibling(node)
        if m is not None:
            key = (_rows_root(m["x"]), tuple(_val(m["x"]).shape), m["b"] is None, _parent_module(node))
            groups.setdefault(key, []).append(m)
    fake_mode, made = None, 0
    for members in groups.values():
        if len(members) < 2:
            continue
        owns = [_reaches_output(m["node"]) for m in members]
        if any(owns) and registry.training_graph():
            continue
        first, has_bias = members[0], members[0]["b"] is not None
        xv = _val(first["x"])
        rec = K.measure_siblings(xv, [_val(m["w"]) for m in members], [_val(m["b"]) for m in members], owns)
        if not rec.get("use"):
            continue
        if fake_mode is None:
            fake_mode = _fake_mode(graph)
            if fake_mode is None:
                return made
        with fake_mode:
            w_val = torch.cat([_val(m["w"]) for m in members])
            b_val = torch.cat([_val(m["b"]) for m in members]) if has_bias else None
            out_val = torch.addmm(b_val, xv, w_val.t()) if has_bias else xv @ w_val.t()
        parts = _column_parts(members, owns, out_val, fake_mode)
        if parts is None:
            continue
        with graph.inserting_before(first["node"]):
            w = graph.call_function(aten.cat.default, ([m["w"] for m in members],))
            w.meta["val"] = w_val
            wt = graph.call_function(aten.permute.default, (w, [1, 0]))
            wt.meta["val"] = w_val.t()
            if has_bias:
                b = graph.call_function(aten.cat.default, ([m["b"] for m in members],))
                b.meta["val"] = b_val
                out = graph.call_function(aten.addmm.default, (b, first["x"], wt))
            else:
                out = graph.call_function(aten.mm.default, (first["x"], wt))
        out.meta["val"] = out_val
        _read_columns(graph, out, members, parts)
        registry.note_stacked(len(members), [rec["ours_ms"], rec["theirs_ms"]] if "ours_ms" in rec else None)
        made += 1
    return made
