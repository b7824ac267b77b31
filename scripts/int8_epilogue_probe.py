"""GPU probe: where the W8A8 GEMM's epilogue time goes at BERT/ViT/Llama MLP shapes (Hopper).

A copy of the device-descriptor TMA kernel with the epilogue's variants as switches: pointer store or TMA
store, the tile finished whole or in two column halves, exact GELU with IEEE or approximate division; each
variant's best config, beside the library's own kernels (host and device descriptors), cuBLAS and the fp16
linear_act kernel, one JSON line per result (times from triton.testing.do_bench, medians, in ms).

    python3 scripts/int8_epilogue_probe.py > epilogue.jsonl
"""

import json

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

from tritonfuse.kernels import int8 as Q
from tritonfuse.kernels import linear_act as LA



@triton.jit
def gelu(x, FAST: tl.constexpr):
    z = tl.abs(x) * 0.7071067811865476
    if FAST:
        t = tl.math.fdiv(1.0, 1.0 + 0.3275911 * z)
    else:
        t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    h = 0.5 * poly * tl.exp(-z * z)
    return tl.where(x >= 0, x * (1.0 - h), x * h)


@triton.jit
def fin(
    acc,
    xs,
    ws_ptr,
    b_ptr,
    out_ptr,
    o_desc,
    off_m,
    off_n,
    M,
    N,
    ACT: tl.constexpr,
    FAST: tl.constexpr,
    STORE: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
):
    offs_n = off_n + tl.arange(0, BN)
    nm = offs_n < N
    y = acc.to(tl.float32) * tl.load(ws_ptr + offs_n, mask=nm, other=0.0)[None, :] * xs[:, None]
    y += tl.load(b_ptr + offs_n, mask=nm, other=0.0).to(tl.float32)[None, :]
    if ACT == 1:
        y = gelu(y, FAST)
    elif ACT == 2:
        y = y * tl.sigmoid(y)
    if STORE == 0:
        offs_m = off_m + tl.arange(0, BM)
        tl.store(
            out_ptr + offs_m[:, None] * N + offs_n[None, :], y.to(tl.float16), mask=(offs_m < M)[:, None] & nm[None, :]
        )
    else:
        o_desc.store([off_m, off_n], y.to(tl.float16))


