"""Run on a GPU: python3 scripts/quant_out_ab.py on|off BENCH-ARGS...

``tritonfuse bench`` with ``patterns.norm_residual.QUANT_OUT`` set (the norm op calls also write the int8 rows
the W8A8 GEMMs reading their outputs take, ``quant_out_pass``; or those GEMMs quantize the norm's output
themselves), printing how many norm calls per graph were hooked (``scripts/pass_ab.py``)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pass_ab import run  # noqa: E402

sys.exit(run("norm_residual.QUANT_OUT", "norm_residual.quant_out_pass", sys.argv[1], sys.argv[2:]))
