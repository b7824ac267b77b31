"""``tritonfuse`` (also ``python -m tritonfuse``): bench, profile and explain the model zoo.

    tritonfuse bench [--models resnet50,bert-base] [--modes eager,inductor,tritonfuse,tritonfuse-int8]
                     [--dtype fp16] [--batch N] [--small] [--cuda-graphs] [--train] [--out FILE.json] [--plot FILE.png]
    tritonfuse profile MODEL [--modes ...] [--what all|blocks|leaves]
    tritonfuse explain MODEL [--quant int8]
    tritonfuse models

Exit status: 0 when every requested run worked (a model whose optional dependency is missing is skipped with a
message, not an error), 1 when a mode failed (it is reported as failed in the table and the JSON; the other
modes still run), 2 for bad usage (an unknown model or mode; the message lists the valid ones).

Without a GPU the CLI says so, sets ``TRITON_INTERPRET=1`` (before Triton is imported) and runs ``--small``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import shlex
import statistics
import sys
import time
import traceback
from collections import Counter
from typing import Callable, Optional

MODES = ("eager", "inductor", "tritonfuse", "tritonfuse-int8")
DTYPES = {"fp16": "float16", "float16": "float16", "half": "float16", "bf16": "bfloat16",
          "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32", "float": "float32"}
TRAIN_STEPS = 3  # identical steps whose losses are compared across modes

PROFILE_DOC = """\
How layers are timed: the model runs once in eager mode with forward hooks that record the real inputs of
the model, of every block (a module that is an item of a ModuleList/Sequential and has submodules) and of
every leaf module. Layers with the same name up to block indices and the same input shapes are one row
('layers.*.mlp', xN calls). Each row's layer is then timed on its own, with its recorded inputs: eager, and
compiled by itself under each compiled mode (torch._dynamo.reset() before each compile, so the kernel column
names exactly what tritonfuse did for that layer). Times are per call (CUDA events, median; CPU: perf_counter).

