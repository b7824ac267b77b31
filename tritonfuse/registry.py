"""Counters, site records, kernel availability and op registration shared by every family.

A *site* is one structural match of a family's pattern in a compiled graph. Each site ends either
``replaced`` (served by a tritonfuse kernel) or ``fallback`` (left to Inductor, with the reason).
``counters()`` sums them per family; ``sites()`` lists them for the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import os
import pathlib
import re
import sys
import threading
import time
import warnings
from typing import Callable, Optional

import torch

from . import config

_lock = threading.Lock()


@dataclasses.dataclass
class Site:
    family: str
    status: str  # "replaced" or "fallback"
    kernel: str  # the tritonfuse kernel that serves it, or the one that would have
    reason: str = ""  # why it was left to Inductor
    detail: str = ""  # shapes and dtype, for the report
    graph: int = 0  # which compiled graph (0, 1, ... in compile order)
    measured: Optional[list] = None  # [ours_ms, theirs_ms] where a GPU timing chose the site's path
    module: str = ""  # the module it came from, as model.named_modules() names it ("" where unknown)


_counters: dict[str, dict[str, int]] = {}
_sites: list[Site] = []
_stacks: list[tuple] = []  # sibling Linears made one GEMM (patterns.linear_act.float_siblings_pass): (GEMMs, timing)
_errors: list[str] = []  # family passes that raised: shown by the report, the graph kept Inductor's path
_pending: dict[tuple, Site] = {}
_graph_index = 0


_reset_hooks: list = []  # what else reset() clears (kernels.int8: its int8 weight copies)


def on_reset(fn) -> None:
    """Have ``reset()`` also call ``fn()``."""
    _reset_hooks.append(fn)


def reset() -> None:
    """Clear the counters and the site records, and the int8 weight copies kept for the ops (the way to have
    a weight that tracks no version, an inference tensor, quantized afresh after an in-place write)."""
    global _graph_index, _surveyed
    from . import inline

    inline.reset()
    for fn in _reset_hooks:
        fn()
    with _lock:
        _counters.clear()
        _sites.clear()
        _stacks.clear()
        _errors.clear()
        _pending.clear()
        _graph_index = 0
        _surveyed = 0
        _compile_time.update(_NO_COMPILE_TIME)


def note_stacked(gemms: int, measured: Optional[list]) -> None:
    """Record ``gemms`` floating-point sibling GEMMs made one, with the timing that chose it (ours, theirs ms)."""
    with _lock:
        _stacks.append((gemms, tuple(measured) if measured else ()))


def stacked() -> list[tuple]:
    """(GEMMs made one, (ours, theirs ms) or ()) for each stack of sibling Linears since the last reset."""
    with _lock:
        return list(_stacks)


def counters() -> dict[str, dict[str, int]]:
    """family → {"matched", "replaced", "fallback"} for every family, summed over all compiles."""
    out = {f: {"matched": 0, "replaced": 0, "fallback": 0} for f in config.FAMILIES}
    with _lock:
        for fam, c in _counters.items():
            out.setdefault(fam, {"matched": 0, "replaced": 0, "fallback": 0})
            for k, v in c.items():
                out[fam][k] += v
    return out


def sites() -> list[Site]:
    with _lock:
        return list(_sites)


def note_error(message: str) -> None:
    with _lock:
        if message not in _errors:
            _errors.append(message)


def errors() -> list[str]:
    with _lock:
        return list(_errors)


# --- recording, called from extra_check ---------------------------------------------------------------
# A pattern matcher may try several patterns on one site (e.g. GELU with and without bias); the site is
# keyed on its anchor node so it is counted once, and a later "replaced" wins over an earlier "fallback".


def _site_key(node: torch.fx.Node) -> tuple:
    return (id(node.graph), node.name)


def note_replaced(family: str, node: torch.fx.Node, kernel: str, detail: str = "") -> None:
    """Record a replaced site, with the timing that chose it (the last ``measured_choice`` of this thread)."""
    measured = _take_measured()
    with _lock:
        _pending[_site_key(node)] = Site(family, "replaced", kernel, "", detail, measured=measured,
                                         module=module_name(node))


def restate(graph: torch.fx.Graph, name: str, kernel: Optional[str] = None, suffix: str = "",
            measured: Optional[list] = None, why: str = "") -> bool:
    """A later pass changed how site ``name`` of ``graph`` (its anchor node's name, as the checks noted it)
    is served: its record becomes a replacement by ``kernel`` (default: its own kernel, with ``suffix`` added
    to the bracketed variant), with ``measured`` and ``why`` (in place of the detail's parenthesis) where
    given. False where no record of this graph has that name."""
    with _lock:
        site = _pending.get((id(graph), name))
        if site is None:
            return False
        kernel = kernel or site.kernel
        if suffix:
            kernel = kernel[:-1] + f",{suffix}]" if kernel.endswith("]") else f"{kernel}[{suffix}]"
        site.status, site.kernel, site.reason = "replaced", kernel, ""
        if measured is not None:
            site.measured = measured
        if why:
            site.detail = f"{site.detail.split(' (')[0]} ({why})"
        return True


def site_kernel(graph: torch.fx.Graph, name: str) -> Optional[str]:
    """The kernel site ``name`` of ``graph`` is recorded with (as ``restate`` finds it), or None."""
    with _lock:
        site = _pending.get((id(graph), name))
        return site.kernel if site is not None else None


def site_module(graph: torch.fx.Graph, name: str) -> str:
    """The module of site ``name`` of ``graph`` (its anchor node's name), as its check recorded it from the
    anchor's ATen node; "" where no record of this graph has that name or its module is unknown."""
    with _lock:
        site = _pending.get((id(graph), name))
        return site.module if site is not None else ""


def annotate(graph: torch.fx.Graph, name: str, note: str) -> bool:
    """Add ``note`` to site ``name`` of ``graph``: to its reason where it was left to Inductor, else to its
    detail (a later pass weighed another way to serve it and kept what it had). False where no record of
    this graph has that name."""
    with _lock:
        site = _pending.get((id(graph), name))
        if site is None:
            return False
        if site.status == "fallback":
            site.reason = f"{site.reason}; {note}" if site.reason else note
        else:
            site.detail = f"{site.detail}; {note}" if site.detail else note
        return True


def module_name(node: torch.fx.Node) -> str:
    """The dotted name of the module a node came from (``layers.0.mlp.up_proj``), best effort."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    # the compiled module itself is a local: ``L['self']`` when its forward was traced, ``L['fn']`` when
    # Dynamo traced its call (an nn.Sequential under torch 2.14); its children are the user's names
    path = re.sub(r"^L\['[^']*'\]", "", path)
    for prefix in ("L__self__.", "self."):
        path = path.replace(prefix, "")
    path = re.sub(r"\._modules\['([^']*)'\]", r".\1", path)
    return re.sub(r"\[(\d+)\]", r".\1", path).replace("['", ".").replace("']", "").strip(".")


def note_fallback(family: str, node: torch.fx.Node, kernel: str, reason: str, detail: str = "") -> None:
    _take_measured()
    with _lock:
        key = _site_key(node)
        if key not in _pending:
            _pending[key] = Site(family, "fallback", kernel, reason, detail, module=module_name(node))


def guarded(family: str, fn: Callable, anchor: Optional[Callable] = None) -> Callable:
    """``fn``, a pattern's ``extra_check`` or handler (called with the ``Match``), where an exception (a bug,
    or a kernel or timing failure while deciding) leaves that one site to Inductor, counted with the error as
    its reason, and warns once; the family's other sites are still served. Unguarded, the exception failed
    the family's whole pass: its later sites went unrecorded. With ``TRITONFUSE_FALLBACK_ON_ERROR=0`` it is
    raised. ``anchor(match)``: the node the family records its site on (default: the match's output), for
    an error raised before ``fn`` recorded the site."""

    @functools.wraps(fn)
    def check(match, *args, **kwargs):
        with _lock:
            before = dict(_pending)
        try:
            return fn(match, *args, **kwargs)
        except Exception as e:
            if not config.fallback_enabled():
                raise
            reason = f"tritonfuse error while deciding: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            _take_measured()
            with _lock:
                # the site as fn recorded it before it raised (a "replaced" not carried out), else its output
                touched = [k for k, site in _pending.items() if before.get(k) is not site]
                for k in touched:
                    _pending[k] = dataclasses.replace(_pending[k], status="fallback", reason=reason, measured=None)
            if not touched:
                try:
                    node = (anchor(match) if anchor else None) or match.output_node()
                except Exception:
                    node = match.output_node()
                with _lock:
                    # a handler that raised: the replacement its check recorded was not carried out
                    site = _pending.get(_site_key(node))
                    if site is not None and site.status == "replaced":
                        _pending[_site_key(node)] = dataclasses.replace(site, status="fallback", reason=reason,
                                                                       measured=None)
                        touched = [node]
                if not touched:
                    note_fallback(family, node, "", reason)
            message = f"a {family} site: {reason}"
            if message not in errors():
                warnings.warn(f"tritonfuse: {message}; it is left to Inductor", stacklevel=2)
            note_error(message)
            return False

    return check


_last_measured = threading.local()


def settle(family: str, node: torch.fx.Node, kernel: str, reason: Optional[str], detail: str = "") -> bool:
    """An ``extra_check``'s verdict: with a ``reason`` the site is recorded as left to Inductor and False
    returned, else it is recorded as replaced and True returned."""
    if reason:
        note_fallback(family, node, kernel, reason, detail)
        return False
    note_replaced(family, node, kernel, detail)
    return True


def show_measured(rec: dict) -> None:
    """Make ``rec`` the timing the next site noted in this thread reports (each ``measured_choice`` sets its
    own): for a check that timed two paths and serves the site by the one it measured first."""
    _last_measured.rec = rec


def _take_measured() -> Optional[list]:
    # a record is read by the next site noted in this thread only, never by a later one
    rec = getattr(_last_measured, "rec", None)
    _last_measured.rec = None
    if rec and "ours_ms" in rec:
        return [rec["ours_ms"], rec["theirs_ms"]]
    return None


_training = False  # the graph being processed belongs to a training compile (its forward or its backward)


def training_graph() -> bool:
    """Whether the graph the passes are working on is a training graph: the forward of a compile that
    records gradients, or its backward (int8 is for inference graphs)."""
    return _training


def begin_graph(training: bool = False) -> None:
    global _measure_spent, _deferred, _training
    _take_measured()
    _training = training
    with _lock:
        _pending.clear()
        _measure_spent = 0.0
        _deferred = False
        _surveyed_keys.clear()
        _surveyed_probes.clear()


def _add(site: Site) -> None:
    c = _counters.setdefault(site.family, {"matched": 0, "replaced": 0, "fallback": 0})
    c["matched"] += 1
    c[site.status] += 1
    _sites.append(site)


def end_graph() -> list[Site]:
    """Move the sites of the graph just processed into the counters and return them."""
    global _graph_index
    done = take_pending()
    with _lock:
        for site in done:
            site.graph = _graph_index
            _add(site)
        _graph_index += 1
        return done


def take_pending() -> list[Site]:
    """The sites noted since ``begin_graph``, handed over uncounted (a joint graph's: the forward graph that
    AOTAutograd partitions from it adopts them), and the graph state closed (``end_graph`` counts them too)."""
    global _training
    _training = False
    with _lock:
        done = list(_pending.values())
        _pending.clear()
        return done


def adopt(sites: list[Site]) -> None:
    """Note ``sites`` (``take_pending``'s) as sites of the graph now being processed."""
    with _lock:
        for i, site in enumerate(sites):
            _pending[("adopted", id(site), i)] = site


def demote(done: list[Site], reason: str) -> None:
    """Turn the replacements among ``done`` into fallbacks (their graph was compiled without tritonfuse)."""
    with _lock:
        for site in done:
            if site.status == "replaced":
                c = _counters[site.family]
                c["replaced"] -= 1
                c["fallback"] += 1
                site.status, site.reason = "fallback", reason


def forget(done: list[Site]) -> None:
    """Drop the records of ``done`` (their graph is being compiled again, which records its sites anew)."""
    with _lock:
        for site in done:
            c = _counters[site.family]
            c["matched"] -= 1
            c[site.status] -= 1
        ids = {id(site) for site in done}
        _sites[:] = [site for site in _sites if id(site) not in ids]


def replay(records: list[dict]) -> list[Site]:
    """Count sites recorded when a graph now served from Inductor's cache was first compiled."""
    global _graph_index
    with _lock:
        done = []
        fields = {f.name for f in dataclasses.fields(Site)}
        for r in records:
            site = Site(**{k: v for k, v in r.items() if k in fields})
            site.graph = _graph_index
            _add(site)
            done.append(site)
        _graph_index += 1
        return done


def pending_replacements() -> int:
    with _lock:
        return sum(1 for s in _pending.values() if s.status == "replaced")


# --- real values of graph inputs (parameters) during a pass ------------------------------------------------
# Dynamo hands the backend the real inputs (parameters included); in an inference graph they line up with
# the post-grad graph's placeholders. Checks that need real weights (the int8 SQNR gate) read them here.

_real_inputs: list = []


def set_real_inputs(inputs) -> None:
    global _real_inputs
    _real_inputs = list(inputs or [])


def real_value(node) -> Optional[torch.Tensor]:
    """The real tensor behind placeholder ``node`` when it matches the placeholder's shape, dtype and strides."""
    if not isinstance(node, torch.fx.Node) or node.op != "placeholder" or not _real_inputs:
        return None
    index = [n for n in node.graph.nodes if n.op == "placeholder"].index(node)
    val = node.meta.get("val")
    if index >= len(_real_inputs) or not isinstance(val, torch.Tensor):
        return None
    t = _real_inputs[index]
    if not isinstance(t, torch.Tensor) or (t.shape, t.dtype, t.stride()) != (val.shape, val.dtype, val.stride()):
        return None
    return t


# --- where kernels can run ----------------------------------------------------------------------------


def interpret_mode() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_version() -> Optional[tuple]:
    try:
        import triton
    except ImportError:
        return None
    parts = []
    for p in triton.__version__.split(".")[:2]:
        parts.append(int("".join(ch for ch in p if ch.isdigit()) or 0))
    return tuple(parts)


def device_unsupported(device: torch.device) -> Optional[str]:
    """Why tritonfuse kernels cannot run on ``device``, or None when they can."""
    tv = _triton_version()
    if tv is None:
        return "triton is not installed"
    if tv < (3, 2):
        return f"triton {'.'.join(map(str, tv))} is older than 3.2"
    if device.type == "cuda":
        if interpret_mode():
            return "TRITON_INTERPRET=1 runs kernels on the CPU only"
        major, _ = torch.cuda.get_device_capability(device)
        if major < 8:
            return f"compute capability {major}.x: tritonfuse kernels need sm_80 or newer"
        return None
    if device.type == "cpu":
        if interpret_mode():
            return None
        return "CPU tensors: Triton kernels run on the CPU only with TRITON_INTERPRET=1"
    return f"device type {device.type!r} is not supported"


# --- op registration ----------------------------------------------------------------------------------


def launcher(kernel):
    """How ops launch ``kernel``: through ``tritonfuse.launch``'s cached fast path on the GPU (Triton's
    per-call binding and autotune look-up cost more host time than a small layer's kernel); directly under
    the CPU interpreter or with ``TRITONFUSE_FAST_LAUNCH=0``; through ``wrap_triton`` while an op body is
    traced for inlining into Inductor's code (``tritonfuse.inline``)."""
    from . import inline

    if inline.active():
        return inline.wrap(kernel)
    if interpret_mode() or not config.fast_launch_enabled():
        return kernel
    from . import launch
    return launch.fast(kernel)


_lib = None


def _infer_schema(fn: Callable) -> str:
    infer = getattr(torch.library, "infer_schema", None)
    if infer is None:  # torch < 2.5 kept it private
        from torch._library.infer_schema import infer_schema as infer
    return infer(fn, mutates_args=())


def kernel_op(qualname: str, fake: Callable, inline=False) -> Callable:
    """Define the torch op ``qualname`` with ``fn`` as its implementation and ``fake`` as its fake (meta)
    implementation; returns the op.

    ``inline``: True, or a function of the op's arguments (fake tensors) returning None or why not, lets
    ``tritonfuse.inline`` trace the body into Inductor's graph on the GPU: every launch in ``fn`` must go
    through ``launcher()``, and ``fn`` must run on fake tensors (no data pointers, no synchronisation).

    Defined with ``torch.library.Library`` rather than ``custom_op``/``triton_op``: the replacements call
    these ops from Inductor's post-grad graph, where either is an opaque call, and the ``custom_op``
    wrapper costs ~4x more per call (47 vs 11 us measured on the H100 host), which decode-sized layers pay
    on every site. On the GPU, ops that allow it are not called at all: ``tritonfuse.inline`` traces their
    bodies into Inductor's graph (what ``triton_op`` does, but after our post-grad replacements, which run
    past the point where Inductor decomposes a ``triton_op``). The CPU interpreter calls the op.

    Example::

        @kernel_op("tritonfuse::scale", fake=lambda x, s: torch.empty_like(x))
        def scale(x: torch.Tensor, s: float) -> torch.Tensor:
            ...
    """

    def deco(fn: Callable) -> Callable:
        global _lib
        ns, name = qualname.split("::")
        if _lib is None:
            _lib = torch.library.Library(ns, "FRAGMENT")
        _lib.define(name + _infer_schema(fn))
        _lib.impl(name, fn, "CompositeExplicitAutograd")
        torch.library.register_fake(qualname, fake, lib=_lib)
        op = getattr(getattr(torch.ops, ns), name)
        if inline:
            from . import inline as _inline

            _inline.register(op.default, fn, None if inline is True else inline)
        return op

    return deco


# --- kernel failures ----------------------------------------------------------------------------------

_failed: dict[str, str] = {}


_run = threading.local()  # this thread's compile-time flags: graphs (in_cuda_graphs), probing (one_config)


@contextlib.contextmanager
def _flag(name: str, on: bool):
    before = getattr(_run, name, False)
    setattr(_run, name, on)
    try:
        yield
    finally:
        setattr(_run, name, before)


def one_config():
    """Inside, the fast launcher launches an autotuned kernel with its first config alone (the tuner's
    pruning applied), untuned and uncached: for probes and self-checks on toy inputs, which check that a
    variant compiles and computes the right thing. Tuning each at its toy shape compiled every config for a
    shape no model has (on the H200, 6 of bert-base's 12 attention compiles, 1.3 s each)."""
    return _flag("probing", True)


def probing() -> bool:
    return getattr(_run, "probing", False)


# --- the survey: a first compile's kernels sent to compile before its first site is timed -----------------
# Timing a site compiles its kernel's configs first (in Inductor's workers, see launch.compile_elsewhere), so a
# first compile alternated: compile one site's configs and wait, time it, compile the next site's. On the
# H200, resnet50's first compile spent 14 s of its 45 s of passes waiting on those compiles and 12.5 s more
# compiling single-config launches in the main process, while the 16 workers mostly idled. So before the
# passes that decide, the backend runs the families' checks once on a copy of the graph (``surveying``): a
# measured choice that would time a site calls its sides with launches that only send their compiles to the
# workers (``compiling_ahead``), and decides nothing. A kernel's probe (``guarded_probe``) sends its compile the
# same way and is taken to work; the real passes run it. They then find all of these compiled or compiling.


class Ahead(Exception):
    """Raised in place of a launch that cannot be skipped while ``compiling_ahead``: its compiles were sent."""


@contextlib.contextmanager
def surveying():
    """Inside, ``measured_choice`` times nothing and decides nothing: it sends the sides of each site not
    measured yet to compile (``compiling_ahead``) and leaves the site to Inductor. The site records made
    inside are dropped on the way out (the passes that follow record their own)."""
    with _lock:
        before = dict(_pending)
    _take_measured()
    try:
        with _flag("survey", True):
            yield
    finally:
        _take_measured()
        with _lock:
            _pending.clear()
            _pending.update(before)


def in_survey() -> bool:
    return getattr(_run, "survey", False)


def compiling_ahead() -> bool:
    """True while a survey calls a site's sides: a kernel launch sends its compiles to the workers and does not
    run (the fast launcher returns without launching; a launch through Triton's own path raises ``Ahead``)."""
    return getattr(_run, "ahead", False)


_surveyed = 0  # measured choices whose sides a survey called, since reset() (for tests and the report)
_surveyed_keys: set = set()  # ... their keys, in the graph being compiled
# the probes a survey ran, in the graph being compiled: once each (sites and patterns share variants, and each
# run makes its inputs and an fp64 reference on the host: bert-base's survey ran 99, 1.9 s on the H200)
_surveyed_probes: set = set()
# A survey sends no more sites than the graph's timing budget can time at this many seconds a site (resnet50's
# first compile on the H200 timed 41 sites in 14.4 s): compiles past that would only be waited for by
# Inductor's own kernels, queued behind them in the same workers
SURVEY_SITE_S = 0.25


def surveyed() -> int:
    return _surveyed


def _call_ahead(calls: list) -> None:
    """Call each of ``calls`` (real tensors, outside Inductor's fake mode) with launches that send their
    compiles ahead and do not run. Any error is ignored: ``Ahead``, what a call makes of outputs never
    computed, or an error the pass that decides meets again and handles as it does."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily(), torch.no_grad(), _flag("ahead", True):
        for f in calls:
            try:
                f()
            except Exception:  # noqa: BLE001 - see above
                pass


def _survey_site(ours: Callable[[], object], theirs: list, shared) -> None:
    """Call a site's sides with launches that send their compiles ahead (``_call_ahead``)."""
    global _surveyed
    _call_ahead([ours, *theirs] + ([shared[0]] if shared is not None else []))
    with _lock:
        _surveyed += 1


def guarded_probe(key: str, probe: Callable[[], None]) -> Optional[str]:
    """Run ``probe`` (a small launch of one kernel variant) once per ``key``.

    Returns None when the variant compiles and launches, else the reason; warns once per failing variant.
    With ``TRITONFUSE_FALLBACK_ON_ERROR=0`` the error is raised instead.
    """
    if key in _failed:
        return _failed[key] or None
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    if in_survey():
        # (see surveying): the probe's launches send their compiles ahead and do not run; the variant is
        # taken to work for now, and the pass that decides runs the probe, its compile done or under way
        if key not in _surveyed_probes:
            _surveyed_probes.add(key)
            with one_config():
                _call_ahead([probe])
        return None
    try:
        # pattern checks run under Inductor's fake mode; the probe needs real tensors
        with unset_fake_temporarily(), torch.no_grad(), one_config():
            probe()
        _failed[key] = ""
        return None
    except Exception as e:  # any compile or launch error: leave the site to Inductor
        return kernel_failed(key, e)


def kernel_failed(key: str, e: Exception) -> str:
    """Record that kernel variant ``key`` raised ``e`` (a compile or launch error met while probing, gating
    or timing a site) and return the reason its sites are left to Inductor; warns once per variant. With
    ``TRITONFUSE_FALLBACK_ON_ERROR=0`` the error is raised instead."""
    if not config.fallback_enabled():
        raise e
    reason = f"kernel {key} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if key not in _failed:
        warnings.warn(f"tritonfuse: {reason}; its sites are left to Inductor", stacklevel=3)
    _failed[key] = reason
    return reason


# --- measured choice: a tritonfuse kernel serves a site only where it is the faster ----------------------

_choices: Optional[dict] = None
_measure_spent = 0.0  # seconds spent timing in the graph being compiled (config.measure_budget)
_deferred = False  # a site of the graph being compiled was not measured for want of budget
# what tritonfuse added to the compiles since reset(), for the report: its passes' wall time, the part of it
# spent timing sites, and the measured choices made by timing now, read from kept records (a shape timed
# before, in this compile or an earlier one), or put off
_NO_COMPILE_TIME = {"graphs": 0, "passes_s": 0.0, "timing_s": 0.0, "timed": 0, "recalled": 0, "deferred": 0}
_compile_time = dict(_NO_COMPILE_TIME)


def note_passes(seconds: float, graph: bool = True) -> None:
    """One graph's passes took ``seconds`` (the backend calls this); ``graph`` False: a joint graph's, whose
    forward and backward are counted as the graphs they become."""
    with _lock:
        _compile_time["graphs"] += int(graph)
        _compile_time["passes_s"] += seconds


def compile_time() -> dict:
    """What tritonfuse added to the compiles since ``reset()``: ``graphs``, ``passes_s`` (its passes' wall
    time), ``timing_s`` (the part spent timing sites against what they replace), and the measured choices:
    ``timed`` now, ``recalled`` from kept records (a shape timed before), ``deferred`` past the budget."""
    with _lock:
        return dict(_compile_time)


def choices_path():
    import pathlib

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "tritonfuse" / "choices.json"


_CODE_PACKAGES = ("tritonfuse.patterns", "tritonfuse.kernels")


@functools.lru_cache(maxsize=None)
def source_digest() -> str:
    """tritonfuse's code (the package, its patterns and its kernels), hashed once a process: a graph compiled,
    a pattern traced or a choice timed by other code is not reused."""
    h = hashlib.sha256()
    root = pathlib.Path(__file__).resolve().parent
    for d in (root, *(pathlib.Path(importlib.import_module(p).__file__).parent for p in _CODE_PACKAGES)):
        for f in sorted(d.glob("*.py")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def switches() -> tuple:
    """The module switches of tritonfuse's pattern and kernel modules as they are set now (their upper-case
    scalars: ``patterns.attention.TABLES``, ``kernels.int8.MAGIC_ROUNDING``, ...). The A/B scripts turn them, so
    they key what the code's source keys: Inductor's graph cache and the measured choices. (In the 56th
    session a gated MLP timed with a switch since removed, ``kernels.int8.GATED_PAIRS``, on (2.4x slower) was
    recalled with it off: llama-1b-prefill int8 ran its gated MLPs in bf16, 25.3 ms against 21.2.)"""
    found = []
    for name in _code_modules():
        try:
            module = sys.modules.get(name) or importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a module that does not import serves nothing; its pass says why
            continue
        found += [(name, k, v) for k, v in sorted(vars(module).items())
                  if k.isupper() and isinstance(v, (bool, int, float, str))]
    return tuple(found)


@functools.lru_cache(maxsize=None)
def _code_modules() -> tuple:
    return tuple(package if f.stem == "__init__" else f"{package}.{f.stem}" for package in _CODE_PACKAGES
                 for f in sorted(pathlib.Path(importlib.import_module(package).__file__).parent.glob("*.py")))


def _choice_key(key: str, device: torch.device) -> str:
    import triton

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    # "stream": timed back to back (_bench_stream); records timed the older way are measured again
    return f"{key}|{name}|torch {torch.__version__}|triton {triton.__version__}|stream{_code_tag()}"


def _code_tag() -> str:
    # the end of a record's name: the code that was timed, its switches as set (another tritonfuse times again)
    return "|code " + hashlib.sha256(repr((source_digest(), switches())).encode()).hexdigest()[:16]


def read_json(path, default=None):
    """The JSON value in ``path``, or ``default`` where the file is missing or unreadable (tritonfuse's disk
    stores are caches: losing one only costs redoing its work)."""
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def write_json(path, value, **dump_kw) -> None:
    """Write ``value`` to ``path`` atomically (a process-private temporary file, then a rename), so a reader in
    another process never sees half a file; a read-only cache is not an error."""
    import json

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value, **dump_kw))
        tmp.replace(path)
    except OSError:
        pass


def _load_choices() -> dict:
    global _choices
    if _choices is None:
        _choices = read_json(choices_path(), {})
    return _choices


def timing_enabled(device: torch.device) -> bool:
    """True when ``measured_choice`` times sites on ``device`` (a GPU, TRITONFUSE_MEASURE on)."""
    return device.type == "cuda" and not interpret_mode() and config.measure_enabled()



def deferred() -> bool:
    """True when a site of the graph being compiled was left to Inductor because the timing budget ran out:
    that graph is not the one to serve from Inductor's cache (see ``backend.TritonfusePasses.uuid``)."""
    return _deferred


# A graphed timing times GPU time alone, from replayed CUDA graphs. Timed with Triton's do_bench_cudagraph
# (a graph of about ``rep`` ms of calls, replayed ten times, median), one side after the other, a side's
# timing spread by up to -10%/+13% at 10 ms on the H200 (a 0.1 ms GEMM; a conv, a norm: under 2%) against 2%
# at 50 ms (scripts/graph_bench_noise.py), and a close site cost over a second of GPU time. So each side's
# calls are captured once, in a graph of about GRAPH_UNIT_MS, and the two sides' graphs are replayed in
# alternating rounds (which side goes first alternates too): a clock that drifts through the timing moves
# both sides of a round alike, and the median of the per-round ratios decides. GRAPH_ROUNDS[0] rounds
# first; a site whose ratio lies within QUICK_CLEAR of 1, where the choice is close, runs GRAPH_ROUNDS[1]
# in all. A single side (``_bench(fn, True, rep)``) is the median of rep / GRAPH_UNIT_MS replays.
GRAPH_UNIT_MS, GRAPH_ROUNDS = 1.0, (10, 40)
QUICK_REP_MS, FULL_REP_MS, QUICK_CLEAR = 10, 50, 0.25
# An op call's back-to-back timing includes the host's time, and the H200 hosts have slow spells of half a
# second or more in which every call takes up to twice as long (benchmarks/results/diagnostics/README.md,
# twenty-first and twenty-second sessions): timed one side after the other, a site's choice flipped with
# them. So the two sides alternate in this many rounds (about 10 ms of calls a side each, as many calls
# as one side took before) and the median of the per-round ratios decides.
STREAM_ROUNDS = 5
# An op call whose host time is at most this fraction of its kernel's GPU time keeps the stream ahead of
# the GPU: in a model the call costs its GPU time, and the host's slow spells (which alternating rounds
# only average out) do not decide it. Such a site is timed as GPU time on both sides (graphed). On the
# H200 at bert-base's GEMM+GELU (16384x768x3072 fp16), the op's host time was 0.12 ms against 0.18 ms of
# GPU time (Inductor's path 0.21): timed in rounds during the compile it lost 1.04, alone it won 0.95-0.98
# (scripts/linear_site_probe.py; benchmarks/results/diagnostics/README.md, twenty-third session).
HOST_HIDDEN = 0.8


def _bench(fn, graphed: bool = False, rep: int = FULL_REP_MS, runs: int = 5) -> float:
    if graphed:
        # GPU time alone: what a kernel Inductor launches from its own code costs once the host is not the
        # bottleneck (both sides are launched by Inductor's wrapper then)
        import statistics

        with _side_stream():
            replay = _Replay([fn])
            for _ in range(max(5, round(rep / GRAPH_UNIT_MS))):
                replay.replay()
            return statistics.median(replay.times())
    return _bench_stream(fn, runs)


def _side_stream():
    """A stream of its own for a graphed timing, as Triton's do_bench_cudagraph uses (capture needs a stream
    other than the default one)."""
    return torch.cuda.stream(torch.cuda.Stream())


class _Replay:
    """Calls of ``fns`` (in order: one call of a side) captured back to back in a CUDA graph, as many as take
    about ``GRAPH_UNIT_MS``. ``replay()`` enqueues one replay between two events; ``times()`` waits for them
    and gives ms per call, one value per replay."""

    def __init__(self, fns: list[Callable[[], object]]):
        def once():
            for f in fns:
                f()

        once()  # compiled, tuned and warm outside the graph
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(3):
            once()
        end.record()
        torch.cuda.synchronize()
        estimate = start.elapsed_time(end) / 3
        self.n = max(1, min(1000, int(GRAPH_UNIT_MS / max(estimate, 1e-3))))
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            for _ in range(self.n):
                once()
        self.graph.replay()  # (the first replay uploads the graph)
        self.events: list = []

    def replay(self) -> None:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        self.graph.replay()
        end.record()
        self.events.append((start, end))

    def times(self) -> list[float]:
        torch.cuda.synchronize()
        return [s.elapsed_time(e) / self.n for s, e in self.events]


def _graph_pair(ours: Callable[[], object], theirs: list[Callable[[], object]],
                ours_extra_ms: float = 0.0) -> tuple[float, float, float, int]:
    """(ours ms, theirs ms, the median of the per-round ratios, rounds run): each side's GPU time from its
    graph, the two graphs replayed in alternating rounds (see ``GRAPH_ROUNDS``). ``ours_extra_ms`` is added
    to ours in each round (a shared kernel's share)."""
    import statistics

    with _side_stream():
        a, b = _Replay([ours]), _Replay(list(theirs))
        done = 0
        for rounds in GRAPH_ROUNDS:
            for i in range(done, rounds):
                for side in ((a, b) if i % 2 == 0 else (b, a)):
                    side.replay()
            done = rounds
            t_a = [t + ours_extra_ms for t in a.times()]
            t_b = b.times()
            ratio = statistics.median(x / y if y > 0 else float("inf") for x, y in zip(t_a, t_b))
            if abs(ratio - 1.0) >= QUICK_CLEAR:
                break
    return statistics.median(t_a), statistics.median(t_b), ratio, done


def _stream_rounds(ours: Callable[[], object], theirs: list,
                   keep: Optional[float] = None) -> tuple[float, float, float, int]:
    """(ours ms, theirs ms, the median of the per-round ratios ours / theirs, rounds run): op calls timed
    back to back, the two sides alternating in ``STREAM_ROUNDS`` rounds (which side goes first alternates
    too). With ``keep`` (the ratio at or under which ours is chosen), the rounds stop once a majority of
    them lies on one side of it: the median of all of them would lie there too, so the choice is the same."""
    import statistics

    t_ours, t_theirs, ratios = [], [], []
    rounds = max(1, STREAM_ROUNDS)
    runs = 5 if rounds <= 1 else 1
    for i in range(rounds):
        if i % 2:
            b = sum(_bench(f, False, runs=runs) for f in theirs)
            a = _bench(ours, False, runs=runs)
        else:
            a = _bench(ours, False, runs=runs)
            b = sum(_bench(f, False, runs=runs) for f in theirs)
        t_ours.append(a)
        t_theirs.append(b)
        ratios.append(a / b if b > 0 else float("inf"))
        if keep is not None and max(sum(r <= keep for r in ratios), sum(r > keep for r in ratios)) > rounds // 2:
            break
    return statistics.median(t_ours), statistics.median(t_theirs), statistics.median(ratios), len(ratios)


def _bench_stream(fn, runs: int = 5) -> float:
    """ms per call of ``fn`` enqueued back to back, as a model's stream runs an op call: its host cost shows
    only where it exceeds the GPU time. (``do_bench`` flushes L2 before each call and times each alone, so
    a call whose host path outlasts the flush kernel is charged its host time: on the H200 an op-called
    GEMM+GELU timed 0.213 ms there against 0.170 ms back to back, and lost a site it wins in the model.)"""
    import statistics
    import time

    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    n = max(5, min(200, int(0.01 / max(time.perf_counter() - t0, 1e-6))))  # about 10 ms per run
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / n)
    return statistics.median(times)


def in_cuda_graphs(on: bool):
    """While a graph compiled for Inductor's CUDA graphs (``mode="reduce-overhead"``) is compiled: every site
    is timed as its kernels alone, since a replayed graph pays no op call's host cost."""
    return _flag("graphs", on)


def runs_in_cuda_graphs() -> bool:
    """The graph being compiled will run inside CUDA graphs (Inductor's, or the caller's: TRITONFUSE_CUDA_GRAPHS)."""
    return getattr(_run, "graphs", False) or str(config.cuda_graphs) == "1"


# host_kind -> the least host time (ms) one op call of that kind took in this process (``measured_choice``)
_host_floor: dict = {}
HOST_CLEAR = 0.25  # a site is decided on the floor alone where it exceeds the vendor path by this fraction


def _host_time(fn: Callable[[], object], device: torch.device, calls: int = 20) -> float:
    """ms of host time per call of ``fn``: calls enqueued without a synchronisation (the GPU keeps up, so
    the wall time is the host's; a GPU-bound call reads its launch time, less than its timing)."""
    import time

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    ms = (time.perf_counter() - t0) / calls * 1e3
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return ms


def _hidden_gpu_ms(ours: Callable[[], object], host: float) -> Optional[float]:
    """``ours``'s GPU time (ms, graphed at ``QUICK_REP_MS``) where ``host`` ms of host time per call is at
    most ``HOST_HIDDEN`` of it, else None. A call that CUDA graphs cannot capture is not decided on GPU time
    (None)."""
    if HOST_HIDDEN <= 0:
        return None
    try:
        gpu = _bench(ours, True, rep=QUICK_REP_MS)
    except Exception:  # noqa: BLE001 - timed back to back in rounds instead, as before
        return None
    return gpu if host <= HOST_HIDDEN * gpu else None


def measured_choice(key: str, device: torch.device, ours: Callable[[], object],
                    theirs: list[Callable[[], object]], graphed: bool = False,
                    shared: Optional[tuple[Callable[[], object], float]] = None,
                    host_kind: Optional[str] = None) -> dict:
    """Time ``ours`` against the sum of ``theirs`` (the vendor path it replaces) once per key, GPU and
    versions; the record ``{"ours_ms", "theirs_ms", "use"}`` is kept in ``choices_path()``. An op call whose
    host time (``host_ms`` in the record) is at most ``HOST_HIDDEN`` of its GPU time is decided on the two
    sides' GPU times (``_graph_pair``: replayed graphs, in alternating rounds whose median ratio, ``ratio`` in
    the record, decides). Other op calls (timed back to back, host time included) alternate with ``theirs`` in
    ``STREAM_ROUNDS`` rounds, and the record adds ``ratio``, the median of the per-round ratios, which decides.

    ``shared``: (a kernel, this site's share of it): work our path adds that several sites share (a norm's
    kernel quantizing its output once for every int8 GEMM that reads it); the kernel's GPU time (it runs
    inside a kernel that is launched anyway: no host cost) times the share is added to ours. The key must
    say the share.

    ``graphed``: the site's kernels will be inlined into Inductor's code (``tritonfuse.inline``), so both
    sides are timed as GPU time alone (replayed CUDA graphs), without the host cost of calling an op. A site
    called as an op in a model that runs inside CUDA graphs (``runs_in_cuda_graphs()``) is timed the same way.

    ``host_kind``: op calls of this kind share a host cost that no kernel config changes (a conv op's Python
    path, its descriptors and launch). After a site of the kind is timed, its call's host time is kept; a
    later site of the kind whose vendor path (timed first) takes less than that floor, by ``HOST_CLEAR``,
    is left to it without compiling or tuning our kernel: ``{"host_floor": True, "ours_ms": the floor}``.

    Off the GPU, or with ``TRITONFUSE_MEASURE=0``, nothing is timed and ``use`` is True. Once this graph's
    timing has taken ``TRITONFUSE_MEASURE_BUDGET_S`` seconds, a key not yet measured gets
    ``{"use": False, "unmeasured": True}`` (Inductor's path, this time) and is measured by a later compile.
    In a survey (``surveying``) a key not measured yet has its sides' compiles sent ahead, and every key gets
    ``{"use": False, "unmeasured": True, "surveyed": True}``.
    """
    global _measure_spent, _deferred
    if not timing_enabled(device):
        return {"use": True}
    if in_survey():  # (see surveying): nothing timed, counted or decided
        full, _ = _choice_key_full(key, graphed, shared, device)
        # (each key once: the matcher tries several patterns on a site that no pattern replaces)
        if (full not in _load_choices() and full not in _surveyed_keys
                and len(_surveyed_keys) * SURVEY_SITE_S < config.measure_budget()):
            _surveyed_keys.add(full)
            _survey_site(ours, theirs, shared)
        return {"use": False, "unmeasured": True, "surveyed": True}
    import time

    from torch._subclasses.fake_tensor import unset_fake_temporarily

    full, graphed = _choice_key_full(key, graphed, shared, device)
    choices = _load_choices()
    if full in choices and "ours_ms" in choices[full]:  # (older versions also kept {"pending": True})
        rec = _decided(choices[full])
        _last_measured.rec = rec
        _compile_time["recalled"] += 1
        return rec
    if _measure_spent >= config.measure_budget():
        _deferred = True
        _compile_time["deferred"] += 1
        return {"use": False, "unmeasured": True}
    stream = not graphed and shared is None
    floor = _host_floor.get(host_kind) if stream and host_kind else None
    t0 = time.perf_counter()
    try:
        with unset_fake_temporarily(), torch.no_grad():
            if floor is not None:  # the vendor path first: a site it beats by the floor needs no kernel of ours
                for f in theirs:
                    f()
                t_theirs = sum(_bench(f, False) for f in theirs)
                if floor > t_theirs * (1.0 + HOST_CLEAR):
                    return _kept(choices, full, {"ours_ms": round(floor, 5), "theirs_ms": round(t_theirs, 5),
                                                 "host_floor": True})
            ours()  # compile and autotune outside the timing
            for f in theirs:
                f()
            if shared is not None:
                shared[0]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            def gpu_timings() -> tuple[float, float, float, int]:
                # (a shared kernel's share, GPU time, is added to ours in each round)
                extra = shared[1] * _bench(shared[0], True, rep=QUICK_REP_MS) if shared is not None else 0.0
                return _graph_pair(ours, theirs, extra)

            ratio = hidden = None  # hidden: the op call's host time, where it hides behind its kernel
            if graphed:
                t_ours, t_theirs, ratio, rounds = gpu_timings()
            elif shared is None:
                host = None
                if host_kind or HOST_HIDDEN > 0:
                    host = min(_host_time(ours, device) for _ in range(3))  # the quietest of three
                    if host_kind:
                        _host_floor[host_kind] = min(host, _host_floor.get(host_kind, host))
                if host is not None and _hidden_gpu_ms(ours, host) is not None:
                    hidden = host
                    t_ours, t_theirs, ratio, rounds = gpu_timings()
                else:
                    t_ours, t_theirs, ratio, rounds = _stream_rounds(
                        ours, theirs, keep=1.0 - config.measure_margin_fraction())
            else:  # (a shared kernel's share is GPU time: added to each side's whole timing)
                t_ours = _bench(ours, False) + shared[1] * _bench(shared[0], True)
                t_theirs = sum(_bench(f, False) for f in theirs)
    finally:
        spent = time.perf_counter() - t0
        _measure_spent += spent
        _compile_time["timing_s"] += spent
        _compile_time["timed"] += 1
    rec = {"ours_ms": round(t_ours, 5), "theirs_ms": round(t_theirs, 5)}
    if hidden is not None:  # GPU times decided: the op call's host time hides behind its kernel
        rec["host_ms"] = round(hidden, 5)
    if ratio is not None and (graphed or hidden is not None or STREAM_ROUNDS > 1):
        rec["ratio"], rec["rounds"] = round(ratio, 4), rounds
    return _kept(choices, full, rec)


def _choice_key_full(key: str, graphed: bool, shared, device: torch.device) -> tuple[str, bool]:
    """The record name of a measured choice (see ``measured_choice``), and whether its sides are timed as GPU
    time alone (``graphed``, or an op call in a model that runs inside CUDA graphs)."""
    suffix = "|inline" if graphed else ""
    if not graphed and runs_in_cuda_graphs():  # an op call, replayed from a CUDA graph: no host cost either
        graphed, suffix = True, "|graphs"
    # (op calls: "|rounds2", in alternating rounds or as GPU time where the host keeps ahead; records timed
    # one side after the other, or always in rounds ("|rounds"), are redone)
    return _choice_key(key + suffix + ("" if graphed or shared is not None else "|rounds2"), device), graphed


def _kept(choices: dict, full: str, rec: dict) -> dict:
    """Keep the new record ``rec`` under ``full`` on disk; return it decided (``_decided``)."""
    choices[full] = {**rec, "kept": int(time.time())}
    _save_choices(choices)
    rec = _decided(rec)
    _last_measured.rec = rec
    return rec


def _decided(rec: dict) -> dict:
    """``rec`` with ``use``: our kernel serves the site where it measured faster by the margin
    (``TRITONFUSE_MEASURE_MARGIN``; decided on every read, so a new margin applies to kept timings)."""
    if "ours_ms" not in rec or "theirs_ms" not in rec:
        return rec
    keep = 1.0 - config.measure_margin_fraction()
    ratio = cost_ratio(rec)  # timed in alternating rounds: the median of their ratios
    return {**rec, "use": ratio <= keep if ratio is not None else rec["ours_ms"] <= 0}  # (theirs rounded to 0)


def cost_ratio(rec: dict) -> Optional[float]:
    """A measured choice's time for our kernel over the time for what it replaces (below 1: ours is faster),
    the median of alternating rounds where it was timed so; None where it was not timed."""
    if "ratio" in rec:
        return rec["ratio"]
    if rec.get("theirs_ms") and "ours_ms" in rec:
        return rec["ours_ms"] / rec["theirs_ms"]
    return None


def cheaper(a: dict, b: Optional[dict]) -> bool:
    """Measured choice ``a`` cost no more than ``b`` against the same vendor path (the lower ``cost_ratio``);
    True where ``a`` was forced or ``b`` is missing or was not timed."""
    if a.get("forced") or b is None:
        return True
    ra, rb = cost_ratio(a), cost_ratio(b)
    return rb is None or (ra is not None and ra <= rb)


# A record of other code (another tritonfuse, other switches) is dropped from the store once it was kept this
# long ago: each upgrade times its sites anew, and the store would only grow
KEEP_OTHER_S = 30 * 86400


def _save_choices(choices: dict) -> None:
    this, now = _code_tag(), time.time()
    for full in [k for k, r in choices.items() if not k.endswith(this) and now - r.get("kept", 0) > KEEP_OTHER_S]:
        del choices[full]
    write_json(choices_path(), choices, indent=1, sort_keys=True)  # lost: measured again in the next process


def slower_reason(rec: dict, vs: str) -> str:
    """Why a measured choice left a site to Inductor, for the report."""
    if rec.get("unmeasured"):
        return (f"not measured yet: this graph's timing budget (TRITONFUSE_MEASURE_BUDGET_S="
                f"{config.measure_budget_s}) was spent; a later compile measures it")
    if rec.get("host_floor"):
        return (f"{vs} took {rec['theirs_ms']:.3f} ms here, less than the host time alone of this kind of op "
                f"call ({rec['ours_ms']:.3f} ms, the least one took in this process): our kernel was not compiled")
    times = f"{rec['ours_ms']:.3f} vs {rec['theirs_ms']:.3f} ms"
    if "host_ms" in rec:
        times += f" of GPU time; the op call's {rec['host_ms']:.3f} ms of host time hides behind its kernel"
    if "ratio" in rec:
        times += f", median ratio {rec['ratio']:.2f} over {rec.get('rounds', '?')} alternating rounds"
    if (rec["ratio"] <= 1.0) if "ratio" in rec else (rec["ours_ms"] <= rec["theirs_ms"]):
        return (f"measured no faster than {vs} here by the {config.measure_margin_fraction():.0%} margin "
                f"(TRITONFUSE_MEASURE_MARGIN; {times})")
    return f"measured slower than {vs} here ({times})"
