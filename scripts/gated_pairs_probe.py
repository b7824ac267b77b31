"""A gated MLP's W8A8 GEMM two ways on a GPU: two accumulators (gate and up weights apart, tiles of at most
128 x 128) against one over the rows in pairs (``kernels.int8.GATED_PAIRS``: the plain GEMM's tiles, the pair
split in the epilogue), each autotuned over its configs, beside the plain W8A8 GEMM over the same 2N rows
(what the pairs could reach) and cuBLAS bf16 (two GEMMs, then silu(g) * u in eager).

    python3 scripts/gated_pairs_probe.py [--shapes 8192x8192x2048,...]   (M x N x K; N the output's columns)

GPU ms from replayed CUDA graphs (``probe_log.graph_ms``); the pairs' output is checked against the two
accumulators'. Rows go to ``$OUT/gated-pairs-probe.jsonl``."""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_log import graph_ms, jsonl_log, run_meta  # noqa: E402

from tritonfuse.kernels import int8 as Q  # noqa: E402

# llama-1b-prefill's (b8 s1024) and a Llama-8B-width gated MLP at 4096 tokens
SHAPES = "8192x8192x2048,4096x14336x4096"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=SHAPES)
    a = ap.parse_args()
    emit = jsonl_log("gated-pairs-probe.jsonl")
    meta = run_meta()
    print(meta, flush=True)
    for shape in a.shapes.split(","):
        M, N, K = (int(v) for v in shape.split("x"))
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        wg, wu = (torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * K ** -0.5 for _ in range(2))
        xq, xs = Q.quant_rows(x)
        (gq, gs), (uq, us) = Q.weight_cache.get(wg), Q.weight_cache.get(wu)
        pq, ps = Q.stack_cache.get([wg, wu], pairs=True)
        sides = {
            "two accumulators": lambda: Q._w8a8(xq, xs, gq, gs, None, "silu", torch.bfloat16, uq, us, None),
            "pairs": lambda: Q._w8a8(xq, xs, pq, ps, None, "silu", torch.bfloat16, pairs=True),
            "plain over 2N rows": lambda: Q._w8a8(xq, xs, pq, ps, None, "none", torch.bfloat16),
            "cuBLAS bf16 + eager silu*mul": lambda: F.silu(x @ wg.T) * (x @ wu.T),
        }
        two = sides["two accumulators"]()
        diff = (sides["pairs"]().float() - two.float()).abs().max().item()
        ops = 2 * M * (2 * N) * K
        for name, fn in sides.items():
            try:
                ms = graph_ms(fn)
            except Exception as e:  # noqa: BLE001 - a probe: say what failed and go on
                emit(**meta, shape=shape, side=name, error=f"{type(e).__name__}: {str(e)[:160]}")
                continue
            emit(**meta, shape=shape, side=name, ms=ms, tops=ops / ms / 1e9,
                 **({"max_abs_diff_vs_two": diff} if name == "pairs" else {}))


if __name__ == "__main__":
    main()
