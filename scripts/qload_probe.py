"""Issue 7: int8 mode's handoff between an MLP's two GEMMs (``kernels.int8.int8_linear_amax`` then
``int8_linear_qload``, paired by ``patterns.linear_act.qload_pass``), timed at the models' MLP shapes.

The up-projection's W8A8 kernel also max-es each output row's abs-max into [M] (one relaxed atomic a row a
tile); the down-projection's W8A8 kernel quantizes its fp16/bf16 input per row as it loads each tile, so the
row kernel's pass between them (0.042 ms at BERT's 16384x3072 on the H200) disappears. Timed from CUDA
graphs (``probe_log.graph_ms``), autotuned configs, side by side:
- ``float``: eager's two Linears and the activation (cuBLAS and a pointwise pass);
- ``int8 + cuBLAS``: the W8A8 up-projection, then cuBLAS's GEMM (bert-base's down-projection sites today);
- ``int8 + row kernel + W8A8``: what a down-projection site in int8 runs without the handoff;
- ``handoff``: ``int8_linear_amax`` + ``int8_linear_qload``;
and each part alone. Checked on the way: the handoff's output equals the row kernel path's bit for bit and
the abs-max is the output's. Last, ``measure_qload``'s record as the pass would take it in a model run from
CUDA graphs (the choice the backend makes at that shape).

    python3 scripts/qload_probe.py [--shapes bert,vit,llama]
    TRITON_INTERPRET=1 python3 scripts/qload_probe.py --check     # small shapes on the CPU

Rows: $OUT/qload-probe.jsonl. Written in the 40th session, not yet run on a GPU.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from probe_log import check_device, graph_ms, jsonl_log, probe_parser, run_meta  # noqa: E402

from tritonfuse import registry  # noqa: E402
from tritonfuse.kernels import int8 as Q  # noqa: E402

# name -> (M, K, N, N2, act, gated, bias, dtype): [M, K] -> act([M, N]) -> [M, N2]
SHAPES = {
    "bert": (16384, 768, 3072, 768, "gelu", False, True, torch.float16),  # b32 s512
    "vit": (12608, 768, 3072, 768, "gelu", False, True, torch.float16),  # b64, 197 tokens
    "llama": (8192, 2048, 8192, 2048, "silu", True, False, torch.bfloat16),  # 1B, b8 s1024
    "small": (300, 64, 160, 48, "gelu", False, True, torch.float16),  # --check
}


def operands(M, K, N, N2, act, gated, bias, dtype, device):
    def r(*shape, scale=1.0):
        return (torch.randn(shape, device=device) * scale).to(dtype)

    o = dict(x=r(M, K), w=r(N, K, scale=K ** -0.5), wu=r(N, K, scale=K ** -0.5) if gated else None,
             b=r(N) if bias else None, bu=r(N) if bias and gated else None, w2=r(N2, N, scale=N ** -0.5),
             b2=r(N2) if bias else None)
    o["xq"], o["xs"] = Q.quant_rows(o["x"])
    return o


def paths(o, act, gated, dtype):
    ops = torch.ops.tritonfuse

    def up():
        if gated:
            return ops.int8_gated_mlp_prequant(o["xq"], o["xs"], o["w"], o["wu"], o["b"], o["bu"], act, dtype)
        return ops.int8_linear_prequant(o["xq"], o["xs"], o["w"], o["b"], act, dtype)

    def up_amax():
        return ops.int8_linear_amax(o["xq"], o["xs"], o["w"], o["wu"], o["b"], o["bu"], act, dtype)

    def cublas(h):
        return F.linear(h, o["w2"], o["b2"])

    def float_pair():
        y = F.linear(o["x"], o["w"], o["b"])
        h = F.silu(y) * F.linear(o["x"], o["wu"], o["bu"]) if gated else F.gelu(y)
        return cublas(h)

    h0 = up()
    hp, amax = up_amax()
    return {
        "float": float_pair,
        "int8 + cuBLAS": lambda: cublas(up()),
        "int8 + row kernel + W8A8": lambda: ops.int8_linear(up(), o["w2"], o["b2"], "none", "int8"),
        "handoff": lambda: ops.int8_linear_qload(*up_amax(), o["w2"], o["b2"], "none"),
        "part: W8A8 up": up,
        "part: W8A8 up + row abs-max": up_amax,
        "part: cuBLAS down": lambda: cublas(h0),
        "part: row kernel": lambda: Q.quant_rows(h0),
        "part: row kernel + W8A8 down": lambda: ops.int8_linear(h0, o["w2"], o["b2"], "none", "int8"),
        "part: W8A8 down, quantized on load": lambda: ops.int8_linear_qload(hp, amax, o["w2"], o["b2"], "none"),
    }, (h0, hp, amax)


def check(o, act, gated, dtype) -> None:
    ops = torch.ops.tritonfuse
    run, (h0, hp, amax) = paths(o, act, gated, dtype)
    assert torch.equal(h0, hp), "the abs-max epilogue changed the up-projection's output"
    assert torch.equal(amax, hp.float().abs().amax(dim=1)), "abs-max differs from the output's"
    got, want = run["handoff"](), ops.int8_linear(h0, o["w2"], o["b2"], "none", "int8")
    assert torch.equal(got, want), f"handoff differs from the row kernel path: {(got - want).abs().max().item()}"


def main() -> int:
    ap = probe_parser(__doc__, "bert,vit,llama")
    args = ap.parse_args()
    device = check_device() if args.check else "cuda"
    names = ["small"] if args.check else args.shapes.split(",")
    emit = jsonl_log("qload-probe.jsonl") if not args.check else print
    meta = run_meta() if device == "cuda" else {}
    for name in names:
        M, K, N, N2, act, gated, bias, dtype = SHAPES[name]
        torch.manual_seed(0)
        o = operands(M, K, N, N2, act, gated, bias, dtype, device)
        check(o, act, gated, dtype)
        if device != "cuda":
            print(f"{name}: handoff equals the row kernel path bit for bit")
            continue
        run, _ = paths(o, act, gated, dtype)
        shape = f"{M}x{K}x{N}x{N2} {act}{' gated' if gated else ''}{' bias' if bias else ''} {str(dtype)[6:]}"
        for path, fn in run.items():
            emit(**meta, shape=shape, path=path, ms=graph_ms(fn))
        with registry.in_cuda_graphs(True):  # the pass's own measurement, as in a model run from CUDA graphs
            for served in ("cublas", "int8"):
                rec = Q.measure_qload(M, K, N, N2, dtype, torch.device(device), act, gated, bias, True, "none",
                                      bias, served)
                emit(**meta, shape=shape, path=f"measure_qload vs {served}", record=str(rec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
