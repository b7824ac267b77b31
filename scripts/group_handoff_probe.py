"""An MLP's two W8A8 GEMMs with the hidden activation handed over in int8 per row and group of 128 columns
(``kernels.int8.int8_linear_group_out`` / ``int8_linear_group_in``), against what int8 mode serves at BERT's
and ViT's MLPs now (the W8A8 up-projection with its GELU, then cuBLAS's fp16 down-projection: int8 measured
slower there, its input's quantization pass included) and cuBLAS's fp16 pair. x arrives quantized on every
int8 side (the LayerNorm's kernel quantizes it). Each half of the handoff is swept over seven tile configs;
its best is reported beside each half of the others.

    python3 scripts/group_handoff_probe.py [--shapes 16384x768x3072x768,...]

Shapes: M x K x N x N2 (x [M, K] -> hidden [M, N] -> out [M, N2]). GPU ms from replayed CUDA graphs
(``probe_log.graph_ms``); SQNR in dB of each pair's output against the float MLP in fp64 (the kernels' checks:
``tests/test_int8.py -k group_handoff``). Rows go to ``$OUT/group-handoff-probe.jsonl``."""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_log import graph_ms, jsonl_log, run_meta  # noqa: E402

from tritonfuse.kernels import int8 as Q  # noqa: E402

# bert-base (b32 s512), vit_b_16 (b64, 197 tokens), and a wider one
SHAPES = "16384x768x3072x768,12608x768x3072x768,8192x2048x8192x2048"
GROUP = 128
# (BLOCK_M, BLOCK_K, stages, warps) of the producer, whose BLOCK_N is the group
# (128, 128, 3, 4: one warpgroup, two or three programs an SM, is the served kernel's pick at BERT's up-projection)
UP_TILES = [(128, 128, 3, 4), (128, 128, 3, 8), (128, 128, 4, 8), (128, 64, 4, 4), (64, 128, 4, 4), (256, 64, 3, 8),
            (128, 256, 3, 8)]
# (BLOCK_M, BLOCK_N, stages, warps) of the consumer, whose BLOCK_K is the group
DOWN_TILES = [(128, 128, 3, 4), (128, 128, 3, 8), (128, 128, 4, 8), (128, 256, 3, 8), (64, 128, 4, 4), (128, 64, 4, 4),
              (256, 128, 3, 8)]


def sqnr(ref, y) -> float:
    noise = (ref - y.double()).norm().item()
    return math.inf if noise == 0 else 20 * math.log10(ref.norm().item() / noise)


def operands(M, K, N, N2, device):
    x = torch.randn(M, K, device=device, dtype=torch.float16)
    w1 = torch.randn(N, K, device=device) * K ** -0.5
    w2 = torch.randn(N2, N, device=device) * N ** -0.5
    b1, b2 = (torch.randn(n, device=device, dtype=torch.float16) * 0.1 for n in (N, N2))
    return x, w1, w2, b1, b2


