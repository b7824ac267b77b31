"""tritonfuse.launch's cached launch path, checked on a stand-in compiled kernel (the CPU interpreter never
takes the path; on a GPU, test_linear_act.py::test_fast_launch_matches_triton_launch compares it with
Triton's own launch bit for bit)."""

import pytest
import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from tritonfuse import launch


def _kernel(x_ptr, y_ptr, n, scale, M_BUCKET: tl.constexpr, BLOCK: tl.constexpr, EVEN: tl.constexpr,
            ACT: tl.constexpr = "none"):
    pass  # never compiled: the test stands in for Triton's compiler and launcher


class _Compiled:
    """What JITFunction.warmup returns: records the launcher's arguments."""

    function, packed_metadata = "function", "packed"

    def __init__(self):
        self.launches = []

    def launch_metadata(self, grid, stream, *args):
        return None

    @property
    def run(self):
        return lambda g0, g1, g2, stream, fn, packed, meta, enter, exit_, *args: self.launches.append(
            ((g0, g1, g2), stream, args))


@pytest.fixture
def kernel(monkeypatch):
    jit = JITFunction(_kernel)
    compiled, triton_path, hooked = _Compiled(), [], []

    def run(*args, grid, warmup, **kwargs):
        if warmup:
            return compiled
        triton_path.append((args, kwargs))

    monkeypatch.setattr(jit, "run", run)
    monkeypatch.setattr(launch, "_current_stream", lambda: 7)
    cfg = triton.Config({"BLOCK": 64}, num_warps=4, pre_hook=lambda nargs: hooked.append(nargs["n"]))
    tuned = triton.autotune(configs=[cfg], key=["n"])(
        triton.heuristics({"EVEN": lambda a: a["n"] % a["BLOCK"] == 0})(jit))
    return launch.FastLauncher(tuned, "all"), compiled, triton_path, hooked


def test_second_call_launches_the_captured_kernel(kernel):
    fl, compiled, triton_path, hooked = kernel
    grid = lambda meta: (triton.cdiv(meta["n"], meta["BLOCK"]),)  # noqa: E731
    x, y = torch.randn(300), torch.randn(300)
    fl[grid](x, y, 300, 0.5, 3, ACT="gelu")
    assert len(triton_path) == 1 and not compiled.launches  # the first call is Triton's own
    x2, y2 = torch.randn(300), torch.randn(300)
    fl[grid](x2, y2, 300, 0.5, 3, ACT="gelu")
    assert len(triton_path) == 1
    (g, stream, args), = compiled.launches
    # every parameter in signature order (triton >= 3.3), constexprs from the call, config and heuristics
    assert g == (5, 1, 1) and stream == 7
    assert args[0] is x2 and args[1] is y2 and args[2:] == (300, 0.5, 3, 64, False, "gelu")
    assert hooked == [300, 300, 300]  # the config's pre-hook: Triton's call, the capture, the cached launch


def test_launch_key(kernel):
    fl, compiled, triton_path, _ = kernel
    grid = (4,)
    x, y = torch.randn(320), torch.randn(320)
    fl[grid](x, y, 320, 0.5, 3)
    fl[grid](x, y, 320, 0.5, 3)
    assert len(triton_path) == 1 and len(compiled.launches) == 1
    assert compiled.launches[0][2][6] is True  # EVEN: 320 % 64 == 0
    fl[grid](x, y, 256, 0.5, 3)  # another int: another key (the autotune key and the grid read ints)
    fl[grid](x[1:], y, 319, 0.5, 3)  # not 16-byte aligned: Triton specialises on alignment
    fl[grid](x, y, 320, 0.25, 3)  # another float (an eps or a scale) is another key too
    fl[grid](x.half(), y, 320, 0.5, 3)  # another dtype
    assert len(triton_path) == 5 and len(compiled.launches) == 1
    fl[grid](x, y, 320, 0.5, 3, ACT=torch.ones(1))  # a tensor by keyword: always Triton's path
    assert len(triton_path) == 6


