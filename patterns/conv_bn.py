"""Conv2d + BatchNorm (eval) + activation + residual patterns on the post-grad ATen graph.

In eval mode Inductor decomposes ``batch_norm`` into ``(conv - mean) * rsqrt(var + eps) * gamma + beta`` with
the parameters as graph inputs (with fp32 upcasts in half precision); these patterns are traced from plain
PyTorch code in fp32 and fp16 the same way. Heads: conv -> BN, conv with bias -> BN, conv with bias (no BN),
conv -> BN(affine=False);
epilogues: ``act``, then optionally ``+ r`` (either operand order) and ``act2`` (ResNet's BasicBlock and
Bottleneck end in ``relu(bn(conv(x)) + identity)``). Training-mode BN (batch statistics) is a different graph
and is never matched.

The stride and padding of the conv are wildcards in the pattern and read from the matched node, so the
replacement is built per match (``register_graph_pattern`` + ``Match.replace_by_example``, as Inductor's own
post-grad passes do) rather than with a fixed ``register_replacement`` function. A site is served by
``tritonfuse::conv_bn`` (Triton implicit GEMM) where that measured faster for its shape
(``kernels.conv_bn.choose``), or by cuDNN's fused conv + bias + ReLU (+ residual) with the BN folded into the
weight and bias by graph ops where that measured faster still; elsewhere it is left to Inductor (cuDNN and
Inductor's fused epilogue) with the timings as the reason.

A convolution whose stride equals its kernel (a patch embedding: ViT, Swin, ConvNeXt) is one GEMM over its
input's patches: where it is not part of a site above, it is rewritten as a gather and a GEMM
(``kernels.conv_bn.patch_gemm``) where that measured faster than cuDNN's convolution, whatever follows it.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections import Counter
from typing import Optional

import torch
import torch.nn.functional as F
from torch._inductor import pattern_matcher
from torch._inductor.pattern_matcher import CallFunction, KeywordArg, Match, PatternMatcherPass, register_graph_pattern

from tritonfuse import config, registry
from tritonfuse.kernels import conv_bn as K
from tritonfuse.patterns.common import ACTIVATION_OPS, COMPUTED_WEIGHT, int8_weight_source, trace_pattern

FAMILY = "conv_bn"
# conv -> BN, conv(bias) -> BN, conv(bias) alone, conv -> BN(affine=False)
HEADS = ("bn", "bias_bn", "bias", "bn_noaffine")
_EPS = 1e-5  # marks where eps sits in the traced pattern (scalar_workaround); the site's own is read by _eps
aten = torch.ops.aten


# --- search functions ----------------------------------------------------------------------------------


def _conv(x, w, b=None):
    return aten.convolution(x, w, b, [1, 1], [0, 0], [1, 1], False, [0, 0], 1)


def _head(head: str):
    if head == "bn":
        def fn(x, w, mean, var, gamma, beta, eps):
            return F.batch_norm(_conv(x, w), mean, var, gamma, beta, False, 0.1, eps)
    elif head == "bias_bn":
        def fn(x, w, b, mean, var, gamma, beta, eps):
            return F.batch_norm(_conv(x, w, b), mean, var, gamma, beta, False, 0.1, eps)
    elif head == "bn_noaffine":
        def fn(x, w, mean, var, eps):
            return F.batch_norm(_conv(x, w), mean, var, None, None, False, 0.1, eps)
    else:
        def fn(x, w, b):
            return _conv(x, w, b)
    return fn


def _conv_bn_pattern(head: str, act: str, res: Optional[str], act2: str):
    """``act2(act(head(...)) + r)``; ``res`` is None, "after" (``y + r``) or "before" (``r + y``)."""
    h = _head(head)

    if res is None:
        def pattern(*args):
            return K.act_ref(h(*args), act)
    elif res == "after":
        def pattern(*args):
            *hargs, r = args
            return K.act_ref(K.act_ref(h(*hargs), act) + r, act2)
    else:
        def pattern(*args):
            *hargs, r = args
            return K.act_ref(r + K.act_ref(h(*hargs), act), act2)
    return pattern


def _argnames(head: str, res: bool) -> list[str]:
    names = {"bn": ["x", "w", "mean", "var", "gamma", "beta", "eps"],
             "bias_bn": ["x", "w", "b", "mean", "var", "gamma", "beta", "eps"],
             "bias": ["x", "w", "b"], "bn_noaffine": ["x", "w", "mean", "var", "eps"]}[head]
    return names + (["r"] if res else [])


def _named(fn, names):
    # gen_pattern names the pattern's inputs after the search function's parameters
    fn.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names])
    return fn


def _example_inputs(head: str, res: bool, dtype, device: str = "cpu") -> list[torch.Tensor]:
    # values only feed the trace (which runs the ops for real); no RNG: the user's random stream is theirs.
    # dtype AMP: an fp32 model under autocast, whose half-precision conv meets the BN's fp32 parameters
    def t(*shape, dt=torch.float16 if dtype == AMP else dtype):
        return torch.full(shape, 0.5, dtype=dt, device=device)
    x, w = t(2, 4, 6, 6), t(8, 4, 1, 1)
    # distinct tensors: a tensor passed twice would trace as one input, tying the two in the pattern
    b, *p = [t(8) for _ in range(5)]
    if dtype == AMP:
        p = [t(8, dt=torch.float32) for _ in range(4)]
    args = {"bn": [x, w, *p], "bias_bn": [x, w, b, *p], "bias": [x, w, b], "bn_noaffine": [x, w, *p[:2]]}[head]
    return args + ([t(2, 8, 6, 6)] if res else [])


def _variants():
    """(head, act, res, act2) for every registered pattern.

    Every head takes every activation; residual adds are registered for the epilogues real networks
    use (each variant costs a trace at start-up): ``act2(y + r)`` and ``act(y) + r`` after a BN, and
    ``relu(y + r)`` / ``y + r`` in both operand orders (torchvision's ResNet writes ``out += identity``,
    its MobileNetV2 ``x + self.conv(x)``).
    """
    out = []
    for head in HEADS:
        for act2 in ("none", "relu"):
            for res in ("after", "before"):
                if head != "bn_noaffine":  # rare: its BN and activation are fused, a residual add is Inductor's
                    out.append((head, "none", res, act2))
        if head == "bn":
            for act in K.ACTIVATIONS[1:]:
                out.append((head, act, "after", "none"))
            for act2 in K.ACTIVATIONS[2:]:
                out.append((head, "none", "after", act2))
        for act in K.ACTIVATIONS:
            if head == "bias" and act == "none":
                continue  # a plain conv with bias: cuDNN's own
            out.append((head, act, None, "none"))
    return out


# --- checks --------------------------------------------------------------------------------------------

def _val(node):
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _conv_node(match: Match) -> Optional[torch.fx.Node]:
    for n in match.nodes:
        if n.target == aten.convolution.default:
            return n
    return None


def _constants(nodes) -> Counter:
    """The scalar arguments of every op but the conv (its settings are read from the match) and the eps add.

    Ints and floats are wildcards in a traced pattern; comparing them with the pattern's own afterwards
    keeps ``clamp(x, 0, 5)`` from being taken for relu6 or ``unsqueeze(mean, 0)`` for a per-channel BN.
    """
    out = Counter()
    for n in nodes:
        if n.op != "call_function" or n.target == aten.convolution.default:
            continue
        if n.target == aten.add.Tensor and n.users and all(u.target in _INVSTD for u in n.users):
            continue  # var + eps: eps is a pattern argument
        # shape lists (view/reshape sizes) differ per site by construction: only scalars are compared
        scalars = tuple(a for a in n.args if isinstance(a, (int, float)))
        out[(str(n.target), scalars)] += 1
    return out


# 1/sqrt(var + eps) is ``rsqrt`` in some decompositions and ``reciprocal(sqrt(.)) * 1`` in others (torch 2.11's
# CUDA path through cudnn_batch_norm)
_INVSTD = (aten.rsqrt.default, aten.sqrt.default)


def _eps(match: Match) -> Optional[float]:
    """The BN's eps as the graph holds it (``var + eps`` feeding ``rsqrt`` or ``sqrt``), not from
    ``match.kwargs``: some matchers drop scalar_workaround arguments."""
    for n in match.nodes:
        if n.target in _INVSTD and isinstance(n.args[0], torch.fx.Node):
            add = n.args[0]
            if add.target == aten.add.Tensor and isinstance(add.args[1], (int, float)) and not isinstance(add.args[1], bool):
                return float(add.args[1])
    return None


def _conv_targets() -> tuple:
    return (aten.convolution.default, torch.ops.tritonfuse.conv_bn.default,
            torch.ops.tritonfuse.conv_bn_int8.default, torch.ops.tritonfuse.conv_bn_cudnn.default,
            aten.cudnn_convolution_relu.default, aten.cudnn_convolution_add_relu.default)


def kernel_name(op: str, head: str, act: str, res: bool, act2: str) -> str:
    return f"{op}[{head},{act}" + (f"+res,{act2}" if res else "") + "]"


# Convs a longer pattern timed against cuDNN's path and lost (or, in a survey, would time). The matcher walks
# the graph from its end, so at a conv it tries the longest pattern first (conv + BN + add + ReLU), then the
# shorter ones anchored earlier (conv + BN + add, conv + BN). Those run the same kernel against the same cuDNN
# conv, with more of the epilogue left to an Inductor pass on both sides, and lost where the longest did
# (resnet50 on the H200, 44fc606: every conv whose longest pattern lost lost its shorter ones too); timing them
# only cost a first compile their compiles and timings. A shorter pattern at such a conv is no site: the value
# is True. One exception, in a survey: where an add's two inputs are both conv + BN (ResNet's downsample
# blocks), the conv whose residual pattern the deciding pass serves takes the add and leaves the other a
# conv + BN site, which it then times. So a survey's residual pattern whose residual is a conv's output
# (through a BN) rules out only the shorter residual patterns at its conv (value "res"): the conv + BN
# pattern is surveyed and its compiles sent (resnet50 on the H200, 36th session: else the deciding pass sent
# 7 compiles itself and waited 2.2 s for them). (A node dies with its graph; the survey's copy has nodes of
# its own.)
_lost_convs: "weakref.WeakKeyDictionary[torch.fx.Node, object]" = weakref.WeakKeyDictionary()


def _conv_behind(node, steps: int = 8) -> bool:
    """Whether ``node`` is a convolution's output through a BN's pointwise ops alone (the residual of a
    downsample block), following each op's first input."""
    through = (aten.add.Tensor, aten.mul.Tensor, aten.sub.Tensor, torch.ops.prims.convert_element_type.default)
    for _ in range(steps):
        if not isinstance(node, torch.fx.Node) or node.op != "call_function":
            return False
        if node.target == aten.convolution.default:
            return True
        if node.target not in through or not node.args:
            return False
        node = node.args[0]
    return False


