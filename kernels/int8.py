"""int8 Linear + activation: W8A8 dynamic and weight-only GEMMs, plain and gated (``act(x@wg.T) * (x@wu.T)``).

* **W8A8** (``mode="int8"``): each row of x is quantized on the fly (absmax per token, a standalone row kernel,
  or a producer such as the norm kernel through ``int8_linear_prequant``); weights are quantized per output
  channel. ``tl.dot`` of int8 tiles accumulates in int32; the epilogue dequantizes (row scale x column
  scale), adds the bias and applies the activation while the value is still fp32. On Hopper the GEMM is a
  persistent kernel fed by TMA descriptors; elsewhere (and as fallback) a pointer-based tiled kernel.
* **Weight-only** (``mode="int8-weight"``): activations stay fp16/bf16; int8 weight tiles are converted to the
  activation dtype in the main loop (exact for int8). A layer's weights get one scale per output channel
  (applied in the epilogue) where that meets the 40 dB gate, else one per channel and group of 128 or 64
  values along K (``layer_group``), and the product of each K step with a group is scaled into the fp32
  accumulator. One scale per row spends int8's range on the row's largest value: on Gaussian weights a
  4096-wide Linear comes out at 41.1 dB, a SwiGLU layer (two projections' errors) at 38.1-38.4 dB; groups
  of 128 give 40.6-40.8, groups of 64 41.3-41.6 (clipping the range instead gains nothing on Gaussian
  data). Groups cost time: H200, weights cold, 16x4096x4096 9.1 us per channel, 9.9 in groups of 128, 10.7
  in groups of 64; the SwiGLU layer 8x8192x2048 12.1 / 16.4 / 19.6 us
  (``benchmarks/results/diagnostics/wonly-groups-nvidia-h200.jsonl``). In ``int8`` mode, M <= 16 (decode)
  takes this kernel automatically (per-token quantization costs more than it saves there), on the W8A8
  weights: one scale per channel, applied in the epilogue.
* **Decode** (weight-only at M <= 16, ``_decode_kernel``): the weight is the whole cost, so the kernel splits
  K across programs to stream it with the whole GPU (a 2048-column layer has 64 column tiles for 132 SMs).
  The last program of each column tile to finish adds the fp32 partials in split order and runs the
  epilogue, so the result is one launch and the same bits on every call.

Weights arrive as the float parameters (graph inputs under Dynamo). They are quantized lazily, on the first
call that sees them, into a cache keyed on ``(data_ptr, shape, stride, dtype, device)`` and validated by the
tensor's version counter: an in-place update (``w.add_()``, ``w.copy_()`` under ``no_grad``) is seen on the
next call and the weight is quantized again; the user's tensor is never written. An entry holds weak
references to the tensor whose version counter the weight shares (the base it views, or itself) and to the
storage it lives in (``_watch``); it is dropped when either is freed and serves only that tensor in that
storage. So a new tensor at a reused address never hits a stale entry, also where the old tensor lives on
in new memory (``model.double()`` after a compile keeps the Parameter objects and frees their old storage:
CI, 2026-12-05, served a freed weight's int8 copy to a new model's weight at its address). A weight read
through a view (GPT-2's transposed Conv1D weight, a fused [gate | up] projection's halves) reaches the op as
Inductor's ``reinterpret_tensor`` alias, which counts its own versions: it is cached against the version
counter of the Parameter whose storage it shares, which the backend notes (``note_weight_sources``; before,
such weights were quantized again on every call), and quantized on each call where none was noted.
Limits, by design of version counters and CUDA graphs: updates through ``w.data`` do not bump the version
and are not seen; under CUDA graphs (``mode="reduce-overhead"``) the replayed graph keeps the int8 weight of
its capture (cudagraph trees warm up eagerly first, so the quantization itself is never captured):
recompile after changing weights there.

The ops are opaque to Inductor (``registry.kernel_op``): their body reads data pointers and version counters
at run time, which tracing the body into the graph would freeze.
"""

from __future__ import annotations

import functools
import inspect
import math
import threading
import warnings
import weakref
from typing import Optional

import torch
import triton
import triton.language as tl

from tritonfuse import config, inline, launch, registry, tuning
from tritonfuse.kernels.common import (
    _apply_act, _m_bucket, capability, cast_out, cdiv, dot_upcast, fast_tanh_ok, host_desc, next_pow2, rtne_bf16,
    scratch_allocator,
)
from tritonfuse.kernels.linear_act import (
    _AUTOTUNE_KW, ACTIVATIONS, GATED_ACTIVATIONS, _cfg, _grid, _halves, _tile_coords, _tile_ids, act_ref,
)

try:  # host-side TMA descriptors (triton >= 3.3)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # older triton: the pointer kernels serve every shape
    TensorDescriptor = None

MODES = ("int8", "int8-weight")
X_DTYPES = (torch.float16, torch.bfloat16)
W_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DECODE_M = 16  # in "int8" mode, M <= DECODE_M uses the weight-only kernel
QMAX = 127.0  # symmetric: -127..127, so -x quantizes to -q
# int8-weight mode: a layer's weights get one scale per output channel where that keeps the layer at
# WONLY_MIN_DB on isotropic input, else one per channel and group of K values: the first of these group sizes
# that does (or the last). The weight-only gate is 40 dB; the margin covers estimating it from the weights
WONLY_GROUPS = (128, 64)
WONLY_MIN_DB = 40.75

# --- autotune configs ---------------------------------------------------------------------------------
# Keyed on power-of-two buckets of M and on N, K, so a new batch size inside a bucket does not re-tune.


def _tma_block_hook(nargs):
    # host descriptors are built before the config is chosen; set their box to the config's tile
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["x_desc"].block_shape = [bm, bk]
    nargs["w_desc"].block_shape = [bn, bk]
    nargs["wu_desc"].block_shape = [bn, bk]


def _tma_cfg(bm, bn, bk, stages, warps, persistent=True, flatten=True, group=8, subtile=False, ws=False):
    # subtile: the epilogue finishes and stores the tile's two column halves in turn (fewer live registers);
    # ws: warp-specialized (_ws_serves below; warps are then a consumer warpgroup's, the tile loop unflattened)
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group, "PERSISTENT": persistent,
         "FLATTEN": flatten and not ws, "SUBTILE": subtile, "WS": ws},
        num_stages=stages, num_warps=warps, pre_hook=_tma_block_hook,
    )


def _split_cfg(bn, bk, split, stages, warps):
    # the decode kernel: all M <= 16 rows in one 16-row tile; SPLIT_K programs share each column tile's K
    return triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split}, num_stages=stages, num_warps=warps)


if registry.interpret_mode():
    # the interpreter runs configs on the CPU: one small config keeps the tests fast (an uneven K split,
    # so the cross-program reduction and its ragged last split are exercised)
    _W8A8_CONFIGS = [_cfg(32, 32, 32, 1, 4)]
    _W8A8_TMA_CONFIGS = [_tma_cfg(32, 32, 32, 1, 4)]
    _WONLY_CONFIGS = [_cfg(16, 32, 32, 1, 4)]
    _DECODE_CONFIGS = [_split_cfg(32, 32, 3, 1, 4)]
elif not config.autotune_enabled():
    # TRITONFUSE_AUTOTUNE=0 (the GPU test suite): one config each (plus a small-M one), compiles fast
    _W8A8_CONFIGS = [_cfg(128, 128, 128, 3, 8)]
    _W8A8_TMA_CONFIGS = [_tma_cfg(128, 128, 128, 3, 8)]
    _WONLY_CONFIGS = [_cfg(16, 32, 256, 4, 4), _cfg(128, 128, 64, 3, 8)]
    _DECODE_CONFIGS = [_split_cfg(64, 256, 4, 4, 4)]
else:
    # int8 tl.dot -> wgmma on Hopper, mma.sync on Ampere; K tiles of 128 bytes per row
    _W8A8_CONFIGS = [
        _cfg(128, 256, 128, 3, 8),
        _cfg(256, 128, 128, 3, 8),
        _cfg(128, 128, 128, 4, 8),
        _cfg(64, 128, 128, 4, 4),
        _cfg(32, 64, 128, 4, 4),
    ]
    # Hopper: large tiles (int8 tl.dot -> wgmma), 3-4 TMA stages, persistent grid with grouped ordering
    _W8A8_TMA_CONFIGS = [
        _tma_cfg(128, 256, 128, 3, 8),
        _tma_cfg(256, 128, 128, 3, 8),
        _tma_cfg(128, 256, 64, 4, 8),
        _tma_cfg(128, 128, 128, 4, 8),
        _tma_cfg(128, 128, 128, 3, 8),
        _tma_cfg(64, 128, 128, 4, 4),
        _tma_cfg(128, 256, 128, 3, 8, persistent=False, flatten=False),
        # a GELU epilogue (BERT/ViT up-projections) is cheaper in halves: H200, .scratch-style probe at
        # 16384x768x3072, 162 us against 170 for the best whole-tile config
        _tma_cfg(256, 128, 128, 3, 8, subtile=True),
        _tma_cfg(128, 256, 128, 3, 8, subtile=True),
        # few row tiles (512x11008x4096: 0.0504 ms against 0.0546 for the next best, 36th session's
        # scripts/int8_gemm_probe.py on the H200; 1.05-1.09x slower than the best at 4096+ rows)
        _tma_cfg(128, 128, 256, 3, 8),
        # one 128x128 tile a program, one warpgroup: two or three programs share an SM, so one's epilogue
        # overlaps another's main loop. BERT's shapes (H200, scripts/int8_gemm_probe.py --dtype float16, 38th
        # session): 16384x3072x768 with bias 0.0888 ms against 0.0933 for the best persistent config (0.1006
        # against 0.1058 with the GELU epilogue), 16384x768x3072 0.0647 against 0.0689
        _tma_cfg(128, 128, 128, 3, 4, persistent=False, flatten=False),
    ]
    # warp-specialized configs (_tma_cfg(..., ws=True): a producer warpgroup and two consumers, each 64 rows
    # of the tile, CUTLASS's Hopper GEMM structure) would join this list where WS_OK (_prune_by_m). sm_90
    # builds (triton 3.6): 168 registers, no spills, but the GELU epilogue at 128x256 spills 7 KB; triton's
    # partitioner fails on the subtiled epilogue, on x quantized on load and on the row abs-max's atomics.
    # On the H200 (42nd session, torch 2.11, triton 3.6) 128x256x128 with 3 or 4 stages launched at 8192^3
    # never returned (one run waited 250 s, another 55 s a config; scripts/ws_time.py --isolate), so none
    # is autotuned: TRITONFUSE_WARP_SPECIALIZE=1 must not hang a model. bench_int8.py --sweep keeps them.
    # small M: few rows, stream the weight with deep pipelines; large M: ordinary GEMM tiles
    _WONLY_CONFIGS = [
        _cfg(16, 32, 256, 4, 4),
        _cfg(16, 64, 256, 4, 4),
        _cfg(16, 32, 512, 3, 4),
        _cfg(16, 16, 512, 4, 4),
        _cfg(16, 64, 128, 5, 4),
        _cfg(16, 128, 128, 4, 4),
        _cfg(128, 128, 64, 4, 8),
        _cfg(64, 128, 64, 4, 4),
    ]
    # decode (M <= 16): the weight is the only real traffic; split K so that enough programs stream it
    # (a 2048-column layer has 64 column tiles of 32 for 132 SMs). From scripts/wonly_probe.py on the H200
    # (c5948d2), timed with the weight cold in L2 as in a decode step: the best at 16x4096x4096 (32x256,
    # split 4: 8.7 us against cuBLAS bf16's 13.8), 1x4096x4096 (64x256, split 4) and 16x14336x4096 (64x256,
    # unsplit, 2 warps), the runners-up, and deeper splits for small layers; 64x128 tiles, 4-way split (16x4096x4096,
    # 9.1 us) or unsplit with 6 stages (the SwiGLU layer 8x8192x2048: 12.1 us against 14.7 for the set before)
    # from the session-15 probe of grouped scales
    _DECODE_CONFIGS = [
        _split_cfg(64, 128, 4, 4, 4),
        _split_cfg(64, 128, 1, 6, 4),
        _split_cfg(32, 256, 4, 3, 4),
        _split_cfg(32, 256, 4, 3, 2),
        _split_cfg(32, 512, 2, 3, 2),
        _split_cfg(64, 256, 4, 4, 4),
        _split_cfg(64, 512, 2, 3, 4),
        _split_cfg(64, 256, 1, 4, 2),
        _split_cfg(64, 512, 1, 3, 4),
        _split_cfg(128, 128, 4, 3, 4),
        _split_cfg(32, 128, 8, 4, 4),
    ]


SMEM_BYTES = 227 * 1024  # shared memory a Hopper program may hold


def _stage_bytes(c, weights: int, x_bytes: int = 1) -> int:
    # one pipeline stage: x's [BLOCK_M, BLOCK_K] (int8, or fp16/bf16 quantized on load) and each int8
    # weight's [BLOCK_N, BLOCK_K]
    k = c.kwargs
    return (x_bytes * k["BLOCK_M"] + weights * k["BLOCK_N"]) * k["BLOCK_K"]


# The W8A8 TMA kernels' warp-specialized configs (``tl.range(warp_specialize=True)``, sm_90, triton >= 3.4),
# with TRITONFUSE_WARP_SPECIALIZE=1 only. ncu on the H200 (38th session) at 8192^3: the shipped kernel's two
# consumer warpgroups wait on loads in 82% of cycles (no producer warp), the integer tensor pipe 67% busy. Not
# yet timed: bench_int8.py --sweep times each (its "ws" rows) and compares it with the autotuned kernel.
_HAS_WS = "warp_specialize" in inspect.signature(tl.range).parameters


def _ws_serves(device: torch.device) -> bool:
    """Whether the warp-specialized configs are candidates for a launch on ``device``: the WS_OK constexpr,
    which is part of the tuning key, so a choice made with them off is not reused with them on."""
    return (config.warp_specialize_enabled() and _HAS_WS and device.type == "cuda"
            and not registry.interpret_mode() and capability(device)[0] == 9)


