"""How should a conv site's autotuning time its configs in a first compile? (issue 6)

resnet50's first compile on the H200 spent 5.1 s in the autotuner's benchmarks (b5b80a6,
``benchmarks/results/diagnostics/README.md``, twenty-eighth session): ``kernels/conv_bn.py`` times each config
with ``do_bench`` (5 ms of warm-up, 20 ms of calls, L2 flushed before each call). For every distinct conv of
resnet50 (b64, fp16, channels_last), launched as its inlined site runs (a 1x1 on Hopper: the device-TMA
kernel; else the implicit-GEMM kernel), this tunes the configs with each method below, after one tuning that
compiles them all, and records the wall time of each tuning and the config it chose. Where a method chose
another config than ``current``, the two configs are then timed against each other (``registry._graph_pair``):
``vs_current`` above 1 means the method's choice is slower.

- ``current``: the timing shipped until the 29th session (``do_bench``, 5 / 20 ms); ``current2`` runs it again,
  for how often the shipped timing itself changes its choice;
- ``short``: ``do_bench`` with 2 ms of warm-up and 8 ms of calls;
- ``graph``: ``kernels.common.graph_bench``: each config's calls captured in a CUDA graph of about 1 ms, the median
  of 5 replays (L2 not flushed).

    python3 scripts/autotune_bench_probe.py [--shapes 0,3,7]   # indices into RESNET50_SHAPES; default all

Writes JSON lines to $OUT/autotune-bench-probe.jsonl. Written in the 28th session, first run in the 29th, after
which ``graph`` became the shipped timing (``kernels.common.graph_bench``); ``current`` names the timing shipped
before it (do_bench, 5 / 20 ms).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))


def do_bench_5_20(fn, quantiles=None):
    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


def main() -> None:
    from bench_conv_bn import RESNET50_SHAPES
    from probe_log import jsonl_log, run_meta

    from tritonfuse import registry, tuning
    from tritonfuse.kernels import conv_bn as K
    from tritonfuse.kernels.common import graph_bench
    from tritonfuse.kernels.common import scratch_allocator

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="", help="indices into RESNET50_SHAPES, comma-separated (default: all)")
    args = ap.parse_args()
    picked = [int(i) for i in args.shapes.split(",")] if args.shapes else range(len(RESNET50_SHAPES))
    emit = jsonl_log("autotune-bench-probe.jsonl", digits=5)
    methods = {
        "current": do_bench_5_20,
        "short": lambda fn, quantiles=None: triton.testing.do_bench(fn, warmup=2, rep=8, quantiles=quantiles),
        "graph": graph_bench,  # what ships since
        "current2": do_bench_5_20,
    }
    # every tuning times its configs: nothing restored from tritonfuse's records or Triton's disk cache
    tuning.restore = lambda *a, **k: None
    tuning.save = lambda *a, **k: None
    dev = torch.device("cuda")
    meta = run_meta()

    for i in picked:
        cin, cout, k, stride, pad, hw = RESNET50_SHAPES[i]
        x = torch.randn(64, cin, hw, hw, device=dev, dtype=torch.float16).to(memory_format=torch.channels_last)
        w = (torch.randn(cout, cin, k, k, device=dev, dtype=torch.float16) * (cin * k * k) ** -0.5).to(
            memory_format=torch.channels_last)
        half = dict(device=dev, dtype=torch.float16)
        bn = (torch.randn(cout, **half), torch.rand(cout, **half) + 0.5, torch.randn(cout, **half),
              torch.randn(cout, **half))
        st, pd = [stride, stride], [pad, pad]
        device_tma = (K._HAS_DEVICE_TMA and K.INLINE_DEVICE_TMA and K._hopper(dev)
                      and K._tma_1x1_layout(x, w, None, st, pd))
        tuner = K._conv1x1_device_tma_kernel if device_tma else K._conv_bn_kernel
        ctx = scratch_allocator if device_tma else contextlib.nullcontext
        seen: dict = {}
        run = type(tuner).run

        def spy(*a, _run=run, _tuner=tuner, **kw):
            seen["call"] = (a, kw)
            return _run(_tuner, *a, **kw)

        tuner.run = spy
        if hasattr(tuner, "cache_results"):
            tuner.cache_results = False

        def launch():
            launcher = registry.launcher(K._conv_bn_kernel)
            for name in ("_cache", "_precompiled"):
                getattr(launcher, name, {}).clear()
            tuner.cache.clear()
            with ctx():
                if device_tma:
                    out = K._empty_out(x, w, st, pd, True)
                    K._launch_1x1_device_tma(x, w, None, *bn, None, 1e-5, "relu", "none", out)
                else:
                    K._launch_conv(x, w, None, *bn, None, st, pd, 1e-5, "relu", "none", True, tma=False)
            torch.cuda.synchronize()
            return next(iter(tuner.cache.values()))

        def fixed(cfg):
            a, kw = seen["call"]
            full = {**dict(zip(tuner.arg_names, a)), **kw, **cfg.all_kwargs()}

            def call():
                if cfg.pre_hook:
                    cfg.pre_hook(full)
                tuner.fn.run(*a, **kw, **cfg.all_kwargs())

            return call

        shape = f"{cin}x{cout}x{k}x{k}/s{stride}@{hw}"
        try:
            tuner.do_bench = methods["current"]
            t0 = time.perf_counter()
            launch()  # compiles every config
            compile_s = time.perf_counter() - t0
            chosen = {}
            for name, bench in methods.items():
                tuner.do_bench = bench
                t0 = time.perf_counter()
                chosen[name] = launch()
                wall = time.perf_counter() - t0
                ratio = 1.0
                if name != "current" and str(chosen[name]) != str(chosen["current"]):
                    with ctx():
                        ratio = registry._graph_pair(fixed(chosen[name]), [fixed(chosen["current"])])[2]
                emit(**meta, shape=shape, kernel=tuner.base_fn.__name__, method=name,
                     configs=len(getattr(tuner, "configs_timings", None) or ()),
                     tune_s=round(wall, 3), first_s=round(compile_s, 3), config=str(chosen[name]),
                     vs_current=round(ratio, 4))
        except Exception as e:  # noqa: BLE001 - one shape's failure is a row, the rest still run
            emit(**meta, shape=shape, error=f"{type(e).__name__}: {str(e)[:300]}")
        finally:
            del tuner.run
            tuner.do_bench = methods["current"]


if __name__ == "__main__":
    main()