def _ruled_out(conv: Optional[torch.fx.Node], res: bool) -> bool:
    lost = _lost_convs.get(conv) if conv is not None else None
    return lost is True or (lost == "res" and res)


def _timing_lost(choice: dict) -> bool:
    """Whether a choice left to cuDNN's path came from timing (or, in a survey, would): not a forced path,
    dynamic shapes or a failed timing, where a shorter pattern may still be served."""
    return bool(choice.get("surveyed") or "ours_ms" in choice or choice.get("unmeasured") or choice.get("host_floor"))


def _site(match: Match, head: str, act: str, res: bool, act2: str, constants: Counter):
    """(conv node, op args, chosen op, detail) or (conv node, reason, None, detail) or None (no site)."""
    conv = _conv_node(match)
    if conv is None or _ruled_out(conv, res):
        return None
    x, w = _val(conv.args[0]), _val(conv.args[1])
    b = _val(conv.args[2]) if conv.args[2] is not None else None
    out = _val(match.output_node())
    r = _val(match.kwargs.get("r")) if res else None
    if x is None or w is None or out is None or (res and not isinstance(r, torch.Tensor)):
        return None
    if _constants(match.nodes) != constants:
        return None
    stride, padding, dilation, transposed, out_pad, groups = conv.args[3:9]
    bn = tuple(_val(match.kwargs.get(k)) for k in ("mean", "var", "gamma", "beta")) if "bn" in head else (None,) * 4
    eps = _eps(match) if "bn" in head else 0.0
    if eps is None:
        return None
    detail = (f"x={'x'.join(map(str, x.shape))} w={'x'.join(map(str, w.shape))} s{tuple(stride)} p{tuple(padding)} "
              f"{str(x.dtype).replace('torch.', '')}")
    if transposed:
        return conv, "transposed convolution", None, detail
    reason = K.unsupported(x, w, b, bn, r, stride, padding, dilation, groups, act, act2)
    if reason is None and any(p != 0 for p in out_pad):
        reason = "output padding"
    shape = K.out_shape(x.shape, w.shape, stride, padding) if reason is None else None
    if reason is None and (tuple(out.shape) != shape or out.dtype != x.dtype):
        reason = f"output {tuple(out.shape)} {out.dtype} differs from the conv's {shape} {x.dtype}"
    channels_last = None
    if reason is None:
        # the replacement must give the layout Inductor expects of the replaced node
        if out.stride() == torch.empty(shape, device="meta").stride():
            channels_last = False
        elif out.stride() == torch.empty(shape, device="meta", memory_format=torch.channels_last).stride():
            channels_last = True
        else:
            reason = f"output strides {out.stride()} are neither contiguous nor channels_last"
    if reason:
        return conv, reason, None, detail
    int8, int8_why = _int8_site(match, conv, x, w, b, bn, stride, padding, eps, act)
    if int8_why:
        detail += f" ({int8_why})"
    # Inductor writes the epilogue out in a pointwise kernel of its own where a conv reads the result or the
    # graph returns it (a consumer the pass already replaced is one of our ops: the matcher walks the graph
    # from its end)
    epilogue_pass = ("bn" in head or act != "none" or res) and any(
        u.op == "output" or u.target in _conv_targets() for u in match.output_node().users)
    choice = K.choose(x, w, b, bn, r, stride, padding, eps, act, act2, channels_last, int8=int8,
                      epilogue_pass=epilogue_pass)
    if int8:
        choice, why_float = _int8_or_float(choice, K.choose(x, w, b, bn, r, stride, padding, eps, act, act2,
                                                            channels_last, epilogue_pass=epilogue_pass))
        if why_float:
            detail += f" ({why_float})"
        registry.show_measured(choice)  # (the float path's timing was the last measured)
    op = choice["kernel"]
    # a survey (registry.surveying) decides nothing, but probes the kernel a timing may choose, so that the
    # probe's compile goes to Inductor's workers with the rest: run first by the pass that decides, the 1x1
    # TMA probes compiled in its thread, 1.7 s of resnet50's first compile on the H200
    probed = ("conv_bn_int8" if int8 else "conv_bn") if choice.get("surveyed") else op
    if probed in ("conv_bn", "conv_bn_int8"):
        reason = K.probe(str(x.device), x.dtype, probed, tuple(w.shape[2:]), K.gather(x, w), b is not None,
                         "bn" in head, res, act, act2, affine=head != "bn_noaffine")
        if reason:
            return conv, reason, None, detail
    if "ours_ms" in choice:
        theirs = "cudnn conv + epilogue pass" if epilogue_pass else "cudnn conv alone"
        ours_is = ("op-call host time alone" if choice.get("host_floor")
                   else "cudnn fused" if op == "conv_bn_cudnn_fused" else "triton")
        detail += f" {ours_is} {choice['ours_ms']:.4f} ms / {theirs} {choice['theirs_ms']:.4f} ms"
        if "ours_ms" in choice.get("triton", {}):
            detail += f" (triton {choice['triton']['ours_ms']:.4f} ms)"
    if op not in ("conv_bn", "conv_bn_int8", "conv_bn_cudnn_fused"):
        why = (registry.slower_reason(choice, "it") if choice.get("host_floor")
               else "measured faster" if "ours_ms" in choice else "dynamic shapes, nothing to time" if choice.get("dynamic")
               else f"timing failed ({choice['error']})" if "error" in choice
               else registry.slower_reason(choice, "") if choice.get("unmeasured") else "forced")
        if _timing_lost(choice):
            shared_add = res and choice.get("surveyed") and _conv_behind(match.kwargs.get("r"))
            _lost_convs[conv] = "res" if shared_add and _lost_convs.get(conv) is None else True
        return conv, f"cuDNN + Inductor's epilogue: {why}", None, detail
    args = (b, bn, r, list(stride), list(padding), eps, act, act2, channels_last)
    return conv, args, op, detail