def _prune_by_m(configs, named_args, **kwargs):
    # no 256-row tiles for 40 rows, no 16-row tiles for 4096 rows; two accumulators (gated) stay at
    # 128x128 or less per program, or they spill; x quantized on load (fp16 tiles) fits its stages
    if any(c.kwargs.get("WS") for c in configs):
        act = kwargs.get("ACT", named_args.get("ACT", "none")) != "none"
        ws_ok = kwargs.get("WS_OK", named_args.get("WS_OK", False))
        # (the row abs-max's atomics fail the partitioner as well)
        other = kwargs.get("QLOAD", named_args.get("QLOAD", 0)) or kwargs.get("ROW_AMAX", named_args.get("ROW_AMAX"))
        configs = [c for c in configs if not c.kwargs.get("WS") or (
            ws_ok and not other and not c.kwargs["SUBTILE"] and not (act and c.kwargs["BLOCK_N"] > 128))] or configs
    mb = named_args.get("M_BUCKET", kwargs.get("M_BUCKET", 16))
    gated = kwargs.get("GATED", named_args.get("GATED", False))
    if gated:
        configs = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 128 * 128
                   and _stage_bytes(c, 2) * c.num_stages <= SMEM_BYTES] or configs
    if kwargs.get("QLOAD", named_args.get("QLOAD", False)):
        # fp16 x tiles: stages - 1 in flight and the one being converted (Triton 3.6's sm_90 compile of
        # the TMA list: 128x256x128 3 stages 168 KB, 256x128x128 184 KB, 128x128x256 228 KB, over the limit)
        configs = [c for c in configs if _stage_bytes(c, 2 if gated else 1, 2) * (c.num_stages - 1)
                   + 2 * c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_K"] <= SMEM_BYTES] or configs
    small = [c for c in configs if c.kwargs["BLOCK_M"] <= max(32, mb)]
    if mb <= 32:
        return [c for c in small if c.kwargs["BLOCK_M"] <= 32] or small or configs
    return [c for c in small if c.kwargs["BLOCK_M"] >= 64] or small or configs


SPLIT_MAX_N = 16384  # from this many output columns on, the column tiles alone fill the GPU: no K split


def _prune_decode(configs, named_args, **kwargs):
    # no K split where the column tiles fill the GPU, and none that leaves a split without K to read
    N, K = named_args["N"], named_args["K"]
    keep = [c for c in configs if c.kwargs["SPLIT_K"] == 1 or
            (N < SPLIT_MAX_N and (c.kwargs["SPLIT_K"] - 1) * c.kwargs["BLOCK_K"] < K)]
    return keep or configs[:1]  # (keep is empty only where no config is unsplit)


# --- kernels ------------------------------------------------------------------------------------------


@triton.jit
def _max_nan(a, b):
    # max that propagates NaN (tl.max drops it): a row's abs-max is NaN or +inf exactly when it holds NaN/Inf
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _row_inv(amax_r):
    # a row's abs-max (by _max_nan) -> 127 / abs-max, or 0 for a row of zeros or one holding NaN/Inf
    usable = (amax_r > 0.0) & (amax_r < float("inf"))  # (NaN fails both)
    # div_rn: IEEE division (``/`` is approximate on NVIDIA GPUs), so rounding matches PyTorch's
    return tl.where(usable, tl.math.div_rn(127.0, tl.where(usable, amax_r, 1.0)), 0.0)


@triton.jit
def _trunc_int8_magic(u, neg):
    # -floor(u) where neg, else floor(u), as int8, for 0 <= u < 2^22, without a float-to-int conversion (F2I
    # runs at a quarter of the FP32 rate on sm_90, and x quantized on load converts every element of a GEMM's
    # A tile). 1.5 * 2^23 + u rounded toward zero is 1.5 * 2^23 + floor(u), 1.5 * 2^23 - u rounded up is
    # 1.5 * 2^23 - floor(u): integers of one binade, whose bits minus 1.5 * 2^23's are the value. PTX rounding
    # modes: GPU only (the interpreter runs the conversion form)
    t_pos = tl.inline_asm_elementwise("add.rz.f32 $0, $1, 0f4B400000;", "=f,f", [u], dtype=tl.float32,
                                      is_pure=True, pack=1)
    t_neg = tl.inline_asm_elementwise("sub.rp.f32 $0, 0f4B400000, $1;", "=f,f", [u], dtype=tl.float32,
                                      is_pure=True, pack=1)
    return (tl.where(neg, t_neg, t_pos).to(tl.int32, bitcast=True) - 0x4B400000).to(tl.int8)


@triton.jit
def _quant_scaled(x, inv, MAGIC: tl.constexpr = False):
    # x fp32 times its row's _row_inv -> q int8 (inv broadcast along the row: [BLOCK_M, 1] for a tile)
    v = tl.where(inv > 0.0, x * inv, 0.0)  # (a NaN/Inf row's values would be NaN: 0 instead)
    if MAGIC:
        # the same values: |v + copysign(.5, v)| rounds as |v| + .5 does (round to nearest is symmetric),
        # then truncated with v's sign
        return _trunc_int8_magic(tl.abs(v) + 0.5, v < 0.0)
    # round half away from zero: add 0.5 carrying v's sign (one bitwise op), the conversion truncates;
    # |v| <= 127 up to an ulp, so no clamp
    half = ((v.to(tl.uint32, bitcast=True) & 0x80000000) | 0x3F000000).to(tl.float32, bitcast=True)
    return (v + half).to(tl.int8)


@triton.jit
def _quant_row_values(x, amax_r, MAGIC: tl.constexpr = False):
    # x [BLOCK_K] fp32 of one row, with the row's abs-max (by _max_nan) -> q int8. In sm_90 PTX 8 instructions
    # an element with the load's conversion and the abs-max, against 13 for the first form (a poison sum
    # for NaN/Inf, a compare and select for the rounding, a clamp)
    return _quant_scaled(x, _row_inv(amax_r), MAGIC)


@triton.jit
def _qload_inv(xs_ptr, offs_m, M):
    # QLOAD: the tile's rows' _row_inv from their abs-max (xs_ptr), [BLOCK_M, 1] to scale x's tiles by
    return _row_inv(tl.load(xs_ptr + offs_m, mask=offs_m < M, other=0.0))[:, None]


@triton.jit
def _row_scale(amax_r):
    # the dequantization scale of a row quantized with _row_inv: abs-max / 127 (0 for zeros), NaN for NaN/Inf
    return tl.where(amax_r < float("inf"), amax_r / 127.0, float("nan"))


@triton.jit
def _quant_rows_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_xk, stride_qm,
                       BLOCK_K: tl.constexpr, ONE_PASS: tl.constexpr, MAGIC: tl.constexpr = False):
    # one program per row: absmax -> scale = absmax / 127, q = round(x / scale) in -127..127.
    # A zero row gets scale 0 and q 0 (its outputs are exactly 0); a row with NaN/Inf gets scale NaN and
    # q 0, so its outputs are NaN and nothing leaks into other rows. ONE_PASS (K <= BLOCK_K): the row is
    # read once and kept in registers; otherwise it is read twice, block by block.
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    q_row = q_ptr + row * stride_qm
    if ONE_PASS:
        offs = tl.arange(0, BLOCK_K)
        mask = offs < K
        x = tl.load(x_row + offs * stride_xk, mask=mask, other=0.0).to(tl.float32)
        amax_r = tl.reduce(tl.abs(x), 0, _max_nan)
        tl.store(q_row + offs, _quant_row_values(x, amax_r, MAGIC), mask=mask)
    else:
        amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_row + offs * stride_xk, mask=offs < K, other=0.0).to(tl.float32)
            amax = _max_nan(amax, tl.abs(x))
        amax_r = tl.reduce(amax, 0, _max_nan)
        for k0 in range(0, K, BLOCK_K):
            offs = k0 + tl.arange(0, BLOCK_K)
            mask = offs < K
            x = tl.load(x_row + offs * stride_xk, mask=mask, other=0.0).to(tl.float32)
            tl.store(q_row + offs, _quant_row_values(x, amax_r, MAGIC), mask=mask)
    tl.store(s_ptr + row, _row_scale(amax_r))


@triton.jit
def _dequant(acc, row_scale, ws_ptr, b_ptr, offs_n, n_mask, HAS_ROW_SCALE: tl.constexpr,
             HAS_COL_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr):
    # acc: [BLOCK_M, BLOCK_N] int32 (W8A8) or fp32 (weight-only) -> fp32 dequantized, with bias. Without
    # HAS_COL_SCALE the weight's (grouped) scales were applied in the main loop
    y = acc.to(tl.float32)
    if HAS_COL_SCALE:
        y = y * tl.load(ws_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
    if HAS_ROW_SCALE:
        y = y * row_scale[:, None]
    if HAS_BIAS:
        y += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    return y


@triton.jit
def _store_tile(
    acc, acc_u, xs_ptr, ws_ptr, b_ptr, wus_ptr, bu_ptr, out_ptr, offs_m, offs_n, M, N, stride_om, stride_on,
    HAS_ROW_SCALE: tl.constexpr, HAS_COL_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    GATED: tl.constexpr, RTNE_BF16: tl.constexpr, amax_ptr=None, ROW_AMAX: tl.constexpr = False,
    QLOAD: tl.constexpr = False,
):
    # the epilogue shared by every int8 GEMM: dequantize, bias, activation (and the gate product), store.
    # QLOAD: xs_ptr holds the rows' abs-max (x was quantized as it was loaded), scales made as the row kernel
    # makes them. ROW_AMAX: each row's abs-max of the values stored is max-ed into amax_ptr ([M] int32, zeroed
    # before the launch) for the next GEMM to quantize them on load. GATED: acc_u holds the up projection's
    # product (its scales and bias at wus_ptr, bu_ptr)
    m_mask = offs_m < M
    n_mask = offs_n < N
    if HAS_ROW_SCALE:
        xs = tl.load(xs_ptr + offs_m, mask=m_mask, other=0.0)
        if QLOAD:
            xs = _row_scale(xs)
    else:
        xs = offs_m  # unused
    y = _apply_act(_dequant(acc, xs, ws_ptr, b_ptr, offs_n, n_mask, HAS_ROW_SCALE, HAS_COL_SCALE, HAS_BIAS), ACT)
    if GATED:
        y = y * _dequant(acc_u, xs, wus_ptr, bu_ptr, offs_n, n_mask, HAS_ROW_SCALE, HAS_COL_SCALE, HAS_BIAS)
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    y = cast_out(y, out_ptr.dtype.element_ty, RTNE_BF16)
    tl.store(out_ptrs, y, mask=m_mask[:, None] & n_mask[None, :])
    if ROW_AMAX:
        # of the values as stored (the next GEMM quantizes those, |q| <= 127 needs their max). Columns past N
        # hold 0 (their weight scales and bias load as 0, and every activation maps 0 to 0); rows past M are
        # masked. An abs-max is >= 0, so its int32 bits order as its values do (NaN above +inf): one relaxed
        # atomic on the bits, where Triton's fp32 max issues two with fences (the fences cost 0.011 ms of
        # BERT's up-projection on the H200, 39th session; the next kernel launch orders the rest)
        r = tl.reduce(tl.abs(y.to(tl.float32)), 1, _max_nan)
        tl.atomic_max(amax_ptr + offs_m, r.to(tl.int32, bitcast=True), mask=m_mask, sem="relaxed")


@triton.jit
def _dot_operands(a, b, W8A8: tl.constexpr, DOT_UPCAST: tl.constexpr):
    # W8A8: int8 x int8 as loaded. Weight-only: the int8 tile becomes the activation dtype (exact); the
    # interpreter's bf16 dot and int8 -> bf16 cast are broken, so DOT_UPCAST goes through fp32 there
    if not W8A8:
        if DOT_UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        else:
            b = b.to(a.dtype)
    return a, b


@triton.jit
def _load_k(ptrs, mask, EVEN_K: tl.constexpr):
    # K a multiple of BLOCK_K (the usual case): unmasked loads pipeline best
    if EVEN_K:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=mask, other=0)


@triton.jit
def _group_scales(s_ptrs, k, K, N, GROUP_K: tl.constexpr):
    # the weight's [BLOCK_N] scales for the K group that holds k (s_ptrs: group 0's, groups N apart). Past K
    # (a ragged split's end, where a and b read zeros) the last group's serve
    return tl.load(s_ptrs + (tl.minimum(k, K - 1) // GROUP_K) * N)


@triton.jit
def _group_dot(acc, a, b, s_ptrs, k, K, N, GROUP_K: tl.constexpr, s_pre, PRELOADED: tl.constexpr):
    # acc + a @ b; with GROUP_K > 0 the product scaled by its K group's scales (PRELOADED: s_pre holds them)
    if GROUP_K == 0:
        return tl.dot(a, b, acc, out_dtype=acc.dtype)  # int32 for int8 operands (triton < 3.8 asks)
    else:
        if PRELOADED:
            s = s_pre
        else:
            s = _group_scales(s_ptrs, k, K, N, GROUP_K)
        return acc + tl.dot(a, b, out_dtype=tl.float32) * s[None, :]


@triton.jit
def _k_step(acc, acc_u, x_ptrs, w_ptrs, u_ptrs, k, K, N, stride_xk, stride_wk, stride_uk, s_ptrs, su_ptrs,
            W8A8: tl.constexpr, DOT_UPCAST: tl.constexpr, GATED: tl.constexpr, EVEN_K: tl.constexpr,
            BLOCK_K: tl.constexpr, SUB_K: tl.constexpr, GROUP_K: tl.constexpr, s_pre=None, su_pre=None,
            PRELOADED: tl.constexpr = False, inv=None, QLOAD: tl.constexpr = False):
    # one BLOCK_K step of the pointer kernels from K offset k, in sub-steps of SUB_K (pointers span SUB_K):
    # x's tile read once, multiplied by w's (and the gate's u's). Grouped weight scales (GROUP_K, a multiple
    # of SUB_K) are constant within a sub-step; PRELOADED (one sub-step): s_pre and su_pre hold them.
    # QLOAD (1, 2: _qload_mode): x is fp16/bf16, quantized per row as it is loaded (inv [BLOCK_M, 1]: the
    # rows' _row_inv)
    offs = tl.arange(0, SUB_K)
    for j in tl.static_range(BLOCK_K // SUB_K):
        kj = k + j * SUB_K
        k_mask = offs < K - kj
        a0 = _load_k(x_ptrs + j * SUB_K * stride_xk, k_mask[None, :], EVEN_K)
        if QLOAD:
            a0 = _quant_scaled(a0.to(tl.float32), inv, QLOAD == 2)
        a, b = _dot_operands(a0, _load_k(w_ptrs + j * SUB_K * stride_wk, k_mask[:, None], EVEN_K), W8A8, DOT_UPCAST)
        acc = _group_dot(acc, a, b, s_ptrs, kj, K, N, GROUP_K, s_pre, PRELOADED)
        if GATED:
            a, bu = _dot_operands(a0, _load_k(u_ptrs + j * SUB_K * stride_uk, k_mask[:, None], EVEN_K), W8A8,
                                  DOT_UPCAST)
            acc_u = _group_dot(acc_u, a, bu, su_ptrs, kj, K, N, GROUP_K, su_pre, PRELOADED)
    return acc, acc_u


def _sub_k(args) -> int:
    # a K step's sub-steps: all of BLOCK_K at once, or one weight group at a time
    g = args["GROUP_K"]
    return min(args["BLOCK_K"], g) if g else args["BLOCK_K"]


@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0, "SUB_K": _sub_k})
@triton.jit
def _int8_gemm_kernel(
    x_ptr, xs_ptr, w_ptr, ws_ptr, b_ptr, wu_ptr, wus_ptr, bu_ptr, out_ptr, amax_ptr,
    M, N, K, M_BUCKET,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_un, stride_uk, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, GATED: tl.constexpr, W8A8: tl.constexpr,
    DOT_UPCAST: tl.constexpr, RTNE_BF16: tl.constexpr, GROUP_K: tl.constexpr, QLOAD: tl.constexpr,
    ROW_AMAX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, SUB_K: tl.constexpr,
):
    # W8A8: x [M, K] int8 with row scales xs [M]; weight-only: x [M, K] fp16/bf16, any strides. W8A8 with
    # QLOAD: x [M, K] fp16/bf16 with its rows' abs-max in xs, quantized per row as it is loaded.
    # w (wu): [N, K] int8 with channel scales ws (wus) [N], or (weight-only, GROUP_K > 0) scales
    # [cdiv(K, GROUP_K), N] per K group; out: [M, N]. ROW_AMAX: out's rows' abs-max into amax_ptr (_store_tile)
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, SUB_K)
    offs_am = tl.where(offs_m < M, offs_m, 0)
    offs_bn = tl.where(offs_n < N, offs_n, 0)
    x_ptrs = x_ptr + offs_am[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + offs_bn[None, :] * stride_wn + offs_k[:, None] * stride_wk
    u_ptrs = wu_ptr + offs_bn[None, :] * stride_un + offs_k[:, None] * stride_uk
    if W8A8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = acc
    if QLOAD:
        inv = _qload_inv(xs_ptr, offs_m, M)
    else:
        inv = None
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        acc, acc_u = _k_step(acc, acc_u, x_ptrs, w_ptrs, u_ptrs, k * BLOCK_K, K, N, stride_xk, stride_wk, stride_uk,
                             ws_ptr + offs_bn, wus_ptr + offs_bn, W8A8, DOT_UPCAST, GATED, EVEN_K, BLOCK_K, SUB_K,
                             GROUP_K, inv=inv, QLOAD=QLOAD)
        if GATED:
            u_ptrs += BLOCK_K * stride_uk
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    _store_tile(acc, acc_u, xs_ptr, ws_ptr, b_ptr, wus_ptr, bu_ptr, out_ptr, offs_m, offs_n, M, N,
                stride_om, stride_on, W8A8, GROUP_K == 0, HAS_BIAS, ACT, GATED, RTNE_BF16, amax_ptr, ROW_AMAX, QLOAD)


_KEY = ["M_BUCKET", "N", "K", "ACT", "HAS_BIAS", "GATED", "QLOAD", "ROW_AMAX", "WS_OK"]
_WONLY_KEY = _KEY + ["GROUP_K"]
# one kernel body, two tuning spaces: W8A8 (int8 x) and weight-only (fp16/bf16 x)
_w8a8_kernel = triton.autotune(
    configs=_W8A8_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune_by_m}, **_AUTOTUNE_KW
)(_int8_gemm_kernel)
_wonly_kernel = triton.autotune(
    configs=_WONLY_CONFIGS, key=_WONLY_KEY, prune_configs_by={"early_config_prune": _prune_by_m}, **_AUTOTUNE_KW
)(_int8_gemm_kernel)


