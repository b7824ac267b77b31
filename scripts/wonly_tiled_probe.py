"""Does the int8 decode GEMM (M <= 16, weight-only) stream its weight faster from a tiled layout?

The shipped decode kernel (``kernels/int8.py: _decode_kernel``) reads each [BLOCK_K, BLOCK_N] weight tile as
BLOCK_N row pieces of BLOCK_K bytes, K bytes apart in the [N, K] int8 weight. At 16x4096x4096 it takes about
9 us cold, 1.8 TB/s of the H200's 4.8 (cuBLAS bf16: 13 us). The weight is quantized once, at compile time, so
its layout is ours to choose: stored tile by tile (``tile_weight``), each program's K steps read one
contiguous run of BLOCK_N * BLOCK_K bytes after another. This probe times one kernel body over both layouts
(``TILED``), with and without an evict-first hint on the weight loads, beside the shipped kernel's best config
and cuBLAS's bf16 linear, from replayed CUDA graphs with the weight cold (a round of copies larger than L2)
and warm. Each variant's output is checked against fp64 first.

    python3 scripts/wonly_tiled_probe.py [--shapes 16x4096x4096,1x4096x4096] [--quick]
    python3 scripts/wonly_tiled_probe.py --check   # the kernel against fp64 (CPU: TRITON_INTERPRET=1)

Writes JSON lines to $OUT/wonly-tiled-probe.jsonl. A shape takes 128 probe variants (column tile, K step,
split, stages; both layouts, evict-first or not) plus the shipped configs: two shapes fit one device call.
Written in the 27th session and checked on the CPU only (``--check`` under the interpreter).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(__file__))


@triton.jit
def _probe_kernel(x_ptr, w_ptr, ws_ptr, out_ptr, part_ptr, count_ptr, M, N, K, stride_xm, stride_om,
                  TILED: tl.constexpr, EVICT: tl.constexpr, UPCAST: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    # out [M, N] = x [M, K] @ (w * ws)^T for M <= 16. K % BLOCK_K == 0 and N % BLOCK_N == 0 (the probe's
    # shapes). TILED: w is tile_weight's [N / BLOCK_N, K / BLOCK_K, BLOCK_N, BLOCK_K]; else [N, K]. Program
    # (column tile, split) sums its K tiles; with SPLIT_K > 1 the last of a column tile's programs to arrive adds
    # the partials in split order, as the shipped kernel does
    BLOCK_M: tl.constexpr = 16
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    k_tiles = K // BLOCK_K
    per = tl.cdiv(k_tiles, SPLIT_K)
    kt0 = split * per
    kt1 = tl.minimum(kt0 + per, k_tiles)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + (kt0 * BLOCK_K + offs_k)[None, :]
    if TILED:
        w_ptrs = (w_ptr + (pid_n * k_tiles + kt0).to(tl.int64) * (BLOCK_N * BLOCK_K)
                  + tl.arange(0, BLOCK_N)[None, :] * BLOCK_K + offs_k[:, None])
        w_step = BLOCK_N * BLOCK_K
    else:
        w_ptrs = w_ptr + offs_n[None, :].to(tl.int64) * K + (kt0 * BLOCK_K + offs_k)[:, None]
        w_step = BLOCK_K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(kt0, kt1):
        a = tl.load(x_ptrs, mask=m_ok[:, None], other=0.0)
        if EVICT:
            b = tl.load(w_ptrs, eviction_policy="evict_first")
        else:
            b = tl.load(w_ptrs)
        if UPCAST:  # (the interpreter's bf16 dot and int8 -> bf16 cast are broken)
            acc += tl.dot(a.to(tl.float32), b.to(tl.float32))
        else:
            acc = tl.dot(a, b.to(a.dtype), acc)
        x_ptrs += BLOCK_K
        w_ptrs += w_step
    scale = tl.load(ws_ptr + offs_n)
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    if SPLIT_K == 1:
        tl.store(out_ptrs, (acc * scale[None, :]).to(out_ptr.dtype.element_ty), mask=m_ok[:, None])
    else:
        tile = offs_m[:, None] * N + offs_n[None, :]
        tl.store(part_ptr + split * BLOCK_M * N + tile, acc)
        tl.debug_barrier()
        arrived = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):
                total += tl.load(part_ptr + s * BLOCK_M * N + tile, cache_modifier=".cg")
            tl.store(out_ptrs, (total * scale[None, :]).to(out_ptr.dtype.element_ty), mask=m_ok[:, None])
            tl.atomic_xchg(count_ptr + pid_n, 0)


def tile_weight(wq: torch.Tensor, bn: int, bk: int) -> torch.Tensor:
    """[N, K] -> [N / bn, K / bk, bn, bk], contiguous: tile (j, t) holds rows j*bn.. and columns t*bk.. of wq."""
    n, k = wq.shape
    return wq.view(n // bn, bn, k // bk, bk).permute(0, 2, 1, 3).contiguous()


def launcher(x, w, ws, out, part, count, tiled, evict, bn, bk, split, stages, warps, upcast=False):
    M, K = x.shape
    N = out.shape[1]

    def run(w_=w):
        _probe_kernel[(N // bn, split)](x, w_, ws, out, part, count, M, N, K, x.stride(0), out.stride(0),
                                        TILED=tiled, EVICT=evict, UPCAST=upcast, BLOCK_N=bn, BLOCK_K=bk,
                                        SPLIT_K=split, num_warps=warps, num_stages=stages)
    return run


def check(device: str = "cpu") -> None:
    """Each layout, split and evict setting against fp64 at small shapes (ragged M, an uneven K split)."""
    from wonly_probe import rel_err, small_case

    torch.manual_seed(0)
    dtype = torch.float16 if device == "cpu" else torch.bfloat16
    for M, N, K, bn, bk, split in ((5, 64, 320, 32, 64, 1), (16, 96, 320, 32, 64, 2), (1, 64, 448, 64, 64, 3)):
        x, wq, ws, ref = small_case(M, N, K, dtype, device)
        part = torch.empty(split * 16 * N, device=device, dtype=torch.float32)
        count = torch.zeros(N // bn, device=device, dtype=torch.int32)
        for tiled, evict in itertools.product((False, True), (False, True)):
            out = torch.full((M, N), float("nan"), device=device, dtype=dtype)
            weight = tile_weight(wq, bn, bk) if tiled else wq
            launcher(x, weight, ws, out, part, count, tiled, evict, bn, bk, split, 2, 4, upcast=device == "cpu")()
            err = rel_err(out, ref)
            assert err < 1e-2, (M, N, K, bn, bk, split, tiled, evict, err)
            assert int(count.sum()) == 0
    print("check passed")


def main() -> None:
    from probe_log import check_device, jsonl_log, probe_parser

    ap = probe_parser(__doc__, "16x4096x4096,1x4096x4096,16x14336x4096,16x4096x14336")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.check:
        return check(check_device())
    from wonly_probe import cublas_times, decode_launch, graph_ms, rel_err, timing_case

    from tritonfuse.kernels import int8 as Q

    check("cuda")
    emit = jsonl_log("wonly-tiled-probe.jsonl", digits=5)
    torch.manual_seed(0)
    grid = ((32, 64), (256, 512), (1, 2, 4, 8), (3, 4), (4,)) if not a.quick else ((32,), (256,), (4,), (3,), (4,))
    for shape in a.shapes.split(","):
        M, N, K = map(int, shape.split("x"))
        x, w, wq, ws, ref, copies = timing_case(shape)
        emit(shape=shape, provider="cublas-bf16", **cublas_times(x, w, copies))
        out = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
        part = torch.empty(8 * 16 * N, device="cuda", dtype=torch.float32)
        count = torch.zeros(N // 16, device="cuda", dtype=torch.int32)
        variants = [v for v in itertools.product(*grid) if (v[2] - 1) * v[1] < K and N % v[0] == 0
                    and K % v[1] == 0]
        layouts = {}
        for bn, bk in {(v[0], v[1]) for v in variants}:
            t = tile_weight(wq, bn, bk)
            layouts[bn, bk] = [t] + [t.clone() for _ in range(copies - 1)]
        plain = [wq] + [wq.clone() for _ in range(copies - 1)]
        runs = []
        for (bn, bk, split, st, nw), tiled, evict in itertools.product(variants, (False, True), (False, True)):
            ws_list = layouts[bn, bk] if tiled else plain
            runs.append((dict(shape=shape, provider="probe", tiled=tiled, evict=evict, bn=bn, bk=bk, split=split,
                              stages=st, warps=nw), ws_list,
                         launcher(x, ws_list[0], ws, out, part, count, tiled, evict, bn, bk, split, st, nw)))

        def compile_one(r):  # every variant compiled side by side before any is timed
            try:
                r[2]()
            except Exception as e:  # noqa: BLE001 - reported below
                return e
            return None

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            errors = list(pool.map(compile_one, runs))
        torch.cuda.synchronize()
        for (tag, ws_list, run), error in zip(runs, errors):
            if error is not None:
                emit(**tag, error=f"{type(error).__name__}: {str(error)[:200]}")
                continue
            out.fill_(float("nan"))
            run()
            torch.cuda.synchronize()
            err = rel_err(out, ref)
            if not err < 1e-2:
                emit(**tag, rel_err=err, error="wrong result")
                continue
            emit(**tag, rel_err=err, warm_ms=graph_ms(run), cold_ms=graph_ms(lambda: [run(t) for t in ws_list], copies))
        # the shipped decode kernel's configs (its autotune set after its pruning), the same way
        for cfg in Q._prune_decode(Q._DECODE_CONFIGS, {"N": N, "K": K}):
            bn, bk, split = cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_K"], cfg.kwargs["SPLIT_K"]
            shipped = decode_launch(x, wq, ws, out, part, count, bn, bk, split, cfg.num_stages, cfg.num_warps)
            tag = dict(shape=shape, provider="shipped", bn=bn, bk=bk, split=split, stages=cfg.num_stages,
                       warps=cfg.num_warps)
            try:
                out.fill_(float("nan"))
                shipped()
                torch.cuda.synchronize()
                err = rel_err(out, ref)
                emit(**tag, rel_err=err, warm_ms=graph_ms(shipped),
                     cold_ms=graph_ms(lambda: [shipped(t) for t in plain], copies))
            except Exception as e:  # noqa: BLE001 - a config that does not compile here is a result too
                emit(**tag, error=f"{type(e).__name__}: {str(e)[:200]}")
        del layouts, plain


if __name__ == "__main__":
    main()
