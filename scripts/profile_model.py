"""Where a compiled model's forward spends its time (a GPU): torch.profiler tables of CPU and CUDA time per op
for each mode, the synchronising CUDA runtime calls, and per forward the wall time, the host's time (forwards
enqueued without a synchronisation) and the profiled kernels' GPU time: whether the forward is host-bound.

Run: ``python scripts/profile_model.py [--model resnet50] [--batch N] [--modes inductor,tritonfuse]
[--no-conv-inline] [--int8-inline] [--pointer] [--static-launch] [--force-norms] [--code DIR]``

``--model`` is a model of the bench's zoo (``tritonfuse models``) at its bench size; ``--modes`` takes
``inductor``, ``tritonfuse`` and ``tritonfuse-int8``. ``--no-conv-inline`` turns ``kernels.conv_bn.INLINE``
off (on by default: the conv sites' kernels inlined into Inductor's code; off, each one an op call);
``--int8-inline`` turns ``patterns.linear_act.INT8_CONSTANTS`` on (int8 weights as graph constants, the int8
GEMMs inlined); ``--pointer`` inlines both as the pointer kernels instead of the device-descriptor TMA
kernels, and ``--static-launch`` (``TRITONFUSE_STATIC_LAUNCH=1``) lets Inductor launch inlined kernels
without global scratch (the pointer kernels) from its static launcher, as its own. ``--code
DIR`` writes each mode's generated output code (``DIR/<mode>-<n>.py``, from the first call) and prints how
many kernels of each kind it launches: what Inductor runs around inlined kernels (copies, layout
conversions) shows there.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=None, help="default: the bench's batch for the model")
    ap.add_argument("--modes", default="inductor,tritonfuse")
    ap.add_argument("--no-conv-inline", action="store_true", help="kernels.conv_bn.INLINE off (on by default)")
    ap.add_argument("--int8-inline", action="store_true", help="patterns.linear_act.INT8_CONSTANTS on")
    ap.add_argument("--pointer", action="store_true", help="inlined 1x1 convs and W8A8 GEMMs as the pointer "
                    "kernels (kernels.conv_bn / kernels.int8 INLINE_DEVICE_TMA off)")
    ap.add_argument("--static-launch", action="store_true", help="TRITONFUSE_STATIC_LAUNCH=1: Inductor launches "
                    "inlined kernels without global scratch from its static launcher")
    ap.add_argument("--code", default=None, help="write each mode's output code under this folder")
    ap.add_argument("--small", action="store_true", help="the zoo's small size (a dry run on a CPU)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--force-norms", action="store_true", help="every norm_residual site the kernel supports "
                    "taken untimed, as scripts/force_norm_bench.py takes them")
    args = ap.parse_args()
    if args.force_norms:
        from tritonfuse.kernels import norm_residual as NR

        NR.measure = lambda *a, **k: {"use": True}
    if args.no_conv_inline:
        import tritonfuse.kernels.conv_bn as CB

        CB.INLINE = False
    if args.int8_inline:
        import tritonfuse.patterns.linear_act as LP

        LP.INT8_CONSTANTS = True
    if args.pointer:
        import tritonfuse.kernels.conv_bn as CB
        import tritonfuse.kernels.int8 as I8

        CB.INLINE_DEVICE_TMA = I8.INLINE_DEVICE_TMA = False
    if args.static_launch:
        from tritonfuse import config

        config.static_launch = "1"
    from tritonfuse import cli, zoo

    device = torch.device(args.device)
    spec = zoo.MODELS[args.model]
    work = spec.make(small=args.small, batch=args.batch, device=device)
    dtype = cli._dtype("auto", spec, device)
    cli._to_dtype(work, dtype)
    inp = work.inputs(work.model, device, dtype, 0)
    print(f"{args.model} ({work.shape}, {cli._dname(dtype)})")
    for mode in args.modes.split(","):
        torch._dynamo.reset()
        with cli._mode_ctx(mode), torch.no_grad():
            model = cli._compiled(copy.deepcopy(work.model), mode)

            def call():
                if inp.reset:
                    inp.reset()
                return cli._call(model, inp)

            if args.code:
                _write_code(call, mode, args.code)
            for _ in range(5):
                call()
            cli._sync(device)
            t0 = time.perf_counter()
            for _ in range(50):
                call()
            cli._sync(device)
            print(f"== {mode}: {(time.perf_counter() - t0) / 50 * 1e3:.3f} ms per forward (wall, 50 back to back)")
            # the host's share: a few forwards enqueued without a synchronisation (the GPU's queue holds them
            # all), so the time until the last call returns is the host's alone. Near the wall time above, the
            # forward is host-bound and a kernel that saves GPU time but costs launch time loses
            t0 = time.perf_counter()
            for _ in range(3):
                call()
            host_ms = (time.perf_counter() - t0) / 3 * 1e3
            cli._sync(device)
            print(f"== {mode}: {host_ms:.3f} ms of host time per forward (3 enqueued, no synchronisation)")
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                for _ in range(10):
                    call()
                cli._sync(device)
        ka = prof.key_averages()
        if device.type == "cuda":
            # device-side events only, as the profiler's own table totals them: a launch's CPU-side event
            # carries its kernel's time too, and summing both counted every Triton kernel twice
            gpu_us = sum(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
                         for e in ka if getattr(e, "device_type", None) != DeviceType.CPU)
            print(f"== {mode}: {gpu_us / 10 / 1e3:.3f} ms of GPU time per forward (the profiled kernels' sum)")
        print(ka.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
        if device.type == "cuda":
            print(ka.table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=60))
        syncs = {e.key: e.count for e in ka if "ynchronize" in e.key or "Memcpy" in e.key or "cudaMalloc" in e.key}
        print(f"{mode}: synchronising / allocating runtime calls in 10 forwards: {syncs}", flush=True)
        if mode.startswith("tritonfuse"):
            import tritonfuse

            print(tritonfuse.report())


def _write_code(call, mode: str, folder: str) -> None:
    """The first call, with Inductor's generated code kept: written out, and its launches counted by kind."""
    import collections
    import os
    import re

    from torch._inductor.utils import run_and_get_code

    os.makedirs(folder, exist_ok=True)
    _, codes = run_and_get_code(call)
    kinds: collections.Counter = collections.Counter()
    for i, code in enumerate(codes):
        with open(os.path.join(folder, f"{mode}-{i}.py"), "w") as f:
            f.write(code)
        body = code[code.find("def call("):] if "def call(" in code else code
        # Triton kernels (Inductor's and inlined ones) launch as NAME.run(...), a CPU's C++ kernels as NAME(...)
        for name in re.findall(r"^\s+(\w+)\.run\(|^\s+(cpp_fused_\w+)\(", body, flags=re.M):
            kinds[re.sub(r"_\d+$", "", name[0] or name[1])] += 1
        for name in re.findall(r"(extern_kernels\.\w+|aten\.\w+|torch\.ops\.\w+\.\w+(?:\.\w+)?)\(", body):
            kinds[name] += 1
    print(f"== {mode}: {len(codes)} output code file(s) in {folder}; launches by kind:")
    for name, n in kinds.most_common():
        print(f"   {n:4d}  {name}")


if __name__ == "__main__":
    main()