What the times do and don't add up to: a block's time includes its leaves, so do not add blocks and leaves.
The leaves' times x calls do not add up to the model's time either: the glue between modules (residual adds,
reshapes, masks, functional calls in a parent's forward) belongs to no leaf, each separately compiled layer
pays its own launch and guard overhead, and fusion across a layer boundary (Linear + activation, Conv + BN,
norm + residual) only exists when the compiler sees both sides: such kernels appear on the block row, not on
the leaves. The model row (the whole model compiled at once) is the number that counts."""


# --- the command line -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from . import zoo

    ap = argparse.ArgumentParser(prog="tritonfuse", description="Benchmark, profile and explain tritonfuse on "
                                 "a zoo of models built from configs (no downloads).",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=f"models: {', '.join(zoo.MODELS)}\nmodes: {', '.join(MODES)}")
    sub = ap.add_subparsers(dest="cmd", metavar="{bench,profile,explain,models}")

    def common(p):
        p.add_argument("--dtype", default="auto", help="fp16, bf16 or fp32 (default: the model's own on a GPU, "
                       "fp32 on the CPU)")
        p.add_argument("--batch", type=int, default=None, help="batch size (default: the model's own)")
        p.add_argument("--small", action="store_true", help="tiny sizes (2 layers, hidden 64, a few tokens); "
                       "the default without a GPU, where kernels run in the Triton interpreter")
        p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    b = sub.add_parser("bench", help="time every model under every mode, side by side",
                       description="Compile each model under each mode, check its accuracy against eager fp32, "
                       "and time it (CUDA events, median after warm-up, inputs rotated where they fit in L2).")
    b.add_argument("--models", default=None, help=f"comma list (default: {','.join(zoo.DEFAULT_MODELS)})")
    b.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    common(b)
    b.add_argument("--cuda-graphs", action="store_true", help="replay each mode from a CUDA graph (GPU only)")
    b.add_argument("--train", action="store_true", help="time a training step (forward, backward, SGD step) "
                   "and compare each mode's loss after identical steps")
    b.add_argument("--iters", type=int, default=None, help="timed calls (default: about 1 s worth, 10..200)")
    b.add_argument("--rounds", type=int, default=None, help="after every mode's own timing, time the modes again "
                   "in this many interleaved rounds (each a fresh order): a row's ms is the median of its rounds, "
                   "spread_pct their range, and its speedups the median of the per-round ratios, so a state of "
                   "the machine that lasts a round slows both sides of each ratio (default: 10 on a GPU with two "
                   "or more modes, else 1: off; inference only)")
    b.add_argument("--out", default=None, help="merge the rows into this results JSON (a directory: "
                   "<dir>/<gpu-slug>.json)")
    b.add_argument("--plot", default=None, help="write a PNG bar chart of the speedups (needs matplotlib)")
    b.set_defaults(func=cmd_bench)

    p = sub.add_parser("profile", help="per-layer times under each mode, and the kernel that served each layer",
                       description="Per-layer comparison of eager, Inductor and tritonfuse.\n\n" + PROFILE_DOC,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--modes", default="eager,inductor,tritonfuse", help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--what", choices=("all", "blocks", "leaves"), default="all",
                   help="which layers get a row (the whole model always does)")
    p.add_argument("--rounds", type=int, default=None, help="time each layer's modes again in this many "
                   "interleaved rounds: ms is the median of the rounds, the speedup the median of the per-round "
                   "ratios (default: 10 on a GPU with two or more modes, else 1: off)")
    common(p)
    p.set_defaults(func=cmd_profile)

    e = sub.add_parser("explain", help="what tritonfuse replaces, what it leaves to Inductor and why (no timing)")
    e.add_argument("model")
    e.add_argument("--quant", default="none", help="none, int8 or int8-weight (tritonfuse.config.quant)")
    common(e)
    e.set_defaults(func=cmd_explain)

    m = sub.add_parser("models", help="list the model zoo")
    m.set_defaults(func=cmd_models)
    return ap


class UsageError(Exception):
    """Bad input from the user: exit status 2."""


def main(argv: Optional[list] = None) -> int:
    """Run the CLI; returns the exit status.

    Example::

        >>> from tritonfuse.cli import main
        >>> main(["bench", "--models", "tiny-mlp", "--modes", "eager,inductor", "--small"])
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = _parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:  # --help (0) or an argparse error (2)
        return int(e.code or 0)
    if args.cmd is None:
        ap.print_help(sys.stderr)
        return 2
    args.command = "tritonfuse " + shlex.join(argv)
    try:
        if args.cmd != "models":
            _setup_device(args)
        return args.func(args)
    except UsageError as e:
        print(f"tritonfuse: error: {e}", file=sys.stderr)
        return 2


def _setup_device(args) -> None:
    import torch

    if torch.cuda.is_available():
        args.device = torch.device("cuda")
        return
    args.device = torch.device("cpu")
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        print("tritonfuse: warning: triton was imported before the CLI could set TRITON_INTERPRET=1; "
              "tritonfuse kernels will fall back to Inductor", file=sys.stderr)
    # read by triton.jit when the kernels are defined: must precede importing tritonfuse.kernels / torchvision
    os.environ.setdefault("TRITON_INTERPRET", "1")
    if not args.small:
        print("tritonfuse: no GPU found: running the CPU sizes (--small) with the Triton interpreter",
              file=sys.stderr)
        args.small = True


def _split(text: Optional[str], valid, default, what: str) -> list[str]:
    items = [s.strip() for s in (text or "").split(",") if s.strip()] or list(default)
    bad = [s for s in items if s not in valid]
    if bad:
        raise UsageError(f"unknown {what}{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}; "
                         f"valid: {', '.join(valid)}")
    return list(dict.fromkeys(items))


def _dtype(text: str, spec, device):
    import torch

    if text == "auto":
        return spec.dtype if device.type == "cuda" else torch.float32
    if text.lower() not in DTYPES:
        raise UsageError(f"unknown dtype {text!r}; valid: fp16, bf16, fp32")
    return getattr(torch, DTYPES[text.lower()])


def _dname(dtype) -> str:
    return str(dtype).replace("torch.", "")


# --- shared: building, calling, timing, accuracy --------------------------------------------------------


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _call(fn, inp):
    return fn(*inp.args, **inp.kwargs)


@contextlib.contextmanager
def _mode_ctx(mode: str):
    """Settings a mode needs around its compile AND its runs (the backend reads config at compile time)."""
    from . import config

    if mode == "tritonfuse-int8":
        with config.patch(quant="int8"):
            yield
    elif mode == "tritonfuse":
        with config.patch(quant="none"):
            yield
    else:
        yield


def _compiled(model, mode: str, own_backend: bool = False):
    """``model`` compiled as ``mode`` (eager: itself); ``own_backend``: with a backend callable of its own
    (``_mode_backend``), so that several modes' compiled models stay side by side."""
    import torch

    if mode == "eager":
        return model
    if own_backend:
        return torch.compile(model, backend=_mode_backend(mode))
    return torch.compile(model, backend="inductor" if mode == "inductor" else "tritonfuse")


def _fresh() -> None:
    import torch

    import tritonfuse

    torch._dynamo.reset()
    tritonfuse.reset()


def _cleanup(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


WARMUP_S = 1.0


@contextlib.contextmanager
def _gc_paused():
    """The garbage collector collected once, then off while calls are timed (as ``timeit`` does): a compile
    leaves millions of objects, and a full collection landing in a host-bound model's timed calls moves
    its median."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def time_calls(call: Callable[[int], object], device, iters: Optional[int] = None,
               prep: Optional[Callable[[int], None]] = None, target_s: float = 1.0,
               warmup_s: Optional[float] = None) -> tuple[float, int]:
    """Median ms of ``call(i)`` over ``iters`` calls (``prep(i)`` runs before each, untimed).

    GPU: warm-up (>= 3 calls and >= ``warmup_s``, default WARMUP_S), then one CUDA event pair per call, about
    ``target_s`` of calls (10..200) unless ``iters`` is given. CPU: one warm-up call, then ``iters`` perf_counter calls (default: a quarter of ``target_s``, 3..20;
    one when a call takes seconds).
    """
    import torch

    prep = prep or (lambda i: None)
    if device.type != "cuda":
        prep(0)
        t = time.perf_counter()
        call(0)
        est_ms = (time.perf_counter() - t) * 1e3
        # a call of seconds (a real-size model in the interpreter) is timed once
        iters = iters or int(min(20, max(3 if est_ms < 2000 else 1, target_s * 250 / max(est_ms, 1e-3))))
        times = []
        with _gc_paused():
            for i in range(iters):
                prep(i)
                t = time.perf_counter()
                call(i)
                times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times), len(times)
    n, t0 = 0, time.perf_counter()
    # a second of warm-up: after a long compile the GPU starts at idle clocks (0.1 s left ~20% run-to-run
    # differences between modes on the H100)
    warmup_s = WARMUP_S if warmup_s is None else warmup_s
    while n < 3 or time.perf_counter() - t0 < warmup_s:
        prep(n)
        call(n)
        n += 1
        if n >= 3:
            torch.cuda.synchronize()
    est_ms = (time.perf_counter() - t0) * 1e3 / n
    iters = iters or int(min(200, max(10, target_s * 1e3 / max(est_ms, 1e-3))))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    with _gc_paused():
        for i in range(iters):
            prep(i)
            starts[i].record()
            call(i)
            ends[i].record()
        torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)), iters


def accuracy(out, ref) -> dict:
    """max relative error (max |out - ref| / max |ref|), cosine and SQNR dB of ``out`` vs ``ref`` (fp32).

    Computed in fp64 chunks on ``out``'s device, so a 1 GB logits tensor needs little extra memory.
    """
    import torch

    o, r = out.detach().reshape(-1), ref.detach().reshape(-1)
    if o.numel() != r.numel():
        raise ValueError(f"output has {o.numel()} elements, the eager fp32 reference {r.numel()}")
    dot = oo = rr = ee = 0.0
    max_err = max_ref = 0.0
    finite = True
    step = 1 << 24
    for i in range(0, o.numel(), step):
        a = o[i:i + step].to(torch.float64)
        b = r[i:i + step].to(device=a.device, dtype=torch.float64)
        finite = finite and bool(torch.isfinite(a).all())
        d = a - b
        dot += float(a @ b)
        oo += float(a @ a)
        rr += float(b @ b)
        ee += float(d @ d)
        max_err = max(max_err, float(d.abs().max()))
        max_ref = max(max_ref, float(b.abs().max()))
    if not finite:
        return {"max_rel_err": None, "cosine": None, "sqnr_db": None, "nonfinite": True}
    cos = dot / math.sqrt(oo * rr) if oo > 0 and rr > 0 else (1.0 if oo == rr else 0.0)
    sqnr = 10 * math.log10(rr / ee) if ee > 0 else None  # None: identical to the reference
    return {"max_rel_err": max_err / max_ref if max_ref else max_err, "cosine": cos, "sqnr_db": sqnr}


class _Progress:
    """A tqdm bar on stderr when tqdm is installed, else one stderr line per step."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.enabled, self.bar = total, 0, enabled, None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=sys.stderr, unit="run", dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def stage(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description_str(text)
        else:
            print(f"[{self.done + 1}/{self.total}] {text}", file=sys.stderr, flush=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_deps(spec) -> bool:
    from . import zoo

    missing = spec.missing()
    if missing:
        hints = "; ".join(zoo.INSTALL_HINT.get(m, f"pip install {m}") for m in missing)
        print(f"tritonfuse: skipping {spec.name}: needs {', '.join(missing)} ({hints})", file=sys.stderr)
        return False
    return True


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _to_dtype(work, dtype) -> None:
    import torch

    work.model.to(dtype)
    if work.channels_last:
        work.model.to(memory_format=torch.channels_last)


# --- bench ----------------------------------------------------------------------------------------------


def cmd_bench(args) -> int:
    from . import results, zoo

    models = _split(args.models, zoo.MODELS, zoo.DEFAULT_MODELS, "model")
    modes = _split(args.modes, MODES, MODES, "mode")
    if args.cuda_graphs and args.device.type != "cuda":
        raise UsageError("--cuda-graphs needs a GPU")
    if args.cuda_graphs and args.train:
        raise UsageError("--cuda-graphs applies to inference only, not --train")
    for name in models:
        _dtype(args.dtype, zoo.MODELS[name], args.device)  # fail early on a bad --dtype
    progress = _Progress(len(models) * len(modes), enabled=not args.no_progress)
    rows: list[dict] = []
    for name in models:
        spec = zoo.MODELS[name]
        if not _check_deps(spec):
            progress.advance(len(modes))
            continue
        if args.train and spec.train_batch is None:
            print(f"tritonfuse: skipping {name}: --train applies to "
                  f"{', '.join(n for n, s in zoo.MODELS.items() if s.train_batch)}", file=sys.stderr)
            progress.advance(len(modes))
            continue
        model_rows = _bench_model(spec, modes, args, progress)
        rows.extend(model_rows)
        if args.out:  # after each model: a run stopped later keeps the models it finished
            path = results.write(model_rows, args.out, args.command)
        _cleanup(args.device)
    progress.close()
    if not rows:
        print("tritonfuse: nothing was run", file=sys.stderr)
        return 0
    print(format_table(rows))
    if args.out:
        print(f"wrote {path}")
    if args.plot:
        plot(rows, args.plot)
    return 1 if any(r["status"] != "ok" for r in rows) else 0


def _bench_model(spec, modes, args, progress) -> list[dict]:
    import torch

    from . import config

    dtype = _dtype(args.dtype, spec, args.device)
    batch = args.batch or spec.batch_for(args.small, args.train)
    base = {"model": spec.name, "dtype": _dname(dtype), "batch": batch, "device": args.device.type,
            "small": bool(args.small), "train": bool(args.train), "cuda_graphs": bool(args.cuda_graphs)}
    try:
        progress.stage(f"{spec.name}: building")
        work = spec.make(small=args.small, batch=batch, train=args.train, device=args.device)
        ref = None
        if not args.train:
            progress.stage(f"{spec.name}: eager fp32 reference")
            x32 = work.inputs(work.model, args.device, torch.float32, 0)
            with torch.no_grad():
                if x32.reset:
                    x32.reset()
                ref = work.output(_call(work.model, x32)).detach().float().cpu()
            del x32
        _to_dtype(work, dtype)
        sets = _input_sets(work, args, dtype)
        init = {k: v.detach().clone() for k, v in work.model.state_dict().items()} if args.train else None
    except Exception as e:  # the model itself could not be built or run: every mode fails with it
        traceback.print_exc(limit=3, file=sys.stderr)
        progress.advance(len(modes))
        return [{**base, **_empty_row(m), "status": "failed", "error": f"build: {_first_line(e)}"} for m in modes]
    base["shape"] = work.shape
    rows = []
    args.model_name = spec.name
    for mode in modes:
        progress.stage(f"{spec.name} {mode}: compiling")
        row = {**base, **_empty_row(mode)}
        try:
            run = _run_train if args.train else _run_inference
            # --cuda-graphs: the compiled model is replayed from a CUDA graph, so sites are chosen by GPU time
            with config.patch(cuda_graphs="1") if args.cuda_graphs else contextlib.nullcontext():
                row.update(run(work, mode, sets, args, ref, init, progress))
            row["status"] = "ok"
        except Exception as e:
            traceback.print_exc(limit=4, file=sys.stderr)
            row.update(status="failed", error=_first_line(e))
        finally:
            _fresh()
            _cleanup(args.device)
        rows.append(row)
        progress.advance()
    ok = [r for r in rows if r["status"] == "ok"]
    if _rounds(args, len(ok)) > 1:
        progress.stage(f"{spec.name}: interleaved timing")
        try:
            with config.patch(cuda_graphs="1") if args.cuda_graphs else contextlib.nullcontext():
                _interleaved(work, ok, sets, args)  # compiled as the rows were
        except Exception as e:  # the rows keep their own timings
            traceback.print_exc(limit=4, file=sys.stderr)
            for r in ok:
                r["interleave_error"] = _first_line(e)
        finally:
            _fresh()
            _cleanup(args.device)
    _speedups(rows)
    return rows


def _rounds(args, modes: int) -> int:
    if getattr(args, "train", False) or modes < 2:
        return 1
    if args.rounds is not None:
        return max(1, args.rounds)
    return 10 if args.device.type == "cuda" else 1


def _mode_backend(mode: str):
    """``mode``'s backend as a callable of its own: Dynamo keeps one compiled entry per backend, so the modes'
    compiled models live side by side (the same ``"tritonfuse"`` for two modes would share one entry), and
    each compiles under its mode's settings, as ``_mode_ctx`` gives them."""
    if mode == "inductor":
        return "inductor"
    from .backend import tritonfuse_backend

    def backend(gm, example_inputs, **kwargs):
        with _mode_ctx(mode):
            return tritonfuse_backend(gm, example_inputs, **kwargs)

    return backend


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _time_rounds(fns: dict, rounds: int, timer: Callable) -> dict[str, list[float]]:
    """``timer(fn)`` of every mode's ``fn`` in ``rounds`` rounds, each round in a rotated order (under the
    mode's settings): mode -> its ms per round."""
    times: dict[str, list[float]] = {m: [] for m in fns}
    order = list(fns)
    for k in range(rounds):
        for mode in order[k % len(order):] + order[:k % len(order)]:
            with _mode_ctx(mode):
                times[mode].append(timer(fns[mode]))
    return times


def _round_ratios(base: list[float], ms: list[float]) -> tuple[float, list[float]]:
    """The median of ``base[k] / ms[k]`` over the rounds, and [lowest, highest]: a round's two timings are
    neighbours in time, so their ratio cancels the GPU's (or the host's) state of the moment, which the
    ratio of two medians does not."""
    ratios = [x / y for x, y in zip(base, ms)]
    return statistics.median(ratios), [min(ratios), max(ratios)]


def _interleaved(work, rows: list[dict], sets, args) -> None:
    """Time the rows' modes again side by side: every mode compiled once more (caches warm) and kept, then
    ``rounds`` rounds, each timing every mode for a short window in a rotated order. Each row's ``ms``
    becomes the median of its rounds (its own window kept as ``ms_single``), ``spread_pct`` the rounds'
    range over that median; ``_speedups`` then takes the median of the per-round ratios. On the H200 two
    modes that compile to the same resnet50 code timed 3.15 and 2.71 ms one after the other, and single
    rounds of either took 2.57 or 3.5-3.7 ms, the slow state lasting a round or more, both modes alike,
    SM clocks at their maximum throughout (benchmarks/results/diagnostics/bench-noise-nvidia-h200.json). A mode
    whose second compile finds other sites than its first keeps its own timing (``interleave_error``), as
    does every mode if a call compiles again mid-timing."""
    import torch

    import tritonfuse

    dev = args.device
    rounds = _rounds(args, len(rows))
    _fresh()
    fns, prep = {}, _prep(sets)
    with torch.no_grad():
        for r in rows:
            mode = r["mode"]
            tritonfuse.reset()
            fn = _compiled(work.model, mode, own_backend=True)
            with _mode_ctx(mode):
                prep(0)
                _call(fn, sets[0])
            if mode.startswith("tritonfuse") and tritonfuse.counters() != r["counters"]:
                r["interleave_error"] = f"compiled again, other sites: {_sites(tritonfuse.counters())}"
                continue
            fns[mode] = _graphed(fn, sets[0]) if args.cuda_graphs else fn
        if len(fns) < 2:
            return
        graphs = _unique_graphs()
        per_round = max(0.1, 1.0 / rounds)

        def timer(fn):
            if args.cuda_graphs:
                return time_calls(lambda i: fn(), dev, prep=lambda i: prep(0), target_s=per_round, warmup_s=0.1)[0]
            return time_calls(lambda i: _call(fn, sets[i % len(sets)]), dev, prep=prep, target_s=per_round,
                              warmup_s=0.1)[0]

        times = _time_rounds(fns, rounds, timer)
        if _unique_graphs() != graphs:
            for r in rows:
                r["interleave_error"] = "a mode compiled again while the rounds were timed"
            return
    for r in rows:
        t = times.get(r["mode"])
        if not t:
            continue
        med = statistics.median(t)
        r.update(ms_single=r["ms"], ms=med, ms_rounds=t, spread_pct=100 * (max(t) - min(t)) / med)


def _range_cell(lo_hi) -> str:
    return f"{lo_hi[0]:.2f}-{lo_hi[1]:.2f}" if lo_hi else "–"


def _compile_cell(r: dict) -> str:
    """First compile, and in brackets the second one in the same process (caches warm)."""
    again = f" ({r['recompile_s']:.1f})" if r.get("recompile_s") is not None else ""
    return _fmt(r["compile_s"], ".1f") + again


def _empty_row(mode: str) -> dict:
    return {"mode": mode, "ms": None, "compile_s": None, "peak_mem_gb": None, "speedup_vs_eager": None,
            "speedup_vs_inductor": None, "cosine": None, "sqnr_db": None, "max_rel_err": None, "counters": None}


def _input_sets(work, args, dtype) -> list:
    """Input copies to rotate through: enough to exceed twice the L2 when one copy fits in it."""
    import torch

    first = work.inputs(work.model, args.device, dtype, 0, train=args.train)
    n = TRAIN_STEPS if args.train else 1
    if first.rotate and args.device.type == "cuda" and not args.cuda_graphs:
        l2 = getattr(torch.cuda.get_device_properties(args.device), "L2_cache_size", 50 << 20)
        nbytes = max(first.nbytes(), 1)
        if nbytes < l2:
            n = max(n, min(8, math.ceil(2 * l2 / nbytes)))
    return [first] + [work.inputs(work.model, args.device, dtype, i, train=args.train) for i in range(1, n)]


def _prep(sets):
    def prep(i):
        inp = sets[i % len(sets)]
        if inp.reset:
            inp.reset()

    return prep


def _graphed(fn, inp):
    """Capture ``fn(inp)`` into a CUDA graph (after warm-up on a side stream); returns replay."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            if inp.reset:
                inp.reset()
            _call(fn, inp)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    if inp.reset:
        inp.reset()
    with torch.cuda.graph(graph):
        _call(fn, inp)
    return graph.replay


def _counters(mode: str) -> dict:
    """The tritonfuse counters, and why sites were left to Inductor (for tritonfuse modes)."""
    import tritonfuse

    if not mode.startswith("tritonfuse"):
        return {"counters": None}
    reasons = Counter(f"{s.family}: {s.reason}" for s in tritonfuse.sites() if s.status == "fallback")
    # a family pass that raised leaves no sites: say so, or a 0/0 row hides it
    reasons.update(f"error: {e}" for e in tritonfuse.registry.errors())
    # what of the compile time was tritonfuse's passes, and of that, timing sites (with the choices' sources)
    parts = {k: round(v, 2) if isinstance(v, float) else v for k, v in tritonfuse.registry.compile_time().items()}
    return {"counters": tritonfuse.counters(), "fallback_reasons": dict(reasons), "compile_parts": parts}


def _first_call(call, dev) -> tuple:
    """(``call()``, its seconds): a compiled model's first call, which compiles it."""
    _sync(dev)
    t = time.perf_counter()
    result = call()
    _sync(dev)
    return result, time.perf_counter() - t


def _run_inference(work, mode, sets, args, ref, init, progress) -> dict:
    import torch

    dev = args.device
    _fresh()
    fn = _compiled(work.model, mode)
    prep = _prep(sets)
    with _mode_ctx(mode), torch.no_grad():
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        prep(0)
        out, compile_s = _first_call(lambda: _call(fn, sets[0]), dev)
        acc = accuracy(work.output(out), ref)
        del out
        progress.stage(f"{args.model_name} {mode}: timing")
        if args.cuda_graphs:
            replay = _graphed(fn, sets[0])
            ms, iters = time_calls(lambda i: replay(), dev, args.iters, prep=lambda i: prep(0))
        else:
            ms, iters = time_calls(lambda i: _call(fn, sets[i % len(sets)]), dev, args.iters, prep=prep)
        peak = torch.cuda.max_memory_allocated() / 1e9 if dev.type == "cuda" else None
    counters = _counters(mode)
    return {"ms": ms, "iters": iters, "compile_s": None if mode == "eager" else compile_s, "peak_mem_gb": peak,
            **counters, **_recompile(work, mode, sets, dev, counters), "inputs_rotated": len(sets), **acc}


def _recompile(work, mode: str, sets, dev, first: dict) -> dict:
    """Compile the model a second time in this process, after ``torch._dynamo.reset()``: the compile time a
    later run pays with every cache warm (Inductor's graphs on disk, tritonfuse's measured choices and
    traced patterns, Triton's compiled kernels); the counters must come out as the first compile's."""
    import torch

    import tritonfuse

    if mode == "eager":
        return {}
    _fresh()
    fn = _compiled(work.model, mode)
    with _mode_ctx(mode), torch.no_grad():
        out = {"recompile_s": _first_call(lambda: _call(fn, sets[0]), dev)[1]}
    if mode.startswith("tritonfuse") and tritonfuse.counters() != first["counters"]:
        out["recompile_counters"] = tritonfuse.counters()  # a cache served other sites: worth a look
    return out


def _run_train(work, mode, sets, args, ref, init, progress) -> dict:
    import torch

    dev = args.device
    model = work.model
    model.load_state_dict(init)
    model.train()
    _fresh()
    fn = _compiled(model, mode)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(i):
        inp = sets[i % len(sets)]
        loss = work.loss(_call(fn, inp), inp)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    try:
        with _mode_ctx(mode):
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            loss, compile_s = _first_call(lambda: float(step(0).detach()), dev)
            losses = [loss]
            losses += [float(step(i).detach()) for i in range(1, TRAIN_STEPS)]
            progress.stage(f"{args.model_name} {mode}: timing")
            ms, iters = time_calls(step, dev, args.iters, prep=_prep(sets))
            peak = torch.cuda.max_memory_allocated() / 1e9 if dev.type == "cuda" else None
    finally:
        model.eval()
    return {"ms": ms, "iters": iters, "compile_s": None if mode == "eager" else compile_s, "peak_mem_gb": peak,
            **_counters(mode), "losses": losses}


def _speedups(rows: list[dict]) -> None:
    by = {r["mode"]: r for r in rows if r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            continue
        for base, key in (("eager", "speedup_vs_eager"), ("inductor", "speedup_vs_inductor")):
            if base not in by:
                continue
            a, b = by[base].get("ms_rounds"), r.get("ms_rounds")
            if a and b and len(a) == len(b):
                r[key], r[key + "_range"] = _round_ratios(a, b)
            else:
                r[key] = by[base]["ms"] / r["ms"]
        if r.get("losses") and "eager" in by:
            e = by["eager"]["losses"][-1]
            r["loss_rel_diff_vs_eager"] = abs(r["losses"][-1] - e) / max(abs(e), 1e-12)


def _fmt(x, spec: str, none: str = "–") -> str:
    return none if x is None else format(x, spec)


def _sites(counters: Optional[dict]) -> str:
    if not counters:
        return ""
    rep = sum(c["replaced"] for c in counters.values())
    matched = sum(c["matched"] for c in counters.values())
    fams = ",".join(f"{f}:{c['replaced']}" for f, c in counters.items() if c["replaced"])
    return f"{rep}/{matched} {fams}".strip()


def format_table(rows: list[dict]) -> str:
    """The bench table: one row per (model, mode)."""
    train = any(r.get("train") for r in rows)
    acc_head = f"{'loss':>10} {'Δloss':>8}" if train else f"{'cosine':>9} {'SQNR dB':>8} {'max rel':>8}"
    head = (f"{'model':<17} {'mode':<16} {'dtype':<9} {'batch':>5} {'ms':>9} {'±%':>4} {'vs eager':>8} {'vs ind':>7} "
            f"{'ind range':>9} {'compile s (again)':>17} {'peak GB':>7} {acc_head}  replaced/matched")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['model']:<17} {r['mode']:<16} {r['dtype']:<9} {r['batch']:>5} FAILED: {r['error']}")
            continue
        if train:
            acc = f"{_fmt(r.get('losses', [None])[-1], '.5f'):>10} {_fmt(r.get('loss_rel_diff_vs_eager'), '.1e'):>8}"
        else:
            sq = "exact" if r["sqnr_db"] is None and r["cosine"] is not None else _fmt(r["sqnr_db"], ".1f")
            acc = f"{_fmt(r['cosine'], '.6f'):>9} {sq:>8} {_fmt(r['max_rel_err'], '.1e'):>8}"
        lines.append(
            f"{r['model']:<17} {r['mode']:<16} {r['dtype']:<9} {r['batch']:>5} {r['ms']:>9.3f} "
            f"{_fmt(r.get('spread_pct'), '.0f'):>4} "
            f"{_fmt(r['speedup_vs_eager'], '.2f'):>8} {_fmt(r['speedup_vs_inductor'], '.2f'):>7} "
            f"{_range_cell(r.get('speedup_vs_inductor_range')):>9} {_compile_cell(r):>17} "
            f"{_fmt(r['peak_mem_gb'], '.2f'):>7} {acc}  {_sites(r['counters'])}")
    inter = [r for r in rows if r.get("ms_rounds")]
    if inter:
        lines.append(f"\nms: the median of {len(inter[0]['ms_rounds'])} rounds timing the modes interleaved; "
                     "±%: the rounds' range over that median; vs eager, vs ind: the median of the per-round "
                     "ratios, ind range their lowest and highest")
    lines += [f"  {r['model']} {r['mode']}: own timing kept: {r['interleave_error']}" for r in rows
              if r.get("interleave_error")]
    left = [(r, why, n) for r in rows for why, n in (r.get("fallback_reasons") or {}).items()]
    if left:
        lines.append("\nleft to Inductor:")
        lines += [f"  {r['model']} {r['mode']}: {why} (x{n})" for r, why, n in left]
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> bool:
    """A PNG bar chart of each mode's speedup over eager, per model. False (with a message) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"tritonfuse: --plot needs matplotlib (pip install matplotlib); {path} was not written",
              file=sys.stderr)
        return False
    from . import results

    ok = [r for r in rows if r["status"] == "ok" and r["speedup_vs_eager"] is not None]
    models = list(dict.fromkeys(r["model"] for r in ok))
    modes = [m for m in MODES if m != "eager" and any(r["mode"] == m for r in ok)]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(models) + 2), 4))
    width = 0.8 / max(len(modes), 1)
    for j, mode in enumerate(modes):
        vals = [next((r["speedup_vs_eager"] for r in ok if r["model"] == m and r["mode"] == mode), 0) for m in models]
        bars = ax.bar([i + j * width for i in range(len(models))], vals, width, label=mode)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(models))], models)
    ax.set_ylabel("speedup over eager")
    ax.set_title(f"tritonfuse on {results.device_name()}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
    return True


# --- profile --------------------------------------------------------------------------------------------


class _Layer:
    def __init__(self, key: str, kind: str, module, args, kwargs, order: int):
        self.key, self.kind, self.module, self.args, self.kwargs = key, kind, module, args, kwargs
        self.calls, self.order = 1, order


def _group_name(name: str, blocks: set, modules: dict) -> str:
    # layers.3.mlp -> layers.*.mlp: the same layer of every block is one row (a leaf's own index stays)
    if not name:
        return "(model)"
    parts = name.split(".")
    return ".".join("*" if p.isdigit() and id(modules[".".join(parts[:i + 1])]) in blocks else p
                    for i, p in enumerate(parts))


def _shapes(tree) -> tuple:
    import torch

    leaves = torch.utils._pytree.tree_leaves(tree)
    return tuple((tuple(t.shape), str(t.dtype)) for t in leaves if isinstance(t, torch.Tensor))


def capture_layers(model, inp, what: str = "all") -> list[_Layer]:
    """Run ``model`` once with hooks and return its layers (model, blocks, leaves) with recorded inputs."""
    import torch
    from torch import nn

    skip = (nn.Dropout, nn.Identity)
    blocks = set()
    for mod in model.modules():
        if isinstance(mod, (nn.ModuleList, nn.Sequential)):
            blocks.update(id(c) for c in mod.children() if any(True for _ in c.children()))
    chosen = []
    for name, mod in model.named_modules():
        leaf = not any(True for _ in mod.children())
        if isinstance(mod, skip) or isinstance(mod, (nn.ModuleList, nn.ModuleDict)):
            continue
        kind = "model" if not name else "block" if id(mod) in blocks else "leaf" if leaf else None
        if kind is None or (what == "blocks" and kind == "leaf") or (what == "leaves" and kind == "block"):
            continue
        chosen.append((name, kind, mod))
    layers: dict[tuple, _Layer] = {}
    modules = dict(model.named_modules())

    def clone(x):
        return x.detach().clone() if isinstance(x, torch.Tensor) else x

    def hook_for(name, kind):
        group = _group_name(name, blocks, modules)

        def pre(mod, args, kwargs):
            key = (group, mod.extra_repr(), _shapes((args, kwargs)))
            if key in layers:
                layers[key].calls += 1
            else:
                # recorded before the call: in-place layers (ReLU(inplace=True)) must not change them
                a, k = torch.utils._pytree.tree_map(clone, (args, kwargs))
                layers[key] = _Layer(group, kind, mod, a, k, len(layers))

        return pre

    handles = [mod.register_forward_pre_hook(hook_for(n, k), with_kwargs=True) for n, k, mod in chosen]
    try:
        with torch.no_grad():
            if inp.reset:
                inp.reset()
            _call(model, inp)
    finally:
        for h in handles:
            h.remove()
    return sorted(layers.values(), key=lambda l: l.order)


def _served(mode: str) -> str:
    import tritonfuse

    sites = tritonfuse.sites()
    used = Counter(s.kernel for s in sites if s.status == "replaced")
    if used:
        return ", ".join(f"{k} x{n}" if n > 1 else k for k, n in sorted(used.items()))
    left = Counter(s.reason for s in sites if s.status == "fallback")
    if left:
        return "inductor (" + "; ".join(sorted(left))[:80] + ")"
    return "inductor"


def _load_one(args):
    """(spec, workload, dtype, inputs) for ``args.model`` on the device; None when a dependency is missing."""
    from . import zoo

    _split(args.model, zoo.MODELS, (), "model")
    spec = zoo.MODELS[args.model]
    if not _check_deps(spec):
        return None
    dtype = _dtype(args.dtype, spec, args.device)
    work = spec.make(small=args.small, batch=args.batch, device=args.device)
    _to_dtype(work, dtype)
    return spec, work, dtype, work.inputs(work.model, args.device, dtype, 0)


def cmd_profile(args) -> int:
    modes = _split(args.modes, MODES, ("eager", "inductor", "tritonfuse"), "mode")
    loaded = _load_one(args)
    if loaded is None:
        return 0
    spec, work, dtype, inp = loaded
    layers = capture_layers(work.model, inp, args.what)
    print(f"tritonfuse profile {spec.name} ({work.shape}, {_dname(dtype)}, {args.device.type}): "
          f"{len(layers)} distinct layers", file=sys.stderr)
    progress = _Progress(len(layers) * len(modes), enabled=not args.no_progress)
    rows, failed = [], False
    rounds = _rounds(args, len(modes))
    for layer in layers:
        row = {"layer": layer.key, "kind": layer.kind, "type": type(layer.module).__name__, "calls": layer.calls,
               "ms": {}, "served": ""}
        fns = {}  # every mode's compiled layer, kept side by side (a backend of its own each) for the rounds
        _fresh()
        for mode in modes:
            progress.stage(f"{layer.key} {mode}")
            try:
                row["ms"][mode], served, fns[mode] = _profile_one(layer, mode, inp, args)
                if mode == "tritonfuse":
                    row["served"] = served
            except Exception as e:
                row["ms"][mode] = None
                row["served"] = row["served"] or ("failed: " + _first_line(e) if mode.startswith("tritonfuse") else "")
                failed = True
            progress.advance()
        if rounds > 1 and len(fns) > 1:
            try:
                _profile_rounds(layer, fns, row, rounds, inp, args)
            except Exception as e:  # the layer keeps its own timings
                row["rounds_error"] = _first_line(e)
        _fresh()
        rows.append(row)
    progress.close()
    print(format_profile(rows, modes))
    print("\nTimes are per call of one layer compiled alone; blocks include their leaves; the model row is the "
          "whole model compiled at once. See `tritonfuse profile --help` for what the rows add up to.")
    if rounds > 1:
        print(f"Each layer's modes were timed in {rounds} interleaved rounds: ms is the median of the rounds, "
              "the speedup the median of the per-round ratios.")
    return 1 if failed else 0


def _profile_one(layer: _Layer, mode: str, inp, args) -> tuple[float, str, Callable]:
    import torch

    import tritonfuse

    tritonfuse.reset()
    fn = _compiled(layer.module, mode, own_backend=True)
    prep = (lambda i: inp.reset()) if inp.reset else None
    with _mode_ctx(mode), torch.no_grad():
        if prep:
            prep(0)
        fn(*layer.args, **layer.kwargs)  # compile
        served = _served(mode) if mode.startswith("tritonfuse") else ""
        ms, _ = time_calls(lambda i: fn(*layer.args, **layer.kwargs), args.device, None if args.device.type ==
                           "cuda" else 2, prep=prep, target_s=0.2)
    return ms, served, fn


def _profile_rounds(layer: _Layer, fns: dict, row: dict, rounds: int, inp, args) -> None:
    """The layer's modes timed again in ``rounds`` interleaved rounds (as ``bench --rounds``): each mode's ms
    becomes the median of its rounds, and ``vs_inductor`` the median of the per-round ratios."""
    import torch

    prep = (lambda i: inp.reset()) if inp.reset else None

    def timer(fn):
        return time_calls(lambda i: fn(*layer.args, **layer.kwargs), args.device,
                          None if args.device.type == "cuda" else 1, prep=prep, target_s=max(0.05, 0.2 / rounds),
                          warmup_s=0.05)[0]

    graphs = _unique_graphs()
    with torch.no_grad():
        times = _time_rounds(fns, rounds, timer)
    if _unique_graphs() != graphs:
        raise RuntimeError("a mode compiled again while the rounds were timed")
    row["ms_rounds"] = times
    for mode, t in times.items():
        row["ms"][mode] = statistics.median(t)
    if "inductor" in times and "tritonfuse" in times:
        row["vs_inductor"] = _round_ratios(times["inductor"], times["tritonfuse"])[0]


def format_profile(rows: list[dict], modes: list[str]) -> str:
    cols = "".join(f"{m + ' ms':>20}" for m in modes)
    sp = "tritonfuse vs inductor" if {"tritonfuse", "inductor"} <= set(modes) else ""
    head = f"{'layer':<42} {'type':<22} {'calls':>5}{cols} {sp:>22}  served by (tritonfuse)"
    lines = [head, "-" * len(head)]
    for r in rows:
        name = ("  " if r["kind"] == "leaf" else "") + r["layer"]
        cells = "".join(f"{_fmt(r['ms'].get(m), '.4f', 'failed'):>20}" for m in modes)
        speed = ""
        if sp and r.get("vs_inductor"):
            speed = f"{r['vs_inductor']:.2f}x"
        elif sp and r["ms"].get("tritonfuse") and r["ms"].get("inductor"):
            speed = f"{r['ms']['inductor'] / r['ms']['tritonfuse']:.2f}x"
        lines.append(f"{name[:42]:<42} {r['type'][:22]:<22} {r['calls']:>5}{cells} {speed:>22}  {r['served']}")
    return "\n".join(lines)


# --- explain, models ------------------------------------------------------------------------------------


def cmd_explain(args) -> int:
    import torch

    import tritonfuse
    from . import config

    if args.quant not in config.QUANT_MODES:
        raise UsageError(f"unknown quant {args.quant!r}; valid: {', '.join(config.QUANT_MODES)}")
    loaded = _load_one(args)
    if loaded is None:
        return 0
    spec, work, dtype, inp = loaded
    _fresh()
    with config.patch(quant=args.quant), torch.no_grad():
        if inp.reset:
            inp.reset()
        _call(torch.compile(work.model, backend="tritonfuse"), inp)
    graphs = 1 + max((s.graph for s in tritonfuse.sites()), default=0)
    print(f"tritonfuse explain {spec.name} ({work.shape}, {_dname(dtype)}, {args.device.type}, quant={args.quant})")
    print(tritonfuse.report())
    print(f"sites, in compile order ({len(tritonfuse.sites())} sites in {graphs} graph(s)):")
    print(_site_table())
    _fresh()
    return 0


def _site_table() -> str:
    from .report import site_table

    return site_table() or "  (no sites: nothing in this model matched a tritonfuse pattern)"


def cmd_models(args) -> int:
    from . import zoo

    print(f"{'model':<18} {'dtype':<9} {'batch':>5}  {'needs':<32} summary")
    for spec in zoo.MODELS.values():
        missing = spec.missing()
        needs = ", ".join(spec.requires) or "-"
        if missing:
            needs += " (missing)"
        print(f"{spec.name:<18} {_dname(spec.dtype):<9} {spec.batch:>5}  {needs:<32} {spec.summary}")
    return 0
