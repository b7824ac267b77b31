"""Time the warp-specialized kernels (41st session) against what serves today, on the GPU, side by side:

- attention forward, B8 H16 S4096, non-causal, D128 and D64, no LSE (the inference op): cuDNN/flash SDPA
  (PyTorch's choice), the TMA kernel (the op today), and each warp-specialized config launched on its own,
  its output compared with the TMA kernel's;
- W8A8 GEMM at 8192^3, 4096^3 and 8192x14336x4096: torch._int_mm, the autotuned TMA kernel (today), and each
  warp-specialized config launched on its own (bench_int8's candidates), its output compared bit for bit.

Every time is the median of CUDA-graph replays (benchmarks/common.gpu_time). One JSON line per row on stdout.

    python3 scripts/ws_time.py [--what attention,int8]
"""

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from common import gpu_time  # noqa: E402

from tritonfuse.kernels import attention as K  # noqa: E402


def emit(**row):
    print(json.dumps(row), flush=True)


def attention():
    dev = torch.device("cuda")
    for d in (128, 64):
        B, H, S = 8, 16, 4096
        g = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(B, S, H, d, generator=g).to(dev, torch.float16).transpose(1, 2) for _ in range(3))
        flops = 4 * B * H * S * S * d
        scale = d ** -0.5
        lse = torch.empty((B, H, S), device=dev, dtype=torch.float32)
        ref = K._empty_out(q)
        K._launch_tma(q, k, v, ref, lse, scale * K.LOG2E, False, False)
        rows = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
                "tma": lambda: K._launch_tma(q, k, v, ref, lse, scale * K.LOG2E, False, False)}
        for name, fn in rows.items():
            ms = gpu_time(fn, rep=50)
            emit(kernel="attention_fwd", D=d, provider=name, ms=ms, tflops=flops / ms * 1e-9)
        configs = K._attn_fwd_ws_kernel.configs
        extra = [K._ws_cfg(256, 64, 3), K._ws_cfg(128, 128, 3), K._ws_cfg(256, 128, 2)]
        for cfg in configs + extra:
            K._attn_fwd_ws_kernel.configs = [cfg]
            out = K._empty_out(q)
            name = f"ws BM{cfg.kwargs['BLOCK_M']} BN{cfg.kwargs['BLOCK_N']} s{cfg.num_stages} ws={cfg.kwargs['WS']}"
            try:
                fn = lambda: K._launch_ws(q, k, v, out, lse, scale * K.LOG2E, False, False, tune=False)  # noqa: E731
                ms = gpu_time(fn, rep=50)
                err = (out.float() - ref.float()).abs().max().item()
                emit(kernel="attention_fwd", D=d, provider=name, ms=ms, tflops=flops / ms * 1e-9, max_diff_vs_tma=err)
            except Exception as e:  # noqa: BLE001
                emit(kernel="attention_fwd", D=d, provider=name, error=f"{type(e).__name__}: {str(e)[:160]}")
            finally:
                K._attn_fwd_ws_kernel.configs = configs


def int8():
    import bench_int8 as BI
    from tritonfuse.kernels import int8 as Q

    dev = torch.device("cuda")
    cands = [(i, c) for i, c in enumerate(BI._tma_candidates()) if c.kwargs.get("WS")]
    for M, N, Kd in [(8192, 8192, 8192), (4096, 4096, 4096), (8192, 14336, 4096)]:
        flops = 2.0 * M * N * Kd
        x = torch.randn(M, Kd, device=dev, dtype=torch.bfloat16)
        w = torch.randn(N, Kd, device=dev, dtype=torch.bfloat16) * Kd ** -0.5
        wq, ws = Q.quantize_weight(w)
        xq, xs = Q.quant_rows(x)
        y = Q._w8a8(xq, xs, wq, ws, None, "none", torch.bfloat16)
        shape = f"{M}x{N}x{Kd}"
        for name, fn in (("torch._int_mm", lambda: torch._int_mm(xq, wq.t())),
                         ("tma autotuned", lambda: Q._w8a8(xq, xs, wq, ws, None, "none", torch.bfloat16))):
            ms = gpu_time(fn, rep=50)
            emit(kernel="int8_gemm", shape=shape, provider=name, ms=ms, tops=flops / ms * 1e-9)
        emit(kernel="int8_gemm", shape=shape, provider="tma autotuned config", config=str(Q._w8a8_tma_kernel.best_config))
        out = torch.empty(M, N, device=dev, dtype=torch.bfloat16)
        for i, cfg in cands:
            name = BI._label("tma", i, cfg)
            try:
                ms = gpu_time(lambda: BI._launch("tma", cfg, xq, xs, wq, ws, out), rep=50)
                same = torch.equal(out, y)
                emit(kernel="int8_gemm", shape=shape, provider=name, ms=ms, tops=flops / ms * 1e-9, equal_to_autotuned=same)
            except Exception as e:  # noqa: BLE001
                emit(kernel="int8_gemm", shape=shape, provider=name, error=f"{type(e).__name__}: {str(e)[:160]}")
        del x, w, wq, ws, xq, xs, y, out
        torch.cuda.empty_cache()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--what", default="attention,int8")
    args = ap.parse_args()
    for part in args.what.split(","):
        {"attention": attention, "int8": int8}[part]()