def _graph_bench(kernel_call, quantiles=None):
    # a decode kernel runs for fewer microseconds than a launch from Python takes, so Triton's default timing
    # (one launch per event pair) measures the host: time it from replayed CUDA graphs instead (the decode
    # launcher times its configs with cold weights first, see _tune_decode; this is the fallback). Graphs of
    # 20 ms: the other kernels' 1 ms graphs (kernels.common.graph_bench) are not tried at microsecond sizes
    return triton.testing.do_bench_cudagraph(kernel_call, rep=20, quantiles=quantiles)


# (where the shared settings time configs at all: a Triton that takes do_bench, not the interpreter)
_GRAPH_BENCH_KW = {"do_bench": _graph_bench} if "do_bench" in _AUTOTUNE_KW else {}


@triton.autotune(configs=_DECODE_CONFIGS, key=_WONLY_KEY, prune_configs_by={"early_config_prune": _prune_decode},
                 **{**_AUTOTUNE_KW, **_GRAPH_BENCH_KW})
@triton.heuristics({"EVEN_K": lambda args: args["K"] % (args["BLOCK_K"] * args["SPLIT_K"]) == 0, "SUB_K": _sub_k,
                    "PREFETCH": lambda args: 0 < args["BLOCK_K"] <= args["GROUP_K"]})
@triton.jit
def _decode_kernel(
    x_ptr, w_ptr, ws_ptr, b_ptr, wu_ptr, wus_ptr, bu_ptr, out_ptr, part_ptr, count_ptr,
    M, N, K, M_BUCKET,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_un, stride_uk, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, GATED: tl.constexpr, DOT_UPCAST: tl.constexpr,
    RTNE_BF16: tl.constexpr, GROUP_K: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr, SUB_K: tl.constexpr,
    PREFETCH: tl.constexpr, ACQUIRE: tl.constexpr = True,
):
    # Weight-only int8 for M <= 16 rows (decode). Program (column tile, split) sums its share of K for all
    # rows. With SPLIT_K > 1 each program writes its fp32 partial tile to part [SPLIT_K, 16, N] (and the
    # gate's second one after it), then counts itself in on its column tile's counter; the program that
    # arrives last adds the partials in split order (the result does not depend on the arrival order),
    # runs the epilogue and sets the counter back to 0 for the next launch. One launch, no zeroed buffers.
    BLOCK_M: tl.constexpr = 16
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    k_per = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = split * k_per + tl.arange(0, SUB_K)
    offs_am = tl.where(offs_m < M, offs_m, 0)
    offs_bn = tl.where(offs_n < N, offs_n, 0)
    x_ptrs = x_ptr + offs_am[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + offs_bn[None, :] * stride_wn + offs_k[:, None] * stride_wk
    u_ptrs = wu_ptr + offs_bn[None, :] * stride_un + offs_k[:, None] * stride_uk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = acc
    # PREFETCH (grouped scales, BLOCK_K <= GROUP_K: one group per step): each step's scales are loaded a step
    # ahead, so their load's latency is not paid inside the step
    s_ptrs = ws_ptr + offs_bn
    su_ptrs = wus_ptr + offs_bn
    s_next = tl.zeros((BLOCK_N,), dtype=tl.float32)
    su_next = s_next
    if PREFETCH:
        s_next = _group_scales(s_ptrs, split * k_per, K, N, GROUP_K)
        if GATED:
            su_next = _group_scales(su_ptrs, split * k_per, K, N, GROUP_K)
    for k in range(0, k_per, BLOCK_K):
        s_now = s_next
        su_now = su_next
        if PREFETCH:
            s_next = _group_scales(s_ptrs, split * k_per + k + BLOCK_K, K, N, GROUP_K)
            if GATED:
                su_next = _group_scales(su_ptrs, split * k_per + k + BLOCK_K, K, N, GROUP_K)
        # masked: the last split's ragged end (and splits past K) read zeros
        acc, acc_u = _k_step(acc, acc_u, x_ptrs, w_ptrs, u_ptrs, split * k_per + k, K, N, stride_xk, stride_wk,
                             stride_uk, s_ptrs, su_ptrs, False, DOT_UPCAST, GATED, EVEN_K,
                             BLOCK_K, SUB_K, GROUP_K, s_now, su_now, PREFETCH)
        if GATED:
            u_ptrs += BLOCK_K * stride_uk
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    if SPLIT_K == 1:
        _store_tile(acc, acc_u, ws_ptr, ws_ptr, b_ptr, wus_ptr, bu_ptr, out_ptr, offs_m, offs_n, M, N,
                    stride_om, stride_on, False, GROUP_K == 0, HAS_BIAS, ACT, GATED, RTNE_BF16)
    else:
        n_ok = (offs_n < N)[None, :]
        gate_off = SPLIT_K * BLOCK_M * N
        tile = (offs_m[:, None] * N + offs_n[None, :])
        tl.store(part_ptr + split * BLOCK_M * N + tile, acc, mask=n_ok)
        if GATED:
            tl.store(part_ptr + gate_off + split * BLOCK_M * N + tile, acc_u, mask=n_ok)
        tl.debug_barrier()  # every thread's partial is written before the count says so
        if ACQUIRE:
            arrived = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel")
        else:
            # release alone (CUDA's threadFenceReduction pattern): the last program reads the partials from
            # L2 (.cg) after branching on the count, without the acquire's L1 invalidation in every program
            # (ncu, 38th session: the acq_rel fence's CCTL.IVALL and ERRBAR took about 6% of the 64x128
            # config's stall samples). Not yet timed: scripts/wonly_floor_probe.py --providers release
            arrived = tl.atomic_add(count_ptr + pid_n, 1, sem="release")
        if arrived == SPLIT_K - 1:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            acc_u = acc
            for s in tl.static_range(SPLIT_K):
                # .cg: from L2, where the other programs' partials are, never a stale L1 line
                acc += tl.load(part_ptr + s * BLOCK_M * N + tile, mask=n_ok, other=0.0, cache_modifier=".cg")
                if GATED:
                    acc_u += tl.load(part_ptr + gate_off + s * BLOCK_M * N + tile, mask=n_ok, other=0.0,
                                     cache_modifier=".cg")
            _store_tile(acc, acc_u, ws_ptr, ws_ptr, b_ptr, wus_ptr, bu_ptr, out_ptr, offs_m, offs_n, M, N,
                        stride_om, stride_on, False, GROUP_K == 0, HAS_BIAS, ACT, GATED, RTNE_BF16)
            tl.atomic_xchg(count_ptr + pid_n, 0)


@triton.jit
def _w8a8_tma_tiles(
    x_desc, w_desc, wu_desc, xs_ptr, ws_ptr, b_ptr, wus_ptr, bu_ptr, out_ptr, amax_ptr, M, N, K, stride_om,
    stride_on, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, GATED: tl.constexpr, RTNE_BF16: tl.constexpr,
    QLOAD: tl.constexpr, ROW_AMAX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    FLATTEN: tl.constexpr, SUBTILE: tl.constexpr, WS: tl.constexpr,
):
    # Hopper: tiles arrive by TMA (out-of-bounds boxes read as zeros, so no masks in the main loop); with a
    # persistent grid (one program per SM) each program walks the tiles, so one tile's epilogue overlaps the
    # next tile's loads. w is [N, K] K-major, the layout 8-bit wgmma wants for its B operand. QLOAD: x's
    # tiles are fp16/bf16, quantized per row in registers (xs_ptr: the rows' abs-max); ROW_AMAX: _store_tile
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    k_tiles = tl.cdiv(K, BLOCK_K)
    if WS:
        # the partitioner takes a plain loop (no flatten); the tile's work is the same
        for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), warp_specialize=True):
            _w8a8_tma_tile(tile, x_desc, w_desc, wu_desc, xs_ptr, ws_ptr, b_ptr, wus_ptr, bu_ptr, out_ptr, amax_ptr,
                           M, N, k_tiles, num_pid_m, num_pid_n, stride_om, stride_on, HAS_BIAS, ACT, GATED,
                           RTNE_BF16, QLOAD, ROW_AMAX, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, SUBTILE)
    else:
        for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), flatten=FLATTEN):
            _w8a8_tma_tile(tile, x_desc, w_desc, wu_desc, xs_ptr, ws_ptr, b_ptr, wus_ptr, bu_ptr, out_ptr, amax_ptr,
                           M, N, k_tiles, num_pid_m, num_pid_n, stride_om, stride_on, HAS_BIAS, ACT, GATED,
                           RTNE_BF16, QLOAD, ROW_AMAX, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, SUBTILE)


@triton.jit
def _w8a8_tma_tile(
    tile, x_desc, w_desc, wu_desc, xs_ptr, ws_ptr, b_ptr, wus_ptr, bu_ptr, out_ptr, amax_ptr, M, N, k_tiles,
    num_pid_m, num_pid_n, stride_om, stride_on, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, GATED: tl.constexpr,
    RTNE_BF16: tl.constexpr, QLOAD: tl.constexpr, ROW_AMAX: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, SUBTILE: tl.constexpr,
):
    pid_m, pid_n = _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    offs_m = off_m + tl.arange(0, BLOCK_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc_u = acc
    if QLOAD:
        inv = _qload_inv(xs_ptr, offs_m, M)
    for ki in range(k_tiles):
        off_k = ki * BLOCK_K
        a = x_desc.load([off_m, off_k])
        if QLOAD:
            a = _quant_scaled(a.to(tl.float32), inv, QLOAD == 2)
        acc = tl.dot(a, w_desc.load([off_n, off_k]).T, acc, out_dtype=tl.int32)
        if GATED:
            acc_u = tl.dot(a, wu_desc.load([off_n, off_k]).T, acc_u, out_dtype=tl.int32)
    if SUBTILE:
        lo, hi = _halves(acc, BLOCK_N)
        lo_u, hi_u = _halves(acc_u, BLOCK_N)
        offs_n = off_n + tl.arange(0, BLOCK_N // 2)
        _store_tile(lo, lo_u, xs_ptr, ws_ptr, b_ptr, wus_ptr, bu_ptr, out_ptr, offs_m, offs_n, M, N,
                    stride_om, stride_on, True, True, HAS_BIAS, ACT, GATED, RTNE_BF16, amax_ptr, ROW_AMAX,
                    QLOAD)
        _store_tile(hi, hi_u, xs_ptr, ws_ptr, b_ptr, wus_ptr, bu_ptr, out_ptr, offs_m, offs_n + BLOCK_N // 2,
                    M, N, stride_om, stride_on, True, True, HAS_BIAS, ACT, GATED, RTNE_BF16, amax_ptr, ROW_AMAX,
                    QLOAD)
    else:
        offs_n = off_n + tl.arange(0, BLOCK_N)
        _store_tile(acc, acc_u, xs_ptr, ws_ptr, b_ptr, wus_ptr, bu_ptr, out_ptr, offs_m, offs_n, M, N,
                    stride_om, stride_on, True, True, HAS_BIAS, ACT, GATED, RTNE_BF16, amax_ptr, ROW_AMAX,
                    QLOAD)


@triton.autotune(configs=_W8A8_TMA_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune_by_m},
                 **_AUTOTUNE_KW)
@triton.jit
def _w8a8_tma_kernel(
    x_desc, w_desc, wu_desc, xs_ptr, ws_ptr, b_ptr, wus_ptr, bu_ptr, out_ptr, amax_ptr,
    M, N, K, M_BUCKET, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, GATED: tl.constexpr, RTNE_BF16: tl.constexpr,
    QLOAD: tl.constexpr, ROW_AMAX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PERSISTENT: tl.constexpr, FLATTEN: tl.constexpr, SUBTILE: tl.constexpr, WS: tl.constexpr = False,
    WS_OK: tl.constexpr = False,
):
    # host TMA descriptors (an op call)
    _w8a8_tma_tiles(x_desc, w_desc, wu_desc, xs_ptr, ws_ptr, b_ptr, wus_ptr, bu_ptr, out_ptr, amax_ptr, M, N, K,
                    stride_om, stride_on, HAS_BIAS, ACT, GATED, RTNE_BF16, QLOAD, ROW_AMAX, BLOCK_M, BLOCK_N,
                    BLOCK_K, GROUP_M, FLATTEN, SUBTILE, WS)


# The same kernel building its descriptors on the device, for calls inlined into Inductor's code
# (``INT8_CONSTANTS``): host descriptors need data pointers, which a traced call does not have, and the
# pointer kernel it ran instead was 7-27% slower at BERT/ViT shapes on the H200. Inductor provides the
# scratch memory the device descriptors live in (as for kernels.conv_bn's 1x1 kernel).
_HAS_DEVICE_TMA = hasattr(tl, "make_tensor_descriptor")
# False: an inlined W8A8 GEMM runs the pointer kernel instead, which Inductor's static launcher can launch
# with TRITONFUSE_STATIC_LAUNCH=1 (a kernel with device descriptors needs global scratch memory, which it
# refuses: see kernels.conv_bn's INLINE_DEVICE_TMA). Inlined int8 GEMMs lost more in whole models than
# their sites' timings said (benchmarks/results/diagnostics/README.md); this tells whether the launch path
# is why.
INLINE_DEVICE_TMA = True
_W8A8_DEVICE_TMA_CONFIGS = [triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
                            for c in _W8A8_TMA_CONFIGS]  # no pre_hook: the block shapes are compile-time here


@triton.autotune(configs=_W8A8_DEVICE_TMA_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune_by_m},
                 **_AUTOTUNE_KW)
@triton.jit
def _w8a8_device_tma_kernel(
    x_ptr, w_ptr, wu_ptr, xs_ptr, ws_ptr, b_ptr, wus_ptr, bu_ptr, out_ptr, amax_ptr,
    M, N, K, M_BUCKET, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, GATED: tl.constexpr, RTNE_BF16: tl.constexpr,
    QLOAD: tl.constexpr, ROW_AMAX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PERSISTENT: tl.constexpr, FLATTEN: tl.constexpr, SUBTILE: tl.constexpr, WS: tl.constexpr = False,
    WS_OK: tl.constexpr = False,
):
    x_desc = tl.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])
    wu_desc = tl.make_tensor_descriptor(wu_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])
    _w8a8_tma_tiles(x_desc, w_desc, wu_desc, xs_ptr, ws_ptr, b_ptr, wus_ptr, bu_ptr, out_ptr, amax_ptr, M, N, K,
                    stride_om, stride_on, HAS_BIAS, ACT, GATED, RTNE_BF16, QLOAD, ROW_AMAX, BLOCK_M, BLOCK_N,
                    BLOCK_K, GROUP_M, FLATTEN, SUBTILE, WS)


