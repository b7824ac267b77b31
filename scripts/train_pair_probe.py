"""Where the attention training pair's time goes (49th session): at llama-1b-prefill's and bert-base's train
shapes, each piece timed alone (GPU time, replayed CUDA graphs, as registry.measured_choice's graphed timing)
and with triton's do_bench: our forward (pointer and TMA kernels, log-sum-exp kept), our backward, SDPA's
forward, SDPA's forward+backward by autograd (what measure(train=True) compares with) and by its ATen ops.

    python scripts/train_pair_probe.py
"""
import torch
import torch.nn.functional as F
import triton

from tritonfuse import registry
from tritonfuse.kernels import attention as K


def t(f):
    g = registry._bench(f, True)
    d = triton.testing.do_bench(f, warmup=25, rep=200)
    return g, d


def case(name, B, H, S, D, causal, mask_kind):
    dt = torch.float16
    q, k, v, do = (torch.randn(B, H, S, D, device="cuda", dtype=dt) for _ in range(4))
    m = None
    if mask_kind == "keypad":
        m = K._timing_mask((B, 1, 1, S), dt, "cuda", True)
    scale = D ** -0.5
    res = {}
    o, lse = K._forward(q, k, v, m, scale, causal, store_lse=True, tma=False)
    res["ours fwd (pointer)"] = t(lambda: K._forward(q, k, v, m, scale, causal, store_lse=True, tma=False))
    res["ours fwd (tma)"] = t(lambda: K._forward(q, k, v, m, scale, causal, store_lse=True, tma=True))
    res["ours fwd no lse (pointer)"] = t(lambda: K._forward(q, k, v, m, scale, causal, store_lse=False, tma=False))
    res["ours bwd"] = t(lambda: torch.ops.tritonfuse.attention_bwd(do, q, k, v, o, lse, m, scale, causal))

    def pair():
        o2, l2 = K._forward(q, k, v, m, scale, causal, store_lse=True, tma=False)
        return torch.ops.tritonfuse.attention_bwd(do, q, k, v, o2, l2, m, scale, causal)
    res["ours pair"] = t(pair)
    cm = causal and m is None
    res["sdpa fwd"] = t(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=cm))

    def sdpa_pair():
        with torch.enable_grad():
            qkv = [x.detach().requires_grad_() for x in (q, k, v)]
            out = F.scaled_dot_product_attention(*qkv, attn_mask=m, is_causal=cm)
            return torch.autograd.grad(out, qkv, do)
    res["sdpa autograd pair"] = t(sdpa_pair)
    if m is None:
        def aten_pair():
            r = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
            return torch.ops.aten._scaled_dot_product_flash_attention_backward(
                do, q, k, v, r[0], r[1], r[2], r[3], r[4], r[5], 0.0, causal, r[6], r[7], scale=scale)
    else:
        mm = m.expand(B, H, S, S)

        def aten_pair():
            r = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, mm, True, 0.0, False, scale=scale)
            return torch.ops.aten._scaled_dot_product_efficient_attention_backward(
                do, q, k, v, mm, r[0], r[1], r[2], r[3], 0.0, [True, True, True, False], False, scale=scale)
    try:
        res["sdpa aten pair"] = t(aten_pair)
    except Exception as e:  # noqa: BLE001
        print("  aten pair failed:", str(e)[:200])
    print(f"{name}: B{B} H{H} S{S} D{D} causal={causal} mask={mask_kind}")
    for k_, (g, d) in res.items():
        print(f"  {k_:28s} graphed {g:7.3f} ms   do_bench {d:7.3f} ms")
    for kern in (K._attn_bwd_dkdv_kernel, K._attn_bwd_dq_kernel):
        print(f"  {kern.fn.__name__} best config: {getattr(kern, 'best_config', None)}")


if __name__ == "__main__":
    case("llama-1b train", 4, 16, 1024, 128, True, None)
    case("bert-base train", 32, 12, 512, 64, False, "keypad")
    case("bert-base train, no mask", 32, 12, 512, 64, False, None)