def test_key_limit(kernel, monkeypatch):
    fl, compiled, triton_path, _ = kernel
    monkeypatch.setattr(launch, "MAX_KEYS", 2)
    x, y = torch.randn(64), torch.randn(64)
    for n in (16, 32, 48, 16, 32, 48):
        fl[(1,)](x, y, n, 0.5, 3)
    # n=48 is past the limit: never captured, each call Triton's
    assert len(fl._cache) == 2 and len(compiled.launches) == 2 and len(triton_path) == 4


def test_convention_known():
    # read from this Triton's JITFunction.run: an unknown convention would silently keep Triton's slower
    # launch on the GPU
    assert launch._launch_convention() in ("all", "runtime")


class _Desc:
    """A stand-in host TMA descriptor: the config's pre-hook sets its block shape."""

    def __init__(self, base):
        self.base, self.block_shape = base, [16, 16]


def _hook(nargs):
    nargs["x_ptr"].block_shape = [nargs["BLOCK"], 32]


def test_autotune_configs_compile_side_by_side(monkeypatch):
    # every config of a launch not tuned yet is compiled up front in threads (the autotuner then finds them
    # compiled), each with its own copy of the descriptor its pre-hook sets, the caller's left alone; a
    # tuning key the autotuner already holds compiles nothing more; one thread turns it off
    from tritonfuse import config

    jit = JITFunction(_kernel)
    warmed = []

    def run(*args, grid, warmup, **kwargs):
        assert warmup
        warmed.append((args[0].block_shape, kwargs["BLOCK"], kwargs["EVEN"], kwargs["num_warps"], grid))

    monkeypatch.setattr(jit, "run", run)
    monkeypatch.setattr(launch, "compile_elsewhere", lambda jit, jobs: 0)  # (on a GPU: the threads alone)
    configs = [triton.Config({"BLOCK": b}, num_warps=w, pre_hook=_hook) for b, w in ((32, 4), (64, 8), (128, 8))]
    tuned = triton.autotune(configs=configs, key=["n"])(
        triton.heuristics({"EVEN": lambda a: a["n"] % a["BLOCK"] == 0})(jit))
    fl = launch.FastLauncher(tuned, "all")
    desc, y = _Desc(torch.randn(320)), torch.randn(320)
    grid = lambda meta: (triton.cdiv(meta["n"], meta["BLOCK"]),)  # noqa: E731
    with config.patch(compile_threads="4"):
        assert fl.precompile(grid, (desc, y, 320, 0.5, 3), {"ACT": "gelu"}) == 3
        assert sorted(warmed, key=lambda w: w[1]) == [([32, 32], 32, True, 4, (10,)), ([64, 32], 64, True, 8, (5,)),
                                                      ([128, 32], 128, False, 8, (3,))]
        assert desc.block_shape == [16, 16]
        tuned.cache[(320, "torch.float32")] = configs[1]  # the autotuner has tuned n=320 (key, dtypes)
        assert fl.precompile(grid, (desc, y, 320, 0.5, 3), {}) == 0
        assert fl.precompile(grid, (desc, y, 640, 0.5, 3), {}) == 3
    with config.patch(compile_threads="1"):
        assert fl.precompile(grid, (desc, y, 960, 0.5, 3), {}) == 0
    assert len(warmed) == 6


