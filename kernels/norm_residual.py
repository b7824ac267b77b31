"""Residual add + LayerNorm / RMSNorm in one pass per row: ``h = x + r``, ``y = norm(h) * w + b``.

Each program reads its rows of ``x`` and ``r`` once, writes the sum ``h`` when the graph uses it afterwards
(pre-norm blocks: the next residual is ``h``) and the normalized output. Statistics are fp32. Rows that fit
one block stay in registers; longer rows are walked in chunks (statistics merged chunk by chunk, then a
second sweep normalizes). The backward kernels (dx = dresidual, dweight, dbias) are below the forward.

int8 hook: ``norm_residual(..., quant_out=True)`` also returns int8 activations and per-row fp32 scales
(symmetric, ``scale = max|y| / 127``) for the Linear that follows, computed from ``y`` while it is still
fp32 in registers. The int8 family calls it when ``TRITONFUSE_QUANT=int8``; nothing here reads the setting.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from tritonfuse import inline, registry
from tritonfuse.kernels.common import cast_out, cdiv, next_pow2, rtne_bf16
from tritonfuse.kernels.int8 import _max_nan, _quant_scaled, _row_inv, _row_scale

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
KINDS = ("layer", "rms")
MAX_N = 65536  # longest row served (longer rows are left to Inductor)
BWD_MAX_N = 16384  # longest row the backward kernel takes (one block per row)

# --- block settings (no autotune: derived from the row length) ----------------------------------------


def _settings(n: int, elem_size: int) -> dict:
    """BLOCK_N, rows per program, warps and whether the row fits one block."""
    block_n = next_pow2(max(n, 16))
    # a whole row in registers: up to 16K half-precision or 8K fp32 values per program
    max_single = 16384 if elem_size <= 2 else 8192
    if block_n <= max_single:
        # one row per program: on the H100 (bench_norm_residual, commit d7196c7) two or four rows per
        # program ran at 0.5-2 TB/s where one row with 8 or 16 warps reached 3.0 TB/s; rows of 768 or less
        # (a quarter of the 1024 block masked) run best on 2 warps (H200, scripts/norm_sweep.py at cfe76ca:
        # 32768x768 LayerNorm 0.0372 ms against 0.0413 on 4 warps, Inductor 0.0371)
        warps = (2 if n <= 768 else 4) if block_n <= 1024 else (8 if block_n <= 4096 else 16)
        return {"BLOCK_M": 1, "BLOCK_N": block_n, "SINGLE": True, "num_warps": warps}
    return {"BLOCK_M": 1, "BLOCK_N": 4096, "SINGLE": False, "num_warps": 8}


def _bwd_settings(n: int, is_rms: bool) -> dict:
    """Backward: rows handled together (BLOCK_M), programs per SM and warps, from the row length.

    From ``scripts/norm_sweep.py`` on the H200 (32768 rows, fp16, commit cfe76ca; Inductor's backward of the
    same computation in brackets, ms): hidden 768 LayerNorm 0.073 (0.075), RMSNorm 0.063 (0.071); 1024
    0.080 (0.084), 0.078 (0.083); 2048 0.136 (0.166), 0.141 (0.157); 4096 0.283 (0.296), 0.275 (0.311);
    8192 0.586 (0.630), 0.541 (0.646). One row per step with one program per SM-quarter, the old setting,
    lost to Inductor at 768, 1024, 4096 (RMSNorm) and 8192: a step's two row reductions wait on each other,
    so more rows a step keep more loads in flight. Below 768 and at 16384 the settings are extrapolated.
    """
    block_n = next_pow2(max(n, 16))
    if block_n <= 1024:
        # several rows a step; LayerNorm's extra reduction wants more warps
        rows = (4096 if not is_rms else 2048) // block_n
        return {"BLOCK_M": min(rows, 16), "per_sm": 8, "num_warps": 2 if is_rms else 4}
    if block_n == 2048:
        return {"BLOCK_M": 4, "per_sm": 2, "num_warps": 4}
    if block_n == 4096:
        # one program per SM (a second sweep, fp16 and bf16: two per SM lost to Inductor's LayerNorm in bf16)
        return {"BLOCK_M": 4, "per_sm": 1, "num_warps": 16}
    if block_n == 8192:
        return {"BLOCK_M": 2, "per_sm": 4, "num_warps": 16}
    return {"BLOCK_M": 1, "per_sm": 2, "num_warps": 16}


# --- jit helpers --------------------------------------------------------------------------------------


@triton.jit
def _load_sum(x_ptr, r_ptr, s_ptr, rows, x_off, r_off, cols, mask, stride_sm,
              HAS_RES: tl.constexpr, WRITE_SUM: tl.constexpr, RTNE_BF16: tl.constexpr):
    # h = x + r rounded to the storage dtype first, as eager rounds the sum before normalizing it (x_off,
    # r_off: the rows' offsets in x and r)
    x = tl.load(x_ptr + x_off[:, None] + cols[None, :], mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(r_ptr + r_off[:, None] + cols[None, :], mask=mask, other=0.0)
        h = cast_out(x.to(tl.float32) + r.to(tl.float32), x_ptr.dtype.element_ty, RTNE_BF16)
        if WRITE_SUM:
            tl.store(s_ptr + rows[:, None] * stride_sm + cols[None, :], h, mask=mask)
        return h.to(tl.float32)
    else:
        return x.to(tl.float32)


@triton.jit
def _chunk(start, N, row_mask, BLOCK_N: tl.constexpr):
    # columns [start, start + BLOCK_N) of the rows: their indices, column mask and 2-D mask
    cols = start + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    return cols, col_mask, row_mask[:, None] & col_mask[None, :]


@triton.jit
def _normalize(h, mean, rstd, w_ptr, b_ptr, cols, col_mask, dtype: tl.constexpr,
               HAS_W: tl.constexpr, HAS_B: tl.constexpr, IS_RMS: tl.constexpr,
               CAST_BEFORE_WEIGHT: tl.constexpr, RTNE_BF16: tl.constexpr):
    # h: [BLOCK_M, BLOCK_N] fp32; returns fp32 y before the final cast
    if IS_RMS:
        y = h * rstd[:, None]
    else:
        y = (h - mean[:, None]) * rstd[:, None]
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        if CAST_BEFORE_WEIGHT:
            # HF RMSNorm: weight * y.to(input_dtype), the product rounded once more
            y = cast_out(y, dtype, RTNE_BF16).to(tl.float32)
        y = y * w[None, :]
    if HAS_B:
        y += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return y


# --- forward kernel -----------------------------------------------------------------------------------


@triton.jit
def _norm_fwd_kernel(
    x_ptr, r_ptr, w_ptr, b_ptr, out_ptr, s_ptr, mean_ptr, rstd_ptr, q_ptr, qscale_ptr,
    M, N, R_ROWS, eps, eps_ptr,
    stride_xm, X_INNER, stride_xo, stride_rm, R_INNER, stride_ro, stride_om, stride_sm, stride_qm,
    EPS_PTR: tl.constexpr, HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, IS_RMS: tl.constexpr,
    WRITE_SUM: tl.constexpr, WRITE_STATS: tl.constexpr, CAST_BEFORE_WEIGHT: tl.constexpr,
    QUANT_OUT: tl.constexpr, RTNE_BF16: tl.constexpr, WRITE_Y: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE: tl.constexpr,
):
    if EPS_PTR:
        # eps held in a 0-d tensor on this device (a dynamic graph's float): read, rounded to fp32 as eager adds it
        eps = tl.load(eps_ptr).to(tl.float32)
    else:
        eps = tl.cast(eps, tl.float32)  # Inductor passes Python floats as fp64
    # out, s: [M, N] (unit column stride); x: row m at (m // X_INNER) * stride_xo + (m % X_INNER) * stride_xm
    # (a [M / X_INNER, X_INNER, N] view: torchvision ViT's attention output read batch-major); r: [R_ROWS, N]
    # rows laid out the same way (R_INNER, stride_ro), row m uses r's row m % R_ROWS (leading broadcast)
    pid_m = tl.program_id(0)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = offs_m < M
    rows = tl.where(row_mask, offs_m, 0).to(tl.int64)
    rows_r = rows % R_ROWS
    x_off = (rows // X_INNER) * stride_xo + (rows % X_INNER) * stride_xm
    r_off = (rows_r // R_INNER) * stride_ro + (rows_r % R_INNER) * stride_rm
    dtype = out_ptr.dtype.element_ty
    if SINGLE:
        cols, col_mask, mask = _chunk(0, N, row_mask, BLOCK_N)
        h = _load_sum(x_ptr, r_ptr, s_ptr, rows, x_off, r_off, cols, mask, stride_sm,
                      HAS_RES, WRITE_SUM, RTNE_BF16)
        if IS_RMS:
            mean = tl.zeros((BLOCK_M,), dtype=tl.float32)
            var = tl.sum(h * h, axis=1) / N
        else:
            # correctly rounded: the GPU's default fp32 division is approximate, and a mean off by an ulp
            # gives a constant row a variance (1e4-valued rows then normalise to noise, not to the bias)
            s_h = tl.sum(h, axis=1)
            mean = tl.div_rn(s_h, tl.zeros_like(s_h) + N)
            # centred before squaring: no cancellation for constant or large-valued rows
            d = tl.where(mask, h - mean[:, None], 0.0)
            var = tl.sum(d * d, axis=1) / N
        rstd = 1.0 / tl.sqrt(var + eps)
        y = _normalize(h, mean, rstd, w_ptr, b_ptr, cols, col_mask, dtype,
                       HAS_W, HAS_B, IS_RMS, CAST_BEFORE_WEIGHT, RTNE_BF16)
        y_out = cast_out(y, dtype, RTNE_BF16)
        if WRITE_Y:  # (off: only the int8 rows are read)
            tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], y_out, mask=mask)
        if QUANT_OUT:
            # quantize what the next Linear would read, the rounded output, by the int8 row kernel's rule
            # (kernels.int8.quant_rows: a zero row scale 0, a row holding NaN/Inf scale NaN and q 0)
            yq = tl.where(mask, y_out.to(tl.float32), 0.0)
            amax = tl.reduce(tl.abs(yq), 1, _max_nan)
            q = _quant_scaled(yq, _row_inv(amax)[:, None])
            tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :], q, mask=mask)
            tl.store(qscale_ptr + rows, _row_scale(amax), mask=row_mask)
    else:
        # long rows (BLOCK_M == 1): merge chunk statistics (Chan et al.), then normalize in a second sweep
        count = tl.zeros((BLOCK_M,), dtype=tl.float32)
        mean = tl.zeros((BLOCK_M,), dtype=tl.float32)
        m2 = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            cols, col_mask, mask = _chunk(start, N, row_mask, BLOCK_N)
            h = _load_sum(x_ptr, r_ptr, s_ptr, rows, x_off, r_off, cols, mask, stride_sm,
                          HAS_RES, WRITE_SUM, RTNE_BF16)
            if IS_RMS:
                m2 += tl.sum(h * h, axis=1)
            else:
                n_b = tl.minimum(N - start, BLOCK_N).to(tl.float32)
                s_b = tl.sum(h, axis=1)
                mean_b = tl.div_rn(s_b, tl.zeros_like(s_b) + n_b)
                d = tl.where(mask, h - mean_b[:, None], 0.0)
                m2_b = tl.sum(d * d, axis=1)
                total = count + n_b
                delta = mean_b - mean
                mean += delta * (n_b / total)
                m2 += m2_b + delta * delta * (count * n_b / total)
                count = total
        rstd = 1.0 / tl.sqrt(m2 / N + eps)
        for start in range(0, N, BLOCK_N):
            cols, col_mask, mask = _chunk(start, N, row_mask, BLOCK_N)
            # recompute the sum from x and r: reading back s would race with other threads' stores
            h = _load_sum(x_ptr, r_ptr, s_ptr, rows, x_off, r_off, cols, mask, stride_sm,
                          HAS_RES, False, RTNE_BF16)
            y = _normalize(h, mean, rstd, w_ptr, b_ptr, cols, col_mask, dtype,
                           HAS_W, HAS_B, IS_RMS, CAST_BEFORE_WEIGHT, RTNE_BF16)
            tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], cast_out(y, dtype, RTNE_BF16), mask=mask)
    if WRITE_STATS:
        tl.store(mean_ptr + rows, mean, mask=row_mask)
        tl.store(rstd_ptr + rows, rstd, mask=row_mask)


# --- backward kernels ---------------------------------------------------------------------------------


@triton.jit
def _norm_bwd_kernel(
    dy_ptr, ds_ptr, h_ptr, w_ptr, mean_ptr, rstd_ptr, dh_ptr, dw_part_ptr, db_part_ptr,
    M, N, ROWS_PER_PROG,
    stride_dym, stride_dsm, stride_hm, stride_dhm,
    HAS_DS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, IS_RMS: tl.constexpr,
    RTNE_BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # one program walks ROWS_PER_PROG rows (a multiple of BLOCK_M; N fits BLOCK_N), BLOCK_M rows at a
    # time, accumulating its share of dweight/dbias in fp32; a second small reduction sums the
    # [programs, N] partials
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    row_start = pid * ROWS_PER_PROG
    for i in range(0, ROWS_PER_PROG, BLOCK_M):
        rows = row_start + i + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        rows64 = tl.where(row_mask, rows, 0).to(tl.int64)
        mask = row_mask[:, None] & col_mask[None, :]
        h = tl.load(h_ptr + rows64[:, None] * stride_hm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + rows64[:, None] * stride_dym + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows64, mask=row_mask, other=0.0)
        if IS_RMS:
            xhat = h * rstd[:, None]
        else:
            mean = tl.load(mean_ptr + rows64, mask=row_mask, other=0.0)
            xhat = tl.where(mask, (h - mean[:, None]) * rstd[:, None], 0.0)
        if HAS_W:
            g = dy * w[None, :]
            dw += tl.sum(dy * xhat, axis=0)
        else:
            g = dy
        if HAS_B:
            db += tl.sum(dy, axis=0)
        # dh = rstd * (g - xhat * mean(g * xhat) [- mean(g)])
        c1 = tl.sum(g * xhat, axis=1) / N
        if IS_RMS:
            dh = (g - xhat * c1[:, None]) * rstd[:, None]
        else:
            c2 = tl.sum(g, axis=1) / N
            dh = (g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        if HAS_DS:
            dh += tl.load(ds_ptr + rows64[:, None] * stride_dsm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(dh_ptr + rows64[:, None] * stride_dhm + cols[None, :], cast_out(dh, dh_ptr.dtype.element_ty, RTNE_BF16),
                 mask=mask)
    if HAS_W:
        tl.store(dw_part_ptr + pid * N + cols, dw, mask=col_mask)
    if HAS_B:
        tl.store(db_part_ptr + pid * N + cols, db, mask=col_mask)


# --- launchers ----------------------------------------------------------------------------------------


def unsupported(x: torch.Tensor, residual: Optional[torch.Tensor], weight: Optional[torch.Tensor],
                bias: Optional[torch.Tensor]) -> Optional[str]:
    """Why the forward kernel cannot serve these operands, or None. ``x``: [..., N] normalized over N."""
    if x.dim() < 1 or x.shape[-1] == 0:
        return "empty normalized dimension"
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} not supported"
    n = x.shape[-1]
    if n > MAX_N:
        return f"hidden size {n} > {MAX_N}"
    x, residual = _full_first(x, residual)
    if residual is not None:
        if residual.dtype != x.dtype:
            return f"mixed dtypes {x.dtype} and {residual.dtype} in the residual add"
        if residual.device != x.device:
            return "operands on different devices"
        if _residual_rows(x.shape, residual.shape) is None:
            return f"residual of shape {tuple(residual.shape)} does not broadcast over leading dims of {tuple(x.shape)}"
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.dim() != 1 or t.shape[0] != n:
            return f"{name} of shape {tuple(t.shape)} is not [{n}]"
        if t.dtype != x.dtype:
            return f"{name} dtype {t.dtype} differs from the input's {x.dtype}"
        if t.device != x.device:
            return "operands on different devices"
    return registry.device_unsupported(x.device)


def quant_out_unsupported(x: torch.Tensor) -> Optional[str]:
    """Why ``norm_residual(..., quant_out=True)`` (the int8 hook) cannot serve ``x``, or None: the per-row
    scale needs the whole row in registers, so rows longer than one block are left to the caller."""
    if not _settings(x.shape[-1], x.element_size())["SINGLE"]:
        return f"int8 output needs rows that fit one block (hidden size {x.shape[-1]} is too long)"
    return None


def _residual_rows(x_shape, r_shape) -> Optional[int]:
    """Rows of r when it equals x's shape or a trailing part of it (leading broadcast), else None."""
    r_shape = list(r_shape)
    while r_shape and r_shape[0] == 1 and len(r_shape) > 1:
        r_shape.pop(0)
    k = len(r_shape)
    if k == 0 or k > len(x_shape) or list(x_shape[len(x_shape) - k:]) != r_shape:
        return None
    return math.prod(r_shape[:-1])


