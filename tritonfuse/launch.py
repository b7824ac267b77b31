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

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.run(grid, args, kwargs)

    def run(self, grid, args: tuple, kwargs: dict):
        from . import registry

        if registry.probing() and self._tuner() is not None:
            return self._launch_first_config(grid, args, kwargs)
        if not all(v is None or isinstance(v, (int, float, str)) for v in kwargs.values()):
            return self.kernel[grid](*args, **kwargs)  # a tensor by keyword: not keyed, Triton's own path
        try:
            key = (tuple(map(_arg_key, args)), tuple(sorted(kwargs.items())))
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
        if tuner is None or len(tuner.configs) < 2 or tuning.restore(tuner, args, kwargs) is not None or threads < 2:
            return 0
        try:
            jobs = self.config_jobs(grid, args, kwargs)
        except Exception as e:  # noqa: BLE001 - an unexpected kernel signature: the autotuner compiles
            failures[self.jit.__name__] = f"precompile: {type(e).__name__}: {e}"
            return 0
        import concurrent.futures

        import torch

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

    def _launch_first_config(self, grid, args: tuple, kwargs: dict):
        """One launch with the tuner's first config (``registry.one_config``): nothing tuned or kept."""
        pos, call_kwargs, options, g = self.config_jobs(grid, args, kwargs)[0]
        self.jit[g](*pos, **call_kwargs, **options)

    def _tuner(self):
        """The outermost layer when it is an autotuner (the only layout the families use), else None."""
        return self.layers[0] if self.layers and isinstance(self.layers[0], Autotuner) else None

    def config_jobs(self, grid, args: tuple, kwargs: dict) -> list:
        """For each autotune config (after the tuner's own pruning): the positional arguments, keyword
        arguments, options and grid of one launch with it, its pre-hook applied to copies of the caller's
        arguments (a TMA descriptor's block shape is set per config; the caller's are left alone)."""
        import copy

        tuner = self.layers[0]
        n_pos = len(args)
        base = self._named(args, kwargs)
        configs = list(tuner.configs)
        prune = getattr(tuner, "early_config_prune", None)
        if prune is not None:  # called as the autotuner calls it: positional arguments named, keywords as such
            configs = list(prune(configs, dict(zip(self.jit.arg_names, args)), **kwargs))
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
