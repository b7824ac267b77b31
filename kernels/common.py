"""Small Triton helpers shared by every family's kernels."""

from __future__ import annotations

import contextlib
import functools
import inspect
import statistics

import torch
import triton
import triton.language as tl

from tritonfuse import config, registry

try:  # host-side TMA descriptors: triton >= 3.4
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:
    TensorDescriptor = None


@triton.jit
def cast_out(x, dtype: tl.constexpr, RTNE_BF16: tl.constexpr):
    """Round fp32 ``x`` to ``dtype``. With RTNE_BF16 the bf16 rounding is done by hand: Triton's
    interpreter truncates fp32 -> bf16, which would double the rounding error the tests measure."""
    if RTNE_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)


@triton.jit
def _gelu_erfc(x):
    """Exact (erf) GELU as ``x (1 - erfc(x/sqrt2) / 2)`` for x >= 0 and ``x/2 erfc(|x|/sqrt2)`` below, with
    erfc from Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7): about half the instructions of
    libdevice's erf, which is what a GEMM epilogue pays for (H200, scripts/explore_gpu.py: 452 against 411
    TFLOP/s at BERT's 16384x768x3072). Against fp64 it is as close as ``0.5 x (1 + erf(x/sqrt2))`` in fp32
    (max abs error 6e-7 on [-10, 10]) and closer for x < -3, where ``1 + erf`` cancels."""
    z = tl.abs(x) * 0.7071067811865476
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    half_erfc = 0.5 * poly * tl.exp(-z * z)
    return tl.where(x >= 0, x * (1.0 - half_erfc), x * half_erfc)


@triton.jit
def _tanh_approx(x):
    """tanh from the GPU's special-function unit (PTX ``tanh.approx.f32``, sm_75+, relative error about
    2^-11): one instruction. Compiled only for a GPU (the interpreter runs no PTX)."""
    return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                     pack=1)


@triton.jit
def _apply_act(x, ACT: tl.constexpr):
    """The epilogue activation of every family, applied to the fp32 accumulator; ``"none"`` passes through."""
    # NaN propagates as in PyTorch: tl.maximum's default lets the hardware return the other operand
    if ACT == "relu":
        x = tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)
    elif ACT == "relu6":
        x = tl.minimum(tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL), 6.0,
                       propagate_nan=tl.PropagateNan.ALL)
    elif ACT == "gelu":
        x = _gelu_erfc(x)
    elif ACT == "gelu_tanh":
        inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        # tanh(y) = 2*sigmoid(2y) - 1, stable at both ends
        x = 0.5 * x * (1.0 + (2.0 * tl.sigmoid(2.0 * inner) - 1.0))
    elif ACT == "gelu_fast":  # the tanh form on the special-function unit's tanh: one op, GPU only
        inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        x = 0.5 * x + 0.5 * x * _tanh_approx(inner)
    elif ACT == "silu":
        x = x * tl.sigmoid(x)
    elif ACT == "silu_tanh":  # x sigmoid(x) = h + h tanh(h), h = x/2: one special-function op, not two
        h = 0.5 * x
        x = h + h * _tanh_approx(h)
    elif ACT == "quick_gelu":
        x = x * tl.sigmoid(1.702 * x)
    elif ACT == "hardswish":
        x = x * (tl.minimum(tl.maximum(x + 3.0, 0.0), 6.0) / 6.0)
    return x


def size_hint(s):
    """A size as an int: a dynamic graph's symbolic size at its example value, read without adding a guard
    to the graph (a guard on the batch size makes Dynamo compile again for every batch size); None when it
    has no example value (data-dependent)."""
    if isinstance(s, torch.SymInt):
        return s.node.hint if s.node.has_hint() else None
    return s


# Host-side sizes for launches. Since triton 3.5 ``triton.cdiv`` and ``triton.next_power_of_2`` are
# ConstexprFunctions whose every host call costs 5-7 us (measured on this project's CI CPU), and an op call
# makes several (its grid, its autotune key, its block sizes): these are plain Python.


def cdiv(a, b):
    """ceil(a / b) for sizes (ints or symbolic sizes)."""
    return (a + b - 1) // b


def next_pow2(n):
    """The smallest power of two >= n (n >= 1), as ``triton.next_power_of_2``."""
    if isinstance(n, int) and n >= 1:
        return 1 << (n - 1).bit_length()
    return triton.next_power_of_2(n)


def _m_bucket(m: int) -> int:
    """Power-of-two bucket of M for autotune keys: a new batch size inside a bucket does not re-tune."""
    return max(16, next_pow2(m))


def rtne_bf16(dtype: torch.dtype) -> bool:
    """Whether ``cast_out`` must round bf16 by hand (only under the CPU interpreter)."""
    return registry.interpret_mode() and dtype == torch.bfloat16


def dot_upcast(dtype: torch.dtype) -> bool:
    """The interpreter's bf16 ``tl.dot`` reads garbage (triton 3.6-3.8); bf16 products are exact in fp32,
    so kernels upcast their operands there and get what the tensor cores give."""
    return registry.interpret_mode() and dtype == torch.bfloat16


_desc_defaults: dict = {}


