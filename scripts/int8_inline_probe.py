"""GPU probe: BERT-base MLP blocks (LayerNorm -> Linear+GELU -> Linear, M = 32*512) in int8 mode, compiled
with the int8 weights as graph constants and the GEMMs inlined into Inductor's code
(``patterns.linear_act.INT8_CONSTANTS``, turned on here), beside Inductor and the int8 op calls.

For each variant it prints, as soon as it has them: the compile time, how many autotune configs each inlined
kernel carries into Inductor's code (1 when our autotuner's choice was handed over), the time per forward
(CUDA-graph replays: GPU time; and plain calls), the SQNR against eager, and with ``--out DIR`` it writes
the compile's cProfile (top functions by cumulative time), Inductor's output code and a torch.profiler table
of one forward's kernels, one file per variant.

    python3 scripts/int8_inline_probe.py [--m 16384] [--layers 1] [--variants inductor,inline,ops] [--out DIR]
    TRITON_INTERPRET=1 python3 scripts/int8_inline_probe.py --m 64 --seq 32 --out /tmp/p  # a CPU smoke test
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pathlib
import pstats
import re
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

import tritonfuse
from tritonfuse import config
from probe_log import graph_ms as _graph_ms  # scripts/, on the path when a script runs


class Block(nn.Module):
    def __init__(self, d=768, f=3072):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, f), nn.Linear(f, d)

    def forward(self, x):
        return x + self.down(F.gelu(self.up(self.ln(x))))


def graph_ms(fn, x, reps=20):
    return _graph_ms(lambda: fn(x), reps=reps, calls=1)


def plain_ms(fn, x, reps=30):
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for _ in range(min(reps, 3)):
        fn(x)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(x)
    sync()
    return (time.perf_counter() - t0) * 1e3 / reps


VARIANTS = {
    "inductor": ("inductor", {}, False),
    "inline": ("tritonfuse", {"quant": "int8"}, True),  # int8 weights as constants, GEMMs inlined
    "ops": ("tritonfuse", {"quant": "int8"}, False),  # the default: int8 op calls, weights looked up at run time
}


def kernel_table(fn, x) -> str:
    from torch.profiler import ProfilerActivity, profile

    acts, key = ([ProfilerActivity.CUDA], "cuda_time_total") if x.is_cuda else ([ProfilerActivity.CPU], "cpu_time_total")
    fn(x)
    with profile(activities=acts) as prof:
        fn(x)
        if x.is_cuda:
            torch.cuda.synchronize()
    return prof.key_averages().table(sort_by=key, row_limit=40)


def main():
    from tritonfuse.patterns import linear_act as LP

    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=16384)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--variants", default="inductor,inline,ops")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU (TRITON_INTERPRET=1, tiny --m): a smoke test
    out_dir = pathlib.Path(args.out) if args.out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = nn.Sequential(*[Block() for _ in range(args.layers)]).to(dev).half().eval()
    x = torch.randn(args.m // args.seq, args.seq, 768, device=dev, dtype=torch.half)
    with torch.no_grad():
        ref = model(x)
        for name in args.variants.split(","):
            backend, patch, constants = VARIANTS[name]
            LP.INT8_CONSTANTS = constants
            torch._dynamo.reset()
            tritonfuse.reset()
            with config.patch(**patch):
                t0 = time.perf_counter()
                compiled = torch.compile(model, backend=backend)
                prof = cProfile.Profile()
                prof.enable()
                out, code = run_and_get_code(compiled, x)
                prof.disable()
                compile_s = time.perf_counter() - t0
                code = "".join(code)
                n_cfg = [c.count("num_warps") for c in re.findall(r"configs=\[(.*?)\]", code, flags=re.S)]
                print(f"{name}: compile {compile_s:.1f} s, counters {tritonfuse.counters().get('linear_act')}, "
                      f"user kernels {code.count('user_autotune(')}, configs per user kernel {n_cfg[:12]}, "
                      f"int8_weights calls {code.count('int8_weights.default(')}", flush=True)
                if out_dir:
                    buf = io.StringIO()
                    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(60)
                    (out_dir / f"compile-profile-{name}.txt").write_text(buf.getvalue())
                    (out_dir / f"code-{name}.py").write_text(code)
                sqnr = 20 * torch.log10(ref.float().norm() / (ref.float() - out.float()).norm()).item()
                graph = f"{graph_ms(compiled, x):.3f} ms" if dev == "cuda" else "-"
                print(f"{name}: graph {graph}, plain {plain_ms(compiled, x, 3 if dev == 'cpu' else 30):.3f} ms, "
                      f"SQNR {sqnr:.1f} dB", flush=True)
                if out_dir:
                    (out_dir / f"kernels-{name}.txt").write_text(kernel_table(compiled, x) + "\n" + tritonfuse.report())


if __name__ == "__main__":
    main()
