"""Time the attention forward kernels' tile-loop variants and configs on a GPU, beside SDPA.

The variant is a constexpr of ``kernels/attention.py``'s forward kernels: FOLD (the softmax scale inside
the exponent's FMA; ``FOLD_SCALE``). At commit ef18943 the kernels also had LAZY (rescale the accumulator
only when a running max grows by more than 2^8) and PIPE (the next key block's q.k issued before this
block's softmax), and later a WS switch (Triton's automatic warp specialization of the TMA loop); all three
measured no faster and were removed (benchmarks/results/diagnostics/README.md). Each (shape, kernel,
variant, config) is compiled first, side by side in threads, then timed from a replayed CUDA graph (median),
and its output is checked on two heads against an fp64 reference (error <= 2x SDPA's + 2e-3). The shapes are
``bench_attention.py``'s and those of the zoo's models (``tritonfuse bench``): bert-base's padded attention
runs the pointer kernel with a boolean key-padding mask, as inlined sites do in a model.

Run: ``python scripts/attn_fwd_sweep.py [--shapes d128,bert] [--kernels tma,pointer] [--out rows.jsonl]``
(``--smoke``: tiny shapes on the CPU under ``TRITON_INTERPRET=1``, each launch run once and not timed)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from common import gpu_time  # noqa: E402
from probe_log import run_meta  # noqa: E402

from tritonfuse.kernels import attention as K  # noqa: E402

# name: (B, Hq, Hkv, S, D, causal, mask)
SHAPES = {
    "d128": (8, 16, 16, 4096, 128, False, None),
    "d128-causal": (8, 16, 16, 4096, 128, True, None),
    "d64": (8, 16, 16, 4096, 64, False, None),
    "d64-causal": (8, 16, 16, 4096, 64, True, None),
    "bert": (32, 12, 12, 512, 64, False, "keypad"),
    "bert-full": (32, 12, 12, 512, 64, False, "keypad-full"),  # the same mask materialised [B, 1, S, S]
    "bert-additive": (32, 12, 12, 512, 64, False, "keypad-add"),  # as HF's eager attention adds it: 0 or finfo.min
    "vit": (64, 12, 12, 197, 64, False, None),
    "llama-prefill": (8, 16, 8, 1024, 128, True, None),
    "smoke": (1, 2, 2, 150, 64, False, None),
    "smoke-keypad": (2, 2, 2, 97, 64, False, "keypad"),
    "smoke-full": (2, 2, 2, 97, 64, False, "keypad-full"),
    "smoke-additive": (2, 2, 2, 97, 64, False, "keypad-add"),
}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
VARIANTS = [{"FOLD": False}, {"FOLD": True}]
# under a key-padding mask (pointer kernel, MASK_KIND 3 / 4): reading every key block, or only those the mask
# keeps (TRIM, ``kernels.attention.TRIM_PADDING``; the shipped default), and with a mask whose kept keys are
# one run, the mask read only at the run's ends (RUN, ``RUN_PADDING``), the scale folded into the exponent
# (FOLD, bool masks only) or not
MASK_VARIANTS = [{"FOLD": False, "TRIM": False}, {"FOLD": False, "TRIM": True},
                 {"FOLD": False, "TRIM": True, "RUN": True}, {"FOLD": True, "TRIM": True, "RUN": True}]
# (BLOCK_M, BLOCK_N, warps, stages) beyond the lists; 128x64 in 2 stages (96 KB at D=128) and the 64-row
# tiles leave room for two programs an SM, whose prologues and epilogues may overlap each other's loops
EXTRA = [(128, 128, 8, 2), (128, 64, 4, 4), (128, 64, 4, 2), (64, 64, 4, 3), (64, 128, 4, 3), (128, 32, 4, 2),
         (64, 64, 4, 2), (128, 64, 8, 2)]


def _configs(kernel: str, D: int) -> list:
    lib = K._TMA_CONFIGS if kernel == "tma" else K._FWD_CONFIGS
    cfgs = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages): c for c in lib}
    for c in EXTRA:
        cfgs.setdefault(c, K._cfg(*c))
    # the kernels' own pruning: what fits in shared memory at this head dim
    kept = K._prune(False)(list(cfgs.values()), {}, HEAD_DIM=D)
    return [t for t, c in cfgs.items() if c in kept]


def _inputs(shape: str, dtype):
    B, Hq, Hkv, S, D, causal, mask = SHAPES[shape]
    m = None
    g = torch.Generator(device=DEVICE).manual_seed(0)
    q = torch.randn(B, S, Hq, D, device=DEVICE, dtype=dtype, generator=g).transpose(1, 2)
    k = torch.randn(B, S, Hkv, D, device=DEVICE, dtype=dtype, generator=g).transpose(1, 2)
    v = torch.randn(B, S, Hkv, D, device=DEVICE, dtype=dtype, generator=g).transpose(1, 2)
    if mask in ("keypad", "keypad-full", "keypad-add"):  # HF BERT's padding: each keeps at least half its tokens
        lengths = torch.randint(S // 2, S + 1, (B,), generator=torch.Generator().manual_seed(1))
        lengths[0] = S
        m = (torch.arange(S)[None, :] < lengths[:, None]).view(B, 1, 1, S).to(DEVICE)
        if mask == "keypad-full":  # as HF's masking utilities hand it over: [B, 1, S, S]
            m = m.expand(B, 1, S, S).contiguous()
        if mask == "keypad-add":
            m = torch.where(m, 0.0, torch.finfo(dtype).min).to(dtype)
    return q, k, v, m, causal


def _launch(kernel, q, k, v, m, causal, variant, cfg, out):
    """(jit function, grid, positional args, keyword args) of one forward launch with explicit meta."""
    B, H, S, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    bm, bn, warps, stages = cfg
    qk_scale = D ** -0.5 * K.LOG2E
    lse = torch.empty((B, H, S), device=q.device, dtype=torch.float32)
    mk = 0 if m is None else 1
    opts = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, FOLD=variant["FOLD"] and mk == 0)
    lpt, group = K._lpt(B * H, Sk, D, q.element_size(), causal)  # the shipped grid: LPT order when causal
    opts.update(LPT=lpt, LPT_GROUP=group)
    grid = K._fwd_grid(S, B * H, lpt)({"BLOCK_M": bm})
    if kernel == "tma":
        descs = [K.host_desc(t, [1, 1, 16, D]) for t in (q, k, v, out)]
        K._tma_block_hook({"q_desc": descs[0], "k_desc": descs[1], "v_desc": descs[2], "o_desc": descs[3],
                           "BLOCK_M": bm, "BLOCK_N": bn, "HEAD_DIM": D})
        args = (*descs, lse, H, H // Hkv, S, Sk, K._bucket(S), K._bucket(Sk), qk_scale)
        return K._attn_fwd_tma_kernel.fn, grid, args, dict(HEAD_DIM=D, IS_CAUSAL=causal, STORE_LSE=False, **opts)
    mm, m_strides, mk = K._mask_args(m, (B, H, S, Sk), q)
    mk = K._pointer_mask_kind(mk, m_strides)
    run = variant.get("RUN", False) and mk in (3, 4) and not causal
    opts["FOLD"] = variant["FOLD"] and (mk == 0 or (run and mk == 3))  # (not with an additive mask)
    args = (q, k, v, mm, out, lse, lse, *q.stride(), *k.stride(), *v.stride(), *m_strides, *out.stride(),
            H, H // Hkv, S, Sk, K._bucket(S), K._bucket(Sk), qk_scale, 0.0)
    kw = dict(HEAD_DIM=D, BLOCK_D=max(16, K.next_pow2(D)), MASK_KIND=mk, IS_CAUSAL=causal, STORE_LSE=False,
              RTNE_BF16=False, EMPTY_ROWS=False, TRIM=variant.get("TRIM", False) and mk in (3, 4), RUN=run,
              **K._precision(q.dtype), **opts)
    return K._attn_fwd_kernel.fn, grid, args, kw


def _checked(q):
    # the first and the last batch (bert's last one is padded), two query heads
    return ([0, q.shape[0] - 1], slice(0, 2))


def _ref(q, k, v, m, causal):
    sl = _checked(q)
    group = q.shape[1] // k.shape[1]
    ksl = (sl[0], slice(0, max(1, 2 // group)))
    mm = None if m is None else m[sl[0]]
    return K.attention_ref(q[sl].double(), k[ksl].double(), v[ksl].double(), mm, q.shape[-1] ** -0.5, causal)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="d128,d128-causal,d64,bert,bert-full,vit")
    ap.add_argument("--kernels", default="tma,pointer")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--threads", type=int, default=12)
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--fold-only", action="store_true", help="only the shipped variant (FOLD on)")
    args = ap.parse_args()
    variants = [v for v in VARIANTS if v["FOLD"]] if args.fold_only else VARIANTS
    meta = run_meta() if DEVICE == "cuda" else {}
    if args.smoke:
        global gpu_time, _configs
        gpu_time = lambda fn, rep=None: (fn(), 1.0)[1]  # noqa: E731
        lib_configs = _configs
        _configs = lambda kernel, D: lib_configs(kernel, D)[:1]  # noqa: E731
        args.shapes, args.threads = "smoke,smoke-keypad,smoke-full,smoke-additive", 1
    dtype = getattr(torch, args.dtype)
    rows = []
    t0 = time.time()
    for shape in args.shapes.split(","):
        q, k, v, m, causal = _inputs(shape, dtype)
        B, H, S, D = q.shape
        flops = 4 * B * H * S * S * D * (0.5 if causal else 1.0)
        sl = _checked(q)
        ref = _ref(q, k, v, m, causal)
        kr, vr = (t.repeat_interleave(H // k.shape[1], 1) for t in (k, v))
        sdpa_err = (F.scaled_dot_product_attention(q, kr, vr, attn_mask=m, is_causal=causal)[sl].double()
                    - ref).abs().max().item()
        base = {**meta, "shape": shape, "B": B, "H": H, "Hkv": k.shape[1], "S": S, "D": D, "causal": causal,
                "mask": m is not None, "dtype": args.dtype}
        for name, fn in (("sdpa-default", lambda: F.scaled_dot_product_attention(q, kr, vr, attn_mask=m,
                                                                                  is_causal=causal)),):
            ms = gpu_time(fn)
            rows.append({**base, "provider": name, "ms": ms, "tflops": flops / ms * 1e-9})
            print(f"{shape:14s} {name:40s} {ms:8.4f} ms {flops / ms * 1e-9:6.1f} TFLOP/s", flush=True)
        jobs = []
        for kernel in args.kernels.split(","):
            if kernel == "tma" and (m is not None or D not in (32, 64, 128)):
                continue
            for variant, cfg in itertools.product(variants if m is None else MASK_VARIANTS, _configs(kernel, D)):
                out = K._empty_out(q)
                jobs.append((kernel, variant, cfg, out, _launch(kernel, q, k, v, m, causal, variant, cfg, out)))

        def compile_one(job):
            fn, grid, a, kw = job[4]
            if hasattr(fn, "warmup"):  # not under the interpreter
                fn.warmup(*a, grid=grid, **kw)

        with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
            errors = list(pool.map(lambda j: _try(compile_one, j), jobs))
        print(f"  compiled {len(jobs)} variants in {time.time() - t0:.0f} s", flush=True)
        for (kernel, variant, cfg, out, (fn, grid, a, kw)), cerr in zip(jobs, errors):
            tag = ("F" if variant["FOLD"] else "-") + "".join(k[0] for k in ("TRIM", "RUN") if variant.get(k))
            name = f"{kernel} {tag} {cfg[0]}x{cfg[1]} w{cfg[2]} s{cfg[3]}"
            r = {**base, "provider": kernel, "variant": variant, "config": list(cfg)}
            if cerr:
                rows.append({**r, "error": cerr})
                print(f"{shape:14s} {name:40s} {cerr[:60]}", flush=True)
                continue
            try:
                run = lambda: fn[grid](*a, **kw)  # noqa: E731
                run()
                err = (out[sl].double() - ref).abs().max().item()
                ms = gpu_time(run, rep=20)
            except Exception as e:  # noqa: BLE001 - out of resources at launch and the like
                rows.append({**r, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                print(f"{shape:14s} {name:40s} {type(e).__name__}", flush=True)
                continue
            ok = err <= 2 * sdpa_err + 2e-3
            rows.append({**r, "ms": ms, "tflops": flops / ms * 1e-9, "err": err, "sdpa_err": sdpa_err, "ok": ok})
            print(f"{shape:14s} {name:40s} {ms:8.4f} ms {flops / ms * 1e-9:6.1f} TFLOP/s err {err:.2g}"
                  f"{'' if ok else ' WRONG'}", flush=True)
        if args.out:
            with open(args.out, "w") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
    best = {}
    for r in rows:
        key = (r["shape"], r["provider"])
        if "ms" in r and r.get("ok", True) and (key not in best or r["ms"] < best[key]["ms"]):
            best[key] = r
    print("\nbest per shape and kernel:")
    for (shape, kernel), r in sorted(best.items()):
        print(f"  {shape:14s} {kernel:12s} {r['ms']:.4f} ms {r['tflops']:6.1f} TFLOP/s {r.get('variant', '')} "
              f"{r.get('config', '')}")

def _try(fn, job):
    try:
        fn(job)
        return None
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


if __name__ == "__main__":
    main()
