"""Small Triton helpers shared by every family's kernels."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritonfuse import registry


@triton.jit
def cast_out(x, dtype: tl.constexpr, RTNE_BF16: tl.constexpr):
    """Round fp32 ``x`` to ``dtype``. With RTNE_BF16 the bf16 rounding is done by hand: Triton's
    interpreter truncates fp32 -> bf16, which would double the rounding error the tests measure."""
    if RTNE_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)


def rtne_bf16(dtype: torch.dtype) -> bool:
    """Whether ``cast_out`` must round bf16 by hand (only under the CPU interpreter)."""
    return registry.interpret_mode() and dtype == torch.bfloat16


def dot_upcast(dtype: torch.dtype) -> bool:
    """The interpreter's bf16 ``tl.dot`` reads garbage (triton 3.6-3.8); bf16 products are exact in fp32,
    so kernels upcast their operands there and get what the tensor cores give."""
    return registry.interpret_mode() and dtype == torch.bfloat16
