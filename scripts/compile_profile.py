"""Where a model's compile time goes: Inductor against tritonfuse, cold caches and warm, each profiled.

    python scripts/compile_profile.py --model bert-base --out /tmp/compile-profile

Every (mode, run) is its own process. A mode's runs share one fresh cache root of their own (Inductor's,
Triton's and tritonfuse's), so "cold" is a first compile on this machine and "warm" is the next process's
compile of the same model, with every cache on disk filled; "newmodel" empties every cache but tritonfuse's
recorded patterns first (a first compile of a model where tritonfuse has compiled another before). Each process also compiles a second time after
``torch._dynamo.reset()`` (``again_s``). The modes in ``--profile-modes`` then run again, cold and warm, on a
cache root of their own under cProfile (so the timed runs carry no profiler overhead; ``--profile-runs``
profiles named runs in place instead). Writes
``<out>/summary.json`` (with Dynamo's per-stage compile times and Inductor's cache hits) and, per profiled
process, ``<out>/<mode>-<run>-profiled.prof.txt``: cumulative times, tritonfuse's own functions, Triton's
compile and autotune.

``COMPILE_PROFILE_NO_SURVEY=1`` compiles without the backend's survey (``backend.SURVEY``), for an A/B of it.

With ``--breakdown`` a row also has ``exclusive``: for the main thread, each timed function's time less the
timed calls inside it, keyed "<phase> <function>" (phases: survey, decide, inductor; "rest" is a phase's time
in none of them), ``launch_failures``: why a kernel's compiles were not sent to Inductor's workers, ``jobs``:
each compile sent to the workers (kernel, constexprs, specialisations; when sent and done, and when it began
and ended in its worker), ``marks``: when the survey and the deciding pass ran, and ``pool``: when Inductor's
workers were started and first ran a job (seconds from the first call's start; negative: inside
``torch.compile``, where tritonfuse's entry point starts them). ``--time-runs N`` also times N calls of the
compiled model (``run_ms``, the median; eager calls, no CUDA graphs, so host time counts).
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
    "tritonfuse.backend:TritonfusePasses._survey",  # the families' checks once, each site's compiles sent ahead
    "tritonfuse.launch:ahead",
    "tritonfuse.launch:uncompiled_specs",
    "tritonfuse.launch:_submit",
    "tritonfuse.launch:FastLauncher.config_jobs",
    "tritonfuse.registry:measured_choice",
    "tritonfuse.registry:guarded_probe",
    "tritonfuse.registry:_bench",
    "torch._inductor.pattern_matcher:Match.replace_by_example",
    "torch._inductor.pattern_matcher:PatternMatcherPass.apply",
    "tritonfuse.launch:FastLauncher.precompile",
    "tritonfuse.launch:compile_elsewhere",
    "tritonfuse.inline:inline_pass",
    # torch's TTIR generation for its analysis of what an inlined kernel writes (memoized since 792ebd1)
    "torch._higher_order_ops.triton_kernel_wrap:generate_ttir",
    "triton.runtime.jit:JITFunction._do_compile",
    "triton.compiler.compiler:compile",
    "triton.runtime.cache:triton_key",
    "triton.runtime.autotuner:Autotuner._bench",
    "triton.runtime.autotuner:Autotuner.run",
    "torch._inductor.compile_fx:compile_fx_inner",
    "torch._inductor.graph:GraphLowering.compile_to_module",
    "torch._inductor.async_compile:AsyncCompile.wait",
    "torch._inductor.select_algorithm:AlgorithmSelectorCache.__call__",
    # finer parts, for the main thread's exclusive times (``exclusive`` in a row)
    "tritonfuse.registry:_call_ahead",
    "tritonfuse.registry:_stream_rounds",
    "tritonfuse.registry:_host_time",
    "tritonfuse.patterns.common:_fresh_copy",
    "tritonfuse.patterns.common:fwd_only",
    "concurrent.futures._base:Future.result",
    "torch.cuda:synchronize",
)


def _cache_entries() -> int:
    """Entries in the disk cache Triton uses at this point (a compile that adds one missed it): its
    TRITON_CACHE_DIR, which Inductor sets where unset, else its default under TRITON_HOME."""
    try:
        from triton import knobs

        folder = knobs.cache.dir
    except (ImportError, AttributeError):  # triton < 3.4
        folder = os.environ.get("TRITON_CACHE_DIR") or os.path.join(
            os.environ.get("TRITON_HOME", os.path.expanduser("~")), ".triton", "cache")
    try:
        return len(os.listdir(folder))
    except OSError:
        return -1


def _caller() -> str:
    """Who asked for a compile: the thread, then the innermost tritonfuse functions on its stack (a probe, a
    precompile's thread, the autotuner inside a timing), outermost first."""
    import threading
    import traceback

    ours = [f"{pathlib.Path(f.filename).stem}.{f.name}" for f in traceback.extract_stack()
            if any(part in f.filename for part in ("/tritonfuse/", "/kernels/", "/patterns/"))]
    return threading.current_thread().name + ": " + " > ".join(ours[-4:])


def _job_summary(data: str) -> dict:
    """What sets one compile sent to the workers apart from another of the same kernel: its constexprs
    (configs and flags), the arguments Triton specialised on (divisibility by 16, value 1) and its options."""
    import json

    try:
        f = json.loads(data)
        sig = f.get("signature", {})
        names = list(sig) if isinstance(sig, dict) else []

        def name(path):  # Triton keys constants and attributes by argument index paths: [3] -> "M"
            i = path[0] if isinstance(path, list) and len(path) == 1 else path
            return names[i] if isinstance(i, int) and i < len(names) else str(path)

        consts = {name(k): v for k, v in zip(f.get("constant_keys", []), f.get("constant_vals", []))
                  if not (isinstance(v, str) and v.startswith("<"))}  # (no descriptors' reprs)
        attrs = sorted(f"{name(k)}:" + ",".join(str(a[-1]) if isinstance(a, list) else str(a) for a in v)
                       for k, v in zip(f.get("attrs_keys", []), f.get("attrs_vals", [])))  # e.g. "M:16"
        opts = {k: v for k, v in f.get("options", {}).items() if k in ("num_warps", "num_stages", "num_ctas")}
        return {"consts": consts, "attrs": attrs, "options": opts}
    except (TypeError, ValueError, AttributeError) as e:
        return {"error": repr(e)}


def _time_jobs(table: dict, lock) -> None:
    """table["jobs"]: each compile sent to Inductor's workers (``launch._submit``): the kernel, when it was
    sent and when its future completed (s since the first compile began, ``table["t0"]``), what it is
    (``_job_summary``); table["marks"]: when the survey and the deciding pass began and ended."""
    from tritonfuse import backend, launch

    submit = launch._submit

    def timed_submit(pool, jit, data, env=None):
        row = {"kernel": jit.fn.__name__, "sent": round(time.perf_counter() - table["t0"], 3), **_job_summary(data)}
        with lock:
            table.setdefault("jobs", []).append(row)
        fut = submit(pool, jit, data, env)

        def done(f):
            row["done"] = round(time.perf_counter() - table["t0"], 3)
            row["ok"] = f.exception() is None
            ran = f.result() if row["ok"] else None
            if isinstance(ran, tuple) and len(ran) == 4:  # in the worker: began, imported, ended, pid
                row["ran"] = [round(t - table["t0_wall"], 3) for t in ran[:3]]
                row["pid"] = ran[3]

        fut.add_done_callback(done)
        return fut

    launch._submit = timed_submit
    from torch._inductor import async_compile

    warm = getattr(async_compile, "maybe_warm_pool", None)

    def timed_warm():
        # table["pool"]: when the workers were first asked to start (by our entry point, inside torch.compile,
        # or by the backend's entry), and when a job of nothing sent then ran in one and came back
        # (perf_counter and, for "noop_ran", wall-clock times; made relative to the first call by _pool_row)
        t = time.perf_counter()
        warm()
        if "pool" in table:
            return
        row = table["pool"] = {"warmed": t}
        pool = launch._inductor_pool()
        if pool is not None:
            def done(f):
                row["noop_done"] = time.perf_counter()
                if f.exception() is None:
                    row["noop_ran"] = f.result()

            pool.submit(time.time).add_done_callback(done)

    if warm is not None:
        async_compile.maybe_warm_pool = timed_warm
    for attr, mark in (("_survey", "survey"), ("_apply", "decide")):
        fn = getattr(backend.TritonfusePasses, attr, None)
        if fn is None:
            continue

        def marked(*a, _fn=fn, _mark=mark, **k):
            t = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                table.setdefault("marks", []).append(
                    [_mark, round(t - table["t0"], 3), round(time.perf_counter() - table["t0"], 3)])

        setattr(backend.TritonfusePasses, attr, marked)


def _pool_row(table: dict) -> "dict | None":
    """table["pool"] in seconds since the first call began (negative: before it, inside torch.compile)."""
    pool = table.get("pool")
    if not pool:
        return None
    out = {k: round(pool[k] - table["t0"], 3) for k in ("warmed", "noop_done") if k in pool}
    if "noop_ran" in pool and "t0_wall" in table:
        out["noop_ran"] = round(pool["noop_ran"] - table["t0_wall"], 3)
    return out


def _install_timers(table: dict) -> None:
    import functools
    import hashlib
    import importlib
    import threading

    lock, depth = threading.Lock(), threading.local()
    # the main thread's timed calls as a stack: each one's own time (less the timed calls inside it) goes to
    # table["exclusive"]["<phase> <name>"], the phase being the outermost of survey / decide (the families'
    # passes) / inductor it runs in; "<phase> rest" is a phase's time in none of the timed functions
    stack: list = []  # [name, start, time in timed calls inside]
    phases = {"tritonfuse.backend:TritonfusePasses._survey": "survey",
              "tritonfuse.backend:TritonfusePasses._apply": "decide",
              "torch._inductor.compile_fx:compile_fx_inner": "inductor"}

    def exclusive(name, dt):
        inner = stack.pop()[2]
        if stack:
            stack[-1][2] += dt
        phase = next((phases[f[0]] for f in reversed(stack) if f[0] in phases), phases.get(name, "outside"))
        ex = table.setdefault("exclusive", {})
        key = f"{phase} {'rest' if name in phases else name.split(':')[-1]}"
        ex[key] = ex.get(key, 0.0) + dt - inner

    def wrap(name, fn):
        @functools.wraps(fn)
        def timed(*a, **k):
            outer = getattr(depth, name, 0) == 0
            setattr(depth, name, getattr(depth, name, 0) + 1)
            before = _cache_entries() if name.endswith("_do_compile") else 0
            main = threading.current_thread() is threading.main_thread()
            t = time.perf_counter()
            if main:
                stack.append([name, t, 0.0])
            try:
                return fn(*a, **k)
            finally:
                setattr(depth, name, getattr(depth, name, 0) - 1)
                dt = time.perf_counter() - t
                if main:
                    exclusive(name, dt)
                keys = [name]
                if name.endswith("_do_compile") and a:
                    keys.append(f"compile:{getattr(a[0], '__name__', '?')}")
                with lock:
                    for key in keys:
                        row = table.setdefault(key, [0, 0.0])
                        row[0] += 1
                        row[1] += dt if outer or key != name else 0.0
                    if name.endswith("_do_compile") and len(a) > 1:
                        # which specialisation (a digest of Triton's in-memory key: the same digest in two
                        # processes is the same binary) and whether Triton's disk cache grew (a miss)
                        table.setdefault("compiles", []).append(
                            [getattr(a[0], "__name__", "?"), round(dt, 3),
                             hashlib.sha1(str(a[1]).encode()).hexdigest()[:10], _cache_entries() - before,
                             _caller()])

        return timed

    def keyed(fn):  # the parts of Triton's disk-cache key, each as a digest (which part moves between processes)
        @functools.wraps(fn)
        def wrapped(src, backend, options, env_vars, *a, **k):
            def h(x):
                return hashlib.sha1(str(x).encode()).hexdigest()[:8]

            try:
                sig = [v for _, v in sorted(src.signature.items())]
                consts = sorted((str(k2), getattr(v, "cache_key", str(v))) for k2, v in src.constants.items())
                parts = {"fn": getattr(src.fn, "__name__", "?"), "fn_key": h(src.fn.cache_key),
                         "attrs": h(src.attrs), "sig": h(sig), "consts": h(consts), "backend": h(backend.hash()),
                         "options": h(options.hash()), "env": h(sorted(env_vars.items())), "env_raw": env_vars}
            except Exception as e:  # noqa: BLE001 - another version's layout
                parts = {"error": repr(e)}
            with lock:
                table.setdefault("cache_keys", []).append(parts)
            return fn(src, backend, options, env_vars, *a, **k)

        return wrapped

    try:
        import triton.compiler.compiler as tcc
        tcc.get_cache_key = keyed(tcc.get_cache_key)
    except Exception:  # noqa: BLE001
        pass
    _time_jobs(table, lock)
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

    if os.environ.get("COMPILE_PROFILE_NO_SURVEY") == "1":  # the first compile as before the survey (A/B)
        from tritonfuse import backend

        backend.SURVEY = False
    dev = torch.device(args.device)
    spec = zoo.get(args.model)
    dtype = spec.dtype if dev.type == "cuda" else torch.float32
    work = spec.make(small=dev.type != "cuda", device=dev)
    model = work.model.to(dev, dtype).eval()
    if work.channels_last:  # as `tritonfuse bench` runs it (cli._to_dtype): weights in channels_last too
        model = model.to(memory_format=torch.channels_last)
    inp = work.inputs(model, dev, dtype, 0)

    compiled = []

    def first_call():
        torch._dynamo.reset()
        tritonfuse.reset()
        fn = torch.compile(model, backend=args.mode)
        compiled[:] = [fn]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = table["t0"] = time.perf_counter()
        table["t0_wall"] = time.time()
        with torch.no_grad():
            fn(*inp.args, **inp.kwargs)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    from torch._dynamo.utils import counters

    table: dict = {"t0": time.perf_counter()}
    if args.breakdown:
        _install_timers(table)
    prof = cProfile.Profile() if args.profile else None
    if prof:
        prof.enable()
    first = first_call()
    first_table = {k: list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v
                   for k, v in table.items()}
    if prof:
        prof.disable()
    caches = {k: v for group in ("inductor", "aot_autograd") for k, v in counters[group].items() if "cache" in k}
    try:
        stages = torch._dynamo.utils.compile_times(repr="str", aggregate=True)
    except Exception as e:  # noqa: BLE001 - another torch's signature
        stages = repr(e)
    run_ms = _run_ms(compiled[0], inp, args.time_runs) if args.time_runs and dev.type == "cuda" else None
    again = None if args.no_again else round(first_call(), 2)
    row = {"model": args.model, "mode": args.mode, "run": args.run, "compile_s": round(first, 2),
           "again_s": again, "caches": caches, "stages": stages,
           "tritonfuse": tritonfuse.counters() if args.mode == "tritonfuse" else None, "run_ms": run_ms}
    if args.mode == "tritonfuse":
        from tritonfuse import registry

        row["compile_parts"] = registry.compile_time()
        row["surveyed"] = registry.surveyed()
        from tritonfuse import launch

        # why a kernel's compiles were not sent to the workers, or not launched the fast way (per kernel)
        row["launch_failures"] = {k: v[:300] for k, v in launch.failures.items()}
    if args.breakdown:  # of the first compile only
        row["breakdown"] = {k: v if isinstance(v, str) else [v[0], round(v[1], 2)] for k, v in first_table.items()
                            if k not in ("compiles", "cache_keys", "exclusive", "jobs", "marks", "t0", "t0_wall",
                                         "pool")}
        row["exclusive"] = {k: round(v, 2) for k, v in sorted(first_table.get("exclusive", {}).items(),
                                                              key=lambda kv: -kv[1]) if v >= 0.01}
        # [kernel, s, key digest, new disk-cache entries, the thread and tritonfuse functions that asked]
        row["compiles"] = first_table.get("compiles", [])
        row["jobs"] = first_table.get("jobs", [])  # the compiles sent to the workers, when, and what
        row["marks"] = first_table.get("marks", [])
        row["pool"] = _pool_row(first_table)
        row["cache_keys"] = first_table.get("cache_keys", [])  # the parts of each compile's disk-cache key
    if prof:
        text = io.StringIO()
        stats = pstats.Stats(prof, stream=text).sort_stats("cumulative")
        stats.print_stats(70)
        text.write("\n--- tritonfuse's own functions ---\n")
        stats.print_stats(r"tritonfuse|patterns/|kernels/", 60)
        text.write("\n--- Triton compile and autotune ---\n")
        stats.print_stats(r"triton/(compiler|runtime/autotuner|runtime/jit)", 25)
        pathlib.Path(args.prof_out).write_text(text.getvalue())
        prof.dump_stats(str(pathlib.Path(args.prof_out).with_suffix(".pstats")))  # for callers/callees
    print(json.dumps(row))


def _run_ms(fn, inp, runs: int) -> float:
    """The compiled model's median time per call (ms) over ``runs`` calls, each timed by CUDA events, after
    ten warm-up calls: what a compile's choices bought, beside what they cost."""
    import statistics

    import torch

    times = []
    with torch.no_grad():
        for i in range(10 + runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*inp.args, **inp.kwargs)
            end.record()
            end.synchronize()
            if i >= 10:
                times.append(start.elapsed_time(end))
    return round(statistics.median(times), 3)


def _forget_all_but_patterns(root: pathlib.Path) -> None:
    """Before a ``newmodel`` run: every cache under ``root`` emptied (Inductor's, Triton's, tritonfuse's
    choices and tuned configs) except tritonfuse's recorded patterns, which do not depend on the model. That
    is a first compile of a model on a machine where tritonfuse has compiled another one before."""
    import shutil

    for sub in ("inductor", "triton-home"):
        shutil.rmtree(root / sub, ignore_errors=True)
    ours = root / "xdg" / "tritonfuse"
    for path in ours.iterdir() if ours.is_dir() else ():
        if path.name != "patterns":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for path in (root / "xdg").iterdir() if (root / "xdg").is_dir() else ():
        if path.name != "tritonfuse":
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bert-base")
    p.add_argument("--modes", default="inductor,tritonfuse")
    p.add_argument("--profile-modes", default="tritonfuse", help="modes compiled again under cProfile")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="/tmp/compile-profile")
    p.add_argument("--runs", default="cold,warm",
                   help="processes per mode, in order, on the shared cache root (e.g. cold,warm,third; "
                   "newmodel: every cache emptied first but tritonfuse's recorded patterns)")
    p.add_argument("--no-again", action="store_true",
                   help="no second compile in each process (a process then compiles once, as a user's run does)")
    p.add_argument("--breakdown", action="store_true",
                   help="time the compile's parts (tracing, probes, measuring, Triton compiles, Inductor) in every run")
    p.add_argument("--root", help="the cache root (default: a fresh temporary folder); a second invocation "
                   "with the same root continues where the first left off, e.g. --runs hit --profile-modes ''")
    p.add_argument("--profile-runs", default="", help="runs of the unprofiled modes profiled in place")
    p.add_argument("--time-runs", type=int, default=0,
                   help="after the first compile, time this many calls of the compiled model (run_ms, median)")
    p.add_argument("--mode", help=argparse.SUPPRESS)  # the child process's
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--prof-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        return _child(args)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = pathlib.Path(args.root) if args.root else pathlib.Path(tempfile.mkdtemp(prefix="tf-compile-"))

    def env_at(folder: pathlib.Path) -> dict:
        # as a user's processes run: TRITON_CACHE_DIR unset (Inductor sets it to its own folder before its
        # first kernel; ours compile into Triton's default until then), with Triton's home in the folder
        env = {**os.environ, "XDG_CACHE_HOME": str(folder / "xdg"),
               "TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor"), "TRITON_HOME": str(folder / "triton-home")}
        env.pop("TRITON_CACHE_DIR", None)
        return env

    rows = []
    # each mode on a cache root of its own (before the 28th session's last change they shared one, and the
    # second mode's "cold" found the first's kernels that both compile on disk); unprofiled runs first, for
    # the times, then the profiled modes again on roots of their own
    plan = [(env_at(root / m), m, False) for m in args.modes.split(",")]
    if args.profile_modes:
        plan += [(env_at(root / "profiled" / m), m, True) for m in args.profile_modes.split(",")]
    for env, mode, prof in plan:
        for run in args.runs.split(","):
            if run == "newmodel":
                _forget_all_but_patterns(pathlib.Path(env["XDG_CACHE_HOME"]).parent)
            tag = f"{mode}-{run}" + ("-profiled" if prof else "")
            cmd = [sys.executable, __file__, "--model", args.model, "--device", args.device, "--mode", mode,
                   "--run", run, "--prof-out", str(out / f"{tag}.prof.txt")] + (
                ["--profile"] if prof or run in args.profile_runs.split(",") else []) + (
                ["--breakdown"] if args.breakdown else []) + (["--no-again"] if args.no_again else []) + (
                ["--time-runs", str(args.time_runs)] if args.time_runs and not prof else [])
            t = time.perf_counter()
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            (out / f"{tag}.log").write_text(r.stdout + r.stderr)
            line = next((x for x in reversed(r.stdout.splitlines()) if x.startswith("{")), None)
            row = json.loads(line) if line else {"mode": mode, "run": run, "error": r.stderr[-500:]}
            row["process_s"] = round(time.perf_counter() - t, 1)
            row["profiled"] = prof or run in args.profile_runs.split(",")
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "stages"}), flush=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
