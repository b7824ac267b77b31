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
import operator
from typing import Optional

import torch
import torch.nn.functional as F
from torch._inductor.pattern_matcher import Match, PatternMatcherPass, register_replacement

from tritonfuse import registry
from tritonfuse.kernels import norm_residual as K
from tritonfuse.patterns.common import arg_val, fake_value, hinted, memo_trace, search_only, trace_pattern

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
        if not registry.settle(FAMILY, red, kernel, reason, detail):
            return False
        # the site's name, for quant_out_pass to find from the op call: on its weight (a graph input), else on x
        # (a node a later replacement may take the place of)
        anchor = match.kwargs.get("w") if "w" in affine else match.kwargs.get("x")
        if isinstance(anchor, torch.fx.Node):
            anchor.meta.setdefault("tritonfuse_norm_sites", set()).add(red.name)
        return True

    return registry.guarded(FAMILY, check, _reduction_node)


# --- the int8 hook: the norm's kernel quantizes what the next GEMMs read ----------------------------------

# Off: W8A8 GEMMs reading a norm's output quantize it themselves (the row kernel, or Inductor's reduction)
QUANT_OUT = True
# what a GEMM reads of the norm's output, each op here keeping its rows (a permute or transpose only where it
# keeps the last dim: torchvision ViT's attention reads clone(permute(y, [1, 0, 2])))
_ROW_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.clone.default)


def _rows_path(x) -> Optional[tuple]:
    """``(norm op call, [ops from its output y to x])`` where x is the rows of a ``tritonfuse::norm_residual``
    call's y, viewed, copied or permuted with the last dim kept (``_ROW_VIEWS``), else None."""
    path = []
    while isinstance(x, torch.fx.Node) and x.op == "call_function":
        if x.target == operator.getitem and x.args[1] == 0 and isinstance(x.args[0], torch.fx.Node) \
                and x.args[0].target == torch.ops.tritonfuse.norm_residual.default:
            return x.args[0], path[::-1]
        if x.target in (aten.permute.default, aten.transpose.int):
            from tritonfuse.patterns.linear_act import _keeps_rows

            if not _keeps_rows(x):
                return None
        elif x.target not in _ROW_VIEWS:
            return None
        val, src = x.meta.get("val"), x.args[0].meta.get("val") if isinstance(x.args[0], torch.fx.Node) else None
        if not isinstance(val, torch.Tensor) or not isinstance(src, torch.Tensor) or val.dim() == 0 \
                or src.dim() == 0 or val.shape[-1] != src.shape[-1]:
            return None
        path.append(x)
        x = x.args[0]
    return None


def _hook_unsupported(norm: torch.fx.Node) -> Optional[str]:
    # why the norm call cannot also write y's int8 rows (its kernel needs each row in one block, a static size)
    vals = norm.meta.get("val")
    if not isinstance(vals, (tuple, list)) or not isinstance(vals[0], torch.Tensor) \
            or norm.kwargs.get("eps_tensor") is not None or len(norm.args) != 10:
        return "not an op call this pass knows"
    y = vals[0]
    if not all(isinstance(d, int) for d in y.shape) or y.numel() == 0:
        return "a dynamic or empty shape"
    return K.quant_out_unsupported(y)


# the ATen ops of kernels.int8.quant_rows_ref, as the post-grad graph holds them
_QUANT_OPS = {torch.ops.prims.convert_element_type.default, aten.abs.default, aten.amax.default, aten.ne.Scalar,
              aten.eq.Tensor, aten.mul.Tensor, aten.full.default, aten.where.self, aten.gt.Scalar, aten.div.Tensor,
              aten.copysign.Tensor, aten.add.Tensor, aten.reshape.default}


