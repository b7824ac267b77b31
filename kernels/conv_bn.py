"""Conv2d + BatchNorm (eval) + activation + residual in one Triton implicit-GEMM kernel.

``act2(act(bn(conv2d(x, w) + b)) + r)``: the GEMM is ``[N*OH*OW, KH*KW*C] x [KH*KW*C, Cout]`` read straight
from the activations (no im2col buffer). The BatchNorm is folded *in the epilogue*: each program loads the
running mean/var, gamma and beta of its output channels and applies ``(acc - mean) * gamma / sqrt(var + eps)
+ beta`` to the fp32 accumulator. Nothing is folded into a copy of the weight, so the parameters are read as
they are at every call: an in-place update after compilation can never leave stale folded weights, and the
user's tensors are never written.

``choose`` decides per shape, by measurement cached on disk, whether a site runs this kernel or is left to
Inductor (cuDNN with Inductor's fused epilogue). ``conv_bn_cudnn`` is the cuDNN conv plus one Triton epilogue
kernel as an op of its own, for calling outside a compiled graph (the benchmarks compare with it).
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from tritonfuse import config, inline, registry
from tritonfuse.kernels.common import (
    TensorDescriptor, _apply_act, _m_bucket, autotune_kw, cast_out, cdiv, dot_upcast, host_desc, next_pow2, rtne_bf16,
    scratch_allocator, size_hint, tuned,
)
from tritonfuse.kernels.common import hopper as _hopper
from tritonfuse.kernels.linear_act import (_num_sms, _persistent_cfg, _persistent_grid, _tile_coords, _tile_ids,
                                          _tma_tile_dot)

ACTIVATIONS = ("none", "relu", "relu6", "silu", "hardswish")
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
KERNEL_SIZES = ((1, 1), (3, 3), (5, 5), (7, 7), (1, 3), (3, 1), (1, 7), (7, 1))

# --- autotune configs ---------------------------------------------------------------------------------
# Keyed on a power-of-two bucket of M = N*OH*OW and on Cout, C, the kernel size and stride, so a new batch
# size inside a bucket does not re-tune. The epilogue flags are not part of the key: they do not change
# which tile is fastest, and leaving them out halves the compile time of a ResNet.


def _cfg(bm, bn, bk, stages, warps, group=8):
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group}, num_stages=stages, num_warps=warps
    )


# The candidates, the first _CONV_TIMED timed (kernels.common.tuned): at resnet50's shapes on the H200,
# 256x128 won at M=16384, 128x128x32 at 65536, 64x64 with 64 or 512 channels out, 128x64 one strided 1x1
_CONV_ALL = [
    _cfg(256, 128, 64, 3, 8),
    _cfg(128, 128, 32, 4, 4),
    _cfg(128, 64, 64, 4, 4),
    _cfg(64, 64, 64, 4, 4),
    _cfg(128, 128, 64, 4, 8),
    _cfg(128, 256, 64, 3, 8),
    _cfg(64, 128, 64, 4, 4),
    _cfg(64, 32, 64, 5, 2),
]
_CONV_TIMED = 4

# stems (ROW_RUN) time their own: narrow tiles keep more programs' gathers in flight (scripts/stem_probe.py on
# the H100 at 6cb7796, 64x3x224x224 -> 64 7x7 / -> 32 3x3: 256x32 0.266 / 0.084 ms, 128x32 0.317 / 0.074,
# 128x64 0.309 / 0.101, 64x32 0.318 / 0.084, where the general list's two with 64-wide tiles ran 0.305-0.309
# and 0.101-0.111; cuDNN's conv alone 0.162 / 0.057). Issuing the next two rows' loads ahead of each row's
# product ran 0.35-0.43 / 0.097-0.14 (67fb042)
_STEM = [_cfg(256, 32, 64, 3, 8), _cfg(128, 32, 64, 3, 4), _cfg(128, 64, 64, 3, 4), _cfg(64, 32, 64, 5, 2)]

if registry.interpret_mode():
    # the interpreter runs configs on the CPU: one config with wide N and K tiles keeps the loops short
    _CONV_CONFIGS = [_cfg(32, 128, 128, 1, 4)]
elif not config.autotune_enabled():
    # TRITONFUSE_AUTOTUNE=0 (the GPU test suite): one config, compiles fast
    _CONV_CONFIGS = [_cfg(128, 64, 64, 4, 4)]
else:
    _CONV_CONFIGS = tuned(_CONV_ALL, _CONV_TIMED) + _STEM
_STEM_CONFIGS = {id(c) for c in _STEM}

_AUTOTUNE_KW = autotune_kw()  # (a ResNet tunes ~20 shapes at compile time)


def _within(configs, named_args, floor: int, caps: dict):
    """The configs whose tiles (``caps``: block name -> the size argument it tiles) are no larger than the
    problem's next power of two (at least ``floor``); the last config where none is."""
    limit = {blk: max(floor, next_pow2(named_args[arg])) for blk, arg in caps.items()}
    kept = [c for c in configs if all(c.kwargs[blk] <= cap for blk, cap in limit.items())]
    return kept or configs[-1:]


def _prune(configs, named_args, **kwargs):
    # a stem's configs, or the others; tiles much larger than the problem only waste compile time
    stem = kwargs.get("ROW_RUN", 0) > 0
    mine = [c for c in configs if (id(c) in _STEM_CONFIGS) == stem]
    return _within(mine or configs, named_args, 32, {"BLOCK_M": "M_BUCKET", "BLOCK_N": "N"})


# --- epilogue helpers ---------------------------------------------------------------------------------


