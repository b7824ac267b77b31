"""Where a compiled resnet50 forward spends its time (a GPU, one call): torch.profiler tables of CPU and CUDA
time per op for Inductor and tritonfuse, the synchronising CUDA runtime calls, and the wall time per forward.

Run: ``python scripts/profile_model.py [--batch 64] [--modes inductor,tritonfuse]``
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
    args = ap.parse_args()
    m = torchvision.models.resnet50(weights=None).eval().cuda().half().to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, 224, 224, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
    for mode in args.modes.split(","):
        torch._dynamo.reset()
        model = torch.compile(copy.deepcopy(m), backend=mode)
        with torch.no_grad():
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


if __name__ == "__main__":
    main()
