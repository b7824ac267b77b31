"""Run on a GPU: python3 scripts/pass_ab.py MODULE.SWITCH MODULE.PASS on|off BENCH-ARGS...

``tritonfuse bench`` with a pass's module switch of ``tritonfuse.patterns`` set (e.g.
``attention.STRIDED_INPUTS attention.strided_inputs_pass``: attention ops reading q/k/v without their copy;
``norm_residual.QUANT_OUT norm_residual.quant_out_pass``: the norm op writing the int8 rows its GEMMs read),
printing what the pass did in each graph (its return value, where not 0). The switches are part of the
graph-cache key (``registry.switches``): the two settings never share a compiled graph."""
import importlib
import sys


def run(switch: str, pass_name: str, setting: str, bench_args: list) -> int:
    from tritonfuse.cli import main

    (mod_name, flag), (pass_mod, name) = switch.split("."), pass_name.split(".")
    setattr(importlib.import_module(f"tritonfuse.patterns.{mod_name}"), flag, setting == "on")
    module = importlib.import_module(f"tritonfuse.patterns.{pass_mod}")
    original = getattr(module, name)

    def counted(*args, **kwargs):  # (a pass takes the graph; a helper such as attention._sdpa_without_mask, more)
        made = original(*args, **kwargs)
        if made:
            print(f"{name}: {made}", flush=True)
        return made

    setattr(module, name, counted)  # (the backend imports the pass from its module when it runs it)
    return main(bench_args)


if __name__ == "__main__":
    sys.exit(run(*sys.argv[1:4], sys.argv[4:]))