def _int8_or_float(int8: dict, flt: dict) -> tuple[dict, Optional[str]]:
    """Of a site's int8 choice and its float choice (each measured against cuDNN's path where timed), the one
    to use, and why the float one where it is: int8 serves a site only where it beats cuDNN's path and, when
    the float kernel does too, beats it by more (each against the cuDNN time of its own measurement), so
    that TRITONFUSE_QUANT=int8 never leaves a conv slower than the float backend would run it (inlined on the
    GPU, the float kernel pays no op call; the int8 op does)."""
    if int8.get("forced"):  # kernels.conv_bn.CHOICE
        return int8, None
    if int8["kernel"] != "conv_bn_int8":
        lost = (f"timing failed: {int8['error']}" if "error" in int8 else "dynamic shapes" if int8.get("dynamic")
                else "measured slower than cuDNN's path")
        return flt, f"int8 {lost}: the float choice"
    r8, rf = registry.cost_ratio(int8), registry.cost_ratio(flt)
    if flt["kernel"] == "conv_bn" and r8 is not None and rf is not None:
        if rf < r8:
            return flt, (f"int8 {int8['ours_ms']:.4f} ms ({r8:.2f}x cuDNN's path) measured slower than the float "
                         f"kernel {flt['ours_ms']:.4f} ms ({rf:.2f}x)")
    return int8, None


