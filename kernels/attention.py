"""Flash attention: ``softmax(q @ k.T * scale + mask) @ v`` without materialising the scores.

Three kernels share one tile loop (online softmax, fp32 statistics and accumulator):

- ``_attn_fwd_kernel``: one program per (block of queries, batch x query head); also writes the
  log-sum-exp the backward needs. ``_attn_fwd_tma_kernel`` is the same loop fed by TMA descriptors, for
  unmasked attention on Hopper (checked against the pointer kernel before its first use).
- ``_attn_decode_kernel`` + ``_attn_combine_kernel``: flash-decoding for short queries (1-16) against a
  long KV cache: the keys are split across programs, and the query heads of one KV head (GQA) are packed
  into the rows of one tile so K and V are read once per group; a second kernel merges the splits.
- ``_attn_bwd_preprocess_kernel``, ``_attn_bwd_dkdv_kernel``, ``_attn_bwd_dq_kernel``: dQ, dK, dV from
  the forward's output and log-sum-exp.

Semantics follow ``torch.nn.functional.scaled_dot_product_attention``: q [B, Hq, Sq, D], k/v [B, Hkv, Sk, D]
with Hq a multiple of Hkv (GQA: K/V are indexed, never repeated), ``is_causal`` aligned top-left (query i
sees keys j <= i, as SDPA's ``tril``), a boolean mask (True = attend) or an additive float mask broadcast
to [B, Hq, Sq, Sk]. A row with every key masked (-inf or False) gives zeros here; SDPA's math path gives
NaN there (its CPU flash kernel zeros). A finite mask such as HF's finfo.min gives eager's uniform average.
``attention_causal_padded`` takes a causal + key-padding mask with a finite fill as the causal flag plus the
keys (``EMPTY_ROWS``: rows that keep no key get the fill on every score, and attend over all keys, as eager).
"""

from __future__ import annotations

import inspect
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from tritonfuse import config, inline, launch, registry, tuning
from tritonfuse.kernels.common import (autotune_kw, capability, cast_out, cdiv, dot_upcast, host_desc, next_pow2,
                                      rtne_bf16, scratch_allocator, tuned)

try:  # host-side TMA descriptors (triton >= 3.3)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # older triton: the pointer kernel serves every shape
    TensorDescriptor = None

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256
DECODE_MAX_Q = 16  # query lengths up to this use the split-K decode kernels
DECODE_MIN_K = 256  # ... when the KV cache is at least this long
LOG2E = 1.4426950408889634

# --- autotune configs ---------------------------------------------------------------------------------
# Keyed on head dim, mask kind, causality and power-of-two buckets of the lengths.


def _cfg(bm, bn, warps, stages, pre_hook=None):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages, pre_hook=pre_hook)


# The forward's candidates, the first _FWD_TIMED timed (kernels.common.tuned): at BERT's, ViT's and
# Llama-1B's prefill attention on the H200 (head dims 64 and 128; padding, additive and no masks) 128x128
# and 64x32 were 33% and 15% slower than the fastest, or more
_FWD_ALL = [
    _cfg(128, 64, 4, 3),
    _cfg(128, 64, 8, 3),
    _cfg(128, 32, 4, 3),
    _cfg(64, 64, 4, 3),
    _cfg(128, 128, 8, 3),
    _cfg(64, 32, 4, 2),
]
_FWD_TIMED = 4

if registry.interpret_mode():
    # the interpreter runs every config on the CPU: one small config keeps the tests fast
    _FWD_CONFIGS = [_cfg(32, 32, 4, 1)]
    _BWD_CONFIGS = [_cfg(32, 32, 4, 1)]
else:
    _FWD_CONFIGS = tuned(_FWD_ALL, _FWD_TIMED)
    # (the last two, unmeasured yet: the shapes of Triton's fused-attention tutorial's backward on Hopper, few
    # queries against many resident keys for dK/dV and the reverse for dQ; the prune drops them at D=128)
    _BWD_CONFIGS = [
        _cfg(64, 64, 4, 2),
        _cfg(64, 128, 8, 2),
        _cfg(128, 64, 8, 2),
        _cfg(32, 128, 4, 3),
        _cfg(128, 32, 4, 3),
    ]


def _tma_block_hook(nargs):
    # a Config pre_hook: it runs before every launch of its config, while tuning and after
    # host descriptors are built before the config is chosen; set their boxes to the config's tiles
    bm, bn, d = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["HEAD_DIM"]
    nargs["q_desc"].block_shape = [1, 1, bm, d]
    nargs["o_desc"].block_shape = [1, 1, bm, d]
    nargs["k_desc"].block_shape = [1, 1, bn, d]
    nargs["v_desc"].block_shape = [1, 1, bn, d]


# the TMA forward (Hopper, no mask, power-of-two head dim); sm_90 builds use 139 (128x64) and 190 (128x128)
# registers without spills, where the pointer kernel needs 246 and spills at 128x128. 128x64 in two stages
# (96 KB of shared memory at D=128, so two programs share an SM) was the fastest causal D=128 config on the
# H200 (scripts/attn_fwd_sweep.py at 85da90f): 1.199 ms against 1.243 for 128x128 at B8 H16 S4096, 0.1005
# against 0.1121 at Llama-1B's prefill (S1024, GQA 16/8)
if registry.interpret_mode():
    _TMA_CONFIGS = [_cfg(32, 32, 4, 1, _tma_block_hook)]
else:
    _TMA_CONFIGS = [
        _cfg(128, 128, 8, 3, _tma_block_hook),
        _cfg(128, 64, 4, 3, _tma_block_hook),
        _cfg(128, 64, 8, 3, _tma_block_hook),
        _cfg(128, 64, 4, 2, _tma_block_hook),
    ]

_AUTOTUNE_KW = autotune_kw()


def _prune(backward: bool):
    # drop tiles whose pipelined loads cannot fit in shared memory (large head dims)
    def smem(c, bd):
        bm, bn, stages = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], max(1, c.num_stages)
        if backward:  # two tiles resident (k, v or q, dout), two streamed per stage
            return 2 * bd * 2 * max(bm, bn) * (stages + 1)
        return 2 * bd * (bm + 2 * bn * stages)  # q resident, k and v streamed

    def prune(configs, named_args, **kwargs):
        bd = kwargs.get("BLOCK_D", kwargs.get("HEAD_DIM", named_args.get("BLOCK_D")))
        # 227 KiB: the H100's shared memory per block
        keep = [c for c in configs if smem(c, bd) <= 227 * 1024
                and (bd < 256 or c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64 * 2)]
        return keep or [min(configs, key=lambda c: smem(c, bd))]

    return prune


def _bucket(n: int) -> int:
    return max(16, next_pow2(n))


# --- jit helpers --------------------------------------------------------------------------------------


@triton.jit
def _apply_mask(s, mask_ptrs, ok, MASK_KIND: tl.constexpr):
    # s: log2-domain scores; ok: which entries of the tile exist (the mask is read only there).
    # MASK_KIND 1 / 2: a bool / additive mask read per score; 3 / 4: the same, the same for every query row
    # (a key-padding mask): mask_ptrs and ok are vectors over the tile's keys, read once per tile
    if MASK_KIND == 1 or MASK_KIND == 3:
        keep = tl.load(mask_ptrs, mask=ok, other=0)
        if MASK_KIND == 3:
            keep = keep[None, :]
        s = tl.where(keep != 0, s, float("-inf"))
    elif MASK_KIND == 2 or MASK_KIND == 4:
        mv = tl.load(mask_ptrs, mask=ok, other=0.0).to(tl.float32)
        # finfo.min-style masks stay finite in log2 units (a fully masked row then averages, as eager does)
        mv = tl.where(mv == float("-inf"), mv, tl.maximum(mv, -1.0e30))
        if MASK_KIND == 4:
            mv = mv[None, :]
        s = s + mv * 1.4426950408889634
    return s


DEAD_GAP = tl.constexpr(5000.0)


@triton.jit
def _live_keys(mask_ptrs, stride_mn, SK, ADDITIVE: tl.constexpr, IS_CAUSAL: tl.constexpr, SCAN: tl.constexpr):
    # [lo, hi): the keys a key-padding mask (the same for every query row, from mask_ptrs over the keys) keeps.
    # The keys outside weigh exactly 0 in every row that keeps a key, so the loops skip their blocks (a padded
    # batch's trailing or leading blocks). Bool: a key is kept where True; nothing kept gives an empty range
    # (rows of zeros, as before). Additive: kept unless DEAD_GAP (5000) or more below the mask's largest value
    # (HF's finfo.min and -10000 fills, -9984 in bf16): such a key's weight, below e^-5000 of a kept key's,
    # is 0 in fp32 unless its scaled score beats the kept key's by some 4900; NaN counts as kept. No finite
    # value gives the whole range (eager's average), and causal gives lo = 0 (a row before the first kept
    # key attends over the fill, as eager does). Also returns how many kept keys the mask leaves as they are
    # (bool: every kept key; additive: those whose value is 0), which RUN compares with the range's length
    offs = tl.arange(0, SCAN)
    top = float("-inf")
    if ADDITIVE:
        for start in range(0, SK, SCAN):
            cols = start + offs
            mv = tl.load(mask_ptrs + cols * stride_mn, mask=cols < SK, other=float("-inf")).to(tl.float32)
            top = tl.maximum(top, tl.max(mv, 0))
    first = SK
    last = -1
    kept = 0
    for start in range(0, SK, SCAN):
        cols = start + offs
        if ADDITIVE:
            mv = tl.load(mask_ptrs + cols * stride_mn, mask=cols < SK, other=float("-inf")).to(tl.float32)
            live = ~(mv <= top - DEAD_GAP) & (cols < SK)
        else:
            live = tl.load(mask_ptrs + cols * stride_mn, mask=cols < SK, other=0) != 0
        first = tl.minimum(first, tl.min(tl.where(live, cols, SK), 0))
        last = tl.maximum(last, tl.max(tl.where(live, cols, -1), 0))
        as_is = live
        if ADDITIVE:
            as_is = live & (mv == 0.0)
        kept += tl.sum(as_is.to(tl.int32), 0)
    none = last < 0
    if ADDITIVE:
        hi = tl.where(none, SK, last + 1)
        if IS_CAUSAL:
            lo = first * 0
        else:
            lo = tl.where(none, 0, first)
    else:
        hi = tl.where(none, 0, last + 1)
        lo = tl.where(none, 0, first)
    return lo, hi, kept


@triton.jit
def _softmax_step(s, m_i, l_i, acc, qk_scale, FOLD: tl.constexpr):
    # online softmax: fold one tile of scores into the running max m, sum l and (rescaled) accumulator;
    # returns (p, m, l, acc). s is in log2 units, or (FOLD) the raw q.k, whose scale qk_scale > 0 is then
    # applied inside the exponent's FMA (one instruction per score instead of two)
    if FOLD:
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1))
    # a row with nothing to attend yet keeps m = -inf; subtract 0 there instead of -inf (no NaN)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_safe)
    if FOLD:
        p = tl.math.exp2(s * qk_scale - m_safe[:, None])
    else:
        p = tl.math.exp2(s - m_safe[:, None])
    return p, m_new, l_i * alpha + tl.sum(p, 1), acc * alpha[:, None]