def test_a_kernel_launched_by_triton_gets_its_configs_compiled_side_by_side(monkeypatch):
    # a device-TMA kernel timed for a measured choice goes through Triton's own launch (which passes the
    # descriptors' scratch memory): precompile_for compiles its configs first, as a fast launch would; under
    # the interpreter, or where the fast launcher cannot wrap the kernel, it does nothing
    from tritonfuse import config, registry

    jit = JITFunction(_kernel)
    warmed = []
    monkeypatch.setattr(jit, "run", lambda *a, grid, warmup, **kw: warmed.append(kw["BLOCK"]))
    monkeypatch.setattr(launch, "compile_elsewhere", lambda jit, jobs: 0)
    monkeypatch.setattr(launch, "_convention", "all")
    monkeypatch.setattr(launch, "_convention_known", True)
    monkeypatch.setattr(launch, "_launchers", {})
    monkeypatch.setattr(registry, "interpret_mode", lambda: False)
    configs = [triton.Config({"BLOCK": b}, num_warps=4) for b in (32, 64, 128)]
    tuned = triton.autotune(configs=configs, key=["n"])(triton.heuristics({"EVEN": lambda a: True})(jit))
    grid = lambda meta: (triton.cdiv(meta["n"], meta["BLOCK"]),)  # noqa: E731
    args = (torch.randn(320), torch.randn(320), 320, 0.5, 3)
    with config.patch(compile_threads="4"):
        assert launch.precompile_for(tuned, grid, args, {}) == 3
        assert sorted(warmed) == [32, 64, 128]
        assert launch.precompile_for(tuned, grid, args, {}) == 0  # the same launch again: nothing more to do
        monkeypatch.setattr(launch, "_launchers", {})  # a new launcher: nothing seen yet
        monkeypatch.setattr(registry, "interpret_mode", lambda: True)
        assert launch.precompile_for(tuned, grid, args, {}) == 0
        monkeypatch.setattr(registry, "interpret_mode", lambda: False)
        monkeypatch.setattr(launch, "_convention", None)  # a Triton whose launch convention is unknown
        monkeypatch.setattr(launch, "_launchers", {})
        assert launch.precompile_for(tuned, grid, args, {}) == 0
    assert len(warmed) == 3


def _doubled(x_ptr, y_ptr, n, BLOCK: tl.constexpr, OUT: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + i, (tl.load(x_ptr + i, mask=i < n) * 2).to(OUT), mask=i < n)


def _doubled_sm90():
    """``_doubled``'s specialisation for sm_90 (no GPU needed): Triton's specialisation data as its
    jit_cache_hook hands it over, and the same compile as Triton's launch builds it (source, options)."""
    import json

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    target = GPUTarget("cuda", 90, 32)
    options = make_backend(target).parse_options({"num_warps": 4, "num_stages": 3})
    signature = {"x_ptr": "*fp16", "y_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr", "OUT": "constexpr"}
    attrs = {(0,): [["tt.divisibility", 16]], (1,): [["tt.divisibility", 16]]}
    data = json.dumps({"name": f"{__name__}._doubled", "signature": signature, "constant_keys": [[3], [4]],
                       "constant_vals": [256, "fp32"], "attrs_keys": [list(k) for k in attrs],
                       "attrs_vals": list(attrs.values()), "options": options.__dict__, "key": "k",
                       "target": target.__dict__})
    src = ASTSource(JITFunction(_doubled), signature, {(3,): 256, (4,): tl.float32}, attrs)
    return data, src, target, options.__dict__


def _kernel_entries(cache: str) -> list[str]:
    """The cache entries that hold a compile of ``_doubled`` (on a GPU machine the worker also builds the
    kernel's launcher, an entry of its own, which a CPU machine cannot link)."""
    import os

    return sorted(d for d in os.listdir(cache)
                  if any(f.startswith("_doubled.") for f in os.listdir(os.path.join(cache, d))))


def _worker_then_direct_compile(cache: str) -> dict:
    """In a fresh process without the interpreter: ``launch.compile_spec`` as an Inductor worker runs it,
    then the same compile built directly, as Triton's launch builds it."""
    import os
    import time

    data, src, target, options = _doubled_sm90()
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # the worker's own: not applied while it compiles ours
    launch.compile_spec(__name__, "_doubled", data, {"TRITON_CACHE_DIR": cache})
    out = {"env_kept": os.environ.pop("TRITON_ALWAYS_COMPILE") == "1" and "TRITON_CACHE_DIR" not in os.environ,
           "worker": _kernel_entries(cache)}
    os.environ["TRITON_CACHE_DIR"] = cache
    t = time.perf_counter()
    compiled = triton.compile(src, target=target, options=options)
    out.update(direct=_kernel_entries(cache), seconds=time.perf_counter() - t,
               stores="st.global" in compiled.asm["ptx"])
    return out


