"""A cheaper launch path for the families' Triton kernels on the GPU.

``kernel[grid](*args, **kwargs)`` through ``triton.autotune`` / ``triton.heuristics`` / ``JITFunction.run``
is about half of an op call's host time on the H100 host (binding, specialisation, the autotune key, the
heuristics, the cache look-up), paid by every site on every forward. Measured there (single runs, a noisy
host; small shapes, host-bound): linear_act 153 -> 136 us per call, attention 249 -> 138, conv_bn 167 -> 118,
norm_residual (no autotuner) no gain; eager's F.linear + GELU is ~30 us there. The rest is the op dispatch,
the output allocations and the launcher's own argument packing. A compiled model calls each
site with the same shapes over and over, so the first call per *launch key* goes through Triton as usual
(autotuning and compiling as needed) and records the compiled kernel, the chosen config and every constexpr;
later calls with the same key rebuild only the grid and the argument list and call the compiled kernel's
launcher directly, as Triton itself does at the end of ``JITFunction.run``.

The launch key holds everything Triton specialises a compiled kernel on: every int and float argument's
exact value (so the autotune key and the grid inputs are in it too; floats are a site's eps and scales), each
tensor's dtype, 16-byte alignment and GPU, each TMA descriptor's dtype, rank, alignment and block shape, and
every keyword argument (scalars only: constexprs and options; a tensor by keyword takes Triton's own path).
Where this Triton's launch convention is not one this module knows, or a capture fails (the reason is kept
in ``failures``), the kernel keeps Triton's own path: this is an optimisation, never a requirement. The GPU
run (``scripts/gpu_tests.sh``) checks it against Triton's launch bit for bit; the CPU interpreter never
takes it.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any, Callable, Optional

from . import tuning

try:
    import triton
    from triton.runtime.autotuner import Autotuner, Heuristics
    from triton.runtime.jit import JITFunction
except ImportError:  # pragma: no cover - registry refuses to run kernels without triton
    triton = None

_UNSUPPORTED = object()
MAX_KEYS = 512  # launch keys kept per kernel (exact ints are in the key: each new shape is a new key)
_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
# why a launch key could not be captured (kernel name -> the last error), for tests and debugging
failures: dict[str, str] = {}


def _launch_convention() -> Optional[str]:
    """How this Triton's ``JITFunction.run`` hands arguments to ``CompiledKernel.run``: ``"all"`` (every
    parameter, constexprs included; triton >= 3.3), ``"runtime"`` (non-constexpr parameters only; older) or
    None (unknown: no fast path)."""
    if triton is None:
        return None
    try:
        src = inspect.getsource(JITFunction.run)
    except (OSError, TypeError):
        return None
    if "*bound_args.values()" in src:
        return "all"
    if "*non_constexpr_vals" in src:
        return "runtime"
    return None


def _hooks():
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    from triton.compiler.compiler import CompiledKernel
    return getattr(CompiledKernel, "launch_enter_hook", None), getattr(CompiledKernel, "launch_exit_hook", None)


def _current_stream():
    driver = triton.runtime.driver.active
    return driver.get_current_stream(driver.get_current_device())


def _launch_key(args: tuple, kwargs: dict) -> tuple:
    """A launch's key: its arguments as the compiled kernel depends on them (unhashable where one is)."""
    return (tuple(map(_arg_key, args)), tuple(sorted(kwargs.items())))


def _arg_key(a: Any):
    if isinstance(a, bool) or a is None or isinstance(a, str):
        return a
    if isinstance(a, int):
        return ("i", a)
    if isinstance(a, float):
        return ("f", a)
    ptr = getattr(a, "data_ptr", None)
    if ptr is not None:  # a tensor (its device too: a kernel is compiled per GPU)
        return (a.dtype, ptr() % 16 == 0, a.get_device())
    base = getattr(a, "base", None)
    if base is not None and hasattr(a, "block_shape"):  # a host TMA descriptor
        return ("d", base.dtype, base.get_device(), len(a.shape), base.data_ptr() % 16 == 0,
                tuple(a.block_shape), tuple(s % 16 == 0 for s in a.strides[:-1]))
    return ("?", type(a).__name__, a)  # anything else: part of the key as itself (must be hashable)


