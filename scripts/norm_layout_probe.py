"""vit_b_16's residual add + LayerNorm (x: the attention's output read batch-major from its sequence-major
rows, [64, 197, 768] fp16, or the same rows contiguous), as tritonfuse's norm kernel runs it (x read in place,
or copied first) and as Inductor compiles it alone (``compile_fx_inner`` on the decomposed graph, no custom
passes), with y written in fp16 or quantized per row to int8 (int8 mode: Inductor fuses ``symmetric_int8``
into the norm). GPU ms from replayed CUDA graphs (``probe_log.graph_ms``); rows to
``$OUT/norm-layout-probe.jsonl``.

    python3 scripts/norm_layout_probe.py"""

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_log import graph_ms, jsonl_log, run_meta  # noqa: E402

from tritonfuse.kernels import int8 as Q  # noqa: E402
from tritonfuse.kernels import norm_residual  # noqa: E402,F401 (registers tritonfuse::norm_residual)


def inductor(fn, args):
    from torch._inductor import config as ic
    from torch._inductor.compile_fx import compile_fx_inner
    from torch._inductor.decomposition import select_decomp_table
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(fn, decomposition_table=select_decomp_table())(*args)
    with ic.patch({"triton.cudagraphs": False}):
        compiled = compile_fx_inner(gm, list(args))
    return lambda: compiled(list(args))


def main():
    emit = jsonl_log("norm-layout-probe.jsonl")
    meta = run_meta()
    S, B, N = 197, 64, 768
    a = torch.randn(S, B, N, device="cuda", dtype=torch.half)
    r = torch.randn(B, S, N, device="cuda", dtype=torch.half)
    w, b = torch.randn(N, device="cuda", dtype=torch.half), torch.randn(N, device="cuda", dtype=torch.half)
    op = torch.ops.tritonfuse.norm_residual

    def ln_sum(x, r, w, b):
        h = x + r
        return F.layer_norm(h, (N,), w, b, 1e-5), h

    def ln_quant_sum(x, r, w, b):
        h = x + r
        q, s = Q.symmetric_int8(F.layer_norm(h, (N,), w, b, 1e-5), (2,))
        return q, s, h

    for layout, x in (("transposed", a.transpose(0, 1)), ("contiguous", a.transpose(0, 1).contiguous())):
        sides = {
            "ours, x in place": lambda: op(x, r, w, b, 1e-5, "layer", True, False, False, False),
            "ours, x copied first": lambda: op(x.contiguous(), r, w, b, 1e-5, "layer", True, False, False, False),
            "inductor": inductor(ln_sum, (x, r, w, b)),
            "ours int8 out, x in place": lambda: op(x, r, w, b, 1e-5, "layer", True, False, False, True,
                                                    write_y=False),
            "ours int8 out, x copied first": lambda: op(x.contiguous(), r, w, b, 1e-5, "layer", True, False, False,
                                                        True, write_y=False),
            "inductor int8 out": inductor(ln_quant_sum, (x, r, w, b)),
        }
        for name, fn in sides.items():
            ms = graph_ms(fn)
            emit(**meta, layout=layout, side=name, ms=ms)


if __name__ == "__main__":
    main()