@triton.jit
def kern(
    x_ptr,
    w_ptr,
    xs_ptr,
    ws_ptr,
    b_ptr,
    out_ptr,
    M,
    N,
    K,
    ACT: tl.constexpr,
    FAST: tl.constexpr,
    STORE: tl.constexpr,
    SUB: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    GROUP_M: tl.constexpr,
    PERSIST: tl.constexpr,
):
    x_desc = tl.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[K, 1], block_shape=[BM, BK])
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[K, 1], block_shape=[BN, BK])
    if SUB:
        o_desc = tl.make_tensor_descriptor(out_ptr, shape=[M, N], strides=[N, 1], block_shape=[BM, BN // 2])
    else:
        o_desc = tl.make_tensor_descriptor(out_ptr, shape=[M, N], strides=[N, 1], block_shape=[BM, BN])
    npm = tl.cdiv(M, BM)
    npn = tl.cdiv(N, BN)
    nt = npm * npn
    kt = tl.cdiv(K, BK)
    for tile in tl.range(tl.program_id(0), nt, tl.num_programs(0), flatten=PERSIST):
        pid_m, pid_n = LA._tile_coords(tile, npm, npn, GROUP_M)
        off_m = pid_m * BM
        off_n = pid_n * BN
        acc = tl.zeros((BM, BN), dtype=tl.int32)
        for ki in range(kt):
            acc = tl.dot(x_desc.load([off_m, ki * BK]), w_desc.load([off_n, ki * BK]).T, acc, out_dtype=tl.int32)
        offs_m = off_m + tl.arange(0, BM)
        xs = tl.load(xs_ptr + offs_m, mask=offs_m < M, other=0.0)
        if SUB:
            lo, hi = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1)))
            fin(lo, xs, ws_ptr, b_ptr, out_ptr, o_desc, off_m, off_n, M, N, ACT, FAST, STORE, BM, BN // 2)
            fin(hi, xs, ws_ptr, b_ptr, out_ptr, o_desc, off_m, off_n + BN // 2, M, N, ACT, FAST, STORE, BM, BN // 2)
        else:
            fin(acc, xs, ws_ptr, b_ptr, out_ptr, o_desc, off_m, off_n, M, N, ACT, FAST, STORE, BM, BN)


CFGS = [
    (128, 256, 128, 3, 8),
    (256, 128, 128, 3, 8),
    (128, 256, 64, 4, 8),
    (128, 128, 128, 4, 8),
    (128, 128, 128, 3, 8),
    (64, 128, 128, 4, 4),
]
NSM = torch.cuda.get_device_properties(0).multi_processor_count
ACTS = {"none": 0, "gelu": 1, "silu": 2}


# (M, K, N, activation): BERT's MLP (batch 32 x 512 tokens), ViT-B/16's (64 x 197), BERT's attention output,
# Llama-1B's gate/up and down projections (8 x 512)
SHAPES = [
    (16384, 768, 3072, "gelu"),
    (12608, 768, 3072, "gelu"),
    (16384, 3072, 768, "none"),
    (16384, 768, 768, "none"),
    (4096, 2048, 8192, "silu"),
    (4096, 8192, 2048, "none"),
]


def emit(**r):
    print(json.dumps(r), flush=True)


def main():
    # scratch memory for the device-built TMA descriptors
    triton.set_allocator(lambda size, align, stream: torch.empty(size, device="cuda", dtype=torch.int8))
    for M, K, N, act in SHAPES:
        torch.manual_seed(0)
        x = torch.randn(M, K, device="cuda", dtype=torch.float16)
        w = torch.randn(N, K, device="cuda", dtype=torch.float16) * 0.05
        b = torch.randn(N, device="cuda", dtype=torch.float16)
        xq, xs = Q.quant_rows(x)
        wq, ws = Q.symmetric_int8(w, (1,))
        ws = ws.reshape(-1).contiguous()
        s = dict(M=M, K=K, N=N, act=act)
        ref = Q._w8a8(xq, xs, wq, ws, b, act, torch.float16, use_tma="device")
        t = do_bench(lambda: Q._w8a8(xq, xs, wq, ws, b, act, torch.float16, use_tma="device"), warmup=25, rep=200)
        emit(**s, what="repo_device_tma", ms=t)
        t = do_bench(lambda: Q._w8a8(xq, xs, wq, ws, b, act, torch.float16), warmup=25, rep=200)
        emit(**s, what="repo_host_tma", ms=t)
        f = {"gelu": torch.nn.functional.gelu, "silu": torch.nn.functional.silu, "none": lambda y: y}[act]
        t = do_bench(lambda: f(torch.nn.functional.linear(x, w, b)), warmup=25, rep=200)
        emit(**s, what="cublas+eager_act", ms=t)
        t = do_bench(lambda: torch.nn.functional.linear(x, w, b), warmup=25, rep=200)
        emit(**s, what="cublas_only", ms=t)
        if act in ("gelu", "none"):
            try:
                t = do_bench(lambda: LA.linear_act(x, w, b, act), warmup=25, rep=200)
                emit(**s, what="fp16_linear_act", ms=t)
            except Exception as e:
                emit(**s, what="fp16_linear_act", err=repr(e)[:200])
        out = torch.empty(M, N, device="cuda", dtype=torch.float16)
        for store, sub in [(0, 0), (1, 0), (1, 1), (0, 1)]:
            for fast in ([0, 1] if act == "gelu" else [0]):
                best = None
                for cfg in CFGS:
                    bm, bn, bk, st, wp = cfg
                    for persist in (1, 0):
                        tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
                        grid = (min(tiles, NSM) if persist else tiles,)
                        fn = lambda: kern[grid](
                            xq,
                            wq,
                            xs,
                            ws,
                            b,
                            out,
                            M,
                            N,
                            K,
                            ACTS[act],
                            fast,
                            store,
                            sub,
                            bm,
                            bn,
                            bk,
                            8,
                            persist,
                            num_stages=st,
                            num_warps=wp,
                        )
                        try:
                            fn()
                            torch.cuda.synchronize()
                            err = (out.float() - ref.float()).abs().max().item()
                            t = do_bench(fn, warmup=10, rep=60)
                        except Exception as e:
                            emit(**s, store=store, sub=sub, fast=fast, cfg=cfg, persist=persist, err=repr(e)[:150])
                            continue
                        if best is None or t < best[0]:
                            best = (t, cfg, persist, err)
                if best:
                    emit(
                        **s,
                        what="probe",
                        store=store,
                        sub=sub,
                        fast=fast,
                        ms=best[0],
                        cfg=best[1],
                        persist=best[2],
                        maxdiff=best[3],
                    )


if __name__ == "__main__":
    main()
