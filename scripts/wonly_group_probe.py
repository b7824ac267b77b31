"""int8 weight-only decode on the GPU: one weight scale per channel against K groups of 64 and 128, every
candidate decode config timed from CUDA graphs over copies of the weight (cold in L2, as in a decode step),
with each result's SQNR against the fp64 float layer. Rows go to $OUT/group_probe.json.

    python3 scripts/wonly_group_probe.py
"""
import json, os, sys, torch, triton
import torch.nn.functional as F
from tritonfuse.kernels import int8 as Q
torch.manual_seed(0)
dev = "cuda"
C = Q._split_cfg
cands = list(Q._DECODE_CONFIGS) + [C(32, 128, 4, 4, 4), C(32, 128, 4, 6, 4), C(64, 128, 4, 4, 4), C(64, 128, 4, 6, 4),
                                   C(64, 128, 2, 6, 4), C(64, 128, 1, 6, 4), C(64, 128, 1, 8, 4), C(32, 64, 8, 6, 4),
                                   C(64, 64, 4, 8, 4), C(128, 128, 2, 4, 4), C(64, 128, 2, 4, 2), C(32, 128, 2, 6, 2)]
rows = []
for M, N, K, gated in ((16, 4096, 4096, False), (8, 8192, 2048, True), (8, 2048, 8192, False), (16, 14336, 4096, False)):
    x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
    w = torch.randn(N, K, device=dev, dtype=torch.bfloat16) * K ** -0.5
    wu = torch.randn(N, K, device=dev, dtype=torch.bfloat16) * K ** -0.5 if gated else None
    xd = x.double()
    ref = F.silu(xd @ w.double().t()) * (xd @ wu.double().t()) if gated else xd @ w.double().t()
    for G in (0, 64, 128):
        wq, ws = Q.quantize_weight(w, G)
        uq, us = Q.quantize_weight(wu, G) if gated else (wq, ws)
        out = torch.empty(M, N, device=dev, dtype=torch.bfloat16)
        splits = 8
        part = torch.empty(2 * splits * 16 * N, device=dev, dtype=torch.float32)
        count = torch.zeros(max(1024, N // 16 + 1), device=dev, dtype=torch.int32)
        per = wq.numel() * (2 if gated else 1)
        copies = [(wq.clone(), uq.clone()) for _ in range(Q.cold_copies(per))]
        kw = dict(HAS_BIAS=False, ACT="silu" if gated else "none", GATED=gated, DOT_UPCAST=False, RTNE_BF16=False,
                  GROUP_K=G)
        for cfg in Q._prune_decode(cands, {"N": N, "K": K}):
            meta = {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
            grid = (triton.cdiv(N, meta["BLOCK_N"]), meta["SPLIT_K"])

            def launch(a, b, meta=meta, grid=grid):
                Q._decode_kernel.fn[grid](x, a, ws, ws, b, us, us, out, part, count, M, N, K, 16,
                                          x.stride(0), x.stride(1), a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                                          out.stride(0), out.stride(1), **kw, **meta)
            try:
                launch(wq, uq)
                torch.cuda.synchronize()
                err = ((out.double() - ref).norm() / ref.norm()).item()
                def run():
                    for a, b in copies:
                        launch(a, b)
                ms = triton.testing.do_bench_cudagraph(run, rep=20) / len(copies)
            except Exception as e:
                print("FAIL", M, N, K, gated, G, cfg, type(e).__name__, str(e)[:200], flush=True)
                continue
            r = dict(shape=f"{M}x{N}x{K}" + (" gated" if gated else ""), group=G, cfg=str(meta), us=ms * 1e3,
                     sqnr_db=-20 * __import__("math").log10(err))
            rows.append(r)
        best = sorted((r for r in rows if r["shape"].startswith(f"{M}x{N}x{K}") and r["group"] == G), key=lambda r: r["us"])[:3]
        for r in best:
            print(f"{r['shape']:22s} G={G:3d} {r['us']:7.2f} us  SQNR {r['sqnr_db']:.1f}  {r['cfg']}", flush=True)
        del copies
        torch.cuda.empty_cache()
json.dump(rows, open(os.path.join(os.environ.get("OUT", "/tmp"), "group_probe.json"), "w"), indent=1)