def _int8_site(match: Match, conv, x, w, b, bn, stride, padding, eps, act) -> tuple[bool, Optional[str]]:
    """(True, None) where ``TRITONFUSE_QUANT=int8`` has the int8 kernel serve this conv, (False, why not)
    where it is on but cannot, (False, None) where it is off."""
    if config.quant != "int8":
        return False, None  # int8-weight (weight-only) is for the Linear layers' small-M GEMMs
    if registry.training_graph():
        return False, "int8 is for inference graphs"
    if int8_weight_source(conv.args[1]) is None:
        return False, COMPUTED_WEIGHT
    if x.dtype not in (torch.float16, torch.bfloat16):
        return False, f"int8: {str(x.dtype).replace('torch.', '')} activations (fp16/bf16 only)"
    name = registry.module_name(conv)
    if name and config.quant_skipped(name):
        return False, f"int8: {name} is in TRITONFUSE_QUANT_SKIP"
    gate = float(config.quant_min_sqnr)
    if gate > 0:
        real = [registry.real_value(n) if isinstance(n, torch.fx.Node) else None
                for n in (conv.args[1], conv.args[2], *(match.kwargs.get(k) for k in ("mean", "var", "gamma", "beta")))]
        needed = [w, b, *bn]
        if any(r is None and t is not None for r, t in zip(real, needed)):
            return False, "int8 SQNR gate: the weights are not available at compile time"
        try:
            sqnr = K.int8_sqnr(x, *real, stride, padding, eps, act)
        except Exception as e:  # the int8 kernel does not compile or launch here: the site stays in float
            return False, "int8: " + registry.kernel_failed(f"conv_bn_int8@{x.device}", e)
        if sqnr < gate:
            return False, f"int8 SQNR {sqnr:.1f} dB < TRITONFUSE_QUANT_MIN_SQNR {gate:g} dB"
    return True, None


