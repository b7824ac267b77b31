"""Traced search patterns kept on disk (patterns.common.pattern_cache): a second build replays them, and
the passes it builds match and rewrite exactly as freshly traced ones do."""

from __future__ import annotations

import pytest
import torch
from torch._inductor import pattern_matcher as pm
from torch._inductor.pattern_matcher import PatternMatcherPass, PatternPrettyPrinter, register_replacement

from tritonfuse.patterns import common
from tritonfuse.patterns.common import pattern_cache, trace_pattern


@pytest.fixture
def traces(tmp_path, monkeypatch) -> list:
    """A fresh cache directory; the names of the search functions really traced (what pattern_cache falls
    back on), in order."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    real = pm.gen_pattern_and_search_gm

    def counting(*args, **kwargs):
        calls.append(args[0].__name__)
        return real(*args, **kwargs)

    monkeypatch.setattr(pm, "gen_pattern_and_search_gm", counting)
    return calls


def _search_relu(x, w):
    return torch.relu(torch.mm(x, w))


def _search_gelu(x, w):
    return torch.nn.functional.gelu(torch.mm(x, w))


def _replace(x, w):
    return torch.mm(x, w).neg()  # visibly not the original


def _build(key: str, searches=(_search_relu, _search_gelu)) -> PatternMatcherPass:
    p = PatternMatcherPass(pass_name="test_cache")
    inputs = [torch.empty(8, 16), torch.empty(16, 4)]
    with pattern_cache("test", key):
        for search in searches:
            register_replacement(search, _replace, inputs, trace_pattern, p)
    return p


def _printed(p: PatternMatcherPass) -> list:
    return [(k, [PatternPrettyPrinter.run(e.pattern) for e in v]) for k, v in p.patterns.items()]


def _rewrites(p: PatternMatcherPass) -> int:
    x, w = torch.randn(5, 16), torch.randn(16, 3)
    gm = torch.fx.experimental.proxy_tensor.make_fx(lambda x, w: torch.relu(torch.mm(x, w)) + 1)(x, w)
    # the post-grad graph's nodes carry fake values: the check retraces with them
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    FakeTensorProp(gm, FakeTensorMode()).propagate(x, w)
    n = p.apply(gm.graph)
    gm.recompile()
    if n:
        torch.testing.assert_close(gm(x, w), -(x @ w) + 1)
    return n


def test_second_build_replays_and_rewrites_the_same(tmp_path, traces):
    first = _build("k1")
    assert traces == ["_search_relu", "_search_gelu"]
    assert len(list((tmp_path / "tritonfuse" / "patterns").glob("test-k1.pkl"))) == 1
    second = _build("k1")
    assert len(traces) == 2, "the second build traced again"
    assert _printed(second) == _printed(first)
    assert _rewrites(first) == 1
    assert _rewrites(second) == 1


def test_other_key_or_other_calls_trace(traces):
    _build("k1")
    _build("k2")  # other source or settings: nothing replayed
    assert len(traces) == 4
    # the same key with another first search function: that call and every later one are traced
    _build("k1", searches=(_search_gelu, _search_relu))
    assert len(traces) == 6
    p = _build("k1", searches=(_search_gelu, _search_relu))  # re-recorded: replayed now
    assert len(traces) == 6
    assert _rewrites(p) == 1


def test_unreadable_record_traces_again(tmp_path, traces):
    _build("k1")
    path = tmp_path / "tritonfuse" / "patterns" / "test-k1.pkl"
    path.write_bytes(b"not a pickle")
    p = _build("k1")
    assert len(traces) == 4
    assert _rewrites(p) == 1
    assert common._read_record(path), "the record was not written again"


def test_family_pass_from_record_equals_fresh(traces):
    # the real norm_residual pass (96 patterns): traced, then replayed, identical pattern by pattern
    from tritonfuse.patterns import norm_residual

    build = norm_residual._build.__wrapped__
    with pattern_cache("norm_residual", "test"):
        fresh = build()
    n = len(traces)
    assert n > 10
    with pattern_cache("norm_residual", "test"):
        replayed = build()
    assert len(traces) == n
    assert _printed(replayed) == _printed(fresh)


def test_replayed_search_graph_prints_and_reads_as_traced(traces):
    # families read constants from the search graph (conv_bn); Inductor prints it to find duplicates
    inputs = [torch.empty(8, 16), torch.empty(16, 4)]
    got = []
    for _ in range(2):
        with pattern_cache("test", "gm"):
            got.append(pm.gen_pattern_and_search_gm(_search_gelu, inputs, trace_pattern)[1])
    assert len(traces) == 1
    fresh, replayed = got
    assert str(replayed.graph) == str(fresh.graph)
    assert ([(n.op, str(n.target), [a for a in n.args if isinstance(a, (int, float, str))])
             for n in replayed.graph.nodes]
            == [(n.op, str(n.target), [a for a in n.args if isinstance(a, (int, float, str))])
                for n in fresh.graph.nodes])


def test_recorded_values_replay_inside_a_build_only(traces):
    built = []

    def build(n):
        def make():
            built.append(n)
            return {"pattern": n, "op": torch.ops.aten.mm.default}  # ops pickle by name
        return make

    for _ in range(2):
        with pattern_cache("test", "rec"):
            got = [common.recorded(f"call {n}", build(n)) for n in (1, 2)]
        assert got == [{"pattern": n, "op": torch.ops.aten.mm.default} for n in (1, 2)]
    assert built == [1, 2]
    with pattern_cache("test", "rec"):  # another call in the first place: built, and so is the rest
        common.recorded("call 3", build(3))
        common.recorded("call 2", build(2))
    assert built == [1, 2, 3, 2]
    common.recorded("call 1", build(1))  # outside a build: always built
    assert built == [1, 2, 3, 2, 1]


def test_conv_bn_patterns_from_record_equal_fresh(traces, monkeypatch):
    # conv_bn reads each pattern's scalar constants from its search graph: replayed, they must be the same
    from tritonfuse.patterns import conv_bn

    constants = []
    real = conv_bn._constants
    monkeypatch.setattr(conv_bn, "_constants", lambda nodes: constants.append(real(nodes)) or constants[-1])
    passes, counts = [], []
    for _ in range(2):
        passes.append(PatternMatcherPass(pass_name="test_conv_bn"))
        with pattern_cache("conv_bn-cpu", "test"):
            conv_bn._register_patterns(passes[-1], "cpu")
        counts.append((len(traces), len(constants)))
    (traced, registered), again = counts
    assert traced > 10 and again == (traced, 2 * registered), "the second build traced again"
    assert constants[:registered] == constants[registered:]
    assert _printed(passes[1]) == _printed(passes[0])


# --- traces at a match, once per graph (patterns.common.memo_trace) -----------------------------------


def _fake_args(mode, *specs):
    with mode:
        return [torch.empty_strided(size, stride, dtype=dtype) for size, stride, dtype in specs]


def _gelu_mm(x, w):
    return torch.nn.functional.gelu(torch.mm(x, w))


def test_memo_trace_traces_each_distinct_call_once_and_copies_values():
    from torch._subclasses.fake_tensor import FakeTensorMode

    traced = []

    def tracer(fn, args, **kwargs):
        traced.append([tuple(a.shape) for a in args])
        return trace_pattern(fn, args, **kwargs)

    mode = FakeTensorMode()
    site = ((5, 16), (16, 1), torch.float32), ((16, 3), (3, 1), torch.float32)
    with common.trace_memo():
        first = common.memo_trace(tracer, _gelu_mm, _fake_args(mode, *site))
        again = common.memo_trace(tracer, _gelu_mm, _fake_args(mode, *site))
        assert len(traced) == 1, "a repeat of the same site traced again"
        assert again is not first and str(again.graph) == str(first.graph)
        # each copy's nodes hold fake values of their own (Inductor reads shared ones as aliases)
        for a, b in zip(first.graph.nodes, again.graph.nodes):
            if a.op == "call_function":
                assert b.meta["val"] is not a.meta["val"]
                assert b.meta["val"].shape == a.meta["val"].shape
        # another stride, dtype, shape or state (how the site is served) is another trace
        common.memo_trace(tracer, _gelu_mm, _fake_args(mode, ((5, 16), (1, 5), torch.float32), site[1]))
        common.memo_trace(tracer, _gelu_mm, _fake_args(mode, ((5, 16), (16, 1), torch.float16),
                                                       ((16, 3), (3, 1), torch.float16)))
        common.memo_trace(tracer, _gelu_mm, _fake_args(mode, ((6, 16), (16, 1), torch.float32), site[1]))
        common.memo_trace(tracer, _gelu_mm, _fake_args(mode, *site), state=("int8", "w8a8"))
        assert len(traced) == 5
        # example (real) tensors, as a pattern's own build traces them: never kept
        common.memo_trace(tracer, _gelu_mm, [torch.empty(5, 16), torch.empty(16, 3)])
        common.memo_trace(tracer, _gelu_mm, [torch.empty(5, 16), torch.empty(16, 3)])
        assert len(traced) == 7
    common.memo_trace(tracer, _gelu_mm, _fake_args(mode, *site))  # outside a graph's passes: traced
    assert len(traced) == 8


def test_memo_trace_serves_a_search_functions_repeats_its_one_trace(monkeypatch):
    # a search function's trace at a match is only read (made into a pattern to compare): its repeats get
    # the kept trace itself, with no copy and no fake values of their own; a replacement's still get both
    from torch._subclasses.fake_tensor import FakeTensorMode

    traced, copied = [], []
    monkeypatch.setattr(common, "_fresh_copy", lambda gm, args: copied.append(1) or common._copy(gm))

    def tracer(fn, args, **kwargs):
        traced.append(1)
        return trace_pattern(fn, args, **kwargs)

    def search(x, w):
        return torch.nn.functional.gelu(torch.mm(x, w))

    common.search_only(search)
    mode = FakeTensorMode()
    site = ((5, 16), (16, 1), torch.float32), ((16, 3), (3, 1), torch.float32)
    with common.trace_memo():
        first = common.memo_trace(tracer, search, _fake_args(mode, *site))
        assert common.memo_trace(tracer, search, _fake_args(mode, *site)) is first
        assert (len(traced), copied) == (1, [])
        common.memo_trace(tracer, search, _fake_args(mode, ((6, 16), (16, 1), torch.float32), site[1]))
        assert len(traced) == 2  # other shapes: another trace
        replacement = common.memo_trace(tracer, _gelu_mm, _fake_args(mode, *site))
        assert common.memo_trace(tracer, _gelu_mm, _fake_args(mode, *site)) is not replacement
        assert (len(traced), copied) == (3, [1])
    # the families mark their search functions
    from tritonfuse.patterns import norm_residual

    monkeypatch.setattr(common, "_search_fns", __import__("weakref").WeakSet())
    norm_residual._build.cache_clear()
    kept = norm_residual.pattern_pass()
    assert len(common._search_fns) >= 2 and kept is not None
    norm_residual._build.cache_clear()  # (the next build marks its own in the module's set)


def test_memo_trace_traces_symbolic_sizes_each_time():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    traced = []

    def tracer(fn, args, **kwargs):
        traced.append(1)
        return trace_pattern(fn, args, **kwargs)

    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import DimDynamic, StatelessSymbolicContext

    mode = FakeTensorMode(shape_env=ShapeEnv())
    ctx = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC, DimDynamic.STATIC])
    x = mode.from_tensor(torch.empty(5, 16), source=ConstantSource("x"), symbolic_context=ctx)
    w = mode.from_tensor(torch.empty(16, 3))
    assert isinstance(x.shape[0], torch.SymInt)
    with common.trace_memo():
        common.memo_trace(tracer, _gelu_mm, [x, w])
        common.memo_trace(tracer, _gelu_mm, [x, w])
    assert len(traced) == 2


def test_memo_trace_traces_again_where_a_copy_fails(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    traced = []

    def tracer(fn, args, **kwargs):
        traced.append(1)
        return trace_pattern(fn, args, **kwargs)

    def broken(gm, args):
        raise RuntimeError("simulated: a value cannot be propagated")

    monkeypatch.setattr(common, "_fresh_copy", broken)
    mode = FakeTensorMode()
    site = ((5, 16), (16, 1), torch.float32), ((16, 3), (3, 1), torch.float32)
    with common.trace_memo():
        first = common.memo_trace(tracer, _gelu_mm, _fake_args(mode, *site))
        again = common.memo_trace(tracer, _gelu_mm, _fake_args(mode, *site))
    assert len(traced) == 2 and again is not first and str(again.graph) == str(first.graph)


def test_memo_trace_keeps_the_trace_as_traced():
    # the pattern matcher may write into the graph it is given (meta of a one-node match): a later repeat
    # gets the trace as it was, not as the first caller left it
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    site = ((5, 16), (16, 1), torch.float32), ((16, 3), (3, 1), torch.float32)
    with common.trace_memo():
        first = common.memo_trace(trace_pattern, _gelu_mm, _fake_args(mode, *site))
        text = str(first.graph)
        for n in first.graph.nodes:
            n.meta["stack_trace"] = "written by the first caller"
        again = common.memo_trace(trace_pattern, _gelu_mm, _fake_args(mode, *site))
    assert str(again.graph) == text
    assert all(n.meta.get("stack_trace") != "written by the first caller" for n in again.graph.nodes)
