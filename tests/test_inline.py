"""Inlining op calls into Inductor's graph (tritonfuse.inline).

Inductor compiles inlined kernels on the GPU only, where the pattern tests run them end to end. Here the
graph surgery is checked on the CPU: Triton kernels are traced (not run) for a Hopper target in a
subprocess without the interpreter (the interpreter's kernels cannot be traced), and the spliced graph
must hold one functional kernel node per launch, no tritonfuse op call, and writes to fresh buffers only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from tritonfuse import config, inline
from tritonfuse.kernels import norm_residual  # noqa: F401 (registers the ops)

# both subprocess scripts start here: a pretended Hopper GPU for Triton's frontend
HOPPER = textwrap.dedent(
    """
    import json, sys, torch, triton
    from triton.backends.compiler import GPUTarget

    class HopperTarget:  # Triton's frontend only: kernels are traced to TTIR, never compiled or run
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

        def get_current_device(self):
            return 0

    triton.runtime.driver.set_active(HopperTarget())
    """
)

SCRIPT = HOPPER + textwrap.dedent(
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from tritonfuse import inline
    from tritonfuse.kernels import attention, conv_bn, int8, linear_act, norm_residual  # noqa: F401 (ops)
    from tritonfuse.kernels import conv_bn as CB
    from tritonfuse.kernels import linear_act as LA

    inline.unavailable = lambda device: None  # the CPU stands in for the GPU here
    LA._hopper = lambda device: True
    CB._hopper = lambda device: True
    CB.INLINE = True  # the default (kernels.conv_bn.INLINE), set in case a run turned it off
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    def f64_tiles(hop):
        # the kernel traced to TTIR with its float arguments typed fp64, as Inductor types Python floats for
        # the kernels it inlines: any fp64 tensor in the IR is arithmetic the op's own launch does in fp32
        # (conv_bn's eps once made a whole tile's epilogue fp64, too large to compile on the H200)
        from triton.compiler import ASTSource
        from triton.runtime.autotuner import Autotuner
        from triton._C.libtriton import ir
        k = kernel_side_table.get_kernel(hop.kwargs["kernel_idx"])
        args = dict(kernel_side_table.get_constant_args(hop.kwargs["constant_args_idx"]))
        for n, v in hop.kwargs["kwargs"].items():
            args[n] = v.meta["val"] if isinstance(v, torch.fx.Node) else v
        while not hasattr(k, "params"):
            if isinstance(k, Autotuner):
                args = {**k.configs[0].kwargs, **args}
            k = k.fn
        dt = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int8: "i8",
              torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8", torch.bool: "i1"}
        sig, consts = {}, {}
        for p in k.params:
            v = args[p.name] if p.name in args else p.default
            if p.is_constexpr or v is None:
                sig[p.name], consts[p.name] = "constexpr", v
            elif isinstance(v, torch.Tensor):
                sig[p.name] = "*" + dt[v.dtype]
            elif isinstance(v, bool):
                sig[p.name] = "i1"
            elif isinstance(v, float):
                sig[p.name] = "fp64"
            else:
                sig[p.name] = "i32"
        target = GPUTarget("cuda", 90, 32)
        backend = triton.compiler.compiler.make_backend(target)
        options = backend.parse_options({})
        context = ir.context()
        ir.load_dialects(context)
        backend.load_dialects(context)
        src = ASTSource(fn=k, signature=sig, constexprs=consts)
        mod = src.make_ir(target, options, backend.get_codegen_implementation(options), backend.get_module_map(),
                          context)
        return "xf64>" in str(mod)

    def aliased_outputs(hop):
        # the names a written buffer is also passed under. On the H200 an inlined conv whose output also stood
        # in for its absent bias and residual got an output-sized buffer per name, each filled with NaN before
        # every launch (with the channels_last empty of empty_formats below; Inductor is not told they alias)
        kw, written = hop.kwargs["kwargs"], set(hop.kwargs["tensors_to_clone"])
        return sorted(n for n, v in kw.items() if n not in written and isinstance(v, torch.fx.Node)
                      and any(kw[m] is v for m in written))

    def kernel_name(hop):
        k = kernel_side_table.get_kernel(hop.kwargs["kernel_idx"])
        while hasattr(k, "fn"):
            k = k.fn
        return k.__name__
    ops = torch.ops.tritonfuse
    HOP = inline._hops()[0]
    from torch._inductor.decomposition import select_decomp_table
    from torch._inductor.lowering import lowerings
    decomps = select_decomp_table()
    out = {}
    mode = FakeTensorMode()
    with mode:
        x, r = torch.randn(37, 96), torch.randn(37, 96)
        w, b = torch.randn(96), torch.randn(96)
        W, Wu, bias = torch.randn(80, 96), torch.randn(80, 96), torch.randn(80)
        xt = torch.randn(96, 37).t()  # non-contiguous
        mid, Wm, bm = (torch.randn(300, 96, dtype=torch.bfloat16), torch.randn(80, 96, dtype=torch.bfloat16),
                       torch.randn(80, dtype=torch.bfloat16))
        # fake tensors: no memory behind them
        big, Wb, bb = (torch.randn(4096, 2048, dtype=torch.bfloat16), torch.randn(4096, 2048, dtype=torch.bfloat16),
                       torch.randn(4096, dtype=torch.bfloat16))
        q, k = torch.randn(2, 4, 19, 32), torch.randn(2, 2, 19, 32)
        qd, kd = torch.randn(2, 8, 1, 64), torch.randn(2, 2, 500, 64)
        mask = torch.ones(2, 1, 1, 500, dtype=torch.bool)
        lse, rows = torch.randn(2, 4, 19), torch.randn(37)
        xc, wc = torch.randn(2, 16, 9, 7).to(memory_format=torch.channels_last), torch.randn(24, 16, 3, 3)
        bn = [torch.randn(24), torch.rand(24) + 0.5, torch.randn(24), torch.randn(24)]
        # fp16, channels_last, 1x1: on Hopper the TMA kernel's case
        xh, w1 = xc.half(), torch.randn(24, 16, 1, 1, dtype=torch.half)
        rc, bnh = torch.randn(2, 24, 9, 7, dtype=torch.half).to(memory_format=torch.channels_last), [t.half() for t in bn]
        # int8 weights quantized ahead (graph constants): W8A8 rows quantized by their producer, or weight-only
        xq, xs, wq, wqu, ws = (torch.empty(37, 96, dtype=torch.int8), torch.rand(37), torch.empty(80, 96, dtype=torch.int8),
                               torch.empty(80, 96, dtype=torch.int8), torch.rand(80))
        xd = torch.randn(5, 96, dtype=torch.bfloat16)
    cases = {
        "norm_residual": (lambda x, r, w, b: ops.norm_residual(x, r, w, b, 1e-5, "layer", True, False, False, False)[:2],
                          (x, r, w, b)),
        "rms_norm": (lambda x, w: ops.norm_residual(x, None, w, None, 1e-6, "rms", False, True, False, False)[0], (x, w)),
        "linear_act": (lambda x, w, b: ops.linear_act(x, w, b, "gelu"), (xt, W, bias)),
        "gated_mlp": (lambda x, wg, wu: ops.gated_mlp(x, wg, wu, None, None, "silu"), (x, W, Wu)),
        "linear_act_mid": (lambda x, w, b: ops.linear_act(x, w, b, "relu"), (mid, Wm, bm)),
        "linear_act_tma": (lambda x, w, b: ops.linear_act(x, w, b, "relu"), (big, Wb, bb)),
        "attention": (lambda q, k, v: ops.attention(q, k, v, None, 0.125, True), (q, k, k)),
        "attention_decode": (lambda q, k, v, m: ops.attention(q, k, v, m, 0.125, False), (qd, kd, kd, mask)),
        "conv_bn": (lambda x, w, m, v, g, b: ops.conv_bn(x, w, None, m, v, g, b, None, [1, 1], [1, 1], 1e-5,
                                                          "relu", "none", True), (xc, wc, *bn)),
        "conv_bn_1x1_res": (lambda x, w, m, v, g, b, r: ops.conv_bn(x, w, None, m, v, g, b, r, [1, 1], [0, 0], 1e-5,
                                                                    "none", "relu", True), (xh, w1, *bnh, rc)),
        # the same with kernels.conv_bn.INLINE_DEVICE_TMA off: the pointer kernel (no global scratch)
        "conv_bn_1x1_pointer": (lambda x, w, m, v, g, b, r: ops.conv_bn(x, w, None, m, v, g, b, r, [1, 1], [0, 0],
                                                                        1e-5, "none", "relu", True), (xh, w1, *bnh, rc)),
        "int8_mm": (lambda xq, xs, wq, ws, b: ops.int8_mm(xq, xs, wq, ws, b, "gelu", torch.bfloat16),
                    (xq, xs, wq, ws, bias)),
        "int8_gated_mm": (lambda xq, xs, wq, wu, ws: ops.int8_gated_mm(xq, xs, wq, ws, wu, ws, None, None, "silu",
                                                                        torch.float16), (xq, xs, wq, wqu, ws)),
        "int8_mm_weight_only": (lambda x, wq, ws: ops.int8_mm(x, None, wq, ws, None, "none", torch.bfloat16),
                                (mid, wq, ws)),
        "int8_mm_decode": (lambda x, wq, ws: ops.int8_mm(x, None, wq, ws, None, "none", torch.bfloat16), (xd, wq, ws)),
        # training forms
        "linear_act_pre": (lambda x, w, b: ops.linear_act_pre(x, w, b, "gelu"), (x, W, bias)),
        "attention_fwd": (lambda q, k, v: ops.attention_fwd(q, k, v, None, 0.125, True), (q, k, k)),
        "attention_bwd": (lambda do, q, k, v, o, lse: ops.attention_bwd(do, q, k, v, o, lse, None, 0.125, True),
                          (q, q, k, k, q, lse)),
        "norm_backward": (lambda dy, h, w, mean, rstd: ops.norm_residual_backward(dy, None, h, w, mean, rstd, "layer",
                                                                                  True), (x, r, w, rows, rows)),
    }
    for name, (fn, args) in cases.items():
        inline.reset()
        gm = make_fx(fn)(*args)
        CB.INLINE_DEVICE_TMA = not name.endswith("_pointer")
        inline.inline_pass(gm.graph)
        CB.INLINE_DEVICE_TMA = True
        gm.graph.lint()
        targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
        hops = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is HOP]
        out[name] = {
            "counts": inline.counts(),
            "kernels": len(hops),
            "ops_left": sum(1 for t in targets if "tritonfuse" in str(t)),
            "written": sorted(w for h in hops for w in h.kwargs["tensors_to_clone"]),
            "kernel_names": [kernel_name(h) for h in hops],
            "f64_tiles": [kernel_name(h) for h in hops if f64_tiles(h)],
            "aliased_outputs": [a for h in hops for a in aliased_outputs(h)],
            # Inductor lowers aten.empty.memory_format contiguous whatever the format: a kernel given a
            # channels_last one writes a buffer Inductor converts first (filling a second one with NaN)
            "empty_formats": [str(n.kwargs.get("memory_format")) for n in gm.graph.nodes
                              if n.target is torch.ops.aten.empty.memory_format
                              and not n.meta["val"].is_contiguous()],
            "as_strided": sum(1 for t in targets if "as_strided" in str(t)),
            # Inductor lowers the spliced nodes directly: none may be an op it would have decomposed earlier
            "undecomposed": sorted({str(t) for t in targets if t in decomps}),
            "no_lowering": sorted({str(t) for t in targets if isinstance(t, torch._ops.OpOverload)
                                   and t not in lowerings and t.overloadpacket not in lowerings}),
        }
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def traced():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITONFUSE_AUTOTUNE"] = "0"
    try:
        import triton.backends.compiler  # noqa: F401
    except ImportError:
        pytest.skip("this triton has no GPUTarget")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name, kernels, written", [
    ("norm_residual", 1, ["out_ptr", "s_ptr"]),
    ("rms_norm", 1, ["out_ptr"]),
    ("linear_act", 1, ["out_ptr"]),
    ("linear_act_mid", 1, ["out_ptr"]),  # M > 256 on Hopper, but too little work to be worth an op call
    ("gated_mlp", 1, ["out_ptr"]),
    ("attention", 1, ["out_ptr"]),
    ("attention_decode", 2, ["lpart_ptr", "opart_ptr", "out_ptr"]),
    # a launch leaving out a defaulted parameter (INT8) once failed Inductor's write analysis: every input
    # counted as written, and the call was refused (on the GPU it had copied every input before each launch)
    ("conv_bn", 1, ["out_ptr"]),
    ("conv_bn_1x1_res", 1, ["out_ptr"]),
    ("conv_bn_1x1_pointer", 1, ["out_ptr"]),
    ("int8_mm", 1, ["out_ptr"]),
    ("int8_gated_mm", 1, ["out_ptr"]),
    ("int8_mm_weight_only", 1, ["out_ptr"]),
    ("linear_act_pre", 1, ["out_ptr", "pre_ptr"]),
    ("attention_fwd", 1, ["lse_ptr", "out_ptr"]),
    ("attention_bwd", 3, ["delta_ptr", "dk_ptr", "dq_ptr", "dv_ptr"]),
    ("norm_backward", 1, ["db_part_ptr", "dh_ptr", "dw_part_ptr"]),
])
def test_op_calls_become_kernel_nodes(traced, name, kernels, written):
    got = traced[name]
    assert got["counts"]["inlined"] == 1 and got["counts"]["kept"] == 0, got
    assert got["ops_left"] == 0
    assert got["kernels"] == kernels
    assert got["written"] == written  # outputs only: no input is cloned or written
    assert got["undecomposed"] == [] and got["no_lowering"] == [], got
    assert got["f64_tiles"] == [], got  # Inductor's fp64 floats must not reach a tile (see f64_tiles)
    assert got["aliased_outputs"] == [], got  # an absent operand's stand-in is never the output
    assert got["empty_formats"] == [], got  # outputs allocated with their strides (empty_strided)


PINNED = textwrap.dedent(
    """
    import json, torch, triton
    from triton.backends.compiler import GPUTarget

    class HopperTarget:
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

        def get_current_device(self):
            return 0

    triton.runtime.driver.set_active(HopperTarget())
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from tritonfuse import inline, tuning
    from tritonfuse.kernels import linear_act as LA

    inline.unavailable = lambda device: None
    HOP = inline._hops()[0]
    tuner = LA._linear_act_kernel
    with FakeTensorMode():
        x, w, b = torch.randn(37, 96), torch.randn(80, 96), torch.randn(80)

    def traced_configs():
        inline.reset()
        gm = make_fx(lambda x, w, b: torch.ops.tritonfuse.linear_act(x, w, b, "gelu"))(x, w, b)
        inline.inline_pass(gm.graph)
        (hop,) = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is HOP]
        return [str(c) for c in kernel_side_table.get_kernel(hop.kwargs["kernel_idx"]).configs]

    keys = []
    key_of = tuning.tuning_key
    tuning.tuning_key = lambda *a: keys.append(key_of(*a)) or keys[-1]
    out = {"n_configs": len(tuner.configs), "before": traced_configs()}
    # what the autotuner chose when the site's measurement ran this launch
    tuner.cache[keys[-1]] = tuner.configs[3]
    out["chosen"] = str(tuner.configs[3])
    out["after"] = traced_configs()
    out["again_same_kernel"] = inline.pinned(tuner, (), {}) is tuner  # nothing to key on: the whole list
    print(json.dumps(out))
    """
)


def test_an_inlined_kernel_gets_the_config_its_autotuner_chose(tmp_path):
    # Inductor compiles and times every config of an inlined autotuned kernel in every process; a launch our
    # autotuner has already tuned (the site's measurement ran it) hands Inductor that config alone
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITONFUSE_AUTOTUNE")}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    try:
        import triton.backends.compiler  # noqa: F401
    except ImportError:
        pytest.skip("this triton has no GPUTarget")
    proc = subprocess.run([sys.executable, "-c", PINNED], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["n_configs"] > 1 and len(got["before"]) == got["n_configs"]
    # that config alone (torch folds the kernel's heuristics into it)
    assert [re.sub(r"EVEN_K: \w+, ", "", c) for c in got["after"]] == [got["chosen"]]
    assert got["again_same_kernel"]


def test_int8_decode_stays_an_op_call(traced):
    # M <= 16 weight-only: the split-K decode kernel keeps its workspace between calls
    got = traced["int8_mm_decode"]
    assert got["counts"]["inlined"] == 0 and got["ops_left"] == 1, got
    assert any("split-K workspace" in r for r in got["counts"]["reasons"]), got


def test_large_gemm_on_hopper_stays_an_op_call(traced):
    # the persistent TMA kernel serves it (4096 rows, 69 GFLOP), which Inductor's inlining does not take
    got = traced["linear_act_tma"]
    assert got["counts"]["inlined"] == 0 and got["ops_left"] == 1
    assert any("TMA kernel, called as an op" in r for r in got["counts"]["reasons"])


def test_off_the_gpu_and_when_disabled_calls_stay_ops():
    assert inline.unavailable(torch.device("cpu")) is not None
    with config.patch(inline="0"):
        assert inline.unavailable(torch.device("cuda")) == "TRITONFUSE_INLINE=0"
    assert not inline.will_inline(torch.ops.tritonfuse.norm_residual.default, torch.device("cpu"))


def test_a_kernel_writing_an_input_is_refused():
    # the guard that keeps a mis-analysed kernel (Inductor assumes every argument written when its analysis
    # fails) from turning into copies of weights on every call
    def fake_hop(written):
        g = torch.fx.Graph()
        p = g.placeholder("x")
        e = g.call_function(torch.ops.aten.empty_like.default, (p,))
        view = g.call_function(torch.ops.aten.t.default, (p,))
        h = g.call_function(inline._hops()[0], (), {
            "kernel_idx": 0, "constant_args_idx": 0, "grid": [(1, 1, 1)], "tma_descriptor_metadata": {},
            "kwargs": {"x_ptr": p, "x_view": view, "out_ptr": e}, "tensors_to_clone": written})
        g.output(h)
        return torch.fx.GraphModule({}, g)

    inline._check_writes(fake_hop(["out_ptr"]))
    for written in (["x_ptr"], ["x_view"], ["out_ptr", "out_ptr"]):
        with pytest.raises(RuntimeError):
            inline._check_writes(fake_hop(written))


def test_report_says_what_was_inlined():
    import tritonfuse

    tritonfuse.reset()
    assert "inlined" not in tritonfuse.report()
    inline._counts["inlined"] += 3
    inline._keep("tritonfuse::linear_act: M=300 > 256 on Hopper: the TMA kernel, called as an op")
    text = tritonfuse.report()
    assert "op calls inlined into Inductor's code: 3; left as op calls: 1" in text
    assert "TMA kernel, called as an op (x1)" in text
    tritonfuse.reset()
    assert inline.counts() == {"inlined": 0, "kept": 0, "reasons": {}}


def test_a_graph_inductor_cannot_compile_inlined_is_compiled_again_with_op_calls(monkeypatch):
    # the retry keeps the sites (as op calls) and counts each once; the user's model runs either way
    import warnings

    import torch._inductor.config as inductor_config
    import torch.nn as nn

    import tritonfuse
    from tritonfuse import backend, registry
    from tests.utils import fresh

    seen = []
    real = backend._compile

    def flaky(gm, inputs, passes, patches=None):
        seen.append(config.inline)
        compiled = real(gm, inputs, passes, patches)
        if len(seen) == 1:
            raise RuntimeError("simulated: Inductor failed on an inlined kernel")
        return compiled

    monkeypatch.setattr(backend, "_compile", flaky)
    monkeypatch.setattr(backend, "_inlining", lambda: True)
    tritonfuse.reset()
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(32, 48), nn.GELU())
    x = fresh(6, 32)
    with inductor_config.patch(fx_graph_cache=False), warnings.catch_warnings(record=True) as caught, \
            torch.no_grad():
        warnings.simplefilter("always")
        out = torch.compile(model, backend="tritonfuse")(x)
    assert seen == ["1", "0"]
    assert any("retrying with TRITONFUSE_INLINE=0" in str(w.message) for w in caught)
    assert tritonfuse.counters()["linear_act"] == {"matched": 1, "replaced": 1, "fallback": 0}
    assert any("inlining failed" in e for e in registry.errors())
    torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)
    tritonfuse.reset()
    torch._dynamo.reset()


def test_inlined_1x1_conv_on_hopper_builds_its_tma_descriptors_on_the_device(traced):
    # a traced call has no data pointers for host descriptors: the inlined 1x1 conv runs the kernel that
    # builds them on the device; a 3x3 conv runs the implicit-GEMM kernel
    import triton.language as tl

    if not hasattr(tl, "make_tensor_descriptor"):
        pytest.skip("this triton has no device-side TMA descriptors")
    assert traced["conv_bn_1x1_res"]["kernel_names"] == ["_conv1x1_device_tma_kernel"]
    # the kernel takes the 4-D tensors: as_strided views of them became copies in Inductor's code (18f248f)
    assert traced["conv_bn_1x1_res"]["as_strided"] == 0
    assert traced["conv_bn"]["kernel_names"] == ["_conv_bn_kernel"]
    # kernels.conv_bn.INLINE_DEVICE_TMA off: the pointer kernel (no global scratch: it can be launched statically)
    assert traced["conv_bn_1x1_pointer"]["kernel_names"] == ["_conv_bn_kernel"]


def test_an_inlined_kernel_gets_only_the_configs_its_pruning_keeps(monkeypatch):
    # Inductor does not apply an autotuner's early_config_prune: an inlined launch hands over the configs the
    # pruning keeps for it (a config that cannot compile for this launch, given alone, failed resnet50's
    # whole compile), and the config the autotuner chose only where the pruning keeps it
    import triton
    import triton.language as tl

    from tritonfuse import tuning

    def prune(configs, named, **kwargs):
        return [c for c in configs if c.kwargs["BLOCK"] <= named["n"]]

    @triton.autotune(configs=[triton.Config({"BLOCK": b}) for b in (16, 32, 64)], key=["n"],
                     prune_configs_by={"early_config_prune": prune})
    @triton.jit
    def kernel(x_ptr, n, BLOCK: tl.constexpr):
        tl.store(x_ptr + tl.arange(0, BLOCK), 0.0)

    x = torch.empty(64)
    chosen = {}
    monkeypatch.setattr(tuning, "restore", lambda k, args, kwargs: chosen.get(args[1]))
    got = inline.pinned(kernel, (x, 32), {})
    assert [c.kwargs["BLOCK"] for c in got.configs] == [16, 32] and got.fn is kernel.fn
    assert inline.pinned(kernel, (x, 32), {}) is got  # the same subset: the same kernel object
    assert inline.pinned(kernel, (x, 64), {}) is kernel  # nothing pruned
    chosen[32] = kernel.configs[2]  # chosen where the pruning drops it: not handed over
    assert [c.kwargs["BLOCK"] for c in inline.pinned(kernel, (x, 32), {}).configs] == [16, 32]
    chosen[32] = kernel.configs[1]
    assert [c.kwargs["BLOCK"] for c in inline.pinned(kernel, (x, 32), {}).configs] == [32]


def test_every_autotuned_kernel_s_configs_set_the_same_parameters():
    # a defaulted kernel parameter (OCC) that only some configs set is left out of the launches the others
    # make (inline.with_defaults cannot add it: Triton refuses a call argument a config also sets). Inductor's
    # analysis of what an inlined kernel writes then fails and assumes every input is written, and the call
    # stays an op call: on the H200, two of resnet50's inlined 1x1 convs whose chosen config had no OCC
    import triton
    from triton.runtime.autotuner import Autotuner

    from tritonfuse.kernels import attention, conv_bn, int8, linear_act, norm_residual

    seen = 0
    for mod in (attention, conv_bn, int8, linear_act, norm_residual):
        for name, obj in vars(mod).items():
            configs = obj.configs if isinstance(obj, Autotuner) else obj
            if not (isinstance(configs, list) and configs and all(isinstance(c, triton.Config) for c in configs)):
                continue
            keys = {frozenset(c.kwargs) for c in configs}
            assert len(keys) == 1, (mod.__name__, name, [sorted(k) for k in keys])
            seen += 1
    assert seen >= 10


MEMO_SCRIPT = HOPPER + textwrap.dedent(
    """
    import triton.language as tl
    from torch._higher_order_ops import triton_kernel_wrap as tkw
    from tritonfuse import inline
    from tritonfuse.kernels.norm_residual import _norm_fwd_kernel

    name = next(n for n in inline._ANALYSES if hasattr(tkw, n))
    original = getattr(tkw, name)
    inline.memoize_write_analysis()
    inline.memoize_write_analysis()  # idempotent: one wrapper
    memo = getattr(tkw, name)
    assert memo is not original and memo.__wrapped__ is original

    def writes(result):
        rw = getattr(result, "read_writes", None)
        return sorted(d.name for d in rw.writes) if rw is not None else sorted(result)

    def args(M=37, N=96, eps=1e-5, **flags):
        t = lambda dt=torch.float16: torch.empty(8, dtype=dt)
        kw = dict(x_ptr=t(), r_ptr=t(), w_ptr=t(), b_ptr=t(), out_ptr=t(), s_ptr=t(), mean_ptr=t(torch.float32),
                  rstd_ptr=t(torch.float32), q_ptr=t(torch.int8), qscale_ptr=t(torch.float32),
                  M=M, N=N, R_ROWS=M, eps=eps, eps_ptr=t(torch.float32),
                  stride_xm=N, X_INNER=M, stride_xo=0, stride_rm=N, R_INNER=M, stride_ro=0, stride_om=N, stride_sm=N,
                  stride_qm=N,
                  EPS_PTR=False, HAS_RES=True, HAS_W=True, HAS_B=True, IS_RMS=False, WRITE_SUM=True,
                  WRITE_STATS=False, CAST_BEFORE_WEIGHT=False, QUANT_OUT=False, RTNE_BF16=False, WRITE_Y=True,
                  BLOCK_M=4, BLOCK_N=128, SINGLE=True)
        kw.update(flags)
        return kw

    meta = {}
    calls = [
        ("first", args()),
        ("other rows, eps and width: same specialization", args(M=53, N=112, eps=1e-6)),
        ("M=1 (specialized)", args(M=1)),
        ("WRITE_SUM off (a constexpr)", args(WRITE_SUM=False)),
        ("stats written (a constexpr)", args(WRITE_STATS=True)),
        ("BLOCK_N=64 (a constexpr int)", args(BLOCK_N=64)),
        ("int8 rows only, y not written (constexprs)", args(QUANT_OUT=True, WRITE_Y=False)),
    ]
    out = []
    for label, kw in calls:
        before = dict(inline._analysis_stats)
        got = memo(_norm_fwd_kernel, dict(kw), meta)
        want = original(_norm_fwd_kernel, dict(kw), meta)
        hit = inline._analysis_stats["hits"] > before["hits"]
        out.append([label, hit, writes(got), writes(want)])

    @triton.jit
    def not_ours(x_ptr, y_ptr, N, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < N), mask=offs < N)

    n_cached = len(inline._analysis_cache)
    kw = dict(x_ptr=torch.empty(8), y_ptr=torch.empty(8), N=8, BLOCK=8)
    got = [writes(memo(not_ours, dict(kw), meta)) for _ in range(2)]
    want = writes(original(not_ours, dict(kw), meta))
    out.append(["a kernel not tritonfuse's", len(inline._analysis_cache) > n_cached, got[1], want])
    print(json.dumps(out))
    """
)


def test_the_write_analysis_is_looked_up_only_where_it_cannot_differ(tmp_path):
    # torch analyses which tensors an inlined kernel writes by generating its TTIR, several times per launch
    # of every compile; tritonfuse memoizes that for its own kernels. A lookup must give torch's own answer:
    # the same kernel at other sizes of the same specialization hits, a constexpr that changes what is
    # written (or M=1, which Triton specializes) does not, and other kernels are never cached
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    try:
        import triton.backends.compiler  # noqa: F401
    except ImportError:
        pytest.skip("this triton has no GPUTarget")
    script = tmp_path / "memo_probe.py"  # a file: Triton reads a @jit function's source from it
    script.write_text(MEMO_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {label: (hit, got, want) for label, hit, got, want in json.loads(proc.stdout.strip().splitlines()[-1])}
    for label, (hit, got, want) in rows.items():
        assert got == want, (label, got, want)
    assert [hit for hit, _, _ in rows.values()] == [False, True, False, False, False, False, False, False], rows
    first, no_sum, stats = (rows[k][1] for k in ("first", "WRITE_SUM off (a constexpr)", "stats written (a constexpr)"))
    assert "s_ptr" in first and "s_ptr" not in no_sum and "mean_ptr" in stats and "mean_ptr" not in first
    int8_only = rows["int8 rows only, y not written (constexprs)"][1]
    assert "out_ptr" in first and "out_ptr" not in int8_only and "q_ptr" in int8_only and "q_ptr" not in first
