"""Linear + activation GEMMs: ``act(x @ w.T + b)`` and the gated MLP ``act(x @ wg.T) * (x @ wu.T)``.

The bias and the activation are applied in the epilogue while the accumulator is still fp32; the gated
kernel keeps two accumulators so each tile of x is read once for both projections.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from tritonfuse import config, inline, registry
from tritonfuse.kernels.common import (_apply_act, _m_bucket, autotune_kw, cast_out, cdiv, dot_upcast, fast_tanh_ok,
                                      host_desc, rtne_bf16, tuned)
from tritonfuse.kernels.common import hopper as _hopper

ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu", "quick_gelu")  # quick_gelu: x * sigmoid(1.702 x) (CLIP)
GATED_ACTIVATIONS = ("silu", "gelu", "gelu_tanh")
DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# --- autotune configs ---------------------------------------------------------------------------------
# Keyed on power-of-two buckets of M and on N, K, so a new batch size inside a bucket does not re-tune.


def _cfg(bm, bn, bk, stages, warps, group=8):
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group}, num_stages=stages, num_warps=warps
    )


if registry.interpret_mode():
    # the interpreter runs configs on the CPU: one small config keeps the test suite fast
    _GEMM_CONFIGS = [_cfg(32, 32, 32, 1, 4)]
    _GATED_CONFIGS = [_cfg(32, 32, 32, 1, 4)]
elif not config.autotune_enabled():
    # TRITONFUSE_AUTOTUNE=0 (the GPU test suite): one config each, compiles fast
    _GEMM_CONFIGS = [_cfg(128, 128, 64, 3, 8)]
    _GATED_CONFIGS = [_cfg(128, 128, 64, 3, 8)]
else:
    _GEMM_CONFIGS = [
        _cfg(128, 256, 64, 3, 8),
        _cfg(128, 256, 64, 4, 8),
        _cfg(256, 128, 64, 3, 8),
        _cfg(128, 128, 64, 4, 8),
        _cfg(128, 128, 64, 4, 4),
        _cfg(128, 64, 64, 4, 4),
        _cfg(64, 128, 64, 4, 4),
        _cfg(64, 64, 64, 4, 4),
        # decode-sized M: short tiles, long K steps, more programs streaming the weight
        _cfg(16, 64, 128, 4, 4),
        _cfg(16, 128, 128, 4, 4),
        _cfg(32, 64, 128, 4, 4),
        _cfg(16, 32, 256, 3, 4),
    ]
    # two fp32 accumulators per tile: stay at or under 128x128 per program
    _GATED_CONFIGS = [
        _cfg(128, 128, 64, 3, 8),
        _cfg(128, 128, 64, 4, 8),
        _cfg(128, 128, 32, 4, 8),
        _cfg(128, 64, 64, 4, 4),
        _cfg(64, 128, 64, 4, 4),
        _cfg(128, 256, 32, 3, 8),
        _cfg(64, 64, 64, 4, 4),
        _cfg(16, 64, 128, 4, 4),
        _cfg(16, 32, 128, 4, 4),
        _cfg(32, 64, 64, 4, 4),
    ]

_AUTOTUNE_KW = autotune_kw()


try:  # host-side TMA descriptors: triton >= 3.4 (the Hopper path below)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # older triton: the pointer kernels serve every GPU
    TensorDescriptor = None


def _set_tma_blocks(nargs):
    # descriptors are made before a config is chosen; each config sets its own block shapes
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["x_desc"].block_shape = [bm, bk]
    for name in ("w_desc", "wg_desc", "wu_desc"):
        if name in nargs:
            nargs[name].block_shape = [bn, bk]
    for name in ("out_desc", "pre_desc"):
        if name in nargs:  # a subtiled epilogue stores the tile in two [BM, BN/2] halves
            nargs[name].block_shape = [bm, bn // 2 if nargs.get("SUBTILE") else bn]


def _persistent_cfg(meta: dict, stages: int, warps: int, pre_hook, occ: int = 1) -> "triton.Config":
    """A config of a persistent TMA kernel (this module's and conv_bn's 1x1 ones): ``occ`` > 1 runs that
    many programs per SM (``OCC``, read by ``_persistent_grid`` and the kernels' tile loops). Every config
    sets ``OCC``: a defaulted parameter that only some configs set is left out of a launch their other
    configs make, which fails Inductor's analysis of what an inlined kernel writes (inline.with_defaults)."""
    return triton.Config({**meta, "OCC": occ}, num_stages=stages, num_warps=warps, pre_hook=pre_hook)


def _tma_cfg(bm, bn, bk, stages, warps, subtile=False, occ=1):
    meta = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "SUBTILE": subtile}
    return _persistent_cfg(meta, stages, warps, _set_tma_blocks, occ)


# H200, scripts/explore_gpu.py (GEMM+GELU at BERT/ViT MLP shapes): 128x256 tiles with the epilogue in
# two halves were fastest (less epilogue shared memory: a 4-stage pipeline fits); without an
# activation they matched cuBLAS (617-622 against 634 TFLOP/s)
# OCC=2: two persistent programs per SM, each small enough to share it (shared memory, registers), so
# one's epilogue (an erf GELU on a 128x256 tile: by estimate a third of its K=768 main loop) runs while
# the other's tensor-core loop does, as CUTLASS's ping-pong kernels do with two consumer warp groups.
# Compiled for sm_90 (triton 3.8, ptxas -v): 115 and 82 KB of shared memory, 168 registers a thread at
# 4 warps, so two fit an SM; at 8 warps a 128x128 program takes 178 registers a thread, and two do not
# The first _TMA_TIMED are timed (kernels.common.tuned): at BERT's and ViT's MLP (M=16384 and 12608, K=768,
# N=3072) 128x256 won, 128x128 and OCC=2 came within 3% and 8% (OCC=2 won a sweep at 751964d), and 64x128
# stays for M of a few hundred rows, where larger tiles leave SMs idle
_TMA_ALL = [_tma_cfg(128, 256, 64, 3, 8, True), _tma_cfg(128, 128, 64, 4, 8), _tma_cfg(64, 128, 64, 4, 4),
            _tma_cfg(128, 128, 64, 3, 4, True, occ=2),
            _tma_cfg(128, 256, 64, 4, 8, True), _tma_cfg(128, 128, 128, 3, 8), _tma_cfg(256, 128, 64, 3, 8),
            _tma_cfg(128, 128, 64, 5, 4), _tma_cfg(128, 128, 64, 2, 4, True, occ=2)]
