"""Trace SDPA with ``enable_gqa`` as the attention pass's replacement does (make_fx on fake tensors) at
llama-1b-prefill's shape, and print the ATen ops it becomes or the error. python3 scripts/gqa_trace_probe.py"""
import traceback

import torch
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

for d, hkv in ((128, 8), (16, 2)):
    q = torch.randn(8, 16, 1024, d, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(8, hkv, 1024, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    try:
        g = make_fx(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=d ** -0.5,
                                                                    enable_gqa=True), tracing_mode="fake")(q, k, v)
        print(d, hkv, [str(n.target) for n in g.graph.nodes if n.op == "call_function"])
    except Exception:  # noqa: BLE001 - a probe
        print(d, hkv, "failed:")
        traceback.print_exc(limit=4)
