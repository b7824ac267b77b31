"""Autotune results kept on disk, for configs Triton will not keep.

``triton.autotune(cache_results=True)`` stores its timings on disk, but not for a config list in which any
config has a ``pre_hook`` (it cannot serialise one, and then benchmarks again in every process). The Hopper
kernels need one: a host TMA descriptor's block shape is set per config. So every new process re-timed
every TMA kernel's configs on its first call: on the H200, bert-base compiled in 7.95 s in a process with
every cache warm against Inductor's 2.99 s.

Here the chosen config is kept by its position in the tuner's config list, under a key made of the kernel's
source hash, its config list, the tuning key (Triton's own: the ``key=`` argument values and the tensor
dtypes), the GPU and the Triton and torch versions, in ``~/.cache/tritonfuse/autotune.json``. Before the
autotuner runs, ``restore`` puts a kept config into the tuner's in-memory cache, so the autotuner takes it as
its own earlier choice; after it ran, ``save`` keeps what it chose. A record that does not match (another
config list, another kernel source) is ignored: the autotuner times the configs as it would have.
"""

from __future__ import annotations

import hashlib
import pathlib
import threading
from typing import Optional

_lock = threading.Lock()
_records: Optional[dict] = None


def path() -> pathlib.Path:
    from . import registry

    return registry.choices_path().parent / "autotune.json"


def tuning_key(tuner, args: tuple, kwargs: dict) -> tuple:
    """The key under which ``tuner`` caches its choice for this launch, computed as ``Autotuner.run`` does."""
    all_args = {**dict(zip(tuner.arg_names, args)), **kwargs}
    named = {k: v for k, v in all_args.items() if k in tuner.arg_names}
    key = [named[k] for k in tuner.keys if k in named]
    key += [str(v.dtype) for v in named.values() if hasattr(v, "dtype")]
    return tuple(key)


def pruned(tuner, args: tuple, kwargs: dict) -> list:
    """The configs ``tuner`` considers for this launch: its ``early_config_prune`` applied as
    ``Autotuner.run`` applies it (positional arguments named, keywords as such), or all of them."""
    configs = list(tuner.configs)
    prune = getattr(tuner, "early_config_prune", None)
    if prune is None:
        return configs
    return list(prune(configs, dict(zip(tuner.arg_names, args)), **kwargs))


def _jit(tuner):
    fn = tuner.fn
    while hasattr(fn, "fn") and not hasattr(fn, "cache_key"):
        fn = fn.fn
    return fn


def _disk_key(tuner, key: tuple) -> Optional[str]:
    import torch
    import triton

    try:
        jit = _jit(tuner)
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        parts = [jit.__name__, jit.cache_key, repr(key), device, triton.__version__, torch.__version__,
                 *(str(c) for c in tuner.configs)]
    except Exception:  # noqa: BLE001 - another Triton's internals: nothing is kept
        return None
    return f"{jit.__name__}:" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _load() -> dict:
    global _records
    if _records is None:
        from . import registry

        _records = registry.read_json(path(), {})
    return _records


def restore(tuner, args: tuple, kwargs: dict):
    """The config ``tuner`` holds for this launch, after giving it the one kept on disk where it held none;
    None when there is neither (its autotuning then times the configs)."""
    try:
        key = tuning_key(tuner, args, kwargs)
    except Exception:  # noqa: BLE001 - an argument that cannot be keyed: Triton's autotuner decides
        return None
    if key in tuner.cache:
        return tuner.cache[key]
    disk = _disk_key(tuner, key)
    rec = _load().get(disk) if disk else None
    if not rec:
        return None
    i = rec.get("index")
    if not isinstance(i, int) or not 0 <= i < len(tuner.configs) or str(tuner.configs[i]) != rec.get("config"):
        return None
    tuner.cache[key] = tuner.configs[i]
    return tuner.configs[i]


def save(tuner, args: tuple, kwargs: dict) -> None:
    """Keep the config ``tuner`` chose for this launch (after it ran)."""
    global _records
    try:
        key = tuning_key(tuner, args, kwargs)
        cfg = tuner.cache.get(key)
    except Exception:  # noqa: BLE001
        return
    disk = _disk_key(tuner, key) if cfg is not None else None
    if disk is None:
        return
    index = next((i for i, c in enumerate(tuner.configs) if c is cfg), None)
    if index is None:  # the tuner made a config of its own (a pruning hook's): not kept
        return
    rec = {"index": index, "config": str(cfg)}
    from . import registry

    with _lock:
        records = _load()
        if records.get(disk) == rec:
            return
        records[disk] = rec
        # another process may have kept other kernels meanwhile: keep theirs too
        _records = records = {**registry.read_json(path(), {}), **records}
        # where it cannot be written, the next process times the configs again
        registry.write_json(path(), records, indent=0, sort_keys=True)
