"""Probe (a GPU, one call): can a Triton kernel that builds its TMA descriptors on the device
(``tl.make_tensor_descriptor``) be inlined into Inductor's code through ``torch.library.wrap_triton``?

The inlined kernels run pointer loads today because host TMA descriptors need data pointers at trace time.
This prints, for a plain GEMM with device-side descriptors: eager launch with an allocator, the same
launched from a ``torch.compile``d function through ``wrap_triton``, and the result's error against
``torch.mm``; then the GPU time of each beside cuBLAS (replayed CUDA graphs).

Run: ``python scripts/device_tma_probe.py``
"""

from __future__ import annotations

import json
import traceback

import torch
import triton
import triton.language as tl


@triton.jit
def _mm_device_tma(a_ptr, b_ptr, c_ptr, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr):
    a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
    b_desc = tl.make_tensor_descriptor(b_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])
    c_desc = tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, BLOCK_N])
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        a = a_desc.load([pid_m * BLOCK_M, k * BLOCK_K])
        b = b_desc.load([pid_n * BLOCK_N, k * BLOCK_K])
        acc = tl.dot(a, b.T, acc)
    c_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc.to(tl.float16))


def launch(a, b, launcher):
    M, K = a.shape
    N = b.shape[0]
    c = torch.empty((M, N), device=a.device, dtype=a.dtype)
    grid = (triton.cdiv(M, 128), triton.cdiv(N, 128))
    launcher(_mm_device_tma)[grid](a, b, c, M, N, K, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8,
                                   num_stages=3)
    return c


def emit(**kw):
    print(json.dumps(kw), flush=True)


def main():
    emit(torch=torch.__version__, triton=triton.__version__, gpu=torch.cuda.get_device_name())
    a = torch.randn(4096, 1024, device="cuda", dtype=torch.float16)
    b = torch.randn(2048, 1024, device="cuda", dtype=torch.float16)
    ref = (a.float() @ b.float().T)

    def err(c):
        return ((c.float() - ref).norm() / ref.norm()).item()

    def plain(kernel):
        return kernel

    # 1) through wrap_triton inside torch.compile (Inductor inlines the kernel), before any allocator is set
    wrap = getattr(torch.library, "wrap_triton", None)
    compiled = None
    try:
        compiled = torch.compile(lambda x, y: launch(x, y, wrap) + 0, fullgraph=True)
        emit(step="inductor, wrap_triton, no allocator set", err=err(compiled(a, b) - 0))
    except Exception as e:
        emit(step="inductor, wrap_triton, no allocator set", failed=f"{type(e).__name__}: {str(e)[:600]}",
             tb=traceback.format_exc()[-1500:])
        compiled = None

    # 2) eager launch without an allocator, then with one set only for the launch (the previous restored)
    try:
        emit(step="eager, no allocator", err=err(launch(a, b, plain)))
    except Exception as e:
        emit(step="eager, no allocator", failed=f"{type(e).__name__}: {str(e)[:300]}")

    def alloc(size, alignment, stream):
        return torch.empty(size, device="cuda", dtype=torch.int8)

    try:
        from triton.runtime import _allocation

        token = _allocation._allocator.set(alloc)
        try:
            emit(step="eager, allocator set for the launch", err=err(launch(a, b, plain)))
        finally:
            _allocation._allocator.reset(token)
        emit(step="allocator restored", allocator=type(_allocation._allocator.get()).__name__)
    except Exception as e:
        emit(step="eager, allocator set for the launch", failed=f"{type(e).__name__}: {str(e)[:300]}")
    triton.set_allocator(alloc)

    # 3) GPU time of each beside cuBLAS
    try:
        t = triton.testing.do_bench_cudagraph
        emit(step="timing", cublas_ms=t(lambda: a @ b.T, rep=40),
             device_tma_ms=t(lambda: launch(a, b, plain), rep=40),
             inductor_ms=t(lambda: compiled(a, b), rep=40) if compiled is not None else None)
    except Exception as e:
        emit(step="timing", failed=f"{type(e).__name__}: {str(e)[:300]}")


if __name__ == "__main__":
    main()
