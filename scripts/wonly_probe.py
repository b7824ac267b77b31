"""The int8 weight-only decode kernel (M <= 16) on a GPU, per config, against cuBLAS's bf16 linear: which column
tile, K step, split, pipeline depth and warps stream the weight fastest. Timed from replayed CUDA graphs, with the weight warm in L2 (one copy, what
bench_int8.py times) and cold (a round of copies larger than L2). Checks each variant's output.

    python3 scripts/wonly_probe.py [--shapes 16x4096x4096,1x4096x4096] [--quick]

Writes JSON lines to $OUT/wonly-probe.jsonl.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F
import triton

from tritonfuse.kernels import int8 as Q

from probe_log import jsonl_log  # scripts/, on the path when a script runs


def graph_ms(fn, per=1):
    return triton.testing.do_bench_cudagraph(fn, rep=40, return_mode="median") / per


def small_case(M, N, K, dtype, device):
    """A probe check's case: x [M, K] in ``dtype``, the int8 weight (and channel scales) of a Gaussian [N, K],
    and x @ W^T in fp64 from the quantized weight."""
    x = torch.randn(M, K, device=device).to(dtype)
    wq, ws = Q.quantize_weight(torch.randn(N, K, device=device) * K ** -0.5)
    return x, wq, ws, x.double() @ (wq.double() * ws.double()[:, None]).T


def timing_case(shape: str):
    """A timed case at ``shape`` (MxNxK) on the GPU: bf16 x [M, K], a Gaussian bf16 weight w [N, K], its int8
    weight and channel scales, x @ W^T in fp64 from the quantized weight, and how many weight copies make a
    round larger than L2 (50 MB on the H100/H200) in int8, twice that in bf16."""
    M, N, K = map(int, shape.split("x"))
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * K ** -0.5
    wq, ws = Q.quantize_weight(w)
    ref = x.double() @ (wq.double() * ws.double()[:, None]).T
    return x, w, wq, ws, ref, max(2, triton.cdiv(160 << 20, N * K))


def cublas_times(x: torch.Tensor, w: torch.Tensor, copies: int) -> dict:
    """cuBLAS's bf16 linear: ``warm_ms`` replaying one weight, ``cold_ms`` a round of ``copies`` of it."""
    wb = [w.clone() for _ in range(copies)]
    return dict(warm_ms=graph_ms(lambda: F.linear(x, w)), cold_ms=graph_ms(lambda: [F.linear(x, t) for t in wb], copies))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest error against the fp64 ``ref``, over ``ref``'s largest magnitude."""
    return (out.double() - ref).abs().max().item() / ref.abs().max().item()


def decode_launch(x, wq, ws, out, part, count, bn, bk, split, stages, warps, acquire=True):
    """A call of the shipped decode kernel with one config, per channel scales, no bias or gate: ``run(w)``
    for a copy ``w`` of ``wq`` (default ``wq``). ``acquire``: the split-K count's atomic as acq_rel (shipped)
    or release alone."""
    M, K = x.shape
    N = out.shape[1]

    def run(w=wq):
        Q._decode_kernel.fn[(triton.cdiv(N, bn), split)](
            x, w, ws, ws, w, ws, ws, out, part, count, M, N, K, 16,
            x.stride(0), x.stride(1), w.stride(0), w.stride(1), w.stride(0), w.stride(1),
            out.stride(0), out.stride(1), HAS_BIAS=False, ACT="none", GATED=False, DOT_UPCAST=False,
            RTNE_BF16=False, GROUP_K=0, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split, EVEN_K=K % (bk * split) == 0,
            ACQUIRE=acquire, num_warps=warps, num_stages=stages)
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="16x4096x4096,1x4096x4096,16x2048x8192,16x14336x4096,16x4096x14336")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    emit = jsonl_log("wonly-probe.jsonl", digits=5)

    torch.manual_seed(0)
    # (at 0302991 a SWAP form, out.T tiles with the weight as the MMA's A operand, was swept here too: it was
    # never faster, 16x4096x4096 best 8.9 / 9.8 us warm / cold against 8.4 / 9.4 us; the kernel dropped it)
    grid = (((32, 64), (256, 512), (1, 2, 4), (3, 4, 6), (2, 4)) if not a.quick else
            ((32,), (256,), (2,), (4,), (4,)))
    variants = list(itertools.product(*grid)) + [(64, 128, 8, 4, 4), (128, 128, 4, 3, 4), (16, 512, 2, 4, 2),
                                                  (16, 256, 4, 4, 2), (32, 128, 8, 4, 4)]
    for shape in a.shapes.split(","):
        M, N, K = map(int, shape.split("x"))
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * K ** -0.5
        wq, ws = Q.quantize_weight(w)
        ref = (x.double() @ (wq.double() * ws.double()[:, None]).T)
        copies = max(2, triton.cdiv(160 << 20, N * K))  # bf16 copies, > L2 (50 MB on the H100/H200)
        wb = [w.clone() for _ in range(copies)]
        wqs = [wq.clone() for _ in range(copies)]
        emit(shape=shape, provider="cublas-bf16", warm_ms=graph_ms(lambda: F.linear(x, w)),
             cold_ms=graph_ms(lambda: [F.linear(x, t) for t in wb], copies))
        out = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
        part = torch.empty(2 * 8 * 16 * N, device="cuda", dtype=torch.float32)
        count = torch.zeros(max(1024, triton.cdiv(N, 16)), device="cuda", dtype=torch.int32)
        for bn, bk, split, st, nw in variants:
            if split > 1 and (split - 1) * bk >= K:
                continue

            run = decode_launch(x, wq, ws, out, part, count, bn, bk, split, st, nw)
            tag = dict(shape=shape, provider="decode", bn=bn, bk=bk, split=split, stages=st, warps=nw)
            try:
                out.zero_()
                run()
                torch.cuda.synchronize()
                err = rel_err(out, ref)
                emit(**tag, rel_err=err, warm_ms=graph_ms(run),
                     cold_ms=graph_ms(lambda: [run(t) for t in wqs], copies))
            except Exception as e:  # a config that does not compile here is a result too
                emit(**tag, error=f"{type(e).__name__}: {str(e)[:200]}")


if __name__ == "__main__":
    main()