def _graph_quant_root(xq, xs) -> Optional[torch.fx.Node]:
    """x where int8 rows ``xq`` and row scales ``xs`` are ``kernels.int8.quant_rows_ref(x)`` in ATen ops (as
    linear_act's W8A8 sites compute them for Inductor to fuse into a norm's kernel), else None. Compared node
    by node with that function traced at x's shape, constants equal by value: share_quant_pass merges equal
    constants (one ``full`` of zeros read twice), which a pattern traced from the function would miss."""
    if not isinstance(xq, torch.fx.Node) or not isinstance(xs, torch.fx.Node) \
            or xq.target != torch.ops.prims.convert_element_type.default or xq.args[1] != torch.int8:
        return None
    # x: the operand of abs before the fp32 cast (none for fp32 rows) under the one amax xq depends on (not
    # looking past a cast to fp32 or an amax: upstream, x's producers may hold other quantizations)
    amaxes, frontier, seen = set(), [xq], set()
    while frontier and len(seen) < 64:
        n = frontier.pop()
        if not isinstance(n, torch.fx.Node) or n in seen or n.op != "call_function" or n.target not in _QUANT_OPS:
            continue
        seen.add(n)
        if n.target == aten.amax.default:
            amaxes.add(n)
        elif n is xq or n.target != torch.ops.prims.convert_element_type.default:
            frontier.extend(n.all_input_nodes)
    amax = next(iter(amaxes)) if len(amaxes) == 1 else None
    if amax is None or amax.args[0].target != aten.abs.default:
        return None
    x = amax.args[0].args[0]
    if x.target == torch.ops.prims.convert_element_type.default and x.args[1] == torch.float32:
        x = x.args[0]
    val = x.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() != 2 or not all(isinstance(d, int) for d in val.shape):
        return None
    if _quant_ref_keys(tuple(val.shape), val.dtype) != (_dag_key(xq, x), _dag_key(xs, x)):
        return None
    return x


@functools.lru_cache(maxsize=64)
def _quant_ref_keys(shape: tuple, dtype: torch.dtype) -> tuple:
    # the _dag_keys of kernels.int8.quant_rows_ref's two outputs traced at rows of this shape and dtype: traced
    # once per shape (every layer of a model quantizes rows of the same shape), the keys hold values only
    from tritonfuse.kernels.int8 import quant_rows_ref

    gm = trace_pattern(quant_rows_ref, [torch.empty(shape, dtype=dtype, device="meta")])
    ph = next(n for n in gm.graph.nodes if n.op == "placeholder")
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    return _dag_key(out[0], ph), _dag_key(out[1], ph)


def _dag_key(node, root, memo=None):
    # what ``node`` computes from ``root`` as a nested key (ops, constants by value; devices ignored)
    memo = {} if memo is None else memo
    if node is root:
        return ("x",)
    if isinstance(node, torch.fx.Node):
        if node not in memo:
            if node.op != "call_function" or len(memo) > 64:
                return ("node", id(node))
            memo[node] = (str(node.target), _dag_key(list(node.args), root, memo),
                          _dag_key(sorted(node.kwargs.items()), root, memo))
        return memo[node]
    if isinstance(node, (list, tuple)):
        return tuple(_dag_key(a, root, memo) for a in node)
    if isinstance(node, torch.device):
        return ("device",)
    if isinstance(node, float) and node != node:
        return ("nan",)
    return ("c", repr(node))


def _graph_quant_to_op(graph: torch.fx.Graph) -> int:
    """Quantizations of a norm op call's output in ATen ops (``_graph_quant_root``) become the row kernel's
    op call (``int8_quant_rows``), which quant_out_pass then hands to the norm's kernel: linear_act wrote them
    for Inductor to fuse into the norm's kernel, but once the norm is our op call they are a reduction kernel
    of their own (bert's LayerNorms)."""
    ops = torch.ops.tritonfuse
    pre = (ops.int8_linear_prequant.default, ops.int8_gated_mlp_prequant.default, ops.int8_linear_siblings.default,
           ops.int8_linear_amax.default, ops.int8_mm.default, ops.int8_gated_mm.default)
    pairs = dict.fromkeys((n.args[0], n.args[1]) for n in graph.nodes if n.op == "call_function" and n.target in pre
                          and len(n.args) > 1 and isinstance(n.args[0], torch.fx.Node)
                          and isinstance(n.args[1], torch.fx.Node))  # (in graph order)
    made, done = 0, []
    for xq, xs in pairs:
        x = _graph_quant_root(xq, xs)
        got = _rows_path(x) if x is not None else None
        if got is None or _hook_unsupported(got[0]) is not None:
            continue
        with graph.inserting_before(xq):
            q = graph.call_function(ops.int8_quant_rows.default, (x,))
            q0 = graph.call_function(operator.getitem, (q, 0))
            q1 = graph.call_function(operator.getitem, (q, 1))
        q.meta["val"] = (xq.meta["val"], xs.meta["val"])
        q0.meta["val"], q1.meta["val"] = xq.meta["val"], xs.meta["val"]
        xq.replace_all_uses_with(q0)
        xs.replace_all_uses_with(q1)
        done.append((xq, xs, x))
        made += 1
    erased: set = set()
    for xq, xs, x in done:  # the ATen ops of the quantization that nothing reads now
        frontier = [xq, xs]
        while frontier:
            n = frontier.pop()
            if n is x or n in erased or n.users or n.op != "call_function" \
                    or getattr(n.target, "namespace", None) not in ("aten", "prims"):
                continue
            inputs = n.all_input_nodes
            graph.erase_node(n)
            erased.add(n)
            frontier.extend(inputs)
    return made


