"""Issue 2's SwiGLU shape timed two ways, with the GPU's SM clock and power sampled while each runs.

``bench_linear_act.py`` times a provider with ``triton.testing.do_bench_cudagraph`` (a graph of about 300 ms of
calls, replayed ten times: some 3 s at full load), the probes with ``probe_log.graph_ms`` (ten calls a graph,
30 replays with a sync between: about 0.25 s). At 8192x2048x8192 the dual GEMM measured 0.787 ms the short way
and 0.831 the long way in the 37th session, Inductor's path 0.938 and 0.942. This probe shows whether the
difference is the clock the GPU holds under a sustained load (its power limit), by sampling
``nvidia-smi --query-gpu=clocks.sm,power.draw`` every 50 ms during each timing.

Run on a GPU:  python scripts/sustained_probe.py [--shape MxKxN] [--group-m 8,16,32]
(rows: $OUT/sustained-probe.jsonl)

``--group-m``: the shipped 128x256 config launched alone with each GROUP_M, the long way only, beside Inductor.
At the power limit energy sets the clock: a wave of 132 tiles reads GROUP_M row panels of x (0.5 MB each) and
132 / GROUP_M weight panels (1 MB each), and the whole 64 MB weight is read from DRAM once a group (8 times
at GROUP_M=8, 4 at 16, twice at 32): about 544, 288 and 160 MB of DRAM reads a call (at 8192x2048x8192).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_log import graph_ms, jsonl_log, run_meta  # noqa: E402

from tritonfuse.kernels import linear_act  # noqa: E402  (also registers tritonfuse::gated_mlp)


def sampled(fn):
    """(result of fn(), median SM MHz, median W, max W) with nvidia-smi sampling every 50 ms meanwhile."""
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
                            "-lms", "50"], stdout=subprocess.PIPE, text=True)
    try:
        out = fn()
    finally:
        smi.terminate()
        text = smi.communicate()[0]
    samples = []
    for line in text.splitlines():
        try:
            mhz, watts = (float(v) for v in line.split(","))
            samples.append((mhz, watts))
        except ValueError:
            continue
    if not samples:
        return out, None, None, None
    return (out, statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples),
            max(s[1] for s in samples))


def main() -> int:
    import triton

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group-m", default="", help="comma list of GROUP_M values for the shipped config")
    ap.add_argument("--shape", default="8192x2048x8192", help="MxKxN (the GROUP_M of 88b805a was chosen at the "
                    "default; 4096x4096x11008 and 4096x2048x8192 have 32 row tiles, one group at GROUP_M=32)")
    args = ap.parse_args()
    log = jsonl_log("sustained-probe.jsonl")
    meta = {**run_meta(), "shape": args.shape}
    M, K, N = (int(v) for v in args.shape.split("x"))
    g = torch.Generator(device="cuda").manual_seed(M + 1)
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=g)
    wg = torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=g) / K**0.5
    wu = torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=g) / K**0.5

    def fn(x, wg, wu):
        return F.silu(F.linear(x, wg)) * F.linear(x, wu)

    inductor = torch.compile(fn)
    providers = {
        "cublas": lambda: (torch.matmul(x, wg.t()), torch.matmul(x, wu.t())),
        "inductor": lambda: inductor(x, wg, wu),
        "tritonfuse": lambda: torch.ops.tritonfuse.gated_mlp(x, wg, wu, None, None, "silu"),
    }
    timers = {
        "short (graph_ms)": lambda f: graph_ms(f),
        "long (do_bench_cudagraph rep=300)": lambda f: triton.testing.do_bench_cudagraph(
            f, rep=300, return_mode="median"),
    }
    flop = 2 * 2 * M * K * N
    if args.group_m:
        cfg = linear_act._TMA_GATED_ALL[0]  # the shipped 128x256x64, 3 stages, 8 warps
        ref = providers["inductor"]()
        variants = {"inductor": providers["inductor"]}
        for gm in (int(v) for v in args.group_m.split(",")):
            fixed = {**cfg.kwargs, "GROUP_M": gm, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
            f = (lambda fixed: lambda: linear_act._launch_gated(x, wg, wu, None, None, "silu", fixed=fixed))(fixed)
            err = (f().float() - ref.float()).abs().max().item()
            variants[f"GROUP_M={gm}"] = f
            log(**meta, check=f"GROUP_M={gm}", max_abs_diff_vs_inductor=err)
        for rnd in range(2):
            for name, f in variants.items():
                f()
                torch.cuda.synchronize()
                ms, mhz, watts, peak = sampled(lambda: timers["long (do_bench_cudagraph rep=300)"](f))
                log(**meta, round=rnd, timer="long", provider=name, ms=ms, tflops=flop / ms / 1e9, sm_mhz=mhz,
                    watts=watts, max_watts=peak)
        return 0
    for rnd in range(2):
        for tname, timer in timers.items():
            for pname, f in providers.items():
                f()
                torch.cuda.synchronize()
                ms, mhz, watts, peak = sampled(lambda: timer(f))
                log(**meta, round=rnd, timer=tname, provider=pname, ms=ms, tflops=flop / ms / 1e9, sm_mhz=mhz,
                    watts=watts, max_watts=peak)
    return 0


if __name__ == "__main__":
    sys.exit(main())
