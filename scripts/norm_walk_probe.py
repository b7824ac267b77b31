"""Does vit_b_16's int8 mode gain when its Q/K/V projections' input is quantized in the LayerNorm's kernel?

torchvision's ViT feeds its attention through ``nn.MultiheadAttention`` (batch first), whose in_proj GEMM reads
the LayerNorm's output through a transpose and a copy: ``clone <- permute <- convert <- add <- mul <- ...``.
``patterns.linear_act._norm_produced`` walks views and the norm's pointwise steps within 5 nodes, so these
sites quantize with the row kernel (``int8_w8a8[linear]`` in the report; 39th session, H200: 0.066 against
cuBLAS's 0.068 ms a site). ``--walk`` lets the walk through permute, transpose and clone, 7 nodes deep, so
the quantization becomes graph ops Inductor can fuse into the LayerNorm's kernel (``[linear,fused quant]``).
Runs ``tritonfuse bench`` in this process with the change or without it:

    python3 scripts/norm_walk_probe.py [--walk] -- --models vit_b_16 --modes inductor,tritonfuse-int8 \\
        --cuda-graphs --no-progress --out $OUT/walk/

On the CPU (tiny vit_b_16, fp16, interpreter, ``TRITONFUSE_PATTERNS=linear_act,attention`` as the GPU's
measurements leave the norms to Inductor) the walk turns the two in_proj sites from ``[linear]`` into
``[linear,fused quant]``. Written in the 39th session; run on the H200 in the 42nd: the walk took vit_b_16
int8 from 5.61 to 5.52 ms (CUDA graphs, 10 rounds; the Q/K/V site 0.063 against cuBLAS's 0.068 ms), and
``patterns.linear_act`` now walks through a permute or transpose that keeps the rows (the probe's --walk
also admits the others).
"""

from __future__ import annotations

import os
import sys

# both runs compile afresh: Inductor's caches key on the pass, not on the walk this probe changes
os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "0"
os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "0"

import torch  # noqa: E402

from tritonfuse._paths import checkout_behind_site_packages  # noqa: E402

checkout_behind_site_packages()


def main() -> int:
    argv = sys.argv[1:]
    walk = "--walk" in argv
    rest = argv[argv.index("--") + 1:] if "--" in argv else [a for a in argv if a != "--walk"]
    if walk:
        import tritonfuse.patterns.linear_act as LP

        aten = torch.ops.aten
        LP._NORM_STEPS |= {aten.permute.default, aten.transpose.int, aten.clone.default}
        walk_views = LP._norm_produced
        LP._norm_produced = lambda x_node, depth=7: walk_views(x_node, depth)
    from tritonfuse.cli import main as cli_main

    print(f"norm walk through permute/clone: {'on' if walk else 'off'}", flush=True)
    return cli_main(["bench", *rest])


if __name__ == "__main__":
    raise SystemExit(main())