@triton.jit
def _bias_bn(acc, cols, n_mask, b_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, eps,
             HAS_BIAS: tl.constexpr, HAS_BN: tl.constexpr, HAS_AFFINE: tl.constexpr):
    """The conv bias, then the eval-mode BatchNorm of output channels ``cols``, on an fp32 tile."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_BN:
        # Inductor passes Python floats as fp64 to the kernels it inlines: an fp64 eps made the whole tile's
        # epilogue fp64 (344088 bytes of shared memory for a 128x256 tile, the inlined compile's failure)
        eps = tl.cast(eps, tl.float32)
        mean = tl.load(mean_ptr + cols, mask=n_mask, other=0.0).to(tl.float32)
        var = tl.load(var_ptr + cols, mask=n_mask, other=1.0).to(tl.float32)
        if HAS_AFFINE:
            gamma = tl.load(gamma_ptr + cols, mask=n_mask, other=0.0).to(tl.float32)
            beta = tl.load(beta_ptr + cols, mask=n_mask, other=0.0).to(tl.float32)
            scale = gamma / tl.sqrt(var + eps)
            acc = (acc - mean[None, :]) * scale[None, :] + beta[None, :]
        else:
            # BatchNorm2d(affine=False): no gamma, no beta
            acc = (acc - mean[None, :]) * (1.0 / tl.sqrt(var + eps))[None, :]
    return acc


@triton.jit
def _epilogue(
    acc, img, oh, ow, m_mask, offs_n, N,
    b_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, eps, r_ptr, out_ptr,
    s_rn, s_rc, s_rh, s_rw, s_on, s_oc, s_oh, s_ow,
    HAS_BIAS: tl.constexpr, HAS_BN: tl.constexpr, HAS_RES: tl.constexpr,
    ACT: tl.constexpr, ACT2: tl.constexpr, RTNE_BF16: tl.constexpr, HAS_AFFINE: tl.constexpr,
):
    # acc: fp32 [BLOCK_M, BLOCK_N] tile of the conv output; rows are (img, oh, ow), columns output channels
    n_mask = offs_n < N
    acc = _bias_bn(acc, offs_n, n_mask, b_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, eps,
                   HAS_BIAS, HAS_BN, HAS_AFFINE)
    acc = _apply_act(acc, ACT)
    mask = m_mask[:, None] & n_mask[None, :]
    if HAS_RES:
        r_rows = img * s_rn + oh * s_rh + ow * s_rw
        r = tl.load(r_ptr + r_rows[:, None] + offs_n[None, :] * s_rc, mask=mask, other=0.0)
        acc = _apply_act(acc + r.to(tl.float32), ACT2)
    o_rows = img * s_on + oh * s_oh + ow * s_ow
    tl.store(out_ptr + o_rows[:, None] + offs_n[None, :] * s_oc,
             cast_out(acc, out_ptr.dtype.element_ty, RTNE_BF16), mask=mask)


# --- kernels ------------------------------------------------------------------------------------------


@triton.jit
def _conv_dot(a, b, acc, INT8: tl.constexpr, PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr):
    if INT8:
        # int8 x int8 -> int32: the compiler must be told (the interpreter infers it)
        return tl.dot(a, b, acc, out_dtype=tl.int32)
    else:
        if DOT_UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.autotune(configs=_CONV_CONFIGS, key=["M_BUCKET", "N", "C", "KH", "KW", "stride_h", "FLAT_K", "ROW_RUN"],
                 prune_configs_by={"early_config_prune": _prune}, **_AUTOTUNE_KW)
@triton.heuristics({"EVEN_C": lambda a: a["C"] % a["BLOCK_K"] == 0})
# sizes that vary from layer to layer are not specialized on: fewer compiled variants per network. Nor are
# the conv's strides (read once per row, not in the loop): Triton specialised stride 1, so a network's 3x3
# convs of stride 1 and 2 were two compiles of each config (resnet50's first compile sent 8 more)
@triton.jit(do_not_specialize=["M", "H", "W", "OH", "OW", "M_BUCKET", "stride_h", "stride_w", "pad_h", "pad_w"])
def _conv_bn_kernel(
    x_ptr, w_ptr, b_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, r_ptr, out_ptr, xs_ptr, ws_ptr,
    M, N, C, H, W, OH, OW, KH, KW, M_BUCKET,
    stride_h, stride_w, pad_h, pad_w, eps,
    s_xn, s_xc, s_xh, s_xw, s_wn, s_wc, s_wh, s_ww,
    s_rn, s_rc, s_rh, s_rw, s_on, s_oc, s_oh, s_ow,
    HAS_BIAS: tl.constexpr, HAS_BN: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr, ACT2: tl.constexpr,
    FLAT_K: tl.constexpr, NO_BOUNDS: tl.constexpr,
    PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr, RTNE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_C: tl.constexpr, INT8: tl.constexpr = False, HAS_AFFINE: tl.constexpr = True, ROW_RUN: tl.constexpr = 0,
):
    # x: [B, C, H, W] (any strides, NHWC fastest), w: [N, C, KH, KW], out: [B, N, OH, OW]
    # GEMM rows m = (img, oh, ow), columns = output channels, reduction k = (kh, kw, c)
    # INT8: x and w are int8, accumulated in int32 and scaled by xs[0] (per tensor) * ws[n] (per channel)
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    # clamp the ragged edge so every load stays in bounds; the store is masked
    offs_mc = tl.where(m_mask, offs_m, 0)
    offs_nc = tl.where(offs_n < N, offs_n, 0)
    img = offs_mc // (OH * OW)
    rem = offs_mc % (OH * OW)
    oh = rem // OW
    ow = rem % OW
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    x_rows = img * s_xn
    w_cols = offs_nc * s_wn
    if INT8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if ROW_RUN > 0:
        # few input channels over channels_last x (a stem conv): the KW * C values a pixel reads in one kernel
        # row are one run of x (pixel stride C, channel stride 1), so k = (kh, j = kw * C + c) with j gathered
        # as ROW_RUN contiguous columns (a 7x7 RGB stem: 21 of 32 used), where FLAT_K's flat k pays a divide
        # and a modulo per element and pads 147 to 192
        j = tl.arange(0, ROW_RUN)
        jw = j // C
        j_ok = j < KW * C
        w_off = (j - jw * C) * s_wc + jw * s_ww
        iw = iw0[:, None] + jw[None, :]
        col_ok = j_ok[None, :] & (iw >= 0) & (iw < W)
        x_pix = x_rows + iw0 * s_xw
        for kh in range(0, KH):
            ih = ih0 + kh
            a_mask = ((ih >= 0) & (ih < H))[:, None] & col_ok
            a = tl.load(x_ptr + (x_pix + ih * s_xh)[:, None] + j[None, :], mask=a_mask, other=0)
            b = tl.load(w_ptr + w_cols[None, :] + (w_off + kh * s_wh)[:, None], mask=j_ok[:, None], other=0)
            acc = _conv_dot(a, b, acc, INT8, PRECISION, DOT_UPCAST)
    elif FLAT_K:
        # few input channels without row runs (other layouts): gather k = (kh, kw, c) as one flat dimension
        K_TOTAL = C * KH * KW
        for k0 in range(0, K_TOTAL, BLOCK_K):
            kk = k0 + offs_k
            c = kk % C
            r = kk // C
            kw = r % KW
            kh = r // KW
            ih = ih0[:, None] + kh[None, :]
            iw = iw0[:, None] + kw[None, :]
            k_ok = kk < K_TOTAL
            a_mask = k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(x_ptr + x_rows[:, None] + ih * s_xh + iw * s_xw + c[None, :] * s_xc, mask=a_mask, other=0)
            w_off = c * s_wc + kh * s_wh + kw * s_ww
            b = tl.load(w_ptr + w_cols[None, :] + w_off[:, None], mask=k_ok[:, None], other=0)
            acc = _conv_dot(a, b, acc, INT8, PRECISION, DOT_UPCAST)
    else:
        # one flat loop over (kh, kw, channel block) so the compiler pipelines it
        c_blocks = tl.cdiv(C, BLOCK_K)
        for it in range(0, KH * KW * c_blocks):
            r = it // c_blocks
            c0 = (it - r * c_blocks) * BLOCK_K
            kh = r // KW
            kw = r - kh * KW
            ih = ih0 + kh
            iw = iw0 + kw
            offs_c = c0 + offs_k
            a_ptrs = x_ptr + (x_rows + ih * s_xh + iw * s_xw)[:, None] + offs_c[None, :] * s_xc
            b_ptrs = w_ptr + w_cols[None, :] + (offs_c * s_wc)[:, None] + (kh * s_wh + kw * s_ww)
            if NO_BOUNDS:
                # a 1x1 conv without padding: every input pixel exists, this is a plain GEMM
                if EVEN_C:
                    a = tl.load(a_ptrs)
                    b = tl.load(b_ptrs)
                else:
                    a = tl.load(a_ptrs, mask=offs_c[None, :] < C, other=0)
                    b = tl.load(b_ptrs, mask=offs_c[:, None] < C, other=0)
            else:
                row_ok = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                if EVEN_C:
                    a = tl.load(a_ptrs, mask=row_ok[:, None], other=0)
                    b = tl.load(b_ptrs)
                else:
                    a = tl.load(a_ptrs, mask=row_ok[:, None] & (offs_c[None, :] < C), other=0)
                    b = tl.load(b_ptrs, mask=offs_c[:, None] < C, other=0)
            acc = _conv_dot(a, b, acc, INT8, PRECISION, DOT_UPCAST)
    if INT8:
        xs = tl.load(xs_ptr).to(tl.float32)
        ws = tl.load(ws_ptr + offs_n, mask=offs_n < N, other=0.0)
        acc = acc.to(tl.float32) * (ws * xs)[None, :]
    _epilogue(
        acc, img, oh, ow, m_mask, offs_n, N,
        b_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, eps, r_ptr, out_ptr,
        s_rn, s_rc, s_rh, s_rw, s_on, s_oc, s_oh, s_ow,
        HAS_BIAS, HAS_BN, HAS_RES, ACT, ACT2, RTNE_BF16, HAS_AFFINE,
    )


@triton.jit
def _bn_act_kernel(
    y_ptr, b_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, r_ptr, out_ptr,
    M, N, OH, OW, eps,
    s_yn, s_yc, s_yh, s_yw, s_rn, s_rc, s_rh, s_rw, s_on, s_oc, s_oh, s_ow,
    HAS_BIAS: tl.constexpr, HAS_BN: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr, ACT2: tl.constexpr,
    RTNE_BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_AFFINE: tl.constexpr = True,
):
    # the epilogue alone, over a conv output y computed by cuDNN
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    offs_mc = tl.where(m_mask, offs_m, 0)
    img = offs_mc // (OH * OW)
    rem = offs_mc % (OH * OW)
    oh = rem // OW
    ow = rem % OW
    y_rows = img * s_yn + oh * s_yh + ow * s_yw
    y = tl.load(y_ptr + y_rows[:, None] + offs_n[None, :] * s_yc, mask=m_mask[:, None] & (offs_n[None, :] < N), other=0.0)
    _epilogue(
        y.to(tl.float32), img, oh, ow, m_mask, offs_n, N,
        b_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, eps, r_ptr, out_ptr,
        s_rn, s_rc, s_rh, s_rw, s_on, s_oc, s_oh, s_ow,
        HAS_BIAS, HAS_BN, HAS_RES, ACT, ACT2, RTNE_BF16, HAS_AFFINE,
    )


# --- 1x1 convolutions on Hopper: a persistent TMA GEMM --------------------------------------------------
# A 1x1 conv with stride 1 and no padding over channels_last activations is the GEMM
# [B*H*W, C] x [C, Cout] on the tensors as they lie in memory. On Hopper it runs as a persistent kernel fed by
# the TMA engine (as linear_act's GEMMs), with the bias, the BatchNorm, the activation and the residual add in
# the epilogue; the residual tile comes in by TMA as well.


def _set_1x1_blocks(nargs):
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["x_desc"].block_shape = [bm, bk]
    nargs["w_desc"].block_shape = [bn, bk]
    nargs["out_desc"].block_shape = [bm, bn]
    nargs["r_desc"].block_shape = [bm, bn]


def _tma_cfg(bm, bn, bk, stages, warps, occ=1):
    return _persistent_cfg({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, stages, warps,
                           _set_1x1_blocks, occ)


# OCC=2: two programs share an SM, so one's epilogue (BN, activations, the residual's load) overlaps the
# other's loads and MMAs. ResNet-50's 1x1 convs have short K loops (64-512 channels: 1-8 steps of 64), where
# one persistent program per SM leaves the tensor cores idle through every epilogue. 4 warps, 3 stages:
# 106 KB with an fp16 residual; two fit in an SM's 228 KB (_prune_1x1 checks it per launch).
# The first _TMA_1X1_TIMED are timed (kernels.common.tuned): at resnet50's 1x1 convs on the H200 an OCC=2
# config won every launch with a residual and most others, 128x256 wide ones without (256-2048 channels
# out), and 128x128x128 was within 1.2% of the fastest where that was another 128x128 (512 out)
_TMA_1X1_ALL = [
    _tma_cfg(128, 256, 64, 3, 8), _tma_cfg(128, 128, 128, 3, 8), _tma_cfg(128, 64, 64, 3, 4, occ=2),
    _tma_cfg(64, 128, 64, 3, 4, occ=2),
    _tma_cfg(128, 128, 64, 4, 8), _tma_cfg(256, 128, 64, 3, 8), _tma_cfg(128, 64, 64, 4, 4),
    _tma_cfg(64, 128, 64, 4, 4), _tma_cfg(64, 64, 64, 4, 4),
]
_TMA_1X1_TIMED = 4
if config.autotune_enabled() and not registry.interpret_mode():
    _TMA_1X1_CONFIGS = tuned(_TMA_1X1_ALL, _TMA_1X1_TIMED)
else:
    _TMA_1X1_CONFIGS = [_tma_cfg(128, 64, 64, 4, 4)]

# Hopper's shared memory per block (opt-in): 227 KB; per SM, shared by its resident blocks: 228 KB
SMEM_LIMIT = 232448
SMEM_PER_SM = 233472


def tma_1x1_smem(cfg, x_bytes: int, out_bytes: int, r_bytes: int = 0) -> int:
    """Bytes of shared memory the 1x1 TMA kernel needs with ``cfg``: the pipelined x and w tiles, the output
    tile it stores through, and the residual tile it loads (element sizes in bytes; ``r_bytes`` 0: none).
    On the H200 (scripts/device_tma_inline_probe.py) every config compiled within 600 bytes of this."""
    bm, bn, bk = (cfg.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    return cfg.num_stages * (bm + bn) * bk * x_bytes + bm * bn * (out_bytes + r_bytes)


def _elem_bytes(t) -> int:
    t = getattr(t, "base", t)  # a host descriptor: its tensor
    return t.element_size() if hasattr(t, "element_size") else 2


def _prune_1x1(configs, named_args, **kwargs):
    # tiles wider than Cout, or deeper than C, only load zeros; and a config whose tiles do not fit in
    # shared memory with this launch's epilogue (the residual tile adds BLOCK_M x BLOCK_N elements) fails to
    # compile: Triton's autotuner skips it, but Inductor, given it alone for an inlined call, cannot
    kept = _within(configs, named_args, 64, {"BLOCK_N": "N", "BLOCK_K": "K"})
    arg = {k: named_args.get(k, named_args.get(k.replace("_ptr", "_desc"))) for k in ("x_ptr", "out_ptr", "r_ptr")}
    has_res = bool(kwargs.get("HAS_RES", named_args.get("HAS_RES", False)))
    need = {id(c): tma_1x1_smem(c, _elem_bytes(arg["x_ptr"]), _elem_bytes(arg["out_ptr"]),
                                _elem_bytes(arg["r_ptr"]) if has_res else 0) for c in kept}
    fit = [c for c in kept if need[id(c)] + 1024 <= SMEM_LIMIT  # (+ barriers and alignment)
           and (need[id(c)] + 1024) * c.kwargs.get("OCC", 1) <= SMEM_PER_SM]  # OCC programs share an SM
    return fit or [min(kept, key=lambda c: need[id(c)])]


@triton.jit
def _conv1x1_tiles(
    x_desc, w_desc, r_desc, out_desc, b_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, eps, M, N, K,
    HAS_BIAS: tl.constexpr, HAS_BN: tl.constexpr, HAS_AFFINE: tl.constexpr, HAS_RES: tl.constexpr,
    ACT: tl.constexpr, ACT2: tl.constexpr, NUM_SMS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, OCC: tl.constexpr,
):
    # x_desc: [M, K] (pixels x input channels), w_desc: [N, K], out_desc / r_desc: [M, N]; this program's
    # share of the output tiles (NUM_SMS * OCC programs), each with its epilogue
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    for tile_id in tl.range(tl.program_id(0), num_tiles, NUM_SMS * OCC, flatten=True):
        pid_m, pid_n = _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        offs_m = pid_m * BLOCK_M
        offs_n = pid_n * BLOCK_N
        acc = _tma_tile_dot(x_desc, w_desc, offs_m, offs_n, k_tiles, BLOCK_M, BLOCK_N, BLOCK_K)
        cols = offs_n + tl.arange(0, BLOCK_N)
        acc = _bias_bn(acc, cols, cols < N, b_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, eps,
                       HAS_BIAS, HAS_BN, HAS_AFFINE)
        acc = _apply_act(acc, ACT)
        if HAS_RES:
            acc = _apply_act(acc + r_desc.load([offs_m, offs_n]).to(tl.float32), ACT2)
        out_desc.store([offs_m, offs_n], acc.to(out_desc.dtype))


@triton.autotune(configs=_TMA_1X1_CONFIGS, key=["M_BUCKET", "N", "K", "HAS_RES"],
                 prune_configs_by={"early_config_prune": _prune_1x1}, **_AUTOTUNE_KW)
@triton.jit
def _conv1x1_tma_kernel(
    x_desc, w_desc, r_desc, out_desc, b_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, eps, M, N, K, M_BUCKET,
    HAS_BIAS: tl.constexpr, HAS_BN: tl.constexpr, HAS_AFFINE: tl.constexpr, HAS_RES: tl.constexpr,
    ACT: tl.constexpr, ACT2: tl.constexpr, NUM_SMS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    OCC: tl.constexpr = 1,
):
    # host TMA descriptors (an op call)
    _conv1x1_tiles(x_desc, w_desc, r_desc, out_desc, b_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, eps, M, N, K,
                   HAS_BIAS, HAS_BN, HAS_AFFINE, HAS_RES, ACT, ACT2, NUM_SMS, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M,
                   OCC)


# The same kernel building its descriptors on the device, for calls inlined into Inductor's code: host
# descriptors need data pointers, which a traced call does not have; Inductor provides the scratch memory
# the device descriptors live in (H200, torch 2.11 / triton 3.6: scripts/device_tma_probe.py).
_HAS_DEVICE_TMA = hasattr(tl, "make_tensor_descriptor")
# False: an inlined 1x1 conv on Hopper runs the implicit-GEMM pointer kernel instead. Inductor launches the
# kernels it inlines (user-defined kernels, to it) through Triton's launcher unless TRITONFUSE_STATIC_LAUNCH=1
# lets its static launcher take them, which never takes a kernel with global scratch memory, as device
# descriptors need. Under the profiler an inlined device-TMA conv took about 50 us of host time a launch
# against ~26 us for Inductor's own kernels (H200, 24th session). The pointer kernel is slower on the GPU (it
# beat Inductor's path on 8 of ResNet-50's 16 1x1 shapes, the TMA kernel on 15) but can be launched
# statically (scripts/profile_model.py --pointer --static-launch).
INLINE_DEVICE_TMA = True
_DEVICE_TMA_1X1_CONFIGS = [triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
                           for c in _TMA_1X1_CONFIGS]  # no pre_hook: block shapes are compile-time here


@triton.autotune(configs=_DEVICE_TMA_1X1_CONFIGS, key=["M_BUCKET", "N", "K", "HAS_RES"],
                 prune_configs_by={"early_config_prune": _prune_1x1}, **_AUTOTUNE_KW)
@triton.jit
def _conv1x1_device_tma_kernel(
    x_ptr, w_ptr, r_ptr, out_ptr, b_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, eps, M, N, K, M_BUCKET,
    HAS_BIAS: tl.constexpr, HAS_BN: tl.constexpr, HAS_AFFINE: tl.constexpr, HAS_RES: tl.constexpr,
    ACT: tl.constexpr, ACT2: tl.constexpr, NUM_SMS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    OCC: tl.constexpr = 1,
):
    x_desc = tl.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])
    r_desc = tl.make_tensor_descriptor(r_ptr, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, BLOCK_N])
    out_desc = tl.make_tensor_descriptor(out_ptr, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, BLOCK_N])
    _conv1x1_tiles(x_desc, w_desc, r_desc, out_desc, b_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, eps, M, N, K,
                   HAS_BIAS, HAS_BN, HAS_AFFINE, HAS_RES, ACT, ACT2, NUM_SMS, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M,
                   OCC)


def _matrix_dims(t: torch.Tensor) -> Optional[tuple]:
    """(rows, columns) of the matrix ``_as_matrix`` views ``t`` as, or None; no view is made (the checks
    run on every op call, whose host time small convs pay in full)."""
    B, C, H, W = t.shape
    if H * W == 1 or t.is_contiguous(memory_format=torch.channels_last):
        if t.stride(1) == 1 and (B == 1 or t.stride(0) == C * H * W):
            return B * H * W, C
    return None


def _as_matrix(t: torch.Tensor) -> Optional[torch.Tensor]:
    """[B, C, H, W] channels_last-contiguous (or [N, C, 1, 1] with unit channel stride) as the [B*H*W, C]
    matrix it is in memory, or None."""
    dims = _matrix_dims(t)
    return None if dims is None else t.as_strided(dims, (dims[1], 1))


def _tma_1x1_ok(x, w, r, out, stride, padding) -> bool:
    """Whether the Hopper TMA kernel (host descriptors) serves this conv: 1x1, stride 1, no padding,
    fp16/bf16, every operand a row-major matrix in memory with 16-byte aligned rows (the tests also run it
    under the interpreter). A call inlined into Inductor's code takes ``_device_tma_ok`` instead."""
    if registry.interpret_mode() or inline.active() or not _hopper(x.device):
        return False
    return _tma_1x1_aligned(x, w, r, out, stride, padding)


