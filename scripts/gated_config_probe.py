"""Time every config of the TMA dual GEMM (``kernels.linear_act._TMA_GATED_ALL``) at issue 2's SwiGLU shape,
each launched alone, beside Inductor's path (two cuBLAS GEMMs and a fused silu·mul) and the two GEMMs alone.

Each row is timed from replayed CUDA graphs (``probe_log.graph_ms``) and checked against an fp64 reference
(error <= 2x the bf16 eager path's + 1e-3). Rows go to ``$OUT/gated-config-probe.jsonl``.

Run on a GPU:  python scripts/gated_config_probe.py [--shape 8192x2048x8192] [--fast-silu]

Rows are marked ``fast_silu`` (``kernels.linear_act.FAST_SILU``: the epilogue's SiLU from the GPU's approximate
tanh, bf16 only; on since the 37th session). ``--fast-silu`` times every config with it off and on.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_log import graph_ms, jsonl_log, run_meta  # noqa: E402

from tritonfuse.kernels import linear_act as K  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="8192x2048x8192", help="MxKxN")
    ap.add_argument("--fast-silu", action="store_true", help="also each config with K.FAST_SILU on")
    args = ap.parse_args(argv)
    M, Kd, N = (int(v) for v in args.shape.split("x"))
    log = jsonl_log("gated-config-probe.jsonl")
    meta = run_meta()

    def emit(**row):
        log(**meta, **row)

    torch.manual_seed(0)
    x = torch.randn(M, Kd, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2 * N, Kd, device="cuda", dtype=torch.bfloat16) * Kd ** -0.5  # one fused Linear's weight
    wg, wu = w[:N], w[N:]
    flop = 2 * 2 * M * Kd * N
    xd = x.double()
    ref = F.silu(xd @ wg.double().t()) * (xd @ wu.double().t())  # fp64 on the GPU
    eager = F.silu(x @ wg.t()) * (x @ wu.t())
    tol = 2 * (eager.double() - ref).abs().max().item() + 1e-3
    inductor = torch.compile(lambda x: F.silu(x @ wg.t()) * (x @ wu.t()))
    for name, fn in (("inductor", lambda: inductor(x)), ("two cuBLAS GEMMs", lambda: (x @ wg.t(), x @ wu.t()))):
        ms = graph_ms(fn)
        emit(shape=args.shape, variant=name, ms=ms, tflops=flop / ms / 1e9)
    shipped = K.FAST_SILU
    for cfg in K._TMA_GATED_ALL:
        fixed = {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        label = " ".join(f"{k}={v}" for k, v in cfg.kwargs.items()) + f" w{cfg.num_warps} s{cfg.num_stages}"
        for fast in (False, True) if args.fast_silu else (shipped,):
            K.FAST_SILU = fast
            try:
                out = K._launch_gated(x, wg, wu, None, None, "silu", fixed=fixed)
                err = (out.double() - ref).abs().max().item()
                ms = graph_ms(lambda: K._launch_gated(x, wg, wu, None, None, "silu", fixed=fixed))
                emit(shape=args.shape, variant=label, fast_silu=fast, ms=ms, tflops=flop / ms / 1e9, err=err,
                     ok=err <= tol)
            except Exception as e:  # noqa: BLE001 - a config that does not compile or fit: say so, go on
                emit(shape=args.shape, variant=label, fast_silu=fast, error=f"{type(e).__name__}: {str(e)[:200]}")
    K.FAST_SILU = shipped
    return 0


if __name__ == "__main__":
    sys.exit(main())