# the match a check accepted last and its site: the pattern matcher runs a match's handler right after its
# check, and the site (a measured choice, a probe, with int8 an SQNR gate) is not worked out twice
_checked: list = [None, None]


def _make_check(head: str, act: str, res: bool, act2: str, constants: Counter):
    def check(match: Match) -> bool:
        site = _site(match, head, act, res, act2, constants)
        _checked[:] = [match, site]
        if site is None:
            return False
        conv, args, op, detail = site
        if op is None:
            registry.note_fallback(FAMILY, conv, kernel_name("conv_bn", head, act, res, act2), args, detail)
            return False
        registry.note_replaced(FAMILY, conv, kernel_name(op, head, act, res, act2), detail)
        return True

    return registry.guarded(FAMILY, check)


def _make_handler(head: str, act: str, res: bool, act2: str, constants: Counter):
    def handler(match: Match, *args, **kwargs) -> None:
        site = _checked[1] if _checked[0] is match else _site(match, head, act, res, act2, constants)
        _checked[:] = [None, None]
        conv, (b, bn, r, stride, padding, eps, act_, act2_, channels_last), op, _ = site
        # only fx nodes go through the trace; the conv's settings are constants of the replacement
        names = [n for n in _argnames(head, res) if n != "eps" and (n != "b" or b is not None)]
        nodes = [conv.args[0], conv.args[1]] + ([conv.args[2]] if b is not None else []) + [
            match.kwargs[n] for n in names[2 + (b is not None):]]

        def replacement(*ts):
            t = dict(zip(names, ts))
            rest = (t["w"], t.get("b"), t.get("mean"), t.get("var"), t.get("gamma"), t.get("beta"),
                    t.get("r"), stride, padding, eps, act_, act2_, channels_last)
            if op == "conv_bn_int8":
                # per-tensor quantization as graph ops: Inductor fuses it into the kernel producing x
                return torch.ops.tritonfuse.conv_bn_int8(*K.quant_tensor_ref(t["x"]), *rest, t["x"].dtype)
            if op == "conv_bn_cudnn_fused":  # BN folded by graph ops, then one cuDNN call
                wf, bf = K.fold_bn(t["w"], t.get("b"), t.get("mean"), t.get("var"), t.get("gamma"), t.get("beta"), eps)
                return K.conv_fused(t["x"], wf, bf, t.get("r"), stride, padding)
            return torch.ops.tritonfuse.conv_bn(t["x"], *rest)

        match.replace_by_example(replacement, nodes)

    return handler


