"""Design experiments on the GPU (not a benchmark of record): which GEMM epilogue layout and which norm
block settings to adopt. Prints one line per variant and writes JSON lines to $OUT/explore.jsonl.

    python3 scripts/explore_gpu.py [gemm] [norm]

GEMM: the persistent TMA Linear+activation kernel at BERT/ViT MLP shapes, with the epilogue applied to the
whole [BM, BN] accumulator (what kernels/linear_act.py does) or to two [BM, BN/2] halves (smaller epilogue
shared memory, so deeper pipelines or two programs per SM fit), persistent or one tile per program, and
ACT in none / gelu (libdevice erf) / gelu_as (Abramowitz-Stegun erfc), to see what the epilogue costs.
Norm: the norm_residual kernel's rows per program and warps at hidden 768..2048, against Inductor.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from tritonfuse.kernels import linear_act as LA
from tritonfuse.kernels import norm_residual as NR
from tritonfuse.kernels.common import host_desc

from probe_log import jsonl_log  # scripts/, on the path when a script runs

emit = jsonl_log("explore.jsonl")


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=150, return_mode="median")


@triton.jit
def _act(x, ACT: tl.constexpr):
    if ACT == "gelu":
        x = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    elif ACT == "gelu_as":
        # erfc(z) ~ t * P(t) * exp(-z^2), t = 1 / (1 + p z) (A&S 7.1.26, |error| < 1.5e-7)
        z = tl.abs(x) * 0.7071067811865476
        t = 1.0 / (1.0 + 0.3275911 * z)
        p = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
        erfc = p * tl.exp(-z * z)
        x = tl.where(x >= 0, x * (1.0 - 0.5 * erfc), 0.5 * x * erfc)
    elif ACT == "relu":
        x = tl.maximum(x, 0.0)
    return x


@triton.jit
def _epi(acc, b_ptr, out_desc, om, on, N, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, BN: tl.constexpr):
    if HAS_BIAS:
        cols = on + tl.arange(0, BN)
        acc += tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    acc = _act(acc, ACT)
    out_desc.store([om, on], acc.to(out_desc.dtype))


@triton.jit
def _gemm(x_desc, w_desc, b_ptr, out_desc, M, N, K,
          HAS_BIAS: tl.constexpr, ACT: tl.constexpr, NUM_SMS: tl.constexpr, SUBTILE: tl.constexpr,
          FLATTEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
          GROUP_M: tl.constexpr):
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    for tile_id in tl.range(tl.program_id(0), num_tiles, NUM_SMS, flatten=FLATTEN):
        pid_m, pid_n = LA._tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        om = pid_m * BLOCK_M
        on = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            a = x_desc.load([om, ki * BLOCK_K])
            b = w_desc.load([on, ki * BLOCK_K])
            acc = tl.dot(a, b.T, acc)
        if SUBTILE:
            acc = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
            a0, a1 = tl.split(acc)
            _epi(a0, b_ptr, out_desc, om, on, N, HAS_BIAS, ACT, BLOCK_N // 2)
            _epi(a1, b_ptr, out_desc, om, on + BLOCK_N // 2, N, HAS_BIAS, ACT, BLOCK_N // 2)
        else:
            _epi(acc, b_ptr, out_desc, om, on, N, HAS_BIAS, ACT, BLOCK_N)


def gemm_variants():
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    shapes = [(16384, 768, 3072, "gelu"), (12608, 768, 3072, "gelu"), (16384, 3072, 768, "none")]
    cfgs = [(128, 256, 64, 3, 8), (128, 256, 64, 4, 8), (128, 128, 64, 3, 4), (128, 128, 64, 4, 4),
            (128, 128, 64, 5, 4), (128, 128, 64, 4, 8), (256, 128, 64, 3, 8), (128, 128, 128, 3, 8)]
    for M, K, N, act in shapes:
        g = torch.Generator(device="cuda").manual_seed(M)
        x = torch.randn(M, K, device="cuda", dtype=torch.float16, generator=g)
        w = torch.randn(N, K, device="cuda", dtype=torch.float16, generator=g) / K**0.5
        b = torch.randn(N, device="cuda", dtype=torch.float16, generator=g)
        out = torch.empty(M, N, device="cuda", dtype=torch.float16)
        flop = 2 * M * N * K
        ref = F.gelu(F.linear(x.float(), w.float(), b.float())) if act == "gelu" else F.linear(x.float(), w.float(), b.float())
        fn = (lambda x, w, b: F.gelu(F.linear(x, w, b))) if act == "gelu" else (lambda x, w, b: F.linear(x, w, b))
        ind = torch.compile(fn)
        base = {"cublas_mm": lambda: torch.mm(x, w.t()), "inductor": lambda: ind(x, w, b),
                "eager": lambda: fn(x, w, b), "op": lambda: torch.ops.tritonfuse.linear_act(x, w, b, act)}
        for name, f in base.items():
            ms = bench(f)
            emit(exp="gemm", shape=f"{M}x{K}x{N}", act=act, variant=name, ms=ms, tflops=flop / ms / 1e9)
        eager_err = ((fn(x, w, b).float() - ref).norm() / ref.norm()).item()
        acts = ["none", act] if act == "none" else ["none", "gelu", "gelu_as", "relu"]
        for bm, bn, bk, st, wp in cfgs:
            for sub in (False, True):
                for persistent in (True, False):
                    for a in acts:
                        if a == "relu" and (sub is False or not persistent):
                            continue
                        try:
                            xd, wd = host_desc(x, [bm, bk]), host_desc(w, [bn, bk])
                            od = host_desc(out, [bm, bn // 2 if sub else bn])
                            tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
                            nprog = min(sms, tiles) if persistent else tiles

                            def run():
                                _gemm[(nprog,)](xd, wd, b, od, M, N, K, HAS_BIAS=True, ACT=a,
                                                NUM_SMS=nprog, SUBTILE=sub, FLATTEN=persistent,
                                                BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
                                                num_warps=wp, num_stages=st)
                            run()
                            err = None
                            if a == act:
                                err = ((out.float() - ref).norm() / ref.norm()).item()
                            ms = bench(run)
                            emit(exp="gemm", shape=f"{M}x{K}x{N}", act=a, variant=f"{bm}x{bn}x{bk}s{st}w{wp}"
                                 f"{'-sub' if sub else ''}{'-pers' if persistent else '-tiles'}", ms=ms,
                                 tflops=flop / ms / 1e9, err=err, eager_err=eager_err)
                        except Exception as e:  # out of resources and the like
                            emit(exp="gemm", shape=f"{M}x{K}x{N}", act=a, variant=f"{bm}x{bn}x{bk}s{st}w{wp}"
                                 f"{'-sub' if sub else ''}{'-pers' if persistent else '-tiles'}",
                                 failed=f"{type(e).__name__}: {str(e)[:80]}")


def norm_variants():
    cases = [("layer", 16384, 768, False), ("layer", 32768, 768, False), ("layer", 32768, 1024, False),
             ("rms", 32768, 1024, True), ("layer", 32768, 2048, False), ("rms", 32768, 2048, True)]
    orig = NR._settings
    for kind, m, n, wsum in cases:
        for dtype in (torch.float16,):
            x = torch.randn(m, n, device="cuda", dtype=dtype)
            r = torch.randn(m, n, device="cuda", dtype=dtype)
            w = torch.randn(n, device="cuda", dtype=dtype)
            b = torch.randn(n, device="cuda", dtype=dtype) if kind == "layer" else None
            nbytes = (4 if wsum else 3) * m * n * x.element_size()
            if kind == "layer":
                fn = lambda x, r, w, b: F.layer_norm(x + r, (n,), w, b, 1e-5)  # noqa: E731
            else:
                def fn(x, r, w, b):
                    h = x + r
                    return F.rms_norm(h, (n,), w, 1e-5), h
            ind = torch.compile(fn)
            ms = bench(lambda: ind(x, r, w, b))
            emit(exp="norm", kind=kind, shape=f"{m}x{n}", variant="inductor", ms=ms, tbps=nbytes / ms / 1e9)
            ms = bench(lambda: torch.add(x, r))
            emit(exp="norm", kind=kind, shape=f"{m}x{n}", variant="add", ms=ms,
                 tbps=3 * m * n * x.element_size() / ms / 1e9)
            for bm in (1, 2, 4, 8):
                for wp in (1, 2, 4, 8):
                    cfg = dict(orig(n, x.element_size()), BLOCK_M=bm, num_warps=wp)
                    NR._settings = lambda *_: cfg  # noqa: B023
                    try:
                        f = lambda: torch.ops.tritonfuse.norm_residual(x, r, w, b, 1e-5, kind, wsum, False, False, False)  # noqa: E731
                        f()
                        ms = bench(f)
                        emit(exp="norm", kind=kind, shape=f"{m}x{n}", variant=f"bm{bm}w{wp}", ms=ms,
                             tbps=nbytes / ms / 1e9)
                    except Exception as e:
                        emit(exp="norm", kind=kind, shape=f"{m}x{n}", variant=f"bm{bm}w{wp}",
                             failed=f"{type(e).__name__}: {str(e)[:80]}")
                    finally:
                        NR._settings = orig


if __name__ == "__main__":
    what = sys.argv[1:] or ["gemm", "norm"]
    t0 = time.time()
    print(torch.__version__, triton.__version__, torch.cuda.get_device_name())
    if "norm" in what:
        norm_variants()
    if "gemm" in what:
        gemm_variants()
    print(f"done in {time.time() - t0:.0f} s")