def _device_tma_ok(x, w, r, stride, padding) -> bool:
    """Whether a call traced for inlining runs the device-descriptor TMA kernel: the host kernel's
    conditions, with each operand's start 16-byte aligned in its storage (Inductor's buffers are aligned,
    and it copies graph inputs that are not)."""
    if not (_HAS_DEVICE_TMA and INLINE_DEVICE_TMA and inline.active() and _hopper(x.device)
            and _tma_1x1_layout(x, w, r, stride, padding)):
        return False
    return all((t.storage_offset() * t.element_size()) % 16 == 0 for t in (x, w, r) if t is not None)


def _tma_1x1_layout(x, w, r, stride, padding) -> bool:
    """The TMA kernel's conditions that the shapes and strides alone decide (no data pointers)."""
    if TensorDescriptor is None or x.dtype not in (torch.float16, torch.bfloat16):
        return False
    if tuple(w.shape[2:]) != (1, 1) or tuple(stride) != (1, 1) or tuple(padding) != (0, 0):
        return False
    for t in (x, w) + ((r,) if r is not None else ()):
        dims = _matrix_dims(t)
        if dims is None or (dims[1] * t.element_size()) % 16:
            return False
    return (w.shape[0] * x.element_size()) % 16 == 0


def _tma_1x1_aligned(x, w, r, out, stride, padding) -> bool:
    # a matrix view starts where its tensor does: the tensors' own pointers are the descriptors' bases
    return (_tma_1x1_layout(x, w, r, stride, padding) and _matrix_dims(out) is not None
            and all(t.data_ptr() % 16 == 0 for t in (x, w, out, r) if t is not None))


# A conv is inlined into Inductor's code as the implicit-GEMM kernel (no op-call host cost, ~50 us on the
# H200 hosts, which ResNet-50's 53 sites would pay on every forward) up to this much work, as linear_act's
# GEMMs are. Above it, or in a model run inside CUDA graphs (where an op call costs no host time), a 1x1
# conv on Hopper is called as an op and runs the TMA kernel.
INLINE_MAX_FLOP = 2**35


