"""Host cost of one call of each tritonfuse op, at sizes where the host is the bottleneck.

An op call from a compiled graph pays the dispatcher, the op's own Python (output allocation, choosing a
kernel, TMA descriptors) and the Triton launch; a small layer's kernel takes a few microseconds on the GPU,
so this host time is what such a site costs. Each op is timed here with ``tritonfuse.launch``'s cached launch
(``TRITONFUSE_FAST_LAUNCH=1``, the default) and with Triton's own launch, side by side with the eager ops it
replaces and with Inductor's compiled version of them (``torch.compile`` default mode, one extern GEMM call
plus Inductor's launcher for its fused kernels). The two launch paths must give bit-identical outputs.

Time per call = wall time of ``--calls`` back-to-back calls, then one synchronize, divided by the calls
(median of ``--repeats`` such runs, after a warm-up).

Run: ``python benchmarks/bench_launch.py [--calls 300] [--repeats 5] [--out FILE]``; rows go to
``benchmarks/results/kernels-<gpu>.json`` (or FILE; ``python benchmarks/common.py --merge FILE`` merges a
file fetched from the GPU machine) as kernel ``launch_<op>`` with ``us_per_call``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import merge_rows, row  # noqa: E402

import tritonfuse  # noqa: E402,F401
from tritonfuse import config, launch  # noqa: E402
from tritonfuse.kernels import attention, conv_bn, int8, linear_act, norm_residual  # noqa: E402,F401  (ops)

DT = torch.float16


def _cases():
    """name -> (shape text, tritonfuse call, eager call or None)."""
    t = torch.ops.tritonfuse

    def r(*s, dtype=DT):
        return torch.randn(*s, device="cuda", dtype=dtype)

    x, w, b = r(16, 1024), r(1024, 1024) / 32, r(1024)
    xm = r(64, 1024)
    xn, rn, wn, bn = r(16, 1024), r(16, 1024), r(1024), r(1024)
    q, k, v = r(1, 8, 16, 64), r(1, 8, 16, 64), r(1, 8, 16, 64)
    xc = r(1, 16, 8, 8).to(memory_format=torch.channels_last)
    wc = (r(32, 16, 3, 3) / 12).to(memory_format=torch.channels_last)
    p = [r(32).abs() + 0.5 for _ in range(4)]
    return {
        "linear_act": ("16x1024x1024 gelu", lambda: t.linear_act(x, w, b, "gelu"),
                       lambda: F.gelu(F.linear(x, w, b))),
        "gated_mlp": ("16x1024x1024 silu", lambda: t.gated_mlp(x, w, w, None, None, "silu"),
                      lambda: F.silu(F.linear(x, w)) * F.linear(x, w)),
        "norm_residual": ("16x1024 layer+add", lambda: t.norm_residual(xn, rn, wn, bn, 1e-5, "layer", True, False,
                                                                       False, False),
                          lambda: F.layer_norm(xn + rn, (1024,), wn, bn)),
        "attention": ("1x8x16x64", lambda: t.attention(q, k, v, None, 0.125, False),
                      lambda: F.scaled_dot_product_attention(q, k, v)),
        "conv_bn": ("1x16x8x8 k3 -> 32 relu", lambda: t.conv_bn(xc, wc, None, *p, None, [1, 1], [1, 1], 1e-5, "relu",
                                                                "none", True),
                    lambda: F.relu(F.batch_norm(F.conv2d(xc, wc, None, 1, 1), p[0], p[1], p[2], p[3], False, 0.1,
                                                1e-5))),
        "int8_weight_only": ("16x1024x1024 gelu", lambda: t.int8_linear(x, w, b, "gelu", "int8-weight"),
                             lambda: F.gelu(F.linear(x, w, b))),
        "int8_w8a8": ("64x1024x1024 gelu", lambda: t.int8_linear(xm, w, b, "gelu", "int8"),
                      lambda: F.gelu(F.linear(xm, w, b))),
    }


def _tensors(out) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def per_call_us(fn, calls: int, repeats: int) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        runs.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--out", default=None, help="results file (default: benchmarks/results/kernels-<gpu>.json)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_launch.py times host cost on a GPU; no CUDA device here")
    rows = []
    print(f"{'op':18s} {'shape':24s} {'fast':>8s} {'triton':>8s} {'eager':>8s} {'inductor':>8s}  (us per call)")
    with torch.no_grad():
        for name, (shape, ours, eager) in _cases().items():
            with config.patch(fast_launch="0"):
                want = ours()
                slow = per_call_us(ours, args.calls, args.repeats)
            ours()
            got = ours()  # the second call launches from the cache
            same = all(torch.equal(a, b) for a, b in zip(_tensors(want), _tensors(got)))
            fast = per_call_us(ours, args.calls, args.repeats)
            e = per_call_us(eager, args.calls, args.repeats) if eager else None
            compiled = torch.compile(eager) if eager else None
            ind = per_call_us(compiled, args.calls, args.repeats) if compiled else None
            fmt = lambda v: f"{v:8.1f}" if v is not None else f"{'-':>8s}"  # noqa: E731
            print(f"{name:18s} {shape:24s} {fmt(fast)} {fmt(slow)} {fmt(e)} {fmt(ind)}"
                  + ("" if same else "  OUTPUTS DIFFER"))
            if not same:
                raise SystemExit(f"{name}: the cached launch gave other outputs than Triton's launch")
            for provider, us in (("tritonfuse", fast), ("tritonfuse-triton-launch", slow), ("eager", e),
                                 ("inductor", ind)):
                if us is not None:
                    rows.append(row(f"launch_{name}", shape, DT, provider, us / 1e3, us_per_call=round(us, 2)))
    print("launch failures:", launch.failures or "none")
    for fast in launch._launchers.values():  # launch keys served from the cache, and those left to Triton
        cache = getattr(fast, "_cache", None)
        if cache is not None:
            left = sum(v is launch._UNSUPPORTED for v in cache.values())
            print(f"  {fast.jit.__name__}: {len(cache)} launch keys, {left} on Triton's own path")
    if not args.no_save:
        print("wrote", merge_rows(rows, args.out))


if __name__ == "__main__":
    main()
