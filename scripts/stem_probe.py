"""The stem convolutions on a GPU (61st session): conv + BN + ReLU over 3 input channels, b64 fp16
channels_last, timed from replayed CUDA graphs (GPU ms): the Triton kernel gathering each kernel row's run
of KW * C values (``kernels.conv_bn.row_run``, ROW_RUN) at each tile config, the flat gather it replaced
(FLAT_K: 0.71 ms at ResNet-50's 7x7 stem on the H100 in the 60th session), cuDNN's conv alone and with
Inductor's epilogue (the path a site is left to), and eager. Each config's output is checked against fp64
first (error at most 2x eager's + 1e-3). Rows to ``$OUT/stem-probe.jsonl``.

    python3 scripts/stem_probe.py
"""

import os
import sys

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from bench_conv_bn import STEM_SHAPES  # noqa: E402
from probe_log import graph_ms, jsonl_log, run_meta  # noqa: E402

from tritonfuse import config  # noqa: E402
from tritonfuse.kernels import conv_bn as K  # noqa: E402

# (BLOCK_M, BLOCK_N, stages, warps): the kernel's general list first (at 6cb7796 256x32/8 warps and 128x32/4
# were the fastest of 16: 0.266 and 0.074 ms at the two shapes)
CONFIGS = [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages, c.num_warps) for c in K._CONV_ALL[:4]] + [
    (256, 64, 3, 8), (256, 32, 3, 8), (128, 32, 3, 4), (64, 32, 2, 2), (128, 64, 3, 8), (64, 64, 2, 4),
    (64, 32, 3, 4), (128, 32, 2, 8)]
# (name, ROW_K, configs): the flat gather at the kernel's own four
VARIANTS = [("row", True, CONFIGS), ("flat", False, CONFIGS[:4])]


def main():
    emit = jsonl_log("stem-probe.jsonl")
    meta = run_meta()
    config.fast_launch = "0"  # the autotuner itself launches: its config list is set per row below
    kernel = K._conv_bn_kernel
    for cin, cout, k, s, p, hw in STEM_SHAPES:
        g = torch.Generator(device="cuda").manual_seed(cin + cout + k)
        dev = dict(device="cuda", dtype=torch.half)
        x = torch.randn(64, cin, hw, hw, generator=g, **dev).to(memory_format=torch.channels_last)
        w = (torch.randn(cout, cin, k, k, generator=g, **dev) / (cin * k * k) ** 0.5).to(
            memory_format=torch.channels_last)
        bn = (torch.randn(cout, generator=g, **dev) * 0.1, torch.rand(cout, generator=g, **dev) + 0.5,
              torch.rand(cout, generator=g, **dev) + 0.5, torch.randn(cout, generator=g, **dev) * 0.1)
        tail = (None, [s, s], [p, p], 1e-5, "relu", "none", True)
        ref = K.conv_bn_ref(x[:2], w, None, *bn, *tail[:-1], upcast=True).cuda()
        eager = F.relu(F.batch_norm(F.conv2d(x[:2], w, None, s, p), bn[0], bn[1], bn[2], bn[3], False, 0.0, 1e-5))
        bound = 2 * ((eager.double() - ref).norm() / ref.norm()).item() + 1e-3

        def ours():
            return torch.ops.tritonfuse.conv_bn(x, w, None, *bn, *tail)

        def epilogue(xx):
            return F.relu(F.batch_norm(F.conv2d(xx, w, None, s, p), bn[0], bn[1], bn[2], bn[3], False, 0.0, 1e-5))

        inductor = torch.compile(epilogue, dynamic=False)
        row = {"shape": f"64x{cin}x{hw}x{hw} -> {cout} k{k} s{s} p{p}",
               "cudnn conv": graph_ms(lambda: F.conv2d(x, w, None, s, p)),
               "inductor": graph_ms(lambda: inductor(x)), "eager": graph_ms(lambda: epilogue(x))}
        tried = []
        for variant, row_k, configs in VARIANTS:
            K.ROW_K = row_k
            for bm, bn_, st, wp in configs:
                cfg = triton.Config({"BLOCK_M": bm, "BLOCK_N": bn_, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=st,
                                    num_warps=wp)
                kernel.configs, kernel.cache = [cfg], {}
                name = f"{variant} {bm}x{bn_} s{st} w{wp}"
                if name in tried:
                    continue
                tried.append(name)
                try:
                    y = ours()[:2]
                    err = ((y.double() - ref).norm() / ref.norm()).item()
                    if not err <= bound:
                        row[name] = f"wrong: {err:.2e} > {bound:.2e}"
                        continue
                    row[name] = graph_ms(ours)
                except Exception as e:  # noqa: BLE001
                    row[name] = f"failed: {type(e).__name__}: {str(e)[:80]}"
        K.ROW_K = True
        emit(**meta, **row)


if __name__ == "__main__":
    main()
