"""Robustness sweep: tiny HF transformers and torchvision models (built from configs, no downloads) through
``backend="tritonfuse"`` against eager: does it run, how close is it, which sites are served and why the others
are not. Each model runs in its own process; one JSON line per model.

    TRITON_INTERPRET=1 python scripts/model_audit.py [--models gpt2,llama] [--dtype bfloat16] [--quant int8] [--train] [--vary]
                                                     [--jobs 2] [--out audit.jsonl]

Inference runs also report each output's error against the model in float64 (``ref_err``), beside eager's own
(``eager_ref_err``): in bf16 a deep model's compiled output can differ from eager by more than eager differs from
the exact result, and only the fp64 reference says which of the two is off.

The training check uses a fixed random projection of the output as its loss, so every gradient is well above
rounding; models with dropout differ from eager by design there (Inductor draws its own random numbers).
"""

import argparse
import concurrent.futures as cf
import copy
import json
import subprocess
import sys
import time
import traceback
import warnings

import torch


def hf(cls_cfg, model_cls="AutoModel", **kw):
    def build():
        import transformers as T

        cfg = getattr(T, cls_cfg)(**kw)
        return getattr(T, model_cls).from_config(cfg) if model_cls.startswith("Auto") else getattr(T, model_cls)(cfg)

    return build


DEC = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_hidden_layers=2, vocab_size=128)
BERT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=128)
T5 = dict(d_model=64, d_ff=96, num_layers=2, num_heads=4, d_kv=16, vocab_size=128, model_cls="T5EncoderModel")
VISION = dict(
    hidden_size=64, intermediate_size=96, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=8
)
MODELS = {
    "gpt2": (hf("GPT2Config", n_embd=64, n_layer=2, n_head=4, vocab_size=128), "ids"),
    "bert": (hf("BertConfig", **BERT), "ids"),
    "bert-eager": (hf("BertConfig", attn_implementation="eager", **BERT), "ids"),
    "roberta": (hf("RobertaConfig", **BERT), "ids"),
    "distilbert": (hf("DistilBertConfig", dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=128), "ids"),
    "t5enc": (hf("T5Config", **T5), "ids"),
    "t5gated": (hf("T5Config", feed_forward_proj="gated-gelu", **T5), "ids"),
    "llama": (hf("LlamaConfig", num_key_value_heads=2, **DEC), "ids"),
    "mistral": (hf("MistralConfig", num_key_value_heads=2, **DEC), "ids"),
    "qwen2": (hf("Qwen2Config", num_key_value_heads=2, **DEC), "ids"),
    "phi3": (hf("Phi3Config", num_key_value_heads=4, pad_token_id=0, **DEC), "ids"),
    "gemma": (hf("GemmaConfig", num_key_value_heads=1, head_dim=16, **DEC), "ids"),
    "opt": (
        hf(
            "OPTConfig",
            hidden_size=64,
            ffn_dim=96,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=128,
            word_embed_proj_dim=64,
        ),
        "ids",
    ),
    "gpt_neox": (hf("GPTNeoXConfig", **DEC), "ids"),
    "bloom": (hf("BloomConfig", hidden_size=64, n_layer=2, n_head=4, vocab_size=128), "ids"),
    "clip_vision": (hf("CLIPVisionConfig", model_cls="CLIPVisionModel", **VISION), "pix"),
    "vit_hf": (hf("ViTConfig", **VISION), "pix"),
    "whisper_enc": (
        hf(
            "WhisperConfig",
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=96,
            decoder_ffn_dim=96,
            num_mel_bins=16,
            max_source_positions=16,
            vocab_size=128,
            model_cls="WhisperForAudioClassification",
        ),
        "mel",
    ),
    "resnet18": (lambda: _tv().resnet18(num_classes=10), "img"),
    "mobilenet_v3": (lambda: _tv().mobilenet_v3_small(num_classes=10), "img"),
    "efficientnet_b0": (lambda: _tv().efficientnet_b0(num_classes=10), "img"),
    "convnext_tiny": (lambda: _tv().convnext_tiny(num_classes=10), "img"),
    "swin_t": (lambda: _tv().swin_t(num_classes=10), "img"),
    "vit_tv": (lambda: _vit_tv(), "img32"),
    "regnet": (lambda: _tv().regnet_y_400mf(num_classes=10), "img"),
    "densenet": (lambda: _tv().densenet121(num_classes=10), "img"),
}


def inputs(kind, dt, seed, vary=False):
    """Call ``seed``'s inputs; with ``vary`` each call has another batch size (and sequence length)."""
    g = torch.Generator().manual_seed(seed)
    b, s = (2 + seed, 13 + 4 * seed) if vary else (2, 13)
    if kind == "ids":
        ids = torch.randint(1, 128, (b, s), generator=g)
        mask = torch.ones(b, s, dtype=torch.long)
        mask[1, s - 4 :] = 0
        return (ids,), {"attention_mask": mask}
    if kind == "pix":
        return (torch.randn(b, 3, 32, 32, generator=g).to(dt),), {}
    if kind == "mel":
        return (torch.randn(b, 16, 32, generator=g).to(dt),), {}
    if kind == "img32":
        return (torch.randn(b, 3, 32, 32, generator=g).to(dt),), {}
    return (torch.randn(b, 3, 64, 64, generator=g).to(dt).to(memory_format=torch.channels_last),), {}


def first(o):
    if isinstance(o, torch.Tensor):
        return o
    if hasattr(o, "last_hidden_state") and o.last_hidden_state is not None:
        return o.last_hidden_state
    if hasattr(o, "logits"):
        return o.logits
    return o[0]


