"""The int8 row kernel (``kernels.int8.quant_rows``) by launch shape, at the inputs int8 mode quantizes with it.

In bert-base's int8 mode the down-projection site (16384x768x3072) measured 0.108 against cuBLAS's 0.107 ms
(39th session, H200), its input's quantization by the row kernel included (0.042 ms at 16384x3072, 3.6 TB/s
of its 150 MB); a site needs to be 3% faster to be chosen. The shipped launch gives each program one row in
a power-of-two block (4096 lanes for 3072 values: a quarter of them masked) with 8 warps. Timed here, from
CUDA graphs, each checked bit for bit against ``quant_rows_ref``:
- ``shipped``: ``quant_rows`` as launched today (rounding by PTX rounding-mode adds since the 40th session);
- ``shipped, rounding by F2I``: the same with the float-to-int conversion an element (``MAGIC_ROUNDING`` off);
- ``warps=W``: the same kernel and block with W warps;
- ``chunked``: this probe's kernel, which holds a row as NCHUNK (up to 4) blocks of CHUNK values (3 x 1024
  for 3072: no masked lanes) in registers and reads it once.

    python3 scripts/quant_rows_probe.py [--shapes 16384x3072,16384x768,12608x768]
    TRITON_INTERPRET=1 python3 scripts/quant_rows_probe.py --check

Rows: $OUT/quant-rows-probe.jsonl. Written in the 39th session; run on the H200 in the 42nd (diagnostics
README, "Forty-second session"): at 16384x3072 4 warps beat the shipped 8 (38.4 against 43.1 us, both with
the conversion rounding; 4 warps shipped since), the chunked kernel 37.2; at 768 values no variant gained
more than 0.6 us.
"""

from __future__ import annotations

import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tritonfuse.kernels import int8 as Q  # noqa: E402


@triton.jit
def _load_chunk(x_row, c: tl.constexpr, offs, K, CHUNK: tl.constexpr):
    return tl.load(x_row + c * CHUNK + offs, mask=c * CHUNK + offs < K, other=0.0).to(tl.float32)


@triton.jit
def _store_chunk(q_row, c: tl.constexpr, offs, K, x, amax_r, CHUNK: tl.constexpr):
    tl.store(q_row + c * CHUNK + offs, Q._quant_row_values(x, amax_r), mask=c * CHUNK + offs < K)


@triton.jit
def _chunked_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm, CHUNK: tl.constexpr, NCHUNK: tl.constexpr):
    # one row per program, read once as NCHUNK (1 to 4) blocks of CHUNK values (K <= NCHUNK * CHUNK), kept in
    # registers
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    q_row = q_ptr + row * stride_qm
    offs = tl.arange(0, CHUNK)
    x0 = _load_chunk(x_row, 0, offs, K, CHUNK)
    amax = tl.abs(x0)
    if NCHUNK > 1:
        x1 = _load_chunk(x_row, 1, offs, K, CHUNK)
        amax = Q._max_nan(amax, tl.abs(x1))
    if NCHUNK > 2:
        x2 = _load_chunk(x_row, 2, offs, K, CHUNK)
        amax = Q._max_nan(amax, tl.abs(x2))
    if NCHUNK > 3:
        x3 = _load_chunk(x_row, 3, offs, K, CHUNK)
        amax = Q._max_nan(amax, tl.abs(x3))
    amax_r = tl.reduce(amax, 0, Q._max_nan)
    _store_chunk(q_row, 0, offs, K, x0, amax_r, CHUNK)
    if NCHUNK > 1:
        _store_chunk(q_row, 1, offs, K, x1, amax_r, CHUNK)
    if NCHUNK > 2:
        _store_chunk(q_row, 2, offs, K, x2, amax_r, CHUNK)
    if NCHUNK > 3:
        _store_chunk(q_row, 3, offs, K, x3, amax_r, CHUNK)
    tl.store(s_ptr + row, tl.where(amax_r < float("inf"), amax_r / 127.0, float("nan")))


