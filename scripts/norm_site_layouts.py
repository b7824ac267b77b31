"""vit_b_16 (b64 fp16) compiled with the tritonfuse backend, each norm_residual site's ``measure`` call
logged: its operands' shapes, strides and offsets, whether the kernel reads each in place with two row
strides, and the record it got; then, per distinct layout, GPU ms (replayed CUDA graphs) of the op on
operands laid out as the site's, on contiguous ones, and of the same-bytes stand-in. Rows to
``$OUT/norm-site-layouts.jsonl``.

    python3 scripts/norm_site_layouts.py"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_log import graph_ms, jsonl_log, run_meta  # noqa: E402

from tritonfuse import zoo  # noqa: E402
from tritonfuse.kernels import norm_residual as K  # noqa: E402

emit = jsonl_log("norm-site-layouts.jsonl")
seen = {}
orig = K.measure


def desc(t):
    return None if t is None else [list(t.shape), list(t.stride()), t.storage_offset(), str(t.dtype)]


def logged(x, r, w, b, kind, write_sum, stats):
    rec = orig(x, r, w, b, kind, write_sum, stats)
    key = (str(desc(x)), str(desc(r)), write_sum, stats)
    seen.setdefault(key, [x, r, w, b, kind, write_sum, stats, 0])[-1] += 1
    emit(event="measure", x=desc(x), r=desc(r), write_sum=write_sum, stats=stats,
         x_two=K._two_strides(x), r_two=r is not None and K._two_strides(r), rec=rec)
    return rec


K.measure = logged


def main():
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # (the CPU: a small model, the log only)
    wl = zoo.get("vit_b_16").build(dev == "cpu", 64, False)
    dtype = torch.half if dev == "cuda" else torch.float32
    model = wl.model.to(dev, dtype).eval()
    inp = wl.inputs(model, dev, dtype, 0)
    with torch.no_grad():
        torch.compile(model, backend="tritonfuse")(*inp.args, **inp.kwargs)
    if dev == "cpu":
        return
    emit(event="meta", **run_meta())
    op = torch.ops.tritonfuse.norm_residual
    for (xd, rd, write_sum, stats), (x, r, w, b, kind, _, _, count) in seen.items():
        lx, lr = K._as_laid_out(x, "cuda"), None if r is None else K._as_laid_out(r, "cuda")
        cx, cr = lx.contiguous(), None if lr is None else lr.contiguous()
        wv, bv = (None if t is None else torch.randn(t.shape, device="cuda", dtype=t.dtype) for t in (w, b))
        m = cx.numel() // cx.shape[-1]
        out = torch.empty_like(cx)
        sides = {
            "ours at layout": lambda: op(lx, lr, wv, bv, 1e-5, kind, write_sum, False, stats, False),
            "ours contiguous": lambda: op(cx, cr, wv, bv, 1e-5, kind, write_sum, False, stats, False),
            "add at layout": lambda: torch.add(lx, lr if lr is not None else lx, out=out),
            "add contiguous": lambda: torch.add(cx, cr if cr is not None else cx, out=out),
        }
        emit(event="timing", x=xd, r=rd, write_sum=write_sum, sites=count, rows=m,
             **{k: graph_ms(f) for k, f in sides.items()})


if __name__ == "__main__":
    main()
