"""Tiny GPT-2 (fp32) under autocast through the backend (the 46th session's question: 3 int8 sites on CUDA, 5 on
the CPU; the answer, autocast's casts after Conv1D's flatten, is linear_act.prepare_graph: 9 on both since).
Prints, for the ATen graph the passes see, every mm/addmm/bmm node with the chain of ops above its inputs,
the graph's GEMMs after the passes, then the report. Run on either device:
    python scripts/gpt2_autocast_probe.py [--device cuda] [--out FILE]"""
from __future__ import annotations

import argparse
import sys

import torch


WATCH = ("mm", "addmm", "bmm", "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
         "gelu", "tanh", "native_layer_norm")


def short(target) -> str:
    parts = str(target).split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "aten" else str(target)


def chain(node, depth=4):
    out = []
    while depth and hasattr(node, "op") and node.op == "call_function":
        out.append(str(node.target).replace("aten.", ""))
        ins = [a for a in node.args if hasattr(a, "op")]
        if not ins:
            break
        node = ins[0]
        depth -= 1
    if hasattr(node, "op") and node.op != "call_function":
        out.append(f"{node.op}:{node.name}")
    return " <- ".join(out)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None)
    p.add_argument("--quant", default="int8")
    args = p.parse_args()
    import transformers

    import tritonfuse
    from tritonfuse import backend, config

    lines = []
    orig = backend.TritonfusePasses.__call__

    def spy(self, graph):
        lines.append(f"--- graph (training={self.training}) before the passes")
        for n in graph.nodes:
            if n.op == "call_function" and short(n.target) in WATCH:
                ins = [a for a in n.args if hasattr(a, "op")]
                dt = n.meta.get("val").dtype if hasattr(n.meta.get("val"), "dtype") else "?"
                lines.append(f"{n.name} {n.target} -> {dt}: " + " | ".join(chain(a) for a in ins))
        orig(self, graph)
        lines.append("--- after")
        for n in graph.nodes:
            if n.op == "call_function" and ("tritonfuse" in str(n.target) or short(n.target) in ("mm", "addmm")):
                lines.append(f"{n.name} {n.target}")

    backend.TritonfusePasses.__call__ = spy
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).to(args.device).eval()
    ids = torch.randint(0, 256, (2, 24), device=args.device)
    half = torch.float16 if args.device == "cuda" else torch.bfloat16
    tritonfuse.reset()
    with torch.no_grad(), config.patch(quant=args.quant), torch.autocast(args.device, dtype=half):
        torch.compile(model, backend="tritonfuse")(ids)
    lines.append(tritonfuse.report())
    text = "\n".join(lines)
    if args.out:
        open(args.out, "w").write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
