"""Compile, for a Hopper GPU (sm_90), every Triton kernel variant the CPU test suite launched in the interpreter.

The interpreter is lenient where the compiler is not: ``tl.dot`` of int8 operands into an int32 accumulator
runs there without ``out_dtype=tl.int32`` and fails to compile on a GPU (every int8 conv, found on the H200).
Triton compiles for a GPU target on a machine without one, ptxas included, so such errors can be found here::

    TRITON_INTERPRET=1 TRITONFUSE_RECORD_LAUNCHES=/tmp/launches.jsonl python -m pytest tests -q
    python scripts/compile_sm90.py /tmp/launches.jsonl        # without TRITON_INTERPRET

Each launch is recorded once per kernel, argument types, constexpr values and launch options (integers that
are not constexprs are compiled unspecialized). Needs triton >= 3.3 (ASTSource keyed by argument names).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import json
import os
import sys
import time


def _resolve(module: str, qualname: str):
    from triton.runtime.jit import JITFunction

    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
    if tests not in sys.path:  # kernels defined in test files are recorded under the test module's name
        sys.path.append(tests)
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    while not isinstance(obj, JITFunction):  # autotune / heuristics wrappers
        obj = obj.fn
    return obj


def _value(v):
    if isinstance(v, dict) and "tl_dtype" in v:
        import triton.language as tl

        return tl.dtype(v["tl_dtype"])
    return v


def compile_one(line: str, arch: int = 90) -> tuple[str, str]:
    """Compile one recorded launch; returns (its name, "" or the error)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, qualname, types, consts, opts = json.loads(line)
    name = f"{module}.{qualname} {json.dumps(consts, sort_keys=True)} {opts}"
    try:
        fn = _resolve(module, qualname)
        src = ASTSource(fn=fn, signature=types, constexprs={k: _value(v) for k, v in consts.items()})
        triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
        return name, ""
    except Exception as e:  # report every failing variant, not only the first
        first = str(e).strip().splitlines()
        return name, f"{type(e).__name__}: {' | '.join(first[-6:])}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", help="the JSONL file TRITONFUSE_RECORD_LAUNCHES wrote")
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (default 90: Hopper)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("run without TRITON_INTERPRET=1: the kernels must be compiled, not interpreted")
    with open(args.records) as f:
        lines = sorted(set(line.strip() for line in f if line.strip()))
    t0, failed = time.time(), []
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