def _rows2d(t: torch.Tensor) -> torch.Tensor:
    # [..., N] -> [M, N] with unit column stride, copying only when no such view exists
    if t.stride(-1) != 1:
        t = t.contiguous()
    t2 = t.reshape(-1, t.shape[-1])
    if t2.shape[0] > 1 and t2.stride(1) != 1:
        t2 = t2.contiguous()
    return t2


def _two_strides(t: torch.Tensor) -> bool:
    # an [A, S, N] tensor with a unit last stride whose rows no [A * S, N] view holds (a transposed view)
    if t.dim() != 3 or t.stride(-1) != 1:
        return False
    (a, rows, _), (s0, s1, _) = t.shape, t.stride()
    return a > 1 and rows > 1 and s0 != rows * s1


def _rows_of(x: torch.Tensor) -> tuple:
    """x's rows as the forward kernel reads them: (x as [M, N] or, where no such view exists, as [A, S, N]
    with a unit last stride (``_two_strides``), S, the stride between its groups of S rows); a copy only
    without either."""
    if _two_strides(x):
        return x, x.shape[1], x.stride(0)
    x2 = _rows2d(x)
    return x2, max(x2.shape[0], 1), 0


def _full_first(x, residual):
    # x + r is commutative: the operand with the full (broadcast) shape goes first
    if residual is not None and residual.dim() >= x.dim() and residual.numel() > x.numel():
        return residual, x
    return x, residual


