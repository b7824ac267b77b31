"""What a Linear's bias costs inside cuBLAS: ``addmm(bias, a, w.t())`` (cuBLASLt's bias epilogue, what a
Linear runs when its output feeds an op Inductor cannot fuse into, such as a tritonfuse norm) against
``mm(a, w.t())`` alone (what Inductor runs when it moves the bias into the pointwise consumer:
``should_prefer_unfused_addmm``), at vit_b_16's and bert-base's out- and down-projections, fp16. GPU ms from
replayed CUDA graphs; rows to ``$OUT/addmm-bias-probe.jsonl``.

    python3 scripts/addmm_bias_probe.py"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_log import graph_ms, jsonl_log, run_meta  # noqa: E402


def main():
    emit = jsonl_log("addmm-bias-probe.jsonl")
    meta = run_meta()
    for m, k, n in ((12608, 768, 768), (12608, 3072, 768), (16384, 768, 768), (16384, 3072, 768)):
        a = torch.randn(m, k, device="cuda", dtype=torch.half)
        w = torch.randn(n, k, device="cuda", dtype=torch.half) * k ** -0.5
        b = torch.randn(n, device="cuda", dtype=torch.half)
        out = torch.empty(m, n, device="cuda", dtype=torch.half)
        sides = {
            "addmm (bias in cuBLAS)": lambda: torch.addmm(b, a, w.t()),
            "mm": lambda: torch.mm(a, w.t()),
            "mm + bias pass": lambda: torch.add(torch.mm(a, w.t()), b, out=out),
        }
        emit(**meta, shape=f"{m}x{k}x{n}", **{name: graph_ms(f) for name, f in sides.items()})


if __name__ == "__main__":
    main()
