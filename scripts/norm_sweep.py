"""Design sweep for the norm_residual kernels' block settings (a GPU, one call): forward and backward timed
from CUDA-graph replays for each setting, beside Inductor's kernel for the same computation.

Backward settings: rows per step (BLOCK_M), programs per SM and warps; forward: rows per program and
warps. The defaults in ``kernels/norm_residual.py`` (``_settings``, ``_bwd_settings``) come from here.

Run: ``python scripts/norm_sweep.py [--hidden 768,1024,2048] [--rows 32768] > sweep.jsonl``; one JSON line
per timing (``variant`` "inductor" or the setting; ``ms`` and effective ``tbps``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import bench_norm_residual as B  # noqa: E402
from common import gpu_time  # noqa: E402

from tritonfuse.kernels import norm_residual as K  # noqa: E402

EPS = 1e-5


def emit(**kw):
    print(json.dumps(kw), flush=True)


def bench(fn):
    return gpu_time(fn, rep=30, timer="graph")


def timed(label, fn, nbytes, **kw):
    try:
        ms = bench(fn)
        emit(variant=label, ms=round(ms, 5), tbps=round(nbytes / ms / 1e9, 3), **kw)
    except Exception as e:  # out of resources and the like
        emit(variant=label, failed=f"{type(e).__name__}: {str(e)[:100]}", **kw)


def timed_with(attr, cfg, label, fn, nbytes, **kw):
    """``timed`` with ``K.<attr>`` (the settings function) answering ``cfg`` meanwhile."""
    orig = getattr(K, attr)
    setattr(K, attr, lambda *_: cfg)
    try:
        timed(label, fn, nbytes, **kw)
    finally:
        setattr(K, attr, orig)


def backward(m, n, dtype, blocks, per_sms, warps):
    torch._dynamo.reset()  # a static-shape Inductor kernel per size (a recompile would go dynamic)
    e = torch.empty((), dtype=dtype).element_size()
    h, dy, ds = (torch.randn(m, n, device="cuda", dtype=dtype) for _ in range(3))
    w, b = torch.randn(n, device="cuda", dtype=dtype), torch.randn(n, device="cuda", dtype=dtype)
    _, mean, rstd = torch.native_layer_norm(h, (n,), w, b, EPS)
    rstd_rms = torch.rsqrt(h.float().pow(2).mean(-1) + EPS)
    cases = {
        "layer": (lambda: B.ours_ln_bwd(dy, h, mean, rstd, w, b), torch.compile(B.ln_bwd),
                  (dy, h, mean, rstd, w, b), 3 * m * n * e),
        "rms": (lambda: B.ours_rms_bwd(dy, ds, h, rstd_rms, w), torch.compile(B.rms_bwd),
                (dy, ds, h, rstd_rms, w), 4 * m * n * e),
    }
    for kind, (ours, ind, args, nbytes) in cases.items():
        tag = dict(exp="bwd", kind=kind, shape=f"{m}x{n}", dtype=str(dtype)[6:])
        timed("inductor", lambda: ind(*args), nbytes, **tag)  # noqa: B023
        for bm, ps, wp in itertools.product(blocks, per_sms, warps):
            if wp * 32 > bm * triton.next_power_of_2(n):
                continue
            timed_with("_bwd_settings", {"BLOCK_M": bm, "per_sm": ps, "num_warps": wp},
                       f"bm{bm}ps{ps}w{wp}", ours, nbytes, **tag)
        timed("default", ours, nbytes, **tag, setting=K._bwd_settings(n, kind == "rms"))


def forward(m, n, dtype, blocks, warps):
    torch._dynamo.reset()
    e = torch.empty((), dtype=dtype).element_size()
    x, r = (torch.randn(m, n, device="cuda", dtype=dtype) for _ in range(2))
    w, b = torch.randn(n, device="cuda", dtype=dtype), torch.randn(n, device="cuda", dtype=dtype)
    cases = {
        "layer": (lambda: B.ours_layer_norm(x, r, w, b), torch.compile(B.add_layer_norm), (x, r, w, b), 3 * m * n * e),
        "rms": (lambda: B.ours_rms_norm(x, r, w), torch.compile(B.add_rms_norm), (x, r, w), 4 * m * n * e),
    }
    for kind, (ours, ind, args, nbytes) in cases.items():
        tag = dict(exp="fwd", kind=kind, shape=f"{m}x{n}", dtype=str(dtype)[6:])
        timed("inductor", lambda: ind(*args), nbytes, **tag)  # noqa: B023
        for bm, wp in itertools.product(blocks, warps):
            timed_with("_settings", dict(K._settings(n, e), BLOCK_M=bm, num_warps=wp), f"bm{bm}w{wp}",
                       ours, nbytes, **tag)
        timed("default", ours, nbytes, **tag, setting=K._settings(n, e))
    src = torch.empty(2 * m * n, device="cuda", dtype=dtype)
    dst = torch.empty_like(src)
    timed("d2d_copy", lambda: dst.copy_(src), 4 * m * n * e, exp="copy", shape=f"{m}x{n}", dtype=str(dtype)[6:])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=32768)
    p.add_argument("--hidden", default="768,1024,2048")
    p.add_argument("--fwd-hidden", default="768,1024")
    p.add_argument("--dtypes", default="float16")
    p.add_argument("--blocks", default="1,2,4", help="backward rows per step")
    p.add_argument("--per-sm", default="4,8,16", help="backward programs per SM")
    p.add_argument("--warps", default="2,4,8,16", help="backward warps")
    p.add_argument("--fwd-blocks", default="1,2,4")
    p.add_argument("--fwd-warps", default="2,4,8")
    args = p.parse_args()
    t0 = time.time()
    ints = lambda v: [int(i) for i in v.split(",") if i]  # noqa: E731
    emit(meta=True, torch=torch.__version__, triton=triton.__version__, gpu=torch.cuda.get_device_name(),
         commit=os.environ.get("TRITONFUSE_COMMIT", ""))
    with torch.no_grad():
        for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
            for n in ints(args.hidden):
                backward(args.rows, n, dtype, ints(args.blocks), ints(args.per_sm), ints(args.warps))
            for n in ints(args.fwd_hidden):
                forward(args.rows, n, dtype, ints(args.fwd_blocks), ints(args.fwd_warps))
    emit(done_s=round(time.time() - t0))


if __name__ == "__main__":
    main()