def host_desc(t: torch.Tensor, block_shape) -> "TensorDescriptor":
    """A host TMA descriptor of ``t`` without ``TensorDescriptor``'s per-call validation (~10 us of host
    time per descriptor, paid by every launch); callers check alignment before choosing a TMA kernel.
    The first descriptor of a process is built (and validated) by the constructor."""
    if not _desc_defaults:
        d = TensorDescriptor(t, list(t.shape), list(t.stride()), list(block_shape))
        _desc_defaults.update(vars(d))
        return d
    d = object.__new__(TensorDescriptor)
    vars(d).update(_desc_defaults)
    d.base, d.shape, d.strides, d.block_shape = t, list(t.shape), list(t.stride()), list(block_shape)
    return d


def hopper(device: torch.device) -> bool:
    """A CUDA device of compute capability 9.x (the TMA kernels' GPUs)."""
    return device.type == "cuda" and capability(device)[0] == 9


@functools.lru_cache(maxsize=None)
def capability(device: torch.device) -> tuple:
    """The CUDA device's compute capability, looked up once (ops ask on every call)."""
    return torch.cuda.get_device_capability(device)


def fast_tanh_ok(device: torch.device) -> bool:
    """Whether a kernel launched on ``device`` may use ``_tanh_approx``: a CUDA GPU of sm_75 or later (PTX
    ``tanh.approx.f32``), outside the interpreter (which runs no PTX)."""
    return (device.type == "cuda" and torch.version.hip is None and not registry.interpret_mode()
            and capability(device) >= (7, 5))


@contextlib.contextmanager
def scratch_allocator(device="cuda"):
    """Triton's scratch allocator for device TMA descriptors (memory on ``device``), set for a launch outside
    Inductor (which sets its own) where none is set; the previous one is restored after."""
    try:
        from triton.runtime import _allocation

        var = _allocation._allocator
        unset = isinstance(var.get(), _allocation.NullAllocator)
    except (ImportError, AttributeError):  # a triton without device descriptors
        yield
        return
    if not unset:
        yield
        return
    token = var.set(lambda size, alignment, stream: torch.empty(size, device=device, dtype=torch.int8))
    try:
        yield
    finally:
        var.reset(token)


# How an autotuner times its configs at compile time. Triton's default (``do_bench``: 25 ms of warm-up and
# 100 ms of calls a config, L2 flushed before each call) took most of a first compile's tuning. Each config's
# calls are captured instead in a CUDA graph of about ``registry.GRAPH_UNIT_MS`` and replayed TUNE_REPLAYS
# times, the median deciding: on the H200, tuning resnet50's 23 distinct convs took 0.93 s against 4.05 s
# for do_bench at 5 / 20 ms, and no choice was slower than do_bench's, whose own second tuning changed 4 of
# the 23 (up to 12% slower; scripts/autotune_bench_probe.py, benchmarks/results/diagnostics/README.md,
# twenty-ninth session). L2 stays warm between calls, as it is in a model where the previous op just wrote
# the input.
TUNE_REPLAYS = 5


def graph_bench(kernel_call, quantiles=None):
    """Triton's ``autotune(do_bench=...)``: ms per call of ``kernel_call`` (with ``quantiles``: the median,
    the fastest and the slowest replay). A config that fails to compile or launch raises from its first
    call, as Triton's own timing does; where the calls cannot be captured, they are timed by ``do_bench``."""
    kernel_call()  # compiled and tuned outside the graph: a config's compile error reaches the autotuner
    try:
        with registry._side_stream():
            replay = registry._Replay([kernel_call])
            for _ in range(TUNE_REPLAYS):
                replay.replay()
            times = replay.times()
    except Exception:  # noqa: BLE001 - a call that cannot run in a graph is timed on the stream
        return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)
    ms = statistics.median(times)
    return [ms, min(times), max(times)][:len(quantiles)] if quantiles else ms


# Which configs an autotuner times. Every family lists its candidates with the timed ones first: a small set
# that, at every shape real models' first compiles tune (resnet50, bert-base, vit_b_16 and llama-1b-prefill on
# the H200: scripts/config_timings.py, benchmarks/results/diagnostics/config-timings-1dd10dd-nvidia-h200.jsonl),
# holds a config within 1.2% of the fastest candidate. Each config a site times is a Triton compile on a first
# compile's critical path: leaving the rest out halved the configs those compiles timed (216 to 102).
# TRITONFUSE_AUTOTUNE=all times every candidate (to check the choice again on another GPU or model).


def tuned(candidates: list, keep: int) -> list:
    """The configs an autotuner times: the first ``keep`` of ``candidates``, or all of them with
    ``TRITONFUSE_AUTOTUNE=all``."""
    return list(candidates) if config.autotune_all() else list(candidates[:keep])


def autotune_kw() -> dict:
    """The keyword arguments every family's ``triton.autotune`` gets, where this Triton takes them: results
    kept on disk, and configs timed by ``graph_bench`` on a GPU (the interpreter keeps Triton's default)."""
    params = inspect.signature(triton.autotune).parameters
    kw = {"cache_results": True} if "cache_results" in params else {}
    if "do_bench" in params and not registry.interpret_mode():
        kw["do_bench"] = graph_bench
    return kw
