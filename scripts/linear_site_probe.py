"""How one GEMM+GELU site's two sides time, each way ``registry.measured_choice`` and the benches time them.

At bert-base's MLP shape (16384x768x3072 fp16, bias, erf GELU) the backend's measured choice once timed our op
call at 0.193 ms against 0.188 for cuBLAS + a GELU pass (rounds during the compile), while
``bench_linear_act.py`` had 0.180 against Inductor's 0.217. This times, on a quiet host, our launch, cuBLAS's
``addmm`` and ``mm``, eager's GELU pass, eager's GEMM + GELU and Inductor's compiled ``gelu(linear)``:
back to back (``registry._bench_stream``, three times), with ``triton.testing.do_bench`` and from a CUDA graph
(GPU time alone); then ``registry._stream_rounds`` three times each against the two vendor forms, and our
launch's host time per call (``registry._host_time``).

Run on a GPU:  python3 scripts/linear_site_probe.py > probe.json
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F


def main() -> int:
    import triton

    from tritonfuse import registry
    from tritonfuse.kernels import linear_act as LA

    M, K, N = 16384, 768, 3072
    dev, dt = "cuda", torch.float16
    x, w = torch.randn(M, K, device=dev, dtype=dt), torch.randn(N, K, device=dev, dtype=dt)
    b, y1 = torch.randn(N, device=dev, dtype=dt), torch.randn(M, N, device=dev, dtype=dt)
    compiled = torch.compile(lambda x, w, b: F.gelu(F.linear(x, w, b)))
    sides = {
        "ours": lambda: LA._launch_linear(x, w, b, "gelu", False)[0],
        "addmm": lambda: torch.addmm(b, x, w.t()),
        "mm": lambda: torch.mm(x, w.t()),
        "gelu_pass": lambda: F.gelu(y1),
        "eager_both": lambda: F.gelu(torch.addmm(b, x, w.t())),
        "inductor": lambda: compiled(x, w, b),
    }
    for _ in range(3):
        for f in sides.values():
            f()
    out: dict = {}
    for name, f in sides.items():
        out[name] = {"stream": [round(registry._bench_stream(f, runs=5), 4) for _ in range(3)],
                     "do_bench": round(triton.testing.do_bench(f, rep=100, return_mode="median"), 4),
                     "graph": round(triton.testing.do_bench_cudagraph(f, rep=50, return_mode="median"), 4)}
    for r in range(3):  # (ours ms, theirs ms, median per-round ratio, rounds)
        out[f"rounds{r}"] = [round(v, 4) for v in registry._stream_rounds(sides["ours"], [sides["addmm"],
                                                                                        sides["gelu_pass"]])]
        out[f"rounds_both{r}"] = [round(v, 4) for v in registry._stream_rounds(sides["ours"], [sides["eager_both"]])]
    out["host_ours_ms"] = registry._host_time(sides["ours"], x.device)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
