"""Which part of an int8 decode op call costs the host time (A/B of the pieces), on a GPU."""
import time

import torch
import triton

from tritonfuse import config, registry
from tritonfuse.kernels import int8 as Q


def per_call(fn, calls=300):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    s.record()
    for _ in range(calls):
        fn()
    e.record()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6, s.elapsed_time(e) / calls * 1e3


M, N, K = 16, 4096, 4096
x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * K ** -0.5
wq, ws = Q.quantize_weight(w)
out = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
part = torch.empty(8 * 16 * N, device="cuda", dtype=torch.float32)
count = Q._decode_buffers(x.device, 1, N // 16)[1]
print("decode op body     wall/gpu us: %.1f / %.1f" % per_call(lambda: Q._weight_only(x, wq, ws, None, "none")))
print("chosen", Q._decode_kernel.best_config)


def launch_only(kernel):
    kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), meta["SPLIT_K"])](
        x, wq, ws, ws, wq, ws, ws, out, part, count, M, N, K, 16, x.stride(0), x.stride(1), wq.stride(0),
        wq.stride(1), wq.stride(0), wq.stride(1), out.stride(0), out.stride(1),
        HAS_BIAS=False, ACT="none", GATED=False, DOT_UPCAST=False, RTNE_BF16=False, GROUP_K=0)


fast = registry.launcher(Q._decode_kernel)
print("fast launch only   wall/gpu us: %.1f / %.1f" % per_call(lambda: launch_only(fast)))
print("triton launch only wall/gpu us: %.1f / %.1f" % per_call(lambda: launch_only(Q._decode_kernel)))
for cfg in Q._DECODE_CONFIGS:
    kw = dict(cfg.kwargs)

    def one(kw=kw, cfg=cfg):
        Q._decode_kernel.fn[(triton.cdiv(N, kw["BLOCK_N"]), kw["SPLIT_K"])](
            x, wq, ws, ws, wq, ws, ws, out, part, count, M, N, K, 16, x.stride(0), x.stride(1), wq.stride(0),
            wq.stride(1), wq.stride(0), wq.stride(1), out.stride(0), out.stride(1),
            HAS_BIAS=False, ACT="none", GATED=False, DOT_UPCAST=False, RTNE_BF16=False, GROUP_K=0,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **kw)
    print("  %s: wall/gpu us %.1f / %.1f" % ((kw,) + per_call(one)))
tiled = lambda: Q._launch_pointer(Q._wonly_kernel, x, ws, wq, ws, None, "none", out, None, None, None, w8a8=False)  # noqa
print("tiled              wall/gpu us: %.1f / %.1f" % per_call(tiled))
with config.patch(fast_launch="0"):
    print("decode, Triton launch wall/gpu us: %.1f / %.1f" % per_call(lambda: Q._weight_only(x, wq, ws, None, "none")))
