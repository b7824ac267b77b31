"""Compile, for a Hopper GPU (sm_90), every Triton kernel variant the CPU test suite launched in the interpreter.

The interpreter is lenient where the compiler is not: ``tl.dot`` of int8 operands into an int32 accumulator
runs there without ``out_dtype=tl.int32`` and fails to compile on a GPU (every int8 conv, found on the H200).
Triton compiles for a GPU target on a machine without one, ptxas included, so such errors can be found here::

    TRITON_INTERPRET=1 TRITONFUSE_RECORD_LAUNCHES=/tmp/launches.jsonl python -m pytest tests -q
    python scripts/compile_sm90.py /tmp/launches.jsonl        # without TRITON_INTERPRET

Each launch is recorded once per kernel, argument types, constexpr values and launch options (integers that
are not constexprs are compiled unspecialized). Needs triton >= 3.3 (ASTSource keyed by argument names).

The interpreter runs one small config per kernel; ``--all-configs`` compiles each autotuned launch once per
config of the GPU's list instead and prints each one's shared memory (``--only NAME`` picks kernels)::

    python scripts/compile_sm90.py /tmp/launches.jsonl --all-configs --only _decode_kernel
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import json
import os
import sys
import time


SHARED_LIMIT = {90: 232448, 80: 166912, 89: 101376}  # bytes of shared memory a block may use, by arch


def _resolve(module: str, qualname: str, with_tuner: bool = False):
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
    if tests not in sys.path:  # kernels defined in test files are recorded under the test module's name
        sys.path.append(tests)
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    tuner = None
    while not isinstance(obj, JITFunction):  # autotune / heuristics wrappers
        if isinstance(obj, Autotuner) and tuner is None:
            tuner = obj
        obj = obj.fn
    return (obj, tuner) if with_tuner else obj


def _value(v):
    if isinstance(v, dict) and "tl_dtype" in v:
        import triton.language as tl

        return tl.dtype(v["tl_dtype"])
    return v


def _compile(fn, types, consts, opts, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=fn, signature=types, constexprs={k: _value(v) for k, v in consts.items()})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)


def _error(e: Exception) -> str:
    first = str(e).strip().splitlines()
    return f"{type(e).__name__}: {' | '.join(first[-6:])}"


def compile_one(line: str, arch: int = 90) -> tuple[str, str]:
    """Compile one recorded launch; returns (its name, "" or the error)."""
    module, qualname, types, consts, opts = json.loads(line)
    name = f"{module}.{qualname} {json.dumps(consts, sort_keys=True)} {opts}"
    try:
        _compile(_resolve(module, qualname), types, consts, opts, arch)
        return name, ""
    except Exception as e:  # report every failing variant, not only the first
        return name, _error(e)


def configs_one(line: str, arch: int = 90) -> tuple[str, str, list]:
    """Compile one recorded launch of an autotuned kernel once per config of its GPU config list (this
    process imports the kernels without TRITON_INTERPRET, so the lists are the GPU's), and read each one's
    shared memory. Returns (its name, "" or why every config fails, [(config, shared bytes or error)]).
    A config over the limit is only skipped by Triton's autotuner; a launch whose every config is over it
    cannot run (Inductor's autotuning of an inlined kernel then fails: conv_bn at ea7aa98). Kernels whose
    descriptor arguments carry the block shape (host TMA) are skipped: their types change per config."""
    module, qualname, types, consts, opts = json.loads(line)
    name = f"{module}.{qualname} {json.dumps(consts, sort_keys=True)}"
    fn, tuner = _resolve(module, qualname, with_tuner=True)
    if tuner is None or any("tensordesc" in str(t) for t in types.values()):
        return name, "", []
    limit = SHARED_LIMIT.get(arch, SHARED_LIMIT[90])
    out = []
    for cfg in tuner.configs:
        c = {**consts, **{k: v for k, v in cfg.kwargs.items()}}
        o = {**opts, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        label = " ".join(f"{k}={v}" for k, v in cfg.kwargs.items()) + f" w{cfg.num_warps} s{cfg.num_stages}"
        try:
            out.append((label, _compile(fn, types, c, o, arch).metadata.shared))
        except Exception as e:  # noqa: BLE001
            out.append((label, _error(e)))
    fits = [s for _, s in out if isinstance(s, int) and s <= limit]
    return name, "" if fits else f"no config fits the {limit} bytes of shared memory", out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", help="the JSONL file TRITONFUSE_RECORD_LAUNCHES wrote")
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (default 90: Hopper)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--all-configs", action="store_true",
                    help="compile autotuned kernels once per GPU config and report each one's shared memory")
    ap.add_argument("--only", default="", help="only launches whose kernel name contains this")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("run without TRITON_INTERPRET=1: the kernels must be compiled, not interpreted")
    with open(args.records) as f:
        lines = sorted(set(line.strip() for line in f if line.strip() and args.only in line))
    t0, failed = time.time(), []
    if args.all_configs:
        with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
            for name, err, per in pool.map(configs_one, lines, [args.arch] * len(lines)):
                if not per:
                    continue
                print(f"{'FAIL' if err else 'ok  '} {name}" + (f"\n     {err}" if err else ""), flush=True)
                for label, shared in per:
                    print(f"     {label}: {shared if isinstance(shared, str) else f'{shared} bytes'}")
                if err:
                    failed.append((name, err))
        print(f"{len(failed)} launches with no config that fits, in {time.time() - t0:.0f} s")
        return 1 if failed else 0
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        for name, err in pool.map(compile_one, lines, [args.arch] * len(lines)):
            if err:
                failed.append((name, err))
                print(f"FAIL {name}\n     {err}", flush=True)
    print(f"{len(lines) - len(failed)}/{len(lines)} kernel variants compiled for sm_{args.arch} "
          f"in {time.time() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
