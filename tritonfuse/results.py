"""The results files (a contract) and the README table rendered from them.

``benchmarks/results/<gpu-slug>.json`` is written by ``tritonfuse bench --out``::

    {"gpu", "torch", "triton", "commit", "date", "command",
     "models": [{"model", "mode", "dtype", "batch", "ms", "compile_s", "peak_mem_gb", "speedup_vs_eager",
                 "speedup_vs_inductor", "cosine", "sqnr_db", "counters", ...}]}

Rows are keyed by (model, mode, dtype, batch, train, small, cuda_graphs): a new run replaces its own rows and keeps the
others, so the zoo can be measured one model per command. Each row also keeps the command that measured it.
Kernel benchmarks write ``benchmarks/results/kernels-<gpu-slug>.json`` (``{"gpu", ..., "rows": [...]}``).

Print the README's results section from every file in ``benchmarks/results/``, or merge files measured
elsewhere into it::

    python -m tritonfuse.results --readme
    python -m tritonfuse.results --merge /path/to/nvidia-h100-80gb-hbm3.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import re
import subprocess
import sys
from typing import Iterable, Optional

ROW_FIELDS = ("model", "mode", "dtype", "batch", "ms", "compile_s", "peak_mem_gb", "speedup_vs_eager",
              "speedup_vs_inductor", "cosine", "sqnr_db", "counters")
HEADER_FIELDS = ("gpu", "torch", "triton", "commit", "date", "command", "models")
MODES = ("eager", "inductor", "tritonfuse", "tritonfuse-int8")

RESULTS_DIR = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def slug(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def commit() -> str:
    """The short commit of the checkout (``TRITONFUSE_COMMIT`` where there is no git, e.g. a copied tree)."""
    env = os.environ.get("TRITONFUSE_COMMIT")
    if env:
        return env
    try:
        out = subprocess.run(["git", "-C", str(pathlib.Path(__file__).resolve().parent), "rev-parse", "--short",
                              "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def header(command: str) -> dict:
    import torch
    import triton

    return {
        "gpu": device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
    }


def default_path() -> pathlib.Path:
    return RESULTS_DIR / f"{slug(device_name())}.json"


def _flags(r: dict) -> tuple:
    return tuple(bool(r.get(f)) for f in ("train", "small", "cuda_graphs"))


def _key(r: dict) -> tuple:
    return (r["model"], r["mode"], r["dtype"], r["batch"], *_flags(r))


def _clean(x):
    # strict JSON: no NaN/Infinity
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write(rows: list[dict], path, command: str, head: Optional[dict] = None) -> pathlib.Path:
    """Merge ``rows`` into the results file at ``path`` (a directory: ``<dir>/<gpu-slug>.json``).

    ``head`` (default: this machine, now) gives gpu, torch, triton, commit and date of the file's header.
    """
    path = pathlib.Path(path)
    if path.is_dir() or str(path).endswith(os.sep):
        path = path / f"{slug(device_name())}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = load(path) if path.exists() else {}
    # each row keeps the commit that measured it: a file gathers runs of several commits
    merged = {_key(r): {"commit": old.get("commit", ""), **r} for r in old.get("models", [])}
    head = {**(head or header(command)), "command": command}
    for r in rows:
        merged[_key(r)] = {"command": command, "commit": head["commit"], **r}
    order = {m: i for i, m in enumerate(MODES)}
    doc = {**{k: head[k] for k in HEADER_FIELDS if k != "models"}, "models": sorted(merged.values(), key=lambda r: (
        r["model"], _flags(r), order.get(r["mode"], 99), r["mode"]))}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_clean(doc), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def merge(sources: Iterable, into=None) -> list[pathlib.Path]:
    """Merge results files (e.g. fetched from a GPU machine) into ``into`` (default:
    ``benchmarks/results/<gpu-slug of each file>.json``), keeping each row's command and each file's header."""
    written = []
    for src in sources:
        doc = load(src)
        dest = pathlib.Path(into) if into else RESULTS_DIR / f"{slug(doc['gpu'])}.json"
        written.append(write(doc["models"], dest, doc["command"], head=doc))
    return written


def load(path) -> dict:
    """Read a results file and check the contract: the header fields, and the row fields in every row."""
    doc = json.loads(pathlib.Path(path).read_text())
    missing = [f for f in HEADER_FIELDS if f not in doc]
    if missing:
        raise ValueError(f"{path}: missing header field(s) {', '.join(missing)}")
    for i, r in enumerate(doc["models"]):
        gone = [f for f in ROW_FIELDS if f not in r]
        if gone:
            raise ValueError(f"{path}: row {i} misses {', '.join(gone)}")
    return doc


# --- the README table -----------------------------------------------------------------------------------


def _ms(r: Optional[dict], base: Optional[dict] = None) -> str:
    if r is None:
        return "–"
    if r.get("status", "ok") != "ok" or r.get("ms") is None:
        return "failed"
    s = f"{r['ms']:.2f}"
    if r.get("spread_pct") is not None:  # timed in interleaved rounds (bench --rounds): their range
        s += f" ±{r['spread_pct']:.0f}%"
    if base is not None and r is not base and r.get("speedup_vs_inductor"):
        lo_hi = r.get("speedup_vs_inductor_range")
        s += (f" ({r['speedup_vs_inductor']:.2f}x, rounds {lo_hi[0]:.2f}-{lo_hi[1]:.2f})" if lo_hi
              else f" ({r['speedup_vs_inductor']:.2f}x)")
    return s


def _replaced(r: Optional[dict]) -> str:
    if not r or not r.get("counters"):
        return ""
    c = r["counters"]
    rep = sum(v["replaced"] for v in c.values())
    matched = sum(v["matched"] for v in c.values())
    return f"{rep}/{matched}"


def model_table(doc: dict) -> str:
    """Markdown: one row per (model, dtype, batch, train), one column per mode."""
    groups: dict[tuple, dict] = {}
    for r in doc["models"]:
        groups.setdefault((r["model"], r["dtype"], r["batch"], *_flags(r)), {})[r["mode"]] = r
    lines = [
        "| model | dtype | batch | eager ms | inductor ms | tritonfuse ms (vs inductor) | tritonfuse-int8 ms "
        "(vs inductor) | cosine tritonfuse / int8 | sites replaced / matched |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (model, dtype, batch, train, small, graphs), modes in groups.items():
        name = model + (" (train step)" if train else "") + (" (small)" if small else "") + (
            " (CUDA graphs)" if graphs else "")
        ind = modes.get("inductor")
        cos = " / ".join(f"{m['cosine']:.6f}" if m and m.get("cosine") is not None else "–"
                         for m in (modes.get("tritonfuse"), modes.get("tritonfuse-int8")))
        lines.append(f"| {name} | {dtype} | {batch} | {_ms(modes.get('eager'))} | {_ms(ind)} | "
                     f"{_ms(modes.get('tritonfuse'), ind)} | {_ms(modes.get('tritonfuse-int8'), ind)} | {cos} | "
                     f"{_replaced(modes.get('tritonfuse'))} |")
    return "\n".join(lines)


def kernel_table(doc: dict) -> str:
    """Markdown: one row per (kernel, shape, dtype), one column per provider (ms)."""
    providers: list[str] = []
    groups: dict[tuple, dict] = {}
    for r in doc.get("rows", []):
        if r["provider"] not in providers:
            providers.append(r["provider"])
        groups.setdefault((r["kernel"], r["shape"], r["dtype"]), {})[r["provider"]] = r
    lines = ["| kernel | shape | dtype | " + " | ".join(f"{p} ms" for p in providers) + " |",
             "|---|---|---|" + "---:|" * len(providers)]
    for (kernel, shape, dtype), by in groups.items():
        cells = [f"{by[p]['ms']:.4f}" if p in by and by[p].get("ms") is not None else "–" for p in providers]
        lines.append(f"| {kernel} | {shape} | {dtype} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _provenance(doc: dict) -> str:
    rows = doc.get("models", doc.get("rows", []))
    commits = sorted({r["commit"] for r in rows if r.get("commit")}) or [doc["commit"]]
    which = f"commit {commits[0]}" if len(commits) == 1 else "commits " + ", ".join(commits) + " (per command below)"
    return f"{doc['gpu']}, torch {doc['torch']}, triton {doc['triton']}, {which}, {doc['date'][:10]}"


def readme(paths: Optional[Iterable] = None) -> str:
    """The README's results section, from ``paths`` (default: every JSON file in ``benchmarks/results``)."""
    paths = sorted(pathlib.Path(p) for p in paths) if paths else sorted(RESULTS_DIR.glob("*.json"))
    parts = []
    # the model files first, then the kernel files
    for p in sorted(paths, key=lambda p: (p.name.startswith("kernels-"), p.name)):
        raw = json.loads(p.read_text())
        if "models" in raw:
            doc = load(p)
            commands = sorted({(f"[{r['commit']}] " if r.get("commit") else "") + r.get("command", doc["command"])
                               for r in doc["models"]})
            parts.append(f"### Models on {_provenance(doc)}\n\n"
                         "ms = median latency of one forward (or train step); (x) = speedup over Inductor "
                         "(`torch.compile` default); cosine vs eager fp32.\n\n" + model_table(doc) + "\n\n"
                         "Measured with:\n\n" + "\n".join(f"    {c}" for c in commands))
        elif "rows" in raw:
            commands = sorted({(f"[{r['commit']}] " if r.get("commit") else "") + r["command"]
                               for r in raw["rows"] if r.get("command")}) or ["python benchmarks/bench_<family>.py"]
            parts.append(f"### Kernels on {_provenance(raw)}\n\n" + kernel_table(raw) + "\n\n"
                         "Measured with:\n\n" + "\n".join(f"    {c}" for c in commands))
    if not parts:
        return f"(no results files in {RESULTS_DIR})"
    return "\n\n".join(parts)


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tritonfuse.results",
                                 description="Check results files and print the README results section.")
    ap.add_argument("--readme", action="store_true", help="print the README markdown for the results files")
    ap.add_argument("--merge", action="store_true", help="merge FILES into benchmarks/results/<gpu-slug>.json "
                    "(or --into)")
    ap.add_argument("--into", default=None, help="with --merge: the destination file")
    ap.add_argument("files", nargs="*", help="results JSON files (default: benchmarks/results/*.json)")
    args = ap.parse_args(argv)
    if args.merge:
        for path in merge(args.files, args.into):
            print(f"merged into {path}")
        return 0
    if not args.readme:
        for p in args.files or sorted(RESULTS_DIR.glob("*.json")):
            raw = json.loads(pathlib.Path(p).read_text())
            if "models" in raw:
                load(p)
            print(f"{p}: ok ({len(raw.get('models', raw.get('rows', [])))} rows)")
        return 0
    print(readme(args.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