# On by default since the 25th session. History, all on the H200 (scripts/profile_model.py): at 18f248f,
# resnet50 with its 1x1 sites inlined ran 4.45-4.70 ms against Inductor's 2.54: each inlined TMA kernel took
# 2-3x the time it measured alone, and Inductor copied its operands first (the as_strided views of the trace
# became copies, ~0.9 ms a forward). Part of that was an fp64 epilogue (Inductor passes eps as fp64; cast
# since 5a050f6); then 3.21 against 2.66 ms. The rest was up to three NaN-filled output-sized buffers per
# conv (fixed: _empty_out, _epilogue_args, e70ac76). With those fixed (b360995, 20 interleaved rounds):
# 2.335 ms against Inductor's 2.630 (1.13x, 20 of 53 sites ours), and from CUDA graphs 2.113 against 2.464
# (1.17x); the profiler summed 2.20 ms of kernel time a forward against Inductor's 2.58. Off (False): every
# site is an op call, measured with its host cost (and left to cuDNN at these sizes).
INLINE = True


def _inline_when(x, w, b, mean, var, gamma, beta, r, stride, padding, eps, act, act2, channels_last) -> Optional[str]:
    """None when a call with these operands is inlined; else why it stays an op call."""
    if not INLINE:
        return "conv_bn is not inlined (kernels.conv_bn.INLINE)"
    if not _hopper(x.device):
        return None
    return _hopper_inline_reason(x, w, r, stride, padding, channels_last)


def _hopper_inline_reason(x, w, r, stride, padding, channels_last) -> Optional[str]:
    if not channels_last or not _tma_1x1_layout(x, w, r, stride, padding):
        return None
    if registry.runs_in_cuda_graphs():
        return "1x1 conv on Hopper inside CUDA graphs (no op-call host cost): the TMA kernel, called as an op"
    flop = 2 * math.prod(out_shape(x.shape, w.shape, stride, padding)) * x.shape[1]
    if flop < INLINE_MAX_FLOP:
        return None
    return f"1x1 conv of {flop / 1e9:.0f} GFLOP on Hopper: the TMA kernel, called as an op"


def _launch_1x1_device_tma(x, w, b, mean, var, gamma, beta, r, eps, act, act2, out):
    M, K = _matrix_dims(x)
    N = w.shape[0]
    has_bn = mean is not None
    affine = has_bn and gamma is not None
    sms = _num_sms(x.device)
    # the 4-D tensors themselves (their memory is the [rows, channels] matrix the kernel describes): traced
    # for inlining, ``as_strided`` views of them became copies in Inductor's code (18f248f). An absent
    # operand's stand-in is an input, never ``out`` (see _epilogue_args)
    args = (x, w, r if r is not None else x, out,
            b if b is not None else w, mean if has_bn else w, var if has_bn else w,
            gamma if affine else w, beta if affine else w, eps, M, N, K, _m_bucket(M))
    kwargs = dict(HAS_BIAS=b is not None, HAS_BN=has_bn, HAS_AFFINE=affine, HAS_RES=r is not None, ACT=act,
                  ACT2=act2, NUM_SMS=sms)
    if inline.active():  # traced into Inductor's graph, which provides the descriptors' scratch memory
        registry.launcher(_conv1x1_device_tma_kernel)[_persistent_grid(M, N, sms)](*args, **kwargs)
        return out
    # timed for the measured choice: Triton's own launch (it passes the scratch memory), within
    # scratch_allocator(); the config it chooses is kept for the inlined call to take
    from tritonfuse import launch, tuning

    grid = _persistent_grid(M, N, sms)
    launch.precompile_for(_conv1x1_device_tma_kernel, grid, args, kwargs)  # (its configs side by side)
    _conv1x1_device_tma_kernel[grid](*args, **kwargs)
    tuning.save(_conv1x1_device_tma_kernel, args, kwargs)
    return out


def _launch_1x1_tma(x, w, b, mean, var, gamma, beta, r, eps, act, act2, out, fixed: Optional[dict] = None):
    xm, wm, om = _as_matrix(x), _as_matrix(w), _as_matrix(out)
    M, K = xm.shape
    N = wm.shape[0]
    rm = _as_matrix(r) if r is not None else om
    descs = {"x_desc": host_desc(xm, [16, 16]), "w_desc": host_desc(wm, [16, 16]),
             "r_desc": host_desc(rm, [16, 16]), "out_desc": host_desc(om, [16, 16])}
    if fixed:
        _set_1x1_blocks({**descs, **fixed})
        kernel = _conv1x1_tma_kernel.fn
    else:
        kernel = registry.launcher(_conv1x1_tma_kernel)
    has_bn = mean is not None
    affine = has_bn and gamma is not None
    sms = _num_sms(x.device)
    kernel[_persistent_grid(M, N, sms)](
        descs["x_desc"], descs["w_desc"], descs["r_desc"], descs["out_desc"],
        b if b is not None else om, mean if has_bn else om, var if has_bn else om,
        gamma if affine else om, beta if affine else om, eps, M, N, K, _m_bucket(M),
        HAS_BIAS=b is not None, HAS_BN=has_bn, HAS_AFFINE=affine, HAS_RES=r is not None, ACT=act, ACT2=act2,
        NUM_SMS=sms, **(fixed or {}),
    )
    return out


# --- launchers ----------------------------------------------------------------------------------------

_INT32_MAX = 2**31 - 1


def _span(t: torch.Tensor) -> int:
    # the largest element offset the kernel computes into t (int32 address arithmetic), at example sizes
    if type(t) is torch.Tensor:  # a real tensor (an op call): plain ints, read without size_hint's checks
        return sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()) if s > 0)
    dims = [(size_hint(s), size_hint(st)) for s, st in zip(t.shape, t.stride())]
    return sum((s - 1) * abs(st) for s, st in dims if s > 0)


def out_shape(x_shape, w_shape, stride: Sequence[int], padding: Sequence[int]) -> tuple:
    n, _, h, w = x_shape
    cout, _, kh, kw = w_shape
    return (n, cout, (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1)


def unsupported(
    x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], bn: Sequence[Optional[torch.Tensor]],
    r: Optional[torch.Tensor], stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int] = (1, 1),
    groups: int = 1, act: str = "none", act2: str = "none",
) -> Optional[str]:
    """Why the kernels cannot serve this conv, or None. ``bn`` is (mean, var, gamma, beta) or four Nones."""
    for a in (act, act2):
        if a not in ACTIVATIONS:
            return f"activation {a!r} not supported (supported: {', '.join(ACTIVATIONS)})"
    if x.dim() != 4 or w.dim() != 4:
        return f"only 2-D convolutions (4-D tensors) are supported, got {x.dim()}-D input"
    if groups != 1:
        return f"grouped convolution (groups={groups}) left to cuDNN"
    if tuple(dilation) != (1, 1):
        return f"dilation {tuple(dilation)} not supported"
    if len(stride) != 2 or len(padding) != 2 or min(stride) < 1 or min(padding) < 0:
        return f"stride {tuple(stride)} / padding {tuple(padding)} not supported"
    if tuple(w.shape[2:]) not in KERNEL_SIZES:
        return f"kernel size {tuple(w.shape[2:])} not supported"
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} not supported"
    if w.shape[1] != x.shape[1]:
        return "input channels differ from the weight's"
    # sizes at their example values: no comparison below may add a guard to a dynamic graph (the kernel
    # checks the int32 limit again on every call)
    if any(size_hint(d) is None for t in (x, w, r) if t is not None for d in (*t.shape, *t.stride())):
        return "data-dependent sizes"
    shape = out_shape([size_hint(d) for d in x.shape], [size_hint(d) for d in w.shape], stride, padding)
    if min(shape) <= 0:
        return "empty output"
    tensors = [w, b, r, *bn]
    for t in tensors:
        if t is None:
            continue
        if t.device != x.device:
            return "operands on different devices"
        if not t.dtype.is_floating_point:
            return f"non-float operand ({t.dtype})"
    if w.dtype != x.dtype or (r is not None and r.dtype != x.dtype):
        return f"mixed dtypes {x.dtype} / {w.dtype}" + (f" / {r.dtype}" if r is not None else "")
    for t in (b, *bn):
        if t is not None and (t.dim() != 1 or t.shape[0] != w.shape[0]):
            return "per-channel parameters of the wrong shape"
    mean, var, gamma, beta = bn
    if (mean is None) != (var is None) or (mean is None and (gamma is not None or beta is not None)):
        return "BatchNorm parameters without running statistics"
    if (gamma is None) != (beta is None):
        return "BatchNorm with only one of weight and bias"
    if r is not None and tuple(size_hint(d) for d in r.shape) != shape:
        return f"residual of shape {tuple(r.shape)} is broadcast to {shape}"
    n_out = math.prod(shape)
    if max(_span(x), _span(w), _span(r) if r is not None else 0, n_out) > _INT32_MAX:
        return "tensor too large for int32 indexing"
    return registry.device_unsupported(x.device)


def _precision(dtype: torch.dtype) -> dict:
    upcast = dot_upcast(dtype)
    # fp32 stays exact fp32 unless the user lowered torch's fp32 matmul precision: cuDNN's allow_tf32 is on
    # by default, yet it often picks exact kernels, and the site must not be less accurate than eager
    ieee = dtype == torch.float32 and (registry.interpret_mode() or torch.get_float32_matmul_precision() == "highest")
    return {"PRECISION": "ieee" if ieee or upcast else "tf32", "DOT_UPCAST": upcast, "RTNE_BF16": rtne_bf16(dtype)}


