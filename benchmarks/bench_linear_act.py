"""Linear + activation and gated MLP: tritonfuse's fused GEMMs beside cuBLAS, eager and Inductor.

Run on a GPU:  python benchmarks/bench_linear_act.py [--quick]

Providers, in one run, at each shape:
  cublas      torch.matmul alone (the GEMM, no epilogue): the floor a fused kernel competes with
  eager       F.linear then the activation (two or three kernels)
  inductor    torch.compile (default mode): cuBLAS addmm/mm + Inductor's fused pointwise kernel
  tritonfuse  the tritonfuse op (one Triton kernel)
  backend     torch.compile(backend="tritonfuse") of the same function (op + dispatch overhead)
Every timed tritonfuse result is first checked against an fp64 reference. Results merge into
benchmarks/results/kernels-<gpu>.json.
Timing (``--timer``, benchmarks/common.py): by default every provider is captured in a CUDA graph and
replayed (median), so a row is GPU time alone; ``--timer plain`` is triton's ``do_bench`` of Python calls,
where a call shorter than its host cost (an op call's launch, the backend's guards) measures the host.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import add_timer_arg, gpu_time, merge_rows, meta, row, set_timer  # noqa: E402

import tritonfuse  # noqa: E402
from tritonfuse.kernels import linear_act as K  # noqa: E402

COMMAND = " ".join(["python3", "benchmarks/bench_linear_act.py", *sys.argv[1:]])  # as run, flags included


def bench(fn) -> float:
    return gpu_time(fn, warmup=50, rep=300)


def rel_err(out, ref) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def check(name, out, ref, eager):
    err, eager_err = rel_err(out, ref), rel_err(eager, ref)
    ok = err <= 2 * eager_err + 1e-3
    print(f"  check {name}: rel err {err:.2e} (eager {eager_err:.2e}) {'ok' if ok else 'FAIL'}")
    if not ok:
        raise SystemExit(f"{name}: tritonfuse result is wrong")


PROFILE = False


def _profile(name, fn):
    """Print the GPU kernels one call of ``fn`` runs (to see what a provider really does)."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                            torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
    print(f"--- {name}")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=8))


def linear_gelu_rows(M, K_, N, dtype, act="gelu"):
    g = torch.Generator(device="cuda").manual_seed(M)
    x = torch.randn(M, K_, device="cuda", dtype=dtype, generator=g)
    w = torch.randn(N, K_, device="cuda", dtype=dtype, generator=g) / K_**0.5
    b = torch.randn(N, device="cuda", dtype=dtype, generator=g)

    def fn(x, w, b):
        return K.act_ref(F.linear(x, w, b), act)

    ref = K.linear_act_ref(x[:512], w, b, act, upcast=True).to("cuda")
    out = torch.ops.tritonfuse.linear_act(x, w, b, act)
    check(f"linear_{act} {M}x{K_}x{N}", out[:512], ref, fn(x, w, b)[:512])
    inductor = torch.compile(fn)
    backend = torch.compile(fn, backend="tritonfuse")
    backend(x, w, b)
    providers = {
        "cublas": lambda: torch.matmul(x, w.t()),
        "eager": lambda: fn(x, w, b),
        "inductor": lambda: inductor(x, w, b),
        "tritonfuse": lambda: torch.ops.tritonfuse.linear_act(x, w, b, act),
        "backend": lambda: backend(x, w, b),
    }
    flops = 2 * M * K_ * N
    if PROFILE:
        _profile("backend", lambda: backend(x, w, b))
    rows = []
    for p, f in providers.items():
        ms = bench(f)
        rows.append(row(f"linear_{act}", f"{M}x{K_}x{N}", dtype, p, ms, tflops=flops / ms / 1e9, command=COMMAND))
    return rows


def swiglu_rows(M, K_, N, dtype, act="silu"):
    g = torch.Generator(device="cuda").manual_seed(M + 1)
    x = torch.randn(M, K_, device="cuda", dtype=dtype, generator=g)
    wg = torch.randn(N, K_, device="cuda", dtype=dtype, generator=g) / K_**0.5
    wu = torch.randn(N, K_, device="cuda", dtype=dtype, generator=g) / K_**0.5

    def fn(x, wg, wu):
        return K.act_ref(F.linear(x, wg), act) * F.linear(x, wu)

    ref = K.gated_mlp_ref(x[:512], wg, wu, None, None, act, upcast=True).to("cuda")
    out = torch.ops.tritonfuse.gated_mlp(x, wg, wu, None, None, act)
    check(f"gated_{act} {M}x{K_}x{N}", out[:512], ref, fn(x, wg, wu)[:512])
    inductor = torch.compile(fn)
    backend = torch.compile(fn, backend="tritonfuse")
    backend(x, wg, wu)
    providers = {
        "cublas": lambda: (torch.matmul(x, wg.t()), torch.matmul(x, wu.t())),
        "eager": lambda: fn(x, wg, wu),
        "inductor": lambda: inductor(x, wg, wu),
        "tritonfuse": lambda: torch.ops.tritonfuse.gated_mlp(x, wg, wu, None, None, act),
        "backend": lambda: backend(x, wg, wu),
    }
    flops = 2 * 2 * M * K_ * N
    rows = []
    for p, f in providers.items():
        ms = bench(f)
        rows.append(row(f"gated_{act}", f"{M}x{K_}x{N}", dtype, p, ms, tflops=flops / ms / 1e9, command=COMMAND))
    return rows


