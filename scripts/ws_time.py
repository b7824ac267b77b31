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


def int8_isolated(seconds: float, shapes: str):
    """Each warp-specialized int8 config in a process of its own, killed after ``seconds``: in the 42nd
    session the first one launched at 8192^3 never returned (300 s), so a config that hangs is named here
    instead of stopping the run."""
    import subprocess

    import bench_int8 as BI

    for i, c in enumerate(BI._tma_candidates()):
        if not c.kwargs.get("WS"):
            continue
        for shape in shapes.split(","):
            cmd = [sys.executable, os.path.abspath(__file__), "--what", "int8", "--candidate", str(i), "--shapes", shape]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds)
                rows = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
                for ln in rows:
                    print(ln, flush=True)
                if r.returncode or not rows:
                    emit(kernel="int8_gemm", shape=shape, provider=BI._label("tma", i, c), rc=r.returncode,
                         error=r.stderr.strip().splitlines()[-1][:200] if r.stderr.strip() else "no output")
            except subprocess.TimeoutExpired:
                emit(kernel="int8_gemm", shape=shape, provider=BI._label("tma", i, c), error=f"no result in {seconds:g} s")


def int8(candidate=None, shapes="8192x8192x8192,4096x4096x4096,8192x14336x4096"):
    import bench_int8 as BI
    from tritonfuse.kernels import int8 as Q

    dev = torch.device("cuda")
    cands = [(i, c) for i, c in enumerate(BI._tma_candidates()) if c.kwargs.get("WS")]
    if candidate is not None:  # one config, checked against a fixed non-WS config (no autotuning)
        cands = [(i, c) for i, c in enumerate(BI._tma_candidates()) if i == candidate]
    for M, N, Kd in [tuple(int(v) for v in s.split("x")) for s in shapes.split(",")]:
        flops = 2.0 * M * N * Kd
        x = torch.randn(M, Kd, device=dev, dtype=torch.bfloat16)
        w = torch.randn(N, Kd, device=dev, dtype=torch.bfloat16) * Kd ** -0.5
        wq, ws = Q.quantize_weight(w)
        xq, xs = Q.quant_rows(x)
        shape = f"{M}x{N}x{Kd}"
        if candidate is not None:
            y = torch.empty(M, N, device=dev, dtype=torch.bfloat16)
            BI._launch("tma", BI._tma_candidates()[0], xq, xs, wq, ws, y)
            torch.cuda.synchronize()
            emit(kernel="int8_gemm", shape=shape, provider="reference config launched", config=BI._label("tma", 0, BI._tma_candidates()[0]))
        else:
            y = Q._w8a8(xq, xs, wq, ws, None, "none", torch.bfloat16)
        for name, fn in () if candidate is not None else (("torch._int_mm", lambda: torch._int_mm(xq, wq.t())),
                         ("tma autotuned", lambda: Q._w8a8(xq, xs, wq, ws, None, "none", torch.bfloat16))):
            ms = gpu_time(fn, rep=50)
            emit(kernel="int8_gemm", shape=shape, provider=name, ms=ms, tops=flops / ms * 1e-9)
        if candidate is None:
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
    ap.add_argument("--isolate", type=float, default=0,
                    help="int8: each warp-specialized config in its own process, killed after this many seconds")
    ap.add_argument("--candidate", type=int, help="int8: only bench_int8's TMA candidate of this index")
    ap.add_argument("--shapes", default="8192x8192x8192,4096x4096x4096,8192x14336x4096", help="int8: MxNxK list")
    args = ap.parse_args()
    for part in args.what.split(","):
        if part == "int8" and args.isolate:
            int8_isolated(args.isolate, args.shapes)
        elif part == "int8":
            int8(args.candidate, args.shapes)
        else:
            attention()
