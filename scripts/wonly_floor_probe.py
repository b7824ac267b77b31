"""Where the int8 decode GEMM's time goes at M <= 16: its floors, and a form that reads x once per program.

Issue 7 asks the weight-only kernel at 16x4096x4096 to be 1.5x cuBLAS's bf16 linear. The shipped decode kernel
(``kernels/int8.py: _decode_kernel``) takes about 8.7 us with its 16 MB weight cold (1.47-1.55x over several
sessions) and 7.8 us with it warm in L2, where 16 MB should take 2-3 us: so the weight's DRAM reads are not all
of its time. This probe times, from CUDA graphs that cycle through copies of the weight (cold) or replay one
(warm), side by side:

- ``empty``: a Triton kernel of 132 programs that does nothing: what a graph-launched kernel costs at least;
- ``stream``: programs that sum the int8 weight in wide loads: what reading 16 MB costs (the DRAM floor);
- ``xres``: the decode GEMM with each program's x slice ([16, BLOCK_K], one K chunk) loaded once and kept in
  registers while it streams T column tiles of the weight past it (the shipped kernel reads x again for every
  column tile: as many bytes of x as of weight at 32-column tiles);
- the shipped kernel's configs (its autotune list after pruning) and cuBLAS's bf16 linear.

    python3 scripts/wonly_floor_probe.py [--shapes 16x4096x4096,16x14336x4096] [--quick]
    TRITON_INTERPRET=1 python3 scripts/wonly_floor_probe.py --check   # xres against fp64 on the CPU

Writes JSON lines to $OUT/wonly-floor-probe.jsonl (each row names the GPU, versions and commit).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@triton.jit
def _empty_kernel(p_ptr, FLAG: tl.constexpr):
    if FLAG:  # never: the launch and the programs' start and end only
        tl.store(p_ptr + tl.program_id(0), 0)


@triton.jit
def _stream_kernel(w_ptr, out_ptr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    # w viewed as int32 words: program p sums words [p * CHUNK, (p + 1) * CHUNK) in loads of BLOCK words
    p = tl.program_id(0)
    offs = p.to(tl.int64) * CHUNK + tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.int32)
    for _ in range(0, CHUNK, BLOCK):
        acc ^= tl.load(w_ptr + offs)
        offs += BLOCK
    tl.store(out_ptr + p, tl.sum(acc, axis=0))


@triton.jit
def _xres_kernel(x_ptr, w_ptr, ws_ptr, out_ptr, part_ptr, count_ptr, M, N, K, stride_xm, stride_om,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, T: tl.constexpr, CHUNKS: tl.constexpr,
                 UPCAST: tl.constexpr):
    # out [M, N] = x [M, K] @ (w * ws)^T for M <= 16, K % BLOCK_K == 0, N % (BLOCK_N * T) == 0 (the probe's
    # shapes). Program (column group, K chunk): x's [16, BLOCK_K] chunk loaded once, then T column tiles of the
    # weight. With more than one K chunk each column tile's partials go to part [chunks, 16, N] and the last of
    # its programs to arrive adds them in chunk order, as the shipped kernel does
    BLOCK_M: tl.constexpr = 16
    g = tl.program_id(0)
    chunk = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = chunk * BLOCK_K + tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    a = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=m_ok[:, None], other=0.0)
    if UPCAST:  # (the interpreter's bf16 dot and int8 -> bf16 cast are broken)
        a = a.to(tl.float32)
    # the loop that streams the weight holds loads, dots and stores only (a branch or an atomic in it keeps
    # Triton from pipelining its loads); the partials are added up after it
    for t in range(T):
        offs_n = (g * T + t) * BLOCK_N + tl.arange(0, BLOCK_N)
        b = tl.load(w_ptr + offs_n[None, :].to(tl.int64) * K + offs_k[:, None])
        acc = tl.dot(a, b.to(a.dtype), out_dtype=tl.float32)
        if CHUNKS == 1:
            scale = tl.load(ws_ptr + offs_n)
            tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :],
                     (acc * scale[None, :]).to(out_ptr.dtype.element_ty), mask=m_ok[:, None])
        else:
            tl.store(part_ptr + chunk * BLOCK_M * N + offs_m[:, None] * N + offs_n[None, :], acc)
    if CHUNKS > 1:
        tl.debug_barrier()  # every thread's partials are written before the counts say so
        for t in range(T):
            tile = g * T + t
            offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
            part = offs_m[:, None] * N + offs_n[None, :]
            arrived = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel")
            if arrived == CHUNKS - 1:
                total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for s in range(CHUNKS):
                    total += tl.load(part_ptr + s * BLOCK_M * N + part, cache_modifier=".cg")
                scale = tl.load(ws_ptr + offs_n)
                tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :],
                         (total * scale[None, :]).to(out_ptr.dtype.element_ty), mask=m_ok[:, None])
                tl.atomic_xchg(count_ptr + tile, 0)


def xres_launch(x, w, ws, out, part, count, bn, bk, t, stages, warps, upcast=False):
    M, K = x.shape
    N = out.shape[1]

    def run(w_=w):
        _xres_kernel[(N // (bn * t), K // bk)](x, w_, ws, out, part, count, M, N, K, x.stride(0), out.stride(0),
                                                BLOCK_N=bn, BLOCK_K=bk, T=t, CHUNKS=K // bk,
                                                UPCAST=upcast, num_warps=warps,
                                                num_stages=stages)
    return run


def check(device: str) -> None:
    """xres against fp64 at small shapes: ragged M, one K chunk and several, one column tile a program and two;
    the shipped decode kernel with the split-K count released, not acquired."""
    from wonly_probe import decode_launch, rel_err, small_case

    torch.manual_seed(0)
    dtype = torch.float16 if device == "cpu" else torch.bfloat16
    for M, N, K, bn, bk, t in ((5, 64, 64, 32, 64, 1), (16, 128, 192, 32, 64, 2), (1, 128, 256, 64, 64, 2)):
        x, wq, ws, ref = small_case(M, N, K, dtype, device)
        part = torch.empty(max(K // bk, 3) * 16 * N, device=device, dtype=torch.float32)  # (3: the decode split)
        count = torch.zeros(N // bn, device=device, dtype=torch.int32)
        out = torch.full((M, N), float("nan"), device=device, dtype=dtype)
        xres_launch(x, wq, ws, out, part, count, bn, bk, t, 2, 4, upcast=device == "cpu")()
        err = rel_err(out, ref)
        assert err < 1e-2, (M, N, K, bn, bk, t, err)
        assert int(count.sum()) == 0
        # the shipped decode kernel, its K split in 3, with the count's atomic as release alone
        out.fill_(float("nan"))
        decode_launch(x, wq, ws, out, part, count, bn, bk, 3, 2, 4, acquire=False)()
        err = rel_err(out, ref)
        assert err < 1e-2 and int(count.sum()) == 0, (M, N, K, "release", err)
    print("check passed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="16x4096x4096,16x14336x4096")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--providers", default="empty,cublas,stream,shipped,xres,more",
                    help="more: the decode kernel with configs outside its list (8 warps, deeper pipelines); "
                    "release: the shipped configs with the split-K count's atomic as release alone")
    a = ap.parse_args()
    want = set(a.providers.split(","))
    if a.check:
        return check("cuda" if torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET") else "cpu")
    from probe_log import jsonl_log, run_meta
    from wonly_probe import cublas_times, decode_launch, graph_ms, rel_err, timing_case

    from tritonfuse.kernels import int8 as Q

    check("cuda")
    meta = run_meta()
    emit = jsonl_log("wonly-floor-probe.jsonl", digits=5)
    torch.manual_seed(0)
    dummy = torch.zeros(1024, device="cuda", dtype=torch.int32)
    if "empty" in want:
        emit(**meta, provider="empty", warm_ms=graph_ms(lambda: _empty_kernel[(132,)](dummy, FLAG=False)))
    for shape in a.shapes.split(","):
        M, N, K = map(int, shape.split("x"))
        x, w, wq, ws, ref, copies = timing_case(shape)
        if "cublas" in want:
            emit(**meta, shape=shape, provider="cublas-bf16", **cublas_times(x, w, copies))
        wqs = [wq] + [wq.clone() for _ in range(copies - 1)]
        words = N * K // 4
        sink = torch.empty(words // 1024, device="cuda", dtype=torch.int32)
        for chunk, block, warps, stages in itertools.product((4096, 8192, 16384, 32768), (1024, 2048), (4, 8),
                                                             (2, 3, 4)):
            if "stream" not in want or words % chunk or chunk < block or (a.quick and (warps, stages) != (4, 3)):
                continue

            def stream(w_=wq, chunk=chunk, block=block, warps=warps, stages=stages):
                _stream_kernel[(words // chunk,)](w_.view(torch.int32), sink, CHUNK=chunk, BLOCK=block,
                                                  num_warps=warps, num_stages=stages)
            try:
                stream()
                emit(**meta, shape=shape, provider="stream", programs=words // chunk, block_bytes=4 * block,
                     warps=warps, stages=stages, warm_ms=graph_ms(stream),
                     cold_ms=graph_ms(lambda: [stream(t) for t in wqs], copies))
            except Exception as e:  # noqa: BLE001 - a config that does not compile is a row too
                emit(**meta, shape=shape, provider="stream", programs=words // chunk, error=str(e)[:200])
        out = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
        part = torch.empty(max(16, K // 128) * 16 * N, device="cuda", dtype=torch.float32)
        count = torch.zeros(max(1024, N // 16), device="cuda", dtype=torch.int32)
        runs = []
        for cfg in Q._prune_decode(Q._DECODE_CONFIGS, {"N": N, "K": K}) if "shipped" in want else []:
            kw = cfg.kwargs
            runs.append((dict(provider="shipped", bn=kw["BLOCK_N"], bk=kw["BLOCK_K"], split=kw["SPLIT_K"],
                              stages=cfg.num_stages, warps=cfg.num_warps),
                         decode_launch(x, wq, ws, out, part, count, kw["BLOCK_N"], kw["BLOCK_K"], kw["SPLIT_K"],
                                       cfg.num_stages, cfg.num_warps)))
        grid = (((32, 64), (256, 512, 1024), (1, 2, 4, 8), (2, 3, 4), (4, 8)) if not a.quick else
                ((32,), (512,), (2,), (3,), (4,)))
        # ncu (scripts/ncu_probe.py, 38th session): the 64x128 split-4 config keeps 1.8 warps per scheduler
        # active, SMs busy 68% of the kernel's cycles: more warps a program, deeper pipelines
        more = [(bn, bk, sp, st, nw) for bn, bk in ((64, 128), (32, 256), (64, 256), (128, 128))
                for sp in (2, 4, 8) for st in (3, 4, 6, 8) for nw in (4, 8)
                if (sp - 1) * bk < K and (bn + 32) * bk * st <= 200 * 1024]
        for cfg in Q._prune_decode(Q._DECODE_CONFIGS, {"N": N, "K": K}) if "release" in want else []:
            kw = cfg.kwargs
            if kw["SPLIT_K"] > 1:
                runs.append((dict(provider="release", bn=kw["BLOCK_N"], bk=kw["BLOCK_K"], split=kw["SPLIT_K"],
                                  stages=cfg.num_stages, warps=cfg.num_warps),
                             decode_launch(x, wq, ws, out, part, count, kw["BLOCK_N"], kw["BLOCK_K"], kw["SPLIT_K"],
                                           cfg.num_stages, cfg.num_warps, acquire=False)))
        for bn, bk, sp, st, nw in more if "more" in want else []:
            runs.append((dict(provider="more", bn=bn, bk=bk, split=sp, stages=st, warps=nw),
                         decode_launch(x, wq, ws, out, part, count, bn, bk, sp, st, nw)))
        for bn, bk, t, st, nw in itertools.product(*grid) if "xres" in want else []:
            if N % (bn * t) or K % bk or bk * bn * st > 200 * 1024:
                continue
            runs.append((dict(provider="xres", bn=bn, bk=bk, t=t, chunks=K // bk, stages=st, warps=nw),
                         xres_launch(x, wq, ws, out, part, count, bn, bk, t, st, nw)))
        def compile_one(r):  # every variant compiled side by side before any is timed
            try:
                r[1]()
            except Exception:  # noqa: BLE001 - reported when it is timed
                pass

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(compile_one, runs))
        torch.cuda.synchronize()
        for tag, run in runs:
            try:
                out.fill_(float("nan"))
                run()
                torch.cuda.synchronize()
                err = rel_err(out, ref)
                if not err < 1e-2:
                    emit(**meta, shape=shape, **tag, rel_err=err, error="wrong result")
                    continue
                emit(**meta, shape=shape, **tag, rel_err=err, warm_ms=graph_ms(run),
                     cold_ms=graph_ms(lambda: [run(t) for t in wqs], copies))
            except Exception as e:  # noqa: BLE001
                emit(**meta, shape=shape, **tag, error=f"{type(e).__name__}: {str(e)[:200]}")


if __name__ == "__main__":
    main()
