"""The SwiGLU dual GEMM on a Hopper GPU, per variant, against Inductor and cuBLAS in the same run: the weight
as a 3-D view of both projections (no copy) or an interleaved copy, K step, pipeline depth, tile order, and
Triton's automatic warp specialization (``tl.range(warp_specialize=True)``, Hopper's pass in triton >= 3.5)
on the persistent tile loop or on the K loop. Timed from replayed CUDA graphs; checks each variant's output.

    python3 scripts/gated_probe.py [--shape 8192x2048x8192] [--quick]

Writes JSON lines to $OUT/gated-probe.jsonl.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from tritonfuse.kernels import linear_act as LA
from tritonfuse.kernels.common import _apply_act

from probe_log import jsonl_log  # scripts/, on the path when a script runs


@triton.jit
def _probe_kernel(x_desc, w_desc, out_desc, M, N, K, NUM_SMS: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                  OUTER_WS: tl.constexpr, INNER_WS: tl.constexpr, FLAT: tl.constexpr, PERSISTENT: tl.constexpr):
    # kernels/linear_act.py's _gated_mlp_tma_kernel (PAIR, silu, no bias) with the loop options as switches
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N // 2)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    step = NUM_SMS if PERSISTENT else num_tiles
    for tile_id in tl.range(tl.program_id(0), num_tiles, step, flatten=FLAT, warp_specialize=OUTER_WS):
        pid_m, pid_n = LA._tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        offs_m = pid_m * BLOCK_M
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in tl.range(k_tiles, warp_specialize=INNER_WS):
            a = x_desc.load([offs_m, ki * BLOCK_K])
            b = w_desc.load([0, pid_n * (BLOCK_N // 2), ki * BLOCK_K]).reshape(BLOCK_N, BLOCK_K)
            acc = tl.dot(a, b.T, acc)
        acc_g, acc_u = LA._halves(acc, BLOCK_N)
        out = _apply_act(acc_g, "silu") * acc_u
        out_desc.store([offs_m, pid_n * (BLOCK_N // 2)], out.to(out_desc.dtype))


def graph_ms(fn):
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="8192x2048x8192")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    emit = jsonl_log("gated-probe.jsonl")

    M, K, N = map(int, a.shape.split("x"))
    dt = torch.bfloat16
    torch.manual_seed(0)
    x = torch.randn(M, K, device="cuda", dtype=dt)
    wg = torch.randn(N, K, device="cuda", dtype=dt) / K ** 0.5
    wu = torch.randn(N, K, device="cuda", dtype=dt) / K ** 0.5
    flops = 4 * M * N * K

    def fn(x, wg, wu):
        return F.silu(F.linear(x, wg)) * F.linear(x, wu)

    ref = fn(x[:256].double(), wg.double(), wu.double())
    inductor = torch.compile(fn)
    for name, f in {"cublas_2mm": lambda: (x @ wg.t(), x @ wu.t()), "eager": lambda: fn(x, wg, wu),
                    "inductor": lambda: inductor(x, wg, wu),
                    "op": lambda: torch.ops.tritonfuse.gated_mlp(x, wg, wu, None, None, "silu")}.items():
        ms = graph_ms(f)
        emit(shape=a.shape, provider=name, ms=ms, tflops=flops / ms / 1e9)
    print("op chose", LA._gated_mlp_tma_kernel.best_config, flush=True)
    for pair in (True, False):
        LA.PAIR_WEIGHTS = pair
        ms = graph_ms(lambda: torch.ops.tritonfuse.gated_mlp(x, wg, wu, None, None, "silu"))
        emit(shape=a.shape, provider=f"op_pair{int(pair)}", ms=ms, tflops=flops / ms / 1e9)
        for bk, st in ((64, 3), (64, 4), (64, 5), (128, 2), (128, 3)):
            kw = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=bk, GROUP_M=8, num_warps=8, num_stages=st)
            try:
                ms = graph_ms(lambda: LA._launch_gated(x, wg, wu, None, None, "silu", fixed=kw))
                emit(shape=a.shape, provider=f"fixed_pair{int(pair)}", bk=bk, stages=st, ms=ms,
                     tflops=flops / ms / 1e9)
            except Exception as e:
                emit(shape=a.shape, provider=f"fixed_pair{int(pair)}", bk=bk, stages=st,
                     error=f"{type(e).__name__}: {str(e)[:200]}")
    LA.PAIR_WEIGHTS = True
    out = torch.empty(M, N, device="cuda", dtype=dt)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    w_desc, up_first = LA._pair_desc(wg, wu)
    if up_first:  # the probe kernel has no UP_FIRST switch: name the lower weight the gate
        wg, wu = wu, wg
        ref = fn(x[:256].double(), wg.double(), wu.double())
        w_desc, _ = LA._pair_desc(wg, wu)
    x_desc, out_desc = LA._desc(x), LA._desc(out)
    grid_opts = itertools.product((64, 128), (3, 4), (8, 16), ((False, False, True, True), (True, False, True, True),
                                                               (True, False, False, True), (False, True, False, False),
                                                               (False, False, False, False)), (8, 4))
    if a.quick:
        grid_opts = [(64, 3, 8, (True, False, True, True), 8)]
    for bk, st, group, (ows, iws, flat, pers), nw in grid_opts:
        if bk == 128 and st > 3:
            continue
        bm = 128 if nw == 8 else 64
        x_desc.block_shape = [bm, bk]
        w_desc.block_shape = [2, 128, bk]
        out_desc.block_shape = [bm, 128]
        tiles = triton.cdiv(M, bm) * triton.cdiv(N, 128)
        grid = (min(sms, tiles) if pers else tiles,)
        tag = dict(shape=a.shape, provider="probe", bm=bm, bk=bk, stages=st, group=group, outer_ws=ows,
                   inner_ws=iws, flat=flat, persistent=pers, warps=nw)

        def run():
            _probe_kernel[grid](x_desc, w_desc, out_desc, M, N, K, NUM_SMS=grid[0] if pers else sms,
                                BLOCK_M=bm, BLOCK_N=256, BLOCK_K=bk, GROUP_M=group, OUTER_WS=ows, INNER_WS=iws,
                                FLAT=flat, PERSISTENT=pers, num_warps=nw, num_stages=st)
        try:
            out.zero_()
            run()
            torch.cuda.synchronize()
            sel = out[:256].double()
            err = ((sel - ref).abs().max() / ref.abs().max()).item()
            ms = graph_ms(run)
            emit(**tag, rel_err=err, ms=ms, tflops=flops / ms / 1e9)
        except Exception as e:
            emit(**tag, error=f"{type(e).__name__}: {str(e)[:300]}")


if __name__ == "__main__":
    main()
