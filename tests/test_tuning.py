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
