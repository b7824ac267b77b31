"""Every autotune config's time at every shape a model's first compile tunes, for pruning config lists.

    python3 scripts/config_timings.py --models resnet50,bert-base --out /tmp/config-timings.jsonl

Each model compiles (``backend="tritonfuse"``, its zoo dtype and batch, one forward) in a process of its own
with empty caches (Inductor's, Triton's, tritonfuse's), so every autotuner times every config its pruning keeps.
``triton.runtime.autotuner.Autotuner.run`` is wrapped to write one row per tuning: the kernel, the tuning key,
and each timed config with its time (ms, the families' ``graph_bench`` median; null where a config failed to
compile or launch). A tuning that read a kept choice times nothing and writes nothing.

The rows answer which configs ever win, and by how much the others lose, at the shapes real models have: the
data behind the config lists and the pruning rules in ``kernels/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time


def _child(model_name: str, out: str, mode: str) -> None:
    import torch
    from probe_log import run_meta
    from triton.runtime.autotuner import Autotuner

    from tritonfuse import tuning, zoo

    rows = []
    original = Autotuner.run

    def run(self, *args, **kwargs):
        before = getattr(self, "configs_timings", None)
        result = original(self, *args, **kwargs)
        timings = getattr(self, "configs_timings", None)
        if timings is not None and timings is not before:
            fn = tuning._jit(self)
            named = dict(zip(self.arg_names, args))
            key = [str(named.get(k, kwargs.get(k))) for k in self.keys]

            def ms(t):
                t = t[0] if isinstance(t, (list, tuple)) else t
                return None if t is None or not math.isfinite(float(t)) else round(float(t), 5)

            rows.append({"model": model_name, "mode": mode, "kernel": getattr(fn, "__name__", str(fn)),
                         "key": dict(zip(self.keys, key)),
                         "timings": [[str(c), ms(t)] for c, t in timings.items()],
                         "chosen": str(self.best_config) if getattr(self, "best_config", None) else None})
        return result

    Autotuner.run = run
    spec = zoo.get(model_name)
    dev = torch.device("cuda")
    work = spec.make(device=dev)
    model = work.model.to(dev, spec.dtype).eval()
    inp = work.inputs(model, dev, spec.dtype, 0)
    t = time.perf_counter()
    fn = torch.compile(model, backend=mode)
    with torch.no_grad():
        fn(*inp.args, **inp.kwargs)
    torch.cuda.synchronize()
    took = time.perf_counter() - t
    meta = {**run_meta(), "compile_s": round(took, 2)}
    with open(out, "a") as f:
        for r in rows:
            f.write(json.dumps({**meta, **r}) + "\n")
    print(f"{model_name} {mode}: {len(rows)} tunings, compile {took:.1f} s", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,bert-base,vit_b_16,llama-1b-prefill")
    ap.add_argument("--modes", default="tritonfuse", help="backends, comma-separated (e.g. tritonfuse-int8)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child[0], args.out, args.child[1])
        return 0
    rc = 0
    for mode in args.modes.split(","):
        for name in args.models.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                folder = pathlib.Path(tmp)
                env = {**os.environ, "XDG_CACHE_HOME": str(folder / "xdg"),
                       "TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor"), "TRITON_HOME": str(folder / "triton")}
                env.pop("TRITON_CACHE_DIR", None)
                p = subprocess.run([sys.executable, __file__, "--out", args.out, "--child", name, mode], env=env)
                rc = rc or p.returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