def _worker_builds_launchers(cache: str) -> dict:
    """In a fresh process: the launcher builds ``launch.compile_spec`` asks of Triton's NVIDIA driver after each
    compile (recorded, not built: a CPU machine has no libcuda to link them with), and a compile whose build
    fails."""
    import os

    from triton.backends.nvidia import driver

    built = []

    class Recorder:
        def __init__(self, src, metadata):
            built.append({"fn": src.fn.__name__, "signature": dict(src.signature), "name": metadata.name,
                          "hash": metadata.hash})

    data = _doubled_sm90()[0]
    driver.CudaLauncher = Recorder
    launch.compile_spec(__name__, "_doubled", data, {"TRITON_CACHE_DIR": cache})

    class Broken:
        def __init__(self, src, metadata):
            raise RuntimeError("libcuda.so cannot found!")

    driver.CudaLauncher = Broken
    launch.compile_spec(__name__, "_doubled", data, {"TRITON_CACHE_DIR": cache})  # (no error: the parent builds it)
    driver.CudaLauncher = Recorder
    launch.compile_spec(__name__, "_doubled", data, {"TRITON_CACHE_DIR": cache}, None, False)  # another builds it
    return {"built": built, "entries": [d for d in os.listdir(cache)]}


def _in_fresh_process(helper: str, *args, drop=("TRITON_INTERPRET", "TRITON_CACHE_DIR")):
    """``helper(*args)`` of this module run in a fresh Python process without the environment variables named
    (or prefixed) in ``drop``, as a worker is one (in the suite's process the interpreter's kernels have run;
    on a GPU, Inductor's compiles of earlier tests set TRITON_CACHE_DIR); its JSON result."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONPATH"] = os.pathsep.join([str(pathlib.Path(__file__).parent), env.get("PYTHONPATH", "")])
    code = f"import json, {__name__} as t; print(json.dumps(t.{helper}(*{args!r})))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_worker_compile_builds_the_kernels_launcher(tmp_path):
    # the host stub Triton's launch needs for each argument signature (a C compile, 0.35 s, cached on disk
    # by its source) is built by the worker after its compile, not by the parent at its first launch
    out = _in_fresh_process("_worker_builds_launchers", str(tmp_path / "triton"))
    assert len(out["built"]) == 1 and len(out["entries"]) == 1
    got = out["built"][0]
    assert got["fn"] == got["name"] == "_doubled"
    assert got["signature"] == {"x_ptr": "*fp16", "y_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr",
                                "OUT": "constexpr"}


def test_one_compile_per_argument_signature_builds_the_launcher(monkeypatch):
    # a kernel's configs share one launch stub (Triton keys it on the argument signature): of the compiles
    # sent for a signature, only the first asks its worker to build it, not each side by side
    import json

    monkeypatch.setattr(launch, "_signatures", set())
    jit = JITFunction(_doubled)
    sig = {"x_ptr": "*fp16", "y_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr", "OUT": "constexpr"}

    def spec(block, y="*fp32"):
        return json.dumps({"signature": {**sig, "y_ptr": y}, "constant_vals": [block, "fp32"]})

    assert [launch._first_of_signature(jit, spec(b)) for b in (128, 256, 512)] == [True, False, False]
    assert launch._first_of_signature(jit, spec(128, "*fp16"))  # another signature: another stub
    assert launch._first_of_signature(JITFunction(_kernel), spec(128))  # another kernel
    assert launch._first_of_signature(jit, "not json")  # (unreadable: built, as before)


def _worker_compile(cache: str, ptxas_path: str, version) -> None:
    """A worker's compile of ``_doubled`` in a process of its own, under the parent's variables and its
    reading of the ptxas version (``version``; None: the worker reads its own)."""
    data = _doubled_sm90()[0]
    launch.compile_spec(__name__, "_doubled", data, {"TRITON_CACHE_DIR": cache, "TRITON_PTXAS_PATH": ptxas_path},
                        version)


def _parent_with_stale_ptxas(cache: str, fake: str, send_version: bool) -> dict:
    """In a fresh process: Triton reads its ptxas version from ``fake`` (a kernel compiled before the backend
    pointed Triton at another ptxas), then ``TRITON_PTXAS_PATH`` names the real one. A worker process
    compiles ``_doubled`` (sent the parent's reading when ``send_version``); then this process compiles it."""
    import os
    import subprocess
    import sys

    from triton.backends.nvidia import compiler as nv

    real = nv.get_ptxas(90).path
    os.environ["TRITON_PTXAS_PATH"] = fake
    nv.get_ptxas_version(90)  # read once, and kept
    os.environ["TRITON_PTXAS_PATH"] = real
    data, src, target, options = _doubled_sm90()
    version = launch._ptxas_version(data) if send_version else None
    code = f"import {__name__} as t; t._worker_compile({cache!r}, {real!r}, {version!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = {"version": version, "worker": _kernel_entries(cache)}
    os.environ["TRITON_CACHE_DIR"] = cache
    triton.compile(src, target=target, options=options)
    out["direct"] = _kernel_entries(cache)
    return out


def test_worker_compile_fills_the_disk_cache_a_compile_then_reads(tmp_path):
    # what an Inductor worker runs: Triton's specialisation data (as its jit_cache_hook hands it over) decoded
    # into the very compile Triton's launch would make, under the parent's TRITON_* variables, so that the
    # parent's compile is a disk-cache hit; the worker's own variables are restored after. In a process of its
    # own, as a worker is one (in the suite's, the interpreter's kernels have run)
    out = _in_fresh_process("_worker_then_direct_compile", str(tmp_path / "triton"))
    assert out["env_kept"]
    assert len(out["worker"]) == 1
    assert out["direct"] == out["worker"]  # the same key: read, not compiled again
    assert out["seconds"] < 0.5 and out["stores"]


@pytest.mark.parametrize("send_version", [True, False])
def test_worker_compile_keys_on_the_parents_ptxas_version(tmp_path, send_version):
    # Triton reads the ptxas version once per process; a parent that read it before TRITON_PTXAS_PATH changed
    # keys its compiles on the old reading, and a worker's compile of the same kernel is a disk-cache hit for
    # it only when it keys on that reading too (sent with the job). Without it the parent compiles again.
    nv = pytest.importorskip("triton.backends.nvidia.compiler")
    if not hasattr(nv, "get_ptxas_version") or not hasattr(nv, "get_ptxas"):
        pytest.skip("this Triton reads no ptxas version")
    fake = tmp_path / "ptxas"  # reports another release; the parent never runs it
    fake.write_text('#!/bin/sh\necho "ptxas: NVIDIA (R) Ptx optimizing assembler"\n'
                    'echo "Cuda compilation tools, release 12.4, V12.4.131"\n')
    fake.chmod(0o755)
    out = _in_fresh_process("_parent_with_stale_ptxas", str(tmp_path / "triton"), str(fake), send_version,
                            drop=("TRITON_",))
    assert len(out["worker"]) == 1
    if send_version:
        assert "release 12.4" in out["version"]
        assert out["direct"] == out["worker"]  # the same key: read, not compiled again
    else:  # the worker read the real ptxas's version: another key, compiled again
        assert len(out["direct"]) == 2


def test_stuck_workers_are_waited_for_once(monkeypatch):
    # a pool whose jobs never finish costs one bounded wait; after it the process stops using the workers
    # (the threads compile, as without them)
    import concurrent.futures

    class Stuck:
        submitted = 0

        def submit(self, fn, *args):
            Stuck.submitted += 1
            return concurrent.futures.Future()  # never done

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(launch, "_inductor_pool", lambda: Stuck())
    monkeypatch.setattr(launch, "uncompiled_specs", lambda jit, jobs: ["{}", "{}"])
    monkeypatch.setattr(launch, "_pool_timeout_s", 0.05)
    monkeypatch.setattr(launch, "_pool_stuck", False)
    jit = JITFunction(_doubled)
    assert launch.compile_elsewhere(jit, [1, 2]) == 0 and Stuck.submitted == 2
    assert "not done" in launch.failures[jit.__name__]
    assert launch.compile_elsewhere(jit, [1, 2]) == 0 and Stuck.submitted == 2


def test_a_survey_sends_compiles_ahead_and_the_timed_launch_waits_for_them(monkeypatch):
    # inside a survey (registry.surveying) a launch sends each config's compile to Inductor's workers, once,
    # and launches nothing; a launch through Triton's own path raises Ahead after sending its compiles. The
    # launch timed later waits for those compiles instead of sending them again; a kernel of one config
    # (no autotuner) waits for its worker compile where a survey sent one, and is compiled in the main
    # process otherwise
    import concurrent.futures

    from tritonfuse import config, registry

    class Pool:
        def __init__(self):
            self.sent = []

        def submit(self, fn, module, name, data, env, ptxas, launcher):
            self.sent.append(data)
            fut = concurrent.futures.Future()
            fut.set_result(None)
            return fut

    pool = Pool()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: None)  # (no GPU to make current in the threads)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(launch, "_inductor_pool", lambda: pool)
    monkeypatch.setattr(launch, "_pool_stuck", False)
    monkeypatch.setattr(launch, "_pool_timeout_s", 5.0)
    monkeypatch.setattr(launch, "_ahead", {})
    compiled = set()  # what this process holds compiled: uncompiled_specs leaves those out
    monkeypatch.setattr(launch, "uncompiled_specs", lambda jit, jobs: [
        s for s in (f"{jit.__name__}:{job[1]['BLOCK']}:{job[1]['n'] if 'n' in job[1] else job[0][2]}"
                    for job in jobs) if s not in compiled])
    jit = JITFunction(_kernel)
    launched, warmed = [], []

    def run(*args, grid, warmup, **kwargs):
        (warmed if warmup else launched).append(kwargs["BLOCK"])

    monkeypatch.setattr(jit, "run", run)
    configs = [triton.Config({"BLOCK": b}, num_warps=4) for b in (32, 64, 128)]
    tuned = triton.autotune(configs=configs, key=["n"])(triton.heuristics({"EVEN": lambda a: True})(jit))
    fl = launch.FastLauncher(tuned, "all")
    grid = lambda meta: (triton.cdiv(meta["n"], meta["BLOCK"]),)  # noqa: E731
    args = (torch.randn(320), torch.randn(320), 320, 0.5, 3)
    with registry._flag("ahead", True):
        assert registry.compiling_ahead()
        fl[grid](*args)
        fl[grid](*args)  # sent once
    launch.drain_sends()  # (handed to the pool by a thread of their own)
    assert not launched and not warmed and not fl._cache and not tuned.cache
    assert sorted(pool.sent) == ["_kernel:128:320", "_kernel:32:320", "_kernel:64:320"]
    assert launch.sent_ahead(jit)
    with config.patch(compile_threads="4"):
        assert fl.precompile(grid, args, {}) == 3  # the three sent ahead, waited for
        assert len(pool.sent) == 3 and not launch._ahead and not launch.sent_ahead(jit)
        assert sorted(warmed) == [32, 64, 128]  # then read in threads (a disk-cache hit on a GPU)
        # a launch nothing sent ahead: its configs go to the workers now
        assert fl.precompile(grid, (*args[:2], 640, 0.5, 3), {}) == 3 and len(pool.sent) == 6
        # one whose config is kept from an earlier process: the autotuner compiles that one alone, so
        # nothing is sent, even while other launches' compiles are out
        with registry._flag("ahead", True):
            fl[grid](*args[:2], 1280, 0.5, 3)
        launch.drain_sends()
        assert len(pool.sent) == 9
        with monkeypatch.context() as m:
            m.setattr(launch.tuning, "restore", lambda tuner, a, k: configs[0])
            assert fl.precompile(grid, (*args[:2], 2560, 0.5, 3), {}) == 0 and len(pool.sent) == 9
    launch._ahead.clear()  # (n=1280's compiles: never waited for)

    single = JITFunction(_kernel)
    monkeypatch.setattr(single, "run", run)
    one = launch.FastLauncher(triton.heuristics({"EVEN": lambda a: True})(single), "all")
    kw = {"BLOCK": 16}
    assert one.precompile((4,), args, kw) == 0 and len(pool.sent) == 9  # one compile: the main process's
    with registry._flag("ahead", True):
        one[(4,)](*args, **kw)
    launch.drain_sends()
    assert len(pool.sent) == 10 and not launched
    assert one.precompile((4,), args, kw) == 1 and not launch._ahead  # waited for the worker's

    # a probe in a survey (registry.one_config with the ahead flag) sends its one config's compile and
    # launches nothing; the probe run later waits for that compile, then launches the config
    n = len(pool.sent)
    probe_args = (torch.randn(320), torch.randn(320), 4800, 0.5, 3)
    with registry.one_config(), registry._flag("ahead", True):
        fl[grid](*probe_args)
    launch.drain_sends()
    assert pool.sent[n:] == ["_kernel:32:4800"] and not launched and launch.sent_ahead(jit)
    with registry.one_config():
        fl[grid](*probe_args)
    assert launched == [32] and not launch._ahead and len(pool.sent) == n + 1
    launched.clear()

    monkeypatch.setattr(launch, "_convention", "all")
    monkeypatch.setattr(launch, "_convention_known", True)
    monkeypatch.setattr(launch, "_launchers", {})
    other = (torch.randn(320), torch.randn(320), 960, 0.5, 3)
    with registry._flag("ahead", True), pytest.raises(registry.Ahead):
        launch.precompile_for(tuned, grid, other, {})
    launch.drain_sends()
    assert len(pool.sent) == 14 and not launched
    assert not registry.compiling_ahead()