# --- patch convolutions ---------------------------------------------------------------------------------

PATCH_ARGS = ("x", "w", "b", "stride", "padding", "dilation", "transposed", "out_pad", "groups")
# one convolution node, every argument a wildcard: the check picks the patch convolutions
PATCH_PATTERN = CallFunction(aten.convolution.default, *(KeywordArg(n) for n in PATCH_ARGS))


def _patch_like(conv: torch.fx.Node) -> bool:
    w = _val(conv.args[1]) if len(conv.args) > 8 else None
    # (a symbolic kernel size is never compared: that would add a guard to a dynamic graph)
    return (isinstance(w, torch.Tensor) and all(type(d) is int for d in w.shape)
            and K.is_patch_conv(w.shape, *conv.args[3:6], conv.args[6], conv.args[8]))


def _patch_site(match: Match):
    """(conv node, channels_last or the reason it is left to cuDNN, detail), or None where the convolution is
    no patch convolution (those are the other patterns' sites, or cuDNN's)."""
    conv = match.output_node()
    if conv.target != aten.convolution.default or not _patch_like(conv):
        return None
    x, w = _val(conv.args[0]), _val(conv.args[1])
    b = _val(conv.args[2]) if conv.args[2] is not None else None
    out = _val(conv)
    if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
        return None
    k = tuple(w.shape[2:])
    detail = (f"x={'x'.join(map(str, x.shape))} w={'x'.join(map(str, w.shape))} s{k} "
              f"{str(x.dtype).replace('torch.', '')}")
    reason = K.patch_unsupported(x, w, b)
    channels_last = None
    if reason is None:
        if out.is_contiguous():
            channels_last = False
        elif out.is_contiguous(memory_format=torch.channels_last):
            channels_last = True
        else:
            reason = f"output strides {out.stride()} are neither contiguous nor channels_last"
    if reason is None:
        choice = K.choose_patch(x, w, b, channels_last)
        if "ours_ms" in choice:
            detail += f" gather+GEMM {choice['ours_ms']:.4f} ms / cudnn conv {choice['theirs_ms']:.4f} ms"
        if not choice["use"]:
            why = ("forced" if choice.get("forced") else f"timing failed ({choice['error']})" if "error" in choice
                   else registry.slower_reason(choice, ""))
            reason = f"cuDNN's convolution: {why}"
    return conv, (reason if reason else channels_last), detail


