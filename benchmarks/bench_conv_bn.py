"""Conv + BN (eval) + ReLU at every distinct conv shape of ResNet-50, batch 64, fp16, channels_last, and
Conv + BN + residual add + ReLU at its four 1x1 expansions (the bottleneck's last conv), and the patch
convolutions (stride = kernel) of ViT, Swin and ConvNeXt, which the backend serves as one GEMM.

Run on a GPU:  python benchmarks/bench_conv_bn.py [--budget SECONDS] [--counts] [--model] [--out DIR]
                                                  [--timer graph|plain] [--only 1x1|patch|int8]

Providers, in one run, at each shape:
  eager       F.conv2d (cuDNN) + F.batch_norm + relu
  inductor    torch.compile (default mode) of the same function: cuDNN + Inductor's fused epilogue
  triton      tritonfuse::conv_bn, the Triton kernel with BN/ReLU (and the residual) in its epilogue: on
              Hopper a 1x1 stride-1 conv runs as a persistent TMA GEMM, every other conv as the
              implicit-GEMM kernel
  triton_pointer  (1x1 stride-1 shapes) the implicit-GEMM kernel at the same shape, for comparison
  cudnn_epi   tritonfuse::conv_bn_cudnn: cuDNN + one Triton epilogue kernel, called as an op
  chosen      torch.compile(backend="tritonfuse") of the same function: the Triton op where it measured
              faster than cuDNN's path, else cuDNN + Inductor's fused epilogue (``kernels.conv_bn.choose``)
With ``--only int8``, ResNet-50's shapes in int8 instead (``int8_rows``: conv_bn_relu_int8 rows, the int8
kernel alone and with its input's quantization as Inductor compiles it, beside inductor and triton).
Timing (``--timer``, default graph): the median of replayed CUDA graphs of each call, GPU time alone.
Every timed tritonfuse result is checked against an fp64 reference first (on two images of the batch).
``--counts`` first checks the conv_bn match counts on the CUDA graph of ResNet-50; ``--model`` (with time
left in the budget) times the whole model eager / inductor / tritonfuse. Rows merge into benchmarks/results/kernels-<gpu>.json;
with ``--out`` the rows are also written to DIR/conv_bn_rows.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import add_timer_arg, gpu_time, merge_rows, meta, row, set_timer  # noqa: E402

import tritonfuse  # noqa: E402
from tritonfuse.kernels import conv_bn as K  # noqa: E402

COMMAND = " ".join(["python3", "benchmarks/bench_conv_bn.py", *sys.argv[1:]])  # as run, flags included
BATCH = 64
DEVICE = "cuda"
EPS = 1e-5
# (C_in, C_out, kernel, stride, padding, input H=W): every distinct conv of torchvision's resnet50 at 224x224
RESNET50_SHAPES = [
    (3, 64, 7, 2, 3, 224), (64, 64, 1, 1, 0, 56), (64, 64, 3, 1, 1, 56), (64, 256, 1, 1, 0, 56),
    (256, 64, 1, 1, 0, 56), (256, 128, 1, 1, 0, 56), (128, 128, 3, 2, 1, 56), (128, 512, 1, 1, 0, 28),
    (256, 512, 1, 2, 0, 56), (512, 128, 1, 1, 0, 28), (128, 128, 3, 1, 1, 28), (512, 256, 1, 1, 0, 28),
    (256, 256, 3, 2, 1, 28), (256, 1024, 1, 1, 0, 14), (512, 1024, 1, 2, 0, 28), (1024, 256, 1, 1, 0, 14),
    (256, 256, 3, 1, 1, 14), (1024, 512, 1, 1, 0, 14), (512, 512, 3, 2, 1, 14), (512, 2048, 1, 1, 0, 7),
    (1024, 2048, 1, 2, 0, 14), (2048, 512, 1, 1, 0, 7), (512, 512, 3, 1, 1, 7),
]

# the stems over RGB (few input channels: the kernel's row-run gather): ResNet's 7x7, MobileNet's and
# EfficientNet's 3x3
STEM_SHAPES = [(3, 64, 7, 2, 3, 224), (3, 32, 3, 2, 1, 224)]


def bench(fn) -> float:
    return gpu_time(fn, warmup=10, rep=60)


def rel_err(out, ref) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def check(name, out, ref, eager):
    err, eager_err = rel_err(out, ref), rel_err(eager, ref)
    ok = err <= 2 * eager_err + 1e-3
    print(f"  check {name}: rel err {err:.2e} (eager {eager_err:.2e}) {'ok' if ok else 'FAIL'}", flush=True)
    if not ok:
        raise RuntimeError(f"{name}: tritonfuse result is wrong")


# (C_in, C_out, input H=W) of ResNet-50's bottleneck expansions: 1x1 conv + BN, then + identity, then ReLU
RESIDUAL_SHAPES = [(64, 256, 56), (128, 512, 28), (256, 1024, 14), (512, 2048, 7)]


def conv_bn_relu(x, w, mean, var, gamma, beta, stride, pad):
    return F.relu(F.batch_norm(F.conv2d(x, w, None, stride, pad), mean, var, gamma, beta, False, 0.0, EPS))


def conv_bn_add_relu(x, w, mean, var, gamma, beta, stride, pad, r):
    y = F.batch_norm(F.conv2d(x, w, None, stride, pad), mean, var, gamma, beta, False, 0.0, EPS)
    return F.relu(y + r)


def shape_inputs(cin, cout, k, s, p, hw, dtype, residual):
    """(x, w, bn, stride, padding, r, output size, name) of one shape, seeded by it: channels_last x and w, BN
    statistics and affine parameters, and a residual where asked."""
    g = torch.Generator(device=DEVICE).manual_seed(cin * 7 + cout + k)
    x = torch.randn(BATCH, cin, hw, hw, device=DEVICE, dtype=dtype, generator=g).to(memory_format=torch.channels_last)
    w = (torch.randn(cout, cin, k, k, device=DEVICE, dtype=dtype, generator=g) / (cin * k * k) ** 0.5).to(
        memory_format=torch.channels_last)
    mean = torch.randn(cout, device=DEVICE, dtype=dtype, generator=g) * 0.1
    var = torch.rand(cout, device=DEVICE, dtype=dtype, generator=g) + 0.5
    gamma = torch.rand(cout, device=DEVICE, dtype=dtype, generator=g) + 0.5
    beta = torch.randn(cout, device=DEVICE, dtype=dtype, generator=g) * 0.1
    oh = (hw + 2 * p - k) // s + 1
    r = (torch.randn(BATCH, cout, oh, oh, device=DEVICE, dtype=dtype, generator=g)
         .to(memory_format=torch.channels_last) if residual else None)
    name = f"{BATCH}x{cin}x{hw}x{hw} -> {cout} k{k} s{s} p{p}"
    return x, w, (mean, var, gamma, beta), [s, s], [p, p], r, oh, name


def shape_rows(cin, cout, k, s, p, hw, dtype=torch.float16, residual=False):
    x, w, bn, st, pd, r, oh, name = shape_inputs(cin, cout, k, s, p, hw, dtype, residual)
    kernel = "conv_bn_add_relu" if residual else "conv_bn_relu"
    act, act2 = ("none", "relu") if residual else ("relu", "none")
    fn = conv_bn_add_relu if residual else conv_bn_relu
    extra_args = (r,) if residual else ()

    def op(f, xx=x, rr=r):
        return lambda: f(xx, w, None, *bn, rr, st, pd, EPS, act, act2, True)

    # correctness on two images, vs fp64
    x2 = x[:2].contiguous(memory_format=torch.channels_last)
    r2 = r[:2].contiguous(memory_format=torch.channels_last) if residual else None
    ref = K.conv_bn_ref(x2, w, None, *bn, r2, st, pd, EPS, act, act2, upcast=True).to(x.device)
    eager2 = fn(x2, w, *bn, st, pd, *((r2,) if residual else ()))
    check(f"triton {name}", op(torch.ops.tritonfuse.conv_bn, x2, r2)(), ref, eager2)
    check(f"cudnn_epi {name}", op(torch.ops.tritonfuse.conv_bn_cudnn, x2, r2)(), ref, eager2)

    # a fresh Dynamo per shape: past its recompile limit Dynamo would silently run the function eagerly
    torch._dynamo.reset()
    inductor = torch.compile(fn, dynamic=False)
    t0 = time.time()
    inductor(x, w, *bn, st, pd, *extra_args)
    compile_s = time.time() - t0
    # the chosen path is what the backend compiles: the Triton op, or cuDNN + Inductor's fused epilogue
    tritonfuse.reset()
    chosen = torch.compile(fn, dynamic=False, backend="tritonfuse")
    chosen(x, w, *bn, st, pd, *extra_args)
    sites = [s for s in tritonfuse.sites() if s.family == "conv_bn"]
    choice = {"kernel": sites[0].kernel if len(sites) == 1 and sites[0].status == "replaced" else "inductor"}
    times = {
        "eager": bench(lambda: fn(x, w, *bn, st, pd, *extra_args)),
        "inductor": bench(lambda: inductor(x, w, *bn, st, pd, *extra_args)),
        "triton": bench(op(torch.ops.tritonfuse.conv_bn)),
        "cudnn_epi": bench(op(torch.ops.tritonfuse.conv_bn_cudnn)),
        "chosen": bench(lambda: chosen(x, w, *bn, st, pd, *extra_args)),
    }
    out_like = torch.empty(BATCH, cout, oh, oh, device=DEVICE, dtype=dtype).to(memory_format=torch.channels_last)
    if K._tma_1x1_ok(x, w, r, out_like, st, pd):
        # the implicit-GEMM kernel at the same shape (the TMA path off)
        real_ok = K._tma_1x1_ok
        K._tma_1x1_ok = lambda *a: False
        try:
            check(f"triton_pointer {name}", op(torch.ops.tritonfuse.conv_bn, x2, r2)(), ref, eager2)
            times["triton_pointer"] = bench(op(torch.ops.tritonfuse.conv_bn))
        finally:
            K._tma_1x1_ok = real_ok
    flops = 2.0 * BATCH * oh * oh * cout * cin * k * k
    ratio = times["inductor"] / times["triton"]
    print(f"{kernel} {name:<34} " + "  ".join(f"{k_} {v:.4f}" for k_, v in times.items())
          + f"  chosen={choice['kernel']}  triton speedup vs inductor {ratio:.2f}x  (inductor compile {compile_s:.1f}s)",
          flush=True)
    rows = []
    for prov, ms in times.items():
        extra = {"chosen_kernel": choice["kernel"]} if prov == "chosen" else {}
        if prov == "triton":
            extra["speedup_vs_inductor"] = round(ratio, 3)
        rows.append(row(kernel, name, dtype, prov, ms, tflops=flops / ms / 1e9, **extra))
    return rows


def int8_rows(cin, cout, k, s, p, hw, dtype=torch.float16):
    """Conv + BN + ReLU in int8 at one shape (issue 6's int8 conv), beside the float paths:
      int8_op     tritonfuse::conv_bn_int8 on x already quantized (the kernel alone)
      int8_quant  the same with x quantized as Inductor compiles ``quant_tensor_ref`` (a per-tensor scale: a
                  reduction over x and a cast, kernels of their own), what a site costs where its producer
                  is not Inductor's pointwise code
      inductor    cuDNN + Inductor's fused epilogue, fp16
      triton      tritonfuse::conv_bn, fp16
    The int8 output is checked against fp64 first: SQNR at least 25 dB (issue 6's gate for the logits)."""
    from tritonfuse.kernels import int8 as I8

    x, w, bn, st, pd, _, oh, name = shape_inputs(cin, cout, k, s, p, hw, dtype, False)
    tail = (None, st, pd, EPS, "relu", "none", True)

    def int8_op(xq, xs):
        return torch.ops.tritonfuse.conv_bn_int8(xq, xs, w, None, *bn, *tail, dtype)

    x2 = x[:2].contiguous(memory_format=torch.channels_last)
    ref = K.conv_bn_ref(x2, w, None, *bn, None, st, pd, EPS, "relu", "none", upcast=True).to(x.device)
    sqnr = I8.sqnr_db(ref, int8_op(*K.quant_tensor_ref(x2)))
    print(f"  check int8 {name}: SQNR {sqnr:.1f} dB {'ok' if sqnr >= 25 else 'FAIL'}", flush=True)
    if not sqnr >= 25:
        raise RuntimeError(f"int8 {name}: SQNR {sqnr:.1f} dB")
    torch._dynamo.reset()
    inductor = torch.compile(conv_bn_relu, dynamic=False)
    quant_then_op = torch.compile(lambda xx: int8_op(*K.quant_tensor_ref(xx)), dynamic=False)
    xq, xs = K.quant_tensor_ref(x)
    times = {
        "int8_op": bench(lambda: int8_op(xq, xs)),
        "int8_quant": bench(lambda: quant_then_op(x)),
        "inductor": bench(lambda: inductor(x, w, *bn, st, pd)),
        "triton": bench(lambda: torch.ops.tritonfuse.conv_bn(x, w, None, *bn, *tail)),
    }
    flops = 2.0 * BATCH * oh * oh * cout * cin * k * k
    print(f"conv_bn_relu_int8 {name:<34} " + "  ".join(f"{k_} {v:.4f}" for k_, v in times.items())
          + f"  int8 with its quantization vs inductor {times['inductor'] / times['int8_quant']:.2f}x", flush=True)
    return [row("conv_bn_relu_int8", name, dtype, prov, ms, tflops=flops / ms / 1e9,
                **({"sqnr_db": round(sqnr, 1)} if prov.startswith("int8") else {})) for prov, ms in times.items()]


# patch convolutions (stride = kernel), served as one GEMM (kernels.conv_bn.patch_gemm): (name, batch, C_in,
# H=W, C_out, kernel, channels_last input, tokens: the output read as ViT reads it, flattened to tokens behind
# a class token)
PATCH_SHAPES = [
    ("vit_b_16 patch embedding", 64, 3, 224, 768, 16, False, True),
    ("vit_b_16 conv alone", 64, 3, 224, 768, 16, False, False),
    ("swin_t / convnext_tiny stem", 64, 3, 224, 96, 4, False, False),
    ("convnext_tiny downsample 1", 64, 96, 56, 192, 2, True, False),
    ("convnext_tiny downsample 3", 64, 384, 14, 768, 2, True, False),
]


def patch_rows(name, batch, cin, hw, cout, k, channels_last, tokens, dtype=torch.float16):
    """eager (cuDNN), inductor, patch_gemm (the gather and cuBLAS's GEMM, eager), patch_timed (what the choice
    times for it: the gather as one Triton kernel, as Inductor fuses it, and the GEMM) and chosen (the
    backend's compile: the GEMM where it measured faster) at one patch convolution."""
    g = torch.Generator(device=DEVICE).manual_seed(cin * 7 + cout + k)
    x = torch.randn(batch, cin, hw, hw, device=DEVICE, dtype=dtype, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, k, k, device=DEVICE, dtype=dtype, generator=g) / (cin * k * k) ** 0.5
    b = torch.randn(cout, device=DEVICE, dtype=dtype, generator=g) * 0.1
    cls = torch.randn(1, 1, cout, device=DEVICE, dtype=dtype, generator=g)

    def read(y, cls):  # as ViT reads the conv's output, or the output itself
        if not tokens:
            return y
        return torch.cat([cls.expand(y.shape[0], -1, -1), y.flatten(2).transpose(1, 2)], dim=1)

    def fn(x, w, b, cls):
        return read(F.conv2d(x, w, b, stride=k), cls)

    def patch(x, w, b, cls):
        return read(K.patch_gemm(x, w, b, channels_last), cls)

    def timed(x, w, b, cls):
        return read(K._patch_product(K.gather_patches_kernel(x, k, k), x, w, b, channels_last), cls)

    x2 = x[:2].contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    ref = fn(x2.double(), w.double(), b.double(), cls.double())
    check(f"patch_gemm {name}", patch(x2, w, b, cls), ref, fn(x2, w, b, cls))
    check(f"patch_timed {name}", timed(x2, w, b, cls), ref, fn(x2, w, b, cls))
    torch._dynamo.reset()
    inductor = torch.compile(fn, dynamic=False)
    inductor(x, w, b, cls)
    tritonfuse.reset()
    chosen = torch.compile(fn, dynamic=False, backend="tritonfuse")
    check(f"chosen {name}", chosen(x2, w, b, cls), ref, fn(x2, w, b, cls))
    chosen(x, w, b, cls)
    sites = [s for s in tritonfuse.sites() if s.family == "conv_bn"]
    kernel = sites[-1].kernel if sites and sites[-1].status == "replaced" else "inductor"
    times = {
        "eager": bench(lambda: fn(x, w, b, cls)),
        "inductor": bench(lambda: inductor(x, w, b, cls)),
        "patch_gemm": bench(lambda: patch(x, w, b, cls)),
        "patch_timed": bench(lambda: timed(x, w, b, cls)),
        "chosen": bench(lambda: chosen(x, w, b, cls)),
    }
    flops = 2.0 * batch * (hw // k) ** 2 * cout * cin * k * k
    label = f"{name}: {batch}x{cin}x{hw}x{hw}{' cl' if channels_last else ''} -> {cout} k{k} s{k}"
    print(f"patch_conv {label:<70} " + "  ".join(f"{p} {v:.4f}" for p, v in times.items())
          + f"  chosen={kernel}  chosen vs inductor {times['inductor'] / times['chosen']:.2f}x", flush=True)
    return [row("patch_conv", label, dtype, prov, ms, tflops=flops / ms / 1e9,
                **({"chosen_kernel": kernel} if prov == "chosen" else {})) for prov, ms in times.items()]


def gpu_counts():
    """conv_bn match counts on the CUDA graph of ResNet-50 (fp16, channels_last), compiled but not run."""
    import torchvision
    from tritonfuse.backend import tritonfuse_backend

    def count_only(gm, example_inputs):
        tritonfuse_backend(gm, example_inputs)
        return gm.forward

    m = torchvision.models.resnet50(weights=None).eval().to(DEVICE).half().to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 64, 64, device=DEVICE, dtype=torch.float16).to(memory_format=torch.channels_last)
    tritonfuse.reset()
    t0 = time.time()
    old, K.CHOICE = K.CHOICE, "triton"  # the counts, not the timings: no per-shape measurement here
    try:
        with torch.no_grad():
            torch.compile(m, backend=count_only)(x)
    finally:
        K.CHOICE = old
    c = tritonfuse.counters()["conv_bn"]
    kernels = sorted(s.kernel for s in tritonfuse.sites() if s.family == "conv_bn")
    expect = sorted(["conv_bn[bn,relu]"] * 33 + ["conv_bn[bn,none+res,relu]"] * 16 + ["conv_bn[bn,none]"] * 4)
    ok = c == {"matched": 53, "replaced": 53, "fallback": 0} and kernels == expect
    print(f"resnet50 CUDA graph conv_bn counts {c} {'ok' if ok else 'FAIL'} ({time.time() - t0:.1f}s)", flush=True)
    if not ok:
        print(tritonfuse.report(), flush=True)
    tritonfuse.reset()
    return ok


def model_rows(deadline):
    """ResNet-50 b64 fp16 channels_last: conv_bn counts on the CUDA graph, then eager/inductor/tritonfuse."""
    import torchvision

    m = torchvision.models.resnet50(weights=None).eval().to(DEVICE).half().to(memory_format=torch.channels_last)
    x = torch.randn(BATCH, 3, 224, 224, device=DEVICE, dtype=torch.float16).to(memory_format=torch.channels_last)
    rows = []
    with torch.no_grad():
        eager_ms = bench(lambda: m(x))
        rows.append(row("resnet50", f"{BATCH}x3x224x224", torch.float16, "eager", eager_ms))
        print(f"resnet50 eager {eager_ms:.3f} ms", flush=True)
        tritonfuse.reset()
        t0 = time.time()
        tf = torch.compile(copy.deepcopy(m), backend="tritonfuse")
        out = tf(x)
        tf_compile = time.time() - t0
        print(tritonfuse.report(), flush=True)
        c = tritonfuse.counters()["conv_bn"]
        print(f"resnet50 conv_bn sites {c} (measured choices)", flush=True)
        ref = m(x)
        print(f"resnet50 tritonfuse compile {tf_compile:.1f}s, max |diff| vs eager "
              f"{(out.float() - ref.float()).abs().max().item():.3g}", flush=True)
        tf_ms = bench(lambda: tf(x))
        rows.append(row("resnet50", f"{BATCH}x3x224x224", torch.float16, "tritonfuse", tf_ms, compile_s=round(tf_compile, 1)))
        print(f"resnet50 tritonfuse {tf_ms:.3f} ms", flush=True)
        if time.time() < deadline - 40:
            t0 = time.time()
            ind = torch.compile(m)
            ind(x)
            ind_compile = time.time() - t0
            ind_ms = bench(lambda: ind(x))
            rows.append(row("resnet50", f"{BATCH}x3x224x224", torch.float16, "inductor", ind_ms,
                            compile_s=round(ind_compile, 1)))
            print(f"resnet50 inductor {ind_ms:.3f} ms (compile {ind_compile:.1f}s)", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=1e9, help="seconds; later sections are skipped past it")
    ap.add_argument("--model", action="store_true", help="also the whole ResNet-50 (needs minutes)")
    ap.add_argument("--counts", action="store_true", help="first, the conv_bn match counts on ResNet-50's CUDA graph")
    ap.add_argument("--out", default=None, help="also write the rows to DIR/conv_bn_rows.json")
    ap.add_argument("--only", choices=("all", "1x1", "patch", "int8", "stem"), default="all",
                    help="1x1: the 1x1 stride-1 shapes alone; patch: the patch convolutions alone; int8: ResNet-50's "
                    "shapes in int8 (conv_bn_relu_int8 rows) alone; stem: the RGB stems alone")
    add_timer_arg(ap)
    args = ap.parse_args()
    set_timer(args)
    start = time.time()
    deadline = start + args.budget
    info = meta()
    print(json.dumps(info), flush=True)
    rows = []

    def save():
        merge_rows(rows)
        if args.out:
            out = pathlib.Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "conv_bn_rows.json").write_text(json.dumps({**info, "command": COMMAND, "rows": rows}, indent=1))

    counts_ok = None
    if args.counts:
        counts_ok = gpu_counts()
        info["resnet50_cuda_counts_ok"] = counts_ok
    cases = [(shape, False) for shape in RESNET50_SHAPES]
    cases = [((cin, cout, 1, 1, 0, hw), True) for cin, cout, hw in RESIDUAL_SHAPES] + cases
    if args.only == "1x1":
        cases = [c for c in cases if c[0][2] == 1 and c[0][3] == 1]
    elif args.only == "stem":
        cases = [(shape, False) for shape in STEM_SHAPES]

    def section(label, cases, rows_of):
        # each case's rows saved as they come; a failing case must not cost the others' numbers
        for case in cases:
            if time.time() > deadline:
                print(f"budget spent: skipped {label} {case} and the rest", flush=True)
                return
            try:
                rows.extend(rows_of(case))
            except Exception as e:  # noqa: BLE001
                print(f"{label} {case} failed: {type(e).__name__}: {e}", flush=True)
            save()

    if args.only in ("all", "patch"):
        section("patch shape", PATCH_SHAPES, lambda shape: patch_rows(*shape))
    if args.only == "int8":
        section("int8 shape", RESNET50_SHAPES, lambda shape: int8_rows(*shape))
    if args.only in ("all", "1x1", "stem"):
        section("shape", cases, lambda case: shape_rows(*case[0], residual=case[1]))
    if args.model and time.time() < deadline - 60:
        rows += model_rows(deadline)
        save()
    done = [r for r in rows if r["provider"] == "triton" and "speedup_vs_inductor" in r]
    if done:
        wins = sum(r["speedup_vs_inductor"] >= 1.0 for r in done)
        print(f"triton kernel at least as fast as inductor on {wins}/{len(done)} shapes", flush=True)
    print(f"total {time.time() - start:.1f}s", flush=True)


if __name__ == "__main__":
    main()