def _replay(graph: torch.fx.Graph, src: torch.fx.Node, path: list, scale: bool, fake_mode) -> torch.fx.Node:
    """``path`` (views, copies and row-keeping permutes of y) redone on ``src``: the norm's int8 rows (y's
    shape), or (``scale``) its row scales viewed as y's shape with a last dim of 1, ending as [rows]."""
    cur = src
    if scale:
        shape = [*path[0].args[0].meta["val"].shape[:-1], 1] if path else None
        cur = _node(graph, aten.reshape.default, (cur, shape), fake_mode) if shape else cur
    for p in path:
        args = list(p.args)
        if scale and p.target in (aten.view.default, aten.reshape.default, aten._unsafe_view.default):
            args[1] = [*args[1][:-1], 1]
        cur = _node(graph, p.target, (cur, *args[1:]), fake_mode, p.kwargs)
    if scale and path:
        cur = _node(graph, aten.reshape.default, (cur, [-1]), fake_mode)
    return cur


def _node(graph, target, args, fake_mode, kwargs=None) -> torch.fx.Node:
    n = graph.call_function(target, args, kwargs or {})
    _refresh_val(n, fake_mode)
    return n


def _refresh_val(n: torch.fx.Node, fake_mode) -> None:
    # the node's example value from its arguments' (after a new node, or a changed argument)
    n.meta["val"] = fake_value(n, fake_mode=fake_mode)


def _readers(norm: torch.fx.Node) -> list:
    """The W8A8 op calls that quantize the norm's output y themselves, each with the ops from y to the x it
    reads: ``int8_quant_rows`` (shared by several GEMMs, or from ``_graph_quant_to_op``), and ``int8_linear``,
    ``int8_gated_mlp``, ``int8_linear_siblings`` and ``int8_linear_amax`` handed float rows."""
    from tritonfuse.kernels import int8 as I8

    ops = torch.ops.tritonfuse
    y = next((u for u in norm.users if u.target == operator.getitem and u.args[1] == 0), None)
    found, frontier = {}, [y] if y is not None else []
    while frontier:
        for u in list(frontier.pop().users):
            if u.op != "call_function":
                continue
            if u.target in (*_ROW_VIEWS, aten.permute.default, aten.transpose.int):
                frontier.append(u)
                continue
            a, val = u.args, u.meta.get("val")
            if not a or not isinstance(a[0], torch.fx.Node) or u.kwargs or u in found:
                continue
            got = _rows_path(a[0])
            if got is None or got[0] is not norm or _val_rows(a[0]) is None:
                continue
            m = _val_rows(a[0])
            if u.target == ops.int8_quant_rows.default:
                ok = True
            elif u.target in (ops.int8_linear.default, ops.int8_gated_mlp.default):
                ok = a[-1] == "int8" and I8.fused_quant(m, "int8")
            elif u.target == ops.int8_linear_siblings.default:
                ok = a[1] is None and len(a) == 7 and a[6] == "int8" and I8.fused_quant(m, "int8")
            elif u.target == ops.int8_linear_amax.default:
                ok = a[1] is None and I8.fused_quant(m, "int8")
            else:
                ok = False
            if ok and isinstance(val, (torch.Tensor, tuple, list)):
                found[u] = got[1]
    return list(found.items())


