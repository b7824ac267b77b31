"""Helpers shared by the tests: error vs an fp64 reference, SQNR, verbose comparisons."""

from __future__ import annotations

import math
import uuid

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass


def max_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.double().cpu() - ref.double().cpu()).abs().max().item() if a.numel() else 0.0


def assert_close_to_ref(out: torch.Tensor, ref64: torch.Tensor, eager: torch.Tensor, factor: float = 2.0,
                        atol: float = 1e-5, what: str = "output") -> None:
    """Assert ``out``'s max error vs the fp64 ``ref64`` is at most ``factor`` x eager's own error + atol,
    and that ``out`` has no NaN/Inf where the reference is finite. Prints where it failed and by how much."""
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    o, r, e = out.double().cpu(), ref64.double().cpu(), eager.double().cpu()
    finite = torch.isfinite(r)
    bad = finite & ~torch.isfinite(o)
    assert not bad.any(), f"{what}: {int(bad.sum())} non-finite values where the reference is finite"
    if o.numel() == 0:
        return
    err = (o - r).abs().masked_fill(~finite, 0)
    eager_err = (e - r).abs().masked_fill(~finite, 0).max().item()
    bound = factor * eager_err + atol
    worst = err.max().item()
    if worst > bound:
        idx = tuple(int(i) for i in torch.nonzero(err == worst)[0])
        raise AssertionError(
            f"{what}: max error {worst:.4g} at {idx} (got {o[idx].item():.6g}, ref {r[idx].item():.6g}) "
            f"exceeds {factor} x eager's {eager_err:.4g} + {atol:g} = {bound:.4g}"
        )


def sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 20·log10(‖ref‖ / ‖ref − x‖)."""
    ref, x = ref.double().cpu(), x.double().cpu()
    noise = (ref - x).norm().item()
    return math.inf if noise == 0 else 20 * math.log10(ref.norm().item() / noise)


def fresh(*shape, dtype=torch.float32, device=None, scale=1.0, seed=None) -> torch.Tensor:
    """Random normal data (never zeros) in ``dtype`` on ``device`` (default: torch's default device, the GPU
    in the GPU run). Drawn on the CPU, so a seed gives the same data on every machine."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    t = torch.randn(*shape, generator=g, device="cpu") * scale
    return t.to(device=device if device is not None else torch.empty(0).device, dtype=dtype)


def pretend_gpu_timing(tmp_path, monkeypatch, backend=None):
    """Measured choices on the CPU: a fresh choices store under tmp_path, timing switched on (the tests
    stub ``registry._bench``), op calls timed in one round (never as GPU time alone), and the backend's
    GPU-timing check passed when ``backend`` is given."""
    from tritonfuse import registry

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(registry, "_choices", None)
    monkeypatch.setattr(registry, "timing_enabled", lambda device: True)
    # one round: each side's stub timing is called once per measurement (test_linear_act.py checks the rounds)
    monkeypatch.setattr(registry, "STREAM_ROUNDS", 1)
    # op calls timed back to back (test_linear_act.py checks the GPU-time decision of a hidden host time)
    monkeypatch.setattr(registry, "HOST_HIDDEN", 0)
    monkeypatch.setattr(registry, "_host_floor", {})  # no host floor learned by another test

    def graph_pair(ours, theirs, ours_extra_ms=0.0):
        # no CUDA graphs here: a GPU-time pair of sides from the stub's graphed timing of each, one round
        # (test_linear_act.py checks _graph_pair's rounds)
        t_ours = registry._bench(ours, True) + ours_extra_ms
        t_theirs = sum(registry._bench(f, True) for f in theirs)
        return t_ours, t_theirs, t_ours / t_theirs if t_theirs > 0 else float("inf"), 1

    monkeypatch.setattr(registry, "_graph_pair", graph_pair)
    if backend is not None:
        monkeypatch.setattr(backend, "_gpu_timing", lambda: True)


class GraphOps(CustomGraphPass):
    """A user's post-grad pass (``options={"post_grad_custom_pre_pass": ...}``, run after tritonfuse's): the
    call targets of the graphs it sees. ``token`` is its part of Inductor's cache key: by default new per
    instance, so no graph compiled before is served (a served graph runs neither pass)."""

    def __init__(self, token: str = ""):
        self.ops, self.token = [], token or uuid.uuid4().hex

    def __call__(self, graph):
        self.ops += [str(n.target) for n in graph.nodes if n.op == "call_function"]

    def uuid(self):
        return self.token


def pattern_entries(pm) -> list:
    """Every pattern registered in the PatternMatcherPass ``pm``."""
    return [e for entries in pm.patterns.values() for e in entries]


def pattern_ops(pattern) -> set:
    """The call targets a pattern (Inductor's pattern objects) holds, all its outputs included."""
    from torch._inductor import pattern_matcher as pm

    out: set = set()

    def walk(p):
        if isinstance(p, pm.MultiOutputPattern):
            for o in p.outputs:
                walk(o)
        elif isinstance(p, pm._TargetExpr):  # CallFunction and its kin; VarArgs forms hold no argument patterns
            out.update(p.fns)
            for a in (*getattr(p, "args", ()), *getattr(p, "kwargs", {}).values()):
                walk(a)
        elif isinstance(p, (list, tuple)):
            for a in p:
                walk(a)

    walk(pattern)
    return out


def compiled_keys(kernel) -> set:
    """The specialisations of ``kernel`` (through its autotuner) compiled in this process for the current GPU."""
    import pytest
    import triton

    jit = kernel
    while not isinstance(jit, triton.runtime.jit.JITFunction):
        jit = jit.fn
    caches = getattr(jit, "device_caches", None)
    if caches is None:
        pytest.skip("this Triton keeps its compiled kernels elsewhere")
    return set(caches[torch.cuda.current_device()][0])
