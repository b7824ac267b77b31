"""Time W8A8 TMA GEMM configs at issue 7's large shapes (8192^3 asks for >= 1400 TOPS), each launched alone,
beside ``torch._int_mm``, cuBLAS bf16 and cuBLASLt fp8 (``torch._scaled_mm``: what the vendor library
reaches with 8-bit operands on this GPU).

Every config of ``kernels.int8._w8a8_tma_kernel`` plus candidates around it (stages, K step, GROUP_M,
tile shape) is compiled first in spawned processes, then each is launched directly (no autotuner) and timed
from replayed CUDA graphs (``probe_log.graph_ms``). Each output is checked against the int32 product
(``torch._int_mm``) scaled in fp64 (error <= 2 bf16 ulps of the output's largest value). Rows go to
``$OUT/int8-gemm-probe.jsonl``.

Run on a GPU:  python scripts/int8_gemm_probe.py [--shapes 8192x8192x8192,...]  (MxNxK)
               python scripts/int8_gemm_probe.py --shapes 16384x3072x768 --act gelu --bias --dtype float16
               (BERT's up-projection: bias and exact GELU in the epilogue, fp16 out, as int8 mode runs it)
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import sys

import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_int8  # noqa: E402
from probe_log import graph_ms, jsonl_log, run_meta  # noqa: E402

from tritonfuse.kernels import int8 as Q  # noqa: E402

SHAPES = "8192x8192x8192,4096x4096x4096,8192x14336x4096,512x11008x4096"


def candidates() -> list:
    c = Q._tma_cfg
    out = list(Q._W8A8_TMA_CONFIGS)
    for bm, bn, bk, st, w in [(128, 256, 128, 4, 8), (256, 128, 128, 4, 8), (128, 256, 64, 5, 8),
                              (128, 256, 64, 6, 8), (128, 128, 256, 3, 8), (128, 128, 128, 5, 8),
                              (256, 128, 64, 5, 8), (128, 128, 128, 4, 4), (64, 256, 128, 4, 4)]:
        out.append(c(bm, bn, bk, st, w))
    for g in (4, 16, 32):
        out.append(c(128, 256, 128, 3, 8, group=g))
        out.append(c(256, 128, 128, 3, 8, group=g))
    out.append(c(128, 256, 128, 3, 8, flatten=False))
    out.append(c(128, 256, 128, 4, 8, persistent=False, flatten=False))
    # one tile per program, small enough that two or three programs share an SM: one's epilogue runs while
    # another's main loop does (a persistent program's epilogue leaves the tensor cores idle; at K=768 the
    # epilogue is a large share of a tile's time)
    for bm, bn, bk, st, w in [(128, 128, 128, 2, 4), (128, 128, 128, 3, 4), (128, 128, 128, 2, 8),
                              (128, 128, 128, 3, 8), (128, 128, 64, 4, 4), (128, 128, 64, 3, 8),
                              (128, 256, 128, 2, 8), (64, 256, 128, 3, 4), (128, 64, 128, 3, 4)]:
        out.append(c(bm, bn, bk, st, w, persistent=False, flatten=False))
    out.append(c(128, 128, 128, 3, 4))
    out.append(c(128, 128, 128, 3, 8, subtile=True))
    seen, uniq = set(), []
    for cfg in out:
        key = (tuple(sorted(cfg.kwargs.items())), cfg.num_warps, cfg.num_stages)
        if key not in seen:
            seen.add(key)
            uniq.append(cfg)
    return uniq


def label(cfg) -> str:
    k = cfg.kwargs
    flags = "".join(f" {n}" for n in ("PERSISTENT", "FLATTEN", "SUBTILE") if k.get(n))
    return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']} s{cfg.num_stages} w{cfg.num_warps} g{k['GROUP_M']}{flags}"


def launch(cfg, xq, xs, wq, ws, out, act="none", bias=None):
    # the bench's direct launch of one config
    return bench_int8._launch("tma", cfg, xq, xs, wq, ws, out, act=act, bias=bias)


def _compile(job):
    i, act, has_bias, dtype = job
    try:
        cfg = candidates()[i]
        xq = torch.randint(-127, 128, (512, 512), device="cuda", dtype=torch.int8)
        wq = torch.randint(-127, 128, (512, 512), device="cuda", dtype=torch.int8)
        s = torch.ones(512, device="cuda")
        b = torch.zeros(512, device="cuda", dtype=dtype) if has_bias else None
        launch(cfg, xq, s, wq, s, torch.empty(512, 512, device="cuda", dtype=dtype), act, b)
        torch.cuda.synchronize()
        return i, None
    except Exception as e:  # noqa: BLE001 - a config that does not fit: reported, skipped
        return i, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--only", default="", help="comma list of candidate labels to time (default: all)")
    ap.add_argument("--act", default="none", help="the epilogue's activation (gelu: BERT's up-projection; "
                    "gelu_fast: its tanh form on the GPU's tanh.approx)")
    ap.add_argument("--bias", action="store_true", help="a bias in the epilogue")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"), help="x's and out's dtype")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    act = args.act
    log = jsonl_log("int8-gemm-probe.jsonl")
    meta = run_meta()
    cfgs = candidates()
    only = set(args.only.split(",")) if args.only else None
    chosen = [i for i in range(len(cfgs)) if only is None or label(cfgs[i]) in only]  # the candidates timed
    with cf.ProcessPoolExecutor(max_workers=min(16, len(cfgs)), mp_context=mp.get_context("spawn")) as pool:
        failed = {i: err for i, err in pool.map(_compile, [(i, act, args.bias, dtype) for i in chosen]) if err}
    for i, err in failed.items():
        log(**meta, variant=label(cfgs[i]), error=err)
    torch.manual_seed(0)
    for shape in args.shapes.split(","):
        M, N, K = (int(v) for v in shape.split("x"))
        ops = 2.0 * M * N * K

        def emit(variant, ms, **kw):
            log(**meta, shape=shape, act=act, bias=args.bias, dtype=args.dtype, variant=variant, ms=ms,
                tops=ops / ms / 1e9, **kw)

        x = torch.randn(M, K, device="cuda", dtype=dtype)
        w = torch.randn(N, K, device="cuda", dtype=dtype) * K ** -0.5
        b = torch.randn(N, device="cuda", dtype=dtype) if args.bias else None
        xq, xs = Q.quant_rows(x)
        wq, ws = Q.quantize_weight(w)
        ref = torch._int_mm(xq, wq.t()).double() * xs.double()[:, None] * ws.double()[None, :]
        if b is not None:
            ref += b.double()
        ref = {"none": ref, "gelu": torch.nn.functional.gelu(ref),
               "gelu_fast": torch.nn.functional.gelu(ref, approximate="tanh")}[act]
        tol = 2 * ref.abs().max().item() * (2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11)
        emit("torch._int_mm", graph_ms(lambda: torch._int_mm(xq, wq.t())))
        emit(f"cublas {args.dtype}", graph_ms(lambda: torch.matmul(x, w.t())))
        if act != "none" or b is not None:  # cuBLASLt's fused epilogue: what the float backend and Inductor run
            lt = torch.zeros(N, device="cuda", dtype=dtype) if b is None else b
            emit(f"cublasLt {args.dtype} addmm+{act}", graph_ms(lambda: torch._addmm_activation(
                lt, x, w.t(), use_gelu=act.startswith("gelu"))))
        try:
            a8, b8 = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
            one = torch.ones((), device="cuda")
            for fast in (False, True):
                emit(f"cublas fp8 fast_accum={fast}", graph_ms(lambda: torch._scaled_mm(
                    a8, b8.t(), one, one, out_dtype=torch.bfloat16, use_fast_accum=fast)))
        except Exception as e:  # noqa: BLE001 - no fp8 GEMM in this build: say so, go on
            log(**meta, shape=shape, variant="cublas fp8", error=f"{type(e).__name__}: {str(e)[:160]}")
        if act in Q.ACTIVATIONS:
            emit("shipped autotuned", graph_ms(lambda: Q._w8a8(xq, xs, wq, ws, b, act, dtype)),
                 best=str(Q._w8a8_tma_kernel.best_config))
        out = torch.empty(M, N, device="cuda", dtype=dtype)
        for i in chosen:
            cfg = cfgs[i]
            if i in failed:
                continue
            try:
                out.normal_()
                launch(cfg, xq, xs, wq, ws, out, act, b)
                err = (out.double() - ref).abs().max().item()
                ms = graph_ms(lambda: launch(cfg, xq, xs, wq, ws, out, act, b))
                emit(label(cfg), ms, err=err, ok=err <= tol, shipped=i < len(Q._W8A8_TMA_CONFIGS))
            except Exception as e:  # noqa: BLE001
                log(**meta, shape=shape, variant=label(cfg), error=f"{type(e).__name__}: {str(e)[:160]}")
        del x, w, b, xq, xs, wq, ws, ref, out
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
