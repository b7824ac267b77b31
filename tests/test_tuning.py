"""tritonfuse.tuning: autotune choices for configs with a pre-hook (which Triton does not keep on disk) are
kept by tritonfuse and handed to the next process's autotuner; checked on stand-in kernels (no launch)."""

import json

import pytest
import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from tritonfuse import tuning


def _kernel(x_ptr, n, N_BUCKET: tl.constexpr, BLOCK: tl.constexpr):
    pass  # never compiled


def _other(x_ptr, n, N_BUCKET: tl.constexpr, BLOCK: tl.constexpr):
    x = 1  # another source: another kernel  # noqa: F841


def _hook(nargs):
    pass


def _configs(blocks=(32, 64, 128)):
    return [triton.Config({"BLOCK": b}, num_warps=4, pre_hook=_hook) for b in blocks]


def _tuner(fn=_kernel, blocks=(32, 64, 128)):
    # a new process's tuner: a fresh Autotuner over the same source and configs
    return triton.autotune(configs=_configs(blocks), key=["N_BUCKET"])(JITFunction(fn))


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(tuning, "_records", None)
    return tmp_path / "tritonfuse" / "autotune.json"


def test_key_is_the_autotuners():
    # the autotuner looks its choice up under (key= values, then each tensor argument's dtype)
    t = _tuner()
    x = torch.randn(10, dtype=torch.float16)
    assert tuning.tuning_key(t, (x, 10), {"N_BUCKET": 16}) == (16, "torch.float16")


@triton.jit
def _scale(x_ptr, y_ptr, n, N_BUCKET: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * 2, mask=offs < n)


def test_key_matches_what_the_autotuner_caches(device, monkeypatch):
    # run Triton's own autotuner (its timing stubbed: the interpreter has no GPU timer): its cache holds
    # exactly the key computed here
    tuned = triton.autotune(configs=[triton.Config({"BLOCK": b}) for b in (16, 32)], key=["N_BUCKET"])(_scale)
    monkeypatch.setattr(tuned, "_bench", lambda *a, config, **k: [float(config.kwargs["BLOCK"])] * 3)
    x = torch.randn(40, device=device)
    y = torch.empty_like(x)
    args, kwargs = (x, y, 40), {"N_BUCKET": 64}
    tuned[lambda m: (triton.cdiv(40, m["BLOCK"]),)](*args, **kwargs)
    torch.testing.assert_close(y, 2 * x)
    assert list(tuned.cache) == [tuning.tuning_key(tuned, args, kwargs)]


def test_choice_is_kept_and_restored(store):
    x = torch.randn(100)
    args, kwargs = (x, 100), {"N_BUCKET": 128}
    first = _tuner()
    assert not tuning.restore(first, args, kwargs)  # nothing kept yet: the autotuner times the configs
    first.cache[tuning.tuning_key(first, args, kwargs)] = first.configs[2]  # what its timing chose
    tuning.save(first, args, kwargs)
    assert len(json.loads(store.read_text())) == 1

    tuning._records = None  # the next process
    second = _tuner()
    assert tuning.restore(second, args, kwargs) is second.configs[2]
    assert second.cache == {(128, "torch.float32"): second.configs[2]}  # its own config object, pre-hook and all
    # another tuning key, another config list or another kernel source: not restored
    assert not tuning.restore(_tuner(), (x, 100), {"N_BUCKET": 256})
    assert not tuning.restore(_tuner(blocks=(32, 64, 128, 256)), args, kwargs)
    assert not tuning.restore(_tuner(fn=_other), args, kwargs)
    assert not tuning.restore(_tuner(), (x.half(), 100), kwargs)


def test_a_record_that_does_not_match_is_ignored(store):
    x = torch.randn(100)
    args, kwargs = (x, 100), {"N_BUCKET": 128}
    t = _tuner()
    t.cache[tuning.tuning_key(t, args, kwargs)] = t.configs[1]
    tuning.save(t, args, kwargs)
    records = json.loads(store.read_text())
    for bad in ({"index": 7, "config": "x"}, {"index": 0, "config": str(t.configs[1])}, {"config": "x"}):
        store.write_text(json.dumps({k: bad for k in records}))
        tuning._records = None
        assert not tuning.restore(_tuner(), args, kwargs)
    store.write_text("not json")
    tuning._records = None
    assert not tuning.restore(_tuner(), args, kwargs)


