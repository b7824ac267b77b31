"""Where a compiled resnet50 forward spends its time (a GPU, one call): torch.profiler tables of CPU and CUDA
time per op for Inductor and tritonfuse, the synchronising CUDA runtime calls, and the wall time per forward.

Run: ``python scripts/profile_model.py [--batch 64] [--modes inductor,tritonfuse] [--inline] [--code DIR]``

``--inline`` turns ``kernels.conv_bn.INLINE`` on (the conv sites' kernels inlined into Inductor's code);
``--code DIR`` writes each mode's generated output code (``DIR/<mode>-<n>.py``, from the first call) and prints
how many kernels of each kind it launches: what Inductor runs around the inlined kernels (copies, layout
conversions) shows there.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torchvision
from torch.profiler import ProfilerActivity, profile


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--modes", default="inductor,tritonfuse")
    ap.add_argument("--inline", action="store_true", help="kernels.conv_bn.INLINE on")
    ap.add_argument("--code", default=None, help="write each mode's output code under this folder")
    args = ap.parse_args()
    if args.inline:
        import tritonfuse.kernels.conv_bn as CB

        CB.INLINE = True
    m = torchvision.models.resnet50(weights=None).eval().cuda().half().to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, 224, 224, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
    for mode in args.modes.split(","):
        torch._dynamo.reset()
        model = torch.compile(copy.deepcopy(m), backend=mode)
        with torch.no_grad():
            if args.code:
                _write_code(model, x, mode, args.code)
            for _ in range(5):
                model(x)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(50):
                model(x)
            torch.cuda.synchronize()
            print(f"== {mode}: {(time.perf_counter() - t0) / 50 * 1e3:.3f} ms per forward (wall, 50 back to back)")
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    model(x)
                torch.cuda.synchronize()
        ka = prof.key_averages()
        print(ka.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
        print(ka.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))
        syncs = {e.key: e.count for e in ka if "ynchronize" in e.key or "Memcpy" in e.key or "cudaMalloc" in e.key}
        print(f"{mode}: synchronising / allocating runtime calls in 10 forwards: {syncs}", flush=True)
        if mode == "tritonfuse":
            import tritonfuse

            print(tritonfuse.report())


def _write_code(model, x, mode: str, folder: str) -> None:
    """The first call, with Inductor's generated code kept: written out, and its launches counted by kind."""
    import collections
    import os
    import re

    from torch._inductor.utils import run_and_get_code

    os.makedirs(folder, exist_ok=True)
    _, codes = run_and_get_code(model, x)
    kinds: collections.Counter = collections.Counter()
    for i, code in enumerate(codes):
        with open(os.path.join(folder, f"{mode}-{i}.py"), "w") as f:
            f.write(code)
        call = code[code.find("def call("):] if "def call(" in code else code
        # Triton kernels (Inductor's and inlined ones) launch as NAME.run(...), a CPU's C++ kernels as NAME(...)
        for name in re.findall(r"^\s+(\w+)\.run\(|^\s+(cpp_fused_\w+)\(", call, flags=re.M):
            kinds[re.sub(r"_\d+$", "", name[0] or name[1])] += 1
        for name in re.findall(r"(extern_kernels\.\w+|aten\.\w+|torch\.ops\.\w+\.\w+)\(", call):
            kinds[name] += 1
    print(f"== {mode}: {len(codes)} output code file(s) in {folder}; launches by kind:")
    for name, n in kinds.most_common():
        print(f"   {n:4d}  {name}")


if __name__ == "__main__":
    main()