def _norm_fake(x, residual, weight, bias, eps, kind, write_sum, cast_before_weight, stats, quant_out,
               eps_tensor=None, write_y=True):
    x, residual = _full_first(x, residual)
    m = x.numel() // x.shape[-1]
    f32 = dict(dtype=torch.float32, device=x.device)
    return (
        x.new_empty(x.shape if write_y else (0,)),
        x.new_empty(x.shape if write_sum else (0,)),
        torch.empty((m if stats else 0,), **f32),
        torch.empty((m if stats else 0,), **f32),
        torch.empty(x.shape if quant_out else (0,), dtype=torch.int8, device=x.device),
        torch.empty((m if quant_out else 0,), **f32),
    )


def _eps_on_host(x, residual, weight, bias, eps, kind, write_sum, cast_before_weight, stats, quant_out,
                 eps_tensor=None, write_y=True) -> Optional[str]:
    # inlining traces the body on fake tensors: a host eps tensor cannot be read there, nor loaded by the kernel
    if eps_tensor is not None and eps_tensor.device != x.device:
        return "eps is a host scalar tensor (a dynamic graph's float): the op reads it at run time"
    return None


@registry.kernel_op("tritonfuse::norm_residual", fake=_norm_fake, inline=_eps_on_host)
def norm_residual(
    x: torch.Tensor, residual: Optional[torch.Tensor], weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
    eps: float, kind: str, write_sum: bool, cast_before_weight: bool, stats: bool, quant_out: bool,
    eps_tensor: Optional[torch.Tensor] = None, write_y: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``h = x + residual``; ``y = norm(h) * weight + bias`` over the last dim, in one pass per row.

    Args:
        x: [..., N] fp16, bf16 or fp32 (any strides; a copy is made only without a unit last stride).
        residual: same shape as x, or a trailing part of it (broadcast over leading dims), or None.
        weight, bias: [N] or None. ``kind="rms"`` ignores the mean (RMSNorm; a bias is still added).
        eps: added to the variance (mean of squares for RMSNorm).
        kind: ``"layer"`` or ``"rms"``.
        write_sum: also return h (needs a residual), else an empty tensor.
        cast_before_weight: round ``norm(h)`` to x's dtype before the weight multiply (HF RMSNorm).
        stats: also return fp32 mean and rstd per row ([M], mean is 0 for RMSNorm), for the backward.
        quant_out: also return int8 ``round(y / scale)`` ([..., N]) and fp32 per-row ``scale = max|y|/127``,
            as ``kernels.int8.quant_rows`` quantizes y (bit for bit; a zero row scale 0, a NaN/Inf row NaN).
        eps_tensor: a 0-d tensor holding eps in place of ``eps`` (ignored then): what a dynamic graph passes
            for a model's float (``torch.compile(dynamic=True)`` makes HF RMSNorm's eps a graph input). On x's
            device the kernel loads it; a host tensor is read here, at run time.
        write_y: False where only ``quant_out``'s int8 rows of y are read (y is then empty, not stored).

    Returns ``(y, h, mean, rstd, y_int8, scale)``; outputs not asked for are empty.

    Example::

        >>> x, r, w, b = torch.randn(37, 100), torch.randn(37, 100), torch.randn(100), torch.randn(100)
        >>> y, h, *_ = torch.ops.tritonfuse.norm_residual(x, r, w, b, 1e-5, "layer", True, False, False, False)
    """
    x, residual = _full_first(x, residual)
    shape = x.shape
    n = shape[-1]
    x2, x_inner, stride_xo = _rows_of(x)
    m = math.prod(shape[:-1])
    if residual is not None:
        r_rows = _residual_rows(shape, residual.shape)
        r2, r_inner, stride_ro = _rows_of(residual)  # [r_rows, N] rows: leading size-1 dims fold away
    else:
        r_rows, r2, r_inner, stride_ro = 1, x2, 1, 0
    if not write_y and not quant_out:
        raise ValueError("write_y=False needs quant_out=True (the op would write nothing of y)")
    out = torch.empty((m, n) if write_y else (0,), device=x.device, dtype=x.dtype)
    s = torch.empty((m, n) if write_sum else (0,), device=x.device, dtype=x.dtype)
    f32 = dict(dtype=torch.float32, device=x.device)
    mean = torch.empty((m if stats else 0,), **f32)
    rstd = torch.empty((m if stats else 0,), **f32)
    q = torch.empty((m, n) if quant_out else (0,), dtype=torch.int8, device=x.device)
    qscale = torch.empty((m if quant_out else 0,), **f32)
    eps_ptr = None
    if eps_tensor is not None:
        if eps_tensor.numel() != 1 or not eps_tensor.dtype.is_floating_point:
            raise ValueError(f"eps_tensor must hold one float, got {eps_tensor.dtype} {tuple(eps_tensor.shape)}")
        if eps_tensor.device == x.device:
            eps_ptr = eps_tensor
        else:
            eps = float(eps_tensor)  # a host scalar: no device synchronisation
    if m > 0:
        cfg = _settings(n, x.element_size())
        if quant_out and not cfg["SINGLE"]:
            raise ValueError(f"quant_out needs rows that fit one block (hidden size {n} is too long)")
        dummy = x2  # an input, never ``out`` (see kernels/conv_bn.py _epilogue_args)
        registry.launcher(_norm_fwd_kernel)[(cdiv(m, cfg["BLOCK_M"]),)](
            x2, r2, weight if weight is not None else dummy, bias if bias is not None else dummy,
            out if write_y else dummy, s if write_sum else dummy, mean if stats else dummy, rstd if stats else dummy,
            q if quant_out else dummy, qscale if quant_out else dummy,
            m, n, max(r_rows, 1), eps, eps_ptr if eps_ptr is not None else dummy,
            x2.stride(-2), x_inner, stride_xo, r2.stride(-2), r_inner, stride_ro, out.stride(0) if write_y else 0,
            s.stride(0) if write_sum else 0,
            q.stride(0) if quant_out else 0,
            EPS_PTR=eps_ptr is not None, HAS_RES=residual is not None, HAS_W=weight is not None, HAS_B=bias is not None, IS_RMS=kind == "rms",
            WRITE_SUM=write_sum, WRITE_STATS=stats, CAST_BEFORE_WEIGHT=cast_before_weight,
            QUANT_OUT=quant_out, RTNE_BF16=rtne_bf16(x.dtype), WRITE_Y=write_y, **cfg,
        )
    return (out.reshape(shape) if write_y else out, s.reshape(shape) if write_sum else s, mean, rstd,
            q.reshape(shape) if quant_out else q, qscale)


def _bwd_fake(dy, dsum, h, weight, mean, rstd, kind, has_bias):
    n = h.shape[-1]
    f32 = dict(dtype=torch.float32, device=h.device)
    return (h.new_empty(h.shape), torch.empty((n if weight is not None else 0,), **f32),
            torch.empty((n if has_bias else 0,), **f32))


@registry.kernel_op("tritonfuse::norm_residual_backward", fake=_bwd_fake, inline=True)
def norm_residual_backward(
    dy: torch.Tensor, dsum: Optional[torch.Tensor], h: torch.Tensor, weight: Optional[torch.Tensor],
    mean: torch.Tensor, rstd: torch.Tensor, kind: str, has_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``norm_residual``: ``(dh, dweight, dbias)``; dx = dresidual = dh.

    Args:
        dy: [..., N] gradient of the normalized output; dsum: gradient of the returned sum h, or None.
        h: [..., N] the normalized input (x + residual); mean, rstd: fp32 [M] from the forward (stats=True).
        weight: [N] or None; has_bias: whether the forward added a bias.
    Returns dh in h's dtype and fp32 dweight, dbias (empty when absent); only ``cast_before_weight=False``
    numerics. Rows must fit one block: hidden size <= 16384 in every dtype (fp32 rows too: the forward
    walks fp32 rows longer than 8192 in chunks, the backward holds them whole).

    Example::

        >>> y, h, mean, rstd, *_ = torch.ops.tritonfuse.norm_residual(x, r, w, b, 1e-5, "layer", True, False, True, False)
        >>> dh, dw, db = torch.ops.tritonfuse.norm_residual_backward(dy, None, h, w, mean, rstd, "layer", True)
    """
    n = h.shape[-1]
    h2, dy2 = _rows2d(h), _rows2d(dy)
    ds2 = _rows2d(dsum) if dsum is not None else dy2
    m = h2.shape[0]
    block_n = next_pow2(max(n, 16))
    if block_n > BWD_MAX_N:
        raise ValueError(f"the backward needs rows that fit one block (hidden size {n} > {BWD_MAX_N})")
    dh = torch.empty((m, n), device=h.device, dtype=h.dtype)
    f32 = dict(dtype=torch.float32, device=h.device)
    bcfg = _bwd_settings(n, kind == "rms")
    block_m = bcfg["BLOCK_M"]
    if h.device.type == "cuda":
        progs = bcfg["per_sm"] * torch.cuda.get_device_properties(h.device).multi_processor_count
    else:
        progs = 4
    progs = max(1, min(progs, cdiv(m, block_m)))
    rows_per_prog = cdiv(cdiv(m, progs), block_m) * block_m if m else block_m
    progs = cdiv(m, rows_per_prog) if m else 1
    # every program stores its whole partial row: no memset needed
    dw_part = torch.empty((progs, n) if weight is not None else (0,), **f32)
    db_part = torch.empty((progs, n) if has_bias else (0,), **f32)
    if m > 0:
        registry.launcher(_norm_bwd_kernel)[(progs,)](
            dy2, ds2, h2, weight if weight is not None else dh, mean, rstd, dh,
            dw_part if weight is not None else dh, db_part if has_bias else dh,
            m, n, rows_per_prog,
            dy2.stride(0), ds2.stride(0), h2.stride(0), dh.stride(0),
            HAS_DS=dsum is not None, HAS_W=weight is not None, HAS_B=has_bias, IS_RMS=kind == "rms",
            RTNE_BF16=rtne_bf16(h.dtype), BLOCK_M=block_m, BLOCK_N=block_n, num_warps=bcfg["num_warps"],
        )
    dw = dw_part.sum(0) if weight is not None else dw_part
    db = db_part.sum(0) if has_bias else db_part
    return dh.reshape(h.shape), dw, db