def _vit_tv():
    # torchvision's ViT starts its classifier head at zero: a random one, so the output says something
    m = _tv().VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10
    )
    torch.nn.init.normal_(m.heads.head.weight, std=0.2)
    return m


def _rel(a, b):
    """||a - b|| / ||b|| in float64; a zero ``b`` (torchvision's ViT head starts at zero) gives ||a||."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30 if b.norm() > 0 else 1.0)).item()


def _tv():
    import torchvision

    return torchvision.models


def run_one(name, dtype, quant, train, vary=False, device="cpu"):
    import tritonfuse
    from tritonfuse import config

    build, kind = MODELS[name]
    dt = getattr(torch, dtype)
    torch.manual_seed(0)
    m = build()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    m = m.to(device=device, dtype=dt)
    if kind == "img":
        m = m.to(memory_format=torch.channels_last)
    m.train(train)
    res = {"model": name, "dtype": dtype, "quant": quant, "train": train}
    m64 = None if train else copy.deepcopy(m).to(torch.float64)  # the exact reference (inference)
    t0 = time.time()
    try:
        with config.patch(quant=quant), warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            c = torch.compile(m, backend="tritonfuse")
            errs = []
            for seed in (0, 1, 2) if vary else (0, 1):
                a, kw = inputs(kind, dt, seed, vary)
                a = tuple(t.to(device) for t in a)
                kw = {k: v.to(device) for k, v in kw.items()}
                if train:
                    torch.manual_seed(seed)
                    o = first(m(*a, **kw))
                    proj = torch.randn(o.shape, generator=torch.Generator().manual_seed(5)).to(o.device)
                    (o.float() * proj).sum().backward()
                    gref = [p.grad.clone() for p in m.parameters() if p.grad is not None]
                    m.zero_grad(set_to_none=True)
                    torch.manual_seed(seed)
                    oc = first(c(*a, **kw))
                    (oc.float() * proj).sum().backward()
                    gc = [p.grad.clone() for p in m.parameters() if p.grad is not None]
                    m.zero_grad(set_to_none=True)
                    gerr = max(((x - y).norm() / (y.norm() + 1e-12)).item() for x, y in zip(gc, gref))
                    errs.append(_rel(oc, o))
                    res["grad_rel"] = gerr
                else:
                    with torch.no_grad():
                        o = first(m(*a, **kw))
                        oc = first(c(*a, **kw))
                        a64 = tuple(t.double() if t.is_floating_point() else t for t in a)
                        ref = first(m64(*a64, **kw))
                    errs.append(_rel(oc, o))
                    res["ref_err"] = max(res.get("ref_err", 0.0), _rel(oc, ref))
                    res["eager_ref_err"] = max(res.get("eager_ref_err", 0.0), _rel(o, ref))
                res["nan"] = bool(torch.isnan(oc).any()) and not bool(torch.isnan(o).any())
            res["rel_err"] = max(errs)
            res["warnings"] = sorted({str(x.message)[:160] for x in w if "tritonfuse" in str(x.message)})
        res["status"] = "ok"
    except Exception as e:
        res["status"] = "error"
        res["error"] = traceback.format_exc()[-1500:]
    res["s"] = round(time.time() - t0, 1)
    res["graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]  # --vary: 2 unless sizes are guarded
    res["counters"] = {k: v for k, v in tritonfuse.counters().items() if v["matched"]}
    rep = tritonfuse.report()
    res["left"] = (
        rep.split("left to Inductor, by reason:")[-1].strip().splitlines() if "left to Inductor" in rep else []
    )
    res["kernels"] = sorted({s.kernel for s in tritonfuse.sites() if s.kernel})
    res["stacked"] = [n for n, _ in tritonfuse.registry.stacked()]  # float sibling Linears made one GEMM
    res["pass_failed"] = "pass failed" in rep
    print("RESULT " + json.dumps(res), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--quant", default="none")
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--vary",
        action="store_true",
        help="another batch size (and length) each call: Dynamo's "
        "automatic dynamic shapes compile the second call's graph with symbolic sizes",
    )
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--out", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the per-model child process
    args = ap.parse_args()
    if args.one:
        run_one(args.one, args.dtype, args.quant, args.train, args.vary, args.device)
        return

    def child(name):
        cmd = [sys.executable, __file__, "--one", name, "--dtype", args.dtype, "--quant", args.quant]
        cmd += ["--device", args.device]
        cmd += ["--train"] if args.train else []
        cmd += ["--vary"] if args.vary else []
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            if lines:
                return lines[-1][7:]
            return json.dumps({"model": name, "status": "crash", "error": p.stderr[-1500:]})
        except subprocess.TimeoutExpired:
            return json.dumps({"model": name, "status": f"timeout ({args.timeout} s)"})

    out = open(args.out, "w") if args.out else None
    with cf.ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(child, args.models.split(",")):
            r = json.loads(line)
            served = {k: f"{v['replaced']}/{v['matched']}" for k, v in r.get("counters", {}).items()}
            print(
                f"{r['model']:16s} {r['status']:8s} graphs {r.get('graphs')} rel_err {r.get('rel_err', float('nan')):.2e} "
                f"vs fp64 {r.get('ref_err', float('nan')):.2e} (eager {r.get('eager_ref_err', float('nan')):.2e}) "
                f"served {served} left {len(r.get('left', []))} stacked {r.get('stacked', [])}",
                flush=True,
            )
            if out:
                out.write(line + "\n")
                out.flush()


if __name__ == "__main__":
    main()