def test_configs_made_by_a_pruning_hook_are_not_kept(store):
    t = _tuner()
    args, kwargs = (torch.randn(4), 4), {"N_BUCKET": 4}
    t.cache[tuning.tuning_key(t, args, kwargs)] = triton.Config({"BLOCK": 16}, num_warps=2)
    tuning.save(t, args, kwargs)
    assert not store.exists()


# --- how an autotuner times its configs on a GPU: kernels.common.graph_bench ---------------------------------


class _FakeReplay:
    """registry._Replay's interface: each replay's ms per call from ``ms`` in turn."""

    ms: list = []
    made: list = []

    def __init__(self, fns):
        _FakeReplay.made.append(fns)
        self.times_ = []

    def replay(self):
        self.times_.append(_FakeReplay.ms[len(self.times_) % len(_FakeReplay.ms)])

    def times(self):
        return list(self.times_)


@pytest.fixture
def fake_graphs(monkeypatch):
    import contextlib

    from tritonfuse import registry

    monkeypatch.setattr(registry, "_Replay", _FakeReplay)
    monkeypatch.setattr(registry, "_side_stream", contextlib.nullcontext)
    _FakeReplay.made.clear()
    benched = []
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: benched.append(kw) or [9.0, 8.0, 10.0])
    return benched


def test_graph_bench_gives_the_median_of_its_replays(fake_graphs):
    from tritonfuse.kernels import common

    calls = []
    _FakeReplay.ms = [3.0, 1.0, 2.0, 5.0, 4.0]
    assert common.TUNE_REPLAYS == 5
    # with quantiles (as the autotuner asks): the median, then the fastest and the slowest replay
    assert common.graph_bench(lambda: calls.append(1), quantiles=(0.5, 0.2, 0.8)) == [3.0, 1.0, 5.0]
    assert common.graph_bench(lambda: calls.append(1)) == 3.0
    # the config ran once outside a graph each time (compiled and loaded there), then was captured
    assert len(calls) == 2 and len(_FakeReplay.made) == 2 and not fake_graphs


def test_graph_bench_lets_a_config_s_failure_reach_the_autotuner_and_times_uncapturable_calls_on_the_stream(
        fake_graphs, monkeypatch):
    from triton.runtime.errors import OutOfResources

    from tritonfuse import registry
    from tritonfuse.kernels import common

    def too_big():
        raise OutOfResources(300000, 232448, "shared memory")

    with pytest.raises(OutOfResources):  # the autotuner counts such a config out (inf), as with do_bench
        common.graph_bench(too_big, quantiles=(0.5, 0.2, 0.8))
    assert not _FakeReplay.made

    def no_capture(fns):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(registry, "_Replay", no_capture)
    assert common.graph_bench(lambda: None, quantiles=(0.5, 0.2, 0.8)) == [9.0, 8.0, 10.0]
    assert fake_graphs == [{"warmup": 5, "rep": 20, "quantiles": (0.5, 0.2, 0.8)}]


