"""The GPU probes' log: each result as a JSON line under $OUT and as one readable line on stdout."""

from __future__ import annotations

import json
import os


def jsonl_log(name: str, digits: int = 4):
    """``emit(**fields)`` appending to ``$OUT/<name>`` (``/tmp`` without OUT), floats printed to ``digits``."""
    log = open(os.path.join(os.environ.get("OUT", "/tmp"), name), "a")

    def emit(**kw):
        log.write(json.dumps(kw) + "\n")
        log.flush()
        print(" ".join(f"{k}={v:.{digits}f}" if isinstance(v, float) else f"{k}={v}" for k, v in kw.items()),
              flush=True)

    return emit


def run_meta() -> dict:
    """What a probe's rows name: the GPU, torch's and Triton's versions, and the commit (TRITONFUSE_COMMIT,
    for a copy of the tree without .git)."""
    import torch
    import triton

    return {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "commit": os.environ.get("TRITONFUSE_COMMIT", "")}


def graph_ms(fn, reps: int = 30, calls: int = 10) -> float:
    """GPU ms per call of ``fn``: ``calls`` calls captured in one CUDA graph (on a side stream, after three
    warm-up calls), the median of ``reps`` replays."""
    import statistics

    import torch

    with torch.cuda.stream(torch.cuda.Stream()):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(calls):
                fn()
        g.replay()
        torch.cuda.synchronize()
        ts = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            torch.cuda.synchronize()
            ts.append(a.elapsed_time(b) / calls)
    return statistics.median(ts)