_TMA_TIMED = 4
# TRITONFUSE_AUTOTUNE=0 (the GPU tests): one config; the tests of every config use the _ALL lists
_TMA_CONFIGS = tuned(_TMA_ALL, _TMA_TIMED) if config.autotune_enabled() else [_tma_cfg(128, 128, 64, 4, 8)]


def _set_gated_blocks(nargs):
    # the dual GEMM: [BM, BN] tiles of x @ [wg; wu].T (BN / 2 rows of each), stored as [BM, BN/2] outputs
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["x_desc"].block_shape = [bm, bk]
    w_desc = nargs["w_desc"]
    w_desc.block_shape = [2, bn // 2, bk] if len(w_desc.shape) == 3 else [bn, bk]
    nargs["out_desc"].block_shape = [bm, bn // 2]


def _gated_tma_cfg(bm, bk, stages, warps, occ=1):
    # BLOCK_N is the gate+up tile: always GATED_HALF rows of each weight
    return _persistent_cfg({"BLOCK_M": bm, "BLOCK_N": 2 * GATED_HALF, "BLOCK_K": bk, "GROUP_M": GATED_GROUP_M},
                           stages, warps, _set_gated_blocks, occ)


# Row tiles a group of the dual GEMM's tile order covers. A group reads the whole weight from DRAM once (at
# 8192x2048x8192: 64 MB, 8 times at GROUP_M=8, twice at 32), and a wave of 132 tiles reads GROUP_M row panels
# of x (128 x K) and 132 / GROUP_M weight panels (256 x K). At the GPU's power limit, where a GEMM this size
# runs (timed the long way, do_bench_cudagraph: 690 W, 1.5 GHz), fewer DRAM bytes are a faster clock: H200,
# scripts/sustained_probe.py --group-m 8,16,32,64 at 3075ca4, 0.834 / 0.821-0.827 / 0.820-0.821 / 0.868 ms
# (64: every row tile in one group, x read again every wave). At M <= 4096 (32 row tiles or fewer) a group is
# every row tile, whose waves read, by this count, about as many bytes as GROUP_M=8's (not timed there).
GATED_GROUP_M = 32


GATED_HALF = 128  # output columns per tile of the dual GEMM (rows of wg, then as many of wu)
# one 128x256 GEMM tile per 128 output columns: the shape that matched cuBLAS for plain GEMMs on the
# H200 (scripts/explore_gpu.py), where the two-accumulator kernel reached 547 TFLOP/s against 667
# the first _TMA_GATED_TIMED are timed (kernels.common.tuned): at Llama-1B's MLP (M=8192, K=2048, N=8192)
# BK=128 and OCC=2 were 34% and 46% slower than the fastest
_TMA_GATED_ALL = [_gated_tma_cfg(128, 64, 3, 8), _gated_tma_cfg(128, 64, 4, 8), _gated_tma_cfg(64, 64, 4, 4),
                  _gated_tma_cfg(128, 128, 2, 8),
                  _gated_tma_cfg(64, 64, 2, 4, occ=2)]  # 98 KB, 165 registers: two fit an SM
_TMA_GATED_TIMED = 3
_TMA_GATED_CONFIGS = (tuned(_TMA_GATED_ALL, _TMA_GATED_TIMED) if config.autotune_enabled()
                      else [_gated_tma_cfg(128, 64, 3, 8)])


# --- epilogue helpers ---------------------------------------------------------------------------------


@triton.jit
def _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    # grouped ordering: tiles that run together share rows of x in L2
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = tile_id // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((tile_id % num_pid_in_group) % group_size_m)
    pid_n = (tile_id % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    return _tile_coords(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)


# --- kernels ------------------------------------------------------------------------------------------


@triton.autotune(configs=_GEMM_CONFIGS, key=["M_BUCKET", "N", "K", "ACT", "HAS_BIAS"], **_AUTOTUNE_KW)
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit
def _linear_act_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, pre_ptr,
    M, N, K, M_BUCKET,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, STORE_PRE: tl.constexpr, PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr, RTNE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    # x: [M, K], w: [N, K] (a Linear's weight), out: [M, N]
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # wrap rows/cols so loads of the ragged edge stay in bounds without masks; the store is masked
    offs_am = offs_m % M
    offs_bn = offs_n % N
    x_ptrs = x_ptr + offs_am[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + offs_bn[None, :] * stride_wn + offs_k[:, None] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(x_ptrs)
            b = tl.load(w_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(x_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if DOT_UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    out_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    out_offs = offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    if STORE_PRE:
        # training: the backward of the activation needs its input (same layout as out)
        tl.store(pre_ptr + out_offs, cast_out(acc, pre_ptr.dtype.element_ty, RTNE_BF16), mask=out_mask)
    acc = _apply_act(acc, ACT)
    tl.store(out_ptr + out_offs, cast_out(acc, out_ptr.dtype.element_ty, RTNE_BF16), mask=out_mask)


@triton.autotune(configs=_GATED_CONFIGS, key=["M_BUCKET", "N", "K", "ACT", "HAS_BIAS"], **_AUTOTUNE_KW)
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit
def _gated_mlp_kernel(
    x_ptr, wg_ptr, wu_ptr, bg_ptr, bu_ptr, out_ptr,
    M, N, K, M_BUCKET,
    stride_xm, stride_xk, stride_wgn, stride_wgk, stride_wun, stride_wuk, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr, RTNE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    # out = act(x @ wg.T + bg) * (x @ wu.T + bu); x: [M, K], wg, wu: [N, K]
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_am = offs_m % M
    offs_bn = offs_n % N
    x_ptrs = x_ptr + offs_am[:, None] * stride_xm + offs_k[None, :] * stride_xk
    wg_ptrs = wg_ptr + offs_bn[None, :] * stride_wgn + offs_k[:, None] * stride_wgk
    wu_ptrs = wu_ptr + offs_bn[None, :] * stride_wun + offs_k[:, None] * stride_wuk
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(x_ptrs)
            bg = tl.load(wg_ptrs)
            bu = tl.load(wu_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(x_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            bg = tl.load(wg_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
            bu = tl.load(wu_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if DOT_UPCAST:
            a, bg, bu = a.to(tl.float32), bg.to(tl.float32), bu.to(tl.float32)
        acc_g = tl.dot(a, bg, acc_g, input_precision=PRECISION)
        acc_u = tl.dot(a, bu, acc_u, input_precision=PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        wg_ptrs += BLOCK_K * stride_wgk
        wu_ptrs += BLOCK_K * stride_wuk
    if HAS_BIAS:
        n_mask = offs_n < N
        acc_g += tl.load(bg_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        acc_u += tl.load(bu_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    acc = _apply_act(acc_g, ACT) * acc_u
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, cast_out(acc, out_ptr.dtype.element_ty, RTNE_BF16), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


# Hopper: persistent kernels fed by the TMA engine. One program per SM walks the output tiles; TMA loads
# zero-fill and TMA stores clip the ragged edges, so there are no masks in the main loop.


@triton.jit
def _halves(acc, BLOCK_N: tl.constexpr):
    """[BM, BLOCK_N] -> its column halves [BM, BLOCK_N / 2]: (columns 0.., columns BLOCK_N / 2..)."""
    return tl.split(tl.permute(tl.reshape(acc, (acc.shape[0], 2, BLOCK_N // 2)), (0, 2, 1)))


@triton.jit
def _bias_act_store(acc, b_ptr, out_desc, pre_desc, offs_m, offs_n, N,
                    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, STORE_PRE: tl.constexpr, BLOCK_N: tl.constexpr,
                    SUBTILE: tl.constexpr):
    if SUBTILE:
        # two [BM, BN/2] halves, each finished and stored in turn
        lo, hi = _halves(acc, BLOCK_N)
        _finish_store(lo, b_ptr, out_desc, pre_desc, offs_m, offs_n, N, HAS_BIAS, ACT, STORE_PRE, BLOCK_N // 2)
        _finish_store(hi, b_ptr, out_desc, pre_desc, offs_m, offs_n + BLOCK_N // 2, N, HAS_BIAS, ACT, STORE_PRE,
                      BLOCK_N // 2)
    else:
        _finish_store(acc, b_ptr, out_desc, pre_desc, offs_m, offs_n, N, HAS_BIAS, ACT, STORE_PRE, BLOCK_N)


@triton.jit
def _finish_store(acc, b_ptr, out_desc, pre_desc, offs_m, offs_n, N,
                  HAS_BIAS: tl.constexpr, ACT: tl.constexpr, STORE_PRE: tl.constexpr, BLOCK_N: tl.constexpr):
    # bias, the pre-activation (training), the activation, then the TMA store of this [BM, BLOCK_N] tile
    if HAS_BIAS:
        cols = offs_n + tl.arange(0, BLOCK_N)
        acc += tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    if STORE_PRE:
        pre_desc.store([offs_m, offs_n], acc.to(pre_desc.dtype))
    acc = _apply_act(acc, ACT)
    out_desc.store([offs_m, offs_n], acc.to(out_desc.dtype))


@triton.jit
def _tma_tile_dot(x_desc, w_desc, offs_m, offs_n, k_tiles, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    """The fp32 [BLOCK_M, BLOCK_N] tile at (offs_m, offs_n) of x @ w.T, both operands loaded by TMA."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for ki in range(k_tiles):
        a = x_desc.load([offs_m, ki * BLOCK_K])
        b = w_desc.load([offs_n, ki * BLOCK_K])
        acc = tl.dot(a, b.T, acc)
    return acc


@triton.autotune(configs=_TMA_CONFIGS, key=["M_BUCKET", "N", "K", "ACT", "HAS_BIAS", "STORE_PRE"], **_AUTOTUNE_KW)
@triton.jit
def _linear_act_tma_kernel(
    x_desc, w_desc, b_ptr, out_desc, pre_desc, M, N, K, M_BUCKET,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, STORE_PRE: tl.constexpr, NUM_SMS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SUBTILE: tl.constexpr = False, OCC: tl.constexpr = 1,
):
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    for tile_id in tl.range(tl.program_id(0), num_tiles, NUM_SMS * OCC, flatten=True):
        pid_m, pid_n = _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        offs_m = pid_m * BLOCK_M
        offs_n = pid_n * BLOCK_N
        acc = _tma_tile_dot(x_desc, w_desc, offs_m, offs_n, k_tiles, BLOCK_M, BLOCK_N, BLOCK_K)
        _bias_act_store(acc, b_ptr, out_desc, pre_desc, offs_m, offs_n, N, HAS_BIAS, ACT, STORE_PRE, BLOCK_N,
                        SUBTILE)


@triton.autotune(configs=_TMA_GATED_CONFIGS, key=["M_BUCKET", "N", "K", "ACT", "HAS_BIAS"], **_AUTOTUNE_KW)
@triton.jit
def _gated_mlp_tma_kernel(
    x_desc, w_desc, bg_ptr, bu_ptr, out_desc, M, N, K, M_BUCKET,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, NUM_SMS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PAIR: tl.constexpr = False, UP_FIRST: tl.constexpr = False, OCC: tl.constexpr = 1,
):
    # One [BM, BN] tile of a single GEMM holds both projections of BN / 2 output columns: one tl.dot per K
    # step, as in a plain GEMM, instead of two half-width ones. The weight tile is [wg rows; wu rows]:
    # PAIR: w_desc is a 3-D view [2, N, K] of the two weights where they lie (see _pair_desc; UP_FIRST when
    # wu lies below wg in memory), one TMA box of [2, BN / 2, BK] a step. Otherwise w_desc is a copy
    # interleaved in blocks of BN / 2 rows ([wg_0; wu_0; wg_1; wu_1; ...], see _interleave).
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N // 2)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    for tile_id in tl.range(tl.program_id(0), num_tiles, NUM_SMS * OCC, flatten=True):
        pid_m, pid_n = _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        offs_m = pid_m * BLOCK_M
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            a = x_desc.load([offs_m, ki * BLOCK_K])
            if PAIR:
                b = w_desc.load([0, pid_n * (BLOCK_N // 2), ki * BLOCK_K]).reshape(BLOCK_N, BLOCK_K)
            else:
                b = w_desc.load([pid_n * BLOCK_N, ki * BLOCK_K])
            acc = tl.dot(a, b.T, acc)
        # [BM, BN] -> the gate half and the up half, each [BM, BN / 2]
        acc_g, acc_u = _halves(acc, BLOCK_N)
        if UP_FIRST:
            acc_g, acc_u = acc_u, acc_g
        offs_n = pid_n * (BLOCK_N // 2)
        if HAS_BIAS:
            cols = offs_n + tl.arange(0, BLOCK_N // 2)
            acc_g += tl.load(bg_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
            acc_u += tl.load(bu_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        out = _apply_act(acc_g, ACT) * acc_u
        out_desc.store([offs_m, offs_n], out.to(out_desc.dtype))


# --- launchers ----------------------------------------------------------------------------------------


def _tma_aligned(*ts: torch.Tensor) -> bool:
    """TMA descriptors need fp16/bf16 here, a unit last stride and 16-byte aligned rows and bases."""
    if TensorDescriptor is None or ts[0].dtype not in (torch.float16, torch.bfloat16):
        return False
    return all(t.stride(1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0
               for t in ts)


def _tma_ok(*ts: torch.Tensor) -> bool:
    """The TMA kernels serve Hopper GPUs (the tests also run them under the CPU interpreter)."""
    t0 = ts[0]
    if registry.interpret_mode() or t0.device.type != "cuda" or inline.active():
        return False  # inlined calls run the pointer kernels (see _inline_when)
    return _hopper(t0.device) and _tma_aligned(*ts)


# A site's GEMM is inlined into Inductor's code as the pointer kernel (no host cost per call, which small
# layers pay in full) up to this many rows, or up to this much work: an op call costs ~50 us of host time
# on the H100/H200 hosts (minilm-l6's 448x384x1536 GEMM measured 0.049 ms called as the TMA op against
# 0.014 ms for cuBLAS + epilogue), about what 2^35 FLOP take on the GPU. Above both, on Hopper, the
# persistent TMA kernel's throughput is worth an op call.
INLINE_MAX_M = 256
INLINE_MAX_FLOP = 2**35


def _inline_when(x, *ws_and_rest) -> Optional[str]:
    """None when a call with these operands is inlined; else why it stays an op call."""
    ws = [t for t in ws_and_rest if isinstance(t, torch.Tensor) and t.dim() == 2]
    if any(isinstance(s, torch.SymInt) for t in (x, *ws) for s in (*t.shape, *t.stride())):
        return "symbolic shapes"  # as the inline pass says (deciding on them would add guards to the graph)
    if x.shape[0] <= INLINE_MAX_M or not _hopper(x.device) or TensorDescriptor is None:
        return None
    if x.dtype not in (torch.float16, torch.bfloat16):
        return None
    flop = 2 * x.shape[0] * x.shape[1] * sum(w.shape[0] for w in ws)
    if flop < INLINE_MAX_FLOP:
        return None
    if all(t.stride(1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0 for t in (x, *ws)):
        return f"M={x.shape[0]} > {INLINE_MAX_M}, {flop / 1e9:.0f} GFLOP on Hopper: the TMA kernel, called as an op"
    return None


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    # cached: these run on every call of the op, where host time is what small layers pay
    if device.type != "cuda":
        return 3  # the interpreter (tests): a few persistent programs, each walking several tiles
    return torch.cuda.get_device_properties(device).multi_processor_count


def _persistent_grid(M: int, N: int, sms: int):
    # OCC (a config's, default 1) persistent programs per SM, each walking tiles OCC * NUM_SMS apart
    def grid(meta):
        return (min(sms * meta.get("OCC", 1), cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"])),)

    return grid


def _desc(t: torch.Tensor):
    return host_desc(t, [16, 16])  # block shape set per config


def unsupported(x: torch.Tensor, *weights: Optional[torch.Tensor], act: str, gated: bool = False) -> Optional[str]:
    """Why the kernels cannot serve these operands, or None. ``weights`` are [N, K] (biases may be None)."""
    acts = GATED_ACTIVATIONS if gated else ACTIVATIONS
    if act not in acts:
        return f"activation {act!r} not supported (supported: {', '.join(acts)})"
    if x.dim() != 2:
        return f"x must be 2-D, got {x.dim()}-D"
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} not supported"
    for t in weights:
        if t is None:
            continue
        if t.dtype != x.dtype:
            return f"mixed dtypes {x.dtype} and {t.dtype}"
        if t.device != x.device:
            return "operands on different devices"
    reason = registry.device_unsupported(x.device)
    if reason:
        return reason
    return None


def _precision(dtype: torch.dtype) -> dict:
    # follow PyTorch: fp32 matmuls are exact fp32 unless the user allowed TF32
    ieee = dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest"
    upcast = dot_upcast(dtype)
    return {"PRECISION": "ieee" if ieee or upcast else "tf32", "DOT_UPCAST": upcast, "RTNE_BF16": rtne_bf16(dtype)}


def _grid(M: int, N: int):
    def grid(meta):
        return (cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]),)

    return grid


def _linear_act_fake(x, w, b, act):
    return x.new_empty((x.shape[0], w.shape[0]))


@registry.kernel_op("tritonfuse::linear_act", fake=_linear_act_fake, inline=_inline_when)
def linear_act(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], act: str) -> torch.Tensor:
    """``act(x @ w.T + b)`` in one Triton GEMM.

    Args:
        x: [M, K] activations (any strides), fp16, bf16 or fp32.
        w: [N, K] weight of a Linear, same dtype.
        b: [N] bias or None.
        act: one of ``none``, ``relu``, ``gelu``, ``gelu_tanh``, ``silu``, ``quick_gelu`` (``x * sigmoid(1.702 x)``).

    Example::

        >>> x, w, b = torch.randn(37, 100), torch.randn(77, 100), torch.randn(77)
        >>> y = torch.ops.tritonfuse.linear_act(x, w, b, "gelu")  # TRITON_INTERPRET=1 on a CPU
    """
    return _launch_linear(x, w, b, act, store_pre=False)[0]


def _launch_linear(x, w, b, act, store_pre: bool, fixed: Optional[dict] = None, tma: bool = True):
    """Launch the TMA kernel where it applies, else the pointer kernel; ``fixed`` (a config's kwargs,
    num_warps and num_stages) skips autotuning, as the probe does."""
    M, K = x.shape
    N = w.shape[0]
    out = torch.empty((M, N), device=x.device, dtype=x.dtype)
    pre = torch.empty((M, N), device=x.device, dtype=x.dtype) if store_pre else out
    if M == 0 or N == 0:
        return out, pre
    if K > 0 and tma and _tma_ok(x, w, out):
        sms = _num_sms(x.device)
        args = dict(x_desc=_desc(x), w_desc=_desc(w), out_desc=_desc(out), pre_desc=_desc(pre))
        if fixed:
            _set_tma_blocks({**args, **fixed})
            kernel = _linear_act_tma_kernel.fn
        else:
            kernel = registry.launcher(_linear_act_tma_kernel)
        kernel[_persistent_grid(M, N, sms)](
            args["x_desc"], args["w_desc"], b if b is not None else w, args["out_desc"], args["pre_desc"],
            M, N, K, _m_bucket(M), HAS_BIAS=b is not None, ACT=act, STORE_PRE=store_pre, NUM_SMS=sms,
            **(fixed or {}),
        )
        return out, pre
    kernel = _linear_act_kernel.fn if fixed else registry.launcher(_linear_act_kernel)
    # an absent operand's stand-in is an input, never ``out`` (traced for inlining, each name of the written
    # output became a buffer of its own, filled before the launch: kernels/conv_bn.py _epilogue_args)
    kernel[_grid(M, N)](
        x, w, b if b is not None else w, out, pre if store_pre else w,
        M, N, K, _m_bucket(M),
        x.stride(0), x.stride(1), w.stride(0), w.stride(1), out.stride(0), out.stride(1),
        HAS_BIAS=b is not None, ACT=act, STORE_PRE=store_pre, **_precision(x.dtype), **(fixed or {}),
    )
    return out, pre


def _linear_act_pre_fake(x, w, b, act):
    return x.new_empty((x.shape[0], w.shape[0])), x.new_empty((x.shape[0], w.shape[0]))


@registry.kernel_op("tritonfuse::linear_act_pre", fake=_linear_act_pre_fake, inline=_inline_when)
def linear_act_pre(
    x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], act: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training form of ``linear_act``: returns ``(x @ w.T + b, act(x @ w.T + b))``; the first is what
    the activation's backward reads."""
    out, pre = _launch_linear(x, w, b, act, store_pre=True)
    return pre, out


def _gated_mlp_fake(x, wg, wu, bg, bu, act):
    return x.new_empty((x.shape[0], wg.shape[0]))


@registry.kernel_op("tritonfuse::gated_mlp", fake=_gated_mlp_fake, inline=_inline_when)
def gated_mlp(
    x: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, bg: Optional[torch.Tensor], bu: Optional[torch.Tensor],
    act: str,
) -> torch.Tensor:
    """``act(x @ wg.T + bg) * (x @ wu.T + bu)`` (SwiGLU with ``silu``, GeGLU with ``gelu``) in one dual GEMM.

    Args:
        x: [M, K] activations; wg, wu: [N, K] gate and up weights; bg, bu: [N] biases or both None.
        act: ``silu``, ``gelu`` or ``gelu_tanh``.

    Example::

        >>> x, wg, wu = torch.randn(37, 100), torch.randn(77, 100), torch.randn(77, 100)
        >>> y = torch.ops.tritonfuse.gated_mlp(x, wg, wu, None, None, "silu")
    """
    return _launch_gated(x, wg, wu, bg, bu, act)


def _launch_gated(x, wg, wu, bg, bu, act, fixed: Optional[dict] = None, tma: bool = True):
    M, K = x.shape
    N = wg.shape[0]
    out = torch.empty((M, N), device=x.device, dtype=x.dtype)
    if M == 0 or N == 0:
        return out
    has_bias = bg is not None
    if K > 0 and tma and _tma_ok(x, wg, wu, out):
        sms = _num_sms(x.device)
        pair = _pair_desc(wg, wu) if PAIR_WEIGHTS else None
        if pair is not None:
            w_desc, up_first = pair
        else:
            w_desc, up_first = _desc(_interleave(wg, wu, fixed["BLOCK_N"] // 2 if fixed else GATED_HALF)), False
        args = dict(x_desc=_desc(x), w_desc=w_desc, out_desc=_desc(out))
        if fixed:
            _set_gated_blocks({**args, **fixed})
            kernel = _gated_mlp_tma_kernel.fn
        else:
            kernel = registry.launcher(_gated_mlp_tma_kernel)
        kernel[_persistent_grid(M, 2 * N, sms)](  # one program per SM, at most one per tile
            args["x_desc"], args["w_desc"], bg if has_bias else wg, bu if has_bias else wu,
            args["out_desc"], M, N, K, _m_bucket(M), HAS_BIAS=has_bias, ACT=_gated_act(act, x), NUM_SMS=sms,
            PAIR=pair is not None, UP_FIRST=up_first, **(fixed or {}),
        )
        return out
    kernel = _gated_mlp_kernel.fn if fixed else registry.launcher(_gated_mlp_kernel)
    kernel[_grid(M, N)](
        x, wg, wu, bg if has_bias else wg, bu if has_bias else wu, out,
        M, N, K, _m_bucket(M),
        x.stride(0), x.stride(1), wg.stride(0), wg.stride(1), wu.stride(0), wu.stride(1),
        out.stride(0), out.stride(1),
        HAS_BIAS=has_bias, ACT=act, **_precision(x.dtype), **(fixed or {}),
    )
    return out


PAIR_WEIGHTS = True  # the TMA dual GEMM reads wg and wu where they lie (False: an interleaved copy per call)

# The dual GEMM's SiLU as h + h tanh(h), h = x / 2, with the GPU's approximate tanh (kernels.common's
# "silu_tanh"): one special-function instruction an element where x sigmoid(x) takes two (ex2 and rcp). The
# epilogue runs while the tensor cores wait (no warp specialization here): at issue 2's 8192x2048x8192 a
# 128x128 tile's 16384 SiLUs are about 2048 cycles of the SM's 16 special-function results a cycle, some 4%
# of the tile's time at 668 TFLOP/s. bf16 outputs only, where tanh's 2^-11 relative error stays below
# bf16's rounding. Timed in the 37th session (H200, 8192x2048x8192 bf16, scripts/gated_config_probe.py
# --fast-silu): the shipped 128x256 config 0.787 against 0.830 ms, every config faster (1-5%).
FAST_SILU = True


def _gated_act(act: str, x: torch.Tensor) -> str:
    """The ACT constexpr the TMA dual GEMM is launched with for ``act``."""
    if FAST_SILU and act == "silu" and x.dtype == torch.bfloat16 and fast_tanh_ok(x.device):
        return "silu_tanh"
    return act


def _pair_desc(wg: torch.Tensor, wu: torch.Tensor):
    """A TMA descriptor of the 3-D view [2, N, K] that puts the two weights side by side without a copy:
    based at the lower of the two, its outer stride is the distance to the other (a TMA box reads only the
    rows it names, never the bytes between the weights). Returns (descriptor, wu first), or None where the
    distance is not a positive multiple of 16 bytes or the row strides differ (then the weights are copied).
    """
    if wg.shape != wu.shape or wg.stride() != wu.stride() or wg.dtype != wu.dtype:
        return None
    es = wg.element_size()
    dist = wu.data_ptr() - wg.data_ptr()
    up_first = dist < 0
    base = wu if up_first else wg
    dist = abs(dist)
    if dist == 0 or dist % 16 or dist >= 2**40:
        return None
    d = host_desc(base, [16, 16])
    d.block_shape = [2, 16, 16]  # set per config
    d.shape = [2, *base.shape]
    d.strides = [dist // es, *base.stride()]
    return d, up_first


def _interleave(wg: torch.Tensor, wu: torch.Tensor, half: int) -> torch.Tensor:
    """[wg_0; wu_0; wg_1; wu_1; ...] in blocks of ``half`` rows, zero rows padding N up to a block: the weight
    of the dual GEMM where the two weights cannot be viewed as one (see _pair_desc). A copy per call (both
    weights read and written once, 3-4% of the GEMM's time at Llama's MLP shapes), so nothing is cached and
    an updated weight is always read afresh."""
    n, k = wg.shape
    blocks = cdiv(n, half)
    if blocks * half != n:
        pad = (0, 0, 0, blocks * half - n)
        wg, wu = torch.nn.functional.pad(wg, pad), torch.nn.functional.pad(wu, pad)
    return torch.stack((wg.reshape(blocks, half, k), wu.reshape(blocks, half, k)), dim=1).reshape(2 * blocks * half, k)


# --- references ---------------------------------------------------------------------------------------


def act_ref(y: torch.Tensor, act: str) -> torch.Tensor:
    if act == "none":
        return y
    if act == "relu":
        return torch.relu(y)
    if act == "gelu":
        return torch.nn.functional.gelu(y)
    if act == "gelu_tanh":
        return torch.nn.functional.gelu(y, approximate="tanh")
    if act == "silu":
        return torch.nn.functional.silu(y)
    if act == "quick_gelu":
        return y * torch.sigmoid(1.702 * y)
    raise ValueError(f"unknown activation {act!r}")


def linear_act_ref(x, w, b, act, upcast: bool = False) -> torch.Tensor:
    """PyTorch's own ``act(linear(x, w, b))``; in fp64 on the CPU with ``upcast=True``."""
    if upcast:
        x, w = x.double().cpu(), w.double().cpu()
        b = b.double().cpu() if b is not None else None
    return act_ref(torch.nn.functional.linear(x, w, b), act)


def gated_mlp_ref(x, wg, wu, bg, bu, act, upcast: bool = False) -> torch.Tensor:
    if upcast:
        x, wg, wu = x.double().cpu(), wg.double().cpu(), wu.double().cpu()
        bg = bg.double().cpu() if bg is not None else None
        bu = bu.double().cpu() if bu is not None else None
    return act_ref(torch.nn.functional.linear(x, wg, bg), act) * torch.nn.functional.linear(x, wu, bu)


def _fused_quant(M, mode: str) -> bool:
    from tritonfuse.kernels import int8 as I8
    return I8.fused_quant(M, mode)


def measure_siblings(x, ws: list, bs: list, copies: list) -> dict:
    """On a GPU, time one cuBLAS GEMM over sibling Linears' weights stacked, the weights (and biases)
    concatenated on every call as the graph does, plus a contiguous copy of the columns of each sibling
    ``copies`` marks, against their GEMMs apart, at the shapes of example values ``x`` [M, K], ``ws`` [N_i, K]
    and ``bs`` ([N_i] or None, all or none); ``registry.measured_choice``'s record, cached per shape.
    Elsewhere nothing is timed (``use`` True)."""
    M, K = x.shape
    key = (f"float_siblings|M{M}xK{K}xN{'+'.join(str(w.shape[0]) + '*' * c for w, c in zip(ws, copies))}"
           f"|{x.dtype}|bias{int(bs[0] is not None)}")
    if not registry.timing_enabled(x.device):
        return {"use": True}
    g = torch.Generator(device=x.device).manual_seed(0)

    def draw(*shape):
        return torch.randn(shape, device=x.device, dtype=x.dtype, generator=g)

    xr, wr = draw(M, K), [draw(*w.shape) * K ** -0.5 for w in ws]
    br = [draw(*b.shape) if b is not None else None for b in bs]

    def gemm(w, b):
        return torch.addmm(b, xr, w.t()) if b is not None else xr @ w.t()

    cols = [(sum(w.shape[0] for w in ws[:i]), w.shape[0]) for i, (w, c) in enumerate(zip(ws, copies)) if c]

    def stacked():
        out = gemm(torch.cat(wr), torch.cat(br) if br[0] is not None else None)
        return out, [out[:, i:i + n].contiguous() for i, n in cols]

    return registry.measured_choice(key, x.device, stacked, [functools.partial(gemm, w, b) for w, b in zip(wr, br)],
                                    graphed=True)


def measure(x, ws, b, act: str, gated: bool, store_pre: bool, int8_mode: Optional[str] = None,
            int8_inlined: bool = False, int8_fused: bool = True, quant_share: float = 1.0) -> dict:
    """On a GPU, time this kernel (or, with ``int8_mode``, the int8 one) against what it replaces: cuBLAS
    GEMMs plus one pointwise pass of the epilogue's bytes computing the site's activation, as Inductor's
    fused epilogue kernel does, at the site's shapes; cached per shape. ``int8_inlined``: the int8 site's
    weights become graph constants and its GEMM is inlined into Inductor's code (``kernels.int8.int8_mm``):
    timed as GPU time, as the pointer kernel on weights quantized ahead. ``int8_fused=False``: the site quantizes x in its own op
    (a dynamic graph's site, whose W8A8 / weight-only split is made per call), not in x's producer. Rows
    the producer quantizes are not free: its kernel does a row reduction and writes them, charged as the
    row kernel's GPU time times ``quant_share`` (this site's share of the GEMMs that read them: Q, K and V
    share one LayerNorm's quantized output)."""
    M, K_ = x.shape
    fusedq = bool(int8_mode) and int8_fused and _fused_quant(M, int8_mode)
    N = ws[0].shape[0]
    key = (f"{'gated_mlp' if gated else 'linear_act'}|{act}|M{M}xK{K_}xN{N}|{x.dtype}"
           f"|bias{int(b is not None)}|pre{int(store_pre)}|{int8_mode or 'float'}"
           f"{'|fusedq' if fusedq else ''}|actpass")  # (actpass: Inductor's side runs the site's activation)

    def real(shape):
        return torch.randn(shape, device=x.device, dtype=x.dtype)

    lazy = {}
    # a site inlined into Inductor's code runs the pointer kernel, launched by Inductor: timed as GPU time
    op = torch.ops.tritonfuse.gated_mlp if gated else torch.ops.tritonfuse.linear_act
    inlined = (not int8_mode and not store_pre and inline.will_inline(op.default, x.device)
               and _inline_when(x, *ws) is None)
    if inlined:
        key += "|pointer"
    elif int8_inlined:  # the device-descriptor TMA kernel on Hopper, else the pointer kernel
        from tritonfuse.kernels import int8 as I8

        key += "|inlined" if I8.INLINE_DEVICE_TMA else "|inlined|pointer"

    shared = None
    if fusedq:
        from tritonfuse.kernels import int8 as I8

        key += f"|quant{quant_share:.3g}"
        shared = (lambda: I8.quant_rows(args()["x"]), quant_share)

    def args():
        if not lazy:
            lazy.update(x=real((M, K_)), w1=real((N, K_)), w2=real((N, K_)), y1=real((M, N)), y2=real((M, N)),
                        b=real((N,)) if b is not None else None)
        return lazy

    def ours():
        a = args()
        if int8_inlined:
            return _int8_inlined(a, act, gated, int8_mode, fused=fusedq)
        if fusedq:
            # the site quantizes x in the producer's kernel (fused by Inductor): the GEMM is what it adds
            if "xq" not in a:
                from tritonfuse.kernels import int8 as I8
                a["xq"], a["xs"] = I8.quant_rows(a["x"])
            if gated:
                return torch.ops.tritonfuse.int8_gated_mlp_prequant(a["xq"], a["xs"], a["w1"], a["w2"], a["b"],
                                                                    a["b"], act, x.dtype)
            return torch.ops.tritonfuse.int8_linear_prequant(a["xq"], a["xs"], a["w1"], a["b"], act, x.dtype)
        if int8_mode and gated:
            return torch.ops.tritonfuse.int8_gated_mlp(a["x"], a["w1"], a["w2"], a["b"], a["b"], act, int8_mode)
        if int8_mode:
            return torch.ops.tritonfuse.int8_linear(a["x"], a["w1"], a["b"], act, int8_mode)
        if gated:
            return _launch_gated(a["x"], a["w1"], a["w2"], a["b"], a["b"], act, tma=not inlined)
        return _launch_linear(a["x"], a["w1"], a["b"], act, store_pre, tma=not inlined)

    def gemm(w):
        a = args()
        return torch.addmm(a["b"], a["x"], a[w].t()) if a["b"] is not None else torch.mm(a["x"], a[w].t())

    if gated:  # two GEMMs, then Inductor's act(g) * u reads both and writes one
        theirs = [lambda: gemm("w1"), lambda: gemm("w2"), lambda: torch.mul(args()["y1"], args()["y2"])]
    elif act == "none":  # cuBLAS's addmm fuses the bias: no epilogue pass
        theirs = [lambda: gemm("w1")]
    else:  # one GEMM, then Inductor's activation kernel reads and writes the output once
        theirs = [lambda: gemm("w1"), lambda: _ACT_PASS[act](args()["y1"])]
    return registry.measured_choice(key, x.device, ours, theirs, graphed=inlined or int8_inlined, shared=shared)


# --- cuBLASLt's fused epilogue -------------------------------------------------------------------------------
# torch._addmm_activation runs cuBLASLt's GEMM with the bias and a ReLU or GELU applied to the fp32
# accumulator in its epilogue: one kernel, as fast as cuBLAS's plain GEMM where the Triton kernel is not. On
# the H200 (scripts/gelu_lt_probe.py, 31st session), GPU time at BERT's MLP 16384x768x3072 fp16: 0.131 ms
# against 0.165 for the Triton TMA kernel and 0.205 for cuBLAS + a GELU pass (cuBLAS's GEMM alone 0.118); at
# ViT-B/16's 12608 rows 0.107, 0.140 and 0.161. Its GELU is the tanh approximation (PyTorch's fallback for
# this op applies gelu(approximate="tanh") too): against an fp64 erf GELU its error was 2.9e-4 in fp16 and
# 1.7e-3 in bf16, eager's own (the GEMM rounded to the dtype, then an exact GELU) 3.2e-4 and 2.6e-3. An exact
# GELU in fp32 is not served by it.
LT_ACTS = {"relu": False, "gelu_tanh": True, "gelu": True}  # activation -> _addmm_activation's use_gelu
# None: a site takes cuBLASLt's epilogue where it measured fastest (on a GPU); "cublaslt": every site it can
# serve takes it, untimed (the CPU tests' way to run the rewrite)
LT_CHOICE: Optional[str] = None


def lt_unsupported(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], act: str) -> Optional[str]:
    """Why cuBLASLt's fused epilogue cannot serve ``act(x @ w.T + b)`` (x: [M, K], w: [N, K]), or None."""
    if not config.cublaslt_enabled():
        return "TRITONFUSE_CUBLASLT=0"
    if act not in LT_ACTS:
        return f"cuBLASLt has no {act} epilogue"
    if b is None:
        return "no bias (torch._addmm_activation's fused path takes one)"
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {x.dtype}"
    if act != "relu" and x.device.type != "cuda":
        return "a GELU epilogue on a GPU only (on the CPU this op computes an exact GELU, on CUDA the tanh one)"
    if act == "gelu" and x.dtype == torch.float32:
        return "an exact GELU in fp32: cuBLASLt's GELU is the tanh approximation"
    if x.dim() != 2 or w.dim() != 2 or b.dim() != 1 or x.stride(-1) != 1 or not b.is_contiguous():
        return "layout"
    if LT_CHOICE != "cublaslt" and not registry.timing_enabled(x.device):
        return "only where it is timed (a GPU with TRITONFUSE_MEASURE on)"
    return None


def linear_lt(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, act: str) -> torch.Tensor:
    """``act(x @ w.T + b)`` by cuBLASLt's fused epilogue (``act`` in ``LT_ACTS``; GELU: tanh approximation)."""
    return torch.ops.aten._addmm_activation.default(b, x, w.t(), use_gelu=LT_ACTS[act])


def measure_lt(x, w, b, act: str) -> dict:
    """On a GPU, time cuBLASLt's fused epilogue (``linear_lt``) against what Inductor runs for the site
    (cuBLAS's GEMM and a pass of the activation), as ``measure`` times the Triton kernel; kept per shape.
    With ``LT_CHOICE`` set, nothing is timed."""
    if LT_CHOICE == "cublaslt":
        return {"use": True, "forced": True}
    if registry.in_survey():  # (registry.surveying) nothing of ours to compile ahead
        return {"use": False, "unmeasured": True, "surveyed": True}
    M, K_ = x.shape
    N = w.shape[0]
    key = f"linear_lt|{act}|M{M}xK{K_}xN{N}|{x.dtype}|actpass"
    lazy = {}

    def args():
        if not lazy:
            lazy.update({k: torch.randn(s, device=x.device, dtype=x.dtype)
                         for k, s in (("x", (M, K_)), ("w", (N, K_)), ("b", (N,)), ("y", (M, N)))})
        return lazy

    def cublaslt():
        a = args()
        return linear_lt(a["x"], a["w"], a["b"], act)

    def gemm():
        a = args()
        return torch.addmm(a["b"], a["x"], a["w"].t())

    theirs = [gemm, lambda: _ACT_PASS[act](args()["y"])]
    return registry.measured_choice(key, x.device, cublaslt, theirs)

# Inductor's activation pass as one eager kernel of the same arithmetic: erf's GELU is not a free memory
# pass (on the H200 at 16384x3072 fp16, bench_linear_act.py: eager's GELU pass 0.072 ms and Inductor's 0.076,
# against 0.033 for a ReLU pass, which these timings used before). quick_gelu's x * sigmoid(1.702 x), which
# Inductor fuses into one kernel, is timed as the sigmoid pass.
_ACT_PASS = {
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,
    "gelu_tanh": functools.partial(torch.nn.functional.gelu, approximate="tanh"),
    "silu": torch.nn.functional.silu,
    "quick_gelu": torch.sigmoid,
}


def _int8_inlined(a: dict, act: str, gated: bool, mode: str, fused: bool = True):
    """What an inlined int8 site runs: on weights quantized ahead, the device-descriptor TMA kernel on
    Hopper (else the pointer kernel), W8A8 on rows its producer quantized (``fused``) or that the inlined
    row kernel quantizes in the timed call."""
    from tritonfuse.kernels import int8 as I8

    weight_only = I8.uses_weight_only(a["x"].shape[0], mode)
    if "wq1" not in a:
        group = I8.layer_group([a["w1"], a["w2"]] if gated else [a["w1"]], mode)
        a["wq1"], a["ws1"] = I8.quantize_weight(a["w1"], group)
        a["wq2"], a["ws2"] = I8.quantize_weight(a["w2"], group)
        a["xq"], a["xs"] = I8.quant_rows(a["x"])
    u = (a["wq2"], a["ws2"], a["b"]) if gated else (None, None, None)
    if weight_only:
        return I8._weight_only(a["x"], a["wq1"], a["ws1"], a["b"], act, *u)
    xq, xs = (a["xq"], a["xs"]) if fused else I8.quant_rows(a["x"])
    tma = "device" if I8.device_tma_serves(xq, a["wq1"], a["wq2"] if gated else None) else False
    return I8._w8a8(xq, xs, a["wq1"], a["ws1"], a["b"], act, a["x"].dtype, *u, use_tma=tma)


def probe(device: str, dtype: torch.dtype, act: str, has_bias: bool, gated: bool,
          store_pre: bool = False) -> Optional[str]:
    """Compile and launch one variant on a small input once (its tuner's first config, as
    ``registry.guarded_probe`` launches probes: in a first compile's survey its compile is sent to Inductor's
    workers, where a config of its own compiled in the survey's thread, 0.6 s of bert-base's on the H200);
    None when it works, else the reason. ``store_pre``: the variant that also stores the pre-activation (a
    training graph's). Its sizes are multiples of 16, as most sites' are: Triton then specialises the launch
    as it does a site's, and the probe's compile is one that site's tuning needs anyway (an inference probe
    with the pre-activation stored, sizes 19x40x24, was a compile of its own, the last of bert-base's first
    compile to finish on the H200, 36th session)."""

    def run():
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(32, 64, generator=g, device="cpu").to(device=device, dtype=dtype)
        w1 = torch.randn(48, 64, generator=g, device="cpu").to(device=device, dtype=dtype)
        w2 = torch.randn(48, 64, generator=g, device="cpu").to(device=device, dtype=dtype)
        b1 = torch.randn(48, generator=g, device="cpu").to(device=device, dtype=dtype) if has_bias else None
        b2 = torch.randn(48, generator=g, device="cpu").to(device=device, dtype=dtype) if has_bias else None
        if gated:
            y = _launch_gated(x, w1, w2, b1, b2, act)
            ref = gated_mlp_ref(x, w1, w2, b1, b2, act, upcast=True)
        else:
            y, pre = _launch_linear(x, w1, b1, act, store_pre)
            ref = linear_act_ref(x, w1, b1, act, upcast=True)
            if store_pre and not torch.allclose(pre.double().cpu(), linear_act_ref(x, w1, b1, "none", upcast=True),
                                                5e-2, 5e-2):
                raise RuntimeError("wrong pre-activation on the probe input")
        err = (y.double().cpu() - ref).norm() / ref.norm().clamp_min(1e-12)
        if not math.isfinite(err.item()) or err.item() > 5e-2:
            raise RuntimeError(f"wrong result on the probe input (relative error {err.item():.3g})")

    name = (f"{'gated_mlp' if gated else 'linear_act'}[{act},{'bias' if has_bias else 'nobias'},{dtype}"
            f"{',pre' if store_pre and not gated else ''}]")
    return registry.guarded_probe(f"{name}@{device}", run)
