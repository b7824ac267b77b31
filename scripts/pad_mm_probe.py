"""Does Inductor's shape padding (pad_mm) take hand-written attention's batched GEMMs away from tritonfuse?

    python3 scripts/pad_mm_probe.py --out pad_mm.json        # on a GPU machine, alone (about a minute)

The nineteenth session's GPU run had four attention tests that found no site at all, and all four passed
when run alone. They were hand-written attention at sequence lengths 21 and 77. pad_mm times a misaligned
GEMM at compile time and may rewrite it into pad + bmm + slice, which no pattern matches. It skips GEMMs too
small to be compute-bound, unless it cannot read the GPU's peak FLOP/s or memory bandwidth; then it times
every misaligned one. The backend now turns padding off with the attention family on
(``backend.shape_padding_patches``). This script checks that explanation on the machine:

1. whether Inductor can read the GPU's peak FLOP/s and bandwidth here (if it cannot, pad_mm times everything);
2. the hand-written forms of tests/test_attention.py, compiled ``--repeats`` times by ``backend="inductor"``
   with shape padding on: how often the post-grad graph holds a pad (``constant_pad_nd``) around a bmm;
3. the same forms under ``backend="tritonfuse"`` as it is now (padding off): attention sites found each time;
   and with ``options={"shape_padding": True}`` (the old behaviour).

Each compile follows ``torch._dynamo.reset()``, with Inductor's caches off so each one runs pad_mm again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import uuid


def _forms():
    import torch

    return {
        "masked_fill": lambda q, k, v, m: torch.softmax(
            (q @ k.transpose(-2, -1) * 0.1).masked_fill(~m, float("-inf")), -1) @ v,
        "additive_fp32_softmax": lambda q, k, v, m: torch.softmax(
            q @ k.transpose(-2, -1) * 0.1 + torch.where(m, 0.0, -65504.0).to(q.dtype), -1,
            dtype=torch.float32).to(q.dtype) @ v,
        "div_sqrt_d": lambda q, k, v, m: torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1) @ v,
    }


def _inputs(seq: int, device: str):
    import torch

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, seq, 32, generator=g).to(device, torch.float16) for _ in range(3))
    m = torch.ones(2, 1, 1, seq, dtype=torch.bool)
    m[1, ..., seq - 5:] = False
    return q, k, v, m.to(device)


def _device_peaks() -> dict:
    import torch
    from torch._inductor import utils

    out = {}
    for name, fn in (("tflops_fp16", lambda: utils.get_device_tflops(torch.float16)),
                     ("dram_gbps", utils.get_gpu_dram_gbps)):
        try:
            out[name] = fn()
        except Exception as e:  # noqa: BLE001 - what pad_mm meets: it then treats every GEMM as compute-bound
            out[name] = f"raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--seqs", default="21,77,197")
    p.add_argument("--out", default="pad_mm.json")
    p.add_argument("--device", default="cuda", help="cpu: a dry run of the script (pad_mm pads on CUDA only)")
    args = p.parse_args()

    import torch
    import torch._inductor.config as iconfig
    from torch._inductor.custom_graph_pass import CustomGraphPass

    import tritonfuse
    from tritonfuse import config

    if args.device == "cuda" and not torch.cuda.is_available():
        print("needs a GPU: pad_mm runs on CUDA only (--device cpu: a dry run)", file=sys.stderr)
        return 2

    class Ops(CustomGraphPass):
        def __init__(self):
            self.ops, self.token = [], uuid.uuid4().hex

        def __call__(self, graph):
            self.ops += [str(n.target) for n in graph.nodes if n.op == "call_function"]

        def uuid(self):
            return self.token

    rows = []
    result = {"gpu": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
              "triton": __import__("triton").__version__, "host": platform.node(),
              "commit": os.environ.get("TRITONFUSE_COMMIT", ""), "command": " ".join(sys.argv),
              "peaks": _device_peaks() if args.device == "cuda" else {}, "rows": rows}
    print(json.dumps(result["peaks"]))
    for seq in (int(s) for s in args.seqs.split(",")):
        q, k, v, m = _inputs(seq, args.device)
        for form, fn in _forms().items():
            for backend, opts in (("inductor", {"shape_padding": True}), ("tritonfuse", {}),
                                  ("tritonfuse", {"shape_padding": True})):
                padded, sites = [], []
                t0 = time.perf_counter()
                for _ in range(args.repeats):
                    torch._dynamo.reset()
                    tritonfuse.reset()
                    ops = Ops()
                    with torch.no_grad(), iconfig.patch(fx_graph_cache=False), config.patch(patterns="attention"):
                        torch.compile(fn, backend=backend,
                                      options={**opts, "post_grad_custom_pre_pass": ops})(q, k, v, m)
                    padded.append(any("constant_pad_nd" in o for o in ops.ops))
                    sites.append(tritonfuse.counters()["attention"]["replaced"] if backend == "tritonfuse" else None)
                row = {"seq": seq, "form": form, "backend": backend, "options": sorted(opts),
                       "padded": padded, "attention_sites": sites, "s": round(time.perf_counter() - t0, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
