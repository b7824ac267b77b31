"""Host cost and per-config GPU time of the int8 decode kernel (M <= 16) on a GPU: where an op call's host
time goes (cProfile), and what each split of K buys when the launch is replayed from a CUDA graph.

    python3 scripts/decode_probe.py [--m 16 --n 4096 --k 4096]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch
import triton

from tritonfuse import launch
from tritonfuse.kernels import int8 as Q


def per_call_us(fn, calls=300):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--k", type=int, default=4096)
    a = ap.parse_args()
    M, N, K = a.m, a.n, a.k
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * K ** -0.5
    wq, ws = Q.quantize_weight(w)
    out = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)

    def decode():
        return Q._weight_only(x, wq, ws, None, "none")

    def tiled():
        return Q._launch_pointer(Q._wonly_kernel, x, ws, wq, ws, None, "none", out, None, None, None, w8a8=False)

    print(f"{M}x{N}x{K}: host us per call: decode {per_call_us(decode):.1f}, tiled {per_call_us(tiled):.1f}, "
          f"empty+launch-free floor {per_call_us(lambda: torch.empty(M, N, device='cuda')):.1f}")
    for fast in launch._launchers.values():
        cache = getattr(fast, "_cache", None)
        if cache is not None:
            print(f"  {fast.jit.__name__}: {len(cache)} keys, "
                  f"{sum(v is launch._UNSUPPORTED for v in cache.values())} on Triton's path")
    print("failures:", launch.failures or "none", "| chosen:", Q._decode_kernel.best_config)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(300):
        decode()
    torch.cuda.synchronize()
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(14)
    print(s.getvalue()[-3500:])
    # each config alone, from a replayed CUDA graph
    part = torch.empty(2 * 8 * 16 * N, device="cuda", dtype=torch.float32)
    count = Q._decode_buffers(x.device, 1, triton.cdiv(N, 16))[1]
    for cfg in Q._DECODE_CONFIGS:
        kw = dict(cfg.kwargs)

        def run(kw=kw, cfg=cfg):
            Q._decode_kernel.fn[(triton.cdiv(N, kw["BLOCK_N"]), kw["SPLIT_K"])](
                x, wq, ws, ws, wq, ws, ws, out, part, count, M, N, K, 16,
                x.stride(0), x.stride(1), wq.stride(0), wq.stride(1), wq.stride(0), wq.stride(1),
                out.stride(0), out.stride(1), HAS_BIAS=False, ACT="none", GATED=False, DOT_UPCAST=False,
                RTNE_BF16=False, GROUP_K=0, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **kw)
        run()
        ok = torch.allclose(out.float(), decode().float(), atol=1e-2, rtol=1e-2)
        ms = triton.testing.do_bench_cudagraph(run, rep=50, return_mode="median")
        print(f"  {kw} w{cfg.num_warps} s{cfg.num_stages}: {ms * 1e3:.2f} us (graph){'' if ok else '  WRONG'}")
    lin = torch.nn.functional.linear
    print(f"  cuBLAS bf16: {triton.testing.do_bench_cudagraph(lambda: lin(x, w), rep=50, return_mode='median') * 1e3:.2f} us")
    print(f"  tiled: {triton.testing.do_bench_cudagraph(tiled, rep=50, return_mode='median') * 1e3:.2f} us")


if __name__ == "__main__":
    main()
