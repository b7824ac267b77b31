"""Run on a GPU: python3 scripts/quant_out_ab.py on|off BENCH-ARGS...

``tritonfuse bench`` with ``patterns.norm_residual.QUANT_OUT`` set (the norm op calls also write the int8 rows
the W8A8 GEMMs reading their outputs take, ``quant_out_pass``; or those GEMMs quantize the norm's output
themselves), printing how many norm calls per graph were hooked."""
import sys

from tritonfuse.cli import main
from tritonfuse.patterns import norm_residual as P

P.QUANT_OUT = sys.argv[1] == "on"
_pass = P.quant_out_pass


def quant_out_pass(graph):
    made = _pass(graph)
    if made:
        print(f"quant_out: {made} norm calls write their int8 rows", flush=True)
    return made


P.quant_out_pass = quant_out_pass
sys.exit(main(sys.argv[2:]))
