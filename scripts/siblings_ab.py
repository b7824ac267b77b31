"""Run on a GPU: python3 scripts/siblings_ab.py on|off BENCH-ARGS...

``tritonfuse bench`` with ``patterns.linear_act.SIBLINGS`` set (int8 sibling Linears stacked into one GEMM, or
not), printing each stacking the pass makes with its timing (the stacked GEMM against the sites as served)."""
import sys

from tritonfuse import registry
from tritonfuse.cli import main
from tritonfuse.patterns import linear_act as LP

LP.SIBLINGS = sys.argv[1] == "on"
_restate = registry.restate
_seen = set()


def restate(graph, name, kernel=None, suffix="", measured=None, why=""):
    if kernel and "siblings" in kernel and why not in _seen:
        _seen.add(why)
        print("stacked:", why, flush=True)
    return _restate(graph, name, kernel, suffix, measured, why)


LP.registry.restate = restate
sys.exit(main(sys.argv[2:]))
