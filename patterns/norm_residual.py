"""Residual add + LayerNorm / RMSNorm patterns, replaced by ``tritonfuse::norm_residual``.

Inductor decomposes ``native_layer_norm`` before the post-grad passes, so a LayerNorm arrives as
``var_mean(h, [-1], correction=0, keepdim=True) -> (h - mean) * rsqrt(var + eps) [* w] [+ b]`` (with fp32
converts around it in half precision); RMSNorm arrives as ``h * rsqrt(mean(h ** 2, [-1]) + eps) [* w]``,
written by hand (HF: fp32 upcast, ``weight * y.to(input_dtype)``) or by ``F.rms_norm`` (weight applied in
fp32). Every norm comes in three forms:

- ``norm(x)``: no residual;
- ``norm(x + r)`` where the sum has no other user (post-norm: BERT, the last norm of a pre-norm stack);
- ``(norm(x + r), x + r)`` where the sum is also used afterwards (pre-norm: Llama, ViT): a two-output
  pattern, the kernel writes the sum too.

eps is a pattern argument (``scalar_workaround``), never a constant; the check reads it from the graph. In a
dynamic graph (``torch.compile(dynamic=True)``) a model's float can arrive as a 0-d tensor input (HF RMSNorm's
``variance_epsilon``); the op then takes that tensor and reads eps at run time.

Training graphs: the post-grad pass sees the forward and the backward graph separately. A training forward
saves the norm's statistics for the backward (LayerNorm: mean and rstd; RMSNorm: rstd), so they have users
outside the norm; the ``+stats`` variants match exactly that and the kernel writes the fp32 statistics
(``stats=True``) that Inductor's backward then reads: the forward is served by tritonfuse, the backward
stays Inductor's. The Triton backward kernel (``tritonfuse::norm_residual_backward``) is an op for direct
use and the benchmark: alone it beats Inductor's backward (H200, 1.03-1.22x at hidden 768-8192), but served
in place of the decomposed ``native_layer_norm_backward`` of bert-base's training graph (commit 32abeb2)
it made the step slower in one run: 26.94 against Inductor's 25.63 ms (0.95x; 0.99x without it, in an
earlier run). Inductor fuses the norm's backward with the gradient sums, dropout and casts around it,
which an opaque kernel breaks. A forward that saves other values than these (the partitioner decides) is
not matched at all and stays Inductor's. Any other use of an intermediate (e.g. the variance before eps)
also leaves the site alone.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch._inductor.pattern_matcher import Match, PatternMatcherPass, register_replacement

from tritonfuse import registry
from tritonfuse.kernels import norm_residual as K
from tritonfuse.patterns.common import arg_val, hinted, memo_trace, search_only, trace_pattern

FAMILY = "norm_residual"
_EPS = 2.0 ** -9  # placeholder traced for eps: exact in every float dtype, unlike any other constant here
aten = torch.ops.aten

# --- the norms as written in models ---------------------------------------------------------------------
# style: "ln" F.layer_norm; "hf" HF RMSNorm (cast to the input dtype before the weight, weight first);
# "fn" F.rms_norm (weight applied in fp32); "hand" x * rsqrt(...) * w with the weight last, no casts;
# "t5" HF T5LayerNorm (T5, Flan-T5, mT5, UMT5 encoders): only the variance is taken in fp32, the
# half-precision input is multiplied by the fp32 rstd directly (promoted), then cast and weighted as "hf".
STYLES = ("ln", "hf", "fn", "hand", "t5")


def _norm(h, w, b, eps, style, stats=False):
    """The norm as ``style`` writes it; with ``stats`` also its (mean, rstd) or (rstd,) as a training
    forward saves them for the backward."""
    if style == "ln" and not stats:
        return F.layer_norm(h, (h.shape[-1],), w, b, eps)
    if style == "fn" and not stats:
        return F.rms_norm(h, (h.shape[-1],), w, eps)
    dtype = h.dtype
    if style == "t5":
        rstd = torch.rsqrt(h.to(torch.float32).pow(2).mean(-1, keepdim=True) + eps)
        y = (h * rstd).to(dtype)
        y = w * y if w is not None else y
        return (y, rstd) if stats else y
    hf = h.to(torch.float32)
    if style == "fn":
        # F.rms_norm's decomposition with its rstd exposed: positive dims, eps added as a Scalar
        rstd = torch.rsqrt(aten.add.Scalar(hf.pow(2).mean([hf.dim() - 1], keepdim=True), eps))
        y = hf * rstd
        return (y * w if w is not None else y).to(dtype), rstd
    if style == "ln":
        # what Inductor's decomposition of native_layer_norm leaves, with its mean and rstd exposed
        var, mean = torch.var_mean(hf, [hf.dim() - 1], correction=0, keepdim=True)  # positive, as decomposed
        rstd = torch.rsqrt(var + eps)
        y = (hf - mean) * rstd
        y = y * w if w is not None else y
        y = y + b if b is not None else y
        return y.to(dtype), mean, rstd
    rstd = torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
    y = hf * rstd
    if style == "hf":
        y = y.to(dtype)
        y = w * y if w is not None else y
    else:
        y = (y * w).to(dtype) if w is not None else y.to(dtype)
    return (y, rstd) if stats else y


def _kind(style):
    return "layer" if style == "ln" else "rms"


# --- search and replacement functions ------------------------------------------------------------------
# ``affine`` is "wb" (weight and bias), "w" (weight) or "" (none); ``res`` is "" (no residual), "add" (the
# sum is used by the norm only) or "sum" (the sum is an output too). With ``stats`` the pattern also
# returns the statistics a training forward saves for Inductor's backward: the kernel writes them.


def _norm_pattern(style, affine, res, stats=False):
    def body(x, r, w, b, eps):
        h = x + r if res else x
        out = _norm(h, w if "w" in affine else None, b if "b" in affine else None, eps, style, stats)
        y, saved = (out[0], out[1:]) if stats else (out, ())
        return (y, h, *saved) if res == "sum" else ((y, *saved) if stats else y)

    return _with_args(body, affine, res)


def _norm_replacement(style, affine, res, stats=False):
    kind = _kind(style)
    cast_before_weight = style in ("hf", "t5")

    def body(x, r, w, b, eps):
        # eps: a float, or a 0-d tensor in a dynamic graph (the op reads its value at run time)
        teps = isinstance(eps, torch.Tensor)
        y, h, mean, rstd, *_ = torch.ops.tritonfuse.norm_residual(
            x, r if res else None, w if "w" in affine else None, b if "b" in affine else None,
            0.0 if teps else eps, kind, res == "sum", cast_before_weight, stats, False,
            eps_tensor=eps if teps else None)
        saved = ()
        if stats:
            keep = (*y.shape[:-1], 1)
            saved = (mean.reshape(keep), rstd.reshape(keep)) if kind == "layer" else (rstd.reshape(keep),)
        return (y, h, *saved) if res == "sum" else ((y, *saved) if stats else y)

    return _with_args(body, affine, res)


def _with_args(body, affine, res):
    # register_replacement reads the argument names: give each variant exactly the ones it uses
    table = {
        ("wb", True): lambda x, r, w, b, eps: body(x, r, w, b, eps),
        ("w", True): lambda x, r, w, eps: body(x, r, w, None, eps),
        ("", True): lambda x, r, eps: body(x, r, None, None, eps),
        ("wb", False): lambda x, w, b, eps: body(x, None, w, b, eps),
        ("w", False): lambda x, w, eps: body(x, None, w, None, eps),
        ("", False): lambda x, eps: body(x, None, None, None, eps),
    }
    return table[(affine, bool(res))]


# --- checks --------------------------------------------------------------------------------------------

_REDUCTIONS = (aten.var_mean.correction, aten.mean.dim)


def _reduction_node(match: Match):
    for n in match.nodes:
        if n.target in _REDUCTIONS:
            return n
    return None


def _sum_node(match: Match):
    # the residual add: the only add whose operands are both pattern inputs
    inputs = {match.kwargs.get("x"), match.kwargs.get("r")}
    for n in match.nodes:
        if n.target == aten.add.Tensor and set(n.args[:2]) == inputs:
            return n
    return None


def _eps(match: Match):
    """eps as the graph holds it: the constant added before ``rsqrt``, or the 0-d float tensor added there
    (its value; ``torch.compile(dynamic=True)`` passes a model's float, HF RMSNorm's eps, as a graph input).
    Read from the graph, not from ``match.kwargs``: on torch 2.11 (H100 run) every site fell back with eps
    missing from the re-checked match."""
    for n in match.nodes:
        if n.target == aten.rsqrt.default and isinstance(n.args[0], torch.fx.Node):
            add = n.args[0]
            if add.target in (aten.add.Tensor, aten.add.Scalar):
                consts = [a for a in add.args[:2] if isinstance(a, (int, float)) and not isinstance(a, bool)]
                if len(consts) == 1:
                    return float(consts[0])
                stat = _reduction_node(match)
                scalars = [a.meta.get("val") for a in add.args[:2] if isinstance(a, torch.fx.Node)
                           and a not in (stat, *(stat.users if stat is not None else ()))]
                if len(scalars) == 1 and isinstance(scalars[0], torch.Tensor):
                    return scalars[0]
    return None


def _scalar_tensor(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() == 0 and t.dtype.is_floating_point


def _reduces_last_dim_only(red: torch.fx.Node) -> bool:
    val = red.args[0].meta.get("val")
    dims = red.args[1] if len(red.args) > 1 else red.kwargs.get("dim")
    if val is None or not isinstance(dims, (list, tuple)) or len(dims) != 1:
        return False
    if dims[0] not in (-1, val.dim() - 1):
        return False
    if red.target == aten.var_mean.correction:
        return red.kwargs.get("correction", 1) == 0 and red.kwargs.get("keepdim", False)
    return (red.args[2] if len(red.args) > 2 else red.kwargs.get("keepdim", False)) is True


def _describe(x, dtype) -> str:
    m = x.numel() // max(1, x.shape[-1])
    return f"M={m} N={x.shape[-1]} {str(dtype).replace('torch.', '')}"


def _make_check(style: str, affine: str, res: str, stats: bool = False):
    kind = _kind(style)
    kernel = f"norm_residual[{kind}{'+' + res if res else ''}{'+stats' if stats else ''}]"

    def check(match: Match) -> bool:
        red = _reduction_node(match)
        # every tensor argument must be a tensor: ``y * w`` also matches ``y * 2``
        names = ("x",) + (("r",) if res else ()) + (("w",) if "w" in affine else ()) + (("b",) if "b" in affine else ())
        if any(not isinstance(arg_val(match, n), torch.Tensor) for n in names):
            return False
        if red is None or not _reduces_last_dim_only(red):
            return False
        x = arg_val(match, "x")
        r = arg_val(match, "r") if res else None
        if res:
            total = _sum_node(match)
            if total is None:
                return False
            outside = [u for u in total.users if u not in match.nodes]
            if (res == "sum") != bool(outside):
                return False  # the other residual form serves this site
        if stats:
            saved = match.output_nodes()[-(2 if kind == "layer" else 1):]
            if not any(u not in match.nodes for n in saved for u in n.users):
                return False  # an inference graph: the variant without statistics serves it
        out = match.output_nodes()[0].meta.get("val")
        if out is None:
            return False
        full = torch.broadcast_shapes(x.shape, r.shape) if r is not None else x.shape
        detail = _describe(out, x.dtype)
        w = arg_val(match, "w") if "w" in affine else None
        b = arg_val(match, "b") if "b" in affine else None
        eps = _eps(match)
        reason = None
        if out.dtype != x.dtype or tuple(out.shape) != tuple(full):
            reason = f"output {out.dtype} {tuple(out.shape)} differs from the input's {x.dtype} {tuple(full)}"
        elif any(n.target == torch.ops.prims.convert_element_type.default
                 and n.args[1] not in (torch.float32, x.dtype) for n in match.nodes):
            reason = "the norm is computed in a dtype other than fp32"
        elif not isinstance(eps, (int, float)) and not _scalar_tensor(eps):
            reason = "eps is neither a constant nor a 0-d float tensor"
        elif not isinstance(full[-1], int):
            reason = "dynamic hidden size"
        if reason is None:
            reason = K.unsupported(x, r, w, b)
        if reason is None:
            reason = K.probe(str(x.device), x.dtype, kind, full[-1], bool(res), w is not None, b is not None,
                             res == "sum", style in ("hf", "t5"), stats)
        xh, rh = hinted(x), hinted(r)  # a dynamic graph's rows: timed at their example sizes
        if reason is None and (xh is None or (r is not None and rh is None)):
            reason = "data-dependent number of rows"
        if reason is None:
            rec = K.measure(xh, rh, w, b, kind, res == "sum", stats)
            if not rec["use"]:
                reason = registry.slower_reason(rec, "a same-bytes pass") + ": Inductor's fused norm kept"
        return registry.settle(FAMILY, red, kernel, reason, detail)

    return registry.guarded(FAMILY, check, _reduction_node)


# --- registration --------------------------------------------------------------------------------------

# F.rms_norm's decomposition adds eps in place on a fresh intermediate; the post-grad graph is functional
_FUNCTIONAL = {aten.add_.Scalar: aten.add.Scalar, aten.add_.Tensor: aten.add.Tensor}


def _trace(fn, args, **kwargs) -> torch.fx.GraphModule:
    return memo_trace(_trace_functional, fn, args, **kwargs)


def _trace_functional(fn, args, **kwargs) -> torch.fx.GraphModule:
    gm = trace_pattern(fn, args, **kwargs)
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in _FUNCTIONAL:
            node.target = _FUNCTIONAL[node.target]
    gm.recompile()
    return gm


_AFFINE = {"ln": ("wb", "w", ""), "hf": ("w", ""), "fn": ("w", ""), "hand": ("w",), "t5": ("w",)}


# the ops each style's patterns hold (tests/test_norm_residual.py checks every pattern): a graph without them
# builds none of that style's patterns. LayerNorm decomposes to var_mean, the RMS norms to pow and mean.
STYLE_OPS = {"ln": (aten.var_mean.correction,), **{s: (aten.pow.Tensor_Scalar, aten.mean.dim)
                                                    for s in ("hf", "fn", "hand", "t5")}}


def pattern_spec(graph_ops: frozenset, graph=None):
    """``(styles,)``: the norm styles whose patterns a graph holding ``graph_ops`` may match, or None where it
    can match none (every pattern holds a reciprocal square root and its style's ops). A BERT graph builds
    the LayerNorm patterns alone: 36 of 102 traces, 1.7 of 2.7 s cold on the CPU machine."""
    if aten.rsqrt.default not in graph_ops:
        return None
    styles = tuple(s for s in STYLES if all(op in graph_ops for op in STYLE_OPS[s]))
    return (styles,) if styles else None


def pattern_pass(styles=None) -> PatternMatcherPass:
    """The norm_residual patterns of ``styles`` (default: every style; ``pattern_spec`` picks them for a
    graph) in one pass, built once per process."""
    return _build(None if styles is None else tuple(styles))


@functools.lru_cache(maxsize=None)
def _build(styles=None) -> PatternMatcherPass:
    pm = PatternMatcherPass(pass_name="tritonfuse_norm_residual")
    reg = functools.partial(register_replacement, trace_fn=_trace, pass_dicts=pm,
                            scalar_workaround={"eps": _EPS})
    # residual forms first: they share their anchor (the norm's output) with the plain norm, which would
    # otherwise take the site and leave the add behind
    for res in ("sum", "add", ""):
        for stats in (False, True):
            for dtype in (torch.float32, torch.float16):
                for style in STYLES:
                    if styles is not None and style not in styles:
                        continue
                    if style == "t5" and dtype == torch.float32:
                        continue  # in fp32 the T5 norm is the HF RMSNorm graph
                    for affine in _AFFINE[style]:
                        x = torch.empty(2, 4, 16, dtype=dtype)
                        args = [x] + ([torch.empty(2, 4, 16, dtype=dtype)] if res else [])
                        args += [torch.empty(16, dtype=dtype) for _ in affine]
                        reg(search_only(_norm_pattern(style, affine, res, stats)),
                            _norm_replacement(style, affine, res, stats),
                            args, extra_check=_make_check(style, affine, res, stats))
    return pm
