"""add+LayerNorm and add+RMSNorm: eager, Inductor, the tritonfuse op and a device-to-device copy, side by side.

Kernels (hidden N, M rows, e bytes per element; effective TB/s counts each input read once and each output
written once):
- ``add_layer_norm``: post-norm ``y = LN(x + r) * w + b`` (BERT); reads x, r, w, b, writes y: (3MN + 2N) e.
- ``add_rms_norm``: pre-norm ``h = x + r; y = RMSNorm(h) * w`` returning both (Llama); reads x, r, w, writes
  h, y: (4MN + N) e.
- ``layer_norm_bwd``: ``dh, dw, db`` of LayerNorm from dy, h, mean, rstd (Inductor: the compiled
  ``native_layer_norm_backward``, what a training graph runs); reads dy, h, writes dh: 3MN e + 8M.
- ``rms_norm_bwd``: ``dh, dw`` of the pre-norm RMSNorm from dy, dsum (the gradient reaching the sum h from
  the next residual), h, rstd (Inductor: the compiled gradient formula, the ops AOTAutograd's backward of
  ``F.rms_norm`` decomposes to); reads dy, dsum, h, writes dh: 4MN e + 4M.
- ``copy``: ``dst.copy_(src)`` of 2MN elements, 4MN e moved: the bandwidth ceiling.
- ``add_rms_norm_int8``: ``add_rms_norm`` plus y's per-row int8 quantization for the W8A8 GEMMs that read it
  (``quant_out_pass``): the op writing it too (``quant_out=True``), against the op followed by the int8 row
  kernel (``tritonfuse+rows``: what the GEMMs did before) and Inductor's code with the quantization in ATen
  ops (``kernels.int8.quant_rows_ref``, which it fuses into the norm's kernel); also writes MN int8 and 4M
  scale bytes: (4MN + N) e + MN + 4M. ``--no-int8`` skips them.

Timing: every provider is captured in a CUDA graph and replayed (``triton.testing.do_bench_cudagraph``,
median), so a row is GPU time alone. Inside a compiled model the tritonfuse kernels are inlined into
Inductor's code and launched like its own; timed as Python op calls, rows of a few tens of microseconds
measured the host instead (``--timer plain`` keeps that way: ``do_bench``, L2 flushed before each call).

Every timed output is checked against an fp64 reference on its first rows (error <= 2x eager's + atol), and
the tritonfuse backend's match counts are asserted on the benchmarked functions and on tiny BERT/Llama/ViT
graphs on the GPU (the CUDA ATen graph is not the CPU one), with measured choices off
(``TRITONFUSE_MEASURE=0``): at those tiny sizes a measured choice keeps Inductor's norm, as it should.

Run: ``python benchmarks/bench_norm_residual.py [--rows 32768] [--hidden 768,1024,2048,4096,8192]``
(``--bwd-hidden`` picks the backward's hidden sizes, default the same list, ``none`` for no backward rows)
(``--budget S`` stops timing new cases after S seconds; rows done so far are kept).
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
from tritonfuse.kernels import norm_residual as K  # noqa: E402

EPS = 1e-5
CHECK_ROWS = 2048


def add_layer_norm(x, r, w, b):
    return F.layer_norm(x + r, (x.shape[-1],), w, b, EPS)


def add_rms_norm(x, r, w):
    h = x + r
    return F.rms_norm(h, (x.shape[-1],), w, EPS), h


def ours_layer_norm(x, r, w, b):
    return torch.ops.tritonfuse.norm_residual(x, r, w, b, EPS, "layer", False, False, False, False)[0]


def ours_rms_norm(x, r, w):
    y, h, *_ = torch.ops.tritonfuse.norm_residual(x, r, w, None, EPS, "rms", True, False, False, False)
    return y, h


def add_rms_norm_int8(x, r, w):
    from tritonfuse.kernels.int8 import quant_rows_ref

    y, h = add_rms_norm(x, r, w)
    q, scale = quant_rows_ref(y)
    return y, h, q, scale


def ours_rms_norm_int8(x, r, w):
    y, h, _, _, q, scale = torch.ops.tritonfuse.norm_residual(x, r, w, None, EPS, "rms", True, False, False, True)
    return y, h, q, scale


def ours_rms_norm_then_rows(x, r, w):
    y, h = ours_rms_norm(x, r, w)
    q, scale = torch.ops.tritonfuse.int8_quant_rows(y)
    return y, h, q, scale


def _int8_check(name, outs, failures):
    # ours: the row kernel's quantization of y as stored, bit for bit. Inductor's code quantizes its fused y
    # before rounding it to y's dtype (it does not emulate that cast inside a kernel): judged by SQNR, against
    # the SQNR of the reference quantization of the same y (a fixed gate does not hold at every row length:
    # per-row int8 of 8192 normalized values gave 34.4 dB on the H100, 60th session)
    from tritonfuse.kernels.int8 import quant_rows, quant_rows_ref, sqnr_db

    y, _, q, scale = (t[:CHECK_ROWS] for t in outs)
    if name.startswith("tritonfuse"):
        want_q, want_s = quant_rows(y)
        ok = torch.equal(q, want_q) and torch.equal(scale, want_s.reshape(-1))
        what = "not the row kernel's values"
    else:
        def sqnr_of(q, scale):
            return sqnr_db(y.double(), q.double() * scale.double().reshape(-1, 1))

        sqnr, ref = sqnr_of(q, scale), sqnr_of(*quant_rows_ref(y))
        ok, what = sqnr > ref - 1.0, f"SQNR {sqnr:.1f} dB (the reference's {ref:.1f})"
    if not ok:
        failures.append(f"{name}: int8 rows {what}")
        print("FAILED", failures[-1], flush=True)


def ln_bwd(dy, h, mean, rstd, w, b):
    n = h.shape[-1]
    dh, dw, db = torch.ops.aten.native_layer_norm_backward(dy, h, (n,), mean, rstd, w, b, [True, True, True])
    return dh, dw, db


def ours_ln_bwd(dy, h, mean, rstd, w, b):
    return torch.ops.tritonfuse.norm_residual_backward(dy, None, h, w, mean.view(-1), rstd.view(-1), "layer", True)


def rms_bwd(dy, ds, h, rstd, w):
    # the gradient of y = F.rms_norm(h) * w (+ ds reaching h from the next residual), as the backward
    # graph computes it from the saved h and rstd
    # (computed in fp32, or in fp64 for the reference)
    acc = torch.promote_types(h.dtype, torch.float32)
    hf, rs = h.to(acc), rstd.view(-1, 1).to(acc)
    xhat = hf * rs
    g = dy.to(acc) * w.to(acc)
    dh = (g - xhat * (g * xhat).mean(-1, keepdim=True)) * rs + ds.to(acc)
    return dh.to(h.dtype), (dy.to(acc) * xhat).sum(0)


def ours_rms_bwd(dy, ds, h, rstd, w):
    rstd = rstd.view(-1)
    return torch.ops.tritonfuse.norm_residual_backward(dy, ds, h, w, rstd, rstd, "rms", False)[:2]


def _err(out, ref):
    return (out[:CHECK_ROWS].double() - ref[:CHECK_ROWS]).abs().max().item()


def _check(name, outs, eager, refs, atol, failures):
    for o, e, r in zip(outs, eager, refs):
        err, eager_err = _err(o, r), _err(e, r)
        if not (err <= 2 * eager_err + atol):
            failures.append(f"{name}: error {err:.3g} > 2 x eager's {eager_err:.3g} + {atol}")
            print("FAILED", failures[-1], flush=True)


def _bench(fn, warmup, rep):
    if not torch.cuda.is_available():  # smoke run on the CPU (TRITON_INTERPRET=1): correctness only
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return gpu_time(fn, warmup=warmup, rep=rep)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=32768)
    p.add_argument("--hidden", default="768,1024,2048,4096,8192")
    p.add_argument("--bwd-hidden", default=None, help="hidden sizes of the backward rows (default --hidden)")
    add_timer_arg(p)
    p.add_argument("--dtypes", default="float16,bfloat16")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rep", type=int, default=50)
    p.add_argument("--budget", type=float, default=1e9, help="seconds; later cases are skipped")
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/kernels-<gpu>.json)")
    p.add_argument("--no-models", action="store_true")
    p.add_argument("--no-int8", action="store_true", help="skip the add_rms_norm_int8 rows")
    args = p.parse_args()
    set_timer(args)
    start = time.time()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    m = args.rows
    hiddens = [int(h) for h in args.hidden.split(",")]
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    rows, table, failures = [], [], []  # check failures are raised after the timings are saved
    atol = {torch.float16: 2e-3, torch.bfloat16: 2e-2}
    print(json.dumps(meta()))

    def record(kernel, n, dtype, provider, ms, nbytes):
        tbps = nbytes / ms / 1e9
        rows.append(row(kernel, f"{m}x{n}", dtype, provider, ms, tbps=tbps))
        table.append((kernel, n, str(dtype).replace("torch.", ""), provider, ms, tbps))
        print(f"{kernel:16s} {m}x{n:<6d} {table[-1][2]:9s} {provider:11s} {ms:8.4f} ms {tbps:6.3f} TB/s", flush=True)

    def flush():
        if rows:
            print("wrote", merge_rows(rows, args.out))

    for dtype in dtypes:
        for n in hiddens:
            if time.time() - start > args.budget:
                print(f"budget reached: skipping {dtype} {n}")
                continue
            e = torch.empty((), dtype=dtype).element_size()
            g = torch.Generator(device=dev).manual_seed(n)
            x = torch.randn(m, n, device=dev, dtype=dtype, generator=g)
            r = torch.randn(m, n, device=dev, dtype=dtype, generator=g)
            w = torch.randn(n, device=dev, dtype=dtype, generator=g)
            b = torch.randn(n, device=dev, dtype=dtype, generator=g)
            torch._dynamo.reset()
            with torch.no_grad():
                # add + LayerNorm (post-norm)
                ln_c = torch.compile(add_layer_norm)
                ref = K.norm_residual_ref(x[:CHECK_ROWS], r[:CHECK_ROWS], w, b, EPS, "layer", upcast=True)[0].to(dev)
                _check(f"add_layer_norm {n} {dtype}", [ours_layer_norm(x, r, w, b), ln_c(x, r, w, b)],
                       [add_layer_norm(x, r, w, b)] * 2, [ref] * 2, atol[dtype], failures)
                nbytes = (3 * m * n + 2 * n) * e
                for prov, fn in (("eager", add_layer_norm), ("inductor", ln_c), ("tritonfuse", ours_layer_norm)):
                    record("add_layer_norm", n, dtype, prov, _bench(lambda: fn(x, r, w, b), args.warmup, args.rep), nbytes)
                # add + RMSNorm returning the sum (pre-norm)
                rms_c = torch.compile(add_rms_norm)
                ref_y, ref_h = K.norm_residual_ref(x[:CHECK_ROWS], r[:CHECK_ROWS], w, None, EPS, "rms", upcast=True)
                eager = add_rms_norm(x, r, w)
                for outs in (ours_rms_norm(x, r, w), rms_c(x, r, w)):
                    _check(f"add_rms_norm {n} {dtype}", outs, eager, [ref_y.to(dev), ref_h.to(dev)], atol[dtype], failures)
                nbytes = (4 * m * n + n) * e
                for prov, fn in (("eager", add_rms_norm), ("inductor", rms_c), ("tritonfuse", ours_rms_norm)):
                    record("add_rms_norm", n, dtype, prov, _bench(lambda: fn(x, r, w), args.warmup, args.rep), nbytes)
                # add + RMSNorm with y's int8 rows and scales for the GEMMs reading it
                if not args.no_int8:
                    q_c = torch.compile(add_rms_norm_int8)
                    provs = (("inductor", q_c), ("tritonfuse", ours_rms_norm_int8),
                             ("tritonfuse+rows", ours_rms_norm_then_rows))
                    for prov, fn in provs:
                        outs = fn(x, r, w)
                        _check(f"add_rms_norm_int8 {n} {dtype} {prov}", outs[:2], eager, [ref_y.to(dev), ref_h.to(dev)],
                               atol[dtype], failures)
                        _int8_check(f"{prov} add_rms_norm_int8 {n} {dtype}", outs, failures)
                    nbytes = (4 * m * n + n) * e + m * n + 4 * m
                    for prov, fn in provs:
                        record("add_rms_norm_int8", n, dtype, prov, _bench(lambda: fn(x, r, w), args.warmup, args.rep),
                               nbytes)
                # the bandwidth ceiling
                src = torch.empty(2 * m * n, device=dev, dtype=dtype)
                dst = torch.empty_like(src)
                record("copy", n, dtype, "d2d_copy", _bench(lambda: dst.copy_(src), args.warmup, args.rep), 4 * m * n * e)
                del src, dst
            flush()
            print(f"  [{time.time() - start:.0f}s]", flush=True)

    # match counts of the benchmarked functions through the backend (fp16, one shape)
    if time.time() - start < args.budget:
        with torch.no_grad(), config.patch(patterns="norm_residual", measure="0"):
            for fn, nargs, want in ((add_layer_norm, 4, "norm_residual[layer+add]"),
                                    (add_rms_norm, 3, "norm_residual[rms+sum]")):
                tritonfuse.reset()
                torch._dynamo.reset()
                xs = [torch.randn(64, 1024, device=dev, dtype=torch.float16) for _ in range(2)]
                xs += [torch.randn(1024, device=dev, dtype=torch.float16) for _ in range(nargs - 2)]
                torch.compile(fn, backend=tritonfuse_backend)(*xs)
                kernels = [s.kernel for s in tritonfuse.sites() if s.status == "replaced"]
                print(f"backend on {fn.__name__}: {tritonfuse.counters()['norm_residual']} {kernels}")
                if kernels != [want]:
                    failures.append(f"backend on {fn.__name__}: {[(s.kernel, s.reason) for s in tritonfuse.sites()]}")

    # LayerNorm and RMSNorm backward vs Inductor's
    bwd_hiddens = [] if args.bwd_hidden == "none" else [int(h) for h in (args.bwd_hidden or args.hidden).split(",")]
    for dtype in dtypes:
        for n in bwd_hiddens:
            if time.time() - start > args.budget:
                print(f"budget reached: skipping the backward at {dtype} {n}")
                continue
            _backward_rows(dev, m, n, dtype, args, record, failures)
            flush()

    # match counts on tiny real models, on the GPU graph
    if not args.no_models and time.time() - start < args.budget - 25:
        failures += _model_counts(dev)
    flush()
    print(f"done in {time.time() - start:.0f}s")
    if failures:
        raise AssertionError("; ".join(failures))


def _bwd_check(name, outs, eager, refs, failures):
    for what, o, e_, r_ in zip(("dh", "dw", "db"), outs, eager, refs):
        err = (o.double() - r_).abs().max().item()
        eerr = (e_.double() - r_).abs().max().item()
        scale = r_.abs().max().item()
        if not err <= 2 * eerr + 2e-3 * max(1.0, scale):
            failures.append(f"{name} {what}: {err:.3g} vs eager {eerr:.3g}")
            print("FAILED", failures[-1], flush=True)


def _backward_rows(dev, m, n, dtype, args, record, failures):
    e = torch.empty((), dtype=dtype).element_size()
    g = torch.Generator(device=dev).manual_seed(7 + n)
    h = torch.randn(m, n, device=dev, dtype=dtype, generator=g)
    dy = torch.randn(m, n, device=dev, dtype=dtype, generator=g)
    ds = torch.randn(m, n, device=dev, dtype=dtype, generator=g)
    w = torch.randn(n, device=dev, dtype=dtype, generator=g)
    b = torch.randn(n, device=dev, dtype=dtype, generator=g)
    torch._dynamo.reset()
    # LayerNorm: mean and rstd as the forward saves them
    _, mean, rstd = torch.native_layer_norm(h, (n,), w, b, EPS)
    bwd_c = torch.compile(ln_bwd)
    eag = ln_bwd(dy, h, mean, rstd, w, b)
    ref = ln_bwd(dy.double(), h.double(), mean.double(), rstd.double(), w.double(), b.double())
    for prov_out in (ours_ln_bwd(dy, h, mean, rstd, w, b), bwd_c(dy, h, mean, rstd, w, b)):
        _bwd_check(f"layer_norm_bwd {n} {dtype}", prov_out, eag, ref, failures)
    nbytes = 3 * m * n * e + 8 * m + 4 * n * e
    for prov, fn in (("eager", ln_bwd), ("inductor", bwd_c), ("tritonfuse", ours_ln_bwd)):
        record("layer_norm_bwd", n, dtype, prov, _bench(lambda: fn(dy, h, mean, rstd, w, b), args.warmup, args.rep), nbytes)
    # RMSNorm (pre-norm): rstd in fp32 from the fp32 upcast h, as the forward computes it
    rstd = torch.rsqrt(h.float().pow(2).mean(-1) + EPS)
    rms_c = torch.compile(rms_bwd)
    eag = rms_bwd(dy, ds, h, rstd, w)
    ref = rms_bwd(dy.double(), ds.double(), h.double(), rstd.double(), w.double())
    for prov_out in (ours_rms_bwd(dy, ds, h, rstd, w), rms_c(dy, ds, h, rstd, w)):
        _bwd_check(f"rms_norm_bwd {n} {dtype}", prov_out, eag, ref, failures)
    nbytes = 4 * m * n * e + 4 * m + 2 * n * e
    for prov, fn in (("eager", rms_bwd), ("inductor", rms_c), ("tritonfuse", ours_rms_bwd)):
        record("rms_norm_bwd", n, dtype, prov, _bench(lambda: fn(dy, ds, h, rstd, w), args.warmup, args.rep), nbytes)


def _model_counts(dev) -> list[str]:
    try:
        import transformers
        from torchvision.models import VisionTransformer
    except ImportError as e:
        print(f"model counts skipped: {e}")
        return []
    failures = []
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 7), device=dev)
    common = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=2, intermediate_size=128,
                  vocab_size=100, max_position_embeddings=64)
    models = (
        ("bert", transformers.BertModel(transformers.BertConfig(**common)), (ids,)),
        ("llama", transformers.LlamaModel(transformers.LlamaConfig(num_key_value_heads=1, **common)), (ids,)),
        ("vit", VisionTransformer(image_size=16, patch_size=8, num_layers=3, num_heads=2, hidden_dim=64,
                                  mlp_dim=128, num_classes=10),
         (torch.randn(2, 3, 16, 16, device=dev, dtype=torch.float16),)),
    )
    for name, model, inputs in models:
        model = model.to(dev, torch.float16).eval()
        tritonfuse.reset()
        torch._dynamo.reset()
        with torch.no_grad(), config.patch(patterns="norm_residual", measure="0"):
            out = torch.compile(model, backend=tritonfuse_backend)(*inputs)
            eager = model(*inputs)
        out, eager = getattr(out, "last_hidden_state", out), getattr(eager, "last_hidden_state", eager)
        c = tritonfuse.counters()["norm_residual"]
        diff = (out.float() - eager.float()).abs().max().item()
        print(f"model {name} fp16 {dev}: {c} max|compiled - eager| = {diff:.3g}")
        if c != {"matched": 7, "replaced": 7, "fallback": 0}:
            failures.append(f"{name}: {c} {[(s.kernel, s.reason) for s in tritonfuse.sites()]}")
    return failures


if __name__ == "__main__":
    main()
