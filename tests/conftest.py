import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # kernels run through Triton's CPU interpreter; must be set before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    # exact match counts need every servable site replaced (not only those measured faster), and one
    # config per kernel keeps compiles short; the benchmarks measure the real settings
    os.environ.setdefault("TRITONFUSE_MEASURE", "0")
    os.environ.setdefault("TRITONFUSE_AUTOTUNE", "0")

import tritonfuse  # noqa: E402


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
