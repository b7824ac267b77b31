"""Where a model's compile time goes: Inductor against tritonfuse, cold caches and warm, each profiled.

    python scripts/compile_profile.py --model bert-base --out /tmp/compile-profile

Every (mode, run) is its own process. All of them share one fresh cache root (Inductor's, Triton's and
tritonfuse's), so "cold" is a first compile on this machine and "warm" is the next process's compile of the
same model, with every cache on disk filled. Each process also compiles a second time after
``torch._dynamo.reset()`` (``again_s``). The modes in ``--profile-modes`` then run again, cold and warm, on a
cache root of their own under cProfile (so the timed runs carry no profiler overhead). Writes
``<out>/summary.json`` (with Dynamo's per-stage compile times and Inductor's cache hits) and, per profiled
process, ``<out>/<mode>-<run>-profiled.prof.txt``: cumulative times, tritonfuse's own functions, Triton's
compile and autotune.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pathlib
import pstats
import subprocess
import sys
import tempfile
import time


# inclusive wall time and calls of these, from any thread, with --breakdown (a nested call of the same
# function counts once); JIT compiles also per kernel name
_TIMED = (
    "tritonfuse.backend:_family_pass",
    "tritonfuse.backend:TritonfusePasses._apply",
    "tritonfuse.registry:measured_choice",
    "tritonfuse.registry:guarded_probe",
    "tritonfuse.launch:FastLauncher.precompile",
    "tritonfuse.inline:inline_pass",
    "triton.runtime.jit:JITFunction._do_compile",
    "triton.runtime.autotuner:Autotuner._bench",
    "triton.runtime.autotuner:Autotuner.run",
    "torch._inductor.compile_fx:compile_fx_inner",
    "torch._inductor.graph:GraphLowering.compile_to_module",
    "torch._inductor.async_compile:AsyncCompile.wait",
    "torch._inductor.select_algorithm:AlgorithmSelectorCache.__call__",
)


def _install_timers(table: dict) -> None:
    import functools
    import importlib
    import threading

    lock, depth = threading.Lock(), threading.local()

    def wrap(name, fn):
        @functools.wraps(fn)
        def timed(*a, **k):
            outer = getattr(depth, name, 0) == 0
            setattr(depth, name, getattr(depth, name, 0) + 1)
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                setattr(depth, name, getattr(depth, name, 0) - 1)
                dt = time.perf_counter() - t
                keys = [name]
                if name.endswith("_do_compile") and a:
                    keys.append(f"compile:{getattr(a[0], '__name__', '?')}")
                with lock:
                    for key in keys:
                        row = table.setdefault(key, [0, 0.0])
                        row[0] += 1
                        row[1] += dt if outer or key != name else 0.0

        return timed

    for spec in _TIMED:
        mod, attr = spec.split(":")
        try:
            owner = importlib.import_module(mod)
            *path, last = attr.split(".")
            for p in path:
                owner = getattr(owner, p)
            setattr(owner, last, wrap(spec, getattr(owner, last)))
        except Exception as e:  # noqa: BLE001 - another version's layout
            table[spec] = f"not timed: {type(e).__name__}: {e}"


def _child(args) -> None:
    import torch

    import tritonfuse
    from tritonfuse import zoo

    dev = torch.device(args.device)
    spec = zoo.get(args.model)
    dtype = spec.dtype if dev.type == "cuda" else torch.float32
    work = spec.make(small=dev.type != "cuda", device=dev)
    model = work.model.to(dev, dtype).eval()
    inp = work.inputs(model, dev, dtype, 0)

    def first_call():
        torch._dynamo.reset()
        tritonfuse.reset()
        fn = torch.compile(model, backend=args.mode)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            fn(*inp.args, **inp.kwargs)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    from torch._dynamo.utils import counters

    table: dict = {}
    if args.breakdown:
        _install_timers(table)
    prof = cProfile.Profile() if args.profile else None
    if prof:
        prof.enable()
    first = first_call()
    first_table = {k: list(v) if isinstance(v, list) else v for k, v in table.items()}
    if prof:
        prof.disable()
    caches = {k: v for group in ("inductor", "aot_autograd") for k, v in counters[group].items() if "cache" in k}
    try:
        stages = torch._dynamo.utils.compile_times(repr="str", aggregate=True)
    except Exception as e:  # noqa: BLE001 - another torch's signature
        stages = repr(e)
    again = None if args.no_again else round(first_call(), 2)
    row = {"model": args.model, "mode": args.mode, "run": args.run, "compile_s": round(first, 2),
           "again_s": again, "caches": caches, "stages": stages,
           "tritonfuse": tritonfuse.counters() if args.mode == "tritonfuse" else None}
    if args.breakdown:  # of the first compile only
        row["breakdown"] = {k: v if isinstance(v, str) else [v[0], round(v[1], 2)] for k, v in first_table.items()}
    if prof:
        text = io.StringIO()
        stats = pstats.Stats(prof, stream=text).sort_stats("cumulative")
        stats.print_stats(70)
        text.write("\n--- tritonfuse's own functions ---\n")
        stats.print_stats(r"tritonfuse|patterns/|kernels/", 60)
        text.write("\n--- Triton compile and autotune ---\n")
        stats.print_stats(r"triton/(compiler|runtime/autotuner|runtime/jit)", 25)
        pathlib.Path(args.prof_out).write_text(text.getvalue())
    print(json.dumps(row))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bert-base")
    p.add_argument("--modes", default="inductor,tritonfuse")
    p.add_argument("--profile-modes", default="tritonfuse", help="modes compiled again under cProfile")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="/tmp/compile-profile")
    p.add_argument("--runs", default="cold,warm",
                   help="processes per mode, in order, on the shared cache root (e.g. cold,warm,third)")
    p.add_argument("--no-again", action="store_true",
                   help="no second compile in each process (a process then compiles once, as a user's run does)")
    p.add_argument("--breakdown", action="store_true",
                   help="time the compile's parts (tracing, probes, measuring, Triton compiles, Inductor) in every run")
    p.add_argument("--mode", help=argparse.SUPPRESS)  # the child process's
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--prof-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        return _child(args)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = pathlib.Path(tempfile.mkdtemp(prefix="tf-compile-"))
    env = {**os.environ, "XDG_CACHE_HOME": str(root / "xdg"), "TORCHINDUCTOR_CACHE_DIR": str(root / "inductor"),
           "TRITON_CACHE_DIR": str(root / "triton")}
    rows = []
    # unprofiled runs first, for the times; then the profiled modes again on a cache root of their own
    plan = [(env, m, False) for m in args.modes.split(",")]
    if args.profile_modes:
        penv = {**env, **{k: v.replace(str(root), str(root / "profiled")) for k, v in env.items() if k in
                          ("XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}}
        plan += [(penv, m, True) for m in args.profile_modes.split(",")]
    for env, mode, prof in plan:
        for run in args.runs.split(","):
            tag = f"{mode}-{run}" + ("-profiled" if prof else "")
            cmd = [sys.executable, __file__, "--model", args.model, "--device", args.device, "--mode", mode,
                   "--run", run, "--prof-out", str(out / f"{tag}.prof.txt")] + (["--profile"] if prof else []) + (
                ["--breakdown"] if args.breakdown else []) + (["--no-again"] if args.no_again else [])
            t = time.perf_counter()
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            (out / f"{tag}.log").write_text(r.stdout + r.stderr)
            line = next((x for x in reversed(r.stdout.splitlines()) if x.startswith("{")), None)
            row = json.loads(line) if line else {"mode": mode, "run": run, "error": r.stderr[-500:]}
            row["process_s"] = round(time.perf_counter() - t, 1)
            row["profiled"] = prof
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "stages"}), flush=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
