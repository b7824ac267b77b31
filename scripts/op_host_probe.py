"""Where an op call's host time goes: tritonfuse's ops called one by one, as a model that Inductor compiled
calls a site it did not inline, against the vendor calls they replace.

Run on a GPU:  python3 scripts/op_host_probe.py [--out DIR] [--calls N]

For each case it prints and writes (DIR/op_host_probe.json, and DIR/op_host_probe_profiles.txt):
  gpu_ms     the call's GPU time alone (replayed CUDA graph, median)
  stream_ms  calls enqueued back to back, the way ``registry.measured_choice`` times an op call
  host_us    host time per call while the GPU keeps up (calls enqueued without a synchronisation)
and a cProfile of N calls (top functions by own time), to show what the host does per call.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pathlib
import pstats
import statistics

import torch
import torch.nn.functional as F
import triton

import tritonfuse  # noqa: F401 - registers the ops
from tritonfuse import registry
from tritonfuse.kernels import conv_bn as C  # noqa: F401
from tritonfuse.kernels import linear_act as L  # noqa: F401
from probe_log import run_meta  # (this folder: the first on sys.path when run as a script)


def host_us(fn, calls: int) -> float:
    """The median of 5 runs of ``registry._host_time`` (the host floor's measure), in us."""
    fn()
    dev = torch.device("cuda")
    return statistics.median(registry._host_time(fn, dev, calls) * 1e3 for _ in range(5))


def profile(fn, calls: int) -> str:
    fn()
    torch.cuda.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls):
        fn()
    pr.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(22)
    return s.getvalue()


_lib = None


def cases(dev):
    g = torch.Generator(device=dev).manual_seed(0)
    h = torch.float16

    def rnd(*shape, pos=False):
        t = torch.randn(*shape, device=dev, dtype=h, generator=g)
        return t.abs() + 0.5 if pos else t

    small = rnd(64)
    global _lib
    if _lib is None:  # kept alive for the process: the op goes when its Library does
        _lib = torch.library.Library("probe", "FRAGMENT")
        _lib.define("ident(Tensor x) -> Tensor")
        _lib.impl("ident", lambda x: x.clone(), "CompositeExplicitAutograd")
    out = {
        "aten add (tiny)": lambda: torch.ops.aten.add(small, 1.0),
        "Library op, clone (tiny)": lambda: torch.ops.probe.ident(small),
    }
    M, K, N = 12608, 768, 3072
    x, w, b = rnd(M, K), rnd(N, K) / K ** 0.5, rnd(N)
    out["linear_act gelu 12608x768x3072 (op)"] = lambda: torch.ops.tritonfuse.linear_act(x, w, b, "gelu")
    out["F.linear + F.gelu (cuBLAS + eager)"] = lambda: F.gelu(F.linear(x, w, b))
    for cin, cout, k, hw in ((256, 64, 1, 56), (64, 64, 3, 56), (512, 2048, 1, 7)):
        xc = rnd(64, cin, hw, hw).contiguous(memory_format=torch.channels_last)
        wc = (rnd(cout, cin, k, k) / (cin * k * k) ** 0.5).contiguous(memory_format=torch.channels_last)
        bn = (rnd(cout) * 0.1, rnd(cout, pos=True), rnd(cout, pos=True), rnd(cout) * 0.1)
        p = k // 2
        name = f"{cin}->{cout} k{k} {hw}x{hw}"
        out[f"conv_bn relu {name} (op)"] = (
            lambda xc=xc, wc=wc, bn=bn, p=p: torch.ops.tritonfuse.conv_bn(
                xc, wc, None, *bn, None, [1, 1], [p, p], 1e-5, "relu", "none", True))
        out[f"cudnn conv {name} (aten)"] = (
            lambda xc=xc, wc=wc, p=p: torch.ops.aten.convolution(xc, wc, None, [1, 1], [p, p], [1, 1], False,
                                                                 [0, 0], 1))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=".")
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    dev = torch.device("cuda")
    outdir = pathlib.Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    rows, profiles = [], []
    for name, fn in cases(dev).items():
        with torch.no_grad():
            fn()
            torch.cuda.synchronize()
            row = {"case": name,
                   "gpu_ms": round(triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median"), 5),
                   "stream_ms": round(registry._bench_stream(fn), 5),
                   "host_us": round(host_us(fn, args.calls), 2)}
            profiles.append(f"===== {name}\n{profile(fn, args.calls)}")
        rows.append(row)
        print(f"{name:<44} gpu {row['gpu_ms']:.4f} ms  stream {row['stream_ms']:.4f} ms  host {row['host_us']:.1f} us",
              flush=True)
    meta = {**run_meta(), "command": "python3 scripts/op_host_probe.py " + " ".join(f"--out {args.out}".split())}
    (outdir / "op_host_probe.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    (outdir / "op_host_probe_profiles.txt").write_text("\n".join(profiles))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