# --- references ---------------------------------------------------------------------------------------


def norm_residual_ref(x, residual, weight, bias, eps, kind, cast_before_weight=False, upcast: bool = False):
    """PyTorch's own ``(norm(x + residual), x + residual)``; in fp64 on the CPU with ``upcast=True``.

    Eager LayerNorm is ``F.layer_norm``; eager RMSNorm is HF's (``cast_before_weight``) or ``F.rms_norm``.
    """
    if upcast:
        x = x.double().cpu()
        residual, weight, bias = (t.double().cpu() if t is not None else None for t in (residual, weight, bias))
    h = x + residual if residual is not None else x
    n = x.shape[-1]
    if kind == "layer":
        y = torch.nn.functional.layer_norm(h, (n,), weight, bias, eps)
    elif cast_before_weight and not upcast:
        hf = h.float()
        y = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype)
        y = weight * y if weight is not None else y
        y = y + bias if bias is not None else y
    else:
        y = torch.nn.functional.rms_norm(h, (n,), weight, eps)
        y = y + bias if bias is not None else y
    return y, h


def _as_laid_out(t: torch.Tensor, device) -> torch.Tensor:
    # random values in ``t``'s shape and strides (a transposed view, a broadcast residual), as the site reads them
    span = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if n > 0)
    return torch.randn(span, device=device, dtype=t.dtype).as_strided(t.shape, t.stride())