@triton.jit
def _finish_scores(s, qk_scale, mask_ptrs, rows, cols, SQ, SK,
                   MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, BOUNDS: tl.constexpr, FOLD: tl.constexpr):
    # q.k of one [rows, cols] tile -> log2-domain scores (raw with FOLD, which an additive mask excludes);
    # masked entries are -inf
    if not FOLD:
        s = s * qk_scale
    if MASK_KIND >= 3:
        s = _apply_mask(s, mask_ptrs, cols < SK, MASK_KIND)
    else:
        s = _apply_mask(s, mask_ptrs, (rows[:, None] < SQ) & (cols[None, :] < SK), MASK_KIND)
    if IS_CAUSAL:
        s = tl.where(cols[None, :] <= rows[:, None], s, float("-inf"))
    if BOUNDS:
        s = tl.where(cols[None, :] < SK, s, float("-inf"))
    return s


@triton.jit
def _scores(q, k, qk_scale, mask_ptrs, rows, cols, SQ, SK,
            MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, BOUNDS: tl.constexpr, PRECISION: tl.constexpr):
    # log2-domain scores of one [rows, cols] tile; masked entries are -inf
    s = tl.dot(q, k, input_precision=PRECISION)
    return _finish_scores(s, qk_scale, mask_ptrs, rows, cols, SQ, SK, MASK_KIND, IS_CAUSAL, BOUNDS, False)


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, mask_ptrs, rows, offs_n, offs_d, lo, hi,
               stride_kn, stride_vn, stride_mn, qk_scale, SQ, SK, empty, fill2,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
               MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, BOUNDS: tl.constexpr, DOT_UPCAST: tl.constexpr,
               PRECISION: tl.constexpr, FOLD: tl.constexpr, EMPTY_ROWS: tl.constexpr):
    # EMPTY_ROWS: the rows flagged in ``empty`` see every key through the same finite fill (fill2, log2
    # units), as eager adds a causal + padding mask's fill to all of a row that has no key to attend
    k_ptrs += lo * stride_kn
    v_ptrs += lo * stride_vn
    mask_ptrs += lo * stride_mn
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if BOUNDS or HEAD_DIM != BLOCK_D:
            k = tl.load(k_ptrs, mask=(cols[None, :] < SK) & (offs_d[:, None] < HEAD_DIM), other=0.0)
        else:
            k = tl.load(k_ptrs)
        if DOT_UPCAST:
            k = k.to(tl.float32)
        qk = tl.dot(q, k, input_precision=PRECISION)
        s = _finish_scores(qk, qk_scale, mask_ptrs, rows, cols, SQ, SK, MASK_KIND, IS_CAUSAL, BOUNDS, FOLD)
        if EMPTY_ROWS:  # (FOLD is off with a mask: s is in log2 units)
            s = tl.where(empty[:, None] & (cols[None, :] < SK), qk * qk_scale + fill2, s)
        if BOUNDS or HEAD_DIM != BLOCK_D:
            v = tl.load(v_ptrs, mask=(cols[:, None] < SK) & (offs_d[None, :] < HEAD_DIM), other=0.0)
        else:
            v = tl.load(v_ptrs)
        acc, l_i, m_i = _pv_step(acc, l_i, m_i, s, v, qk_scale, FOLD, DOT_UPCAST, PRECISION)
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
        mask_ptrs += BLOCK_N * stride_mn
    return acc, l_i, m_i


