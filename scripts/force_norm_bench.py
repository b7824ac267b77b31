"""``tritonfuse bench`` with every norm_residual site that the kernel supports taken, untimed (its
``measure`` answers "use"): what the whole model gains or loses where a site's own timing cannot tell,
e.g. torchvision ViT's LayerNorms in int8 mode, which Inductor fuses with the quantization and the
residual chain into kernels of 46-48 us a site on the H100 (58th session's profile) while the site alone
measures the same in Inductor's code and in ours (``scripts/norm_layout_probe.py``).

    python3 scripts/force_norm_bench.py --models vit_b_16 --modes tritonfuse-int8 --cuda-graphs  (bench's arguments)"""

import sys

from tritonfuse.kernels import norm_residual as K

K.measure = lambda *args, **kwargs: {"use": True}

from tritonfuse.cli import main  # noqa: E402

raise SystemExit(main(["bench", *sys.argv[1:]]))
