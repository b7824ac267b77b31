"""Causal attention forward in head-major against longest-processing-time order (``kernels.attention.CAUSAL_LPT``),
beside SDPA, at issue 5's causal shape and Llama-1B's prefill.

Each row is timed from replayed CUDA graphs (``probe_log.graph_ms``); each of our outputs is checked against
SDPA's (max abs difference, printed). Rows go to ``$OUT/lpt-probe.jsonl``; set TRITONFUSE_COMMIT to name the
commit.

Run on a GPU:  python scripts/lpt_probe.py
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_log import graph_ms, jsonl_log, run_meta  # noqa: E402

from tritonfuse.kernels import attention as K  # noqa: E402

# name: (B, Hq, Hkv, S, D)
SHAPES = {"issue5-causal": (8, 16, 16, 4096, 128), "llama-1b-prefill": (8, 16, 8, 1024, 128),
          "d64-causal": (8, 16, 16, 4096, 64)}


def main() -> int:
    log = jsonl_log("lpt-probe.jsonl")
    meta = run_meta()
    default = K.CAUSAL_LPT
    for name, (B, Hq, Hkv, S, D) in SHAPES.items():
        torch.manual_seed(0)
        q = torch.randn(B, Hq, S, D, device="cuda", dtype=torch.float16)
        k, v = (torch.randn(B, Hkv, S, D, device="cuda", dtype=torch.float16) for _ in range(2))
        flop = 4 * B * Hq * S * S * D / 2
        scale = D ** -0.5
        want = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=Hq != Hkv)
        ms = graph_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                             enable_gqa=Hq != Hkv))
        log(**meta, shape=name, variant="sdpa", ms=ms, tflops=flop / ms / 1e9)
        for kernel in ("tma", "pointer"):
            for lpt in (False, True):
                K.CAUSAL_LPT = lpt

                def call():
                    out = K._empty_out(q)
                    lse = torch.empty((B, Hq, S), device="cuda", dtype=torch.float32)
                    if kernel == "tma":
                        K._launch_tma(q, k, v, out, lse, scale * K.LOG2E, True, False)
                    else:
                        m, m_strides, kind = K._mask_args(None, (B, Hq, S, S), q)
                        K._launch_pointer(q, k, v, m, m_strides, kind, out, lse, scale * K.LOG2E, True, False)
                    return out

                err = (call().float() - want.float()).abs().max().item()
                ms = graph_ms(call)
                log(**meta, shape=name, variant=f"{kernel}{' lpt' if lpt else ''}", ms=ms, tflops=flop / ms / 1e9,
                    err_vs_sdpa=err, group=K._lpt(B * Hq, S, D, 2, True)[1] if lpt else None)
    K.CAUSAL_LPT = default
    return 0


if __name__ == "__main__":
    sys.exit(main())
