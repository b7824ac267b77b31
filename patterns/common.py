"""Helpers shared by the families' pattern modules."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import pathlib
import pickle
import threading
import weakref
from typing import Any, Callable, Optional

import torch
import torch.utils._pytree
from torch._inductor.pattern_matcher import Match, fwd_only

from tritonfuse.kernels.common import size_hint


aten = torch.ops.aten
# The ops each activation's patterns hold, as Inductor decomposes it (SiLU: x / (1 + exp(-x)); ReLU6: two clamps;
# Hardswish: x * clamp(x + 3, 0, 6) / 6; the GELUs: erf or tanh): a graph without them holds no site with that
# activation, and its compile skips building those patterns. The families' tests check every pattern holds them.
ACTIVATION_OPS = {
    "none": (),
    "relu": (aten.relu.default,),
    "relu6": (aten.clamp_min.default, aten.clamp_max.default),
    "silu": (aten.exp.default, aten.neg.default, aten.div.Tensor),
    "hardswish": (aten.clamp_min.default, aten.clamp_max.default, aten.div.Tensor),
    "gelu": (aten.erf.default,),
    "gelu_tanh": (aten.tanh.default,),
    "gelu_new": (aten.tanh.default,),
    "gelu_bloom": (aten.tanh.default,),
    "quick_gelu": (aten.sigmoid.default,),
}


def trace_pattern(fn, args, **kwargs) -> torch.fx.GraphModule:
    """Trace a search or replacement function the way the post-grad graph looks.

    Inductor turns every ``view`` into ``reshape`` before its post-grad passes, so patterns do the same.
    """
    gm = fwd_only(fn, args, **kwargs)
    for node in gm.graph.find_nodes(op="call_function", target=torch.ops.aten.view.default):
        node.target = torch.ops.aten.reshape.default
    gm.recompile()
    return gm


# --- traces at a match, once per graph ----------------------------------------------------------------
# ``register_replacement``'s check traces the search function again at each match's own shapes (to check
# the views around it) and, when the match holds, the replacement function: two traces of some 10-20 ms per
# site, for every layer of a model although its layers repeat the same shapes (a 12-layer BERT at width 64:
# 160 checks, 3.2 s of a 5.2 s pass, on the CPU under cProfile). Within the graph being compiled (one fake
# mode) a trace is a function of the function, its arguments' metadata and any state it reads (which the
# caller names), and the pattern matcher only reads the graphs it gets (the replacement is copied node by
# node into the graph), so one trace serves every repeat. Symbolic sizes and real (example) tensors are
# traced each time.

_memo = threading.local()
# Search functions given to ``register_replacement`` (``search_only``). The check's trace of one at a match
# only becomes a pattern to compare (``fx_to_pattern`` reads the graph); nothing of it enters the model's
# graph. So a repeat gets the kept trace itself: no copy, no fake values of its own. (In bert-base's first
# compile on the H200 those copies took 2.4 s, most of them for the survey's checks, which replace nothing.)
_search_fns: "weakref.WeakSet" = weakref.WeakSet()


def search_only(fn: Callable) -> Callable:
    """Mark ``fn`` as a search function whose traces at a match are only read (see ``memo_trace``)."""
    _search_fns.add(fn)
    return fn


def _read_only(fn) -> bool:
    try:
        return fn in _search_fns
    except TypeError:  # not weakly referable: never marked
        return False


@contextlib.contextmanager
def trace_memo():
    """Inside (one graph's passes), ``memo_trace`` keeps its traces; they are dropped on leaving."""
    outer = getattr(_memo, "table", None)
    _memo.table = {} if outer is None else outer
    try:
        yield
    finally:
        _memo.table = outer


class _Unkeyed(Exception):
    pass


def _arg_key(x):
    from torch._subclasses.fake_tensor import FakeTensor

    if isinstance(x, FakeTensor):
        dims = (*x.shape, *x.stride(), x.storage_offset())
        if not all(isinstance(d, int) for d in dims):
            raise _Unkeyed
        return ("T", tuple(x.shape), tuple(x.stride()), x.storage_offset(), x.dtype, x.device, x.requires_grad,
                id(x.fake_mode))
    if isinstance(x, torch.Tensor):
        raise _Unkeyed  # a real example tensor: the pattern's own build
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(_arg_key(a) for a in x))
    if x is None or isinstance(x, (bool, int, float, str, torch.dtype, torch.device)):
        return (type(x).__name__, repr(x))
    raise _Unkeyed  # symbolic scalars and anything else