def chunked(x: torch.Tensor, chunk: int, warps: int):
    M, K = x.shape
    assert x.stride(1) == 1
    xq = torch.empty((M, K), device=x.device, dtype=torch.int8)
    xs = torch.empty((M,), device=x.device, dtype=torch.float32)
    n = triton.cdiv(K, chunk)
    if n > 4:
        raise ValueError(f"{K} values are more than 4 chunks of {chunk}")
    _chunked_kernel[(M,)](x, xq, xs, K, x.stride(0), xq.stride(0), CHUNK=chunk, NCHUNK=n, num_warps=warps)
    return xq, xs


def shipped_warps(x: torch.Tensor, warps: int):
    M, K = x.shape
    xq = torch.empty((M, K), device=x.device, dtype=torch.int8)
    xs = torch.empty((M,), device=x.device, dtype=torch.float32)
    block = min(triton.next_power_of_2(max(K, 16)), Q.QUANT_BLOCK)
    Q._quant_rows_kernel[(M,)](x, xq, xs, K, x.stride(0), x.stride(1), xq.stride(0), BLOCK_K=block,
                               ONE_PASS=K <= block, num_warps=warps)
    return xq, xs


def check(device: str = "cpu") -> None:
    torch.manual_seed(0)
    x = torch.randn(9, 96, device=device).to(torch.float16) * 3
    x[2] = 0
    x[4, 7] = float("nan")
    x[6, 1] = float("inf")
    q_ref, s_ref = Q.quant_rows_ref(x)
    for fn in (lambda: chunked(x, 32, 4), lambda: chunked(x, 64, 4), lambda: chunked(x, 128, 4),
               lambda: shipped_warps(x, 2)):
        q, s = fn()
        assert torch.equal(q, q_ref) and torch.equal(s.isnan(), s_ref.isnan())
        assert torch.equal(s.nan_to_num(), s_ref.nan_to_num())
    print("check passed")


def main() -> None:
    from probe_log import check_device, graph_ms, jsonl_log, probe_parser, run_meta

    a = probe_parser(__doc__, "16384x3072,16384x768,12608x768").parse_args()
    if a.check:
        return check(check_device())

    check("cuda")
    emit = jsonl_log("quant-rows-probe.jsonl", digits=4)
    meta = run_meta()
    for shape in a.shapes.split(","):
        M, K = (int(v) for v in shape.split("x"))
        torch.manual_seed(0)
        x = torch.randn(M, K, device="cuda", dtype=torch.float16)
        q_ref, s_ref = Q.quant_rows_ref(x)
        nbytes = M * K * 3 + M * 4
        variants = {"shipped": lambda: Q.quant_rows(x)}

        def f2i():  # the shipped kernel rounding with the float-to-int conversion (40th session's change undone)
            Q.MAGIC_ROUNDING = False
            try:
                return Q.quant_rows(x)
            finally:
                Q.MAGIC_ROUNDING = True

        variants["shipped, rounding by F2I"] = f2i
        for w in (4, 8, 16):
            variants[f"warps={w}"] = (lambda w: lambda: shipped_warps(x, w))(w)
        for chunk in (256, 512, 1024):
            for w in (2, 4, 8):
                if chunk >= 32 * w and K <= 4 * chunk:
                    variants[f"chunked {chunk} warps={w}"] = (lambda c, w: lambda: chunked(x, c, w))(chunk, w)
        for name, fn in variants.items():
            try:
                q, s = fn()
                ok = torch.equal(q, q_ref) and torch.equal(s, s_ref)
                ms = graph_ms(fn)
                emit(**meta, shape=shape, variant=name, ms=ms, tbps=nbytes / ms / 1e9, exact=ok)
            except Exception as e:  # noqa: BLE001 - a variant that fails is a row too
                emit(**meta, shape=shape, variant=name, error=f"{type(e).__name__}: {str(e)[:160]}")


if __name__ == "__main__":
    main()