@pytest.mark.cuda
def test_configs_compile_in_inductors_workers(monkeypatch, tmp_path):
    # each config of a launch is compiled by Inductor's worker processes into Triton's disk cache, from the
    # specialisation data Triton's launch path hands its jit_cache_hook; the threads then only read the cache,
    # and the kernel computes as Triton's own launch does
    import os

    from torch._inductor import async_compile

    if async_compile.get_compile_threads() <= 1:
        pytest.skip("Inductor has no worker processes here (one compile thread)")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    configs = [triton.Config({"BLOCK": b}, num_warps=w) for b, w in ((128, 4), (256, 4), (512, 8))]
    tuned = triton.autotune(configs=configs, key=["n"])(JITFunction(_doubled))
    fl = launch.FastLauncher(tuned, launch._launch_convention())
    x = torch.randn(1000, device="cuda", dtype=torch.float16)
    y = torch.full((1000,), float("nan"), device="cuda")
    grid = lambda meta: (triton.cdiv(meta["n"], meta["BLOCK"]),)  # noqa: E731
    args, kwargs = (x, y, 1000), {"OUT": tl.float32}

    def kernels():  # Triton's disk-cache entries that hold a compiled kernel (others hold its launcher)
        return sorted(d for d in os.listdir(tmp_path) if any(f.endswith(".cubin") for f in os.listdir(tmp_path / d)))

    def launchers():  # ... and those that hold a kernel launcher's host stub (built by the workers too)
        return sorted(d for d in os.listdir(tmp_path) if any(f.startswith("__triton_launcher")
                                                             for f in os.listdir(tmp_path / d)))

    assert launch.compile_elsewhere(fl.jit, fl.config_jobs(grid, args, kwargs)) == 3
    assert triton.knobs.runtime.jit_cache_hook is None  # the hook is given back
    entries, stubs = kernels(), launchers()
    assert len(entries) == 3 and stubs
    assert fl.precompile(grid, args, kwargs) == 3
    assert kernels() == entries  # the threads' compiles were disk-cache hits
    fl[grid](*args, **kwargs)
    torch.testing.assert_close(y, x.float() * 2, rtol=0, atol=0)
    assert launchers() == stubs  # the launch found its stub built