def _val_rows(x) -> Optional[int]:
    val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
    if isinstance(val, torch.Tensor) and val.dim() == 2 and all(isinstance(d, int) for d in val.shape):
        return val.shape[0]
    return None


def _fused_name(kernel: str) -> str:
    # a W8A8 site's kernel name with its rows quantized by their producer ("fused quant")
    kernel = kernel.split(",rows quantized once")[0].rstrip("]") + "]" if ",rows quantized once" in kernel else kernel
    if ",fused quant" in kernel or not kernel.startswith("int8_w8a8["):
        return kernel
    what, rest = kernel[len("int8_w8a8["):].split("]", 1)[0].partition(",")[::2]
    return f"int8_w8a8[{what},fused quant" + (f",{rest}" if rest else "") + "]"


def quant_out_pass(graph: torch.fx.Graph) -> int:
    """Norm op calls (``tritonfuse::norm_residual``) whose output W8A8 GEMMs quantize per row (the row kernel
    inside their ops or shared, or Inductor's reduction of ``quant_rows_ref``'s ATen ops) also write that
    quantization (``quant_out``: the int8 rows and scales, bit for bit the row kernel's), and the GEMMs read it
    through the ``*_prequant`` ops: one pass over y fewer (Llama-1B's prefill, 52nd session: the row kernel
    took 1.89 of 22.53 ms, most of it on the norms' outputs). Run after the int8 steps of linear_act.
    Returns how many norm calls write their int8 rows."""
    from tritonfuse.patterns.linear_act import _fake_mode, _int8_site_of, _replace

    if not QUANT_OUT:
        return 0
    ops = torch.ops.tritonfuse
    norms = [n for n in graph.nodes if n.op == "call_function" and n.target == ops.norm_residual.default]
    if not norms or all(n.args[9] for n in norms if len(n.args) == 10):
        return 0
    _graph_quant_to_op(graph)
    fake_mode, made, hooked = None, 0, []
    for norm in norms:
        if norm.args[9] or _hook_unsupported(norm) is not None:
            continue
        readers = _readers(norm)
        if not readers:
            continue
        if fake_mode is None:
            fake_mode = _fake_mode(graph)
            if fake_mode is None:
                return made
        # the call writes the int8 rows too (its other outputs unchanged): valid before any reader moves
        norm.update_arg(9, True)
        _refresh_val(norm, fake_mode)
        with graph.inserting_after(norm):
            q = _node(graph, operator.getitem, (norm, 4), fake_mode)
        with graph.inserting_after(q):
            s = _node(graph, operator.getitem, (norm, 5), fake_mode)
        sites = set()
        for reader, path in readers:
            with graph.inserting_before(reader):
                xq, xs = _replay(graph, q, path, False, fake_mode), _replay(graph, s, path, True, fake_mode)
            a, t = reader.args, reader.target
            if t == ops.int8_quant_rows.default:
                for u in list(reader.users):
                    if u.target == operator.getitem:
                        _replace(graph, u, (xq, xs)[u.args[1]], keep=())
                sites.update(_sites_reading(ops, (xq, xs)))
                if not reader.users:
                    graph.erase_node(reader)
                continue
            if t == ops.int8_linear.default:  # (x, w, b, act, mode)
                with graph.inserting_before(reader):
                    new = graph.call_function(ops.int8_linear_prequant.default,
                                              (xq, xs, a[1], a[2], a[3], reader.meta["val"].dtype))
                _replace(graph, reader, new)
                sites.add(_int8_site_of(a[1]))
            elif t == ops.int8_gated_mlp.default:  # (x, wg, wu, bg, bu, act, mode)
                with graph.inserting_before(reader):
                    new = graph.call_function(ops.int8_gated_mlp_prequant.default,
                                              (xq, xs, *a[1:6], reader.meta["val"].dtype))
                _replace(graph, reader, new)
                sites.add(_int8_site_of(a[1]))
            else:  # siblings (x, xs, ws, ...), amax (x, xs, w, wu, ...): handed the int8 rows and their scales
                reader.update_arg(0, xq)
                reader.update_arg(1, xs)
                sites.update(_int8_site_of(w) for w in (a[2] if t == ops.int8_linear_siblings.default else a[2:3]))
        anchor = norm.args[2] if norm.args[2] is not None else norm.args[0]
        names = anchor.meta.get("tritonfuse_norm_sites", ()) if isinstance(anchor, torch.fx.Node) else ()
        if len(names) == 1:  # (a weight two norms share names both: neither is restated)
            hooked.append((norm, next(iter(names))))
        else:
            hooked.append((norm, None))
        for site in sites - {None}:
            kernel = registry.site_kernel(graph, site)
            if kernel:
                registry.restate(graph, site, kernel=_fused_name(kernel))
        made += 1
    if made:  # the views and copies of y the readers read that nothing reads now
        for n in reversed(list(graph.nodes)):
            if not n.users and n.op == "call_function" and n.target in (*_ROW_VIEWS, aten.permute.default,
                                                                         aten.transpose.int):
                graph.erase_node(n)
    for norm, name in hooked:
        # y itself read by nothing now (Llama's norms: only its GEMMs read it): the kernel stores its int8 rows
        # alone, M x N half-precision values fewer to write (8192 x 2048 bf16: 32 MB a norm)
        y = [u for u in norm.users if u.target == operator.getitem and u.args[1] == 0]
        only = all(not u.users for u in y)
        if only:
            for u in y:
                graph.erase_node(u)
            norm.update_kwarg("write_y", False)
            _refresh_val(norm, fake_mode)
        if name is not None:
            registry.restate(graph, name, suffix="int8 out only" if only else "int8 out")
    return made