# --- an MLP's hidden activation handed over in int8 with per-group scales ---------------------------------
# Served by no pattern: on the H100 (58th session, scripts/group_handoff_probe.py) the pair took 0.963 of the
# time of the served pair (int8 up-projection, cuBLAS down-projection) at bert-base's MLP and 1.002 at
# vit_b_16's, at 35.6 dB against their 39 (benchmarks/results/diagnostics/README.md, 58th session).
# A per-token scale needs a whole row of the up-projection's output, which one tile does not hold (the
# handoff above writes the fp16 output and its rows' abs-max, and the down-projection quantizes on load).
# Scales per row and group of GROUP columns instead (the group: one tile's BLOCK_N) let the up-projection's
# epilogue write int8 at once, and the down-projection's main loop (K steps of one group) rescales each step's
# int32 product by its rows' group scales: the hidden activation crosses memory as int8 (half the bytes), with
# no quantization pass.


@triton.jit
def _group_quant_out_kernel(
    x_desc, w_desc, xs_ptr, ws_ptr, b_ptr, q_ptr, s_ptr, M, N, K, n_groups,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, MAGIC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # act(x @ w.T * scales + b) for int8 x (row scales xs) and w (channel scales ws), written as int8 q [M, N]
    # with one scale a row and BLOCK_N columns: s [M, n_groups] (a group's abs-max / 127; 0 for zeros, NaN
    # where the group holds NaN/Inf, its q then 0, as the row kernel does per row)
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for ki in range(tl.cdiv(K, BLOCK_K)):
        acc = tl.dot(x_desc.load([off_m, ki * BLOCK_K]), w_desc.load([off_n, ki * BLOCK_K]).T, acc,
                     out_dtype=tl.int32)
    offs_m = off_m + tl.arange(0, BLOCK_M)
    offs_n = off_n + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    xs = tl.load(xs_ptr + offs_m, mask=m_mask, other=0.0)
    y = _apply_act(_dequant(acc, xs, ws_ptr, b_ptr, offs_n, n_mask, True, True, HAS_BIAS), ACT)
    # (columns past N hold 0, out of the abs-max: their scales and bias load as 0, and activations keep 0)
    amax = tl.reduce(tl.abs(y), 1, _max_nan)
    q = _quant_scaled(y, _row_inv(amax)[:, None], MAGIC)
    tl.store(q_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :], q, mask=m_mask[:, None] & n_mask[None, :])
    tl.store(s_ptr + offs_m.to(tl.int64) * n_groups + pid_n, _row_scale(amax), mask=m_mask)


@triton.jit
def _group_scaled_in_kernel(
    x_desc, w_desc, s_ptr, ws_ptr, b_ptr, out_ptr, M, N, K, n_groups,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, RTNE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # act(x @ w.T + b) for int8 x with scales s [M, n_groups] per row and BLOCK_K columns (the group) and int8 w
    # with channel scales ws: each K step's int32 product is scaled by its group's row scales into fp32
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    offs_m = off_m + tl.arange(0, BLOCK_M)
    offs_n = off_n + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    s_ptrs = s_ptr + offs_m.to(tl.int64) * n_groups
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for ki in range(tl.cdiv(K, BLOCK_K)):
        part = tl.dot(x_desc.load([off_m, ki * BLOCK_K]), w_desc.load([off_n, ki * BLOCK_K]).T, out_dtype=tl.int32)
        acc += part.to(tl.float32) * tl.load(s_ptrs + ki, mask=m_mask, other=0.0)[:, None]
    y = _apply_act(_dequant(acc, offs_m, ws_ptr, b_ptr, offs_n, n_mask, False, True, HAS_BIAS), ACT)
    out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(out_ptrs, cast_out(y, out_ptr.dtype.element_ty, RTNE_BF16), mask=m_mask[:, None] & n_mask[None, :])


def group_tiles(block_m: int, block_n: int, block_k: int, stages: int = 3, warps: int = 8) -> dict:
    """A launch config of the group handoff's kernels: the group is the producer's BLOCK_N and the
    consumer's BLOCK_K."""
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8, num_stages=stages, num_warps=warps)


def _contiguous_int8(*ts) -> None:
    if TensorDescriptor is None:
        raise RuntimeError("the group handoff's kernels need triton's host TMA descriptors (triton >= 3.3)")
    for t in ts:
        if t.dtype != torch.int8 or not t.is_contiguous() or t.shape[-1] % 16 or t.data_ptr() % 16:
            raise ValueError("the group handoff takes contiguous int8 operands with rows of a multiple of 16 "
                             f"bytes at a 16-byte aligned address (TMA), got {t.dtype} {list(t.shape)} strides "
                             f"{list(t.stride())}")


def int8_linear_group_out(xq, xs, wq, ws, b, act: str, group: int = 128, cfg: Optional[dict] = None):
    """``act(x @ w.T + b)`` of a W8A8 site (x quantized per row: ``quant_rows``; w per channel:
    ``quantize_weight``), returned quantized per row and group of ``group`` columns: (q int8 [M, N], scales
    fp32 [M, cdiv(N, group)]), for ``int8_linear_group_in``. ``cfg``: ``group_tiles``'s dict (one of the
    probe's; its BLOCK_N must be ``group``)."""
    _contiguous_int8(xq, wq)
    M, K = xq.shape
    N = wq.shape[0]
    c = dict(cfg or group_tiles(128, group, 128))
    if c["BLOCK_N"] != group:
        raise ValueError(f"the producer's BLOCK_N is the group ({group}), got {c['BLOCK_N']}")
    n_groups = cdiv(N, group)
    q = torch.empty((M, N), device=xq.device, dtype=torch.int8)
    s = torch.empty((M, n_groups), device=xq.device, dtype=torch.float32)
    if M == 0 or N == 0:
        return q, s
    grid = (cdiv(M, c["BLOCK_M"]) * n_groups,)
    x_desc = host_desc(xq, [c["BLOCK_M"], c["BLOCK_K"]])  # (aligned: _contiguous_int8)
    w_desc = host_desc(wq, [c["BLOCK_N"], c["BLOCK_K"]])
    _group_quant_out_kernel[grid](x_desc, w_desc, xs, ws, b if b is not None else ws, q, s, M, N, K, n_groups,
                                  HAS_BIAS=b is not None, ACT=_epilogue_act(act, xq.device),
                                  MAGIC=magic_rounding(xq.device), **c)
    return q, s


def int8_linear_group_in(q, s, wq, ws, b, act: str, out_dtype: torch.dtype, group: int = 128,
                         cfg: Optional[dict] = None):
    """``act(x @ w.T + b)`` for x given as ``int8_linear_group_out``'s (q, scales) with its ``group``, which
    is the K step (``cfg``'s BLOCK_K)."""
    _contiguous_int8(q, wq)
    M, K = q.shape
    N = wq.shape[0]
    n_groups = s.shape[1]
    if n_groups != cdiv(K, group) or s.shape[0] != M:
        raise ValueError(f"{M}x{K} int8 rows in groups of {group} take [{M}, {cdiv(K, group)}] scales, got "
                         f"{list(s.shape)}")
    c = dict(cfg or group_tiles(128, 128, group))
    if c["BLOCK_K"] != group:
        raise ValueError(f"the consumer's BLOCK_K is the group ({group}), got {c['BLOCK_K']}")
    out = torch.empty((M, N), device=q.device, dtype=out_dtype)
    if M == 0 or N == 0:
        return out
    grid = (cdiv(M, c["BLOCK_M"]) * cdiv(N, c["BLOCK_N"]),)
    x_desc = host_desc(q, [c["BLOCK_M"], group])  # (aligned: _contiguous_int8)
    w_desc = host_desc(wq, [c["BLOCK_N"], group])
    _group_scaled_in_kernel[grid](x_desc, w_desc, s, ws, b if b is not None else ws, out, M, N, K, n_groups,
                                  HAS_BIAS=b is not None, ACT=_epilogue_act(act, q.device),
                                  RTNE_BF16=rtne_bf16(out_dtype), **c)
    return out


