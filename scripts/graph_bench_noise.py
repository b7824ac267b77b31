"""How much a graphed site timing (``registry._bench(fn, graphed=True)``: Triton's ``do_bench_cudagraph``,
median of ten replays) spreads at a given length of graph, and what one timing costs in wall time.

A first compile times both sides of every site this way, so the graph's length is paid per site; the
choice needs a spread well under ``TRITONFUSE_MEASURE_MARGIN`` (3%). The functions are the two sides of
sites in the model zoo: a tritonfuse op and the vendor calls it replaces, at vit_b_16's MLP, resnet50's
3x3 and a small kernel.

Run on a GPU: ``python scripts/graph_bench_noise.py [--reps 10,50] [--repeat 7]``; one JSON line per
(function, rep): median ms, min/max over the repeats relative to the median, wall seconds per timing.

``--pairs``: a site's decision instead, ours over the vendor path's sum, as the registry times a graphed
site (``registry._graph_pair``: each side's graph of about 1 ms replayed in alternating rounds, median of
the per-round ratios) against the sides timed one after the other with ``do_bench_cudagraph`` at 10 and
50 ms: one JSON line per (site, method) with the median ratio, its min/max over the repeats relative to
it, and wall seconds per decision.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
import triton

import tritonfuse.kernels.conv_bn  # noqa: F401  (registers the ops)
import tritonfuse.kernels.linear_act  # noqa: F401
from probe_log import run_meta  # (this folder: the first on sys.path when run as a script)


def functions():
    dev, dt = "cuda", torch.float16
    g = torch.Generator(device=dev).manual_seed(0)
    rnd = lambda *s: torch.randn(*s, device=dev, dtype=dt, generator=g)  # noqa: E731
    x, w, b = rnd(64 * 197, 768), rnd(3072, 768) * 0.03, rnd(3072)
    h = torch.empty(64 * 197, 3072, device=dev, dtype=dt)
    xc = rnd(64, 64, 56, 56).to(memory_format=torch.channels_last)
    wc = (rnd(64, 64, 3, 3) * 0.05).to(memory_format=torch.channels_last)
    bc = rnd(64)
    yc = torch.empty_like(xc)
    xs, ws = rnd(8, 768), rnd(768)
    return {
        "vit_mlp_tritonfuse": lambda: torch.ops.tritonfuse.linear_act(x, w, b, "gelu"),
        "vit_mlp_cublas_addmm": lambda: torch.addmm(b, x, w.t(), out=h),
        "vit_mlp_gelu": lambda: F.gelu(h),
        "resnet_3x3_tritonfuse": lambda: torch.ops.tritonfuse.conv_bn(xc, wc, bc, None, None, None, None, None,
                                                                     [1, 1], [1, 1], 1e-5, "relu", "none", True),
        "resnet_3x3_cudnn": lambda: F.conv2d(xc, wc, bc, padding=1),
        "resnet_3x3_relu": lambda: torch.relu_(yc),
        "small_layer_norm": lambda: F.layer_norm(xs, (768,), ws),
    }


PAIRS = {"vit_mlp": ("vit_mlp_tritonfuse", ["vit_mlp_cublas_addmm", "vit_mlp_gelu"]),
         "resnet_3x3": ("resnet_3x3_tritonfuse", ["resnet_3x3_cudnn", "resnet_3x3_relu"])}


def pairs(args, meta) -> None:
    from tritonfuse import registry

    fns = functions()
    for f in fns.values():
        f()
    torch.cuda.synchronize()

    def separate(rep):
        def decide(ours, theirs):
            t = triton.testing.do_bench_cudagraph(ours, rep=rep, return_mode="median")
            return t / sum(triton.testing.do_bench_cudagraph(f, rep=rep, return_mode="median") for f in theirs)
        return decide

    methods = {"separate-10ms": separate(10), "separate-50ms": separate(50),
               "graph_pair": lambda ours, theirs: registry._graph_pair(ours, theirs)[2]}
    for site, (ours, theirs) in PAIRS.items():
        got = {m: ([], []) for m in methods}
        for _ in range(args.repeat):  # methods interleaved
            for m, decide in methods.items():
                t0 = time.perf_counter()
                got[m][0].append(decide(fns[ours], [fns[f] for f in theirs]))
                got[m][1].append(time.perf_counter() - t0)
        for m, (ratios, wall) in got.items():
            med = statistics.median(ratios)
            print(json.dumps({**meta, "site": site, "method": m, "median_ratio": round(med, 4),
                              "lo": round(min(ratios) / med - 1, 4), "hi": round(max(ratios) / med - 1, 4),
                              "wall_s": round(statistics.median(wall), 3)}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", default="10,50", help="graph lengths in ms, comma list")
    ap.add_argument("--repeat", type=int, default=7, help="timings per (function, length)")
    ap.add_argument("--pairs", action="store_true", help="the spread of a site's decision by timing method")
    args = ap.parse_args()
    reps = [int(r) for r in args.reps.split(",")]
    meta = run_meta()
    if args.pairs:
        return pairs(args, meta)
    for name, fn in functions().items():
        fn()  # compile and autotune first
        torch.cuda.synchronize()
        got = {r: ([], []) for r in reps}
        for _ in range(args.repeat):  # lengths interleaved, so a clock drift touches each alike
            for r in reps:
                t0 = time.perf_counter()
                got[r][0].append(triton.testing.do_bench_cudagraph(fn, rep=r, return_mode="median"))
                got[r][1].append(time.perf_counter() - t0)
        for r, (ms, wall) in got.items():
            med = statistics.median(ms)
            print(json.dumps({**meta, "fn": name, "rep_ms": r, "median_ms": round(med, 5),
                              "lo": round(min(ms) / med - 1, 4), "hi": round(max(ms) / med - 1, 4),
                              "wall_s": round(statistics.median(wall), 3)}), flush=True)


if __name__ == "__main__":
    main()