def patch_kernel_name(w_shape) -> str:
    return f"patch_gemm[{w_shape[2]}x{w_shape[3]}]"


def _patch_check(match: Match) -> bool:
    site = _patch_site(match)
    _checked[:] = [match, site]
    if site is None:
        return False
    conv, how, detail = site
    return registry.settle(FAMILY, conv, patch_kernel_name(_val(conv.args[1]).shape),
                           how if isinstance(how, str) else None, detail)


def _patch_handler(match: Match, *args, **kwargs) -> None:
    site = _checked[1] if _checked[0] is match else _patch_site(match)
    _checked[:] = [None, None]
    conv, channels_last, _ = site
    bias = conv.args[2] is not None
    nodes = [conv.args[0], conv.args[1]] + ([conv.args[2]] if bias else [])

    def with_bias(x, w, b):
        return K.patch_gemm(x, w, b, channels_last)

    def without_bias(x, w):
        return K.patch_gemm(x, w, None, channels_last)

    match.replace_by_example(with_bias if bias else without_bias, nodes)


def _patch_devices(graph) -> set:
    """The device types of ``graph``'s patch convolutions."""
    return {v.device.type for c in graph.find_nodes(op="call_function", target=aten.convolution.default)
            for v in [_val(c)] if isinstance(v, torch.Tensor) and _patch_like(c)}


# --- registration --------------------------------------------------------------------------------------


# The ops an epilogue's patterns hold, whatever the device (patterns.common.ACTIVATION_OPS; tests/test_conv_bn.py
# checks every pattern): a graph without them builds none of those patterns. (BatchNorm's own ops are not used:
# they differ by device.)
ACT_OPS = {a: ACTIVATION_OPS[a] for a in K.ACTIVATIONS}
HALF = (torch.float16, torch.bfloat16)
AMP = "amp"  # the traces of a half-precision conv whose BN parameters are fp32 (autocast), beside fp32 and fp16


def _variant_ops(act: str, res: Optional[str], act2: str) -> set:
    return {*ACT_OPS[act], *ACT_OPS[act2], *((aten.add.Tensor,) if res is not None else ())}


def wanted_patterns(graph_ops: frozenset, conv_dtypes: frozenset, amp: bool = False) -> tuple:
    """``(head, act, res, act2, dtype)`` of each pattern a graph holding ``graph_ops`` and convolutions of
    ``conv_dtypes`` may match, in registration order. A pattern traced in half precision holds the upcast
    around eval BatchNorm that a half-precision convolution's BN decomposes to, and one traced in fp32 does
    not, so a BN head is traced in fp16 only for a graph with half-precision convolutions and in fp32 only
    for one with others (a conv with bias alone, whose epilogue a user may write by hand, is traced in both).
    ResNet-50 in fp16 builds 25 of the 76 traces (1.6 of 2.3 s cold on the CPU machine). ``amp``: the graph
    casts a conv's weight to half precision (autocast): its BN heads are also traced with fp32 parameters."""
    out = []
    for head, act, res, act2 in _variants():
        if not _variant_ops(act, res, act2) <= graph_ops:
            continue
        for dtype in (torch.float32, torch.float16, AMP):
            if dtype == AMP:
                if amp and "bn" in head:
                    out.append((head, act, res, act2, dtype))
            elif head == "bias" or any((d in HALF) == (dtype == torch.float16) for d in conv_dtypes):
                out.append((head, act, res, act2, dtype))
    return tuple(out)


def _autocast_conv(conv: torch.fx.Node) -> bool:
    # a half-precision conv whose weight is cast for it in the graph: autocast's, of an fp32 model's weight
    w = conv.args[1] if len(conv.args) > 1 else None
    v = _val(conv)
    return (isinstance(w, torch.fx.Node) and w.target == torch.ops.prims.convert_element_type.default
            and isinstance(v, torch.Tensor) and v.dtype in HALF)


