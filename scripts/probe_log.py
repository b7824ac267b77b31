"""The GPU probes' log: each result as a JSON line under $OUT and as one readable line on stdout; and the
command line the shape probes share."""

from __future__ import annotations

import argparse
import json
import os


def probe_parser(doc: str, shapes: str) -> argparse.ArgumentParser:
    """A shape probe's command line: ``--shapes`` (default ``shapes``) and ``--check`` (its check against a
    reference, on the CPU in the Triton interpreter or on a GPU: ``check_device``)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--shapes", default=shapes)
    ap.add_argument("--check", action="store_true")
    return ap


def check_device() -> str:
    """Where a probe's ``--check`` runs: the GPU, unless there is none or TRITON_INTERPRET is set."""
    import torch

    return "cuda" if torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET") else "cpu"


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
