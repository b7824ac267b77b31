"""Inlining tritonfuse ops into Inductor's generated code.

The pattern replacements call ``tritonfuse::`` ops. Called as opaque ops, every call pays the dispatcher, the
op's Python body and a Triton launch from Python: more host time than a decode-sized layer's kernel takes.
On a GPU this pass, run after the families' passes, re-traces each such call through the op's own Python
body with ``torch.library.wrap_triton`` standing in for the launches (``registry.launcher`` returns it while
``tracing()`` is active), functionalized, and splices the result into the ATen graph. Inductor then sees
``triton_kernel_wrapper_functional`` nodes: it compiles our Triton kernels itself and launches them from its
own wrapper code, as it does for user-defined kernels, with the rest of the graph around them.

A call stays an opaque op (and is counted with the reason) when the op has no inline form, its shapes are
symbolic, the trace fails, or the traced kernels would write to any tensor they did not allocate. Under the
CPU interpreter nothing is inlined: Inductor's CPU code cannot launch Triton kernels, and the opaque op runs.
"""

from __future__ import annotations

import contextlib
import operator
import threading
from typing import Callable, Iterator, Optional

import torch
import torch.utils._pytree as pytree

from . import config, registry

_state = threading.local()
# op overload -> (the op's Python body, a predicate on its arguments that says whether to inline this call)
_impls: dict = {}


def register(op, fn: Callable, when: Optional[Callable] = None) -> None:
    """Allow inlining calls of ``op``, whose implementation is ``fn``; ``when(*args, **kwargs)`` (fake tensors) may
    refuse a call with a reason string (None: inline it)."""
    _impls[op] = (fn, when)


def active() -> bool:
    """True while an op body is being traced for inlining: launches must go through ``wrap_triton``."""
    return getattr(_state, "tracing", False)


@contextlib.contextmanager
def tracing() -> Iterator[None]:
    old = active()
    _state.tracing = True
    try:
        yield
    finally:
        _state.tracing = old


def _hops():
    """(functional, mutation) kernel-wrapper HOPs, or None on a torch without them."""
    try:
        from torch._higher_order_ops.triton_kernel_wrap import (
            triton_kernel_wrapper_functional,
            triton_kernel_wrapper_mutation,
        )
    except ImportError:
        return None
    return triton_kernel_wrapper_functional, triton_kernel_wrapper_mutation


def _wrap_triton():
    wrap = getattr(torch.library, "wrap_triton", None)
    if wrap is None:  # torch 2.5 named it capture_triton
        wrap = getattr(torch.library, "capture_triton", None)
    return wrap


def wrap(kernel):
    """``kernel`` for a launch traced into Inductor's graph: ``wrap(kernel)[grid](*args, **kwargs)``."""
    return _Pinned(kernel)