def _sites_reading(ops, nodes) -> set:
    # the int8 sites of the op calls that read the int8 rows ``nodes`` (through nothing but their arguments)
    from tritonfuse.patterns.linear_act import _int8_site_of

    got = set()
    for n in nodes:
        for u in n.users:
            if u.target in (ops.int8_linear_prequant.default, ops.int8_gated_mlp_prequant.default,
                            ops.int8_linear_amax.default):
                got.add(_int8_site_of(u.args[2]))
            elif u.target == ops.int8_linear_siblings.default:
                got.update(_int8_site_of(w) for w in u.args[2])
    return got


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


def _trace_cloned(fn, args, **kwargs) -> torch.fx.GraphModule:
    return memo_trace(_trace_functional_cloned, fn, args, **kwargs)


def _trace_functional_cloned(fn, args, **kwargs) -> torch.fx.GraphModule:
    # a ``clone`` variant's search function: tracing drops the contiguous copy of a contiguous example sum, so
    # it is put back between the sum and the norm, as the model's graph holds it (the check's trace at a
    # match's transposed operand makes it itself). The replacement holds no sum of its inputs: nothing changes
    # there.
    gm = _trace_functional(fn, args, **kwargs)
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"][:2]
    for add in gm.graph.find_nodes(op="call_function", target=aten.add.Tensor):
        if list(add.args[:2]) == inputs and not any(u.target == aten.clone.default for u in add.users):
            with gm.graph.inserting_after(add):
                copy = gm.graph.call_function(aten.clone.default, (add,), {"memory_format": torch.contiguous_format})
            add.replace_all_uses_with(copy, delete_user_cb=lambda u: u is not copy and u.op != "output")
            gm.recompile()
            break
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
                    # ``clone``: Inductor's LayerNorm decomposition reads a sum laid out as a transposed operand
                    # through a contiguous copy (torchvision ViT: x + the attention's sequence-major output;
                    # inference), which ``_trace_cloned`` puts in the search graph
                    for clone in (False, True) if res and style == "ln" and not stats else (False,):
                        for affine in _AFFINE[style]:
                            x = torch.empty(2, 4, 16, dtype=dtype)
                            args = [x] + ([torch.empty(2, 4, 16, dtype=dtype)] if res else [])
                            args += [torch.empty(16, dtype=dtype) for _ in affine]
                            reg(search_only(_norm_pattern(style, affine, res, stats)),
                                _norm_replacement(style, affine, res, stats),
                                args, extra_check=_make_check(style, affine, res, stats),
                                trace_fn=_trace_cloned if clone else _trace)
    return pm