def memo_trace(trace: Callable[..., torch.fx.GraphModule], fn, args, state=(), **kwargs) -> torch.fx.GraphModule:
    """``trace(fn, args, **kwargs)``, or inside ``trace_memo`` a copy of the graph an identical call traced
    before: the same ``trace`` and ``fn`` objects, arguments with the same metadata and no symbolic sizes,
    equal ``state`` (whatever else the function reads, such as how its check chose to serve the site)."""
    table = getattr(_memo, "table", None)
    if table is None:
        return trace(fn, args, **kwargs)
    try:
        # the functions themselves are in the key (not their ids): a closure made for one match and
        # garbage-collected cannot hand its trace to a new one at the same address
        from torch._subclasses.fake_tensor import FakeTensor

        if not any(isinstance(a, FakeTensor) for a in torch.utils._pytree.tree_leaves(list(args))):
            raise _Unkeyed  # only traces at a match, under the graph's fake mode
        key = (trace, fn, _arg_key(list(args)), state, tuple(sorted(kwargs.items(), key=lambda kv: kv[0])))
        hash(key)
    except (_Unkeyed, TypeError):
        return trace(fn, args, **kwargs)
    read_only = _read_only(fn)
    if key in table:
        if read_only:
            return table[key]
        try:
            return _fresh_copy(table[key], args)
        except Exception:  # noqa: BLE001 - the copy is only a shortcut: a trace of this call is always right
            del table[key]
    gm = trace(fn, args, **kwargs)
    if read_only:
        table[key] = gm
        return gm
    try:
        table[key] = _copy(gm)  # as traced: the pattern matcher may write into the graph it is given
    except Exception:  # noqa: BLE001 - not kept: the next such call is traced
        pass
    return gm


class _FakeProp(torch.fx.Interpreter):
    # each node's value from this call's fake arguments (FakeTensorProp, without the bump of the fake mode's
    # epoch that it does)
    def run_node(self, n):
        result = super().run_node(n)
        if n.op != "output":
            n.meta["val"] = result
        return result