@triton.jit
def _pv_step(acc, l_i, m_i, s, v, qk_scale, FOLD: tl.constexpr, DOT_UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    # one tile's softmax step and p @ v
    p, m_i, l_i, acc = _softmax_step(s, m_i, l_i, acc, qk_scale, FOLD)
    if DOT_UPCAST:
        acc = tl.dot(p, v.to(tl.float32), acc, input_precision=PRECISION)
    else:
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
    return acc, l_i, m_i


@triton.jit
def _fwd_program(SQ, LPT_GROUP, BLOCK_M: tl.constexpr, LPT: tl.constexpr):
    # (query block, batch x head) of this program. The grid is [query blocks, B * H], the longest (causal)
    # query blocks of each head first; with LPT a flat grid visits groups of LPT_GROUP heads (whose keys and
    # values stay in L2 together), and within a group every head's longest block before any shorter one, so
    # the short blocks come last in the whole grid (longest-processing-time order) and fill the last wave
    if LPT:
        num_m = tl.cdiv(SQ, BLOCK_M)
        heads = tl.num_programs(0) // num_m
        pid = tl.program_id(0)
        first = pid // (LPT_GROUP * num_m) * LPT_GROUP
        size = tl.minimum(LPT_GROUP, heads - first)  # (the last group may hold fewer heads)
        r = pid - first * num_m
        return num_m - 1 - r // size, first + r % size
    return tl.num_programs(0) - 1 - tl.program_id(0), tl.program_id(1)


# --- forward kernel -----------------------------------------------------------------------------------


@triton.autotune(configs=_FWD_CONFIGS, key=["SQ_BUCKET", "SK_BUCKET", "HEAD_DIM", "MASK_KIND", "IS_CAUSAL"],
                 prune_configs_by={"early_config_prune": _prune(False)}, **_AUTOTUNE_KW)
@triton.jit
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, lse_ptr, first_ptr,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_ob, stride_oh, stride_om, stride_od,
    H, GROUP, SQ, SK, SQ_BUCKET, SK_BUCKET, qk_scale, empty_fill,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr,
    STORE_LSE: tl.constexpr, DOT_UPCAST: tl.constexpr, PRECISION: tl.constexpr, RTNE_BF16: tl.constexpr,
    FOLD: tl.constexpr, EMPTY_ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    LPT_GROUP=1, LPT: tl.constexpr = False, TRIM: tl.constexpr = False, SCAN: tl.constexpr = 512,
    RUN: tl.constexpr = False,
):
    # FOLD: see _softmax_step (needs qk_scale > 0 and no additive mask: a bool mask's -inf stays -inf scaled;
    # the launcher folds only without a mask). RUN (with TRIM, not causal): see below.
    # EMPTY_ROWS (causal, an additive key vector, SQ == SK): the rows before the first kept key of their
    # sequence (first_ptr [B]) have every key masked, which eager treats as the mask's finite fill added to all
    # their scores: they attend over all keys, the key blocks past the diagonal included
    qk_scale = tl.cast(qk_scale, tl.float32)  # Inductor passes Python floats as fp64
    # q: [B, H, SQ, D], k/v: [B, H // GROUP, SK, D], mask: broadcast [B, H, SQ, SK], out: [B, H, SQ, D]
    pid_m, pid_bh = _fwd_program(SQ, LPT_GROUP, BLOCK_M, LPT)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_ptrs = q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd
    k_ptrs = k_ptr + b * stride_kb + hk * stride_kh + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
    v_ptrs = v_ptr + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    if MASK_KIND >= 3:  # one row of keys for all the tile's queries
        mask_ptrs = mask_ptr + b * stride_mb + h * stride_mh + offs_n * stride_mn
    else:
        mask_ptrs = mask_ptr + b * stride_mb + h * stride_mh + rows[:, None] * stride_mm + offs_n[None, :] * stride_mn
    q = tl.load(q_ptrs, mask=(rows[:, None] < SQ) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    if DOT_UPCAST:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if EMPTY_ROWS:
        first = tl.load(first_ptr + b)
        empty = rows < first
        # in log2 units, clamped as _apply_mask clamps a mask's values
        fill2 = tl.maximum(tl.cast(empty_fill, tl.float32), -1.0e30) * 1.4426950408889634
    else:
        first = 0
        empty = rows < 0
        fill2 = 0.0
    # TRIM (a key-padding mask, MASK_KIND 3 / 4): only the key blocks of [lo, kv_hi), the keys it keeps
    lo = 0
    kv_hi = SK
    if TRIM:
        first_kept, kv_hi, kept = _live_keys(mask_ptr + b * stride_mb + h * stride_mh, stride_mn, SK,
                                             MASK_KIND == 4, IS_CAUSAL, SCAN)
        lo = first_kept // BLOCK_N * BLOCK_N
    # key blocks every row of this tile sees whole run without bounds or causal masks
    if IS_CAUSAL:
        hi = tl.minimum(kv_hi, (pid_m + 1) * BLOCK_M)
        full = tl.minimum(pid_m * BLOCK_M, kv_hi) // BLOCK_N * BLOCK_N
    else:
        hi = kv_hi
        full = kv_hi // BLOCK_N * BLOCK_N
    if TRIM:
        full = tl.maximum(full, lo)
    if RUN:
        # (a key-padding mask, not causal) where the kept keys are one run, as in a right- or left-padded
        # batch, and an additive mask adds 0 to each of them, the key blocks inside it read no mask: only the
        # blocks at its two ends do
        inner = tl.minimum(tl.cdiv(first_kept, BLOCK_N) * BLOCK_N, full)
        inner = tl.where(kept == kv_hi - first_kept, inner, full)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, mask_ptrs, rows, offs_n, offs_d, lo, inner,
                                   stride_kn, stride_vn, stride_mn, qk_scale, SQ, SK, empty, fill2, HEAD_DIM,
                                   BLOCK_D, BLOCK_N, MASK_KIND, False, False, DOT_UPCAST, PRECISION, FOLD, False)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, mask_ptrs, rows, offs_n, offs_d, inner, full,
                                   stride_kn, stride_vn, stride_mn, qk_scale, SQ, SK, empty, fill2, HEAD_DIM,
                                   BLOCK_D, BLOCK_N, 0, False, False, DOT_UPCAST, PRECISION, FOLD, False)
    else:
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, mask_ptrs, rows, offs_n, offs_d, lo, full,
                                   stride_kn, stride_vn, stride_mn, qk_scale, SQ, SK, empty, fill2, HEAD_DIM,
                                   BLOCK_D, BLOCK_N, MASK_KIND, False, False, DOT_UPCAST, PRECISION, FOLD, EMPTY_ROWS)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, mask_ptrs, rows, offs_n, offs_d, full, hi,
                               stride_kn, stride_vn, stride_mn, qk_scale, SQ, SK, empty, fill2, HEAD_DIM, BLOCK_D,
                               BLOCK_N, MASK_KIND, IS_CAUSAL, True, DOT_UPCAST, PRECISION, FOLD, EMPTY_ROWS)
    if EMPTY_ROWS:
        if pid_m * BLOCK_M < first:  # rows that see no key: the blocks past the diagonal too
            past = full + tl.cdiv(hi - full, BLOCK_N) * BLOCK_N  # where the loop above stopped
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, mask_ptrs, rows, offs_n, offs_d, past, SK,
                                       stride_kn, stride_vn, stride_mn, qk_scale, SQ, SK, empty, fill2, HEAD_DIM,
                                       BLOCK_D, BLOCK_N, MASK_KIND, IS_CAUSAL, True, DOT_UPCAST, PRECISION, FOLD,
                                       EMPTY_ROWS)
    # fully masked rows: l = 0 -> output 0 (not NaN) and lse = +inf (the backward's p is then 0)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    acc = acc / l_safe[:, None]
    out_ptrs = out_ptr + b * stride_ob + h * stride_oh + rows[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(out_ptrs, cast_out(acc, out_ptr.dtype.element_ty, RTNE_BF16),
             mask=(rows[:, None] < SQ) & (offs_d[None, :] < HEAD_DIM))
    if STORE_LSE:
        lse = tl.where(l_i == 0.0, float("inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
        tl.store(lse_ptr + pid_bh * SQ + rows, lse, mask=rows < SQ)


@triton.jit
def _tile_start(pid_m, SK, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                IS_CAUSAL: tl.constexpr):
    # the TMA forwards' query block: (rows, key offsets, running max, sum, accumulator, end of the key blocks
    # that need no mask, end of the keys it attends)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if IS_CAUSAL:
        hi = tl.minimum(SK, (pid_m + 1) * BLOCK_M)
        full = tl.minimum(pid_m * BLOCK_M, SK) // BLOCK_N * BLOCK_N
    else:
        hi = SK
        full = SK // BLOCK_N * BLOCK_N
    return rows, tl.arange(0, BLOCK_N), m_i, l_i, acc, full, hi


@triton.jit
def _tile_finish(acc, l_i, m_i, lse_ptr, pid_bh, rows, SQ, STORE_LSE: tl.constexpr):
    # the normalised output of a TMA forward's query block (rows with no key: zeros), its log-sum-exp stored
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    if STORE_LSE:
        lse = tl.where(l_i == 0.0, float("inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
        tl.store(lse_ptr + pid_bh * SQ + rows, lse, mask=rows < SQ)
    return acc / l_safe[:, None]


@triton.jit
def _fwd_tma_tile(acc, l_i, m_i, q, k_desc, v_desc, b, hk, rows, offs_n, start_n, qk_scale, SK,
                  HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr, BOUNDS: tl.constexpr,
                  FOLD: tl.constexpr):
    # rows past SK come back as zeros (TMA bounds), their scores are masked below
    s = tl.dot(q, k_desc.load([b, hk, start_n, 0]).reshape(BLOCK_N, HEAD_DIM).T)
    if not FOLD:
        s = s * qk_scale
    if IS_CAUSAL:
        s = tl.where(start_n + offs_n[None, :] <= rows[:, None], s, float("-inf"))
    if BOUNDS:
        s = tl.where(start_n + offs_n[None, :] < SK, s, float("-inf"))
    v = v_desc.load([b, hk, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
    return _pv_step(acc, l_i, m_i, s, v, qk_scale, FOLD, False, "tf32")


@triton.jit
def _fwd_tma_inner(acc, l_i, m_i, q, k_desc, v_desc, b, hk, rows, offs_n, lo, hi, qk_scale, SK,
                   HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr, BOUNDS: tl.constexpr,
                   FOLD: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        acc, l_i, m_i = _fwd_tma_tile(acc, l_i, m_i, q, k_desc, v_desc, b, hk, rows, offs_n, start_n, qk_scale,
                                      SK, HEAD_DIM, BLOCK_N, IS_CAUSAL, BOUNDS, FOLD)
    return acc, l_i, m_i


@triton.autotune(configs=_TMA_CONFIGS, key=["SQ_BUCKET", "SK_BUCKET", "HEAD_DIM", "IS_CAUSAL"],
                 prune_configs_by={"early_config_prune": _prune(False)}, **_AUTOTUNE_KW)
@triton.jit
def _attn_fwd_tma_kernel(
    q_desc, k_desc, v_desc, o_desc, lse_ptr,
    H, GROUP, SQ, SK, SQ_BUCKET, SK_BUCKET, qk_scale,
    HEAD_DIM: tl.constexpr, IS_CAUSAL: tl.constexpr, STORE_LSE: tl.constexpr,
    FOLD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    LPT_GROUP=1, LPT: tl.constexpr = False,
):
    qk_scale = tl.cast(qk_scale, tl.float32)  # Inductor passes Python floats as fp64
    # as _attn_fwd_kernel without a mask; q/k/v/out read and written through 4-D TMA descriptors
    pid_m, pid_bh = _fwd_program(SQ, LPT_GROUP, BLOCK_M, LPT)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    q = q_desc.load([b, h, pid_m * BLOCK_M, 0]).reshape(BLOCK_M, HEAD_DIM)
    rows, offs_n, m_i, l_i, acc, full, hi = _tile_start(pid_m, SK, HEAD_DIM, BLOCK_M, BLOCK_N, IS_CAUSAL)
    acc, l_i, m_i = _fwd_tma_inner(acc, l_i, m_i, q, k_desc, v_desc, b, hk, rows, offs_n, 0, full, qk_scale, SK,
                                   HEAD_DIM, BLOCK_N, False, False, FOLD)
    acc, l_i, m_i = _fwd_tma_inner(acc, l_i, m_i, q, k_desc, v_desc, b, hk, rows, offs_n, full, hi, qk_scale, SK,
                                   HEAD_DIM, BLOCK_N, IS_CAUSAL, True, FOLD)
    acc = _tile_finish(acc, l_i, m_i, lse_ptr, pid_bh, rows, SQ, STORE_LSE)
    o_desc.store([b, h, pid_m * BLOCK_M, 0], acc.to(o_desc.dtype).reshape(1, 1, BLOCK_M, HEAD_DIM))


# Hopper's warp specialization (triton >= 3.4 builds it for sm_90 from ``tl.range(warp_specialize=True)``): one
# producer warpgroup issues the TMA loads while the consumer warpgroups (each BLOCK_M / 2 rows of the tile)
# run the dots and the softmax, as FlashAttention-3 and cuDNN do. ncu on the H200 (38th session) found the TMA
# kernel above one warpgroup a program at 255 registers, the tensor pipe 57% busy; cuDNN's SDPA runs a
# producer and two consumers. Triton's partitioner takes 2-D tiles only (a reshaped 4-D TMA box fails it),
# so each program builds 2-D descriptors over its own head on the device, bounded by the head's lengths
# (zeros past them, stores clipped), from the same strides the host kernel's 4-D boxes use.
_HAS_WS = hasattr(tl, "make_tensor_descriptor") and "warp_specialize" in inspect.signature(tl.range).parameters


def _ws_cfg(bm, bn, stages, ws=True):
    # num_warps 4: a consumer warpgroup's; with ws the kernel runs three warpgroups (12 warps)
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "WS": ws}, num_warps=4, num_stages=stages)


if registry.interpret_mode():
    _WS_CONFIGS = [_ws_cfg(32, 32, 1)]
else:
    # sm_90 builds (triton 3.6, ptxas -v) at D=128: 128x64 and 128x128 without spills, 256x64 spills 4-48
    # bytes a thread, 256x128 spills 4 KB and is left out. 128x64/4 warps/3 stages without specialization
    # (one of the TMA kernel's configs) lets the autotuner weigh the specialized ones against the plain loop
    # (128x64 in 3 stages, specialized, wrote NaN on the H200 at D=64 and at D=128 with even keys: left out)
    _WS_CONFIGS = [_ws_cfg(128, 128, 2), _ws_cfg(128, 64, 2), _ws_cfg(256, 64, 2), _ws_cfg(128, 64, 3, ws=False)]


@triton.jit
def _fwd_ws_inner(acc, l_i, m_i, q, k_desc, v_desc, lse_ptr, rows, offs_n, lo, hi, qk_scale, SQ, SK,
                  BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr, BOUNDS: tl.constexpr, FOLD: tl.constexpr,
                  WS: tl.constexpr):
    for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WS):
        s = tl.dot(q, k_desc.load([start_n, 0]).T)
        # (MASK_KIND 0: the mask pointer, lse_ptr here, is never read)
        s = _finish_scores(s, qk_scale, lse_ptr, rows, start_n + offs_n, SQ, SK, 0, IS_CAUSAL, BOUNDS, FOLD)
        acc, l_i, m_i = _pv_step(acc, l_i, m_i, s, v_desc.load([start_n, 0]), qk_scale, FOLD, False, "tf32")
    return acc, l_i, m_i


@triton.autotune(configs=_WS_CONFIGS, key=["SQ_BUCKET", "SK_BUCKET", "HEAD_DIM", "IS_CAUSAL"],
                 prune_configs_by={"early_config_prune": _prune(False)}, **_AUTOTUNE_KW)
@triton.jit
def _attn_fwd_ws_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    H, GROUP, SQ, SK, SQ_BUCKET, SK_BUCKET, qk_scale,
    HEAD_DIM: tl.constexpr, IS_CAUSAL: tl.constexpr, STORE_LSE: tl.constexpr,
    KEYS_EVEN: tl.constexpr, FOLD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WS: tl.constexpr,
    LPT_GROUP=1, LPT: tl.constexpr = False,
):
    # as _attn_fwd_tma_kernel, on 2-D descriptors of this program's head built here (global scratch memory)
    qk_scale = tl.cast(qk_scale, tl.float32)
    pid_m, pid_bh = _fwd_program(SQ, LPT_GROUP, BLOCK_M, LPT)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    hk = h // GROUP
    q_desc = tl.make_tensor_descriptor(q_ptr + b * stride_qb + h * stride_qh, shape=[SQ, HEAD_DIM],
                                       strides=[stride_qm, 1], block_shape=[BLOCK_M, HEAD_DIM])
    k_desc = tl.make_tensor_descriptor(k_ptr + b * stride_kb + hk * stride_kh, shape=[SK, HEAD_DIM],
                                       strides=[stride_kn, 1], block_shape=[BLOCK_N, HEAD_DIM])
    v_desc = tl.make_tensor_descriptor(v_ptr + b * stride_vb + hk * stride_vh, shape=[SK, HEAD_DIM],
                                       strides=[stride_vn, 1], block_shape=[BLOCK_N, HEAD_DIM])
    o_desc = tl.make_tensor_descriptor(o_ptr + b * stride_ob + h * stride_oh, shape=[SQ, HEAD_DIM],
                                       strides=[stride_om, 1], block_shape=[BLOCK_M, HEAD_DIM])
    q = q_desc.load([pid_m * BLOCK_M, 0])
    rows, offs_n, m_i, l_i, acc, full, hi = _tile_start(pid_m, SK, HEAD_DIM, BLOCK_M, BLOCK_N, IS_CAUSAL)
    if WS:
        # the partitioner takes one loop (a second loop after or before it fails to build, triton 3.6): every
        # key block in it, each masked as the diagonal and the ragged end need (KEYS_EVEN: no key block
        # runs past SK, for every config's BLOCK_N)
        acc, l_i, m_i = _fwd_ws_inner(acc, l_i, m_i, q, k_desc, v_desc, lse_ptr, rows, offs_n, 0, hi, qk_scale,
                                      SQ, SK, BLOCK_N, IS_CAUSAL, not KEYS_EVEN, FOLD, True)
    else:
        acc, l_i, m_i = _fwd_ws_inner(acc, l_i, m_i, q, k_desc, v_desc, lse_ptr, rows, offs_n, 0, full, qk_scale,
                                      SQ, SK, BLOCK_N, False, False, FOLD, False)
        acc, l_i, m_i = _fwd_ws_inner(acc, l_i, m_i, q, k_desc, v_desc, lse_ptr, rows, offs_n, full, hi, qk_scale,
                                      SQ, SK, BLOCK_N, IS_CAUSAL, True, FOLD, False)
    acc = _tile_finish(acc, l_i, m_i, lse_ptr, pid_bh, rows, SQ, STORE_LSE)
    o_desc.store([pid_m * BLOCK_M, 0], acc.to(o_ptr.dtype.element_ty))


# --- decode kernels (split-K) -------------------------------------------------------------------------


@triton.jit
def _attn_decode_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, opart_ptr, lpart_ptr,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    HKV, GROUP, SQ, SK, CHUNK, NUM_SPLITS, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr,
    DOT_UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    qk_scale = tl.cast(qk_scale, tl.float32)  # Inductor passes Python floats as fp64
    # rows of the tile = (query head in the group, query position): GROUP * SQ <= BLOCK_M
    split = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HKV
    hk = pid_bh % HKV
    r = tl.arange(0, BLOCK_M)
    row_ok = r < GROUP * SQ
    h = hk * GROUP + r // SQ
    m = r % SQ
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_ptrs = q_ptr + b * stride_qb + h[:, None] * stride_qh + m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    if DOT_UPCAST:
        q = q.to(tl.float32)
    lo = split * CHUNK
    hi = tl.minimum(lo + CHUNK, SK)
    k_ptrs = k_ptr + b * stride_kb + hk * stride_kh + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
    v_ptrs = v_ptr + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    mask_ptrs = mask_ptr + b * stride_mb + h[:, None] * stride_mh + m[:, None] * stride_mm + offs_n[None, :] * stride_mn
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    k_ptrs += lo * stride_kn
    v_ptrs += lo * stride_vn
    mask_ptrs += lo * stride_mn
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < hi
        k = tl.load(k_ptrs, mask=col_ok[None, :] & (offs_d[:, None] < HEAD_DIM), other=0.0)
        if DOT_UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, k, input_precision=PRECISION) * qk_scale
        s = _apply_mask(s, mask_ptrs, row_ok[:, None] & col_ok[None, :], MASK_KIND)
        if IS_CAUSAL:
            s = tl.where(cols[None, :] <= m[:, None], s, float("-inf"))
        s = tl.where(col_ok[None, :], s, float("-inf"))
        v = tl.load(v_ptrs, mask=col_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
        acc, l_i, m_i = _pv_step(acc, l_i, m_i, s, v, qk_scale, False, DOT_UPCAST, PRECISION)
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
        mask_ptrs += BLOCK_N * stride_mn
    # partial results: normalised output and log2-sum-exp of this split ( -inf when it saw nothing)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    lse2 = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_safe))
    flat = (b * HKV * GROUP + h) * SQ + m  # [B, Hq, SQ] row index
    o_ptrs = opart_ptr + (flat[:, None] * NUM_SPLITS + split) * BLOCK_D + offs_d[None, :]
    tl.store(o_ptrs, acc / l_safe[:, None], mask=row_ok[:, None])
    tl.store(lpart_ptr + flat * NUM_SPLITS + split, lse2, mask=row_ok)


@triton.jit
def _attn_combine_kernel(
    opart_ptr, lpart_ptr, out_ptr, lse_ptr, H, SQ, NUM_SPLITS,
    stride_ob, stride_oh, stride_om, stride_od,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
    STORE_LSE: tl.constexpr, RTNE_BF16: tl.constexpr,
):
    row = tl.program_id(0)  # (b * H + h) * SQ + m
    b = row // (H * SQ)
    h = (row // SQ) % H
    m = row % SQ
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    lse2 = tl.load(lpart_ptr + row * NUM_SPLITS + offs_s, mask=offs_s < NUM_SPLITS, other=float("-inf"))
    mx = tl.max(lse2, 0)
    mx_safe = tl.where(mx == float("-inf"), 0.0, mx)
    w = tl.math.exp2(lse2 - mx_safe)
    total = tl.sum(w, 0)
    o = tl.load(opart_ptr + (row * NUM_SPLITS + offs_s[:, None]) * BLOCK_D + offs_d[None, :],
                mask=offs_s[:, None] < NUM_SPLITS, other=0.0)
    total_safe = tl.where(total == 0.0, 1.0, total)
    acc = tl.sum(o * w[:, None], 0) / total_safe
    out_ptrs = out_ptr + b * stride_ob + h * stride_oh + m * stride_om + offs_d * stride_od
    tl.store(out_ptrs, cast_out(acc, out_ptr.dtype.element_ty, RTNE_BF16), mask=offs_d < HEAD_DIM)
    if STORE_LSE:
        lse = tl.where(total == 0.0, float("inf"), (mx_safe + tl.math.log2(total_safe)) * 0.6931471805599453)
        tl.store(lse_ptr + row, lse)


# --- backward kernels ---------------------------------------------------------------------------------


@triton.jit
def _attn_bwd_preprocess_kernel(
    out_ptr, do_ptr, delta_ptr, H, SQ,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_db, stride_dh, stride_dm, stride_dd,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    # delta = rowsum(out * dout), fp32
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (rows[:, None] < SQ) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(out_ptr + b * stride_ob + h * stride_oh + rows[:, None] * stride_om + offs_d[None, :] * stride_od,
                mask=ok, other=0.0).to(tl.float32)
    do = tl.load(do_ptr + b * stride_db + h * stride_dh + rows[:, None] * stride_dm + offs_d[None, :] * stride_dd,
                 mask=ok, other=0.0).to(tl.float32)
    tl.store(delta_ptr + pid_bh * SQ + rows, tl.sum(o * do, 1), mask=rows < SQ)


@triton.autotune(configs=_BWD_CONFIGS, key=["SQ_BUCKET", "SK_BUCKET", "HEAD_DIM", "MASK_KIND", "IS_CAUSAL", "GROUP"],
                 prune_configs_by={"early_config_prune": _prune(True)}, **_AUTOTUNE_KW)
@triton.jit
def _attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_db, stride_dh, stride_dm, stride_dd,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    H, GROUP, SQ, SK, SQ_BUCKET, SK_BUCKET, scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr,
    DOT_UPCAST: tl.constexpr, PRECISION: tl.constexpr, RTNE_BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    TRIM: tl.constexpr = False, SCAN: tl.constexpr = 512,
):
    qk_scale = tl.cast(qk_scale, tl.float32)  # Inductor passes Python floats as fp64
    scale = tl.cast(scale, tl.float32)
    # one program per (key block, batch x KV head); loops over the GROUP query heads and the query blocks,
    # so dK/dV of a shared KV head are summed in registers (no atomics)
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    HKV = H // GROUP
    b = pid_bh // HKV
    hk = pid_bh % HKV
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    kv_ok = (cols[:, None] < SK) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(k_ptr + b * stride_kb + hk * stride_kh + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                mask=kv_ok, other=0.0)
    v = tl.load(v_ptr + b * stride_vb + hk * stride_vh + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                mask=kv_ok, other=0.0)
    if DOT_UPCAST:
        k, v = k.to(tl.float32), v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo = 0
    if IS_CAUSAL:
        lo = (pid_n * BLOCK_N) // BLOCK_M * BLOCK_M  # rows before the first key of the block see none of it
    for g in range(0, GROUP):
        h = hk * GROUP + g
        start_q = lo
        if TRIM:  # a key block the padding mask drops whole has dK = dV = 0 (its p is 0 in every row)
            klo, khi, _ = _live_keys(mask_ptr + b * stride_mb + h * stride_mh, stride_mn, SK, MASK_KIND == 4,
                                     IS_CAUSAL, SCAN)
            start_q = tl.where((pid_n * BLOCK_N >= khi) | ((pid_n + 1) * BLOCK_N <= klo), SQ, lo)
        if MASK_KIND >= 3:  # a key-padding mask: this key block's bias, read once for all the query blocks
            key_bias = _apply_mask(tl.zeros([1, BLOCK_N], dtype=tl.float32),
                                   mask_ptr + b * stride_mb + h * stride_mh + cols * stride_mn, cols < SK, MASK_KIND)
            key_bias = tl.reshape(key_bias, [BLOCK_N, 1])
        for start_m in range(start_q, SQ, BLOCK_M):
            rows = start_m + offs_m
            q_ok = (rows[:, None] < SQ) & (offs_d[None, :] < HEAD_DIM)
            q = tl.load(q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                        mask=q_ok, other=0.0)
            do = tl.load(do_ptr + b * stride_db + h * stride_dh + rows[:, None] * stride_dm + offs_d[None, :] * stride_dd,
                         mask=q_ok, other=0.0)
            if DOT_UPCAST:
                q, do = q.to(tl.float32), do.to(tl.float32)
            lse = tl.load(lse_ptr + (b * H + h) * SQ + rows, mask=rows < SQ, other=float("inf"))
            delta = tl.load(delta_ptr + (b * H + h) * SQ + rows, mask=rows < SQ, other=0.0)
            # transposed tile: sT [BLOCK_N, BLOCK_M]
            sT = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
            in_bounds = (rows[None, :] < SQ) & (cols[:, None] < SK)
            if MASK_KIND >= 3:
                sT = sT + key_bias
            else:
                m_ptrs = mask_ptr + b * stride_mb + h * stride_mh + rows[None, :] * stride_mm + cols[:, None] * stride_mn
                sT = _apply_mask(sT, m_ptrs, in_bounds, MASK_KIND)
            if IS_CAUSAL:
                sT = tl.where(cols[:, None] <= rows[None, :], sT, float("-inf"))
            sT = tl.where(in_bounds, sT, float("-inf"))
            pT = tl.math.exp2(sT - lse[None, :] * 1.4426950408889634)
            if DOT_UPCAST:
                dv = tl.dot(pT, do, dv, input_precision=PRECISION)
            else:
                dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=PRECISION)
            dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            dsT = pT * (dpT - delta[None, :])
            if DOT_UPCAST:
                dk = tl.dot(dsT, q, dk, input_precision=PRECISION)
            else:
                dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=PRECISION)
    dk = dk * scale
    tl.store(dk_ptr + b * stride_dkb + hk * stride_dkh + cols[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
             cast_out(dk, dk_ptr.dtype.element_ty, RTNE_BF16), mask=kv_ok)
    tl.store(dv_ptr + b * stride_dvb + hk * stride_dvh + cols[:, None] * stride_dvn + offs_d[None, :] * stride_dvd,
             cast_out(dv, dv_ptr.dtype.element_ty, RTNE_BF16), mask=kv_ok)


@triton.autotune(configs=_BWD_CONFIGS, key=["SQ_BUCKET", "SK_BUCKET", "HEAD_DIM", "MASK_KIND", "IS_CAUSAL", "GROUP"],
                 prune_configs_by={"early_config_prune": _prune(True)}, **_AUTOTUNE_KW)
@triton.jit
def _attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_db, stride_dh, stride_dm, stride_dd,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    H, GROUP, SQ, SK, SQ_BUCKET, SK_BUCKET, scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr,
    DOT_UPCAST: tl.constexpr, PRECISION: tl.constexpr, RTNE_BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    TRIM: tl.constexpr = False, SCAN: tl.constexpr = 512,
):
    qk_scale = tl.cast(qk_scale, tl.float32)  # Inductor passes Python floats as fp64
    scale = tl.cast(scale, tl.float32)
    # the longest (causal: the last) query blocks start first, as in the forward
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_ok = (rows[:, None] < SQ) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=q_ok, other=0.0)
    do = tl.load(do_ptr + b * stride_db + h * stride_dh + rows[:, None] * stride_dm + offs_d[None, :] * stride_dd,
                 mask=q_ok, other=0.0)
    if DOT_UPCAST:
        q, do = q.to(tl.float32), do.to(tl.float32)
    lse = tl.load(lse_ptr + pid_bh * SQ + rows, mask=rows < SQ, other=float("inf"))
    delta = tl.load(delta_ptr + pid_bh * SQ + rows, mask=rows < SQ, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = SK
    if IS_CAUSAL:
        hi = tl.minimum(SK, (pid_m + 1) * BLOCK_M)
    lo = 0
    if TRIM:  # the key blocks a padding mask keeps (see _attn_fwd_kernel)
        klo, khi, _ = _live_keys(mask_ptr + b * stride_mb + h * stride_mh, stride_mn, SK, MASK_KIND == 4,
                                 IS_CAUSAL, SCAN)
        lo = klo // BLOCK_N * BLOCK_N
        hi = tl.minimum(hi, khi)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        kv_ok = (cols[None, :] < SK) & (offs_d[:, None] < HEAD_DIM)
        kT = tl.load(k_ptr + b * stride_kb + hk * stride_kh + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                     mask=kv_ok, other=0.0)
        vT = tl.load(v_ptr + b * stride_vb + hk * stride_vh + cols[None, :] * stride_vn + offs_d[:, None] * stride_vd,
                     mask=kv_ok, other=0.0)
        if DOT_UPCAST:
            kT, vT = kT.to(tl.float32), vT.to(tl.float32)
        if MASK_KIND >= 3:  # one row of keys for all the tile's queries
            m_ptrs = mask_ptr + b * stride_mb + h * stride_mh + cols * stride_mn
        else:
            m_ptrs = mask_ptr + b * stride_mb + h * stride_mh + rows[:, None] * stride_mm + cols[None, :] * stride_mn
        s = _scores(q, kT, qk_scale, m_ptrs, rows, cols, SQ, SK, MASK_KIND, IS_CAUSAL, True, PRECISION)
        p = tl.math.exp2(s - lse[:, None] * 1.4426950408889634)
        dp = tl.dot(do, vT, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        if DOT_UPCAST:
            dq = tl.dot(ds, tl.trans(kT), dq, input_precision=PRECISION)
        else:
            dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq, input_precision=PRECISION)
    dq = dq * scale
    tl.store(dq_ptr + b * stride_dqb + h * stride_dqh + rows[:, None] * stride_dqm + offs_d[None, :] * stride_dqd,
             cast_out(dq, dq_ptr.dtype.element_ty, RTNE_BF16), mask=q_ok)


# --- launchers ----------------------------------------------------------------------------------------


def unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                device: Optional[torch.device] = None) -> Optional[str]:
    """Why the kernels cannot serve these operands, or None. q [B, Hq, Sq, D], k/v [B, Hkv, Sk, D].
    ``device``: where they will run, when the operands are stand-ins on the meta device."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return f"q, k, v must be 4-D [B, H, S, D], got {q.dim()}-D, {k.dim()}-D, {v.dim()}-D"
    if q.dtype not in DTYPES:
        return f"dtype {q.dtype} not supported (fp16, bf16, fp32)"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return f"mixed dtypes {q.dtype}, {k.dtype}, {v.dtype}"
    if q.device != k.device or q.device != v.device or (mask is not None and mask.device != q.device):
        return "operands on different devices"
    B, Hq, Sq, D = q.shape
    if k.shape[0] != B or v.shape[0] != B or k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        return f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not agree"
    if k.shape[3] != D or v.shape[3] != D:
        return f"value head dim {v.shape[3]} or key head dim {k.shape[3]} differs from the query's {D}"
    if not MIN_HEAD_DIM <= D <= MAX_HEAD_DIM:
        return f"head dim {D} outside {MIN_HEAD_DIM}..{MAX_HEAD_DIM}"
    if k.shape[1] == 0 or Hq % k.shape[1]:
        return f"{Hq} query heads is not a multiple of {k.shape[1]} KV heads"
    if B * Hq > 65535:
        return f"batch x heads = {B * Hq} exceeds the grid limit 65535"
    if mask is not None:
        if mask.dtype not in (torch.bool, torch.float16, torch.bfloat16, torch.float32):
            return f"mask dtype {mask.dtype} not supported"
        if mask.dim() > 4:
            return f"{mask.dim()}-D mask"
        try:
            torch.broadcast_shapes(mask.shape, (B, Hq, Sq, k.shape[2]))
        except RuntimeError:
            return f"mask {tuple(mask.shape)} does not broadcast to {(B, Hq, Sq, k.shape[2])}"
        if torch.broadcast_shapes(mask.shape, (B, Hq, Sq, k.shape[2])) != (B, Hq, Sq, k.shape[2]):
            return f"mask {tuple(mask.shape)} would broadcast the output beyond {(B, Hq, Sq, k.shape[2])}"
    return registry.device_unsupported(device or q.device)


def _mask_args(mask: Optional[torch.Tensor], shape, dummy: torch.Tensor):
    # a broadcast mask is read through zero strides; bool masks are read as bytes
    if mask is None:
        return dummy, (0, 0, 0, 0), 0
    if mask.dtype == torch.bool:
        # inlined, a converted copy (before the broadcast, so only the mask's own bytes): Inductor cannot
        # lower the bool -> uint8 view (it asks torch.iinfo(torch.bool)), and the whole graph then fell
        # back to op calls (seen on the H200)
        m = (mask.to(torch.uint8) if inline.active() else mask.view(torch.uint8)).expand(shape)
        return m, m.stride(), 1
    m = mask.expand(shape)
    return m, m.stride(), 2


def _precision(dtype: torch.dtype) -> dict:
    # follow PyTorch: fp32 products are exact fp32 unless the user allowed TF32
    ieee = dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest"
    upcast = dot_upcast(dtype)
    return {"PRECISION": "ieee" if ieee or upcast else "tf32", "DOT_UPCAST": upcast}


def _empty_out(q: torch.Tensor) -> torch.Tensor:
    # [B, Sq, H, D] memory viewed as [B, H, Sq, D]: the "transpose(1, 2).reshape" after attention is free
    B, H, Sq, D = q.shape
    return q.new_empty((B, Sq, H, D)).transpose(1, 2)


_tma_failed: Optional[str] = None
# The TMA forward serves unmasked attention on Hopper. Not yet timed on the H100 (the one benchmark run hit a
# hook bug, fixed since, and fell back to the pointer kernel); it matches the reference under the interpreter,
# compiles for sm_90 with far fewer registers, and is checked against the pointer kernel before its first use.
# ``benchmarks/bench_attention.py --sweep`` times both; set False to use the pointer kernel only.
use_tma = True


def _disable_tma(e: Exception) -> None:
    global _tma_failed
    import warnings

    _tma_failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    warnings.warn(f"tritonfuse: the attention TMA kernel failed ({_tma_failed}); using the pointer kernel",
                  stacklevel=3)


def _tma_ok(*ts: torch.Tensor) -> bool:
    """The TMA forward: Hopper or newer, host descriptors, power-of-two head dim, 16-byte aligned strides."""
    q = ts[0]
    if not use_tma or _tma_failed or TensorDescriptor is None or registry.interpret_mode() or not q.is_cuda:
        return False
    if inline.active():
        return False  # traced for Inductor's code: the pointer kernel
    if capability(q.device)[0] < 9 or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    D = q.shape[-1]
    if D not in (32, 64, 128):  # D=256 tiles do not fit the TMA configs' shared memory
        return False
    for t in ts:
        if t.stride(-1) != 1 or any(st * t.element_size() % 16 for st in t.stride()[:-1]):
            return False
        try:
            if t.data_ptr() % 16:
                return False
        except RuntimeError:
            return False  # traced inside a compiled graph: the pointer kernel is the one Inductor's path knows
    return True


def _use_decode(q, k, is_causal: bool) -> bool:
    group = q.shape[1] // k.shape[1]
    return q.shape[2] <= DECODE_MAX_Q and k.shape[2] >= DECODE_MIN_K and group * q.shape[2] <= 128


def _forward(q, k, v, mask, scale: float, is_causal: bool, store_lse: bool, tma: bool = True):
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    out = _empty_out(q)
    lse = torch.empty((B, H, Sq), device=q.device, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    if Sk == 0:
        out.zero_()
        lse.fill_(math.inf)
        return out, lse
    m, m_strides, mask_kind = _mask_args(mask, (B, H, Sq, Sk), q)
    qk_scale = scale * LOG2E
    if _use_decode(q, k, is_causal):
        _launch_decode(q, k, v, m, m_strides, mask_kind, out, lse, qk_scale, is_causal, store_lse)
        return out, lse

    if tma and mask is None and _tma_ok(q, k, v, out) and _tma_self_check(q.device, q.dtype):
        if (is_causal, store_lse) in WS_MODES and _ws_ok(q):
            try:
                _launch_ws(q, k, v, out, lse, qk_scale, is_causal, store_lse)
                return out, lse
            except Exception as e:  # the TMA kernel serves from now on
                if not config.fallback_enabled():
                    raise
                _disable_ws(e)
        try:
            _launch_tma(q, k, v, out, lse, qk_scale, is_causal, store_lse)
            return out, lse
        except Exception as e:  # a Triton build without working TMA: the pointer kernel serves from now on
            if not config.fallback_enabled():
                raise
            _disable_tma(e)
    _launch_pointer(q, k, v, m, m_strides, mask_kind, out, lse, qk_scale, is_causal, store_lse)
    return out, lse


def _decode_settings(batch_heads: int, Sk: int, block_d: int, sms: int) -> tuple:
    """(splits of the keys, BLOCK_N, warps, stages) of the split-K decode kernel for ``batch_heads`` = B * Hkv
    programs per split.

    About 1024 keys a program, and at least one program per SM: on the H200 (``scripts/decode_sweep.py``,
    kept in benchmarks/results/diagnostics/decode-sweep-nvidia-h200.jsonl) B8 x 8 KV heads x 4096 keys ran
    fastest in 4 splits (0.0364 ms against 0.0388 in the 5 of the old rule, two programs per SM) and
    B1 x 8 x 16384 in 12-16 (0.022-0.023 ms against 0.047 in 5)."""
    block_n = 64 if block_d <= 128 else 32
    splits = max(cdiv(Sk, 1024), cdiv(sms, batch_heads))
    return max(1, min(splits, cdiv(Sk, 2 * block_n), 64)), block_n, 4, 3


def _launch_decode(q, k, v, m, m_strides, mask_kind, out, lse, qk_scale, is_causal, store_lse, combine=True):
    """Flash-decoding: programs split the keys, each writes a normalised partial output and its log-sum-exp,
    and a second kernel combines the splits of each query row."""
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    group = H // Hkv
    block_d = max(16, next_pow2(D))
    block_m = max(16, next_pow2(group * Sq))
    # the interpreter: as many "SMs" as split a short test cache in several ragged chunks
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 16
    splits, block_n, warps, stages = _decode_settings(B * Hkv, Sk, block_d, sms)
    chunk = cdiv(cdiv(Sk, splits), block_n) * block_n
    splits = cdiv(Sk, chunk)
    opart = torch.empty((B * H * Sq, splits, block_d), device=q.device, dtype=torch.float32)
    lpart = torch.empty((B * H * Sq, splits), device=q.device, dtype=torch.float32)
    registry.launcher(_attn_decode_kernel)[(splits, B * Hkv)](
        q, k, v, m, opart, lpart,
        *q.stride(), *k.stride(), *v.stride(), *m_strides,
        Hkv, group, Sq, Sk, chunk, splits, qk_scale,
        HEAD_DIM=D, BLOCK_D=block_d, MASK_KIND=mask_kind, IS_CAUSAL=is_causal,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages, **_precision(q.dtype),
    )
    if combine:
        registry.launcher(_attn_combine_kernel)[(B * H * Sq,)](
            opart, lpart, out, lse, H, Sq, splits, *out.stride(),
            HEAD_DIM=D, BLOCK_D=block_d, BLOCK_S=max(2, next_pow2(splits)),
            STORE_LSE=store_lse, RTNE_BF16=rtne_bf16(q.dtype), num_warps=4,
        )


# FOLD_SCALE: unmasked attention with a positive scale applies it inside the exponent's FMA (_softmax_step).
# On the H200 (scripts/attn_fwd_sweep.py, benchmarks/results/diagnostics/README.md), in two sweeps, it was
# 1% slower to 7.5% faster (faster for the pointer kernel that models run, within 1.2% for the TMA kernel).
# Measured there and not kept: rescaling the accumulator only when a running max grows by more than 2^8 (FlashAttention-4's trick; here a block-wide branch every tile: 0-22% slower), issuing the next
# block's q.k before this block's softmax (11-20% slower), and Triton 3.6's automatic warp specialization of
# the TMA loop (no gain at 8 warps; its compiler failed at 4).
FOLD_SCALE = True


def _fold(mask_kind: int, qk_scale: float) -> bool:
    return FOLD_SCALE and mask_kind == 0 and qk_scale > 0


def _pointer_mask_kind(mask_kind: int, m_strides) -> int:
    """The forward pointer kernel's MASK_KIND: a mask the same for every query (zero stride over queries) is
    read as one vector of keys per tile (3 / 4 for bool / additive)."""
    return mask_kind + 2 if mask_kind in (1, 2) and m_strides[2] == 0 else mask_kind


# TRIM_PADDING: under a key-padding mask (the same keys masked for every query row: BERT's, any padded batch)
# the forward and backward skip the key blocks before the first and after the last key the mask keeps, whose
# weights are exactly 0 (``_live_keys``); a batch padded to a quarter of its length reads a quarter fewer
# keys. False: every key block, as SDPA does.
TRIM_PADDING = True


def _trim(mask_kind: int) -> bool:
    """Whether a launch whose pointer-kernel MASK_KIND is ``mask_kind`` skips its masked key blocks."""
    return TRIM_PADDING and mask_kind in (3, 4)


# RUN_PADDING: under a key-padding mask without a causal mask, a program whose kept keys form one run (every
# padded batch: the padding at the end or at the start), to which an additive mask adds 0 (HF's eager
# attention), reads the mask only in the key blocks at the run's two ends; the blocks inside run the unmasked
# loop. The interpreter gives the same bits as reading the mask everywhere; compiled for the H100 the
# unmasked loop's scores round otherwise (a few units in the last place). bert-base's padded attention there
# (the list's first config): 0.0906 ms against 0.0966 without under a bool mask, 0.0907 against 0.0951 under
# HF's additive one (SDPA 0.1166 and 0.1080; 64th session).
RUN_PADDING = True


def _run(mask_kind: int, is_causal: bool) -> bool:
    return RUN_PADDING and _trim(mask_kind) and not is_causal


def _launch_pointer(q, k, v, m, m_strides, mask_kind, out, lse, qk_scale, is_causal, store_lse,
                    first: Optional[torch.Tensor] = None, empty_fill: float = 0.0):
    # first: [B] int32, each sequence's first kept key (EMPTY_ROWS, see _attn_fwd_kernel)
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    mask_kind = _pointer_mask_kind(mask_kind, m_strides)
    lpt, group = _lpt(B * H, Sk, D, q.element_size(), is_causal)
    registry.launcher(_attn_fwd_kernel)[_fwd_grid(Sq, B * H, lpt)](
        q, k, v, m, out, lse, first if first is not None else q,  # not lse, written
        *q.stride(), *k.stride(), *v.stride(), *m_strides, *out.stride(),
        H, H // Hkv, Sq, Sk, _bucket(Sq), _bucket(Sk), qk_scale, empty_fill,
        HEAD_DIM=D, BLOCK_D=max(16, next_pow2(D)), MASK_KIND=mask_kind, IS_CAUSAL=is_causal,
        STORE_LSE=store_lse, RTNE_BF16=rtne_bf16(q.dtype), **_precision(q.dtype),
        FOLD=_fold(mask_kind, qk_scale), EMPTY_ROWS=first is not None, LPT_GROUP=group, LPT=lpt,
        TRIM=_trim(mask_kind) and first is None, RUN=_run(mask_kind, is_causal) and first is None,
    )


def _launch_tma(q, k, v, out, lse, qk_scale, is_causal, store_lse):
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    dummy = [1, 1, 16, D]  # real boxes are set per config by _tma_block_hook
    lpt, group = _lpt(B * H, Sk, D, q.element_size(), is_causal)
    registry.launcher(_attn_fwd_tma_kernel)[_fwd_grid(Sq, B * H, lpt)](
        *(host_desc(t, dummy) for t in (q, k, v, out)), lse,
        H, H // Hkv, Sq, Sk, _bucket(Sq), _bucket(Sk), qk_scale,
        HEAD_DIM=D, IS_CAUSAL=is_causal, STORE_LSE=store_lse, FOLD=_fold(0, qk_scale), LPT_GROUP=group, LPT=lpt,
    )


def _ws_launch(q, k, v, out, lse, qk_scale, is_causal, store_lse) -> tuple:
    """(grid, arguments, keyword arguments) of a launch of the warp-specialized forward."""
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    lpt, group = _lpt(B * H, Sk, D, q.element_size(), is_causal)
    args = (q, k, v, out, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
            H, H // Hkv, Sq, Sk, _bucket(Sq), _bucket(Sk), qk_scale)
    # KEYS_EVEN: every config's BLOCK_N divides 128
    return _fwd_grid(Sq, B * H, lpt), args, dict(HEAD_DIM=D, IS_CAUSAL=is_causal, STORE_LSE=store_lse,
                                                 KEYS_EVEN=Sk % 128 == 0, FOLD=_fold(0, qk_scale),
                                                 LPT_GROUP=group, LPT=lpt)


def _launch_ws(q, k, v, out, lse, qk_scale, is_causal, store_lse, tune=True):
    grid, args, kwargs = _ws_launch(q, k, v, out, lse, qk_scale, is_causal, store_lse)
    # Triton's own launch, which passes the descriptors' scratch memory (as kernels.int8's device TMA kernel);
    # tune=False: one config set by the self-check, nothing compiled ahead or kept
    if tune:
        launch.precompile_for(_attn_fwd_ws_kernel, grid, args, kwargs)
    with scratch_allocator(q.device):
        _attn_fwd_ws_kernel[grid](*args, **kwargs)
    if tune:
        tuning.save(_attn_fwd_ws_kernel, args, kwargs)


# Causal forwards in longest-processing-time order (``_fwd_program``). A causal query block costs as many key
# blocks as it lies deep, and in the [query blocks, heads] grid the last wave holds a last head's longest
# blocks beside short ones. Simulated as list scheduling on 132 SMs (one program each, cost = key blocks):
# B8 H16 S4096 with 128-row blocks ends 3.5% after the ideal, S1024 (Llama-1B prefill) 14.6%; in LPT order
# 0-3%. Heads are taken in groups whose keys and values (both, at most LPT_L2_BYTES) stay in L2 together, as
# the head-major order keeps one head's. H200 (``scripts/lpt_probe.py`` at 61fd052, CUDA-graph replays), TMA
# and pointer kernels alike 1-6% faster: B8 H16 S4096 D128 1.264 -> 1.232 ms (TMA), Llama-1B's B8 H16/8
# S1024 0.120 -> 0.113 (TMA) and 0.114 -> 0.110 (pointer), D64 at S4096 0.731 -> 0.708 (SDPA: 1.074, 0.086,
# 0.672). False: the head-major grid.
CAUSAL_LPT = True
LPT_L2_BYTES = 16 << 20


def _lpt(heads: int, Sk: int, D: int, elem: int, is_causal: bool) -> tuple[bool, int]:
    """(LPT order, heads per group) of a forward launch over ``heads`` = B * H."""
    if not (CAUSAL_LPT and is_causal):
        return False, 1
    return True, max(1, min(heads, LPT_L2_BYTES // max(1, 2 * Sk * D * elem)))


def _fwd_grid(Sq: int, heads: int, lpt: bool):
    if lpt:
        return lambda meta: (cdiv(Sq, meta["BLOCK_M"]) * heads,)
    return lambda meta: (cdiv(Sq, meta["BLOCK_M"]), heads)


_tma_checked: dict = {}


def _tma_self_check(device: torch.device, dtype: torch.dtype) -> bool:
    """Before its first use on a device and dtype, the TMA kernel must reproduce the pointer kernel on a
    ragged GQA input (causal and not); otherwise the pointer kernel serves from then on, with one warning."""
    return _self_check("tma", device, dtype, lambda: _tma_compare(device, dtype, _launch_tma), _disable_tma)


def _self_check(name: str, device: torch.device, dtype: torch.dtype, compare, disable, head_dim: int = 64) -> bool:
    key = (name, str(device), dtype, head_dim)
    if key not in _tma_checked and device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False  # no synchronising check inside a CUDA graph capture: the pointer kernel serves it
    if key not in _tma_checked:
        ok = True
        try:
            # one config each (registry.one_config): tuning at this toy shape compiles configs no model uses
            with registry.one_config():
                compare()
        except Exception as e:
            if not config.fallback_enabled():
                raise
            disable(e)
            ok = False
        _tma_checked[key] = ok
    return _tma_checked[key] and not (_ws_failed if name == "ws" else _tma_failed)


def _compare_inputs(device: torch.device, dtype: torch.dtype, d: int) -> tuple:
    # ragged lengths (150 queries, 130 keys), GQA (4 query heads, 2 KV heads), strided queries
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(1, 150, 4, d, generator=g, device="cpu").to(device=device, dtype=dtype).transpose(1, 2)
    k, v = (torch.randn(1, 2, 130, d, generator=g, device="cpu").to(device=device, dtype=dtype) for _ in range(2))
    return q, k, v


def _tma_compare(device: torch.device, dtype: torch.dtype, launch_fn, head_dim: int = 64,
                 modes: tuple = ((False, True), (True, True))) -> None:
    # modes: (causal, with the log-sum-exp) pairs checked
    d = head_dim
    q, k, v = _compare_inputs(device, dtype, d)
    for causal, store_lse in modes:
        o1, o2 = _empty_out(q), _empty_out(q)
        l1, l2 = (torch.empty((1, 4, 150), device=device, dtype=torch.float32) for _ in range(2))
        _launch_pointer(q, k, v, q, (0, 0, 0, 0), 0, o1, l1, d ** -0.5 * LOG2E, causal, True)
        launch_fn(q, k, v, o2, l2, d ** -0.5 * LOG2E, causal, store_lse)
        err = (o1.float() - o2.float()).abs().max().item()
        if store_lse:
            err = max(err, (l1 - l2).abs().max().item())
        if not err <= 1e-2:
            raise RuntimeError(f"TMA and pointer kernels differ by {err:.3g} ({'causal' if causal else 'full'})")


# The warp-specialized forward (``_attn_fwd_ws_kernel``) serves, with TRITONFUSE_WARP_SPECIALIZE=1, where the
# TMA kernel would and in the modes of WS_MODES only. On the H200 (41st session, triton 3.6,
# scripts/ws_probe.py) triton's partitioner gets the second consumer's row indices wrong: causal masks and the
# log-sum-exp store (both indexed by row) came out wrong for rows BLOCK_M / 2 and up, while the output, stored
# by descriptor, matched the pointer kernel for every 2-stage config unmasked. The kernel is right under the
# interpreter in every mode; the modes are widened when a triton builds them right (the self-check says).
WS_MODES = ((False, False),)  # (causal, with the log-sum-exp)
_ws_failed: Optional[str] = None


def _disable_ws(e: Exception) -> None:
    global _ws_failed
    import warnings

    _ws_failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    warnings.warn(f"tritonfuse: the warp-specialized attention kernel failed ({_ws_failed}); using the TMA kernel",
                  stacklevel=3)


def _ws_ok(q: torch.Tensor) -> bool:
    """The warp-specialized forward, where the TMA kernel serves (``_tma_ok``): Hopper (sm_90; Blackwell's
    specialization is another pass, not built for), a triton with ``tl.range(warp_specialize=...)`` and device
    descriptors, and the self-check at this head dim passed, every config of it."""
    if not (config.warp_specialize_enabled() and _HAS_WS) or _ws_failed or capability(q.device)[0] != 9:
        return False
    D = q.shape[-1]
    return _self_check("ws", q.device, q.dtype, lambda: _ws_compare(q.device, q.dtype, D), _disable_ws, D)


def _ws_compare(device: torch.device, dtype: torch.dtype, head_dim: int) -> None:
    # each config on its own: the autotuner may pick any at a site's shapes; the partitioner is new in triton
    # (a miscompile would show here, not as an error)
    configs = _attn_fwd_ws_kernel.configs
    q, k, v = _compare_inputs(device, dtype, head_dim)
    lse = torch.empty((1, 4, 150), device=device, dtype=torch.float32)
    for causal, store_lse in WS_MODES:  # every config compiled side by side first; the loop finds them built
        launch.precompile_for(_attn_fwd_ws_kernel,
                              *_ws_launch(q, k, v, _empty_out(q), lse, head_dim ** -0.5 * LOG2E, causal, store_lse))
    try:
        for cfg in configs:
            _attn_fwd_ws_kernel.configs = [cfg]
            _tma_compare(device, dtype, lambda *a: _launch_ws(*a, tune=False), head_dim, WS_MODES)
    finally:
        _attn_fwd_ws_kernel.configs = configs


def _attention_fake(q, k, v, mask, scale, is_causal):
    return _empty_out(q)


@registry.kernel_op("tritonfuse::attention", fake=_attention_fake, inline=True)
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], scale: float,
              is_causal: bool) -> torch.Tensor:
    """``softmax(q @ k.transpose(-2, -1) * scale + mask) @ v`` in one flash-attention kernel.

    Query lengths up to 16 against a KV cache of 256 or more keys use the split-K decode kernels.

    Args:
        q: [B, Hq, Sq, D] (any strides), fp16 or bf16; D in 16..256.
        k, v: [B, Hkv, Sk, D]; Hq a multiple of Hkv (GQA, K/V are not repeated).
        mask: None, a bool mask (True = attend) or an additive float mask broadcastable to [B, Hq, Sq, Sk].
        scale: the softmax scale (SDPA's default is 1 / sqrt(D)).
        is_causal: query i attends keys j <= i (top-left aligned, as SDPA).

    Returns:
        [B, Hq, Sq, D]; rows with every key masked are zeros.

    Example::

        >>> q, k, v = (torch.randn(2, 4, 37, 80, dtype=torch.float16) for _ in range(3))
        >>> o = torch.ops.tritonfuse.attention(q, k, v, None, 80 ** -0.5, True)  # TRITON_INTERPRET=1 on a CPU
    """
    return _forward(q, k, v, mask, scale, is_causal, store_lse=False)[0]


def _causal_padded_fake(q, k, v, keys, scale, fill):
    return _empty_out(q)


@registry.kernel_op("tritonfuse::attention_causal_padded", fake=_causal_padded_fake, inline=True)
def attention_causal_padded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys: torch.Tensor, scale: float,
                            fill: float) -> torch.Tensor:
    """Causal attention under a key-padding mask given with a finite fill, as eager computes it: with
    ``mask = where(keep & (kv_idx <= q_idx), 0, fill)`` (HF decoders' SDPA mask on the GPU),
    ``softmax(q @ k.T * scale + mask) @ v``. Where a row keeps a key the fill excludes the others; a row
    that keeps none (left padding's own rows) gets the fill on every score, which cancels: it attends over
    all keys. The kernel skips the key blocks past the diagonal except for those rows.

    Args:
        q: [B, Hq, S, D]; k, v: [B, Hkv, S, D] (as ``attention``, with as many keys as queries).
        keys: the additive key mask, 0 where kept and ``fill`` where masked, broadcastable to [B, 1, 1, S].
        scale: the softmax scale; fill: the mask's value on masked keys, finite and negative.
    """
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    if Sq != Sk or not (math.isfinite(fill) and fill < 0):
        raise ValueError(f"attention_causal_padded takes as many keys as queries ({Sq} vs {Sk}) and a finite "
                         f"negative fill ({fill})")
    out = _empty_out(q)
    if out.numel() == 0:
        return out
    km = keys.expand(B, 1, 1, Sk)
    # the first kept key of each sequence (Sk where none is): Sk - max(kept * (Sk - pos)). Integer products,
    # not where(kept, pos, Sk).amin(): inlined into a reduction fused with the mask's own producer, torch
    # 2.11's Triton codegen typed that where as the mask's float dtype and failed (torch.iinfo of a float)
    after = Sk - torch.arange(Sk, device=q.device, dtype=torch.int32)
    first = (Sk - ((km[:, 0, 0, :] == 0).to(torch.int32) * after).amax(-1)).to(torch.int32)
    lse = torch.empty((B, H, Sq), device=q.device, dtype=torch.float32)  # not written (STORE_LSE off)
    m, m_strides, mask_kind = _mask_args(keys, (B, H, Sq, Sk), q)
    _launch_pointer(q, k, v, m, m_strides, mask_kind, out, lse, scale * LOG2E, True, False, first, fill)
    return out


def _attention_fwd_fake(q, k, v, mask, scale, is_causal):
    B, H, Sq, _ = q.shape
    return _empty_out(q), q.new_empty((B, H, Sq), dtype=torch.float32)


@registry.kernel_op("tritonfuse::attention_fwd", fake=_attention_fwd_fake, inline=True)
def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], scale: float,
                  is_causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``attention`` that also returns the natural-log log-sum-exp [B, Hq, Sq] (fp32) for the backward."""
    return _forward(q, k, v, mask, scale, is_causal, store_lse=True)


def _attention_bwd_fake(dout, q, k, v, out, lse, mask, scale, is_causal):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@registry.kernel_op("tritonfuse::attention_bwd", fake=_attention_bwd_fake, inline=True)
def attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, mask: Optional[torch.Tensor], scale: float,
                  is_causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV of ``attention`` from the forward's ``out`` and ``lse`` (``attention_fwd``).

    Example::

        >>> o, lse = torch.ops.tritonfuse.attention_fwd(q, k, v, None, 0.125, False)
        >>> dq, dk, dv = torch.ops.tritonfuse.attention_bwd(torch.randn_like(o), q, k, v, o, lse, None, 0.125, False)
    """
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    block_d = max(16, next_pow2(D))
    delta = torch.empty((B, H, Sq), device=q.device, dtype=torch.float32)
    registry.launcher(_attn_bwd_preprocess_kernel)[(cdiv(Sq, 64), B * H)](
        out, dout, delta, H, Sq, *out.stride(), *dout.stride(), HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=64,
    )
    m, m_strides, mask_kind = _mask_args(mask, (B, H, Sq, Sk), q)
    # (a key-padding mask read as one vector of keys per tile, as the forward reads it: at bert-base's train
    # shape the score-sized reads took the backward from 0.265 ms without a mask to 0.414 with one)
    mask_kind = _pointer_mask_kind(mask_kind, m_strides)
    lse = lse.contiguous()
    common = dict(HEAD_DIM=D, BLOCK_D=block_d, MASK_KIND=mask_kind, IS_CAUSAL=is_causal,
                  RTNE_BF16=rtne_bf16(q.dtype), TRIM=_trim(mask_kind),
                  **_precision(q.dtype))
    sizes = (H, H // Hkv, Sq, Sk, _bucket(Sq), _bucket(Sk), scale, scale * LOG2E)
    registry.launcher(_attn_bwd_dkdv_kernel)[lambda meta: (cdiv(Sk, meta["BLOCK_N"]), B * Hkv)](
        q, k, v, m, dout, lse, delta, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *m_strides, *dout.stride(), *dk.stride(), *dv.stride(),
        *sizes, **common,
    )
    registry.launcher(_attn_bwd_dq_kernel)[lambda meta: (cdiv(Sq, meta["BLOCK_M"]), B * H)](
        q, k, v, m, dout, lse, delta, dq,
        *q.stride(), *k.stride(), *v.stride(), *m_strides, *dout.stride(), *dq.stride(),
        *sizes, **common,
    )
    return dq, dk, dv


# --- references ---------------------------------------------------------------------------------------


def attention_ref(q, k, v, mask=None, scale=None, is_causal=False, upcast: bool = False) -> torch.Tensor:
    """Attention written out in PyTorch (fp64 on the CPU with ``upcast=True``), with this module's
    conventions: top-left causal alignment, GQA by repeating K/V, fully masked rows -> 0."""
    if upcast:
        q, k, v = q.double().cpu(), k.double().cpu(), v.double().cpu()
        if mask is not None:
            mask = mask.cpu() if mask.dtype == torch.bool else mask.double().cpu()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    s = (q @ k.transpose(-2, -1)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.to(s.dtype)
    if is_causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return p @ v


def _timing_mask(mshape: tuple, dtype: torch.dtype, device, padding: Optional[bool]) -> torch.Tensor:
    """A mask of ``mshape`` to time a site with. ``padding`` None: a tenth of the entries dropped at random
    (key 0 of every row kept); True / False: a key-padding mask (the same for every query row) of a batch
    padded at the end, each sequence keeping half to all of its keys (the first all of them, where the batch
    has several), or of a batch without padding. Bool, or additive with -inf where a key is dropped."""
    if padding is None:
        keep = torch.rand(mshape, device=device) > 0.1
        keep[..., 0] = True
    else:
        b, sk = mshape[0], mshape[-1]
        # (drawn on the CPU, whatever the default device: a CPU generator's draws)
        if padding:
            lengths = torch.randint(sk // 2, sk + 1, (b,), generator=torch.Generator().manual_seed(sk),
                                    device="cpu")
            if b > 1:
                lengths[0] = sk
        else:
            lengths = torch.full((b,), sk, device="cpu")
        keep = (torch.arange(sk, device="cpu")[None, :] < lengths[:, None]).view(b, *([1] * (len(mshape) - 2)), sk)
        keep = keep.expand(mshape).contiguous().to(device)
    if dtype == torch.bool:
        return keep
    return torch.zeros(mshape, device=device, dtype=dtype).masked_fill(~keep, float("-inf"))


def _is_key_padding(mshape: Optional[tuple]) -> bool:
    """A mask shape that is the same for every query row ([B, 1 or H, 1, Sk]): a key-padding mask."""
    return mshape is not None and len(mshape) == 4 and mshape[-2] == 1


# SDPA's enable_gqa (torch 2.5 on)
SDPA_HAS_GQA = "enable_gqa" in str(torch.ops.aten.scaled_dot_product_attention.default._schema)


def sdpa_takes_gqa(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether SDPA without a mask serves K/V with fewer heads than q (``enable_gqa``) in a fused kernel: the
    CPU's flash kernel; on CUDA flash attention's (sm80 on, fp16 or bf16, head dim at most 256) or cuDNN's.
    Elsewhere (the memory-efficient kernel takes no GQA) SDPA would fall back to its math form."""
    if not SDPA_HAS_GQA:
        return False
    if device.type == "cpu":
        return True
    return (device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and head_dim <= 256
            and torch.cuda.get_device_capability(device) >= (8, 0))


def measure(q, k, v, mask, is_causal: bool, device: Optional[torch.device] = None, train: bool = False) -> dict:
    """On a GPU, time this kernel against PyTorch's SDPA (cuDNN, flash or memory-efficient, whichever it
    picks) at the site's shapes, for GQA on K/V repeated to the query heads as the graph does, or, without a
    mask where ``sdpa_takes_gqa``, on the K/V heads as they are (``enable_gqa``: the SDPA the attention pass
    leaves a mask-free site); cached per shape.
    ``q``, ``k``, ``v``, ``mask`` give shapes and dtypes (they may be meta stand-ins); ``device`` (default
    ``q.device``) is where the site runs and is timed.

    A key-padding mask (``_is_key_padding``) drops a run of keys at the end of the shorter sequences of a
    padded batch: the kernel skips those key blocks (``TRIM_PADDING``), SDPA computes them. Such a site is
    timed twice: on a padded batch (``_timing_mask``) it must win by the margin, and on a batch without
    padding it must not lose (median ratio at most 1), so an unpadded batch never pays for a choice made on
    padded ones. Other masks drop a tenth of their entries at random.

    ``train``: a training site, timed as its forward (keeping the log-sum-exp) and backward together against
    SDPA's forward and backward (autograd through ``scaled_dot_product_attention``); a key-padding one on a
    padded batch and on one without padding, as above."""
    device = torch.device(device) if device is not None else q.device
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    mshape = tuple(mask.shape) if mask is not None else None
    key = (f"attention|B{B}xH{H}xKV{Hkv}xSq{Sq}xSk{Sk}xD{D}|{q.dtype}|mask{mshape}:{mask.dtype if mask is not None else ''}"
           f"|causal{int(is_causal)}" + ("|train" if train else ""))
    graphed = inline.will_inline((torch.ops.tritonfuse.attention_bwd if train else torch.ops.tritonfuse.attention)
                                 .default, device)

    def timed(padding: Optional[bool]) -> dict:
        suffix = "" if padding is None else ("|padded batch" if padding else "|unpadded batch")
        if train:
            return _measure_train(key + suffix, q, k, v, mask, is_causal, device, graphed, padding)
        lazy = {}

        def args():
            if not lazy:
                def real(*shape):
                    return torch.randn(shape, device=device, dtype=q.dtype)
                m = None if mask is None else _timing_mask(mshape, mask.dtype, device, padding)
                kk, vv = real(B, Hkv, Sk, D), real(B, Hkv, Sk, D)
                lazy.update(q=real(B, H, Sq, D), k=kk, v=vv, m=m, kr=kk.repeat_interleave(H // Hkv, 1),
                            vr=vv.repeat_interleave(H // Hkv, 1))
            return lazy

        def ours():
            a = args()
            # inlined calls run the pointer (or decode) kernels: those are timed
            return _forward(a["q"], a["k"], a["v"], a["m"], D ** -0.5, is_causal, store_lse=False,
                            tma=not graphed)[0]

        gqa = Hkv != H and mask is None and sdpa_takes_gqa(device, q.dtype, D)

        def sdpa():
            a = args()
            if gqa:
                return torch.nn.functional.scaled_dot_product_attention(a["q"], a["k"], a["v"], is_causal=is_causal,
                                                                        enable_gqa=True)
            return torch.nn.functional.scaled_dot_product_attention(a["q"], a["kr"], a["vr"], attn_mask=a["m"],
                                                                    is_causal=is_causal and a["m"] is None)

        return registry.measured_choice(key + suffix, device, ours, [sdpa], graphed=graphed)

    if not (TRIM_PADDING and _is_key_padding(mshape)):
        return timed(None)
    rec = timed(True)
    if not rec.get("use") or "ours_ms" not in rec:  # (slower, unmeasured, or not timed off the GPU)
        return rec
    unpadded = timed(False)
    ratio = registry.cost_ratio(unpadded)
    if unpadded.get("unmeasured") or (ratio is not None and ratio > 1.0):
        return {**unpadded, "use": False, "vs": "SDPA on a batch without padding"}
    return rec


def _measure_train(key: str, q, k, v, mask, is_causal: bool, device: torch.device, graphed: bool,
                   padding: Optional[bool]) -> dict:
    """``measure``'s training side (``padding``: ``_timing_mask``'s). ``graphed``: the two ops will be inlined
    into Inductor's code (the GPU's forward and backward graphs), so both sides are timed as replayed CUDA
    graphs, GPU time alone: the op calls' host time (about 0.33 ms for the pair on the H100) is no cost of the
    inlined kernels, and timing it made bert-base's and llama-1b's pairs lose 1.43x (49th session)."""
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    lazy = {}

    def args():
        if not lazy:
            def real(*shape):
                return torch.randn(shape, device=device, dtype=q.dtype)
            m = None if mask is None else _timing_mask(tuple(mask.shape), mask.dtype, device, padding)
            lazy.update(q=real(B, H, Sq, D), k=real(B, Hkv, Sk, D), v=real(B, Hkv, Sk, D), do=real(B, H, Sq, D), m=m)
        return lazy

    def ours():
        a = args()
        # (inlined, the forward runs the pointer kernel, as ``measure``'s inference side times it)
        out, lse = _forward(a["q"], a["k"], a["v"], a["m"], D ** -0.5, is_causal, store_lse=True, tma=not graphed)
        return torch.ops.tritonfuse.attention_bwd(a["do"], a["q"], a["k"], a["v"], out, lse, a["m"], D ** -0.5,
                                                  is_causal)

    def sdpa():
        a = args()
        with torch.enable_grad():
            qkv = [a[n].detach().requires_grad_() for n in ("q", "k", "v")]
            out = torch.nn.functional.scaled_dot_product_attention(*qkv, attn_mask=a["m"],
                                                                   is_causal=is_causal and a["m"] is None)
            return torch.autograd.grad(out, qkv, a["do"])

    return registry.measured_choice(key, device, ours, [sdpa], graphed=graphed)


def probe(device: str, dtype: torch.dtype, head_dim: int, mask_kind: str, is_causal: bool, gqa: bool,
          decode: bool = False, padded: bool = False, train: bool = False) -> Optional[str]:
    """Compile and launch one variant on a small input once; None when it works, else the reason.
    ``padded``: ``attention_causal_padded`` with an additive key mask of ``mask_kind``'s dtype. ``train``:
    the forward that keeps its log-sum-exp, then the backward, its gradients checked against fp64's."""

    def run():
        g = torch.Generator(device="cpu").manual_seed(0)
        hkv = 1 if gqa else 2
        # (sizes that are multiples of 16, as most sites' are: Triton then specialises the probe's launch as a
        # site's, and its compile is one of the site's tuning configs, not one of its own)
        sq, sk = (2, DECODE_MIN_K + 3) if decode else (32, 32)
        q = torch.randn(1, 2, sq, head_dim, generator=g, device="cpu").to(device=device, dtype=dtype)
        k = torch.randn(1, hkv, sk, head_dim, generator=g, device="cpu").to(device=device, dtype=dtype)
        v = torch.randn(1, hkv, sk, head_dim, generator=g, device="cpu").to(device=device, dtype=dtype)
        mask = None
        if mask_kind == "bool":
            mask = torch.rand(1, 1, sq, sk, generator=g, device="cpu").to(device) > 0.2
        elif mask_kind != "none":
            mask = torch.randn(1, 1, 1, sk, generator=g, device="cpu").to(device=device, dtype=getattr(torch, mask_kind))
        if padded:  # rows 0-4 keep no key; sk = sq
            q = q[:, :, :sk] if sq >= sk else torch.cat([q] * cdiv(sk, sq), dim=2)[:, :, :sk]
            keep = torch.arange(sk, device=device) >= 5
            fill = torch.tensor(-65504.0).to(getattr(torch, mask_kind)).item()  # fp16's lowest (bf16: -65536)
            mask = torch.where(keep, 0.0, fill).to(dtype=getattr(torch, mask_kind)).view(1, 1, 1, sk)
            y = torch.ops.tritonfuse.attention_causal_padded(q, k, v, mask, head_dim ** -0.5, fill)
            full = mask.masked_fill(~torch.ones(sk, sk, dtype=torch.bool, device=device).tril(), fill)
            ref = attention_ref(q, k, v, full, head_dim ** -0.5, False, upcast=True)
        elif train:
            dout = torch.randn(q.shape, generator=g, device="cpu").to(device=device, dtype=dtype)
            out, lse = torch.ops.tritonfuse.attention_fwd(q, k, v, mask, head_dim ** -0.5, is_causal)
            grads = torch.ops.tritonfuse.attention_bwd(dout, q, k, v, out, lse, mask, head_dim ** -0.5, is_causal)
            leaves = [t.detach().double().cpu().requires_grad_() for t in (q, k, v)]
            m64 = None if mask is None else mask.cpu() if mask.dtype == torch.bool else mask.double().cpu()
            with torch.enable_grad():
                ref_out = attention_ref(*leaves, m64, head_dim ** -0.5, is_causal)
                refs = torch.autograd.grad(ref_out, leaves, dout.double().cpu())
            y = torch.cat([t.flatten() for t in (out, *grads)])
            ref = torch.cat([t.flatten() for t in (ref_out, *refs)]).detach()
        else:
            # the kernel the site will run: inlined into Inductor's code, the pointer kernel (the TMA kernel
            # serves op calls only, and checks itself on its first one: _tma_self_check); probing TMA there
            # cost vit_b_16's first compile three TMA compiles its model never runs
            tma = not inline.will_inline(torch.ops.tritonfuse.attention.default, torch.device(device))
            y = _forward(q, k, v, mask, head_dim ** -0.5, is_causal, store_lse=False, tma=tma)[0]
            ref = attention_ref(q, k, v, mask, head_dim ** -0.5, is_causal, upcast=True)
        err = (y.double().cpu() - ref).norm() / ref.norm().clamp_min(1e-12)
        if not math.isfinite(err.item()) or err.item() > 5e-2:
            raise RuntimeError(f"wrong result on the probe input (relative error {err.item():.3g})")

    name = f"attention[{dtype},d{head_dim},{mask_kind},{'causal' if is_causal else 'full'},{'gqa' if gqa else 'mha'}"
    name += ",decode]" if decode else ",causal_padded]" if padded else ",train]" if train else "]"
    return registry.guarded_probe(f"{name}@{device}", run)