def measure(x, residual, weight, bias, kind: str, write_sum: bool, stats: bool) -> dict:
    """On a GPU, time this kernel on operands laid out as the site's are (a transposed view, a broadcast
    residual) against a stand-in for what it replaces: Inductor's own fused norm runs near memory bandwidth,
    so the stand-in is a pointwise pass moving the same bytes (read x and the residual, write the output, and
    the sum when it is kept). At torchvision ViT's residual add of the attention's sequence-major output it
    does so at that layout too (H100, ``scripts/norm_layout_probe.py``: Inductor's code for the site alone
    0.0288 ms transposed, 0.0285 contiguous; this kernel 0.0285 reading x in place, 0.0538 after a copy).
    Under torch 2.11 ViT's second norm of a layer reads both operands so laid out (``norm_site_layouts.py``);
    the residual, copied until the 59th session, lost that site (0.0543 ms against the stand-in's 0.0313).
    Cached per shape and layout in ``registry``."""
    full = torch.broadcast_shapes(x.shape, residual.shape) if residual is not None else x.shape
    n = full[-1]
    m = 1
    for d in full[:-1]:
        m *= d

    def layout(t):
        return "" if t is None or t.is_contiguous() else f"{list(t.shape)}:{list(t.stride())}"

    key = (f"norm_residual|{kind}|{m}x{n}|{x.dtype}|res{int(residual is not None)}|w{int(weight is not None)}"
           f"|b{int(bias is not None)}|sum{int(write_sum)}|stats{int(stats)}|x{layout(x)}|r{layout(residual)}")
    lazy = {}

    def args():
        if not lazy:
            def real(t):
                return None if t is None else _as_laid_out(t, x.device)

            def flat(t):
                return None if t is None else torch.randn((m, n), device=x.device, dtype=t.dtype)
            lazy.update(x=real(x), r=real(residual), w=real(weight), b=real(bias), xc=flat(x), rc=flat(residual),
                        out=torch.empty((m, n), device=x.device, dtype=x.dtype))
        return lazy

    def ours():
        a = args()
        return norm_residual(a["x"], a["r"], a["w"], a["b"], 1e-5, kind, write_sum, False, stats, False)

    def moved_bytes():
        a = args()
        if a["rc"] is not None:
            torch.add(a["xc"], a["rc"], out=a["out"])
        else:
            torch.neg(a["xc"], out=a["out"])

    theirs = [moved_bytes] + ([lambda: torch.neg(args()["xc"], out=args()["out"])] if write_sum else [])
    graphed = inline.will_inline(torch.ops.tritonfuse.norm_residual.default, x.device)
    return registry.measured_choice(key, x.device, ours, theirs, graphed=graphed)