def best(emit, meta, shape, side, ops, calls: dict):
    """Time each of ``calls`` (config name -> fn); emit the best. Returns (ms, fn) of the best."""
    found = []
    for name, fn in calls.items():
        try:
            found.append((graph_ms(fn), name, fn))
        except Exception as e:  # noqa: BLE001 - a probe: say what failed and go on
            emit(**meta, shape=shape, side=side, config=name, error=f"{type(e).__name__}: {str(e)[:160]}")
    if not found:
        return math.inf, None
    ms, name, fn = min(found, key=lambda t: t[0])
    emit(**meta, shape=shape, side=side, config=name, ms=ms, tops=ops / ms / 1e9,
         configs={n: round(t, 4) for t, n, _ in found})
    return ms, fn


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=SHAPES)
    a = ap.parse_args()
    emit = jsonl_log("group-handoff-probe.jsonl")
    meta = run_meta()
    print(meta, flush=True)
    for shape in a.shapes.split(","):
        M, K, N, N2 = (int(v) for v in shape.split("x"))
        x, w1, w2, b1, b2 = operands(M, K, N, N2, "cuda")
        (w1q, w1s), (w2q, w2s) = Q.quantize_weight(w1), Q.quantize_weight(w2)
        w1h, w2h = w1.half(), w2.half()
        xq, xs = Q.quant_rows(x)
        ops_up, ops_down = 2 * M * N * K, 2 * M * N2 * N
        h16 = F.gelu(torch.addmm(b1, x, w1h.T))
        q, s = Q.int8_linear_group_out(xq, xs, w1q, w1s, b1, "gelu", group=GROUP,
                                       cfg=Q.group_tiles(128, GROUP, 128))
        h8 = Q._w8a8(xq, xs, w1q, w1s, b1, "gelu", torch.float16)
        # the halves
        t_cub_up, _ = best(emit, meta, shape, "cuBLAS up + GELU", ops_up,
                           {"addmm+gelu": lambda: F.gelu(torch.addmm(b1, x, w1h.T))})
        t_int8_up, _ = best(emit, meta, shape, "int8 up (served)", ops_up,
                            {"autotuned": lambda: Q._w8a8(xq, xs, w1q, w1s, b1, "gelu", torch.float16)})
        ups = {f"{bm}x{GROUP}x{bk} s{st} w{wa}": (lambda c=Q.group_tiles(bm, GROUP, bk, st, wa):
                                                   Q.int8_linear_group_out(xq, xs, w1q, w1s, b1, "gelu", GROUP, c))
               for bm, bk, st, wa in UP_TILES}
        t_gq_up, up_fn = best(emit, meta, shape, "group up (int8 out)", ops_up, ups)
        t_cub_down, _ = best(emit, meta, shape, "cuBLAS down", ops_down, {"addmm": lambda: torch.addmm(b2, h16, w2h.T)})
        t_row_down, _ = best(emit, meta, shape, "int8 down, row kernel first", ops_down,
                             {"autotuned": lambda: Q._w8a8(*Q.quant_rows(h8), w2q, w2s, b2, "none", torch.float16)})
        downs = {f"{bm}x{bn}x{GROUP} s{st} w{wa}": (
            lambda c=Q.group_tiles(bm, bn, GROUP, st, wa):
            Q.int8_linear_group_in(q, s, w2q, w2s, b2, "none", torch.float16, GROUP, c))
            for bm, bn, st, wa in DOWN_TILES}
        t_gs_down, down_fn = best(emit, meta, shape, "group down (int8 in)", ops_down, downs)
        # the pairs' accuracy, then the pair as one graph (the best configs)
        ref64 = F.gelu(x.double() @ w1.double().T + b1.double()) @ w2.double().T + b2.double()
        pairs = {
            "cuBLAS fp16 pair": lambda: torch.addmm(b2, F.gelu(torch.addmm(b1, x, w1h.T)), w2h.T),
            "int8 up + cuBLAS down (served)": lambda: torch.addmm(
                b2, Q._w8a8(xq, xs, w1q, w1s, b1, "gelu", torch.float16), w2h.T),
        }
        if up_fn is not None and down_fn is not None:
            c_up = up_fn.__defaults__[0]
            c_down = down_fn.__defaults__[0]
            pairs["group handoff"] = lambda: Q.int8_linear_group_in(
                *Q.int8_linear_group_out(xq, xs, w1q, w1s, b1, "gelu", GROUP, c_up), w2q, w2s, b2, "none",
                torch.float16, GROUP, c_down)
        for name, fn in pairs.items():
            err = sqnr(ref64, fn())
            ms = graph_ms(fn)
            emit(**meta, shape=shape, side=name, ms=ms, sqnr_db=err)
        emit(**meta, shape=shape, side="sum of halves", cublas=t_cub_up + t_cub_down,
             served=t_int8_up + t_cub_down, group=t_gq_up + t_gs_down, int8_row=t_int8_up + t_row_down)


if __name__ == "__main__":
    main()