def test_every_family_s_autotuner_times_by_graph_bench_on_a_gpu(monkeypatch):
    import inspect

    from tritonfuse import registry
    from tritonfuse.kernels import attention, common, conv_bn, int8, linear_act

    takes = "do_bench" in inspect.signature(triton.autotune).parameters
    built = common.autotune_kw().get("do_bench")  # what this process's kernels were built with
    with monkeypatch.context() as m:
        m.setattr(registry, "interpret_mode", lambda: False)
        assert common.autotune_kw().get("do_bench") is (common.graph_bench if takes else None)
        m.setattr(registry, "interpret_mode", lambda: True)
        assert "do_bench" not in common.autotune_kw()  # the interpreter keeps Triton's own timing
    tuners = {}
    for mod in (attention, conv_bn, int8, linear_act):
        for name, obj in vars(mod).items():
            while obj is not None and not isinstance(obj, triton.runtime.autotuner.Autotuner):
                obj = getattr(obj, "fn", None)
            if obj is not None:
                tuners[f"{mod.__name__}.{name}"] = obj
    assert len(tuners) >= 10
    for name, t in tuners.items():
        # (under the interpreter Triton drops do_bench and cache_results alike: the GPU run checks this part;
        # it caught int8's two TMA tuners built without the shared settings)
        if not hasattr(t, "_do_bench"):  # another Triton's internals
            continue
        # int8's decode kernel times microsecond launches from 20 ms graphs of its own
        want = int8._GRAPH_BENCH_KW.get("do_bench") if name.startswith(int8.__name__ + "._decode") else built
        assert t._do_bench is want, name


def test_tuned_times_the_first_configs_or_every_candidate_with_autotune_all():
    from tritonfuse import config
    from tritonfuse.kernels import common

    cands = _configs((16, 32, 64, 128))
    with config.patch(autotune="1"):
        assert common.tuned(cands, 2) == cands[:2]
    with config.patch(autotune="all"):
        config.validate()
        assert common.tuned(cands, 2) == cands
    with config.patch(autotune="some"), pytest.raises(config.ConfigError, match="TRITONFUSE_AUTOTUNE.*all"):
        config.validate()


def _recorded_params(text: str) -> dict:
    import re

    return dict(re.findall(r"(\w+): ([\w.]+)", text))


def test_the_timed_configs_hold_a_near_fastest_one_at_every_recorded_shape():
    # the data behind each family's timed configs (kernels.common.tuned): every config's time at the shapes the
    # first compiles of four models tuned on the H200. At each shape a timed config must be within 1.2% of the
    # fastest candidate, and every recorded config must still be a candidate (a config dropped without data
    # would make the record say less than it seems to)
    import pathlib

    from tritonfuse.kernels import attention, conv_bn, linear_act

    lists = {"_conv_bn_kernel": (conv_bn._CONV_ALL, conv_bn._CONV_TIMED),
             "_conv1x1_device_tma_kernel": (conv_bn._TMA_1X1_ALL, conv_bn._TMA_1X1_TIMED),
             "_linear_act_tma_kernel": (linear_act._TMA_ALL, linear_act._TMA_TIMED),
             "_gated_mlp_tma_kernel": (linear_act._TMA_GATED_ALL, linear_act._TMA_GATED_TIMED),
             "_attn_fwd_kernel": (attention._FWD_ALL, attention._FWD_TIMED)}
    path = (pathlib.Path(__file__).parents[1] / "benchmarks" / "results" / "diagnostics"
            / "config-timings-1dd10dd-nvidia-h200.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["kernel"] for r in rows} == set(lists)
    # the dual GEMM's configs were recorded at GROUP_M=8; since 88b805a every one groups GATED_GROUP_M row tiles
    # (a tile order for DRAM reads at the power limit, the same for every config), so they are matched as
    # recorded with that one value put back
    assert {c.kwargs["GROUP_M"] for c in linear_act._TMA_GATED_ALL} == {linear_act.GATED_GROUP_M}
    recorded_as = {"_gated_mlp_tma_kernel": {"GROUP_M": "8"}}
    for r in rows:
        cands, timed = lists[r["kernel"]]
        params = [{**{k: str(v) for k, v in c.kwargs.items()}, "num_warps": str(c.num_warps),
                   "num_stages": str(c.num_stages), **recorded_as.get(r["kernel"], {})} for c in cands]
        times = {}
        for text, ms in r["timings"]:
            got = _recorded_params(text)
            which = [i for i, p in enumerate(params) if all(got.get(k) == v for k, v in p.items())]
            assert len(which) == 1, (r["kernel"], text)
            times[which[0]] = ms
        best = min(ms for ms in times.values() if ms is not None)
        best_timed = min(ms for i, ms in times.items() if i < timed and ms is not None)
        assert best_timed <= 1.012 * best, (r["kernel"], r["key"], best_timed / best)