def _copy(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    graph = torch.fx.Graph()
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    return torch.fx.GraphModule(gm, graph)


def _fresh_copy(gm: torch.fx.GraphModule, args) -> torch.fx.GraphModule:
    """A copy of a kept trace whose nodes hold fake values of their own, computed from ``args``: the
    replacement's values are copied into the model's graph, and two sites sharing one fake tensor would
    look to Inductor's alias analysis like views of one storage."""
    from torch._guards import detect_fake_mode

    copy = _copy(gm)
    flat = torch.utils._pytree.tree_leaves(list(args))
    with detect_fake_mode(flat):
        _FakeProp(copy).run(*flat)
    return copy


def fake_value(node: torch.fx.Node, replaced: Optional[dict] = None, fake_mode=None):
    """``node``'s example value computed from its arguments' (after a pass made the node or changed an
    argument), with the example values of some positional arguments replaced (``replaced``: index -> value,
    to ask what a change would give before making it). ``fake_mode``: the graph's, else found from the
    values."""
    replaced = replaced or {}
    args = [replaced[i] if i in replaced else torch.fx.node.map_arg(a, lambda n: n.meta["val"])
            for i, a in enumerate(node.args)]
    kwargs = torch.fx.node.map_arg(node.kwargs, lambda a: a.meta["val"])
    if fake_mode is None:
        from torch._guards import detect_fake_mode

        fake_mode = detect_fake_mode([*replaced.values(),
                                      *(n.meta.get("val") for n in node.all_input_nodes)])
    with fake_mode:
        return node.target(*args, **kwargs)


def hinted_sizes(t: torch.Tensor) -> Optional[list]:
    """The sizes of a (possibly symbolic) fake tensor, each symbol at its example value, read without adding
    guards to a graph already traced; None when a size has no example value (data-dependent)."""
    sizes = [size_hint(s) for s in t.shape]
    return None if any(s is None for s in sizes) else [int(s) for s in sizes]


def hinted(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``t`` with the example sizes of its symbols (a fake tensor on t's device, so GPU timing still sees the
    GPU), for the size-keyed kernel choices (autotune buckets, timing), which must not add guards to a graph
    already traced and cannot allocate symbolic sizes; ``t`` itself when static; None when ``t`` is None or
    a size has no example value."""
    if t is None or not any(isinstance(s, torch.SymInt) for s in t.shape):
        return t
    sizes = hinted_sizes(t)
    return None if sizes is None else t.new_empty(sizes)


def arg_val(match: Match, name: str):
    """The fake tensor (``meta["val"]``) of the pattern argument ``name``, or None."""
    node = match.kwargs.get(name)
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


# --- traced search patterns, kept on disk -----------------------------------------------------------------
# Building a family's pass traces every search function (hundreds of variants): seconds of every process's
# first compile. Inductor ships its own patterns pre-traced; ours are traced once and kept per torch build,
# tritonfuse source and settings. Only the initial (shape-generic) pattern is kept: the specific retrace a
# match runs with its real shapes, which checks the views around it, still happens at match time.

class _RecordedGM:
    """Stands in for a recorded search graph module: ``str(gm.graph)`` is the original graph's text (what
    Inductor's duplicate-pattern check compares), ``gm.graph.nodes`` the graph loaded again on first use
    (what a family may read the pattern's constants from)."""

    def __init__(self, text: str, data: bytes):
        self.graph = _RecordedGraph(text, data)


class _RecordedGraph:
    def __init__(self, text: str, data: bytes):
        self.text, self.data, self.loaded = text, data, None

    def __str__(self) -> str:
        return self.text

    @property
    def nodes(self):
        if self.loaded is None:
            self.loaded = pickle.loads(self.data).graph
        return self.loaded.nodes


def _dumps(obj) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=4).dump(obj)
    return buf.getvalue()


def _op(namespace: str, name: str, overload):
    packet = getattr(getattr(torch.ops, namespace), name)
    return packet if overload is None else getattr(packet, overload)


class _Pickler(pickle.Pickler):
    # ops are pybind objects: pickled by name, looked up again on load
    def reducer_override(self, obj):
        if isinstance(obj, torch._ops.OpOverload):
            namespace, name = obj._schema.name.split("::")
            return _op, (namespace, name, obj._overloadname)
        if isinstance(obj, torch._ops.OpOverloadPacket):
            namespace, name = obj._qualified_op_name.split("::")
            return _op, (namespace, name, None)
        return NotImplemented


def _describe(search_fn, example_inputs, trace_fn, scalar_workaround, exclusive_arg_names, decomp=None) -> str:
    """What a recorded pattern must have been traced from to be replayed for this call."""
    def one(x):
        if isinstance(x, torch.Tensor):
            return f"T{tuple(x.shape)}{x.dtype}{x.device.type}{x.requires_grad}"
        return repr(x) if isinstance(x, (int, float, bool, str, type(None), torch.dtype)) else type(x).__name__

    def named(f, depth=0):
        f = getattr(f, "__wrapped__", f)
        if isinstance(f, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
            return str(f)
        if isinstance(f, functools.partial):
            return (named(f.func, depth), [one(a) for a in f.args],
                    sorted((k, one(v)) for k, v in f.keywords.items()))
        name = f"{getattr(f, '__module__', '')}.{getattr(f, '__qualname__', type(f).__name__)}"
        if depth > 3:
            return name
        # variants made by one factory differ in what they close over
        cells = [c.cell_contents for c in (getattr(f, "__closure__", None) or ()) if _filled(c)]
        return (name, [named(c, depth + 1) if callable(c) else one(c) for c in cells])

    inputs = [one(x) for x in torch.utils._pytree.tree_leaves(list(example_inputs))]
    return repr((named(search_fn), getattr(trace_fn, "__name__", ""), inputs,
                 sorted((scalar_workaround or {}).items()), tuple(exclusive_arg_names or ()),
                 getattr(decomp, "__qualname__", None)))


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _cache_file(family: str, key: str) -> pathlib.Path:
    from tritonfuse import registry

    return registry.choices_path().parent / "patterns" / f"{family}-{key}.pkl"


def _read_record(path: pathlib.Path) -> list:
    try:
        recorded = pickle.loads(path.read_bytes())
        os.utime(path)  # in use: kept by _prune
    except Exception:  # noqa: BLE001 - any unreadable record means tracing again
        return []
    ok = isinstance(recorded, list) and all(isinstance(r, tuple) and len(r) == 2 for r in recorded)
    return recorded if ok else []


_cache_lock = threading.Lock()
_active = threading.local()  # the _Recorder of the pattern_cache being built in this thread


class _Recorder:
    """One family's build, call by call: values recorded by an earlier build are replayed while each call
    is the one recorded at its place; from the first call that differs, everything is built again."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.old: Optional[list] = None  # read on the first call: a pass already built reads nothing
        self.new: list = []
        self.diverged = False

    def get(self, what: str, build: Callable[[], Any], keep: Callable[[Any], Any] = lambda v: v) -> Any:
        """Entries are ``(what, pickled keep(value))`` (ops pickled by name)."""
        if self.old is None:
            self.old = _read_record(self.path)
        i = len(self.new)
        if not self.diverged and i < len(self.old) and self.old[i][0] == what:
            self.new.append(self.old[i])
            return pickle.loads(self.old[i][1])
        self.diverged = True
        value = build()
        self.new.append((what, _dumps(keep(value))))
        return value

    def save(self, family: str) -> None:
        if not self.new or [w for w, _ in self.new] == [w for w, _ in self.old or ()]:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(_dumps(self.new))
            tmp.replace(self.path)
            _prune(self.path, family)
        except Exception:  # noqa: BLE001 - a read-only or full cache only costs tracing next time
            pass


def recorded(what: str, build: Callable[[], Any]) -> Any:
    """``build()``, or inside ``pattern_cache`` the value an earlier build recorded for the call ``what`` at
    this point of the build. For a family's own pre-traced patterns (``what`` must name everything the
    value depends on that the cache key does not: the search function and its example inputs)."""
    rec = getattr(_active, "recorder", None)
    return build() if rec is None else rec.get(what, build)


def recorded_pattern(build: Callable[[Any, Any], Any], search_fn, example_inputs) -> Any:
    """``build(search_fn, example_inputs)``: a family's own pre-traced pattern (``search_fn_pattern``),
    replayed from the record inside ``pattern_cache``."""
    what = _describe(search_fn, example_inputs, build, None, ())
    return recorded(what, lambda: build(search_fn, example_inputs))


@contextlib.contextmanager
def pattern_cache(family: str, key: str):
    """Inside, Inductor's search-pattern tracing (and ``recorded``) replays what an earlier build with the
    same ``key`` recorded (callers include the torch build, the tritonfuse source and the settings in it),
    call by call; a call that differs from the record is traced, and the record is written again. A
    missing, unreadable or stale file only costs the tracing."""
    from torch._inductor import pattern_matcher as pm

    trace = getattr(pm, "gen_pattern_and_search_gm", None)
    if trace is None or getattr(_active, "recorder", None) is not None:  # no hook, or a build in a build
        yield
        return
    rec = _Recorder(_cache_file(family, key))

    def replay(search_fn, example_inputs, trace_fn, scalar_workaround=None, exclusive_arg_names=(),
               **kwargs):
        what = _describe(search_fn, example_inputs, trace_fn, scalar_workaround, exclusive_arg_names,
                         kwargs.get("get_decomp_fn"))

        def build():
            return trace(search_fn, example_inputs, trace_fn, scalar_workaround, exclusive_arg_names, **kwargs)

        return rec.get(what, build, keep=lambda v: (v[0], _RecordedGM(str(v[1].graph), _dumps(v[1]))))

    with _cache_lock:
        pm.gen_pattern_and_search_gm = replay
        _active.recorder = rec
        try:
            yield
        finally:
            pm.gen_pattern_and_search_gm = trace
            _active.recorder = None
    rec.save(family)


_KEEP_S = 30 * 86400  # records of other tritonfuse or torch versions go once unused this long


def _prune(path: pathlib.Path, family: str) -> None:
    import time

    for old in path.parent.glob(f"{family}-*.pkl"):
        if old != path and time.time() - old.stat().st_mtime > _KEEP_S:
            old.unlink(missing_ok=True)


# --- int8 under autocast --------------------------------------------------------------------------------


_CAST_WEIGHTS = ("w", "wg", "wu")  # the weight arguments of the int8 ops that quantize their weights at run time
_RUNTIME_QUANT_OPS = ("int8_linear", "int8_gated_mlp", "int8_linear_prequant", "int8_gated_mlp_prequant",
                      "int8_linear_amax", "int8_linear_qload", "conv_bn_int8")
# the views through which an op may read a weight (a Conv1D's transposed weight, half of a fused projection)
WEIGHT_VIEWS = (torch.ops.aten.permute.default, torch.ops.aten.t.default, torch.ops.aten.slice.Tensor,
                 torch.ops.aten.narrow.default, torch.ops.aten.view.default, torch.ops.aten.reshape.default,
                 torch.ops.aten._unsafe_view.default)


COMPUTED_WEIGHT = "int8: the weight is computed in the graph (int8 copies are kept for a graph input's weights)"


def int8_weight_source(node) -> Optional[tuple]:
    """``(graph input, views, cast)`` for a weight an int8 op may read: a graph input (a Parameter, a
    buffer, or a constant of a frozen graph), views of one (``WEIGHT_VIEWS``), or views of autocast's half-precision cast of an fp32 one
    (``cast``, else None; ``views`` innermost first). None for a weight the graph computes: the int8 copy of a
    weight is cached against its tensor, and Inductor reuses an intermediate's buffer for another tensor of
    the same size within a call (seen: under autocast every conv of a ResNet stage was served the first
    conv's int8 weight, 2.5 dB)."""
    views, n = [], node
    while isinstance(n, torch.fx.Node) and n.op == "call_function" and n.target in WEIGHT_VIEWS \
            and isinstance(n.args[0], torch.fx.Node):
        views.append(n)
        n = n.args[0]
    cast = None
    if isinstance(n, torch.fx.Node) and n.target == torch.ops.prims.convert_element_type.default \
            and isinstance(n.args[0], torch.fx.Node):
        src, half = n.args[0].meta.get("val"), n.meta.get("val")
        if isinstance(src, torch.Tensor) and isinstance(half, torch.Tensor) and src.dtype == torch.float32 \
                and half.dtype in (torch.float16, torch.bfloat16):
            cast, n = n, n.args[0]
    if not isinstance(n, torch.fx.Node) or n.op not in ("placeholder", "get_attr"):  # (get_attr: frozen)
        return None
    if cast is not None:  # the views must apply to the fp32 weight too (autocast_weight_pass redoes them)
        val = n.meta.get("val")
        try:
            for v in reversed(views):
                val = v.target(val, *v.args[1:], **v.kwargs)
        except Exception:  # noqa: BLE001 - not a weight the ops can read
            return None
    return n, views[::-1], cast


def autocast_weight_pass(graph: torch.fx.Graph) -> int:
    """Under autocast the graph casts each fp32 weight to half precision for its GEMM on every call. An int8
    op reads its weight through the int8 copy the weight cache keeps, which it cannot keep for the cast's
    output (a buffer of the graph's: ``int8_weight_source``). Here the int8 ops read the fp32 weight itself,
    through the same views (quantized from it once per version), and a cast nothing else reads goes. Returns
    the number of weights rewired."""
    targets = tuple(getattr(torch.ops.tritonfuse, name).default for name in _RUNTIME_QUANT_OPS
                    if hasattr(torch.ops.tritonfuse, name))
    done = 0
    for node in [n for n in graph.nodes if n.op == "call_function" and n.target in targets]:
        for i, arg in enumerate(node.target._schema.arguments):
            w = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
            if arg.name not in _CAST_WEIGHTS or not isinstance(w, torch.fx.Node):
                continue
            found = int8_weight_source(w)
            if found is None or found[2] is None:
                continue
            src, views, cast = found
            fp32 = src
            for v in views:
                with graph.inserting_before(node):
                    again = graph.call_function(v.target, (fp32, *v.args[1:]), dict(v.kwargs))
                again.meta["val"] = v.target(fp32.meta["val"], *v.args[1:], **v.kwargs)
                fp32 = again
            node.replace_input_with(w, fp32)
            for dead in [*views[::-1], cast]:  # from the weight down to the cast, those nothing else reads
                if not dead.users:
                    graph.erase_node(dead)
            done += 1
    return done
