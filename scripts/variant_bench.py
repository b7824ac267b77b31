"""``tritonfuse bench`` with module switches set in this process: a variant of the backend against the default.

    python3 scripts/variant_bench.py --set tritonfuse.patterns.linear_act.QLOAD=False -- \\
        --models bert-base,vit_b_16 --modes inductor,tritonfuse-int8 --cuda-graphs --no-progress --out $OUT/off/

Each ``--set MODULE.NAME=VALUE`` (VALUE a Python literal) is assigned before the bench imports anything else.
Inductor's FX-graph and AOTAutograd caches are off, so each run compiles afresh (a switch the backend's cache
key does not cover would otherwise be served the other variant's graphs). Written in the 40th session.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys

os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "0"
os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "0"

from tritonfuse._paths import checkout_behind_site_packages  # noqa: E402

checkout_behind_site_packages()


def main() -> int:
    argv = sys.argv[1:]
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    mine = argv[:argv.index("--")] if "--" in argv else argv
    sets = [mine[i + 1] for i, a in enumerate(mine) if a == "--set"]
    for s in sets:
        target, value = s.split("=", 1)
        module, name = target.rsplit(".", 1)
        mod = importlib.import_module(module)
        if not hasattr(mod, name):
            raise SystemExit(f"{module} has no {name}")
        setattr(mod, name, ast.literal_eval(value))
        print(f"set {target} = {getattr(mod, name)!r}", flush=True)
    from tritonfuse.cli import main as cli_main

    return cli_main(["bench", *rest])


if __name__ == "__main__":
    raise SystemExit(main())