def test_compile_threads_setting_is_validated():
    from tritonfuse import config

    with config.patch(compile_threads="many"):
        with pytest.raises(config.ConfigError, match="TRITONFUSE_COMPILE_THREADS"):
            config.validate()
    with config.patch(compile_threads="3"):
        config.validate()
        assert config.compile_thread_count() == 3
    assert "compile_threads" not in config.snapshot()  # compile speed never changes a graph's cache key


def test_host_size_helpers_match_triton():
    # grids, autotune keys and block sizes are computed on every op call: plain Python there, since
    # triton.cdiv / triton.next_power_of_2 are ConstexprFunctions costing microseconds per host call
    from tritonfuse.kernels.common import _m_bucket, cdiv, next_pow2

    for n in list(range(1, 4200)) + [2**20 - 1, 2**20, 2**20 + 1, 12608, 16384 * 3]:
        assert next_pow2(n) == triton.next_power_of_2(n), n
        for d in (1, 7, 16, 128, 256):
            assert cdiv(n, d) == triton.cdiv(n, d), (n, d)
    assert [_m_bucket(m) for m in (1, 16, 17, 40, 4096, 4097)] == [16, 16, 32, 64, 4096, 8192]


def test_probes_launch_one_config_untuned(monkeypatch):
    # inside registry.one_config (probes and self-checks on toy inputs) an autotuned kernel launches once
    # with its first config (pruned as the tuner prunes; the prune once got the keywords among the named
    # arguments, which failed the attention TMA kernel's on the H200), its pre-hook on a copy of the descriptor: no
    # config is compiled ahead, nothing tuned, nothing kept for the shape
    from tritonfuse import registry

    jit = JITFunction(_kernel)
    launched, warmed = [], []

    def run(*args, grid, warmup, **kwargs):
        (warmed if warmup else launched).append((args[0].block_shape, kwargs["BLOCK"], kwargs["EVEN"],
                                                 kwargs["num_warps"], grid))

    monkeypatch.setattr(jit, "run", run)
    configs = [triton.Config({"BLOCK": b}, num_warps=w, pre_hook=_hook) for b, w in ((16, 2), (64, 8), (128, 8))]
    def prune(cfgs, named, **kw):  # as Triton's autotuner calls it: positional arguments named, keywords
        return [c for c in cfgs if c.kwargs["BLOCK"] > 16] if (named["n"], kw["ACT"]) == (320, "gelu") else cfgs

    tuned = triton.autotune(configs=configs, key=["n"], prune_configs_by={"early_config_prune": prune})(
        triton.heuristics({"EVEN": lambda a: a["n"] % a["BLOCK"] == 0})(jit))
    fl = launch.FastLauncher(tuned, "all")
    desc, y = _Desc(torch.randn(320)), torch.randn(320)
    grid = lambda meta: (triton.cdiv(meta["n"], meta["BLOCK"]),)  # noqa: E731
    with registry.one_config():
        fl[grid](desc, y, 320, 0.5, 3, ACT="gelu")
    assert launched == [([64, 32], 64, True, 8, (5,))] and not warmed
    assert desc.block_shape == [16, 16] and not tuned.cache and not fl._cache
    assert not registry.probing()