def _empty_out(x, w, stride, padding, channels_last: bool, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    # with its strides, not ``memory_format``: Inductor lowers ``aten.empty.memory_format`` contiguous, so a
    # traced (inlined) kernel's channels_last output was a contiguous buffer Inductor then converted, filling
    # a second output-sized buffer with NaN before every launch (H200, 24th session)
    shape = out_shape(x.shape, w.shape, stride, padding)
    if channels_last:
        n, c, h, w_ = shape
        strides = (h * w_ * c, 1, w_ * c, c)
    else:
        strides = (shape[1] * shape[2] * shape[3], shape[2] * shape[3], shape[3], 1)
    return torch.empty_strided(shape, strides, device=x.device, dtype=dtype or x.dtype)


def _epilogue_args(x, b, mean, var, gamma, beta, r, out):
    has_bn = mean is not None
    affine = has_bn and gamma is not None  # BatchNorm2d(affine=False) has neither gamma nor beta
    # never read (its flag is off), and an input, never ``out``: traced for inlining, each name the written
    # output went by became an output-sized buffer of its own, filled with NaN before every launch (three
    # per inlined conv of resnet50 on the H200, 24th session; the other cause: _empty_out)
    dummy = x
    ptrs = (b if b is not None else dummy, mean if has_bn else dummy, var if has_bn else dummy,
            gamma if affine else dummy, beta if affine else dummy, r if r is not None else dummy, out)
    r_strides = r.stride() if r is not None else (0, 0, 0, 0)
    return ptrs, (*r_strides, *out.stride()), {"HAS_BIAS": b is not None, "HAS_BN": has_bn,
                                                "HAS_RES": r is not None, "HAS_AFFINE": affine}


def _conv_bn_fake(x, w, b, mean, var, gamma, beta, r, stride, padding, eps, act, act2, channels_last):
    return _empty_out(x, w, stride, padding, channels_last)


@registry.kernel_op("tritonfuse::conv_bn", fake=_conv_bn_fake, inline=_inline_when)
def conv_bn(
    x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], mean: Optional[torch.Tensor],
    var: Optional[torch.Tensor], gamma: Optional[torch.Tensor], beta: Optional[torch.Tensor],
    r: Optional[torch.Tensor], stride: Sequence[int], padding: Sequence[int], eps: float, act: str, act2: str,
    channels_last: bool,
) -> torch.Tensor:
    """``act2(act(batch_norm(conv2d(x, w, b))) + r)`` in one Triton implicit-GEMM kernel (BN in eval mode).

    Args:
        x: [B, C, H, W] activations, fp16, bf16 or fp32; channels_last is the fast layout, any strides work.
        w: [Cout, C, KH, KW] weight, same dtype. b: [Cout] conv bias or None.
        mean, var, gamma, beta: [Cout] running statistics and affine parameters of the BatchNorm, or all None
            (a conv with bias and no BN).
        r: residual of the output's shape, added after ``act``, or None (then ``act2`` must be ``none``).
        stride, padding: per spatial dimension (dilation 1, groups 1). eps: the BatchNorm's eps.
        act, act2: ``none``, ``relu``, ``relu6``, ``silu`` or ``hardswish``.
        channels_last: the layout of the output (the layout cuDNN would give).

    Example::

        >>> x = torch.randn(2, 5, 9, 11).to(memory_format=torch.channels_last)
        >>> w = torch.randn(7, 5, 3, 3)
        >>> m, v, g, bt = torch.randn(7), torch.rand(7) + 0.5, torch.randn(7), torch.randn(7)
        >>> y = torch.ops.tritonfuse.conv_bn(x, w, None, m, v, g, bt, None, [1, 1], [1, 1], 1e-5, "relu",
        ...                                  "none", True)  # TRITON_INTERPRET=1 on a CPU
    """
    return _launch_conv(x, w, b, mean, var, gamma, beta, r, stride, padding, eps, act, act2, channels_last)


def _launch_conv(x, w, b, mean, var, gamma, beta, r, stride, padding, eps, act, act2, channels_last,
                 int8: Optional[tuple] = None, out_dtype: Optional[torch.dtype] = None, tma: bool = True):
    """Launch the implicit-GEMM kernel (or for a 1x1 conv on Hopper, with ``tma``, the TMA GEMM);
    ``int8=(xs, wq, ws)`` with an int8 ``x`` runs the W8A8 variant."""
    w_float = w
    if int8 is not None:
        xs, w, ws = int8
    out = _empty_out(x, w, stride, padding, channels_last, out_dtype)
    B, C, H, W = x.shape
    N, _, KH, KW = w.shape
    _, _, OH, OW = out.shape
    M = B * OH * OW
    if out.numel() == 0:
        return out
    if max(_span(x), _span(w), _span(r) if r is not None else 0, out.numel()) > _INT32_MAX:
        # a dynamic graph's site was checked at its example sizes: a larger call than the kernel's int32
        # offsets reach is computed by PyTorch (an int8 site on its dequantized input and the float weight)
        xf = x.to(out.dtype) * xs.to(out.dtype) if int8 is not None else x
        y = conv_bn_ref(xf, w_float.to(out.dtype), b, mean, var, gamma, beta, r, stride, padding, eps, act, act2)
        return out.copy_(y)
    ptrs, strides, flags = _epilogue_args(x, b, mean, var, gamma, beta, r, out)

    def grid(meta):
        return (cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]),)

    if tma and int8 is None and out_dtype is None:
        if _device_tma_ok(x, w, r, stride, padding) and _matrix_dims(out) is not None:
            return _launch_1x1_device_tma(x, w, b, mean, var, gamma, beta, r, eps, act, act2, out)
        if _tma_1x1_ok(x, w, r, out, stride, padding):
            return _launch_1x1_tma(x, w, b, mean, var, gamma, beta, r, eps, act, act2, out)
    if int8 is not None:
        scales = (xs, ws)
        precision = {"PRECISION": "ieee", "DOT_UPCAST": False, "RTNE_BF16": rtne_bf16(out.dtype), "INT8": True}
    else:
        scales = (x, x)  # never read (and never ``out``: see _epilogue_args)
        precision = _precision(x.dtype)
    registry.launcher(_conv_bn_kernel)[grid](
        x, w, *ptrs, *scales,
        M, N, C, H, W, OH, OW, KH, KW, _m_bucket(M),
        stride[0], stride[1], padding[0], padding[1], eps,
        *x.stride(), *w.stride(), *strides,
        ACT=act, ACT2=act2, FLAT_K=gather(x, w) == "flat", ROW_RUN=row_run(x, w),
        NO_BOUNDS=KH == 1 and KW == 1 and padding[0] == 0 and padding[1] == 0,
        **flags, **precision,
    )
    return out


ROW_K = True  # stems over channels_last x gather each kernel row's run of KW * C values (the kernel's ROW_RUN)


def row_run(x: torch.Tensor, w: torch.Tensor) -> int:
    """The kernel's ROW_RUN for ``x`` and ``w``: the columns (a power of two, at least ``tl.dot``'s depth: 16,
    32 for int8) that hold the KW * C contiguous values of one kernel row, where x has few channels (a stem)
    and is laid out channels_last with pixels C apart; 0 where not (then FLAT_K or the per-channel-block loop
    serve)."""
    C = x.shape[1]
    KH, KW = w.shape[2:]
    if not ROW_K or C >= 32 or KH * KW == 1 or C * KW > 64 or x.stride(1) != 1 or x.stride(3) != C:
        return 0
    return max(32 if x.dtype == torch.int8 else 16, next_pow2(C * KW))


def _conv_int8_fake(xq, xs, w, b, mean, var, gamma, beta, r, stride, padding, eps, act, act2, channels_last,
                    out_dtype):
    return _empty_out(xq, w, stride, padding, channels_last, out_dtype)


@registry.kernel_op("tritonfuse::conv_bn_int8", fake=_conv_int8_fake)
def conv_bn_int8(
    xq: torch.Tensor, xs: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], mean: Optional[torch.Tensor],
    var: Optional[torch.Tensor], gamma: Optional[torch.Tensor], beta: Optional[torch.Tensor],
    r: Optional[torch.Tensor], stride: Sequence[int], padding: Sequence[int], eps: float, act: str, act2: str,
    channels_last: bool, out_dtype: torch.dtype,
) -> torch.Tensor:
    """``tritonfuse::conv_bn`` in int8: ``xq`` int8 activations with one fp32 scale ``xs`` ([1]) for the
    tensor (``quant_tensor_ref``: a reduction over x and a cast, kernels of their own in Inductor's code, which
    ``choose`` charges to this op's timing), ``w`` the float weight, quantized
    per output channel once per weight version (never modified); int32 accumulation, then scales, bias, BN,
    activations and residual in the fp32 epilogue; the output in ``out_dtype``.
    """
    from tritonfuse.kernels import int8 as I8

    wq, ws = I8.weight_cache.get(w)
    return _launch_conv(xq, w, b, mean, var, gamma, beta, r, stride, padding, eps, act, act2, channels_last,
                        int8=(xs.reshape(1).float(), wq, ws), out_dtype=out_dtype)