def probe(device: str, dtype: torch.dtype, kind: str, n: int, has_res: bool, has_w: bool, has_b: bool,
          write_sum: bool, cast_before_weight: bool, stats: bool = False) -> Optional[str]:
    """Compile and launch one variant on a small input once; None when it works, else the reason."""
    cfg = _settings(n, torch.empty((), dtype=dtype).element_size())

    def run():
        g = torch.Generator(device="cpu").manual_seed(0)
        pn = n  # 16 rows of the real length: the probe compiles the variant the site will launch, specialised
        # as a site's whose rows are a multiple of 16 (its compile is then the site's)
        mk = lambda *s: torch.randn(*s, generator=g, device="cpu").to(device=device, dtype=dtype)  # noqa: E731
        x, r = mk(16, pn), (mk(16, pn) if has_res else None)
        w, b = (mk(pn) if has_w else None), (mk(pn) if has_b else None)
        y, h, *_ = torch.ops.tritonfuse.norm_residual(x, r, w, b, 1e-5, kind, write_sum, cast_before_weight,
                                                       stats, False)
        ref, href = norm_residual_ref(x, r, w, b, 1e-5, kind, cast_before_weight, upcast=True)
        err = (y.double().cpu() - ref).norm() / ref.norm().clamp_min(1e-12)
        if write_sum:
            err = err + (h.double().cpu() - href).norm() / href.norm().clamp_min(1e-12)
        if not math.isfinite(err.item()) or err.item() > 5e-2:
            raise RuntimeError(f"wrong result on the probe input (relative error {err.item():.3g})")

    flags = "".join(c if f else "-" for c, f in zip("rwbsct", (has_res, has_w, has_b, write_sum,
                                                                 cast_before_weight, stats)))
    key = f"norm_residual[{kind},{flags},{'single' if cfg['SINGLE'] else 'loop'},{dtype}]@{device}"
    return registry.guarded_probe(key, run)
