import atexit
import os
import shutil
import tempfile

import torch

HAS_CUDA = torch.cuda.is_available()
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    # a fresh Inductor cache (and tritonfuse's site records beside it) for each run of the suite: a graph
    # cached by an earlier run must not stand in for this run's compile. CI shares this machine's /tmp
    # with development runs, and PyTorch's cache keys leave some context out (a graph compiled under
    # sdpa_kernel(MATH) was served to a later default compile, whose attention sites then differed)
    _cache = tempfile.mkdtemp(prefix="tritonfuse-tests-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
if not HAS_CUDA:
    # kernels run through Triton's CPU interpreter; must be set before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    # exact match counts need every servable site replaced (not only those measured faster), and one
    # config per kernel keeps compiles short; the benchmarks measure the real settings
    os.environ.setdefault("TRITONFUSE_MEASURE", "0")
    os.environ.setdefault("TRITONFUSE_AUTOTUNE", "0")

# The settings above come first: importing anything of tritonfuse (tritonfuse._paths too) reads its config from
# the environment once (from 50d1bf6 to 1b533cf the GPU suite timed its sites: the config was read before them).
# ``python -m pytest`` run from the checkout puts it first on sys.path, where the top-level folders kernels/ and
# patterns/ shadow installed packages of those names (transformers >= 5.25 requires HF's `kernels`; 16 tests
# failed in CI, 2026-12-03): the checkout moves behind the installed packages (tritonfuse._paths)
from tritonfuse._paths import checkout_behind_site_packages  # noqa: E402

checkout_behind_site_packages()

import pytest  # noqa: E402

import tritonfuse  # noqa: E402


def _record_launches(path: str) -> None:
    """TRITONFUSE_RECORD_LAUNCHES=<file> (with the interpreter): write each distinct kernel launch (kernel,
    argument types, constexprs, launch options) for scripts/compile_sm90.py, which compiles them for a GPU."""
    import inspect
    import json

    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import mangle_type

    seen: set[str] = set()
    run = InterpretedFunction.run

    def value(v):
        return {"tl_dtype": str(v)} if isinstance(v, tl.dtype) else v

    def recording_run(self, *args, grid, warmup, **kwargs):
        try:
            sig = inspect.signature(self.fn)
            bound = sig.bind_partial(*args, **{k: v for k, v in kwargs.items() if k in sig.parameters})
            bound.apply_defaults()
            types, consts = {}, {}
            for name, p in sig.parameters.items():
                v = bound.arguments.get(name)
                if "constexpr" in str(p.annotation) or v is None:
                    types[name], consts[name] = "constexpr", value(v)
                else:
                    types[name] = mangle_type(v)
            opts = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
            seen.add(json.dumps([self.fn.__module__, self.fn.__qualname__, types, consts, opts]))
        except Exception:  # a launch it cannot describe is only not recorded
            pass
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording_run

    def write():
        with open(path, "a") as f:
            f.writelines(line + "\n" for line in sorted(seen))

    atexit.register(write)


if os.environ.get("TRITONFUSE_RECORD_LAUNCHES") and os.environ.get("TRITON_INTERPRET") == "1":
    _record_launches(os.environ["TRITONFUSE_RECORD_LAUNCHES"])


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_state():
    torch._dynamo.reset()
    tritonfuse.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(autouse=True)
def _gpu_default_device():
    # on a GPU machine every test runs on the GPU: models and tensors a test builds without naming a device
    # land there, so the pattern tests assert their match counts on CUDA graphs too (the CPU suite, with
    # the Triton interpreter, is what CI runs)
    if not HAS_CUDA:
        yield
        return
    torch.set_default_device("cuda")
    try:
        yield
    finally:
        torch.set_default_device(None)


@pytest.fixture
def device():
    return "cuda" if HAS_CUDA else "cpu"


@pytest.fixture
def no_compile_cache():
    # the passes must run: a graph served from Inductor's caches never reaches them (nor a patched probe)
    import torch._functorch.config as fconfig
    import torch._inductor.config as iconfig

    with iconfig.patch(fx_graph_cache=False), fconfig.patch(enable_autograd_cache=False):
        yield