def pattern_spec(graph_ops: frozenset, graph=None):
    """``((device type, wanted_patterns), ...)``: per device type of the graph's convolutions, the patterns it
    may match, or None for a graph without a convolution (language models never pay for these traces) or
    without an epilogue the patterns hold. Without ``graph``: the CPU patterns of both precisions.

    The patterns are traced on the graph's own device type: eval BatchNorm decomposes differently by
    device (on CUDA it goes through ``cudnn_batch_norm``, which some torch versions decompose into
    ``reciprocal(sqrt(var + eps))`` where the CPU path gives ``rsqrt``).
    """
    if aten.convolution.default not in graph_ops:
        return None
    convs = () if graph is None else graph.find_nodes(op="call_function", target=aten.convolution.default)
    vals = [v for v in (_val(c) for c in convs) if isinstance(v, torch.Tensor)]
    patch = {"cpu"} if graph is None else _patch_devices(graph)
    spec = []
    for dev in sorted({v.device.type for v in vals} or {"cpu"}):
        dtypes = frozenset(v.dtype for v in vals if v.device.type == dev)
        amp = any(_autocast_conv(c) for c in convs if _val(c) is not None and _val(c).device.type == dev)
        wanted = wanted_patterns(graph_ops, dtypes or frozenset({torch.float32, torch.float16}), amp)
        if wanted or dev in patch:  # (the patch pattern is one node: registered with every pass)
            spec.append((dev, wanted))
    return tuple(spec) or None


def _register_patterns(pm: PatternMatcherPass, device: str = "cpu", wanted: Optional[tuple] = None,
                       seen: Optional[set] = None) -> None:
    """Registers the patterns of ``wanted`` (``wanted_patterns``; default every one) in ``pm``, skipping
    those already in ``seen``."""
    seen = set() if seen is None else seen
    if device != "cpu":
        try:
            torch.empty(1, device=device)
        except Exception:  # a device type this process cannot trace on: its graphs keep the CPU patterns
            device = "cpu"
    for head, act, res, act2 in _variants():
        names = _argnames(head, res is not None)
        search = _named(_conv_bn_pattern(head, act, res, act2), names)
        for dtype in (torch.float32, torch.float16, AMP):
            if wanted is not None and (head, act, res, act2, dtype) not in wanted:
                continue
            if wanted is None and dtype == AMP and "bn" not in head:
                continue
            with torch.no_grad():
                pattern, gm = pattern_matcher.gen_pattern_and_search_gm(  # through pattern_cache's hook
                    search, _example_inputs(head, res is not None, dtype, device), trace_pattern,
                    scalar_workaround={"eps": _EPS} if "bn" in head else None)
            key = repr(pattern)
            if key in seen:
                continue  # no upcast in this variant, or the same decomposition on another device
            seen.add(key)
            flags = (head, act, res is not None, act2, _constants(gm.graph.nodes))
            register_graph_pattern(pattern, extra_check=_make_check(*flags), pass_dict=pm)(_make_handler(*flags))


def pattern_pass(*per_device) -> PatternMatcherPass:
    """The conv_bn patterns of ``per_device`` (``pattern_spec``; default: every CPU pattern) in one pass, built
    once per process."""
    return _build(per_device or (("cpu", None),))


@functools.lru_cache(maxsize=None)
def _build(per_device: tuple) -> PatternMatcherPass:
    pm = PatternMatcherPass(pass_name="tritonfuse_conv_bn")
    seen: set = set()
    for dev, wanted in per_device:
        _register_patterns(pm, dev, wanted, seen)
    # anchored on the convolution itself: tried after the patterns that end further down the graph (the
    # matcher walks it from its end), so a conv + BN site the kernels serve is never split
    register_graph_pattern(PATCH_PATTERN, extra_check=registry.guarded(FAMILY, _patch_check), pass_dict=pm)(
        registry.guarded(FAMILY, _patch_handler))
    return pm
