"""Kernels to read with Nsight Compute: each case is set up and warmed (autotuned) first, then launched once
inside an NVTX range named ``prof``, so ``ncu --nvtx --nvtx-include prof/`` profiles exactly those launches.

    ncu --clock-control none --nvtx --nvtx-include "prof/" --set full --import-source yes -o $OUT/prof \\
        python3 scripts/ncu_probe.py [--cases decode-op,decode-64x128,stream,cublas-decode,...]
    ncu -i $OUT/prof.ncu-rep --page details > $OUT/ncu-details.txt

Cases (all on one GPU, fresh random inputs):
  decode-op       the int8 weight-only op at 16x4096x4096 bf16 (issue 7's M=16 target), its tuned config
  decode-64x128   the decode kernel with 64x128 tiles, K split 4, 4 stages, 4 warps
  stream          wonly_floor_probe's weight stream over the same 16 MB (the DRAM floor)
  cublas-decode   cuBLAS's bf16 linear at 16x4096x4096
  attn-fwd        the attention op at B8 H16 S4096 D128 fp16 (issue 5's forward target)
  attn-sdpa       SDPA at the same shape
  int8-gelu       the W8A8 GEMM + GELU at BERT's 16384x768x3072 fp16 (slower than cuBLASLt in int8 mode)
  int8-8192       the W8A8 GEMM at 8192^3 (issue 7's 1400 TOPS target)
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CASES = "decode-op,decode-64x128,stream,cublas-decode,attn-fwd,attn-sdpa,int8-gelu,int8-8192"


def setups(names):
    from wonly_floor_probe import _stream_kernel
    from wonly_probe import decode_launch

    from tritonfuse.kernels import attention  # noqa: F401  (registers tritonfuse::attention)
    from tritonfuse.kernels import int8 as Q

    g = torch.Generator(device="cuda").manual_seed(0)
    dev = "cuda"
    out = {}
    if any(n.startswith("decode") or n in ("stream", "cublas-decode") for n in names):
        x = torch.randn(16, 4096, device=dev, dtype=torch.bfloat16, generator=g)
        w = torch.randn(4096, 4096, device=dev, dtype=torch.bfloat16, generator=g) / 64
        wq, ws = Q.quantize_weight(w)
        o = torch.empty(16, 4096, device=dev, dtype=torch.bfloat16)
        part = torch.empty(8 * 16 * 4096, device=dev, dtype=torch.float32)
        count = torch.zeros(1024, device=dev, dtype=torch.int32)
        sink = torch.empty(4096, device=dev, dtype=torch.int32)
        # (default arguments bind this case's tensors: the int8 cases below reuse the names)
        out["decode-op"] = lambda x=x, wq=wq, ws=ws: Q._weight_only(x, wq, ws, None, "none")
        out["decode-64x128"] = decode_launch(x, wq, ws, o, part, count, 64, 128, 4, 4, 4)
        out["stream"] = lambda wq=wq: _stream_kernel[(1024,)](wq.view(torch.int32), sink, CHUNK=4096, BLOCK=1024,
                                                             num_warps=8, num_stages=3)
        out["cublas-decode"] = lambda x=x, w=w: F.linear(x, w)
    if any(n.startswith("attn") for n in names):
        q, k, v = (torch.randn(8, 16, 4096, 128, device=dev, dtype=torch.float16, generator=g) for _ in range(3))
        out["attn-fwd"] = lambda: torch.ops.tritonfuse.attention(q, k, v, None, 128 ** -0.5, False)
        out["attn-sdpa"] = lambda: F.scaled_dot_product_attention(q, k, v)
    for name, (M, K, N, act) in (("int8-gelu", (16384, 768, 3072, "gelu")), ("int8-8192", (8192, 8192, 8192, "none"))):
        if name in names:
            x = torch.randn(M, K, device=dev, dtype=torch.float16, generator=g)
            w = torch.randn(N, K, device=dev, dtype=torch.float16, generator=g) / K ** 0.5
            b = torch.randn(N, device=dev, dtype=torch.float16, generator=g)
            xq, xs = Q.quant_rows(x)
            wq, ws = Q.quantize_weight(w)
            out[name] = (lambda xq=xq, xs=xs, wq=wq, ws=ws, b=b, act=act:
                         Q._w8a8(xq, xs, wq, ws, b, act, torch.float16))
    return {n: out[n] for n in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=CASES)
    a = ap.parse_args()
    runs = setups(a.cases.split(","))
    for fn in runs.values():  # autotuning and compiles happen here, outside the profiled range
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    for name, fn in runs.items():
        torch.cuda.nvtx.range_push("prof")
        fn()
        torch.cuda.nvtx.range_pop()
        torch.cuda.synchronize()
        print("profiled", name, flush=True)


if __name__ == "__main__":
    main()
