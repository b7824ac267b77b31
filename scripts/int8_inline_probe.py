"""GPU probe: a BERT-base MLP block (LayerNorm -> Linear+GELU -> Linear, M = 32*512) in int8 mode, compiled
with its int8 GEMMs inlined into Inductor's code. Prints the compile time, how many autotune configs each
inlined kernel carries into Inductor's code (1 when our autotuner's choice was handed over), the block's
time against Inductor's (CUDA-graph replays, GPU time) and against the same block with the int8 ops called
(TRITONFUSE_INLINE=0).

    python3 scripts/int8_inline_probe.py [--m 16384] [--layers 4]
"""

from __future__ import annotations

import argparse
import re
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

import tritonfuse
from tritonfuse import config


class Block(nn.Module):
    def __init__(self, d=768, f=3072):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, f), nn.Linear(f, d)

    def forward(self, x):
        return x + self.down(F.gelu(self.up(self.ln(x))))


def graph_ms(fn, x, reps=20):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn(x)
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def plain_ms(fn, x, reps=30):
    for _ in range(3):
        fn(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(x)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=16384)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(*[Block() for _ in range(args.layers)]).cuda().half().eval()
    x = torch.randn(args.m // 512, 512, 768, device="cuda", dtype=torch.half)
    with torch.no_grad():
        ref = model(x)
        for name, backend, patch in (("inductor", "inductor", {}),
                                     ("tritonfuse-int8", "tritonfuse", {"quant": "int8"}),
                                     ("tritonfuse-int8 ops", "tritonfuse", {"quant": "int8", "inline": "0"})):
            torch._dynamo.reset()
            tritonfuse.reset()
            with config.patch(**patch):
                t0 = time.perf_counter()
                compiled = torch.compile(model, backend=backend)
                out, code = run_and_get_code(compiled, x)
                compile_s = time.perf_counter() - t0
                code = "".join(code)
                configs = [len(re.findall(r"triton\.Config\(|'num_warps'", m))
                           for m in re.findall(r"user_autotune\((.*?)\)\n", code, flags=re.S)]
                n_cfg = re.findall(r"configs=\[(.*?)\]", code, flags=re.S)
                sqnr = 20 * torch.log10(ref.float().norm() / (ref.float() - out.float()).norm()).item()
                print(f"{name}: compile {compile_s:.1f} s, graph {graph_ms(compiled, x):.3f} ms, "
                      f"plain {plain_ms(compiled, x):.3f} ms, SQNR {sqnr:.1f} dB, "
                      f"counters {tritonfuse.counters().get('linear_act')}, "
                      f"user kernels {code.count('user_autotune(')}, configs per user kernel "
                      f"{[c.count('num_warps') for c in n_cfg][:12]}, "
                      f"int8_weights calls {code.count('int8_weights.default(')}", flush=True)
                if name != "inductor":
                    print(tritonfuse.report(), flush=True)


if __name__ == "__main__":
    main()
