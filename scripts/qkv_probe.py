"""Run on a GPU: python3 scripts/qkv_probe.py (writes $OUT/qkv_probe.json).

Three sibling Linears on one input (BERT's Q/K/V, Llama's q/k/v) against one GEMM over their concatenated
weights: is a per-forward weight concat + one cuBLAS GEMM faster than three GEMMs? GPU time from CUDA graphs."""
import json, os, statistics, sys
import torch
import torch.nn.functional as F

from probe_log import graph_ms as _graph_ms  # scripts/, on the path when a script runs

def graph_ms(fn):
    return _graph_ms(fn, reps=20, calls=20)

rows = []
cases = [("bert-base qkv", 16384, 768, [768, 768, 768], torch.float16, True),
         ("vit-like qkv", 12608, 768, [768, 768, 768], torch.float16, True),
         ("llama-1b qkv", 8 * 512, 2048, [2048, 512, 512], torch.bfloat16, False),
         ("llama-1b qkv s2048", 8 * 2048, 2048, [2048, 512, 512], torch.bfloat16, False),
         ("minilm qkv", 32 * 14, 384, [384, 384, 384], torch.float16, True),
         ("bert-large qkv", 16384, 1024, [1024] * 3, torch.float16, True)]
for name, M, K, Ns, dt, bias in cases:
    x = torch.randn(M, K, device="cuda", dtype=dt)
    ws = [torch.randn(n, K, device="cuda", dtype=dt) * 0.02 for n in Ns]
    bs = [torch.randn(n, device="cuda", dtype=dt) if bias else None for n in Ns]
    wc = torch.cat(ws); bc = torch.cat(bs) if bias else None
    three = lambda: [F.linear(x, w, b) for w, b in zip(ws, bs)]
    def fused():
        w = torch.cat(ws); b = torch.cat(bs) if bias else None
        return F.linear(x, w, b).split(Ns, dim=1)
    pre = lambda: F.linear(x, wc, bc).split(Ns, dim=1)
    catonly = lambda: (torch.cat(ws), torch.cat(bs) if bias else None)
    # numerics
    ref = [o.double() for o in three()]
    err = max(((a.double() - r).abs().max() / r.abs().max()).item() for a, r in zip(fused(), ref))
    t3, tf, tp, tc = (graph_ms(f) for f in (three, fused, pre, catonly))
    # alternate rounds for the key pair
    ratios = []
    for i in range(5):
        a, b = (graph_ms(fused), graph_ms(three)) if i % 2 else (graph_ms(three), graph_ms(fused))[::-1]
        ratios.append(a / b)
    row = dict(case=name, M=M, K=K, N=Ns, dtype=str(dt), three_ms=t3, cat_gemm_ms=tf, pre_cat_ms=tp, cat_only_ms=tc,
               fused_vs_three=statistics.median(ratios), max_rel_err=err)
    print(json.dumps(row)); rows.append(row)
json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows},
          open(os.path.join(os.environ.get("OUT", "/tmp"), "qkv_probe.json"), "w"), indent=1)