class _Captured:
    __slots__ = ("compiled", "static", "pos_names", "template", "dyn_index", "pre_hook", "grid_static")

    def __init__(self, compiled, static, pos_names, template, dyn_index, pre_hook):
        self.compiled = compiled
        self.static = static          # name -> value of every constexpr, config value and heuristic
        self.pos_names = pos_names    # names of the positional arguments as the caller passes them
        self.template = template      # the launcher's argument list with the constant entries filled in
        self.dyn_index = dyn_index    # (position in template, position in the caller's args)
        self.pre_hook = pre_hook


class FastLauncher:
    """Wraps an ``@triton.jit`` kernel (possibly under ``autotune``/``heuristics``); ``launcher[grid](...)``
    launches like ``kernel[grid](...)``."""

    def __init__(self, kernel, convention: str):
        self.kernel = kernel
        self.convention = convention
        self._cache: dict = {}
        self._lock = threading.Lock()
        layers, fn = [], kernel
        while not isinstance(fn, JITFunction):
            if not isinstance(fn, (Autotuner, Heuristics)):
                raise TypeError(f"cannot unwrap {type(fn).__name__}")
            layers.append(fn)
            fn = fn.fn
        self.layers, self.jit = layers, fn
        self.params = [(p.name, bool(p.is_constexpr), p.default) for p in fn.params]
        self._precompiled: set = set()  # launch keys precompile_once has seen

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.run(grid, args, kwargs)

    def run(self, grid, args: tuple, kwargs: dict):
        from . import registry

        probe = registry.probing() and self._tuner() is not None
        if registry.compiling_ahead():  # a survey (registry.surveying): compiles sent, nothing launched
            self.send_ahead(grid, args, kwargs, first=probe)
            return None
        if probe:
            return self._launch_first_config(grid, args, kwargs)
        if not all(v is None or isinstance(v, (int, float, str)) for v in kwargs.values()):
            return self.kernel[grid](*args, **kwargs)  # a tensor by keyword: not keyed, Triton's own path
        try:
            key = _launch_key(args, kwargs)
            hit = self._cache.get(key)
        except TypeError:  # an unhashable argument: Triton's own path
            return self.kernel[grid](*args, **kwargs)
        if hit is None:
            if len(self._cache) >= MAX_KEYS:  # many shapes (a growing KV cache): Triton's path for the rest
                return self.kernel[grid](*args, **kwargs)
            self.precompile(grid, args, kwargs)
            self.kernel[grid](*args, **kwargs)  # tunes and compiles as needed, and launches
            tuner = self._tuner()
            if tuner is not None:
                tuning.save(tuner, args, kwargs)
            try:
                hit = self._capture(grid, args, kwargs)
            except Exception as e:  # noqa: BLE001 - an unknown kernel shape: keep Triton's path for this key
                failures[self.jit.__name__] = f"{type(e).__name__}: {e}"
                hit = _UNSUPPORTED
            with self._lock:
                self._cache[key] = hit
            return None
        if hit is _UNSUPPORTED:
            return self.kernel[grid](*args, **kwargs)
        return self._launch(hit, grid, args)

    def precompile(self, grid, args: tuple, kwargs: dict) -> int:
        """Compile every autotune config of this launch side by side (``config.compile_thread_count()``
        threads; Triton's compiler and ptxas release the GIL: 14 sm_90 compiles took 15.8 s in one thread
        and 7.5 s in two on a 2-core machine), so that the autotuner, which compiles them one after another
        while it times them, finds them compiled. Only a speed-up: a config that fails here is left to the
        autotuner, which reports it as usual. Returns how many configs were compiled."""
        from . import config

        threads = config.compile_thread_count()
        tuner = self._tuner()
        # a config kept from an earlier process (tritonfuse.tuning): the autotuner compiles only that one
        many = (tuner is not None and len(tuner.configs) >= 2 and tuning.restore(tuner, args, kwargs) is None
                and threads >= 2)
        if not many and not sent_ahead(self.jit):
            return 0
        try:
            jobs = self.config_jobs(grid, args, kwargs)
        except Exception as e:  # noqa: BLE001 - an unexpected kernel signature: the autotuner compiles
            failures[self.jit.__name__] = f"precompile: {type(e).__name__}: {e}"
            return 0
        if not many:  # one compile: the main process's, unless a survey sent it to a worker (then wait for it)
            return compile_elsewhere(self.jit, jobs, submit=False)
        import concurrent.futures

        import torch

        compile_elsewhere(self.jit, jobs)  # where it can: the compiles below then read Triton's disk cache
        device = torch.cuda.current_device() if torch.cuda.is_available() else None

        def compile_one(job):
            pos, call_kwargs, options, g = job
            if device is not None:
                torch.cuda.set_device(device)  # the caller's GPU is current in this thread too
            self.jit.warmup(*pos, grid=g, **call_kwargs, **options)

        done = 0
        try:  # the first one alone: it creates the kernel's per-device cache that the others then share
            compile_one(jobs[0])
            done += 1
        except Exception:  # noqa: BLE001 - out of resources and the like: the autotuner skips it
            pass
        with concurrent.futures.ThreadPoolExecutor(min(threads, len(jobs))) as pool:
            for fut in [pool.submit(compile_one, j) for j in jobs[1:]]:
                try:
                    fut.result()
                    done += 1
                except Exception:  # noqa: BLE001
                    pass
        return done

    def precompile_once(self, grid, args: tuple, kwargs: dict) -> int:
        """``precompile``, once per launch key (for a launch that goes through Triton's own launch, hundreds
        of times while it is timed: the check behind ``precompile`` costs host time)."""
        try:
            key = _launch_key(args, kwargs)
            if key in self._precompiled:
                return 0
        except TypeError:  # an unhashable argument: not kept
            return self.precompile(grid, args, kwargs)
        if len(self._precompiled) >= MAX_KEYS:  # many shapes (dynamic ones): the set starts again
            self._precompiled.clear()
        self._precompiled.add(key)
        return self.precompile(grid, args, kwargs)

    def send_ahead(self, grid, args: tuple, kwargs: dict, first: bool = False) -> int:
        """Send this launch's compiles (every config the autotuner would time; none where it keeps a config
        from an earlier process; with ``first``, a probe's, the first config alone) to Inductor's workers and
        return without waiting (``ahead``)."""
        tuner = self._tuner()
        try:
            if not first and tuner is not None and tuning.restore(tuner, args, kwargs) is not None:
                return 0
            jobs = self.config_jobs(grid, args, kwargs)[:1 if first else None]
        except Exception as e:  # noqa: BLE001 - an unexpected kernel signature: compiled when it is timed
            failures[self.jit.__name__] = f"send_ahead: {type(e).__name__}: {e}"
            return 0
        return ahead(self.jit, jobs)

    def _launch_first_config(self, grid, args: tuple, kwargs: dict):
        """One launch with the tuner's first config (``registry.one_config``): nothing tuned or kept."""
        job = self.config_jobs(grid, args, kwargs)[0]
        if sent_ahead(self.jit):  # a survey sent its compile: wait for the worker's, not compile it again
            compile_elsewhere(self.jit, [job], submit=False)
        pos, call_kwargs, options, g = job
        self.jit[g](*pos, **call_kwargs, **options)

    def _tuner(self):
        """The outermost layer when it is an autotuner (the only layout the families use), else None."""
        return self.layers[0] if self.layers and isinstance(self.layers[0], Autotuner) else None

    def config_jobs(self, grid, args: tuple, kwargs: dict) -> list:
        """For each autotune config (after the tuner's own pruning; one launch for a kernel without an
        autotuner): the positional arguments, keyword arguments, options and grid of one launch with it, its
        pre-hook applied to copies of the caller's arguments (a TMA descriptor's block shape is set per
        config; the caller's are left alone)."""
        import copy

        tuner = self._tuner()
        n_pos = len(args)
        base = self._named(args, kwargs)
        configs = tuning.pruned(tuner, args, kwargs) if tuner is not None else [None]
        jobs = []
        for cfg in configs:
            named = {k: copy.copy(v) if hasattr(v, "block_shape") else v for k, v in base.items()}
            options = self._with_config(named, cfg)
            pos = [named[name] for name in self.jit.arg_names[:n_pos]]
            call_kwargs = {k: v for k, v in named.items() if k not in self.jit.arg_names[:n_pos]}
            jobs.append((pos, call_kwargs, options, grid(named) if callable(grid) else grid))
        return jobs

    def _named(self, args, kwargs) -> dict:
        named = dict(zip(self.jit.arg_names, args))
        named.update(kwargs)
        return named

    def _with_config(self, named: dict, cfg) -> dict:
        """Apply ``cfg`` (the autotuner's config; None without an autotuner) and the heuristics to ``named``,
        outermost layer first as the calls nest, then its pre-hook; returns the launch options (num_warps,
        num_stages, ...), which it takes out of ``named``."""
        options: dict = {}
        for layer in self.layers:
            if isinstance(layer, Autotuner):
                named.update(cfg.kwargs)
                all_kw = cfg.all_kwargs() if hasattr(cfg, "all_kwargs") else {
                    **cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
                options.update({k: v for k, v in all_kw.items() if k not in cfg.kwargs})
            else:
                for name, heur in layer.values.items():
                    named[name] = heur(dict(named))
        for k in _OPTIONS:
            if k in named:
                options[k] = named.pop(k)
        if cfg is not None and cfg.pre_hook is not None:
            cfg.pre_hook(named)
        return options

    def _capture(self, grid, args, kwargs) -> "_Captured | object":
        named = self._named(args, kwargs)
        tuner = next((layer for layer in self.layers if isinstance(layer, Autotuner)), None)
        cfg = getattr(tuner, "best_config", None) if tuner is not None else None
        if tuner is not None and cfg is None:
            return _UNSUPPORTED
        options = self._with_config(named, cfg)
        pre_hook = cfg.pre_hook if cfg is not None else None
        call_kwargs = {k: v for k, v in named.items() if k not in self.jit.arg_names[:len(args)]}
        g = grid(named) if callable(grid) else grid
        compiled = self.jit.warmup(*args, grid=g, **call_kwargs, **options)
        if compiled is None or not hasattr(compiled, "run"):
            failures[self.jit.__name__] = f"warmup returned {type(compiled).__name__}"
            return _UNSUPPORTED
        n_pos = len(args)
        template, dyn_index = [], []
        for i, (name, is_constexpr, default) in enumerate(self.params):
            if self.convention == "runtime" and is_constexpr:
                continue
            if i < n_pos and not is_constexpr:
                dyn_index.append((len(template), i))
                template.append(None)
            elif name in named:
                template.append(named[name])
            elif default is not inspect.Parameter.empty:
                template.append(default)
            else:
                failures[self.jit.__name__] = f"no value for {name}"
                return _UNSUPPORTED
        static = {k: v for k, v in named.items() if k not in self.jit.arg_names[:n_pos] or k in kwargs}
        return _Captured(compiled, static, tuple(self.jit.arg_names[:n_pos]), template, dyn_index, pre_hook)

    def _launch(self, c: _Captured, grid, args):
        if c.pre_hook is not None or callable(grid):
            meta = dict(c.static)
            meta.update(zip(c.pos_names, args))
            if c.pre_hook is not None:
                c.pre_hook(meta)
            if callable(grid):
                grid = grid(meta)
        values = list(c.template)
        for t, a in c.dyn_index:
            values[t] = args[a]
        g0 = grid[0]
        g1 = grid[1] if len(grid) > 1 else 1
        g2 = grid[2] if len(grid) > 2 else 1
        k = c.compiled
        launch = k.run  # (a property that loads the module on first use in newer Triton)
        stream = _current_stream()
        enter, exit_ = _hooks()
        launch(g0, g1, g2, stream, k.function, k.packed_metadata, k.launch_metadata(grid, stream, *values),
               enter, exit_, *values)
        return k


# --- compiling in Inductor's worker processes -------------------------------------------------------------
#
# Threads compile side by side only partly: Triton's front end (Python, under the GIL) is a large part of a
# compile, so on the H200 eight configs of the linear_act TMA kernel took 7.7 s of wall time in eight
# threads for 13.0 s of compile time. Inductor keeps a pool of worker processes for its own kernels.
# ``compile_elsewhere`` has Triton say what it would compile for each config (its ``jit_cache_hook``
# receives the specialisation data it would compile from, and tells it to skip the compile), has the workers
# compile those into Triton's disk cache, and returns; the threads' compiles then read the disk cache. Where
# any step is not available (an older Triton or torch, one compile thread, a hook already set) or fails, the
# threads compile as before. Measured on the H200 (torch 2.11, triton 3.6): resnet50's first compile spent
# 10.4 and 11.8 s in ``precompile`` (two runs) against 16.2 s with threads alone; vit_b_16's one batch of
# eight configs took as long as in threads (4.3-6.1 s against 4.7): a worker's first compile in its
# process pays its own start-up (imports, Triton's key).

_pool_timeout_s = 120.0  # seconds to wait for the workers; what they have not done by then, threads compile
_pool_stuck = False  # the workers once missed that wait: this process stops sending them configs


def _inductor_pool():
    """Inductor's compile-worker pool, or None where it has none (one compile thread, an unknown torch)."""
    try:
        from torch._inductor import async_compile

        threads = getattr(async_compile, "get_compile_threads", None)
        if threads is None or threads() <= 1:
            return None
        allowed = getattr(async_compile, "_process_pool_allowed", None)
        if allowed is not None and not allowed():
            return None
        return async_compile.AsyncCompile.process_pool()
    except Exception:  # noqa: BLE001 - only a compile-time saving
        return None


def uncompiled_specs(jit, jobs: list) -> Optional[list]:
    """Triton's specialisation data (JSON text) for each of ``jobs`` (``FastLauncher.config_jobs``) that is
    not compiled in this process yet, collected without compiling; None where this Triton offers no
    ``jit_cache_hook`` with that data, or another hook is set."""
    import json

    knobs = getattr(triton, "knobs", None)
    runtime = getattr(knobs, "runtime", None)
    if runtime is None or not hasattr(runtime, "jit_cache_hook") or runtime.jit_cache_hook is not None:
        return None
    me = threading.get_ident()
    specs: list = []
    usable, target = True, None

    def hook(*args, compile=None, **kwargs):
        nonlocal usable, target
        if threading.get_ident() != me:
            return None  # another thread's compile goes ahead as usual
        try:
            fields = json.loads((compile or {}).get("specialization_data"))
            if "target" not in fields:  # (triton < 3.7 leaves it out: the GPU this process compiles for)
                if target is None:
                    target = triton.runtime.driver.active.get_current_target().__dict__
                fields["target"] = target
            usable &= {"name", "signature", "constant_keys", "constant_vals", "attrs_keys", "attrs_vals",
                       "options"} <= set(fields)
            specs.append(json.dumps(fields))
        except (TypeError, ValueError):
            usable = False
        return True  # skip: the workers compile it

    runtime.jit_cache_hook = hook
    try:
        for pos, call_kwargs, options, g in jobs:
            jit.warmup(*pos, grid=g, **call_kwargs, **options)
    finally:
        runtime.jit_cache_hook = None
    return specs if usable else None


def compile_spec(module: str, name: str, data: str, env: dict, ptxas: Optional[str] = None,
                 launcher: bool = True) -> tuple:
    """In a worker process: compile the kernel ``name`` of ``module`` as Triton's specialisation data ``data``
    says (the decoding of ``JITFunction.preload``, for the target written in the data rather than the GPU
    of this process, which needs none), under the parent's ``TRITON_*`` variables ``env`` (its cache folder,
    ptxas: part of the disk cache's key) and, given ``ptxas``, the parent's reading of the ptxas version
    (``_ptxas_version``), into Triton's disk cache; with ``launcher``, its launch stub too (``_build_launcher``).
    Returns when the job began, when ``module`` was imported and when it ended (``time.time()``) and the
    worker's pid: where a compile's time goes (scripts/compile_profile.py)."""
    import importlib
    import json
    import os
    import time

    began = time.time()

    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    fn = getattr(importlib.import_module(module), name)
    imported = time.time()
    while not isinstance(fn, JITFunction) and hasattr(fn, "fn"):  # autotune, heuristics, the interpreter's
        fn = fn.fn
    if not isinstance(fn, JITFunction):  # the plain function (its cache key is its source's, as the parent's)
        fn = JITFunction(fn)
    obj = json.loads(data)

    def listed(v):  # JSON has no tuples, and Triton's signatures hold no lists
        return tuple(listed(x) for x in v) if isinstance(v, list) else v

    def constant(v):
        if isinstance(v, str) and tl.dtype.is_dtype(v):
            return tl.dtype(v)
        if isinstance(v, dict) and "constexpr" in v:
            return tl.constexpr(listed(v["constexpr"]))
        if isinstance(v, dict) and "jit_function" in v:
            mod, qual = v["jit_function"].split(":")
            return getattr(importlib.import_module(mod), qual)
        return listed(v)

    target = GPUTarget(**obj["target"])
    backend = make_backend(target)
    constexprs = {tuple(k): constant(v) for k, v in zip(obj["constant_keys"], obj["constant_vals"])}
    attrs = {tuple(k): v for k, v in zip(obj["attrs_keys"], obj["attrs_vals"])}
    signature = {k: listed(v) for k, v in obj["signature"].items()}
    options = backend.parse_options({k: listed(v) for k, v in obj["options"].items()})
    before = {k: v for k, v in os.environ.items() if k.startswith("TRITON_")}
    for k in before:
        os.environ.pop(k)
    os.environ.update(env)
    nv = _nvidia_compiler() if ptxas is not None else None
    own = getattr(nv, "get_ptxas_version", None)
    if own is not None:  # the key's ptxas version as the parent's compile reads it (the binary: env's)
        nv.get_ptxas_version = lambda *args, **kwargs: ptxas
    try:
        src = ASTSource(fn, signature, constexprs, attrs)
        kernel = triton.compile(src, target=target, options=options.__dict__)
        if launcher and target.backend == "cuda":
            _build_launcher(src, kernel)
    finally:
        if own is not None:
            nv.get_ptxas_version = own
        for k in [k for k in os.environ if k.startswith("TRITON_")]:
            os.environ.pop(k)
        os.environ.update(before)
    return began, imported, time.time(), os.getpid()


def _build_launcher(src, kernel) -> None:
    """In a worker, after its compile: build the host stub that launches ``kernel`` into Triton's disk cache,
    as the parent's first launch of it would (Triton's C launcher, one per argument signature, keyed on its
    source: a C compile of ~0.35 s each; a cold bert-base compile on the H200 built 6 in its main thread,
    2.1 s). Needs no GPU. Only a compile-time saving: a Triton without this step, or a build that fails
    here, is built by the parent as before."""
    try:
        from triton.backends.nvidia.driver import CudaLauncher

        CudaLauncher(src, kernel.metadata)
    except Exception:  # noqa: BLE001 - see above
        pass


def _nvidia_compiler():
    try:
        from triton.backends.nvidia import compiler
    except ImportError:  # a Triton without the NVIDIA backend
        return None
    return compiler


def _ptxas_version(data: str) -> Optional[str]:
    """The ptxas version that this process's compile of the specialisation ``data`` keys its disk-cache entry
    on, or None where there is none to read (another backend, or a Triton without the step).

    Triton reads it once per process (``get_ptxas_version`` is cached) and keeps it after
    ``TRITON_PTXAS_PATH`` changes, which it does when a Triton kernel compiled before
    ``backend.match_inductor_triton_env`` pointed Triton at torch's ptxas (on the H200: Triton 3.6's
    ptxas 12.8 read, torch 2.11's 13.0 run). A worker compiling under the parent's variables reads the
    version of the ptxas they name, so its entry had another key: the parent missed it and compiled the
    kernel again (the GPU test of the workers' compiles failed that way after the conv_bn GPU tests in one
    process). Sent with each compile instead (``compile_spec``)."""
    import json

    nv = _nvidia_compiler()
    if nv is None or not hasattr(nv, "get_ptxas_version"):
        return None
    try:
        target = json.loads(data).get("target") or {}
        if target.get("backend") != "cuda":
            return None
        try:
            return nv.get_ptxas_version(target["arch"])
        except TypeError:  # (older Triton: no arch argument)
            return nv.get_ptxas_version()
    except Exception:  # noqa: BLE001 - the worker reads its own, as before
        return None


def precompile_for(kernel, grid, args: tuple, kwargs: dict) -> int:
    """``FastLauncher.precompile`` for a launch that goes through Triton's own launch (a kernel timed for a
    measured choice with device-side TMA descriptors, whose scratch memory Triton's launch passes): its
    autotune configs compiled side by side, where the autotuner would compile them one after another while
    it times them. Only a speed-up: returns how many configs were compiled, 0 where it cannot help."""
    from . import registry

    if registry.interpret_mode():
        return 0
    launcher = fast(kernel)
    if registry.compiling_ahead():  # a survey: this launch's compiles sent, and the launch skipped
        if isinstance(launcher, FastLauncher):
            launcher.send_ahead(grid, args, kwargs)
        raise registry.Ahead(kernel)
    if not isinstance(launcher, FastLauncher):
        return 0
    return launcher.precompile_once(grid, args, kwargs)


# Compiles a survey sent ahead (``registry.surveying``): kernel name -> {Triton's specialisation data: the
# future of the worker compiling it}, each waited for (and dropped) by the launch that needs it.
_ahead: dict[str, dict] = {}
_ahead_lock = threading.Lock()


def _triton_env() -> dict:
    """This process's ``TRITON_*`` variables (part of Triton's disk-cache key), for a worker's compile."""
    import os

    return {k: v for k, v in os.environ.items() if k.startswith("TRITON_")}


def _submit(pool, jit, data: str, env: Optional[dict] = None):
    env = env if env is not None else _triton_env()
    return pool.submit(compile_spec, jit.fn.__module__, jit.fn.__name__, data, env, _ptxas_version(data),
                       _first_of_signature(jit, data))


_signatures: set = set()  # (module, kernel, argument signature) whose launch stub a worker was asked to build
_signatures_lock = threading.Lock()


def _first_of_signature(jit, data: str) -> bool:
    """Whether the compile ``data`` is the first sent for its kernel's argument signature: only that one
    builds the launch stub (``_build_launcher``), which the kernel's configs share (Triton keys it on the
    signature; a kernel's configs, sent together, built it side by side, a C compile each)."""
    import json

    try:
        key = (jit.fn.__module__, jit.fn.__name__, json.dumps(json.loads(data).get("signature"), sort_keys=True))
    except (TypeError, ValueError):
        return True
    with _signatures_lock:
        first = key not in _signatures
        _signatures.add(key)
    return first


# A survey's compiles reach the pool from a thread of their own: Inductor's pool takes a job by writing it to
# its workers' pipe, which blocks while they are still starting or busy (resnet50's survey on the H200 spent
# 4.75 s in 99 submits, 48 ms each, against none for bert-base's 18). The survey goes on meanwhile.
_send_queue: Any = None


def _send_later(pool, jit, data: str):
    """A future for ``_submit(pool, jit, data)``, submitted by the sender thread (see above)."""
    import concurrent.futures
    import queue

    global _send_queue
    if _send_queue is None:
        _send_queue = queue.Queue()
        threading.Thread(target=_sender, args=(_send_queue,), name="tritonfuse-ahead", daemon=True).start()
    done = concurrent.futures.Future()
    _send_queue.put((pool, jit, data, _triton_env(), done))  # (the caller's variables, as _submit takes them)
    return done


def _sender(jobs) -> None:
    while True:
        pool, jit, data, env, done = jobs.get()
        try:
            _submit(pool, jit, data, env).add_done_callback(lambda f, done=done: _settle(done, f))
        except Exception as e:  # noqa: BLE001 - the launch that waits for it compiles it itself
            done.set_exception(e)
        finally:
            jobs.task_done()


def _settle(done, f) -> None:
    e = f.exception()
    if e is not None:
        done.set_exception(e)
    else:
        done.set_result(f.result())


def drain_sends() -> None:
    """Wait until the sender thread has handed every queued compile to the pool (for tests)."""
    if _send_queue is not None:
        _send_queue.join()


def _pool_for(jobs: list):
    import torch

    from . import registry

    if not jobs or _pool_stuck or not torch.cuda.is_available() or registry.interpret_mode():
        return None
    return _inductor_pool()


def ahead(jit, jobs: list) -> int:
    """Send the ``jobs`` (``FastLauncher.config_jobs``) not compiled in this process, nor sent already, to
    Inductor's workers, and return without waiting: how many were sent."""
    pool = _pool_for(jobs)
    if pool is None:
        return 0
    try:
        specs = uncompiled_specs(jit, jobs) or []
        sent = 0
        with _ahead_lock:
            mine = _ahead.setdefault(jit.__name__, {})
            for data in specs:
                if data not in mine:
                    mine[data] = _send_later(pool, jit, data)
                    sent += 1
            if not mine:
                del _ahead[jit.__name__]
        return sent
    except Exception as e:  # noqa: BLE001 - compiled when the site is timed, as without a survey
        failures[jit.__name__] = f"ahead: {type(e).__name__}: {e}"
        return 0


def sent_ahead(jit) -> bool:
    """True when a survey sent compiles of ``jit`` that no launch has waited for yet."""
    return bool(_ahead.get(jit.__name__))


def compile_elsewhere(jit, jobs: list, submit: bool = True) -> int:
    """Compile the ``jobs`` not compiled in this process in Inductor's worker processes, into Triton's disk
    cache (see above); returns how many the workers compiled (0 where they could not be used). Those a
    survey sent ahead are waited for, not sent again; with ``submit=False`` only those."""
    import concurrent.futures

    global _pool_stuck
    if len(jobs) < 2 and submit and not sent_ahead(jit):
        return 0  # one compile: as fast in this process as in a worker
    pool = _pool_for(jobs)
    if pool is None:
        return 0
    try:
        specs = uncompiled_specs(jit, jobs)
        if not specs:
            return 0
        futures = []
        with _ahead_lock:
            mine = _ahead.get(jit.__name__, {})
            for data in specs:
                fut = mine.pop(data, None)
                if fut is None and submit:
                    fut = _submit(pool, jit, data)
                if fut is not None:
                    futures.append(fut)
            if not mine:
                _ahead.pop(jit.__name__, None)
    except Exception as e:  # noqa: BLE001 - the threads compile them
        failures[jit.__name__] = f"compile_elsewhere: {type(e).__name__}: {e}"
        return 0
    if not futures:
        return 0
    done, late = concurrent.futures.wait(futures, timeout=_pool_timeout_s)
    if late:  # a stuck or broken pool: one wait, not one per launch
        _pool_stuck = True
        failures[jit.__name__] = f"compile_elsewhere: {len(late)} of {len(futures)} not done in {_pool_timeout_s:.0f} s"
    return sum(1 for f in done if f.exception() is None)


_convention: Optional[str] = None
_convention_known = False
_launchers: dict[int, Any] = {}


def fast(kernel) -> Any:
    """The fast launcher for ``kernel``, or ``kernel`` itself where this Triton's convention is unknown."""
    global _convention, _convention_known
    if not _convention_known:
        _convention, _convention_known = _launch_convention(), True
    if _convention is None:
        return kernel
    got = _launchers.get(id(kernel))
    if got is None:
        try:
            got = FastLauncher(kernel, _convention)
        except TypeError:
            got = kernel
        _launchers[id(kernel)] = got
    return got
