"""Run on a GPU: python3 scripts/gelu_lt_probe.py (writes $OUT/gelu_lt_probe.json).

Linear+GELU at BERT/ViT MLP shapes: cuBLASLt's fused bias+GELU epilogue (torch._addmm_activation, the tanh
approximation) against cuBLAS + a separate erf GELU, and the tritonfuse TMA op; GPU time from CUDA graphs; error
of each against fp64 exact (erf) GELU."""
import json, os, statistics
import torch
import torch.nn.functional as F

from probe_log import graph_ms as _graph_ms  # scripts/, on the path when a script runs
import tritonfuse.kernels.linear_act  # noqa: F401

def graph_ms(fn):
    return _graph_ms(fn, reps=30, calls=10)

out = []
for M, K, N, dt in [(16384, 768, 3072, torch.float16), (12608, 768, 3072, torch.float16), (16384, 1024, 4096, torch.float16),
                    (16384, 768, 3072, torch.bfloat16)]:
    x = torch.randn(M, K, device="cuda", dtype=dt)
    w = torch.randn(N, K, device="cuda", dtype=dt) / K ** 0.5
    b = torch.randn(N, device="cuda", dtype=dt) * 0.1
    ref = F.gelu(F.linear(x.double(), w.double(), b.double()))
    def err(y): return ((y.double() - ref).norm() / ref.norm()).item()
    provs = {
        "addmm": lambda: torch.addmm(b, x, w.t()),
        "addmm+gelu": lambda: F.gelu(torch.addmm(b, x, w.t())),
        "lt_gelu": lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True),
        "tritonfuse": lambda: torch.ops.tritonfuse.linear_act(x, w, b, "gelu"),
    }
    row = {"shape": f"{M}x{K}x{N}", "dtype": str(dt)}
    for k, f in provs.items():
        try:
            row[k + "_ms"] = graph_ms(f)
            if k != "addmm": row[k + "_err"] = err(f())
        except Exception as e:
            row[k + "_error"] = f"{type(e).__name__}: {e}"[:200]
    # alternating rounds lt vs addmm+gelu, lt vs tritonfuse
    for a_, b_ in (("lt_gelu", "addmm+gelu"), ("lt_gelu", "tritonfuse")):
        r = []
        for i in range(5):
            ta = graph_ms(provs[a_]); tb = graph_ms(provs[b_]); r.append(ta / tb)
        row[f"{a_}/{b_}"] = statistics.median(r)
    print(json.dumps(row)); out.append(row)
json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": out},
          open(os.path.join(os.environ.get("OUT", "/tmp"), "gelu_lt_probe.json"), "w"), indent=1)
