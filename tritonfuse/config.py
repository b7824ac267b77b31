"""Flat settings for tritonfuse.

Every setting is one module-level variable with a one-line comment. Defaults come from ``TRITONFUSE_*``
environment variables, read once at import. Invalid values are reported when the backend is first used
(``validate()``), naming the variable, the value and the allowed values. Tests change settings with
``patch()``::

    from tritonfuse import config
    with config.patch(patterns="linear_act", log="summary"):
        torch.compile(model, backend="tritonfuse")(x)
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
from typing import Iterator

FAMILIES = ("linear_act", "attention", "norm_residual", "conv_bn")
QUANT_MODES = ("none", "int8", "int8-weight")
LOG_LEVELS = ("off", "summary", "debug")

# comma list of families to enable, "all" (default) or "none"
patterns: str = "all"
# int8 quantization: "none" (default), "int8" (W8A8 dynamic) or "int8-weight" (weight-only)
quant: str = "none"
# comma list of module-name globs kept in floating point when quant is on
quant_skip: str = ""
# SQNR gate in dB (0: off): a layer whose int8 output, computed at compile time from its real weights and
# Gaussian activations of its shape, is below it vs the float layer stays in floating point
quant_min_sqnr: float = 0.0
# "off" (default), "summary" (print the report after each compile) or "debug"
log: str = "off"
# "1" (default): a kernel that fails leaves its site to Inductor with one warning; "0": raise instead
fallback_on_error: str = "1"
# also replace Linears with no activation by the Triton GEMM (bias fused); off by default: there the
# Triton kernel only competes with cuBLAS's own bias epilogue
linear_plain: str = "0"

# "1" (default): on a GPU, a Linear + ReLU or GELU site with a bias is also timed as cuBLASLt's GEMM with
# the bias and activation fused into its epilogue (torch._addmm_activation), which serves it where that is the
# fastest path; its GELU is the tanh approximation, so an exact (erf) GELU takes it only in fp16/bf16, where
# its error against an fp64 erf GELU measured below eager's own. "0": the Triton kernel or Inductor only
cublaslt: str = "1"
# "1": on a GPU, an eval conv -> BN -> ReLU site (or conv -> BN -> + residual -> ReLU) over fp16/bf16
# channels_last activations is also timed as cuDNN's fused conv + bias + ReLU (+ residual) with the BN folded
# into the weight and bias by graph ops each call (as Inductor's freezing would fold it once), which serves it
# where it is the fastest path. "0" (default): off, since on the H200 resnet50 ran 0.80x Inductor with it
# although every site it took had measured faster (benchmarks/results/diagnostics/resnet50-cudnn-fused-*)
cudnn_fused: str = "0"
# "1" (experimental, untimed): on an sm_90 GPU, Triton's warp specialization (a producer warpgroup issuing the
# TMA loads, two consumer warpgroups computing) for the attention forward (kernels.attention's
# _attn_fwd_ws_kernel, each config checked against the pointer kernel before its first use) and as extra
# autotune configs of the W8A8 TMA GEMM. "0" (default): off until timed on the GPU
warp_specialize: str = "0"
# "1" (default): on a GPU a site is replaced only where its kernel measured faster than the vendor path
# it replaces (timed once per shape, kept on disk); "0": always use the kernel
measure: str = "1"
# "1" (default): GEMM kernels autotune over a small config set per shape bucket; "0": one config each;
# "all": every candidate config, also those dropped for never winning at real models' shapes (for sweeps)
autotune: str = "1"
# "1" (default): on a GPU, kernels launch through tritonfuse.launch's cached path; "0": Triton's own launch
fast_launch: str = "1"
# "1" (default): on a GPU, ops whose kernels Inductor can compile itself are inlined into Inductor's
# generated code (wrap_triton; no op dispatch per call); "0": every site calls its opaque tritonfuse op
inline: str = "1"
# "1": Inductor launches the kernels it inlines from its static launcher where it can, as its own kernels
# (torch._inductor.config.static_launch_user_defined_triton_kernels; a kernel with global scratch memory,
# as device-side TMA descriptors need, still takes Triton's launcher); "0" (default): Triton's launcher,
# Inductor's default for user-defined kernels (H200, 25th session: no gain measured on bert-base)
static_launch: str = "0"
# with TRITONFUSE_MEASURE, how much faster than the path it replaces a kernel must have measured to serve a
# site (0.03: 3%); a near-tie stays Inductor's, where the choice would otherwise follow timing noise
measure_margin: str = "0.03"
# seconds of per-shape timing (TRITONFUSE_MEASURE) one compiled graph may spend; sites past it stay
# Inductor's until a later compile measures them ("inf": no limit). A safety bound for models with many
# distinct shapes: bert-base and vit_b_16 need about 13 s on the H200, and a graph that runs out is compiled
# again by the next process (bert-base's second process took 22.8 s against Inductor's 4.0 at a 10 s budget)
measure_budget_s: str = "60"
# "auto" (default): a site called as an op is timed as the model will run it: its kernels alone (replayed
# CUDA graphs) under torch.compile(mode="reduce-overhead"), calls enqueued back to back (host cost included)
# otherwise; "1": the compiled model runs inside CUDA graphs the caller captures, so time the kernels alone
cuda_graphs: str = "auto"
# threads that compile a kernel's autotune configs side by side before they are timed on the GPU ("auto",
# the default: up to 8, at most half the CPUs; "1": one after another, as Triton's autotuner does, and
# without Inductor's compile workers, which otherwise compile them first: launch.compile_elsewhere)
compile_threads: str = "auto"

_ENV = {
    "patterns": "TRITONFUSE_PATTERNS",
    "quant": "TRITONFUSE_QUANT",
    "quant_skip": "TRITONFUSE_QUANT_SKIP",
    "quant_min_sqnr": "TRITONFUSE_QUANT_MIN_SQNR",
    "log": "TRITONFUSE_LOG",
    "fallback_on_error": "TRITONFUSE_FALLBACK_ON_ERROR",
    "linear_plain": "TRITONFUSE_LINEAR_PLAIN",
    "cublaslt": "TRITONFUSE_CUBLASLT",
    "cudnn_fused": "TRITONFUSE_CUDNN_FUSED",
    "warp_specialize": "TRITONFUSE_WARP_SPECIALIZE",
    "autotune": "TRITONFUSE_AUTOTUNE",
    "measure": "TRITONFUSE_MEASURE",
    "fast_launch": "TRITONFUSE_FAST_LAUNCH",
    "measure_budget_s": "TRITONFUSE_MEASURE_BUDGET_S",
    "measure_margin": "TRITONFUSE_MEASURE_MARGIN",
    "inline": "TRITONFUSE_INLINE",
    "static_launch": "TRITONFUSE_STATIC_LAUNCH",
    "compile_threads": "TRITONFUSE_COMPILE_THREADS",
    "cuda_graphs": "TRITONFUSE_CUDA_GRAPHS",
}
# settings that change how fast a graph compiles, never what it computes (a graph whose timing budget ran out
# is never served from the cache: backend._bump_generation)
_NOT_IN_KEY = ("compile_threads", "measure_budget_s")


class ConfigError(ValueError):
    """An invalid tritonfuse setting; the message names the variable, the value and what is allowed."""


def load_env(environ=None) -> None:
    """Read the ``TRITONFUSE_*`` variables into this module (done once at import)."""
    environ = os.environ if environ is None else environ
    g = globals()
    for name, var in _ENV.items():
        if var not in environ:
            continue
        raw = environ[var].strip()
        # kept as text; validate() reports a bad value when the backend is first used
        g[name] = raw if name == "quant_skip" else raw.lower()


def _fail(name: str, value, allowed: str) -> None:
    raise ConfigError(f"{_ENV[name]}={value!r} is not valid; allowed: {allowed}")


def validate() -> None:
    """Check every setting; raise ConfigError naming the variable, the value and the allowed values."""
    g = globals()
    fams = [p.strip() for p in str(patterns).lower().split(",") if p.strip()]
    if not fams:
        _fail("patterns", patterns, "'all', 'none' or a comma list of " + ", ".join(FAMILIES))
    if fams not in (["all"], ["none"]):
        bad = [f for f in fams if f not in FAMILIES]
        if bad:
            _fail("patterns", patterns, "'all', 'none' or a comma list of " + ", ".join(FAMILIES))
    if quant not in QUANT_MODES:
        _fail("quant", quant, ", ".join(QUANT_MODES))
    if log not in LOG_LEVELS:
        _fail("log", log, ", ".join(LOG_LEVELS))
    if str(fallback_on_error) not in ("0", "1"):
        _fail("fallback_on_error", fallback_on_error, "0, 1")
    try:
        g["quant_min_sqnr"] = float(quant_min_sqnr)
    except (TypeError, ValueError):
        _fail("quant_min_sqnr", quant_min_sqnr, "a number of dB, e.g. 30")
    try:
        ok = float(measure_budget_s) >= 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        _fail("measure_budget_s", measure_budget_s, "seconds >= 0, or inf")
    try:
        ok = 0.0 <= float(measure_margin) < 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        _fail("measure_margin", measure_margin, "a fraction in [0, 1), e.g. 0.03")
    for name in ("linear_plain", "cublaslt", "cudnn_fused", "measure", "fast_launch", "inline", "static_launch"):
        if str(g[name]) not in ("0", "1"):
            _fail(name, g[name], "0, 1")
    if str(autotune) not in ("0", "1", "all"):
        _fail("autotune", autotune, "0, 1, all")
    if str(cuda_graphs) not in ("auto", "1"):
        _fail("cuda_graphs", cuda_graphs, "auto, 1")
    if str(compile_threads) != "auto" and not (str(compile_threads).isdigit() and int(compile_threads) >= 1):
        _fail("compile_threads", compile_threads, "auto or an integer >= 1")


def enabled_families() -> tuple[str, ...]:
    """The families turned on by ``patterns``, in pipeline order."""
    fams = [p.strip() for p in str(patterns).lower().split(",") if p.strip()]
    if fams == ["all"]:
        return FAMILIES
    if fams == ["none"]:
        return ()
    return tuple(f for f in FAMILIES if f in fams)


def fallback_enabled() -> bool:
    return str(fallback_on_error) != "0"


def measure_enabled() -> bool:
    return str(measure) != "0"


def autotune_enabled() -> bool:
    return str(autotune) != "0"


def autotune_all() -> bool:
    """``TRITONFUSE_AUTOTUNE=all``: autotuners time every candidate config (kernels.common.tuned)."""
    return str(autotune) == "all"


def measure_budget() -> float:
    """Seconds of per-shape timing one compiled graph may spend (``measure_budget_s``)."""
    try:
        return max(float(measure_budget_s), 0.0)
    except (TypeError, ValueError):
        return 10.0


def measure_margin_fraction() -> float:
    """How much faster a kernel must measure to serve a site (``measure_margin``)."""
    try:
        return min(max(float(measure_margin), 0.0), 0.99)
    except (TypeError, ValueError):
        return 0.03


def fast_launch_enabled() -> bool:
    return str(fast_launch) != "0"


def inline_enabled() -> bool:
    return str(inline) != "0"


def compile_thread_count() -> int:
    """Threads for compiling autotune configs side by side (``compile_threads``)."""
    if str(compile_threads).isdigit():
        return max(1, int(compile_threads))
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def linear_plain_enabled() -> bool:
    return str(linear_plain) == "1"


def cublaslt_enabled() -> bool:
    return str(cublaslt) != "0"


def cudnn_fused_enabled() -> bool:
    return str(cudnn_fused) != "0"


def warp_specialize_enabled() -> bool:
    return str(warp_specialize) == "1"


def quant_skipped(module_name: str) -> bool:
    """True when ``module_name`` matches one of the ``quant_skip`` globs."""
    globs = [s.strip() for s in quant_skip.split(",") if s.strip()]
    return any(fnmatch.fnmatchcase(module_name, g) for g in globs)


def snapshot() -> dict:
    """The settings as a dict; part of the key of every graph tritonfuse compiles."""
    return {name: globals()[name] for name in _ENV if name not in _NOT_IN_KEY}


@contextlib.contextmanager
def patch(**changes) -> Iterator[None]:
    """Temporarily change settings, e.g. ``with config.patch(quant="int8"): ...``."""
    g = globals()
    unknown = [k for k in changes if k not in _ENV]
    if unknown:
        raise ConfigError(f"unknown tritonfuse setting(s): {', '.join(unknown)}; known: {', '.join(_ENV)}")
    old = {k: g[k] for k in changes}
    g.update(changes)
    try:
        yield
    finally:
        g.update(old)


load_env()