def group_quant_ref(y: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``int8_linear_group_out`` writes for the fp32 output ``y``, in PyTorch: q [M, N] and scales
    [M, cdiv(N, group)] per row and group of ``group`` columns (``symmetric_int8``'s rounding)."""
    M, N = y.shape
    q, scale = symmetric_int8(torch.nn.functional.pad(y, (0, cdiv(N, group) * group - N)).view(M, -1, group), (2,))
    return q.view(M, -1)[:, :N], scale.view(M, -1)


# --- weight quantization and its cache ----------------------------------------------------------------


def symmetric_int8(x: torch.Tensor, dims: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 of ``x`` with one scale per slice reduced over ``dims``: (q int8 of x's shape, fp32
    scales with ``dims`` kept as size 1), rounding half away from zero. A zero slice gets scale 0 and q 0; a
    slice with NaN/Inf gets scale NaN and q 0 (its outputs are NaN, as in float). In ATen ops: the weight
    quantizer, and the activation quantizers that Inductor fuses into the producing kernel."""
    # Written for the kernel Inductor fuses it into (a LayerNorm's, at bert-base's 16384x768 on the H200:
    # 25.9 us a call against 35.5 for the first form, which found NaN/Inf by a second reduction, zeroed them
    # with nan_to_num and rounded as sign * floor(|v| + 0.5) with a clamp; scripts/quant_fusion_probe.py,
    # same values bit for bit). A slice holds NaN/Inf exactly when its abs-max is not finite (max propagates
    # NaN in eager and Inductor alike).
    xf = x.float()
    amax = xf.abs().amax(dim=dims, keepdim=True)
    finite = torch.isfinite(amax)
    amax = torch.where(finite, amax, torch.zeros_like(amax))
    # tensor / tensor: a python scalar / tensor is computed as scalar * (1 / tensor), rounded twice
    inv = torch.where(amax > 0, torch.full_like(amax, QMAX) / amax, torch.zeros_like(amax))
    v = torch.where(finite, xf * inv, torch.zeros_like(xf))
    # half away from zero; |v| <= 127 (up to an ulp, which rounds to 127 all the same): no clamp. The cast
    # truncates toward zero (C's conversion, PTX cvt.rzi): no torch.trunc before it, which Inductor compiles
    # to a second conversion an element (FRND, at a quarter of the FP32 rate on sm_90, as F2I is)
    q = (v + torch.copysign(torch.full_like(v, 0.5), v)).to(torch.int8)
    return q, torch.where(finite, amax / QMAX, torch.full_like(amax, float("nan")))


def quantize_weight(w: torch.Tensor, group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 of a float [N, K] weight -> (wq [N, K] int8 contiguous, ws fp32 scales); a conv weight
    [N, C, KH, KW] gives a channels_last int8 weight.

    ``group`` 0: one scale per output channel, ws [N]. ``group`` G (a [N, K] weight with K > G): one scale per
    output channel and run of G values along K, ws [cdiv(K, G), N] (a group's scales side by side, as the
    kernels read them); with K <= G that is one scale per channel, and ws is [N].

    A zero channel (group) gets scale 0; one with NaN/Inf gets scale NaN (its output column is NaN, as in
    float). Reads ``w`` only.

    Example::

        >>> wq, ws = quantize_weight(torch.randn(64, 128))
        >>> (wq.float() * ws[:, None]).sub(w).abs().max() <= ws.max() / 2
    """
    group = _grouping(w, group)
    if group:
        N, K = w.shape
        ng = cdiv(K, group)
        wp = torch.nn.functional.pad(w.detach(), (0, ng * group - K))  # zeros: they leave the last amax as is
        q, ws = symmetric_int8(wp.reshape(N, ng, group), (2,))
        return q.reshape(N, ng * group)[:, :K].contiguous(), ws.reshape(N, ng).t().contiguous()
    q, ws = symmetric_int8(w.detach(), tuple(range(1, w.dim())))  # a conv weight: one scale per Cout too
    # [N, K] row-major; a conv weight channels_last (the implicit GEMM reads channels innermost)
    q = q.contiguous(memory_format=torch.channels_last) if w.dim() == 4 else q.contiguous()
    ws = ws.reshape(-1).contiguous()
    return q, ws


def _grouping(w: torch.Tensor, group: int) -> int:
    # K groups only for a [N, K] weight with more than one group: otherwise one scale per channel is the same
    return group if group and w.dim() == 2 and w.shape[1] > group else 0


def dequantize_weight(wq: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
    """The fp64 [N, K] weight that ``(wq, ws)`` from ``quantize_weight`` of a 2-D weight stand for."""
    N, K = wq.shape
    g = scale_group(wq, ws)
    s = ws.double().reshape(-1, N).t().repeat_interleave(g, dim=1)[:, :K] if g else ws.double()[:, None]
    return wq.double() * s


def scale_group(wq: torch.Tensor, ws: torch.Tensor) -> int:
    """The K group of an int8 [N, K] weight's scales: 0 for one per channel (ws [N]), G (one of
    ``WONLY_GROUPS``) for ws [cdiv(K, G), N] (what ``quantize_weight(w, G)`` gives where K > G)."""
    N, K = wq.shape
    if ws.numel() == N:
        return 0
    for g in WONLY_GROUPS:
        if K > g and ws.numel() == cdiv(K, g) * N:
            return g
    raise ValueError(f"int8 weight {tuple(wq.shape)}: {ws.numel()} scales are neither one per output channel "
                     f"({N}) nor one per channel and K group of {' or '.join(map(str, WONLY_GROUPS))}")


NOISE_CHUNK = 1 << 24  # quant_noise works in fp64 on this many weight values at a time


def quant_noise(w: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor) -> float:
    """||w - dequantized||^2 / ||w||^2: the layer's noise-to-signal power on isotropic input (0 for a zero
    weight, NaN where w holds NaN/Inf). Summed over row blocks in fp64, so that a large weight's fp64 copies
    (3 x 470 MB for 14336x4096) are never made whole on the GPU."""
    N, K = wq.shape
    scales = ws.reshape(-1, N)  # [1 or groups, N]
    rows = max(1, NOISE_CHUNK // max(K, 1))
    signal = noise = 0.0
    for r in range(0, N, rows):
        w64 = w[r:r + rows].detach().double()
        deq = dequantize_weight(wq[r:r + rows], scales[:, r:r + rows].reshape(-1))
        signal += w64.pow(2).sum().item()
        noise += (deq - w64).pow(2).sum().item()
    return noise / signal if signal > 0 else (0.0 if noise == 0 else math.inf)


def layer_group(ws: list, mode: str) -> int:
    """The K group of the scales one layer's weights (one, or a gated layer's two) are quantized with in
    ``mode``: in ``int8-weight`` (every call weight-only) 0 (one per channel) where that keeps the layer at
    ``WONLY_MIN_DB`` on isotropic input, else the first of ``WONLY_GROUPS`` that does (or the last); decided
    once per weight version (``weight_cache``). In ``int8`` mode always 0: W8A8 calls and the decode calls
    that read the same weights weight-only take one scale per channel."""
    if mode != "int8-weight":
        return 0
    return weight_cache.layer_group(ws)


# storage id -> (weakref to the storage, weakref to the one Parameter living in it), for the compiled graphs'
# parameters (``note_weight_sources``): Inductor hands an op a weight read through a view (a Conv1D's [K, N]
# weight transposed, a fused [gate | up] projection's halves) as a ``reinterpret_tensor`` alias, which has no
# ``_base`` and counts its own versions from 0; its parameter is found through the storage they share
_sources: dict = {}


def note_weight_sources(tensors) -> None:
    """Record the Parameters among a compiled graph's inputs (the backend calls this with Dynamo's real inputs)
    as the owners of their storage, so the int8 copy of a weight read through an alias of one is cached against
    that Parameter's version counter. A storage that two Parameters share (tied through ``.data``) is noted for
    neither: its aliases are quantized on each call."""
    seen: dict = {}
    for t in tensors:
        if isinstance(t, torch.nn.Parameter) and t._base is None:
            try:
                st = t.untyped_storage()
            except (RuntimeError, NotImplementedError, TypeError):
                continue
            seen.setdefault(id(st), (st, set()))[1].add(t)
    for sid, (st, params) in seen.items():
        got = _sources.get(sid)
        if got is not None and got[0]() is st and got[1]() is not None:
            params.add(got[1]())  # noted by an earlier compile
        if len(params) != 1:
            _sources.pop(sid, None)
            continue
        _sources[sid] = (weakref.ref(st, functools.partial(_forget_source, sid)), weakref.ref(next(iter(params))))


def _forget_source(sid: int, ref: weakref.ref) -> None:
    got = _sources.get(sid)
    if got is not None and got[0] is ref:
        del _sources[sid]


def _owner(w: torch.Tensor) -> torch.Tensor:
    """The tensor whose version counter tells of updates to ``w``: the base ``w`` views, the noted Parameter
    whose storage an alias ``w`` lives in, or ``w`` itself."""
    if w._base is not None:
        return w._base
    if _sources and not isinstance(w, torch.nn.Parameter):
        try:
            st = w.untyped_storage()
        except (RuntimeError, NotImplementedError, TypeError):
            return w
        got = _sources.get(id(st))
        if got is not None and got[0]() is st:
            p = got[1]()
            if p is not None and p.untyped_storage() is st:
                return p
    return w


def _watch(w: torch.Tensor, callback=None) -> Optional[tuple]:
    """Weak references to what keeps a cached copy of ``w`` valid: its owner (``_owner``: the tensor whose
    version counter tells of its updates) and the storage it lives in (torch keeps one Python object per
    storage while the storage lives, torch >= 2.1). None where ``w`` has no storage (a tensor subclass)."""
    try:
        return weakref.ref(_owner(w), callback), weakref.ref(w.untyped_storage(), callback)
    except (RuntimeError, NotImplementedError, TypeError):
        return None


def _still(refs, w: torch.Tensor, owner: Optional[torch.Tensor] = None) -> bool:
    """Whether ``w`` is what ``refs`` (``_watch``) were made for: the same owner (``owner``, where the caller
    has it: ``_owner(w)``), so the same version counter (an alias Inductor makes with ``reinterpret_tensor``
    counts its own versions from 0, blind to updates of the parameter, unless its parameter was noted), in
    the same storage (the owner moved to new memory, ``model.double()``, leaves its old address free for
    another tensor)."""
    try:
        return refs[0]() is (owner if owner is not None else _owner(w)) and refs[1]() is w.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def _watch_all(ts: list, callback) -> Optional[tuple]:
    # ``_watch``'s pairs of each of ``ts`` side by side, or None where one has no storage to watch
    watched = [_watch(t, callback) for t in ts]
    return None if any(r is None for r in watched) else tuple(r for pair in watched for r in pair)


def _all_still(refs: tuple, ts: list) -> bool:
    # ``_still`` for each of ``ts`` and its pair of ``_watch_all``'s ``refs``
    return all(_still(refs[2 * i:2 * i + 2], t) for i, t in enumerate(ts))


class _WeightCache:
    """float weight -> (int8 weight, fp32 scales), quantized on first use and again after an in-place update;
    and a weight-only layer's weights -> the K group of their scales (``layer_group``), decided likewise."""

    def __init__(self):
        # reentrant: an entry's weakref callback (_drop) takes it, and the garbage collector may run one on
        # this thread inside a locked region (an allocation there starting a collection): a plain Lock hung
        self._lock = threading.RLock()
        self._entries: dict[tuple, tuple] = {}
        self._groups: dict[tuple, tuple] = {}  # the weights' keys -> (their versions, weakrefs, K group)
        self.quantizations = 0  # how many times a weight was (re)quantized, for tests

    @staticmethod
    def _key(w: torch.Tensor, group: int) -> tuple:
        return (w.data_ptr(), tuple(w.shape), tuple(w.stride()), w.dtype, w.device, group)

    @staticmethod
    def _version(w: torch.Tensor, owner: Optional[torch.Tensor] = None) -> Optional[int]:
        # of its owner's counter (the same as w's but for a noted Parameter's alias; ``owner``: _owner(w), where
        # the caller has it); inference tensors track no version: they cannot change outside inference mode
        w = owner if owner is not None else _owner(w)
        return None if w.is_inference() else w._version

    def get(self, w: torch.Tensor, group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(wq, ws) of ``w`` as ``quantize_weight(w, group)`` gives them."""
        group = _grouping(w, group)
        got = self._lookup(w, group)
        if got is not None:
            return got
        with torch.no_grad():
            wq, ws = quantize_weight(w, group)
        return self._put(w, group, wq, ws)

    def _lookup(self, w: torch.Tensor, group: int) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        with self._lock:
            entry = self._entries.get(self._key(w, group))
        if entry is None:
            return None
        owner = _owner(w)  # once: every call of an int8 op looks its weights up here
        if entry[0] != self._version(w, owner) or not _still(entry[1], w, owner):
            return None
        return entry[2:]

    def _put(self, w, group: int, wq, ws) -> tuple[torch.Tensor, torch.Tensor]:
        key = self._key(w, group)
        refs = _watch(w, functools.partial(self._drop, self._entries, key))
        if refs is None:  # no storage of its own to watch (a tensor subclass): quantized on every call
            return wq, ws
        with self._lock:
            self._entries[key] = (self._version(w), refs, wq, ws)
            self.quantizations += 1
        return wq, ws

    def layer_group(self, ws: list) -> int:
        key = tuple(self._key(w, None) for w in ws)
        versions = tuple(self._version(w) for w in ws)
        with self._lock:
            entry = self._groups.get(key)
        if entry is not None and entry[0] == versions and _all_still(entry[1], ws):
            return entry[2]
        limit = 10 ** (-WONLY_MIN_DB / 10)
        with torch.no_grad():
            for group in (0, *WONLY_GROUPS):
                qs = [self._lookup(w, _grouping(w, group)) or quantize_weight(w, group) for w in ws]
                if sum(quant_noise(w, *q) for w, q in zip(ws, qs)) <= limit:
                    break
        for w, q in zip(ws, qs):  # the chosen quantization serves the calls (the others are not kept)
            if self._lookup(w, _grouping(w, group)) is None:
                self._put(w, _grouping(w, group), *q)
        refs = _watch_all(ws, functools.partial(self._drop, self._groups, key))
        if refs is not None:
            with self._lock:
                self._groups[key] = (versions, refs, group)
        return group

    def _drop(self, store: dict, key: tuple, ref: weakref.ref) -> None:
        # a float tensor died: forget what was kept for it unless a newer entry took the key
        with self._lock:
            entry = store.get(key)
            if entry is not None and any(r is ref for r in entry[1]):  # entries hold a tuple of weakrefs
                del store[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._groups.clear()

    def __len__(self) -> int:
        return len(self._entries)


weight_cache = _WeightCache()
registry.on_reset(weight_cache.clear)


# --- launchers ----------------------------------------------------------------------------------------


def int8_unsupported(x, w, b, act: str, mode: str, wu=None, bu=None) -> Optional[str]:
    """Why the int8 ops cannot serve ``act(x @ w.T + b)`` (or the gated MLP when ``wu`` is given), or None.

    Reads only shape, dtype, device and strides, so ``x`` may be a FakeTensor.

    Args:
        x: [M, K] activations; w: [N, K] float weight; b: [N] or None; act: activation name;
        mode: ``int8`` or ``int8-weight``; wu, bu: the gated MLP's up projection and its bias.
    """
    gated = wu is not None
    if mode not in MODES:
        return f"quantization mode {mode!r} not supported (supported: {', '.join(MODES)})"
    acts = GATED_ACTIVATIONS if gated else ACTIVATIONS
    if act not in acts:
        return f"activation {act!r} not supported by the int8 kernels (supported: {', '.join(acts)})"
    if x.dim() != 2:
        return f"x must be 2-D, got {x.dim()}-D"
    if x.dtype not in X_DTYPES:
        return f"int8 kernels take fp16/bf16 activations, got {x.dtype}"
    K = x.shape[1]
    if K == 0:
        return "K=0: nothing to quantize"
    if K % 16:
        return f"K={K} is not a multiple of 16 (int8 rows must be 16-byte aligned)"
    for name, t in (("w", w), ("wu", wu)):
        if t is None:
            continue
        if t.dim() != 2 or t.shape[1] != K:
            return f"{name} has shape {tuple(t.shape)}, expected [N, {K}]"
        if t.dtype not in W_DTYPES:
            return f"{name} dtype {t.dtype} is not a float weight"
        if t.device != x.device:
            return "operands on different devices"
    N = w.shape[0]
    if gated and tuple(wu.shape) != tuple(w.shape):
        return f"gate {tuple(w.shape)} and up {tuple(wu.shape)} projections differ in shape"
    if gated and (b is None) != (bu is None):
        return "gate and up projections must both have a bias or neither"
    for name, t in (("b", b), ("bu", bu)):
        if t is None:
            continue
        if t.dim() != 1 or t.shape[0] != N:
            return f"{name} has shape {tuple(t.shape)}, expected [{N}]"
        if t.dtype not in W_DTYPES or t.device != x.device:
            return f"{name}: unsupported dtype {t.dtype} or device {t.device}"
    return registry.device_unsupported(x.device)


def uses_weight_only(M: int, mode: str) -> bool:
    return mode == "int8-weight" or M <= DECODE_M


def fused_quant(M, mode: str) -> bool:
    """Whether a W8A8 site's activations are quantized in the graph (``quant_rows_ref`` in ATen ops, which
    Inductor fuses into the kernel that produces them: the norm, the previous activation) and fed to the
    ``*_prequant`` ops, rather than by the standalone quant kernel inside ``int8_linear``. Needs a static M
    (the W8A8 / weight-only split is decided per M)."""
    return mode == "int8" and isinstance(M, int) and not uses_weight_only(M, mode)


def int8_kernel_name(M: int, mode: str, gated: bool, fused: bool = True) -> str:
    """The kernel a layer with M rows gets in ``mode``, for the report (e.g. ``int8_w8a8[gated_mlp]``);
    ``fused``: a W8A8 layer's rows are quantized by their producer (the graph), not in its op."""
    what = "gated_mlp" if gated else "linear"
    if mode == "int8-weight":
        return f"int8_weight_only[{what}]"
    if not isinstance(M, int):  # a dynamic graph's rows: the op picks per call
        return f"int8_w8a8[{what},weight-only at M<={DECODE_M}]"
    if M <= DECODE_M:
        return f"int8_weight_only[{what},M<={DECODE_M}]"
    return f"int8_w8a8[{what}" + (",fused quant]" if fused and fused_quant(M, mode) else "]")


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _tma_ok(xq: torch.Tensor) -> bool:
    """The TMA kernel: Hopper or newer, host descriptors available, xq rows 16-byte aligned. Calls traced for
    inlining into Inductor's code run the pointer kernel (host descriptors cannot be traced)."""
    if TensorDescriptor is None or registry.interpret_mode() or xq.device.type != "cuda" or inline.active():
        return False
    if capability(xq.device)[0] < 9:
        return False
    return xq.stride(1) == 1 and xq.stride(0) * xq.element_size() % 16 == 0 and xq.data_ptr() % 16 == 0


_tma_failed: Optional[str] = None


def _disable_tma(e: Exception) -> None:
    global _tma_failed
    _tma_failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    warnings.warn(f"tritonfuse: the int8 TMA kernel failed ({_tma_failed}); using the pointer kernel", stacklevel=3)


# values one quantization program (one row) holds: rows of up to this many values are read once (a
# BERT/ViT MLP's 3072). On the H200, 16384x3072 fp16 took 67 us read twice and 62 us read once; four rows
# of 768 to a program took 39 us against 26 for one. A row read once takes 4 warps (42nd session, H200,
# 16384x3072 with the conversion rounding: 38.4 us against 43.1 with 8; scripts/quant_rows_probe.py); rows
# read twice keep 8
QUANT_BLOCK = 4096


def quant_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token int8: x [M, K] (any strides) -> (xq [M, K] int8 contiguous, xs [M] fp32 with x ≈ xq * xs)."""
    M, K = x.shape
    xq = torch.empty((M, K), device=x.device, dtype=torch.int8)
    xs = torch.empty((M,), device=x.device, dtype=torch.float32)
    if M == 0:
        return xq, xs
    block = min(next_pow2(max(K, 16)), QUANT_BLOCK)
    registry.launcher(_quant_rows_kernel)[(M,)](x, xq, xs, K, x.stride(0), x.stride(1), xq.stride(0),
                                                BLOCK_K=block, ONE_PASS=K <= block,
                                                MAGIC=magic_rounding(x.device), num_warps=4 if K <= block else 8)
    return xq, xs


def device_tma_serves(xq, wq, wuq=None) -> bool:
    """Whether the device-descriptor TMA kernel serves these operands (what a W8A8 call traced for inlining
    runs): Hopper or newer, a Triton with device descriptors, each operand a row-major matrix whose rows and
    start are 16-byte aligned in its storage (shapes and strides only: a traced call has no data pointers)."""
    if not (_HAS_DEVICE_TMA and INLINE_DEVICE_TMA and xq.device.type == "cuda" and not registry.interpret_mode()):
        return False
    return capability(xq.device)[0] >= 9 and _device_tma_layout(xq, wq, wuq)


def _device_tma_layout(xq, wq, wuq) -> bool:
    K = xq.shape[1]
    return K % 16 == 0 and all(t.stride(1) == 1 and t.stride(0) == K and t.storage_offset() % 16 == 0
                               for t in (xq, wq, wuq) if t is not None)


def _w8a8(xq, xs, wq, ws, b, act, out_dtype, wuq=None, wus=None, bu=None, use_tma=None, amax=None):
    """Launch the W8A8 GEMM on pre-quantized operands; ``use_tma`` None picks the TMA kernel where it runs
    (host descriptors for an op call, device descriptors for a call traced for inlining), ``"device"``
    forces the device-descriptor kernel (the tests, and timing what an inlined call will run).

    ``xq`` fp16/bf16 instead of int8: quantized per row as it is loaded, ``xs`` then holds its rows' abs-max
    (``quant_rows`` quantizes the same values to the same bits). ``amax``: an [M] int32 zeroed buffer that
    receives the output rows' abs-max (as fp32 bits) for the next GEMM to quantize them on load."""
    M, K = xq.shape
    N = wq.shape[0]
    if ws.numel() != N:
        raise ValueError(f"W8A8 takes one weight scale per output channel ({N}), got {ws.numel()}")
    out = torch.empty((M, N), device=xq.device, dtype=out_dtype)
    if M == 0 or N == 0:
        return out
    if use_tma == "device" or (use_tma is None and inline.active() and device_tma_serves(xq, wq, wuq)):
        return _launch_device_tma(xq, xs, wq, ws, b, act, out, wuq, wus, bu, amax)
    auto = use_tma is None
    if auto:
        use_tma = _tma_failed is None and _tma_ok(xq)
    if use_tma:
        dummy = [16, 16]  # real boxes are set per config by _tma_block_hook
        w_desc = host_desc(wq, dummy)
        u_desc = host_desc(wuq, dummy) if wuq is not None else w_desc
        grid, rest, kwargs = _tma_launch(xq, xs, wq, ws, b, act, out, wuq, wus, bu, amax)
        try:
            registry.launcher(_w8a8_tma_kernel)[grid](host_desc(xq, dummy), w_desc, u_desc, *rest, **kwargs)
            return out
        except Exception as e:  # a Triton build without working TMA: the pointer kernel serves from now on
            if not auto or not config.fallback_enabled():
                raise
            _disable_tma(e)
    return _launch_pointer(_w8a8_kernel, xq, xs, wq, ws, b, act, out, wuq, wus, bu, w8a8=True, amax=amax)


# The kernels that quantize activations (the row kernel, x quantized on load) round with PTX rounding modes on
# a GPU (_trunc_int8_magic), not with a float-to-int conversion: off, the conversion form (what the
# interpreter runs). The same int8 values either way
MAGIC_ROUNDING = True


def magic_rounding(device: torch.device) -> bool:
    # (PTX: an NVIDIA GPU outside the interpreter, as the tanh epilogues need)
    return MAGIC_ROUNDING and fast_tanh_ok(device)


def _qload_mode(x: torch.Tensor) -> int:
    """The QLOAD constexpr of a W8A8 launch on ``x``: 0 (int8 x), 1 (fp16/bf16 x quantized on load with the
    conversion instruction), 2 (with rounding-mode adds: ``magic_rounding``)."""
    if x.dtype == torch.int8:
        return 0
    return 2 if magic_rounding(x.device) else 1


# int8 mode's GELU epilogues (exact "gelu" and HF's "gelu_tanh") as the tanh form on the GPU's approximate
# tanh (kernels.common's "gelu_fast"): 8 instructions an element, one of them a special-function op, where the
# exact form takes 24 with two. An int8 GEMM at BERT's K=768 spends as long in its epilogue as in its main
# loop: H200, scripts/int8_gemm_probe.py --shapes 16384x3072x768 --act gelu[_fast] --bias --dtype float16
# (38th session), 0.156-0.171 ms with the exact GELU, 0.101-0.118 with this one, 0.089-0.093 with no
# activation; cuBLASLt's fp16 GEMM + GELU took 0.134. The tanh form differs from the erf GELU by at most
# 4.7e-4 (at x = -2.7), tanh.approx adds 2^-11 relative: far below int8's own error (the layer gates ask
# 35 dB, an error of 1.8% of the output's RMS).
FAST_GELU = True


def _epilogue_act(act: str, device: torch.device) -> str:
    """The ACT constexpr an int8 kernel is launched with for ``act`` on ``device``."""
    if FAST_GELU and act in ("gelu", "gelu_tanh") and fast_tanh_ok(device):
        return "gelu_fast"
    return act


def _tma_launch(xq, xs, wq, ws, b, act, out, wuq, wus, bu, amax=None) -> tuple:
    """The grid, the arguments after the three operands (descriptors or pointers) and the constexprs of a
    launch of either TMA kernel."""
    M, K = xq.shape
    N = wq.shape[0]
    gated = wuq is not None
    has_bias = b is not None
    progs = _num_sms(xq.device.index or 0) if xq.device.type == "cuda" else 4

    def grid(meta):
        tiles = cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"])
        return (min(tiles, progs) if meta["PERSISTENT"] else tiles,)

    rest = (xs, ws, b if has_bias else ws, wus if gated else ws, bu if (gated and has_bias) else ws, out,
            amax if amax is not None else ws, M, N, K, _m_bucket(M), out.stride(0), out.stride(1))
    return grid, rest, dict(HAS_BIAS=has_bias, ACT=_epilogue_act(act, out.device), GATED=gated,
                            RTNE_BF16=rtne_bf16(out.dtype), QLOAD=_qload_mode(xq), ROW_AMAX=amax is not None,
                            WS_OK=_ws_serves(out.device))


def _launch_device_tma(xq, xs, wq, ws, b, act, out, wuq, wus, bu, amax=None):
    grid, rest, kwargs = _tma_launch(xq, xs, wq, ws, b, act, out, wuq, wus, bu, amax)
    args = (xq, wq, wuq if wuq is not None else wq, *rest)
    if inline.active():  # traced into Inductor's graph, which provides the descriptors' scratch memory
        registry.launcher(_w8a8_device_tma_kernel)[grid](*args, **kwargs)
        return out
    # timed for the measured choice (or a test): Triton's own launch, with a scratch allocator; the config
    # it chooses is kept for the inlined call to take
    launch.precompile_for(_w8a8_device_tma_kernel, grid, args, kwargs)  # (its configs side by side)
    with scratch_allocator(xq.device):
        _w8a8_device_tma_kernel[grid](*args, **kwargs)
    tuning.save(_w8a8_device_tma_kernel, args, kwargs)
    return out


def _weight_only(x, wq, ws, b, act, wuq=None, wus=None, bu=None):
    """``act(x @ W.T + b)`` (times ``x @ Wu.T + bu`` when gated) for int8 weights ``(wq, ws)`` as
    ``quantize_weight`` makes them, with one scale per channel or per channel and K group."""
    group = scale_group(wq, ws)
    if wuq is not None and scale_group(wuq, wus) != group:
        raise ValueError("the gate's and the up projection's weights are quantized in different groups")
    out = torch.empty((x.shape[0], wq.shape[0]), device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    if x.shape[0] <= DECODE_M and x.shape[1] > 0:
        return _launch_decode(x, wq, ws, b, act, out, wuq, wus, bu, group)
    return _launch_pointer(_wonly_kernel, x, ws, wq, ws, b, act, out, wuq, wus, bu, w8a8=False, group=group)


@functools.lru_cache(maxsize=None)
def _most_splits(N: int, K: int) -> int:
    return max(c.kwargs["SPLIT_K"] for c in _prune_decode(_DECODE_CONFIGS, {"N": N, "K": K}))


_buffers: dict = {}  # (device, stream) -> (partials workspace, tile counters)
# device -> the workspace and counters that CUDA graph captures use: allocated (and zeroed) outside any
# capture, by the eager calls that precede one (cudagraph trees and graph benchmarks warm up eagerly first)
_graph_buffers: dict = {}
# buffers outgrown by a larger layer: a CUDA graph captured with them may still replay them, so they are
# never freed (a few, of at most a few MB each)
_retired: list = []


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _fits(got, floats: int, tiles: int) -> bool:
    return got is not None and got[0].numel() >= floats and got[1].numel() >= tiles


def _decode_buffers(device: torch.device, floats: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The decode kernel's fp32 partials workspace and its zeroed int32 column-tile counters.

    Eager calls use buffers kept per GPU and stream: launches on one stream run one after another (each
    leaves the counters at zero again), and two streams never share them. Calls captured into CUDA graphs
    use one pair per GPU, made by the eager calls before the capture, so a captured decode step adds no
    memset per layer to every replay (1.2 us a call at 16x4096x4096 on the H200): replays of graphs on one
    GPU must then not overlap on two streams (cudagraph trees replay on one). A call first seen inside a
    capture gets buffers of its own, zeroed by the graph on each replay."""
    cuda = device.type == "cuda"
    if cuda and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if _capturing(device):
        got = _graph_buffers.get(device)
        if _fits(got, floats, tiles):
            return got
        return _new_buffers(device, floats, tiles, None)  # the memory belongs to the graph's pool: not kept
    key = (device, torch._C._cuda_getCurrentRawStream(device.index) if cuda else 0)
    got = _buffers.get(key)
    if not _fits(got, floats, tiles):
        got = _keep(_buffers, key, _new_buffers(device, floats, tiles, got))
    if cuda and not _fits(_graph_buffers.get(device), floats, tiles):
        _keep(_graph_buffers, device, _new_buffers(device, floats, tiles, _graph_buffers.get(device)))
    return got


def _new_buffers(device, floats: int, tiles: int, old) -> tuple[torch.Tensor, torch.Tensor]:
    old = old or (torch.empty(0), torch.empty(0))
    return (torch.empty(max(floats, old[0].numel()), device=device, dtype=torch.float32),
            torch.zeros(max(tiles, old[1].numel(), 1024), device=device, dtype=torch.int32))


def _keep(store: dict, key, got):
    if key in store:
        _retired.append(store[key])
    store[key] = got
    return got


def _launch_decode(x, wq, ws, b, act, out, wuq, wus, bu, group: int = 0):
    M, K = x.shape
    N = wq.shape[0]
    gated = wuq is not None
    u = wuq if gated else wq
    # the partial sums' workspace, for the most splits a config may use here, and the counters
    splits = _most_splits(N, K)
    part, count = _decode_buffers(x.device, (2 if gated else 1) * splits * 16 * N if splits > 1 else 1,
                                  cdiv(N, 16))
    args = (x, wq, ws, b if b is not None else ws, u, wus if gated else ws, bu if (gated and b is not None) else ws,
            out, part, count, M, N, K, _m_bucket(M),
            x.stride(0), x.stride(1), wq.stride(0), wq.stride(1), u.stride(0), u.stride(1),
            out.stride(0), out.stride(1))
    kwargs = dict(HAS_BIAS=b is not None, ACT=_epilogue_act(act, x.device), GATED=gated, DOT_UPCAST=dot_upcast(x.dtype),
                  RTNE_BF16=rtne_bf16(out.dtype), GROUP_K=group)
    _tune_decode(args, kwargs)
    registry.launcher(_decode_kernel)[_decode_grid(N)](*args, **kwargs)
    return out


def _decode_grid(N: int):
    return lambda meta: (cdiv(N, meta["BLOCK_N"]), meta["SPLIT_K"])


COLD_BYTES = 256 << 20  # weight copies cycled through when timing decode configs: 5x the H100/H200's L2
# at most this many copies (and launches per timed call): a small weight (a 64x24 layer is 1.5 kB) would
# otherwise take 10^5 copies, and timing 9 configs over them took minutes per layer shape. Below
# COLD_BYTES / COLD_COPIES (512 kB) the copies do not leave L2, which is where such a layer's weight
# stays in a real decode step too: its call is bound by launch latency, not by reading the weight
COLD_COPIES = 512
_tuned: set = set()  # launches (device, dtype, M bucket, N, K, flags) whose config is settled


def cold_copies(weight_bytes: int) -> int:
    """How many copies of a weight of this many bytes the decode configs are timed over."""
    return min(COLD_COPIES, max(2, math.ceil(COLD_BYTES / max(weight_bytes, 1))))


def _tune_decode(args: tuple, kwargs: dict) -> None:
    """Choose the decode kernel's config for this launch the way decode runs: with the weight read from DRAM.

    In a decode step each layer's weight is read once per token and was evicted from L2 since; timed by
    replaying one call, a weight of up to a few tens of MB is read from L2 instead, and the choice differs
    (on the H200 at 16x4096x4096, Triton's autotuner chose configs that took 10.1-10.3 us with the weight
    cold, against 8.7 us for the best; ``scripts/wonly_probe.py``). So each config is timed from a CUDA
    graph that cycles through copies of the weight, COLD_BYTES in all, one per call. The choice goes where
    the autotuner keeps its own (in memory and on disk, ``tritonfuse.tuning``), so the launch uses it and a
    later process does not time again. Skipped where there is nothing to choose, under the interpreter, and
    inside a CUDA graph capture (the autotuner then decides, as before)."""
    tuner = _decode_kernel
    x, wq, u = args[0], args[1], args[4]
    N, K = args[11], args[12]
    gated = kwargs["GATED"]
    seen = (x.device, x.dtype, args[13], N, K, *kwargs.values())
    if seen in _tuned:  # every later call: one set lookup of host time
        return
    if registry.probing():
        # a probe checks that the kernel compiles and runs: its toy shape's launch takes the first config
        # and settles nothing (timing configs there cost compiles and time for a shape no model has)
        first = _prune_decode(tuner.configs, {"N": N, "K": K})[0]
        tuner.cache.setdefault(tuning.tuning_key(tuner, args, kwargs), first)
        return
    if _capturing(x.device):
        return  # nothing can be timed here; a later call outside the capture chooses
    _tuned.add(seen)
    if len(tuner.configs) < 2 or registry.interpret_mode() or x.device.type != "cuda":
        return
    if tuning.restore(tuner, args, kwargs) is not None:
        return
    configs = _prune_decode(tuner.configs, {"N": N, "K": K})
    if len(configs) > 1:
        try:
            configs = [_best_cold(configs, args, kwargs, wq, u if gated else None, N)]
        except Exception as e:  # noqa: BLE001 - out of memory for the copies, a config that fails: the
            # autotuner's own timing decides
            warnings.warn(f"tritonfuse: timing the int8 decode configs with cold weights failed ({e}); "
                          "Triton's autotuner chooses", stacklevel=2)
            return
    tuner.cache[tuning.tuning_key(tuner, args, kwargs)] = configs[0]
    tuning.save(tuner, args, kwargs)


def _best_cold(configs, args, kwargs, wq, wuq, N):
    per = wq.numel() * wq.element_size() * (2 if wuq is not None else 1)
    copies = [(wq.clone(), wuq.clone() if wuq is not None else None) for _ in range(cold_copies(per))]
    grid = _decode_grid(N)
    times = []
    with torch.no_grad():
        for cfg in configs:
            meta = {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}

            def run(meta=meta):
                for w, wu in copies:
                    a = list(args)
                    a[1] = w
                    if wu is not None:
                        a[4] = wu
                    _decode_kernel.fn[grid(meta)](*a, **kwargs, **meta)

            run()  # compiles
            torch.cuda.synchronize()
            times.append(triton.testing.do_bench_cudagraph(run, rep=20) / len(copies))
    return configs[min(range(len(configs)), key=times.__getitem__)]


def _launch_pointer(kernel, x, xs, wq, ws, b, act, out, wuq, wus, bu, w8a8: bool, group: int = 0, amax=None):
    # xs is ignored by the weight-only kernel (any fp32 tensor will do); W8A8 with a float x: quantized on load
    M, K = x.shape
    N = wq.shape[0]
    gated = wuq is not None
    has_bias = b is not None
    u = wuq if gated else wq
    registry.launcher(kernel)[_grid(M, N)](
        x, xs, wq, ws, b if has_bias else ws, u, wus if gated else ws, bu if (gated and has_bias) else ws, out,
        amax if amax is not None else ws, M, N, K, _m_bucket(M),
        x.stride(0), x.stride(1), wq.stride(0), wq.stride(1), u.stride(0), u.stride(1),
        out.stride(0), out.stride(1),
        HAS_BIAS=has_bias, ACT=_epilogue_act(act, x.device), GATED=gated, W8A8=w8a8,
        DOT_UPCAST=not w8a8 and dot_upcast(x.dtype), RTNE_BF16=rtne_bf16(out.dtype), GROUP_K=group,
        QLOAD=_qload_mode(x) if w8a8 else 0, ROW_AMAX=amax is not None,
    )
    return out


def _linear_fake(x, w, b, act, mode):
    return x.new_empty((x.shape[0], w.shape[0]))


@registry.kernel_op("tritonfuse::int8_linear", fake=_linear_fake)
def int8_linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], act: str, mode: str) -> torch.Tensor:
    """``act(x @ w.T + b)`` with an int8 weight (quantized once per weight version, cached).

    Args:
        x: [M, K] fp16/bf16 activations (any strides), K a multiple of 16.
        w: [N, K] float weight (read only; its int8 copy is cached). b: [N] or None.
        act: ``none``, ``relu``, ``gelu``, ``gelu_tanh``, ``silu`` or ``quick_gelu``.
        mode: ``int8`` (W8A8 dynamic; weight-only for M <= 16) or ``int8-weight``.

    Example::

        >>> x, w = torch.randn(37, 128, dtype=torch.float16), torch.randn(77, 128, dtype=torch.float16)
        >>> y = torch.ops.tritonfuse.int8_linear(x, w, None, "gelu", "int8")  # TRITON_INTERPRET=1 on a CPU
    """
    wq, ws = weight_cache.get(w, layer_group([w], mode))
    b = b.contiguous() if b is not None else None  # the epilogue reads biases as dense vectors
    if uses_weight_only(x.shape[0], mode):
        return _weight_only(x, wq, ws, b, act)
    xq, xs = quant_rows(x)
    return _w8a8(xq, xs, wq, ws, b, act, x.dtype)


def _gated_fake(x, wg, wu, bg, bu, act, mode):
    return x.new_empty((x.shape[0], wg.shape[0]))


@registry.kernel_op("tritonfuse::int8_gated_mlp", fake=_gated_fake)
def int8_gated_mlp(
    x: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, bg: Optional[torch.Tensor], bu: Optional[torch.Tensor],
    act: str, mode: str,
) -> torch.Tensor:
    """``act(x @ wg.T + bg) * (x @ wu.T + bu)`` as one int8 dual GEMM (x is quantized once for both).

    Example::

        >>> x = torch.randn(37, 128, dtype=torch.float16)
        >>> wg, wu = torch.randn(77, 128, dtype=torch.float16), torch.randn(77, 128, dtype=torch.float16)
        >>> y = torch.ops.tritonfuse.int8_gated_mlp(x, wg, wu, None, None, "silu", "int8")
    """
    group = layer_group([wg, wu], mode)
    if uses_weight_only(x.shape[0], mode):
        wgq, wgs = weight_cache.get(wg, group)
        wuq, wus = weight_cache.get(wu, group)
        bg, bu = _gate_biases(bg, bu)
        return _weight_only(x, wgq, wgs, bg, act, wuq, wus, bu)
    xq, xs = quant_rows(x)
    return _gated_w8a8(xq, xs, wg, wu, bg, bu, act, x.dtype, group)


def _prequant_fake(xq, xs, w, b, act, out_dtype):
    return xq.new_empty((xq.shape[0], w.shape[0]), dtype=out_dtype)


@registry.kernel_op("tritonfuse::int8_linear_prequant", fake=_prequant_fake)
def int8_linear_prequant(
    xq: torch.Tensor, xs: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], act: str,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """W8A8 ``act((xq * xs) @ w.T + b)`` for activations a producer (e.g. the norm kernel) already quantized.

    Args:
        xq: [M, K] int8, xs: [M] (or [M, 1]) fp32 per-row scales, as ``quant_rows`` returns them.
        w: [N, K] float weight (cached as int8); b: [N] or None; out_dtype: fp16 or bf16.

    Example::

        >>> xq, xs = quant_rows(torch.randn(37, 128, dtype=torch.float16))
        >>> y = torch.ops.tritonfuse.int8_linear_prequant(xq, xs, w, None, "relu", torch.float16)
    """
    wq, ws = weight_cache.get(w)
    b = b.contiguous() if b is not None else None
    return _w8a8(xq, xs.reshape(-1).float().contiguous(), wq, ws, b, act, out_dtype)


def _gated_prequant_fake(xq, xs, wg, wu, bg, bu, act, out_dtype):
    return xq.new_empty((xq.shape[0], wg.shape[0]), dtype=out_dtype)


@registry.kernel_op("tritonfuse::int8_gated_mlp_prequant", fake=_gated_prequant_fake)
def int8_gated_mlp_prequant(
    xq: torch.Tensor, xs: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, bg: Optional[torch.Tensor],
    bu: Optional[torch.Tensor], act: str, out_dtype: torch.dtype,
) -> torch.Tensor:
    """W8A8 ``act((xq * xs) @ wg.T + bg) * ((xq * xs) @ wu.T + bu)`` on activations quantized by their producer.

    Args:
        xq: [M, K] int8, xs: [M] (or [M, 1]) fp32 per-row scales, as ``quant_rows`` returns them.
        wg, wu: [N, K] float weights (cached as int8); bg, bu: [N] or None; out_dtype: fp16 or bf16.
    """
    return _gated_w8a8(xq, xs.reshape(-1).float().contiguous(), wg, wu, bg, bu, act, out_dtype)


# --- sibling GEMMs as one: Linears reading the same x (a decoder's q, k and v projections) ------------------
# Per-output-channel weight scales make the int8 weights of sibling Linears stack without re-quantizing: one
# W8A8 GEMM over [wq_1; wq_2; ...] computes every sibling's output, its columns side by side, from one
# quantization of x. At Llama-1B's prefill (8192 x 2048 rows) the 512-wide k and v projections fill two
# waves of tiles badly on their own (int8 lost to cuBLAS there, 0.053 vs 0.047 ms on the H100): stacked
# with q they are 3072 columns. patterns.linear_act.siblings_pass groups them, measured.


class _StackCache:
    """The siblings' int8 weights stacked, kept while every part is the weight cache's current copy (a weight
    updated in place is quantized again there, into a new tensor, and the stack is rebuilt from it)."""

    def __init__(self):
        self._lock = threading.RLock()
        self._entries: dict[tuple, tuple] = {}
        self.stacks = 0  # how many stacks were built, for tests
        self.bias_stacks = 0  # how many stacked biases were built, for tests

    def get(self, ws: list, group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The int8 weights of float weights ``ws`` stacked (the rows of ws[0], then of ws[1], ...) and their
        scales, quantized in K groups of ``group`` (0: one scale per channel, [N]; else [groups, N] each,
        side by side along N)."""
        parts = [weight_cache.get(w, group) for w in ws]
        if len({s.dim() for _, s in parts}) > 1:
            raise ValueError("stacked int8 weights take scales of one kind (per channel, or per K group)")
        key = (group, *(id(q) for q, _ in parts))
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and all(r() is q for r, (q, _) in zip(entry[0], parts)):
            return entry[1], entry[2]
        wq = torch.cat([q for q, _ in parts])
        scales = torch.cat([s for _, s in parts], dim=-1).contiguous()
        refs = tuple(weakref.ref(q, functools.partial(self._drop, key)) for q, _ in parts)
        with self._lock:
            self._entries[key] = (refs, wq, scales)
            self.stacks += 1
        return wq, scales

    def bias(self, ws: list, bs: list) -> Optional[torch.Tensor]:
        """The siblings' biases stacked in fp32 (``_stacked_bias``), kept while each bias is the tensor it was
        made from at the same version: a bias updated in place is stacked again. (Stacked on every call, they
        were four small kernels a layer: bert-base's int8 forward spent 0.11 ms of 6.04 on the casts, H100.)"""
        if all(b is None for b in bs):
            return None
        present = [b for b in bs if b is not None]
        key = ("bias", *(_WeightCache._key(b, None) if b is not None else w.shape[0] for w, b in zip(ws, bs)))
        versions = tuple(_WeightCache._version(b) for b in present)
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry[1] == versions and _all_still(entry[0], present):
            return entry[2]
        stacked = _stacked_bias(ws, bs)
        refs = _watch_all(present, functools.partial(self._drop, key))
        if refs is not None:
            with self._lock:
                self._entries[key] = (refs, versions, stacked)
                self.bias_stacks += 1
        return stacked

    def _drop(self, key: tuple, ref: weakref.ref) -> None:
        # a part died (its weight re-quantized or gone): the stack built from it goes unless a newer one holds the key
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and any(r is ref for r in entry[0]):
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


stack_cache = _StackCache()
registry.on_reset(stack_cache.clear)


def _stacked_bias(ws: list, bs: list) -> Optional[torch.Tensor]:
    # in fp32, which the epilogue computes in: each bias keeps its own values whatever their dtypes
    if all(b is None for b in bs):
        return None
    return torch.cat([b.float().reshape(-1) if b is not None
                      else torch.zeros(w.shape[0], device=w.device, dtype=torch.float32) for w, b in zip(ws, bs)])


def _gate_biases(bg, bu) -> tuple:
    """A gated layer's two biases as the kernels read them: dense, and both or neither (the epilogue adds
    both where it adds one): the one missing is zeros."""
    if (bg is None) != (bu is None):
        b = bg if bg is not None else bu
        bg, bu = (b, torch.zeros_like(b)) if bg is not None else (torch.zeros_like(b), b)
    return (bg.contiguous() if bg is not None else None), (bu.contiguous() if bu is not None else None)


def _gated_w8a8(xq, xs, wg, wu, bg, bu, act, out_dtype, group: int = 0):
    """W8A8 ``act(x @ wg.T + bg) * (x @ wu.T + bu)`` on quantized x, in two accumulators. (One accumulator
    over the gate and up rows interleaved in pairs, split in the epilogue, ran 2.4x slower on the H100: 51st and
    56th sessions, 1.27 against 0.54 ms at llama-1b's 8192 x 2 x 8192 x 2048, triton 3.6.)"""
    bg, bu = _gate_biases(bg, bu)
    wgq, wgs = weight_cache.get(wg, group)
    wuq, wus = weight_cache.get(wu, group)
    return _w8a8(xq, xs, wgq, wgs, bg, act, out_dtype, wuq, wus, bu)


def _siblings_fake(x, xs, ws, bs, act, out_dtype, mode="int8"):
    return x.new_empty((x.shape[0], sum(w.shape[0] for w in ws)), dtype=out_dtype)


@registry.kernel_op("tritonfuse::int8_linear_siblings", fake=_siblings_fake)
def int8_linear_siblings(x: torch.Tensor, xs: Optional[torch.Tensor], ws: list[torch.Tensor],
                         bs: list[Optional[torch.Tensor]], act: str, out_dtype: torch.dtype,
                         mode: str = "int8") -> torch.Tensor:
    """``act(x @ w_i.T + b_i)`` for sibling Linears ``i`` on one x, as one int8 GEMM: the outputs side by
    side, [M, sum of N_i] (sibling i in its columns, in order). W8A8; weight-only where ``int8_linear`` would
    be (``mode`` ``int8-weight``, or M <= DECODE_M: a decode step's q, k and v as one kernel).

    Args:
        x: [M, K] fp16/bf16 activations, quantized here per row (W8A8); or, with ``xs`` given, int8 rows a
            producer quantized (``quant_rows``'s values) and ``xs`` their [M] (or [M, 1]) fp32 scales.
        ws: [N_i, K] float weights (read only; their int8 copies are cached, and stacked once).
        bs: [N_i] biases or None, one per weight. out_dtype: fp16 or bf16 (x's dtype where weight-only).
        mode: ``int8`` or ``int8-weight``, as ``int8_linear`` takes it.

    Example::

        >>> x = torch.randn(37, 128, dtype=torch.float16)
        >>> wq, wk = torch.randn(96, 128, dtype=torch.float16), torch.randn(32, 128, dtype=torch.float16)
        >>> y = torch.ops.tritonfuse.int8_linear_siblings(x, None, [wq, wk], [None, None], "none", torch.float16)
        >>> q, k = y.split([96, 32], dim=1)
    """
    if not ws or len(bs) != len(ws) or any(w.dim() != 2 or w.shape[1] != x.shape[1] for w in ws):
        raise ValueError(f"int8_linear_siblings takes [N, {x.shape[1]}] weights, one bias (or None) each")
    if xs is None and uses_weight_only(x.shape[0], mode):
        groups = {layer_group([w], mode) for w in ws}  # (each layer's own, as int8_linear quantizes it)
        if len(groups) > 1:  # weights quantized in different K groups: one call each
            return torch.cat([int8_linear(x, w, bias, act, mode) for w, bias in zip(ws, bs)], dim=1)
        wq, scales = stack_cache.get(ws, groups.pop())
        return _weight_only(x, wq, scales, stack_cache.bias(ws, bs), act)
    b = stack_cache.bias(ws, bs)
    wq, scales = stack_cache.get(ws)
    if xs is None:
        x, xs = quant_rows(x)
    return _w8a8(x, xs.reshape(-1).float().contiguous(), wq, scales, b, act, out_dtype)


# --- quantize on load: an int8 GEMM's output handed to the next int8 GEMM without a quantization pass -----
# Per-token scales need a whole row's abs-max, which the producing GEMM's tiles hold in pieces: each tile
# max-es its rows' share into [M] with an atomic, and the consuming GEMM quantizes its fp16/bf16 x per row
# as it loads each tile, instead of the row kernel reading x and writing int8 in between. BERT's MLP
# (16384 rows, 768 -> 3072 -> 768, H200, 39th session, scripts/int8_handoff_probe.py): the probe pair took
# 0.205 ms against 0.216-0.221 for W8A8 + GELU, the row kernel and W8A8, and its producer was 0.008 slower
# than the shipped kernel that now does it. patterns.linear_act.qload_pass pairs the sites, measured.


def _amax_fake(x, xs, w, wu, b, bu, act, out_dtype):
    return (x.new_empty((x.shape[0], w.shape[0]), dtype=out_dtype),
            x.new_empty((x.shape[0],), dtype=torch.float32))


@registry.kernel_op("tritonfuse::int8_linear_amax", fake=_amax_fake)
def int8_linear_amax(
    x: torch.Tensor, xs: Optional[torch.Tensor], w: torch.Tensor, wu: Optional[torch.Tensor],
    b: Optional[torch.Tensor], bu: Optional[torch.Tensor], act: str, out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """W8A8 ``y = act(x @ w.T + b)`` (times ``x @ wu.T + bu`` when ``wu`` is given) and each row's abs-max of
    y as written (fp32 [M]; NaN where the row holds a NaN, +inf where it holds an infinity and no NaN), for
    the next GEMM to quantize y as it loads it (``int8_linear_qload``).

    Args:
        x: [M, K] int8 with ``xs`` [M] (or [M, 1]) its row scales, as ``quant_rows`` makes them (quantized by
            the producer), or fp16/bf16 with ``xs`` None (quantized here by the row kernel).
        w, wu: [N, K] float weights (cached as int8, one scale per channel); b, bu: [N] or None;
        act: the activation (gated: of the ``w`` half); out_dtype: fp16 or bf16.

    Example::

        >>> x, w = torch.randn(37, 128, dtype=torch.float16), torch.randn(77, 128, dtype=torch.float16)
        >>> y, amax = torch.ops.tritonfuse.int8_linear_amax(x, None, w, None, None, None, "gelu", torch.float16)
        >>> torch.equal(amax, y.float().abs().amax(dim=1))
    """
    wq, ws = weight_cache.get(w)
    wuq, wus = weight_cache.get(wu) if wu is not None else (None, None)
    b = b.contiguous() if b is not None else None
    bu = bu.contiguous() if bu is not None else None
    if xs is None:
        xq, xs = quant_rows(x)
    else:
        xq, xs = x, xs.reshape(-1).float().contiguous()
    amax = torch.zeros((x.shape[0],), device=x.device, dtype=torch.int32)  # the atomics max into it
    out = _w8a8(xq, xs, wq, ws, b, act, out_dtype, wuq, wus, bu, amax=amax)
    return out, amax.view(torch.float32)


def _qload_fake(h, amax, w, b, act):
    return h.new_empty((h.shape[0], w.shape[0]))


@registry.kernel_op("tritonfuse::int8_linear_qload", fake=_qload_fake)
def int8_linear_qload(h: torch.Tensor, amax: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor],
                      act: str) -> torch.Tensor:
    """W8A8 ``act(h @ w.T + b)`` for fp16/bf16 ``h`` whose rows' abs-max ``amax`` its producer wrote
    (``int8_linear_amax``): each tile of h is quantized per row as the GEMM loads it. The int8 values and
    scales are those ``quant_rows(h)`` makes, so the result is ``int8_linear(h, w, b, act, "int8")``'s,
    without the row kernel's pass over h. ``amax`` must be each row's abs-max (at least): the values are not
    clamped.

    Example::

        >>> y, amax = torch.ops.tritonfuse.int8_linear_amax(x, None, w, None, None, None, "gelu", torch.float16)
        >>> out = torch.ops.tritonfuse.int8_linear_qload(y, amax, w2, b2, "none")
    """
    if h.dim() != 2 or amax.shape != (h.shape[0],):
        raise ValueError(f"int8_linear_qload: h [M, K] with amax [M], got {tuple(h.shape)} and {tuple(amax.shape)}")
    wq, ws = weight_cache.get(w)
    b = b.contiguous() if b is not None else None
    return _w8a8(h, amax.float().contiguous(), wq, ws, b, act, h.dtype)


def mlp_operands(M: int, K: int, N: int, N2: int, dtype: torch.dtype, device, gated: bool, has_bias: bool,
                 has_bias2: bool, x_quantized: bool = True) -> dict:
    """Random operands of [M, K] -> [M, N] (gated: two projections) -> [M, N2], weights scaled so each
    output is of unit size: x, w, wu, b, bu, w2, b2 (None where absent), and xq, xs: x as ``quant_rows``
    quantizes it, or x and None where ``x_quantized`` is off (the first GEMM's op quantizes it)."""
    def r(*shape, scale=1.0):
        return (torch.randn(shape, device=device) * scale).to(dtype)

    o = dict(x=r(M, K), w=r(N, K, scale=K ** -0.5), wu=r(N, K, scale=K ** -0.5) if gated else None,
             b=r(N) if has_bias else None, bu=r(N) if has_bias and gated else None, w2=r(N2, N, scale=N ** -0.5),
             b2=r(N2) if has_bias2 else None)
    o["xq"], o["xs"] = quant_rows(o["x"]) if x_quantized else (o["x"], None)
    return o


def measure_qload(M: int, K: int, N: int, N2: int, dtype: torch.dtype, device: torch.device, act: str,
                  gated: bool, has_bias: bool, x_quantized: bool, act2: str, has_bias2: bool, consumer: str) -> dict:
    """Time a pair of GEMMs with the second quantizing the first's output on load (``int8_linear_amax`` then
    ``int8_linear_qload``) against the pair as served now: the first W8A8 (on rows its producer quantized,
    ``x_quantized``, or quantizing them itself), then the second as ``consumer`` serves it: ``"int8"`` (the
    row kernel and W8A8) or ``"cublas"`` (cuBLAS's GEMM; an activation after it is Inductor's either way).
    Shapes: [M, K] -> [M, N] (act, gated, bias) -> [M, N2] (act2, bias2). ``registry.measured_choice``'s
    record: ``use`` where the handoff measured faster by the margin; off the GPU nothing is timed."""
    key = (f"int8_qload|{'gated' if gated else 'linear'}|{act}|M{M}xK{K}xN{N}xN2{N2}|{dtype}"
           f"|bias{int(has_bias)}{int(has_bias2)}|x{'int8' if x_quantized else 'float'}|{consumer}|{act2}")
    ops = torch.ops.tritonfuse
    lazy = {}

    def args():
        if not lazy:
            lazy.update(mlp_operands(M, K, N, N2, dtype, device, gated, has_bias, has_bias2, x_quantized),
                        h=torch.randn(M, N, device=device).to(dtype))
        return lazy

    def ours():
        a = args()
        h, amax = ops.int8_linear_amax(a["xq"], a["xs"], a["w"], a["wu"], a["b"], a["bu"], act, dtype)
        return ops.int8_linear_qload(h, amax, a["w2"], a["b2"], act2)

    def producer():
        a = args()
        if x_quantized and gated:
            return ops.int8_gated_mlp_prequant(a["xq"], a["xs"], a["w"], a["wu"], a["b"], a["bu"], act, dtype)
        if x_quantized:
            return ops.int8_linear_prequant(a["xq"], a["xs"], a["w"], a["b"], act, dtype)
        if gated:
            return ops.int8_gated_mlp(a["x"], a["w"], a["wu"], a["b"], a["bu"], act, "int8")
        return ops.int8_linear(a["x"], a["w"], a["b"], act, "int8")

    def consumer_now():
        a = args()
        if consumer == "int8":
            return ops.int8_linear(a["h"], a["w2"], a["b2"], act2, "int8")
        return torch.addmm(a["b2"], a["h"], a["w2"].t()) if has_bias2 else torch.mm(a["h"], a["w2"].t())

    return registry.measured_choice(key, device, ours, [producer, consumer_now])


def _probe_close(got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    # a probe's check: relative error (2-norm) within tol, and finite
    want = want.double().cpu()
    err = (got.double().cpu() - want).norm() / want.norm().clamp_min(1e-12)
    if not math.isfinite(err.item()) or err.item() > tol:
        raise RuntimeError(f"wrong result on the probe input (relative error {err.item():.3g})")


def qload_probe(device: str, dtype: torch.dtype, act: str, gated: bool, has_bias: bool, act2: str,
                has_bias2: bool) -> Optional[str]:
    """Compile and launch one handoff pair (``int8_linear_amax`` then ``int8_linear_qload``) on a small input
    once, checked against the ops that quantize with the row kernel; None when it works, else the reason."""

    def run():
        g = torch.Generator(device="cpu").manual_seed(0)

        def r(*shape):
            return torch.randn(*shape, generator=g, device="cpu").to(device=device, dtype=dtype)

        ops = torch.ops.tritonfuse
        x, w, wu, w2 = r(40, 64), r(48, 64), r(48, 64) if gated else None, r(24, 48)
        b, bu = (r(48), r(48) if gated else None) if has_bias else (None, None)
        b2 = r(24) if has_bias2 else None
        h, amax = ops.int8_linear_amax(x, None, w, wu, b, bu, act, dtype)
        want_h = ops.int8_gated_mlp(x, w, wu, b, bu, act, "int8") if gated else ops.int8_linear(x, w, b, act, "int8")
        out = ops.int8_linear_qload(h, amax, w2, b2, act2)
        for got, want in ((h, want_h), (amax, h.float().abs().amax(dim=1)),
                          (out, ops.int8_linear(h, w2, b2, act2, "int8"))):
            _probe_close(got, want, 1e-2)

    name = f"int8_qload[{act},{'gated' if gated else 'plain'},{int(has_bias)}{int(has_bias2)},{act2},{dtype}]"
    return registry.guarded_probe(f"{name}@{device}", run)


def _quant_rows_fake(x):
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((x.shape[0],), dtype=torch.float32)


@registry.kernel_op("tritonfuse::int8_quant_rows", fake=_quant_rows_fake, inline=True)
def int8_quant_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 quantization: x [M, K] -> (xq [M, K] int8, xs [M] fp32). Inlined on the GPU:
    the graph-constant int8 sites whose x no norm produces quantize it with this (Inductor's own reduction
    took 140 us for 16384x3072 on the H200, this kernel 52)."""
    return quant_rows(x)


# --- weights quantized at compile time --------------------------------------------------------------
# The ops above look their int8 weight up at run time (``weight_cache``): their bodies read data pointers and
# version counters, so they stay opaque op calls, and an op call costs 0.1-0.25 ms of host time on the
# H100/H200 hosts, more than the GPU time an int8 GEMM saves at most model sizes. Where the compiled graph's
# weights are known at compile time, the linear_act pass (``patterns.linear_act.int8_constants_pass``)
# quantizes them once into graph constants and calls the ops below, which take the int8 weight and its
# scales as operands and launch nothing but kernels: on the GPU they are inlined into Inductor's code.
# One ``int8_weights`` call at the start of the graph keeps the constants current.

_quantized_from: dict = {}  # (device, int8 constant's data_ptr) -> (_watch(float weight), its data_ptr, version)
constants_made = 0  # weights quantized into graph constants at compile time (for tests and the report)


def _weights_fake(ws, wqs, scales, groups):
    return torch.empty_like(scales)


def _source(w: torch.Tensor) -> tuple:
    return w.data_ptr(), _WeightCache._version(w)


def _record(wq: torch.Tensor, w: torch.Tensor) -> None:
    _quantized_from[(wq.device, wq.data_ptr())] = (_watch(w), *_source(w))


def remember(wq: torch.Tensor, w: torch.Tensor) -> None:
    """Record that the constant ``wq`` holds float weight ``w`` as it is now."""
    global constants_made
    constants_made += 1
    _record(wq, w)


@registry.kernel_op("tritonfuse::int8_weights", fake=_weights_fake)
def int8_weights(ws: list[torch.Tensor], wqs: list[torch.Tensor], scales: torch.Tensor,
                 groups: list[int]) -> torch.Tensor:
    """Keep the int8 weight constants ``wqs`` current with the float weights ``ws`` the graph receives;
    returns a copy of ``scales`` (every weight's scales, quantized in K groups of ``groups[i]`` (0: one per
    channel), flattened end to end in the order of ``wqs``), which the GEMMs read, so they run after this
    call.

    A weight updated in place since it was quantized (its version counter moved), or a different tensor (a
    parameter replaced, another model instance served by the same compiled graph) is quantized again into
    the same constant, so the compiled code's pointers stay valid. The float weights are only read.
    """
    off = 0
    for w, wq, group in zip(ws, wqs, groups):
        g = _grouping(wq, group)
        n = cdiv(wq.shape[1], g) * wq.shape[0] if g else wq.shape[0]
        got = _quantized_from.get((wq.device, wq.data_ptr()))
        if got is None or got[0] is None or not _still(got[0], w) or got[1:] != _source(w):
            with torch.no_grad():
                q, s = quantize_weight(w, group)
                wq.copy_(q)
                scales[off:off + n].copy_(s.reshape(-1))
            _record(wq, w)
        off += n
    return scales.clone()


def _mm_fake(x, xs, wq, ws, b, act, out_dtype):
    return x.new_empty((x.shape[0], wq.shape[0]), dtype=out_dtype)


def _gated_mm_fake(x, xs, wgq, wgs, wuq, wus, bg, bu, act, out_dtype):
    return x.new_empty((x.shape[0], wgq.shape[0]), dtype=out_dtype)


def _mm_inline_when(x, *rest) -> Optional[str]:
    if x.dtype != torch.int8 and x.shape[0] <= DECODE_M:
        return f"the decode kernel (M <= {DECODE_M}) keeps a split-K workspace between calls: called as an op"
    return None


@registry.kernel_op("tritonfuse::int8_mm", fake=_mm_fake, inline=_mm_inline_when)
def int8_mm(x: torch.Tensor, xs: Optional[torch.Tensor], wq: torch.Tensor, ws: torch.Tensor,
            b: Optional[torch.Tensor], act: str, out_dtype: torch.dtype) -> torch.Tensor:
    """``act(x @ (wq * ws).T + b)`` with an int8 weight quantized ahead of time.

    Args:
        x: [M, K] int8 activations with ``xs`` their row scales (W8A8, as ``quant_rows`` makes them), or
            fp16/bf16 activations with ``xs`` None (weight-only; ``out_dtype`` is then x's dtype).
        wq: [N, K] int8 weight, ws: its fp32 scales (``quantize_weight``: [N], or for weight-only calls
            [cdiv(K, G), N] per K group of G, or that flattened); b: [N] or None.

    Example::

        >>> wq, ws = quantize_weight(torch.randn(77, 128, dtype=torch.float16))
        >>> xq, xs = quant_rows(torch.randn(37, 128, dtype=torch.float16))
        >>> y = torch.ops.tritonfuse.int8_mm(xq, xs, wq, ws, None, "gelu", torch.float16)
    """
    b = b.contiguous() if b is not None else None
    if x.dtype == torch.int8:
        return _w8a8(x, xs.reshape(-1).float().contiguous(), wq, ws, b, act, out_dtype)
    return _weight_only(x, wq, ws, b, act)


@registry.kernel_op("tritonfuse::int8_gated_mm", fake=_gated_mm_fake, inline=_mm_inline_when)
def int8_gated_mm(x: torch.Tensor, xs: Optional[torch.Tensor], wgq: torch.Tensor, wgs: torch.Tensor,
                  wuq: torch.Tensor, wus: torch.Tensor, bg: Optional[torch.Tensor], bu: Optional[torch.Tensor],
                  act: str, out_dtype: torch.dtype) -> torch.Tensor:
    """``act(x @ Wg.T + bg) * (x @ Wu.T + bu)`` with int8 weights quantized ahead of time (see ``int8_mm``)."""
    bg = bg.contiguous() if bg is not None else None
    bu = bu.contiguous() if bu is not None else None
    if x.dtype == torch.int8:
        return _w8a8(x, xs.reshape(-1).float().contiguous(), wgq, wgs, bg, act, out_dtype, wuq, wus, bu)
    return _weight_only(x, wgq, wgs, bg, act, wuq, wus, bu)


# --- references ---------------------------------------------------------------------------------------


def quant_rows_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``quant_rows`` computes, in PyTorch (same rounding: half away from zero)."""
    q, scale = symmetric_int8(x, (1,))
    return q, scale.reshape(-1)


def int8_linear_ref(x, w, b, act, mode, upcast: bool = True, group: Optional[int] = None) -> torch.Tensor:
    """The quantized layer computed in fp64 from the same int8 operands (isolates kernel error from
    quantization error): W8A8 uses ``quant_rows_ref`` of x, weight-only keeps x, and ``group`` (default:
    ``layer_group([w], mode)``) for its weight's scales."""
    if group is None:
        group = layer_group([w], mode)
    wd = dequantize_weight(*quantize_weight(w, group))
    if uses_weight_only(x.shape[0], mode):
        xd = x.double()
    else:
        xq, xs = quant_rows_ref(x)
        xd = xq.double() * xs.double()[:, None]
    y = xd @ wd.T
    if b is not None:
        y = y + b.double()
    return act_ref(y, act).cpu()


def layer_sqnr(x, w, b, act: str, mode: str, wu=None, bu=None) -> float:
    """SQNR in dB of the int8 layer vs the float layer on real inputs (for ``TRITONFUSE_QUANT_MIN_SQNR``).

    Example::

        >>> x, w = torch.randn(37, 128, dtype=torch.float16), torch.randn(77, 128, dtype=torch.float16)
        >>> layer_sqnr(x, w, None, "gelu", "int8") > 35
    """
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily(), torch.no_grad():
        xd, wd = x.double(), w.double()
        ref = act_ref(torch.nn.functional.linear(xd, wd, None if b is None else b.double()), act)
        if wu is None:
            y = torch.ops.tritonfuse.int8_linear(x, w, b, act, mode)
        else:
            ref = ref * torch.nn.functional.linear(xd, wu.double(), None if bu is None else bu.double())
            y = torch.ops.tritonfuse.int8_gated_mlp(x, w, wu, b, bu, act, mode)
        return sqnr_db(ref, y)


def sqnr_db(ref: torch.Tensor, y: torch.Tensor) -> float:
    """SQNR in dB of ``y`` against the fp64 reference ``ref`` (-inf when y is not finite)."""
    noise = (ref - y.double().to(ref.device)).norm().item()
    if not math.isfinite(noise):
        return -math.inf
    return math.inf if noise == 0 else 20 * math.log10(ref.norm().item() / noise)


def probe(device: str, dtype: torch.dtype, act: str, has_bias: bool, gated: bool, mode: str) -> Optional[str]:
    """Compile and launch one variant on a small input once; None when it works, else the reason."""

    def run():
        g = torch.Generator(device="cpu").manual_seed(0)
        # 40 rows take the W8A8 kernel in "int8" mode, 8 rows the weight-only one
        x = torch.randn(40, 64, generator=g, device="cpu").to(device=device, dtype=dtype)
        w1 = torch.randn(24, 64, generator=g, device="cpu").to(device=device, dtype=dtype)
        w2 = torch.randn(24, 64, generator=g, device="cpu").to(device=device, dtype=dtype)
        b1 = torch.randn(24, generator=g, device="cpu").to(device=device, dtype=dtype) if has_bias else None
        b2 = torch.randn(24, generator=g, device="cpu").to(device=device, dtype=dtype) if has_bias else None
        if gated:
            y = torch.ops.tritonfuse.int8_gated_mlp(x, w1, w2, b1, b2, act, mode)
            ref = act_ref(torch.nn.functional.linear(x.double(), w1.double(), None if b1 is None else b1.double()), act)
            ref = ref * torch.nn.functional.linear(x.double(), w2.double(), None if b2 is None else b2.double())
        else:
            y = torch.ops.tritonfuse.int8_linear(x, w1, b1, act, mode)
            ref = act_ref(torch.nn.functional.linear(x.double(), w1.double(), None if b1 is None else b1.double()), act)
        y8 = torch.ops.tritonfuse.int8_gated_mlp(x[:8], w1, w2, b1, b2, act, mode) if gated else \
            torch.ops.tritonfuse.int8_linear(x[:8], w1, b1, act, mode)
        for out, r in ((y, ref), (y8, ref[:8])):
            _probe_close(out, r, 5e-2)

    name = f"int8_{'gated_mlp' if gated else 'linear'}[{mode},{act},{'bias' if has_bias else 'nobias'},{dtype}]"
    return registry.guarded_probe(f"{name}@{device}", run)  # in registry.one_config: see _tune_decode
