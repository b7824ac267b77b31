"""Run a zoo of real model architectures (HF transformers and torchvision, built from configs at small sizes,
random weights) through ``backend="tritonfuse"``, float and int8, and check that nothing breaks: the compiled
output against eager's in the same dtype (SQNR, dB), no NaN that eager has not, and the sites each family
matched, replaced and left (with the reasons). A correctness sweep, not a benchmark: the sizes are small.

    python scripts/zoo.py --out zoo.json                          # on a GPU (fp16 / bf16 kernels)
    TRITON_INTERPRET=1 python scripts/zoo.py --models gpt2,resnet18   # on a CPU, through the interpreter

One JSON object per model and mode goes to --out (a list), and one line each to stdout. The exit status is 1
when any model failed to compile or run, or came out with a NaN eager did not have, or below --min-db.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
import warnings

import torch


def _hf_models(gpu: bool) -> dict:
    import transformers as T

    h, inter, heads = (256, 512, 4) if gpu else (64, 96, 4)
    common = dict(num_hidden_layers=2, hidden_size=h, intermediate_size=inter, num_attention_heads=heads,
                  vocab_size=512, max_position_embeddings=256, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    return {
        "bert": lambda: T.BertModel(T.BertConfig(**common)),
        "bert-eager": lambda: T.BertModel(T.BertConfig(**common, attn_implementation="eager")),
        "roberta": lambda: T.RobertaModel(T.RobertaConfig(**{**common, "pad_token_id": 1,
                                                             "max_position_embeddings": 260})),
        "distilbert": lambda: T.DistilBertModel(T.DistilBertConfig(
            n_layers=2, dim=h, hidden_dim=inter, n_heads=heads, vocab_size=512, max_position_embeddings=256,
            pad_token_id=0)),
        "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(n_layer=2, n_embd=h, n_head=heads, vocab_size=512,
                                                       n_positions=256, bos_token_id=0, eos_token_id=0)),
        "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(num_key_value_heads=2, **common)),
        "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(num_key_value_heads=2, **common)),
        "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(num_key_value_heads=2, **common)),
        "phi3": lambda: T.Phi3ForCausalLM(T.Phi3Config(num_key_value_heads=2, **common)),
        "opt": lambda: T.OPTForCausalLM(T.OPTConfig(
            num_hidden_layers=2, hidden_size=h, ffn_dim=inter, num_attention_heads=heads, vocab_size=512,
            max_position_embeddings=256, word_embed_proj_dim=h, pad_token_id=1, bos_token_id=2, eos_token_id=2)),
        "t5-encoder": lambda: T.T5EncoderModel(T.T5Config(num_layers=2, d_model=h, d_ff=inter, num_heads=heads,
                                                          d_kv=h // heads, vocab_size=512, pad_token_id=0)),
    }


def _vision_models(gpu: bool) -> dict:
    import torchvision.models as M
    from torchvision.models.vision_transformer import VisionTransformer

    size = 128 if gpu else 64
    return {
        "resnet18": lambda: M.resnet18(num_classes=10),
        "resnet50": lambda: M.resnet50(num_classes=10),
        "mobilenet_v3_small": lambda: M.mobilenet_v3_small(num_classes=10),
        "efficientnet_b0": lambda: M.efficientnet_b0(num_classes=10),
        "convnext_tiny": lambda: M.convnext_tiny(num_classes=10),
        "swin_t": lambda: M.swin_t(num_classes=10),
        "regnet_x_400mf": lambda: M.regnet_x_400mf(num_classes=10),
        # torchvision zero-initialises the ViT head: a random head, so the logits are not all the bias
        "vit": lambda: _random_head(VisionTransformer(image_size=size, patch_size=16, num_layers=2, num_heads=4,
                                                      hidden_dim=256 if gpu else 64, mlp_dim=512 if gpu else 96,
                                                      num_classes=10)),
    }


def _random_head(m):
    torch.nn.init.normal_(m.heads.head.weight, std=0.05)
    return m


def _sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double().cpu(), out.double().cpu()
    keep = torch.isfinite(ref) & torch.isfinite(out)
    noise = (ref[keep] - out[keep]).norm().item()
    return math.inf if noise == 0 else 20 * math.log10(ref[keep].norm().item() / noise)


def _output(o) -> torch.Tensor:
    for name in ("logits", "last_hidden_state"):
        if hasattr(o, name):
            return getattr(o, name)
    return o


def run_one(name: str, build, kind: str, mode: str, device: str, dtype: torch.dtype, gpu: bool) -> dict:
    import tritonfuse
    from tritonfuse import config

    rec = {"model": name, "mode": mode, "device": device, "dtype": str(dtype)}
    try:
        torch.manual_seed(0)
        model = build().eval().to(device=device, dtype=dtype)
        if kind == "hf":
            b, s = (4, 128) if gpu else (2, 24)
            ids = torch.randint(3, 500, (b, s), device=device)
            mask = torch.ones(b, s, dtype=torch.long, device=device)
            mask[-1, s * 3 // 4:] = 0  # a padded row: the key-padding paths
            kwargs = {"input_ids": ids, "attention_mask": mask}
            keep = mask.bool()
        else:
            model = model.to(memory_format=torch.channels_last)
            size = 128 if gpu else 64
            x = torch.randn(4 if gpu else 2, 3, size, size, device=device).to(dtype)
            kwargs = {"x": x.to(memory_format=torch.channels_last)}
            keep = None
        tritonfuse.reset()
        torch._dynamo.reset()
        quant = "int8" if mode == "int8" else "none"
        with torch.no_grad(), config.patch(quant=quant):
            ref = _output(model(**kwargs) if kind == "hf" else model(kwargs["x"]))
            start = time.perf_counter()
            compiled = torch.compile(model, backend="tritonfuse")
            out = _output(compiled(**kwargs) if kind == "hf" else compiled(kwargs["x"]))
            rec["compile_s"] = round(time.perf_counter() - start, 1)
            again = _output(compiled(**kwargs) if kind == "hf" else compiled(kwargs["x"]))
        if keep is not None and ref.dim() >= 3:  # padded positions' outputs are not compared
            ref, out, again = ref[keep], out[keep], again[keep]
        rec["sqnr_db"] = round(_sqnr(ref, out), 1)
        rec["new_nan"] = bool((out.isnan() & ~ref.isnan()).any())
        rec["repeatable"] = bool(torch.equal(out, again))
        rec["counters"] = {k: v for k, v in tritonfuse.counters().items() if v["matched"]}
        rec["left"] = sorted({f"{s.family}: {s.reason}" for s in tritonfuse.sites() if s.status != "replaced"})
        rec["ok"] = True
    except Exception as e:  # a model that breaks is the finding: record it, go on with the next
        rec["ok"] = False
        rec["error"] = f"{type(e).__name__}: {str(e)[:500]}"
        rec["trace"] = traceback.format_exc(limit=6)[-2000:]
    return rec


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="", help="comma list (default: all)")
    p.add_argument("--modes", default="float,int8")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--min-db", type=float, default=20.0, help="a model below this SQNR (dB) fails")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    device = "cuda" if gpu else "cpu"
    dtype = getattr(torch, args.dtype)
    zoo = {name: ("hf", b) for name, b in _hf_models(gpu).items()}
    zoo.update({name: ("vision", b) for name, b in _vision_models(gpu).items()})
    names = [n for n in args.models.split(",") if n] or list(zoo)
    unknown = [n for n in names if n not in zoo]
    if unknown:
        p.error(f"unknown models {unknown}; known: {', '.join(zoo)}")
    records, bad = [], 0
    for name in names:
        kind, build = zoo[name]
        for mode in [m for m in args.modes.split(",") if m]:
            rec = run_one(name, build, kind, mode, device, dtype, gpu)
            failed = not rec["ok"] or rec["new_nan"] or rec["sqnr_db"] < args.min_db
            bad += failed
            counts = {k: f"{v['replaced']}/{v['matched']}" for k, v in rec.get("counters", {}).items()}
            print(f"{'FAIL' if failed else 'ok  '} {name:18s} {mode:5s} "
                  + (f"{rec['compile_s']:6.1f}s {rec['sqnr_db']:6.1f} dB repeatable={rec['repeatable']} {counts}"
                     if rec["ok"] else rec["error"]), flush=True)
            for why in rec.get("left", [])[:8]:
                print(f"       left: {why[:140]}")
            records.append(rec)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump({"torch": torch.__version__, "gpu": torch.cuda.get_device_name() if gpu else None,
                               "records": records}, f, indent=1)
    print(f"{len(records) - bad} of {len(records)} passed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