def test_static_launch_setting(monkeypatch):
    # TRITONFUSE_STATIC_LAUNCH=1 asks Inductor to launch the kernels it inlines from its static launcher
    # (static_launch_user_defined_triton_kernels, torch >= 2.8), unless the user's options say otherwise;
    # it is part of a graph's cache key, and a model compiles and runs the same with it
    import torch._inductor.config as inductor_config

    from tritonfuse import backend, config

    name = "static_launch_user_defined_triton_kernels"
    if not hasattr(inductor_config, name):
        pytest.skip("this torch has no static launch of user-defined kernels")
    assert name not in backend.static_launch_patches({})  # off by default
    with config.patch(static_launch="1"):
        config.validate()
        assert backend.static_launch_patches({"max_autotune": False}) == {"max_autotune": False, name: True}
        assert backend.static_launch_patches({name: False}) == {name: False}  # the user's option wins
        assert config.snapshot()["static_launch"] == "1"
        seen = []
        import torch._inductor.compile_fx as cfx

        real = cfx.compile_fx
        monkeypatch.setattr(cfx, "compile_fx", lambda *a, **k: seen.append(k.get("config_patches")) or real(*a, **k))
        model = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.GELU())
        x = torch.randn(5, 24)
        torch._dynamo.reset()
        with torch.no_grad():
            out = torch.compile(model, backend="tritonfuse")(x)
            torch.testing.assert_close(out, model(x), atol=1e-4, rtol=1e-4)
        assert seen and seen[0].get(name) is True, seen  # the backend's call (Inductor then calls itself)
    with config.patch(static_launch="yes"), pytest.raises(config.ConfigError, match="TRITONFUSE_STATIC_LAUNCH"):
        config.validate()