class _Pinned:
    """Launches through ``wrap_triton`` with the autotuner's config for this launch when one is known.

    Inductor compiles every config of an inlined autotuned kernel and times them all on the graph's first
    call, in every process. The config our own autotuner chose for the same launch (when the site's
    measurement ran the kernel, or in an earlier process: ``tritonfuse.tuning``) is handed over alone
    instead; without one, the whole config list is, as before."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            kwargs = with_defaults(self.kernel, args, kwargs)
            return _wrap_triton()(pinned(self.kernel, args, kwargs))[grid](*args, **kwargs)

        return launch


def with_defaults(kernel, args: tuple, kwargs: dict) -> dict:
    """``kwargs`` plus the kernel's defaulted parameters the launch leaves out (and no autotune config or
    heuristic sets): ``wrap_triton`` binds arguments without the defaults, and a launch that leaves one out
    fails Inductor's analysis of which tensors the kernel writes, which then assumes every input is written
    and copies them all before each launch."""
    import inspect

    from triton.runtime.jit import JITFunction

    set_elsewhere = set()
    f = kernel
    while not isinstance(f, JITFunction) and hasattr(f, "fn"):
        for cfg in getattr(f, "configs", None) or ():
            set_elsewhere.update(cfg.kwargs)
        set_elsewhere.update(getattr(f, "values", None) or {})  # triton.heuristics
        f = f.fn
    if not isinstance(f, JITFunction):
        return kwargs
    params = list(inspect.signature(f.fn).parameters.values())
    extra = {p.name: p.default for p in params[len(args):]
             if p.default is not inspect.Parameter.empty and p.name not in kwargs and p.name not in set_elsewhere}
    return {**kwargs, **extra} if extra else kwargs


_single: dict = {}  # (autotuner, its configs kept) -> an autotuner over those configs of the same kernel


def pinned(kernel, args: tuple, kwargs: dict):
    """``kernel`` restricted to the config its autotuner holds for this launch, else to the configs its
    pruning keeps for this launch (``early_config_prune``, as Triton's autotuner applies it; Inductor does
    not, and a config that cannot compile for this launch, given alone, fails the whole graph's compile),
    or ``kernel`` itself."""
    from triton.runtime.autotuner import Autotuner

    from . import tuning

    if not isinstance(kernel, Autotuner) or len(kernel.configs) < 2:
        return kernel
    kept = _pruned(kernel, args, kwargs)
    cfg = tuning.restore(kernel, args, kwargs)
    if cfg is not None and cfg.pre_hook is None and any(c is cfg for c in kept):
        return _restricted(kernel, [cfg])
    if len(kept) < len(kernel.configs) and all(c.pre_hook is None for c in kept):
        return _restricted(kernel, kept)
    return kernel


def _pruned(kernel, args: tuple, kwargs: dict) -> list:
    """The configs ``kernel``'s own pruning keeps for this launch (all of them where it has none, or fails)."""
    from . import tuning

    try:
        return tuning.pruned(kernel, args, kwargs) or list(kernel.configs)
    except Exception:  # noqa: BLE001 - a pruning that needs real tensors: every config, as before
        return list(kernel.configs)


def _restricted(kernel, configs: list):
    """An autotuner over ``configs`` (a subset of ``kernel``'s) of the same kernel, the same object for the
    same subset (a stable identity: Inductor keys the kernels it compiles on it)."""
    key = (id(kernel), *map(id, configs))
    if key not in _single:
        import triton

        _single[key] = (kernel, configs, triton.autotune(configs=configs, key=[])(kernel.fn))
    return _single[key][2]


def unavailable(device: torch.device) -> Optional[str]:
    """Why calls on ``device`` are not inlined, or None."""
    if not config.inline_enabled():
        return "TRITONFUSE_INLINE=0"
    if device.type != "cuda" or registry.interpret_mode():
        return "Inductor inlines Triton kernels on the GPU only"
    if _wrap_triton() is None or _hops() is None:
        return f"torch {torch.__version__} has no wrap_triton"
    return None


def will_inline(op, device: torch.device) -> bool:
    """True when calls of ``op`` on ``device`` are meant to be inlined (for the measured choice: the inlined
    kernel runs without the op's host cost, so it is timed as Inductor will launch it)."""
    return op in _impls and unavailable(device) is None


# --- the pass ----------------------------------------------------------------------------------------------

_counts: dict = {"inlined": 0, "kept": 0}
_reasons: dict = {}


def counts() -> dict:
    """``{"inlined": n, "kept": n}`` op calls over all compiles, and ``reasons`` {reason: n} for the kept."""
    return {**_counts, "reasons": dict(_reasons)}


def reset() -> None:
    _counts.update(inlined=0, kept=0)
    _reasons.clear()


def _keep(reason: str) -> None:
    _counts["kept"] += 1
    _reasons[reason] = _reasons.get(reason, 0) + 1


def _static(val) -> bool:
    if not isinstance(val, torch.Tensor):
        return False
    return all(isinstance(s, int) for s in (*val.shape, *val.stride(), val.storage_offset()))


def _trace(fn: Callable, node: torch.fx.Node) -> torch.fx.GraphModule:
    from torch._guards import detect_fake_mode
    from torch.fx.experimental.proxy_tensor import make_fx

    flat, spec = pytree.tree_flatten((node.args, node.kwargs))
    where = [i for i, a in enumerate(flat) if isinstance(a, torch.fx.Node)]
    vals = [flat[i].meta["val"] for i in where]

    def body(*tensors):
        f = list(flat)
        for i, t in zip(where, tensors):
            f[i] = t
        args, kwargs = pytree.tree_unflatten(f, spec)
        return fn(*args, **kwargs)

    from torch._inductor.decomposition import select_decomp_table

    fake_mode = detect_fake_mode(vals)
    with fake_mode or contextlib.nullcontext(), tracing(), torch.no_grad():
        # Inductor's decompositions, as its pattern matcher traces replacements: the graph is past the point
        # where Inductor decomposes ops (aten.transpose, say, must arrive as the permute it lowers)
        gm = make_fx(torch.func.functionalize(body, remove="mutations"), select_decomp_table())(*vals)
    gm.graph.eliminate_dead_code()
    _check_writes(gm)
    return gm, [flat[i] for i in where]


def _check_writes(gm: torch.fx.GraphModule) -> None:
    """The traced kernels may write only to buffers the trace allocated, each through one argument."""
    hop, mutation = _hops()
    n_kernels = 0
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is mutation:
            raise RuntimeError("a kernel launch was not functionalized")
        if n.op != "call_function" or n.target is not hop:
            continue
        n_kernels += 1
        kwargs = n.kwargs["kwargs"]
        written = [kwargs[name] for name in n.kwargs["tensors_to_clone"]]
        if len(set(written)) != len(written):
            raise RuntimeError("a kernel writes one buffer through two arguments")
        for w in written:
            base = w
            while (base.op == "call_function" and getattr(base.target, "is_view", False) and base.args
                   and isinstance(base.args[0], torch.fx.Node)):
                base = base.args[0]  # through views to the buffer written
            if base.op == "placeholder":
                raise RuntimeError("a kernel would write to one of the op's inputs")
    if n_kernels == 0:
        raise RuntimeError("no kernel launch was traced")


def _splice(graph: torch.fx.Graph, node: torch.fx.Node, gm: torch.fx.GraphModule, inputs: list) -> None:
    env = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for ph, a in zip(placeholders, inputs):
        env[ph] = a
    out = None
    with graph.inserting_before(node):
        for n in gm.graph.nodes:
            if n.op == "placeholder":
                continue
            if n.op == "output":
                out = torch.fx.map_arg(n.args[0], lambda a: env[a])
                break
            env[n] = graph.node_copy(n, lambda a: env[a])
    if isinstance(out, (list, tuple)):
        for user in list(node.users):
            if user.op == "call_function" and user.target is operator.getitem:
                user.replace_all_uses_with(out[user.args[1]])
                graph.erase_node(user)
        if node.users:
            raise RuntimeError("a tuple result is used other than by indexing")
    else:
        node.replace_all_uses_with(out)
    graph.erase_node(node)


# --- memoized write analysis --------------------------------------------------------------------------------
#
# For every launch of an inlined kernel, torch works out which of its tensors the kernel writes by generating
# the kernel's TTIR and walking it (``triton_kernel_wrap.identify_accessed_tensors``; ``identify_mutated_tensors``
# before torch 2.10): once when our trace is functionalized, and again in Inductor's graph and lowering, each
# time from scratch. ResNet-50's 53 inlined convs made 53 such analyses in our trace alone, 4.6 of 6.3 s of
# the inline pass here (a CPU tracing for sm_90). The answer depends only on the kernel and on what the TTIR
# is generated from: each tensor's dtype, the constexprs' values, the other arguments' specialization (an
# int's width, whether it is 1, whether 16 divides it; a symbolic size counts as one value, as torch generates
# the TTIR with 2 for it), the TMA metadata and the first autotune config. Keyed on exactly that, for
# tritonfuse's own kernels only, a repeated analysis is looked up; any other kernel, or an argument the key
# cannot describe, goes to torch's function unchanged.

_ANALYSES = ("identify_accessed_tensors", "identify_mutated_tensors")
_analysis_cache: dict = {}
_ANALYSIS_CACHE_MAX = 4096
_analysis_stats = {"hits": 0, "misses": 0}


def _value_key(v, runtime: bool):
    """A hashable stand-in for one kernel argument as TTIR generation sees it, or None (not describable).
    ``runtime``: a parameter passed at run time (not a constexpr), which the TTIR sees only through Triton's
    specialization: an int's width, whether it is 1 and whether 16 divides it; a float's type."""
    import sympy

    if isinstance(v, (torch.SymInt, torch.SymFloat, torch.SymBool, sympy.Expr)):
        return ("sym",)
    if isinstance(v, torch.Tensor):
        return ("tensor", v.dtype)
    get_dtype = getattr(v, "get_dtype", None)  # an Inductor TensorBox
    if get_dtype is not None and type(v).__name__ == "TensorBox":
        return ("tensor", get_dtype())
    if runtime and isinstance(v, int) and not isinstance(v, bool):
        return ("int", v == 1, v % 16 == 0, -(2**31) <= v < 2**31)
    if runtime and isinstance(v, float):
        return ("float",)
    if v is None or isinstance(v, (bool, int, float, str, torch.dtype)):
        return (type(v).__name__, v)
    import triton.language as tl

    if isinstance(v, (tl.dtype, tl.constexpr)):
        r = repr(v)
        return None if " at 0x" in r else (type(v).__name__, r)
    return None  # anything else: not looked up


def _analysis_key(kernel, kwargs, rest):
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    # torch generates the TTIR from the JIT function and, for an autotuner, its first config's kwargs: the
    # autotuner itself is not in the key (inlining hands each launch one restricted to its own configs)
    jit = kernel.fn if isinstance(kernel, Autotuner) else kernel
    if not isinstance(jit, JITFunction) or not getattr(jit.fn, "__module__", "").startswith("tritonfuse."):
        return None
    if not isinstance(kwargs, dict):
        return None
    params = dict(zip(getattr(jit, "arg_names", ()), getattr(jit, "params", ())))
    items = []
    for name in sorted(kwargs):
        p = params.get(name)
        k = _value_key(kwargs[name], p is not None and not getattr(p, "is_constexpr", True))
        if k is None:
            return None
        items.append((name, k))
    cfg = ()
    if isinstance(kernel, Autotuner) and kernel.configs:
        cfg = tuple(sorted((n, repr(v)) for n, v in kernel.configs[0].kwargs.items()))
    rest_r = repr(rest)
    if " at 0x" in rest_r:
        return None
    try:
        import triton

        target = repr(triton.runtime.driver.active.get_current_target())
    except Exception:  # noqa: BLE001 - no driver: the analysis itself will say so
        return None
    return (jit, tuple(items), cfg, rest_r, target)


def _memoized(analysis: Callable) -> Callable:
    import copy
    import functools

    @functools.wraps(analysis)
    def memo(kernel, kwargs, *rest):
        key = _analysis_key(kernel, kwargs, rest)
        if key is None:
            return analysis(kernel, kwargs, *rest)
        hit = _analysis_cache.get(key)
        if hit is None:
            _analysis_stats["misses"] += 1
            hit = analysis(kernel, kwargs, *rest)
            if len(_analysis_cache) >= _ANALYSIS_CACHE_MAX:
                _analysis_cache.clear()
            _analysis_cache[key] = hit
        else:
            _analysis_stats["hits"] += 1
        return copy.deepcopy(hit)  # callers may keep or change what they get

    memo._tritonfuse_memo = True
    return memo


def memoize_write_analysis() -> None:
    """Install the memoized analysis in torch's ``triton_kernel_wrap`` (idempotent; first used by the inline
    pass, never on import)."""
    try:
        from torch._higher_order_ops import triton_kernel_wrap as tkw
    except ImportError:
        return
    for name in _ANALYSES:
        fn = getattr(tkw, name, None)
        if fn is not None and not getattr(fn, "_tritonfuse_memo", False):
            setattr(tkw, name, _memoized(fn))


def inline_pass(graph: torch.fx.Graph) -> int:
    """Inline the tritonfuse op calls in ``graph`` that can be; returns how many were."""
    memoize_write_analysis()
    done = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _impls:
            continue
        fn, when = _impls[node.target]
        vals = [a.meta.get("val") for a in node.all_input_nodes]
        tensors = [v for v in vals if isinstance(v, torch.Tensor)]
        if not tensors:
            continue
        reason = unavailable(tensors[0].device)
        if reason is None and not all(_static(v) for v in vals):
            reason = "symbolic shapes"
        if reason is None and when is not None:
            args = torch.fx.map_arg(node.args, lambda a: a.meta.get("val"))
            kwargs = torch.fx.map_arg(node.kwargs, lambda a: a.meta.get("val"))
            reason = when(*args, **kwargs)
        if reason is None:
            try:
                gm, inputs = _trace(fn, node)
                _splice(graph, node, gm, inputs)
                done += 1
                _counts["inlined"] += 1
                continue
            except Exception as e:  # the call stays an opaque op: slower, never wrong
                if not config.fallback_enabled():
                    raise
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
        _keep(f"{node.target.name()}: {reason}")
    return done
