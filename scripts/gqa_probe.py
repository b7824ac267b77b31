"""GQA attention at llama-1b-prefill's shape on a GPU: what each way of serving HF's repeat_kv'd SDPA costs.

    python3 scripts/gqa_probe.py [--b 8 --h 16 --hkv 8 --s 1024 --d 128]

Times (GPU time, median; benchmarks.common.gpu_time), causal, bf16: SDPA on K/V repeated beforehand (what
kernels.attention.measure times for SDPA today), the repeat itself (repeat_interleave of K and V, the copy the
graph makes for it), SDPA with ``enable_gqa`` on the unrepeated K/V (and which backend serves it), and our
kernel on the unrepeated K/V. Checks each output against SDPA on the repeated K/V."""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

from tritonfuse.kernels import attention as K

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from common import gpu_time  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    for name, default in (("b", 8), ("h", 16), ("hkv", 8), ("s", 1024), ("d", 128)):
        ap.add_argument(f"--{name}", type=int, default=default)
    a = ap.parse_args()
    dt = torch.bfloat16
    q = torch.randn(a.b, a.h, a.s, a.d, device="cuda", dtype=dt)
    k, v = (torch.randn(a.b, a.hkv, a.s, a.d, device="cuda", dtype=dt) for _ in range(2))
    n = a.h // a.hkv

    def repeat():
        return k.repeat_interleave(n, 1), v.repeat_interleave(n, 1)

    kr, vr = repeat()
    ref = F.scaled_dot_product_attention(q, kr, vr, is_causal=True)
    flops = 4 * a.b * a.h * a.s * a.s * a.d / 2
    print(f"B{a.b} H{a.h} Hkv{a.hkv} S{a.s} D{a.d} causal bf16, {torch.cuda.get_device_name()}, torch "
          f"{torch.__version__}")
    rows = {
        "SDPA on repeated K/V": lambda: F.scaled_dot_product_attention(q, kr, vr, is_causal=True),
        "repeat of K and V": repeat,
        "SDPA enable_gqa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        "ours (GQA)": lambda: K._forward(q, k, v, None, a.d ** -0.5, True, store_lse=False, tma=False)[0],
        "ours (GQA, TMA)": lambda: K._forward(q, k, v, None, a.d ** -0.5, True, store_lse=False, tma=True)[0],
    }
    for name, fn in rows.items():
        try:
            out = fn()
            ms = gpu_time(fn)
        except Exception as e:  # noqa: BLE001 - a probe: say what failed and go on
            print(f"{name:24s} failed: {type(e).__name__}: {str(e)[:200]}")
            continue
        diff = None if isinstance(out, tuple) else (out.float() - ref.float()).abs().max().item()
        err = "" if diff is None else f"  max |diff| vs SDPA repeated {diff:.3g}"
        tf = "" if isinstance(out, tuple) else f"  {flops / ms / 1e9:.0f} TFLOP/s"
        print(f"{name:24s} {ms:.4f} ms{tf}{err}")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        torch.cuda.synchronize()
    print("enable_gqa kernels:", sorted({e.name[:90] for e in prof.events() if e.device_type.name == "CUDA"}))
    for backend in ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        try:
            with sdpa_kernel(getattr(SDPBackend, backend)):
                fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # noqa: E731
                out = fn()
                print(f"enable_gqa {backend:20s} {gpu_time(fn):.4f} ms  max |diff| "
                      f"{(out.float() - ref.float()).abs().max().item():.3g}")
        except Exception as e:  # noqa: BLE001
            print(f"enable_gqa {backend:20s} unavailable: {str(e).splitlines()[0][:150]}")


if __name__ == "__main__":
    main()