def int8_sqnr(x, w, b, mean, var, gamma, beta, stride, padding, eps: float, act: str) -> float:
    """SQNR (dB) of the int8 conv vs the float one on Gaussian activations of one image of ``x``'s shape,
    with the site's real weights (for ``TRITONFUSE_QUANT_MIN_SQNR``)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from tritonfuse.kernels import int8 as I8

    with unset_fake_temporarily(), torch.no_grad():
        g = torch.Generator(device="cpu").manual_seed(0)
        xr = torch.randn(1, *x.shape[1:], generator=g, device="cpu").to(device=w.device, dtype=x.dtype)
        xr = xr.to(memory_format=torch.channels_last)
        ref = conv_bn_ref(xr, w, b, mean, var, gamma, beta, None, stride, padding, eps, act, upcast=True)
        y = torch.ops.tritonfuse.conv_bn_int8(*quant_tensor_ref(xr), w, b, mean, var, gamma, beta, None,
                                              list(stride), list(padding), eps, act, "none", True, x.dtype)
        return I8.sqnr_db(ref, y)


def _quant_pass(x: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    """A stand-in moving the bytes of ``quant_tensor_ref`` as Inductor compiles it, timed as part of an int8
    site's cost: its whole-tensor abs-max is a reduction kernel reading x (Inductor cannot fuse it into the
    producer's kernel, nor into our conv's), then x is read again and written as int8. Until the 60th session
    it was left out, and resnet50 b64 ran slower with int8 convs than without (H100, CUDA graphs: 2.648 ms
    against the float backend's 2.292; 13 int8 sites)."""
    torch.linalg.vector_norm(x, float("inf"))
    return xq.copy_(x)


def quant_tensor_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor symmetric int8 of ``x`` in ATen ops: (xq int8 of x's shape, xs fp32 [1]) with x ~ xq * xs.

    One scale for the whole tensor: an implicit-GEMM conv sums over a window of pixels, so a per-pixel scale
    could not be taken out of the sum. Non-finite values poison the scale (NaN out, as in float)."""
    from tritonfuse.kernels import int8 as I8

    q, scale = I8.symmetric_int8(x, tuple(range(x.dim())))
    return q, scale.reshape(1)


@registry.kernel_op("tritonfuse::conv_bn_cudnn", fake=_conv_bn_fake)
def conv_bn_cudnn(
    x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], mean: Optional[torch.Tensor],
    var: Optional[torch.Tensor], gamma: Optional[torch.Tensor], beta: Optional[torch.Tensor],
    r: Optional[torch.Tensor], stride: Sequence[int], padding: Sequence[int], eps: float, act: str, act2: str,
    channels_last: bool,
) -> torch.Tensor:
    """Same as ``tritonfuse::conv_bn``, computed as ``aten.convolution`` (cuDNN) plus one Triton epilogue
    kernel; the path ``choose`` takes where cuDNN's GEMM is the faster one."""
    y = torch.ops.aten.convolution(x, w, None, list(stride), list(padding), [1, 1], False, [0, 0], 1)
    return _epilogue_pass(y, x, w, b, mean, var, gamma, beta, r, stride, padding, eps, act, act2, channels_last)


def _epilogue_pass(y, x, w, b, mean, var, gamma, beta, r, stride, padding, eps, act, act2, channels_last):
    """The epilogue of ``conv_bn`` as one pointwise kernel over a conv output ``y`` computed elsewhere."""
    out = _empty_out(x, w, stride, padding, channels_last)
    B, N, OH, OW = out.shape
    M = B * OH * OW
    if out.numel() == 0:
        return out
    ptrs, strides, flags = _epilogue_args(x, b, mean, var, gamma, beta, r, out)
    block_n = min(128, max(16, next_pow2(N)))
    block_m = max(16, 4096 // block_n)
    grid = (cdiv(M, block_m), cdiv(N, block_n))
    registry.launcher(_bn_act_kernel)[grid](
        y, *ptrs, M, N, OH, OW, eps, *y.stride(), *strides,
        ACT=act, ACT2=act2, RTNE_BF16=rtne_bf16(x.dtype), BLOCK_M=block_m, BLOCK_N=block_n, **flags,
        num_warps=4,
    )
    return out


# --- cuDNN's fused conv + bias + ReLU (+ residual) -----------------------------------------------------------
# aten.cudnn_convolution_relu / cudnn_convolution_add_relu run cuDNN's conv with the bias, a residual and the
# ReLU in its epilogue: one kernel where Inductor runs the conv and then an epilogue pass over its output. BN
# folds into the weight and bias (eval BN is a per-channel affine map of the conv's output); the fold is graph
# ops each call, since the parameters are graph inputs (Inductor's freezing would fold them once). On the H200
# (scripts/cudnn_fused_probe.py, 31st session, cuDNN 9.19), over ResNet-50's distinct conv shapes at b64 fp16
# channels_last: the fused call took as long as the conv alone (residual ones +3 to +35 us) and 0.34-0.87x
# the conv plus Inductor's epilogue (0.86 against 1.37 ms in all); folding every weight of the network took
# 0.12 ms. A site takes it where it measured fastest (``choose``), with TRITONFUSE_CUDNN_FUSED=1 only: with
# it on, 18 of resnet50's sites measured faster as GPU time and the model ran 0.80x Inductor (31st session;
# the sites' fold launches and the fused call's host path were not charged; they are now, not yet measured).
CUDNN_FUSED_DTYPES = (torch.float16, torch.bfloat16)


def cudnn_fused_unsupported(x, w, b, bn, r, stride, padding, act: str, act2: str, channels_last: bool,
                            forced: bool = False) -> Optional[str]:
    """Why cuDNN's fused conv + bias + ReLU (+ residual) cannot serve this site, or None."""
    if not config.cudnn_fused_enabled():
        return "TRITONFUSE_CUDNN_FUSED=0"
    if not forced and not registry.timing_enabled(x.device):
        return "only where it is timed (a GPU with TRITONFUSE_MEASURE on)"
    if not (act == "relu" and r is None) and not (act == "none" and r is not None and act2 == "relu"):
        return "cuDNN fuses a ReLU, or a residual add then a ReLU"
    if x.dtype not in CUDNN_FUSED_DTYPES or w.dtype != x.dtype:
        return f"dtype {x.dtype} (fp16/bf16 only)"
    if not channels_last:
        return "contiguous (NCHW) output"
    oh, ow = out_shape(x.shape, w.shape, stride, padding)[2:]
    if 1 in (x.shape[1], w.shape[0], x.shape[2] * x.shape[3], oh * ow):
        return "a size-1 dimension (its channels_last strides are ambiguous)"
    return None


def bn_scale(var, gamma, eps: float) -> torch.Tensor:
    """An eval BN's per-channel scale ``gamma / sqrt(var + eps)`` in fp32 (no gamma: 1)."""
    scale = torch.rsqrt(var.float() + eps)
    return scale * gamma.float() if gamma is not None else scale


def fold_bn(w, b, mean, var, gamma, beta, eps: float):
    """(weight, bias) of the conv with the eval BN folded in, in fp32 and then w's dtype, channels_last (as
    written in a replacement: graph ops Inductor compiles)."""
    if mean is None:
        return w.contiguous(memory_format=torch.channels_last), b
    scale = bn_scale(var, gamma, eps)
    wf = (w.float() * scale.reshape(-1, 1, 1, 1)).to(w.dtype).contiguous(memory_format=torch.channels_last)
    bf = -mean.float() * scale if b is None else (b.float() - mean.float()) * scale
    if beta is not None:
        bf = bf + beta.float()
    return wf, bf.to(w.dtype)


def conv_fused(x, wf, bf, r, stride, padding):
    """``relu(conv(x, wf) + bf (+ r))`` as one cuDNN call on a GPU (``wf``/``bf`` from ``fold_bn``); on the
    CPU (tests forcing the path) the same ops unfused."""
    x = x.contiguous(memory_format=torch.channels_last)
    if bf is None:
        bf = torch.zeros(wf.shape[0], dtype=x.dtype, device=x.device)
    if x.device.type != "cuda":
        y = torch.ops.aten.convolution(x, wf, bf, list(stride), list(padding), [1, 1], False, [0, 0], 1)
        return torch.relu(y + r if r is not None else y).contiguous(memory_format=torch.channels_last)
    _register_cudnn_fakes()
    if r is None:
        return torch.ops.aten.cudnn_convolution_relu(x, wf, bf, list(stride), list(padding), [1, 1], 1)
    r = r.contiguous(memory_format=torch.channels_last)
    return torch.ops.aten.cudnn_convolution_add_relu(x, wf, r, 1.0, bf, list(stride), list(padding), [1, 1], 1)


_fakes_registered = False


def _register_cudnn_fakes() -> None:
    """Fake (meta) implementations of the two cuDNN ops, which torch ships without one, so that a graph holding
    them can be traced and compiled (Inductor calls them as fallback kernels). Added the first time a site
    takes the path, never on import; an op that has one already keeps its own."""
    global _fakes_registered
    if _fakes_registered:
        return
    _fakes_registered = True

    def out(x, w, stride, padding):
        # cuDNN's output is channels_last where its input or weight is (cudnn_conv_suggest_memory_format); the
        # sites given these ops pass both channels_last, with no size-1 dims that would make that ambiguous
        cl = any(t.is_contiguous(memory_format=torch.channels_last) for t in (x, w))
        shape = out_shape(x.shape, w.shape, stride, padding)
        return x.new_empty(shape).contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)

    def relu_fake(x, w, b, stride, padding, dilation, groups):
        return out(x, w, stride, padding)

    def add_relu_fake(x, w, z, alpha, b, stride, padding, dilation, groups):
        return out(x, w, stride, padding)

    for name, fn in (("aten::cudnn_convolution_relu", relu_fake), ("aten::cudnn_convolution_add_relu", add_relu_fake)):
        try:
            torch.library.register_fake(name, fn)
        except Exception:  # noqa: BLE001 - torch has one (or cannot take ours): its own is used
            pass


# --- references ---------------------------------------------------------------------------------------


def act_ref(y: torch.Tensor, act: str) -> torch.Tensor:
    F = torch.nn.functional
    if act == "none":
        return y
    if act == "relu":
        return F.relu(y)
    if act == "relu6":
        return F.relu6(y)
    if act == "silu":
        return F.silu(y)
    if act == "hardswish":
        return F.hardswish(y)
    raise ValueError(f"unknown activation {act!r}")


def conv_bn_ref(x, w, b, mean, var, gamma, beta, r, stride, padding, eps, act, act2="none",
                upcast: bool = False) -> torch.Tensor:
    """PyTorch's own ``act2(act(batch_norm(conv2d(x, w, b), eval)) + r)``; in fp64 on the CPU with ``upcast``."""
    if upcast:
        x, w, b, mean, var, gamma, beta, r = (t.double().cpu() if t is not None else None
                                              for t in (x, w, b, mean, var, gamma, beta, r))
    y = torch.nn.functional.conv2d(x, w, b, stride, padding)
    if mean is not None:
        y = torch.nn.functional.batch_norm(y, mean, var, gamma, beta, False, 0.0, eps)
    y = act_ref(y, act)
    if r is not None:
        y = act_ref(y + r, act2)
    return y


def gather(x: torch.Tensor, w: torch.Tensor) -> str:
    """How the implicit-GEMM kernel reads x's windows: ``row`` (``row_run``), ``flat`` (FLAT_K) or ``nested``
    (channel blocks per kernel position); ``probe`` compiles the variant a site runs."""
    if row_run(x, w):
        return "row"
    return "flat" if x.shape[1] < 32 and w.shape[2] * w.shape[3] > 1 else "nested"


def probe(device: str, dtype: torch.dtype, kernel: str, ksize: tuple, gather_kind: str, has_bias: bool,
          has_bn: bool, has_res: bool, act: str, act2: str, affine: bool = True) -> Optional[str]:
    """Compile and launch one variant on a small input once; None when it works, else the reason.
    ``gather_kind``: ``gather``'s answer for the site (a few-channel input laid out channels_last for ``row``,
    contiguous for ``flat``). ``affine=False``: a BatchNorm without gamma and beta."""

    def run():
        # the strides real sites have (64 channels in, 32 out: multiples of 16, as Triton specialises them;
        # channels_last weights, as a model moved to channels_last has): the probe's compile of the kernel's
        # smallest config is one such a site's tuning compiles too (with 40 and 24 it was one of its own)
        g = torch.Generator(device="cpu").manual_seed(0)
        c, n = (64 if gather_kind == "nested" else 3), 32

        def rnd(*s, pos=False):
            t = torch.rand(*s, generator=g, device="cpu") + 0.5 if pos else torch.randn(*s, generator=g, device="cpu")
            return t.to(device=device, dtype=dtype)

        x = rnd(2, c, 9, 7)
        x = x if gather_kind == "flat" else x.to(memory_format=torch.channels_last)
        w = (rnd(n, c, *ksize) * (c * ksize[0] * ksize[1]) ** -0.5).to(memory_format=torch.channels_last)
        b = rnd(n) if has_bias else None
        bn = (rnd(n), rnd(n, pos=True), rnd(n), rnd(n)) if has_bn else (None,) * 4
        if has_bn and not affine:
            bn = (*bn[:2], None, None)
        pad = [ksize[0] // 2, ksize[1] // 2]
        shape = out_shape(x.shape, w.shape, [1, 1], pad)
        r = rnd(*shape).to(memory_format=torch.channels_last) if has_res else None
        if kernel == "conv_bn_int8":
            y = torch.ops.tritonfuse.conv_bn_int8(*quant_tensor_ref(x), w, b, *bn, r, [1, 1], pad, 1e-5, act, act2,
                                                  True, dtype)
        else:
            op = torch.ops.tritonfuse.conv_bn if kernel == "conv_bn" else torch.ops.tritonfuse.conv_bn_cudnn
            y = op(x, w, b, *bn, r, [1, 1], pad, 1e-5, act, act2, True)
        ref = conv_bn_ref(x, w, b, *bn, r, [1, 1], pad, 1e-5, act, act2, upcast=True)
        err = (y.double().cpu() - ref).norm() / ref.norm().clamp_min(1e-12)
        if not math.isfinite(err.item()) or err.item() > 5e-2:
            raise RuntimeError(f"wrong result on the probe input (relative error {err.item():.3g})")

    name = (f"{kernel}[{ksize[0]}x{ksize[1]},{gather_kind},{act},{act2},"
            f"{'bias' if has_bias else ''}{'bn' if has_bn else ''}{'' if affine else '-noaffine'}"
            f"{'res' if has_res else ''},{dtype}]")
    return registry.guarded_probe(f"{name}@{device}", run)


# --- per-shape choice between the Triton kernel and cuDNN + Inductor's epilogue ------------------------
# Where the Triton kernel is not the faster, the site is left to Inductor untouched: cuDNN with Inductor's
# own fused BN epilogue, exactly what ``backend="inductor"`` compiles. (An earlier version rewrote such sites
# into equivalent ATen ops; on the H100 that ran resnet50 at 0.84x of Inductor, so a rewrite has to earn its
# place.) The cuDNN side is timed as the conv plus one pointwise epilogue pass where Inductor must run one
# (the output feeds another conv or is the graph's), else as the conv alone, a lower bound of that path; the
# Triton op's time includes its op-call overhead. Timed once per shape, layout, epilogue, GPU and versions by
# ``registry.measured_choice`` (kept on disk).

# --- patch convolutions as one GEMM ---------------------------------------------------------------------
# A convolution whose stride equals its kernel (no padding, no dilation, no groups) reads every input pixel
# once, in non-overlapping patches: ViT's and Swin's patch embeddings (16x16 and 4x4 stride), ConvNeXt's
# stem and downsampling layers (4x4, 2x2). It is one GEMM, [N*OH*OW, C*KH*KW] x [C*KH*KW, Cout], over the
# patches gathered by a permuted copy of the input. cuDNN ran vit_b_16's (64x3x224x224 fp16, 768 16x16
# filters, 14.8 GFLOP) in 0.56 ms on the H200 (a CUTLASS kernel of 0.38 ms and two NCHW-to-NHWC passes of
# 0.075: profile-int8-vit_b_16-d959f51, about a tenth of the model's time); a GEMM that size takes some 0.03.
# The rewrite is ATen ops that Inductor compiles (the gather fused into one copy, cuBLAS's GEMM with the
# bias), decided per shape by timing it against the convolution (``choose_patch``).


def is_patch_conv(w_shape, stride, padding, dilation, transposed, groups) -> bool:
    """Whether a convolution's windows tile its input without overlap (stride = kernel > 1x1, no padding,
    dilation or groups): the convolutions ``patch_gemm`` serves."""
    k = tuple(w_shape[2:])
    return (len(k) == 2 and tuple(stride) == k and k != (1, 1) and not any(padding) and not transposed
            and all(d == 1 for d in dilation) and groups == 1)


def patch_unsupported(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> Optional[str]:
    """Why ``patch_gemm`` cannot serve a patch convolution of these operands, or None."""
    if x.dim() != 4 or w.dim() != 4:
        return f"only 2-D convolutions (4-D tensors) are supported, got {x.dim()}-D input"
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} not supported"
    if w.dtype != x.dtype or (b is not None and b.dtype != x.dtype):
        return f"mixed dtypes {x.dtype} / {w.dtype}" + (f" / {b.dtype}" if b is not None else "")
    if w.shape[1] != x.shape[1]:
        return "input channels differ from the weight's"
    if any(type(d) is not int for t in (x, w) for d in (*t.shape, *t.stride())):
        return "dynamic shapes"
    if x.shape[2] < w.shape[2] or x.shape[3] < w.shape[3] or 0 in x.shape or 0 in w.shape:
        return "empty output"
    if any(t.device != x.device for t in (w, b) if t is not None):
        return "operands on different devices"
    return registry.device_unsupported(x.device)


def _nhwc(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _patch_grid(x: torch.Tensor, kh: int, kw: int) -> tuple:
    """(N, C, OH, OW) of a KHxKW patch convolution over ``x`` (rows and columns past the last patch dropped)."""
    n, c, h, wd = x.shape
    return n, c, h // kh, wd // kw


def _gather_patches(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """The patches of ``x`` as the rows of a [N*OH*OW, C*KH*KW] matrix, in ATen ops (what the rewrite puts in
    the graph, for Inductor to fuse): columns (c, ky, kx), or (ky, kx, c) for a channels_last input."""
    n, c, oh, ow = _patch_grid(x, kh, kw)
    nhwc = _nhwc(x)  # (of the whole input: a slice of a channels_last tensor is not channels_last-contiguous)
    if (oh * kh, ow * kw) != tuple(x.shape[2:]):
        x = x[:, :, : oh * kh, : ow * kw]
    x6 = x.reshape(n, c, oh, kh, ow, kw)
    if nhwc:
        return x6.permute(0, 2, 4, 3, 5, 1).reshape(n * oh * ow, kh * kw * c)
    return x6.permute(0, 2, 4, 1, 3, 5).reshape(n * oh * ow, c * kh * kw)


@triton.jit
def _patch_gather_kernel(x_ptr, out_ptr, M, KC, OH, OW, C, s_n, s_c, s_h, s_w,
                         KH: tl.constexpr, KW: tl.constexpr, PIXEL_MAJOR: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # one [BLOCK_R, BLOCK_C] tile of _gather_patches' matrix, read through x's strides: the pointwise copy
    # Inductor generates for that gather, written out so the choice can time it (the eager permuted copy
    # ran about four times slower than Inductor's at vit_b_16's patch embedding on the H100)
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    ox = rows % OW
    oy = (rows // OW) % OH
    n = rows // (OW * OH)
    if PIXEL_MAJOR:  # columns (ky, kx, c)
        ci = cols % C
        kx = (cols // C) % KW
        ky = cols // (C * KW)
    else:  # columns (c, ky, kx)
        kx = cols % KW
        ky = (cols // KW) % KH
        ci = cols // (KW * KH)
    row_off = n * s_n + oy * (KH * s_h) + ox * (KW * s_w)
    col_off = ci * s_c + ky * s_h + kx * s_w
    keep = (rows < M)[:, None] & (cols < KC)[None, :]
    v = tl.load(x_ptr + row_off[:, None] + col_off[None, :], mask=keep)
    tl.store(out_ptr + rows[:, None] * KC + cols[None, :], v, mask=keep)


def gather_patches_kernel(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """``_gather_patches`` as one Triton kernel (equal element for element): the gather's cost as Inductor
    runs it, for ``choose_patch``'s timing."""
    n, c, oh, ow = _patch_grid(x, kh, kw)
    m, kc = n * oh * ow, c * kh * kw
    out = torch.empty((m, kc), device=x.device, dtype=x.dtype)
    if out.numel():
        block_r, block_c = 64, 64
        _patch_gather_kernel[(cdiv(m, block_r), cdiv(kc, block_c))](
            x, out, m, kc, oh, ow, c, *x.stride(), KH=kh, KW=kw, PIXEL_MAJOR=_nhwc(x),
            BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4)
    return out


def _patch_product(patches: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor],
                   channels_last: bool) -> torch.Tensor:
    # the GEMM over the gathered patches of x, its rows pixels: the output is channels_last in memory
    n, _, oh, ow = _patch_grid(x, *w.shape[2:])
    co = w.shape[0]
    wm = w.permute(0, 2, 3, 1).reshape(co, -1) if _nhwc(x) else w.reshape(co, -1)
    y = torch.addmm(b, patches, wm.t()) if b is not None else patches @ wm.t()
    y = y.view(n, oh, ow, co).permute(0, 3, 1, 2)
    return y if channels_last else y.contiguous()


def patch_gemm(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], channels_last: bool) -> torch.Tensor:
    """``conv2d(x, w, b, stride=kernel)`` as one GEMM over the input's patches, with the convolution's output
    ([N, Cout, OH, OW]; its memory channels_last with ``channels_last``, else contiguous, as the graph's
    convolution gave). Rows and columns past the last whole patch are dropped, as the convolution drops them.
    A channels_last input is gathered pixel-major (its channels stay contiguous), the weight likewise."""
    return _patch_product(_gather_patches(x, *w.shape[2:]), x, w, b, channels_last)


def choose_patch(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], channels_last: bool) -> dict:
    """Whether ``patch_gemm`` serves this patch convolution: ``{"use": ...}`` with ``ours_ms`` / ``theirs_ms``
    (the gather and the GEMM / cuDNN's convolution, both as Inductor runs them: GPU time) where timed. Off the
    GPU or with ``TRITONFUSE_MEASURE=0``: used. ``CHOICE`` "cudnn" leaves it to cuDNN."""
    if CHOICE == "cudnn":
        return {"use": False, "forced": True}
    real = {}

    def args():
        if not real:  # created on first use, inside measured_choice (out of Inductor's fake mode)
            real["a"] = (_random_like(x), _random_like(w), _random_like(b))
        return real["a"]

    def ours():
        # the gather as one kernel, as Inductor fuses the rewrite's permuted copy (timed eagerly, that copy
        # cost vit_b_16's patch embedding 0.19 ms where the compiled rewrite took 0.05)
        xr, wr, br = args()
        patches_of = gather_patches_kernel if xr.is_cuda or registry.interpret_mode() else _gather_patches
        return _patch_product(patches_of(xr, *w.shape[2:]), xr, wr, br, channels_last)

    def cudnn_conv():
        xr, wr, br = args()
        return torch.ops.aten.convolution(xr, wr, br, list(w.shape[2:]), [0, 0], [1, 1], False, [0, 0], 1)

    key = "|".join(map(str, ("patch_gemm", str(x.dtype).replace("torch.", ""), "x".join(map(str, x.shape)),
                             _layout(x), "x".join(map(str, w.shape)), _layout(w), int(b is not None),
                             int(channels_last), "gather kernel")))
    try:
        return registry.measured_choice(key, x.device, ours, [cudnn_conv], graphed=True)
    except Exception as e:  # e.g. out of memory while timing: cuDNN's path
        return {"use": False, "error": f"{type(e).__name__}: {e}"}


CHOICE = "auto"  # "auto" (measure, as config.measure says), "triton" or "cudnn": tests force one path


def _random_like(t: Optional[torch.Tensor], pos: bool = False) -> Optional[torch.Tensor]:
    """A real tensor of ``t``'s shape, strides, dtype and device for a timing: normal, or (``pos``) uniform
    in [0.5, 1.5] (a variance); None for None."""
    if t is None:
        return None
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
    return out.uniform_(0.5, 1.5) if pos else out.normal_()


def _layout(t: Optional[torch.Tensor]) -> str:
    if t is None:
        return "-"
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return "cl"
    return "c" if t.is_contiguous() else "s"


def choice_key(x, w, b, bn, r, stride, padding, act, act2, channels_last) -> str:
    return "|".join(map(str, (
        "conv_bn", str(x.dtype).replace("torch.", ""), "x".join(map(str, x.shape)), _layout(x),
        "x".join(map(str, w.shape)), _layout(w), _layout(r), f"s{stride[0]}x{stride[1]}",
        f"p{padding[0]}x{padding[1]}", int(b is not None), int(bn[0] is not None), act, act2, int(channels_last),
    ))) + ("|noaffine" if bn[0] is not None and bn[2] is None else "")


def choose(x, w, b, bn, r, stride, padding, eps, act, act2, channels_last, int8: bool = False,
           epilogue_pass: bool = False) -> dict:
    """Which path serves this conv: {"kernel": "conv_bn" (Triton; "conv_bn_int8" with ``int8``) or
    "conv_bn_cudnn" (left to Inductor), plus "ours_ms" / "theirs_ms" (Triton op / cuDNN's path) where they
    were timed. The int8 op is timed on activations already quantized, with the quantization's cost added
    to ours (``_quant_pass``): its per-tensor scale is a reduction over the whole activation, which Inductor
    runs as kernels of its own, not in the producer's.

    ``epilogue_pass``: Inductor's path runs the epilogue as a pointwise kernel of its own (the output feeds
    another convolution or is the graph's output, so it must be written out, and cuDNN cannot take the
    epilogue), and cuDNN's side is timed as the conv plus that pass; otherwise as the conv alone, a lower
    bound (Inductor may fuse the epilogue into the consumer, a pooling say).

    On a GPU both are timed once per shape (``registry.measured_choice``, kept on disk); off the GPU or with
    ``TRITONFUSE_MEASURE=0`` the Triton kernel is used. ``CHOICE`` forces one path.
    """
    ours = "conv_bn_int8" if int8 else "conv_bn"
    fused_why = ("int8" if int8 else
                 cudnn_fused_unsupported(x, w, b, bn, r, stride, padding, act, act2, channels_last,
                                         forced=CHOICE == "cudnn_fused"))
    if CHOICE == "cudnn_fused" and fused_why is None:
        return {"kernel": "conv_bn_cudnn_fused", "forced": True}
    if CHOICE in ("triton", "cudnn", "cudnn_fused"):
        return {"kernel": ours if CHOICE == "triton" else "conv_bn_cudnn", "forced": True}
    static = all(type(v) is int for t in (x, w, r) if t is not None for v in (*t.shape, *t.stride()))
    if not static:
        if x.device.type == "cuda" and config.measure_enabled():
            # dynamic shapes: nothing to time; cuDNN + Inductor's epilogue is never slower than Inductor
            return {"kernel": "conv_bn_cudnn", "dynamic": True}
        return {"kernel": ours}
    real = {}

    def args():
        # created on first use, inside measured_choice (out of Inductor's fake mode)
        if not real:
            rnd = _random_like
            real["a"] = (rnd(x), rnd(w), rnd(b), rnd(bn[0]), rnd(bn[1], pos=True), rnd(bn[2]), rnd(bn[3]), rnd(r),
                         list(stride), list(padding), eps, act, act2, channels_last)
        return real["a"]

    # a site inlined into Inductor's code runs the implicit-GEMM kernel, launched by Inductor: both sides are
    # timed as GPU time alone
    inlined = (not int8 and inline.will_inline(torch.ops.tritonfuse.conv_bn.default, x.device)
               and _inline_when(x, w, b, *bn, r, stride, padding, eps, act, act2, channels_last) is None)
    # ... as the device-descriptor TMA kernel where it applies (Hopper, 1x1), else the implicit-GEMM kernel
    device_tma = (inlined and _HAS_DEVICE_TMA and INLINE_DEVICE_TMA and channels_last and _hopper(x.device)
                  and _tma_1x1_layout(x, w, r, stride, padding))

    def triton_op():
        a = args()
        if device_tma:
            out = _empty_out(a[0], a[1], stride, padding, channels_last)
            return _launch_1x1_device_tma(a[0], a[1], a[2], *a[3:7], a[7], eps, act, act2, out)
        if inlined:
            return _launch_conv(*a, tma=False)
        return torch.ops.tritonfuse.conv_bn(*a)

    def cudnn_conv():
        xr, wr = args()[:2]
        return torch.ops.aten.convolution(xr, wr, None, list(stride), list(padding), [1, 1], False, [0, 0], 1)

    def epilogue():
        a = args()
        if "y" not in real:
            real["y"] = cudnn_conv()
        return _epilogue_pass(real["y"], *a)

    def int8_op():
        a = args()
        if "q" not in real:
            real["q"] = quant_tensor_ref(a[0])
        return torch.ops.tritonfuse.conv_bn_int8(*real["q"], *a[1:], x.dtype)

    def quant_pass():
        if "xq" not in real:
            real["xq"] = torch.empty_like(args()[0], dtype=torch.int8)
        return _quant_pass(args()[0], real["xq"])

    try:
        site_key = (choice_key(x, w, b, bn, r, stride, padding, act, act2, channels_last) + ("|int8q" if int8 else "")
                    + ("|epilogue" if epilogue_pass else ""))
        key = site_key + ("|devtma" if device_tma else "|pointer" if inlined else "")
        theirs = [cudnn_conv, epilogue] if epilogue_pass else [cudnn_conv]
        # an op call's host cost is the op's, whatever the conv: one per launch path (op_host_probe.py on the
        # H200: 107 us for the implicit-GEMM kernel, 191-211 us for the 1x1 TMA one)
        host_kind = ("conv_bn_int8" if int8 else "conv_bn/tma" if _hopper(x.device) and _tma_1x1_layout(
            x, w, r, stride, padding) else "conv_bn/implicit")
        with scratch_allocator() if device_tma else contextlib.nullcontext():
            rec = registry.measured_choice(key, x.device, int8_op if int8 else triton_op, theirs, graphed=inlined,
                                           shared=(quant_pass, 1.0) if int8 else None, host_kind=host_kind)
    except Exception as e:  # e.g. out of memory while timing: cuDNN's path
        return {"kernel": "conv_bn_cudnn", "error": f"{type(e).__name__}: {e}"}
    choice = {"kernel": ours if rec["use"] else "conv_bn_cudnn", **rec}
    if fused_why is None and not registry.in_survey():  # (nothing of ours to compile ahead)
        def fused():
            # as Inductor runs it: one pointwise kernel folds the BN scale into the weight (the per-channel
            # scale is recomputed inside it), one the bias, then the cuDNN call (an eager fold_bn would
            # time a dozen small kernels instead: 20-40 us more a site on the H200)
            a = args()
            if "fold" not in real:  # (a conv with a bias and no BN: nothing to fold, scale None)
                scale = bn_scale(a[4], a[5], eps).to(a[1].dtype) if a[3] is not None else None
                real["fold"] = (scale, *fold_bn(a[1], a[2], *a[3:7], eps))
            scale, wf, bf = real["fold"]
            if scale is not None:
                torch.mul(a[1], scale.reshape(-1, 1, 1, 1), out=wf)
                torch.mul(a[3], scale, out=bf)
            return conv_fused(a[0], wf, bf, a[7], stride, padding)

        # timed as op calls are (GPU time where the calls' host time hides behind it, else back to back with
        # the host's): the path adds two fold launches and cuDNN's fused-call host path to a site, and timed
        # as GPU time alone (7086ca7) it took 18 of resnet50's sites and the model ran 0.80x Inductor
        try:
            frec = registry.measured_choice(site_key + "|cudnnfused|host", x.device, fused, theirs)
        except Exception as e:  # noqa: BLE001 - cuDNN cannot run it here: the other paths stand
            frec = {"use": False, "error": f"{type(e).__name__}: {e}"}
        if frec.get("use") and (choice["kernel"] != ours or registry.cheaper(frec, rec)):
            choice = {"kernel": "conv_bn_cudnn_fused", **frec, "triton": rec}
        else:
            registry.show_measured(rec)  # the report shows the timing of the path the site takes
    return choice

