"""Attention: SDPA (flash), Inductor and tritonfuse side by side, forward, backward and decode.

Providers:
- ``sdpa``: ``F.scaled_dot_product_attention`` restricted to the flash backend (decode: SDPA's own choice);
  ``sdpa-default``: SDPA's own backend choice, the one Inductor's graph calls (Inductor ran at 649 TFLOP/s on
  the H100 with torch 2.11 where flash gave 357: cuDNN, presumably);
  backward: ``aten._scaled_dot_product_flash_attention_backward`` on the forward's saved outputs.
- ``inductor``: ``torch.compile`` (default backend) of the SDPA call.
- ``tritonfuse``: the ``tritonfuse::attention`` op (its TMA kernel on Hopper when unmasked);
  ``tritonfuse-ws``: the same op with ``TRITONFUSE_WARP_SPECIALIZE=1`` (Hopper; the row is left out,
  with the reason, where the warp-specialized kernel does not serve);
  ``tritonfuse-ptr`` (``--sweep``): the same op with the pointer kernel, and every TMA and warp-specialized
  config timed on its own;
  ``tritonfuse-backend``: ``torch.compile(..., backend="tritonfuse")`` of the SDPA call (match count asserted;
  Inductor's default graph may hold a cuDNN SDPA node, which tritonfuse leaves alone).

Timing (``--timer``, benchmarks/common.py): by default every provider is captured in a CUDA graph and
replayed (median), so a row is GPU time alone; ``--timer plain`` is triton's ``do_bench`` of Python calls,
where a call shorter than its host cost (an op call's launch, the backend's guards) measures the host.

FLOPs: forward 4·B·H·Sq·Sk·D (halved when causal), backward 2.5x that. Every timed output is checked on its
first two heads against an fp64 reference (error <= 2x SDPA's + atol).

Run: ``python benchmarks/bench_attention.py [--budget S] [--sweep] [--models]`` (``--budget`` stops starting
new cases after S seconds; rows done so far are written; ``--models`` asserts match counts on tiny BERT/Llama
CUDA graphs). Without an installed checkout: ``ln -s ../patterns tritonfuse/patterns; ln -s ../kernels
tritonfuse/kernels; PYTHONPATH=. python benchmarks/bench_attention.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_timer_arg, gpu_time, merge_rows, meta, row, set_timer  # noqa: E402

import tritonfuse  # noqa: E402
from tritonfuse import config  # noqa: E402
from tritonfuse.backend import tritonfuse_backend  # noqa: E402  (works without the entry point installed)
from tritonfuse.kernels import attention as K  # noqa: E402

DT = torch.float16
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: only for --smoke under TRITON_INTERPRET=1


def _bench(fn, warmup=10, rep=50):
    return gpu_time(fn, warmup=warmup, rep=rep)


def _qkv(B, Hq, Hkv, Sq, Sk, D, layout="bshd"):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    if layout == "bshd":  # [B, S, H, D] projections viewed as [B, H, S, D], as models produce them
        q = torch.randn(B, Sq, Hq, D, device=DEVICE, dtype=DT, generator=g).transpose(1, 2)
        k = torch.randn(B, Sk, Hkv, D, device=DEVICE, dtype=DT, generator=g).transpose(1, 2)
        v = torch.randn(B, Sk, Hkv, D, device=DEVICE, dtype=DT, generator=g).transpose(1, 2)
    else:
        q = torch.randn(B, Hq, Sq, D, device=DEVICE, dtype=DT, generator=g)
        k = torch.randn(B, Hkv, Sk, D, device=DEVICE, dtype=DT, generator=g)
        v = torch.randn(B, Hkv, Sk, D, device=DEVICE, dtype=DT, generator=g)
    return q, k, v


def _check(name, out, sdpa_out, q, k, v, causal, atol=2e-3):
    # fp64 reference on the first two heads of batch 0
    sl = (slice(0, 1), slice(0, 2))
    group = q.shape[1] // k.shape[1]
    ksl = (slice(0, 1), slice(0, max(1, 2 // group)))
    ref = K.attention_ref(q[sl].double(), k[ksl].double(), v[ksl].double(), None, q.shape[-1] ** -0.5, causal)
    err = (out[sl].double() - ref).abs().max().item()
    sdpa_err = (sdpa_out[sl].double() - ref).abs().max().item()
    ok = err <= 2 * sdpa_err + atol
    print(f"  check {name}: max err {err:.3g} (sdpa {sdpa_err:.3g}) {'ok' if ok else 'FAILED'}")
    if not ok:
        raise AssertionError(f"{name}: error {err:.3g} > 2 x sdpa's {sdpa_err:.3g} + {atol}")


def _sdpa_flash(q, k, v, causal):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def bench_forward(B, H, S, D, causal, rows, sweep=False, compiled=True):
    shape = f"B{B} H{H} S{S} D{D}{' causal' if causal else ''}"
    print(f"forward {shape} (TMA kernel {'off' if K._tma_failed or not K.use_tma else 'on'})")
    q, k, v = _qkv(B, H, H, S, S, D)
    flops = 4 * B * H * S * S * D * (0.5 if causal else 1.0)
    scale = D ** -0.5

    def sdpa():
        return _sdpa_flash(q, k, v, causal)

    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
    if compiled:
        inductor = torch.compile(fn)
        tritonfuse.reset()
        with config.patch(patterns="attention"):
            backend = torch.compile(fn, backend=tritonfuse_backend)
            with torch.no_grad():
                backend_out = backend(q, k, v)
        counts = tritonfuse.counters()["attention"]
        print(f"  tritonfuse backend counts {counts} {[s.detail for s in tritonfuse.sites()]}")
        # replaced, or left to Inductor on purpose: a cuDNN SDPA node, or a site measured slower than SDPA
        left = [s for s in tritonfuse.sites() if s.status == "fallback"]
        assert counts["matched"] == 1 and all("cuDNN" in s.reason or "measured slower" in s.reason
                                              for s in left), tritonfuse.sites()

    def ours():
        return torch.ops.tritonfuse.attention(q, k, v, None, scale, causal)

    def ours_ptr():
        K.use_tma = False
        try:
            return torch.ops.tritonfuse.attention(q, k, v, None, scale, causal)
        finally:
            K.use_tma = True

    def ours_ws():
        with config.patch(warp_specialize="1"):
            return torch.ops.tritonfuse.attention(q, k, v, None, scale, causal)

    ref_out = sdpa()
    _check("tritonfuse", ours(), ref_out, q, k, v, causal)
    providers = [("sdpa", sdpa), ("sdpa-default", lambda: fn(q, k, v)), ("tritonfuse", ours)]
    ws_out = ours_ws()  # its first call checks each config against the pointer kernel
    if _ws_serves(q, causal):
        _check("tritonfuse-ws", ws_out, ref_out, q, k, v, causal)
        providers.append(("tritonfuse-ws", ours_ws))
    if compiled:
        _check("tritonfuse-backend", backend_out, ref_out, q, k, v, causal)
        providers += [("inductor", lambda: inductor(q, k, v)), ("tritonfuse-backend", lambda: backend(q, k, v))]
    if sweep:
        _check("tritonfuse-ptr", ours_ptr(), ref_out, q, k, v, causal)
        providers.append(("tritonfuse-ptr", ours_ptr))
    with torch.no_grad():
        for name, f in providers:
            ms = _bench(f)
            rows.append(row("attention_fwd", shape, DT, name, ms, tflops=flops / ms * 1e-9))
            print(f"  {name:20s} {ms:8.3f} ms {flops / ms * 1e-9:8.1f} TFLOP/s")
    for kern in (K._attn_fwd_ws_kernel, K._attn_fwd_tma_kernel, K._attn_fwd_kernel):
        best = getattr(kern, "best_config", None)
        if best is not None:
            print(f"  {kern.fn.__name__} best config: {best}")
    if K._tma_failed:
        print(f"  TMA kernel disabled: {K._tma_failed}")
    if sweep:
        _sweep_tma(q, k, v, scale, causal, flops)
        if _ws_serves(q, causal):
            _sweep_ws(q, k, v, scale, causal, flops)


def _ws_serves(q, causal):
    # whether the warp-specialized kernel serves these operands (printing why not)
    if (causal, False) not in K.WS_MODES:
        print("  warp-specialized kernel: not for this mode (kernels.attention.WS_MODES)")
        return False
    if not K._HAS_WS or not q.is_cuda or K.capability(q.device)[0] != 9:
        print("  warp-specialized kernel: not built here (needs sm_90 and tl.range(warp_specialize=...))")
        return False
    with config.patch(warp_specialize="1"):
        ok = K._tma_ok(q) and K._ws_ok(q)
    if not ok:
        print(f"  warp-specialized kernel off: {K._ws_failed or K._tma_failed or 'operands it does not take'}")
    return ok


def _sweep_ws(q, k, v, scale, causal, flops):
    # every config of the warp-specialized forward on its own, shared memory permitting
    B, H, S, D = q.shape
    out = K._empty_out(q)
    lse = torch.empty((B, H, S), device=q.device, dtype=torch.float32)
    configs = K._attn_fwd_ws_kernel.configs
    # beyond the shipped list: 3 stages and 128-row consumers (sm_90 builds: 256x64 in 3 stages and 128x128
    # in 3 stages without spills at D=64; 256x128 spills 200 bytes there, and more at D=128)
    extra = [K._ws_cfg(256, 64, 3), K._ws_cfg(128, 128, 3), K._ws_cfg(256, 128, 2)]
    try:
        for cfg in K._prune(False)(configs + extra, {}, HEAD_DIM=D):
            K._attn_fwd_ws_kernel.configs = [cfg]
            name = (f"BM{cfg.kwargs['BLOCK_M']} BN{cfg.kwargs['BLOCK_N']} s{cfg.num_stages}"
                    f"{' ws' if cfg.kwargs['WS'] else ''}")
            try:
                ms = _bench(lambda: K._launch_ws(q, k, v, out, lse, scale * K.LOG2E, causal, False, tune=False))
                print(f"    ws sweep {name}: {ms:.3f} ms {flops / ms * 1e-9:.1f} TFLOP/s")
            except Exception as e:  # out of resources etc.
                print(f"    ws sweep {name}: {type(e).__name__}: {str(e)[:120]}")
    finally:
        K._attn_fwd_ws_kernel.configs = configs


def _sweep_tma(q, k, v, scale, causal, flops):
    # time every TMA config of the forward on this shape (the autotuner already compiled them)
    import triton

    B, H, S, D = q.shape
    out = K._empty_out(q)
    lse = torch.empty((B, H, S), device=q.device, dtype=torch.float32)
    descs = [K.TensorDescriptor.from_tensor(t, [1, 1, 16, D]) for t in (q, k, v, out)]
    for cfg in K._TMA_CONFIGS:
        bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
        K._tma_block_hook({"q_desc": descs[0], "k_desc": descs[1], "v_desc": descs[2], "o_desc": descs[3],
                           "BLOCK_M": bm, "BLOCK_N": bn, "HEAD_DIM": D})

        def run():
            K._attn_fwd_tma_kernel.fn[(triton.cdiv(S, bm), B * H)](
                *descs, lse, H, 1, S, S, K._bucket(S), K._bucket(S), scale * K.LOG2E,
                HEAD_DIM=D, IS_CAUSAL=causal, STORE_LSE=False, FOLD=K._fold(0, scale * K.LOG2E), BLOCK_M=bm, BLOCK_N=bn,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages)

        try:
            ms = _bench(run)
            print(f"    sweep BM{bm} BN{bn} w{cfg.num_warps} s{cfg.num_stages}: {ms:.3f} ms "
                  f"{flops / ms * 1e-9:.1f} TFLOP/s")
        except Exception as e:  # out of resources etc.
            print(f"    sweep BM{bm} BN{bn} w{cfg.num_warps} s{cfg.num_stages}: {type(e).__name__}")


def bench_backward(B, H, S, D, causal, rows):
    shape = f"B{B} H{H} S{S} D{D}{' causal' if causal else ''}"
    print(f"backward {shape}")
    q, k, v = _qkv(B, H, H, S, S, D)
    scale = D ** -0.5
    flops = 2.5 * 4 * B * H * S * S * D * (0.5 if causal else 1.0)
    do = torch.randn_like(q)
    fa = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
    out, lse_fa, cq, ck, mq, mk, seed, offset, _ = fa

    def sdpa():
        return torch.ops.aten._scaled_dot_product_flash_attention_backward(
            do, q, k, v, out, lse_fa, cq, ck, mq, mk, 0.0, causal, seed, offset, scale=scale)

    o2, lse = torch.ops.tritonfuse.attention_fwd(q, k, v, None, scale, causal)

    def ours():
        return torch.ops.tritonfuse.attention_bwd(do, q, k, v, o2, lse, None, scale, causal)

    # check the gradients of the first two heads against fp64 autograd
    sl = (slice(0, 1), slice(0, 2))
    qq, kk, vv = (t[sl].double().requires_grad_() for t in (q, k, v))
    K.attention_ref(qq, kk, vv, None, scale, causal).backward(do[sl].double())
    for name, g, ge, r in zip(("dq", "dk", "dv"), ours(), sdpa(), (qq.grad, kk.grad, vv.grad)):
        err, e_err = (g[sl].double() - r).abs().max().item(), (ge[sl].double() - r).abs().max().item()
        ok = err <= 2 * e_err + 2e-3
        print(f"  check {name}: max err {err:.3g} (sdpa {e_err:.3g}) {'ok' if ok else 'FAILED'}")
        if not ok:
            raise AssertionError(f"backward {name}: error {err:.3g} > 2 x sdpa's {e_err:.3g}")
    for name, f in (("sdpa", sdpa), ("tritonfuse", ours)):
        ms = _bench(f)
        rows.append(row("attention_bwd", shape, DT, name, ms, tflops=flops / ms * 1e-9))
        print(f"  {name:20s} {ms:8.3f} ms {flops / ms * 1e-9:8.1f} TFLOP/s")
    # forward + backward, as a training graph runs them and the backend's measured choice compares them: SDPA
    # by autograd, on the backend it picks by default (the flash backward above need not be it), against
    # ours (the forward keeping its log-sum-exp). The backward alone of SDPA's default backend cannot be
    # timed from a graph replay: its forward's autograd state lives outside the capture
    def sdpa_pair():
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            out = F.scaled_dot_product_attention(*leaves, is_causal=causal, scale=scale)
            return torch.autograd.grad(out, leaves, do)

    def ours_pair():
        o, l2 = torch.ops.tritonfuse.attention_fwd(q, k, v, None, scale, causal)
        return torch.ops.tritonfuse.attention_bwd(do, q, k, v, o, l2, None, scale, causal)

    with torch.enable_grad():
        probe_out = F.scaled_dot_product_attention(*(t.detach().requires_grad_() for t in (q, k, v)),
                                                   is_causal=causal, scale=scale)
    backend = type(probe_out.grad_fn).__name__.replace("Backward0", "")
    pair_flops = flops * 3.5 / 2.5  # (a backward counts 2.5 forwards)
    for name, f in (("sdpa", sdpa_pair), ("tritonfuse", ours_pair)):
        try:
            ms = _bench(f)
        except Exception as e:  # noqa: BLE001 (a timing that cannot run here does not lose the rows above)
            print(f"  {name} forward+backward: not timed ({type(e).__name__}: {str(e)[:120]})")
            continue
        rows.append(row("attention_fwd_bwd", shape, DT, name, ms, tflops=pair_flops / ms * 1e-9))
        label = f"sdpa ({backend})" if name == "sdpa" else name
        print(f"  fwd+bwd {label:32s} {ms:8.3f} ms {pair_flops / ms * 1e-9:8.1f} TFLOP/s")
    for kern in (K._attn_bwd_dkdv_kernel, K._attn_bwd_dq_kernel):
        print(f"  {kern.fn.__name__} best config: {getattr(kern, 'best_config', None)}")


def bench_decode(B, Hq, Hkv, Sq, Sk, D, rows, compiled=True):
    shape = f"B{B} Hq{Hq} Hkv{Hkv} Sq{Sq} Sk{Sk} D{D}"
    print(f"decode {shape}")
    q, k, v = _qkv(B, Hq, Hkv, Sq, Sk, D, layout="bhsd")
    scale = D ** -0.5
    flops = 4 * B * Hq * Sq * Sk * D
    nbytes = 2 * B * Hkv * Sk * D * q.element_size()  # K and V read once

    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)  # noqa: E731

    def ours():
        return torch.ops.tritonfuse.attention(q, k, v, None, scale, False)

    sdpa_out = fn(q, k, v)
    _check("tritonfuse", ours(), sdpa_out, q, k, v, False)
    with torch.no_grad():
        providers = [("sdpa", lambda: fn(q, k, v)), ("tritonfuse", ours)]
        if compiled:
            inductor = torch.compile(fn)
            providers.append(("inductor", lambda: inductor(q, k, v)))
        for name, f in providers:
            ms = _bench(f)
            rows.append(row("attention_decode", shape, DT, name, ms, tflops=flops / ms * 1e-9,
                            tbps=nbytes / ms * 1e-9))
            print(f"  {name:20s} {ms:8.4f} ms {nbytes / ms * 1e-9:6.2f} TB/s")


def check_model_counts():
    # the CUDA ATen graphs of real models (tiny configs): flash / efficient SDPA nodes and hand-written forms
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    torch.backends.cuda.enable_cudnn_sdp(False)  # exact counts: cuDNN SDPA nodes are left to Inductor
    ids = torch.randint(0, 100, (4, 77), device="cuda")
    mask = torch.ones(4, 77, dtype=torch.long, device="cuda")
    mask[1, 50:] = 0
    for impl in ("eager", "sdpa"):
        for name, model, kw in (
            ("bert", BertModel(BertConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=512, vocab_size=100, attn_implementation=impl)),
             dict(input_ids=ids, attention_mask=mask)),
            ("llama", LlamaModel(LlamaConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                                             num_key_value_heads=2, intermediate_size=512, vocab_size=100,
                                             attn_implementation=impl)), dict(input_ids=ids)),
        ):
            model = model.eval().to(device="cuda", dtype=DT)
            torch._dynamo.reset()
            tritonfuse.reset()
            with torch.no_grad(), config.patch(patterns="attention"):
                ref = model(**kw).last_hidden_state
                out = torch.compile(model, backend=tritonfuse_backend)(**kw).last_hidden_state
            counts = tritonfuse.counters()["attention"]
            err = (out.float() - ref.float()).abs().max().item()
            print(f"  {name} {impl}: {counts} max diff vs eager {err:.3g}")
            assert counts == {"matched": 2, "replaced": 2, "fallback": 0}, tritonfuse.sites()
            assert err < 5e-2


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--budget", type=float, default=1e9, help="seconds after which no new case starts")
    p.add_argument("--sweep", action="store_true", help="also time the pointer kernel and every TMA config")
    p.add_argument("--models", action="store_true", help="assert match counts on tiny BERT/Llama CUDA graphs")
    p.add_argument("--out", default=None, help="also write the rows here (JSON)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes (a check of this script on the CPU)")
    p.add_argument("--only", default="", help="comma-separated case kinds to run: fwd, bwd, decode, bwd_model (default all)")
    add_timer_arg(p)
    args = p.parse_args()
    set_timer(args)
    t0 = time.time()
    rows: list[dict] = []
    if args.smoke:
        global _bench
        _bench = lambda fn: (fn(), 1.0)[1]  # noqa: E731
        rows_smoke: list[dict] = []
        bench_forward(1, 2, 64, 32, False, rows_smoke)
        bench_decode(1, 4, 2, 1, 300, 32, rows_smoke)
        print(rows_smoke)
        return
    cases = [  # in priority order: --budget may cut the tail
        ("fwd", lambda: bench_forward(8, 16, 4096, 128, False, rows, sweep=args.sweep)),
        ("fwd", lambda: bench_forward(8, 16, 4096, 128, True, rows, compiled=False)),
        ("decode", lambda: bench_decode(8, 16, 8, 1, 4096, 128, rows, compiled=False)),
        ("bwd", lambda: bench_backward(8, 16, 4096, 128, False, rows)),
        ("fwd", lambda: bench_forward(8, 16, 4096, 64, False, rows, compiled=False)),
        ("bwd", lambda: bench_backward(8, 16, 4096, 128, True, rows)),
        # the training steps' attention (a site in a training graph is decided on forward + backward): bert-base
        # b32 s512, llama-1b-prefill b4 s1024 (K/V heads repeated as its training graph holds them)
        ("bwd_model", lambda: bench_backward(32, 12, 512, 64, False, rows)),
        ("bwd_model", lambda: bench_backward(4, 16, 1024, 128, True, rows)),
    ]
    if args.only:
        cases = [c for c in cases if c[0] in args.only.split(",")]
    cases = [fn for _, fn in cases]
    if args.models:
        cases.append(check_model_counts)
    for case in cases:
        if time.time() - t0 > args.budget:
            print(f"budget of {args.budget:.0f} s spent: remaining cases skipped")
            break
        try:
            case()
        except Exception as e:  # report and go on: one failing case must not lose the others
            import traceback

            traceback.print_exc(limit=3)
            print(f"  case FAILED: {type(e).__name__}: {str(e)[:300]}")
        print(f"  [{time.time() - t0:.0f} s]")
        if args.out and rows:  # written after every case: a run cut short keeps what it measured
            with open(args.out, "w") as f:
                json.dump({**meta(), "command": " ".join(sys.argv), "rows": rows}, f, indent=1)
    if rows:
        path = merge_rows(rows)
        print(f"rows merged into {path}")


if __name__ == "__main__":
    main()