def sweep() -> None:
    """Time every autotune config alone at the target shapes (to choose the config set)."""
    cases = [("linear", 64 * 197, 768, 3072, torch.float16), ("linear", 32 * 512, 768, 3072, torch.float16),
             ("gated", 8192, 2048, 8192, torch.bfloat16)]
    for kind, M, K_, N, dtype in cases:
        x = torch.randn(M, K_, device="cuda", dtype=dtype)
        w = torch.randn(N, K_, device="cuda", dtype=dtype) / K_**0.5
        w2 = torch.randn(N, K_, device="cuda", dtype=dtype) / K_**0.5
        tma = K._tma_ok(x, w)
        if kind == "gated":
            configs = K._TMA_GATED_CONFIGS if tma else K._GATED_CONFIGS
        else:
            configs = K._TMA_CONFIGS if tma else K._GEMM_CONFIGS
        flops = 2 * M * K_ * N * (2 if kind == "gated" else 1)
        for cfg in configs:
            kw = dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            try:
                if kind == "gated":
                    f = lambda: K._launch_gated(x, w, w2, None, None, "silu", fixed=kw)
                else:
                    f = lambda: K._launch_linear(x, w, None, "gelu", False, fixed=kw)
                ms = bench(f)
                print(f"sweep {kind} {M}x{K_}x{N} {cfg}: {ms:.4f} ms {flops / ms / 1e9:.0f} TFLOP/s")
            except Exception as e:  # out of shared memory etc.
                print(f"sweep {kind} {M}x{K_}x{N} {cfg}: failed {type(e).__name__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the issue's target shapes only")
    parser.add_argument("--no-save", action="store_true", help="print only; do not merge into results/")
    parser.add_argument("--sweep", action="store_true", help="also time each autotune config alone")
    parser.add_argument("--profile", action="store_true", help="print the kernels behind the backend provider")
    add_timer_arg(parser)
    args = parser.parse_args()
    set_timer(args)
    global PROFILE
    PROFILE = args.profile
    if not torch.cuda.is_available():
        raise SystemExit("bench_linear_act.py needs a CUDA GPU")
    print(meta())
    if args.sweep:
        sweep()
    rows = []
    rows += linear_gelu_rows(64 * 197, 768, 3072, torch.float16)  # ViT-B/16 MLP, batch 64
    rows += linear_gelu_rows(32 * 512, 768, 3072, torch.float16)  # BERT-base MLP, batch 32 x 512
    rows += swiglu_rows(8192, 2048, 8192, torch.bfloat16)  # Llama-1B-like MLP
    if not args.quick:
        rows += linear_gelu_rows(8 * 1024, 2048, 8192, torch.bfloat16, act="gelu_tanh")
        rows += swiglu_rows(16, 2048, 8192, torch.bfloat16)  # decode
        rows += swiglu_rows(4096, 4096, 11008, torch.float16)
    print(f"\n{'kernel':<16}{'shape':<20}{'dtype':<10}{'provider':<12}{'ms':>9}{'TFLOP/s':>9}{'vs inductor':>12}")
    ind = {(r["kernel"], r["shape"]): r["ms"] for r in rows if r["provider"] == "inductor"}
    for r in rows:
        speed = ind[(r["kernel"], r["shape"])] / r["ms"]
        print(f"{r['kernel']:<16}{r['shape']:<20}{r['dtype']:<10}{r['provider']:<12}{r['ms']:>9.4f}"
              f"{r['tflops']:>9.1f}{speed:>11.2f}x")
    print("chosen configs:", {k: str(getattr(v, "best_config", None)) for k, v in
                              (("linear", K._linear_act_kernel), ("gated", K._gated_mlp_kernel),
                               ("linear_tma", K._linear_act_tma_kernel), ("gated_tma", K._gated_mlp_tma_kernel))})
    print(tritonfuse.report())
    if not args.no_save:
        print("merged into", merge_rows(rows))


if __name__ == "__main__":
    main()
