"""Shared by the benchmarks: GPU slug, versions, commit, date, and merging rows into the results JSON.

Rows are keyed by (kernel, shape, dtype, provider): a new run replaces its own rows and keeps the others.

Example::

    from common import merge_rows, row
    merge_rows([row("add_layer_norm", "32768x4096", torch.float16, "tritonfuse", 0.18, tbps=2.9)])
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys

import torch

from tritonfuse.backend import match_inductor_triton_env
from tritonfuse.results import device_name, header, slug

# our kernels compile under the ptxas Inductor's kernels use, and into its cache folder, as in the backend:
# otherwise which ptxas built them depended on whether a bench's Inductor provider had compiled first
# (Triton's disk cache and the binary both differ with the ptxas version)
match_inductor_triton_env(torch.cuda.current_device() if torch.cuda.is_available() else None)

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def gpu_name() -> str:
    return device_name()


def gpu_slug() -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    return slug(device_name())


def meta() -> dict:
    """GPU, versions, commit and date: the model results' header, without the command."""
    head = header("")
    head.pop("command")
    return head


def row(kernel: str, shape: str, dtype, provider: str, ms: float, tflops: float | None = None,
        tbps: float | None = None, **extra) -> dict:
    r = {"kernel": kernel, "shape": shape, "dtype": str(dtype).replace("torch.", ""), "provider": provider,
         "ms": round(ms, 5)}
    if tflops is not None:
        r["tflops"] = round(tflops, 3)
    if tbps is not None:
        r["tbps"] = round(tbps, 3)
    r.update(_provenance())
    r.update(extra)
    return r


@functools.lru_cache(maxsize=None)
def _provenance() -> dict:
    """The commit and the command line of this run, kept on each row (a results file mixes runs)."""
    out = {"command": " ".join(["python3", *sys.argv])}
    commit = meta().get("commit")
    if commit:
        out["commit"] = commit
    return out


# how gpu_time times: "graph" (CUDA-graph replays) or "plain" (do_bench); set from a bench's --timer
TIMER = "graph"


def add_timer_arg(parser) -> None:
    parser.add_argument("--timer", choices=("graph", "plain"), default="graph",
                        help="graph (default): replays of a CUDA graph of the call, GPU time alone; plain: "
                             "triton's do_bench of Python calls with L2 flushed before each, which charges "
                             "calls shorter than their host cost with that cost")


def set_timer(args) -> None:
    global TIMER
    TIMER = args.timer


def gpu_time(fn, warmup: int = 25, rep: int = 100, timer: str | None = None) -> float:
    """Median ms of ``fn()`` on the GPU, timed as ``timer`` says (default ``TIMER``): "graph" replays a CUDA
    graph of the call, "plain" is triton's ``do_bench``. The first call (compiles, autotuning) runs before."""
    import triton

    fn()
    torch.cuda.synchronize()
    if (timer or TIMER) == "graph":
        return triton.testing.do_bench_cudagraph(fn, rep=rep, return_mode="median")
    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def _key(r: dict) -> tuple:
    return (r["kernel"], r["shape"], r["dtype"], r["provider"])


def merge_rows(rows: list[dict], path: pathlib.Path | str | None = None, head: dict | None = None) -> pathlib.Path:
    """Merge ``rows`` into ``results/kernels-<gpu-slug>.json`` (or ``path``); the header is refreshed
    (``head``: another run's header, when merging a results file fetched from the GPU machine)."""
    path = pathlib.Path(path) if path else RESULTS / f"kernels-{gpu_slug()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else {}
    merged = {_key(r): r for r in old.get("rows", [])}
    merged.update({_key(r): r for r in rows})
    doc = {**(head if head is not None else meta()), "rows": sorted(merged.values(), key=_key)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)
    return path


def merge_file(src: pathlib.Path | str) -> pathlib.Path:
    """Merge a kernels results file written on the GPU machine (``--out``) into ``results/`` here."""
    doc = json.loads(pathlib.Path(src).read_text())
    head = {k: v for k, v in doc.items() if k != "rows"}
    return merge_rows(doc.get("rows", []), RESULTS / f"kernels-{slug(doc['gpu'])}.json", head)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "--merge":
        sys.exit("usage: python benchmarks/common.py --merge FILE [FILE ...]  (kernel rows from the GPU machine)")
    for f in sys.argv[2:]:
        print("merged into", merge_file(f))
