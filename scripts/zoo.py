"""Run a zoo of real model architectures (HF transformers and torchvision, built from configs at small sizes,
random weights) through ``backend="tritonfuse"``, float and int8, and check that nothing breaks: the compiled
output against eager's in the same dtype (SQNR, dB), no NaN that eager has not, and the sites each family
matched, replaced and left (with the reasons). A correctness sweep, not a benchmark: the sizes are small.

    python scripts/zoo.py --out zoo.json                          # on a GPU (fp16 / bf16 kernels)
    TRITON_INTERPRET=1 python scripts/zoo.py --models gpt2,resnet18   # on a CPU, through the interpreter
    python scripts/zoo.py --modes train,int8-train,frozen-train,dynamic,int8-dynamic,symbolic,autocast,decode
    python scripts/zoo.py --modes autocast-train,int8-autocast-train     # mixed-precision training steps

Besides plain inference (float, int8) the modes cover what users run: training steps (the gradients against
eager's), shapes that change between calls (Dynamo's automatic dynamic shapes, or dynamic=True), fp32 models
under autocast (inference and mixed-precision training), and a causal LM's decode steps against its KV cache.

One JSON object per model and mode goes to --out (a list), and one line each to stdout. The exit status is 1
when any model failed to compile or run, or came out with a NaN eager did not have, or below --min-db.
"""

from __future__ import annotations

import argparse
import copy
import functools
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
        # (47th session) more of what users run: GeGLU and (1 + w) RMSNorm, logit soft-capping, QK-norm,
        # parallel attention + MLP, ALiBi, shared layers, mixture of experts, encoder-decoder, disentangled
        # attention, and image and audio encoders
        "gemma": lambda: T.GemmaForCausalLM(T.GemmaConfig(num_key_value_heads=2, head_dim=h // heads, **common)),
        "gemma2": lambda: T.Gemma2ForCausalLM(T.Gemma2Config(num_key_value_heads=2, head_dim=h // heads,
                                                             sliding_window=16, **common)),
        "qwen3": lambda: T.Qwen3ForCausalLM(T.Qwen3Config(num_key_value_heads=2, head_dim=h // heads, **common)),
        "gpt-neox": lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**common)),
        "falcon": lambda: T.FalconForCausalLM(T.FalconConfig(
            num_hidden_layers=2, hidden_size=h, num_attention_heads=heads, vocab_size=512, pad_token_id=0,
            bos_token_id=0, eos_token_id=0)),
        "bloom": lambda: T.BloomForCausalLM(T.BloomConfig(n_layer=2, hidden_size=h, n_head=heads, vocab_size=512,
                                                          pad_token_id=0, bos_token_id=0, eos_token_id=0)),
        "gptj": lambda: T.GPTJForCausalLM(T.GPTJConfig(n_layer=2, n_embd=h, n_head=heads, rotary_dim=h // heads // 2,
                                                       vocab_size=512, n_positions=256, bos_token_id=0,
                                                       eos_token_id=0)),
        "mixtral": lambda: T.MixtralForCausalLM(T.MixtralConfig(num_key_value_heads=2, num_local_experts=4,
                                                                num_experts_per_tok=2, **common)),
        "albert": lambda: T.AlbertModel(T.AlbertConfig(embedding_size=h // 2, **common)),
        "electra": lambda: T.ElectraModel(T.ElectraConfig(embedding_size=h // 2, **common)),
        "deberta-v2": lambda: T.DebertaV2Model(T.DebertaV2Config(**common)),
        "bart": lambda: T.BartModel(T.BartConfig(
            encoder_layers=2, decoder_layers=2, d_model=h, encoder_ffn_dim=inter, decoder_ffn_dim=inter,
            encoder_attention_heads=heads, decoder_attention_heads=heads, vocab_size=512,
            max_position_embeddings=256, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)),
        # (65th session) forms the patterns had not met: multi-query attention, norms without affine parameters
        # or without a bias or with (1 + w), partial rotary, attention and residual multipliers, squared-ReLU
        # and tanh-GELU MLPs, QK LayerNorm, attention sinks, a query/key head dim unlike the value's (MLA),
        # shared-expert MoE, ALiBi without biases, local/global attention, a bottleneck model with NoNorm, an SSM
        "gpt-bigcode": lambda: T.GPTBigCodeForCausalLM(T.GPTBigCodeConfig(
            n_layer=2, n_embd=h, n_head=heads, vocab_size=512, n_positions=256, multi_query=True, bos_token_id=0,
            eos_token_id=0)),
        "olmo": lambda: T.OlmoForCausalLM(T.OlmoConfig(num_key_value_heads=2, **common)),
        "olmo2": lambda: T.Olmo2ForCausalLM(T.Olmo2Config(**common)),
        "stablelm": lambda: T.StableLmForCausalLM(T.StableLmConfig(
            partial_rotary_factor=0.25, use_qkv_bias=True, num_key_value_heads=2, **common)),
        "cohere": lambda: T.CohereForCausalLM(T.CohereConfig(num_key_value_heads=2, **common)),
        "granite": lambda: T.GraniteForCausalLM(T.GraniteConfig(
            attention_multiplier=0.3, residual_multiplier=0.5, embedding_multiplier=2.0, logits_scaling=4.0,
            num_key_value_heads=2, **common)),
        "nemotron": lambda: T.NemotronForCausalLM(T.NemotronConfig(
            partial_rotary_factor=0.5, head_dim=h // heads, num_key_value_heads=2, **common)),
        "persimmon": lambda: T.PersimmonForCausalLM(T.PersimmonConfig(qk_layernorm=True, partial_rotary_factor=0.5,
                                                                      **common)),
        "phi": lambda: T.PhiForCausalLM(T.PhiConfig(partial_rotary_factor=0.5, **common)),
        "gemma3": lambda: T.Gemma3ForCausalLM(T.Gemma3TextConfig(num_key_value_heads=2, head_dim=h // heads,
                                                                 sliding_window=16, **common)),
        "qwen2-moe": lambda: T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(
            num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=inter // 2,
            shared_expert_intermediate_size=inter, **common)),
        "gpt-oss": lambda: T.GptOssForCausalLM(T.GptOssConfig(
            num_key_value_heads=2, head_dim=h // heads, num_local_experts=4, num_experts_per_tok=2,
            sliding_window=16, **common)),
        "deepseek-v3": lambda: T.DeepseekV3ForCausalLM(T.DeepseekV3Config(
            q_lora_rank=h // 2, kv_lora_rank=h // 4, qk_rope_head_dim=8, qk_nope_head_dim=h // heads,
            v_head_dim=h // heads, n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=1,
            moe_intermediate_size=inter // 2, n_group=1, topk_group=1, num_key_value_heads=heads, **common)),
        "mpt": lambda: T.MptForCausalLM(T.MptConfig(d_model=h, n_heads=heads, n_layers=2, expansion_ratio=2,
                                                    vocab_size=512, max_seq_len=256)),
        "codegen": lambda: T.CodeGenForCausalLM(T.CodeGenConfig(
            n_layer=2, n_embd=h, n_head=heads, rotary_dim=h // heads // 2, vocab_size=512, n_positions=256,
            n_ctx=256, bos_token_id=0, eos_token_id=0)),
        "modernbert": lambda: T.ModernBertModel(T.ModernBertConfig(
            global_attn_every_n_layers=2, local_attention=16, cls_token_id=0, sep_token_id=0, **common)),
        "mobilebert": lambda: T.MobileBertModel(T.MobileBertConfig(
            embedding_size=h // 2, intra_bottleneck_size=h // 2, true_hidden_size=h // 2, **common)),
        "mamba": lambda: T.MambaForCausalLM(T.MambaConfig(hidden_size=h, num_hidden_layers=2, vocab_size=512,
                                                          state_size=8, pad_token_id=0, bos_token_id=0,
                                                          eos_token_id=0)),
    }


def _hf_input_models(gpu: bool) -> dict:
    """HF encoders of images and audio: (kind, builder)."""
    import transformers as T

    h, inter, heads = (256, 512, 4) if gpu else (64, 96, 4)
    size = 128 if gpu else 64
    common = dict(num_hidden_layers=2, hidden_size=h, intermediate_size=inter, num_attention_heads=heads)
    return {
        "vit-hf": ("hf-image", lambda: T.ViTModel(T.ViTConfig(image_size=size, patch_size=16, **common))),
        "clip-vision": ("hf-image", lambda: T.CLIPVisionModel(T.CLIPVisionConfig(image_size=size, patch_size=16,
                                                                                  **common))),
        "whisper-encoder": ("hf-audio", lambda: T.WhisperModel(T.WhisperConfig(
            d_model=h, encoder_layers=2, decoder_layers=2, encoder_attention_heads=heads,
            decoder_attention_heads=heads, encoder_ffn_dim=inter, decoder_ffn_dim=inter, num_mel_bins=16,
            max_source_positions=32, vocab_size=512, pad_token_id=0, bos_token_id=0, eos_token_id=0,
            decoder_start_token_id=0)).get_encoder()),
        # (65th session) layer scale and a SwiGLU MLP with interpolated positions; attention over keys a strided
        # conv shortened (queries and keys of different lengths) beside depthwise-conv MLPs; a pooling head
        # whose one probe query attends over the patches; a raw-waveform encoder (GroupNorm, a weight-normed
        # positional conv); window attention with relative position bias
        "dinov2": ("hf-image", lambda: T.Dinov2Model(T.Dinov2Config(image_size=size, patch_size=16,
                                                                     use_swiglu_ffn=True, **common))),
        "segformer": ("hf-image", lambda: T.SegformerModel(T.SegformerConfig(
            num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[h // 2, h],
            num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2]))),
        "siglip-vision": ("hf-image", lambda: _Pooled(T.SiglipVisionModel(T.SiglipVisionConfig(
            image_size=size, patch_size=16, **common)))),
        "swin-hf": ("hf-image", lambda: T.SwinModel(T.SwinConfig(image_size=size, patch_size=4, embed_dim=h // 2,
                                                                 depths=[1, 1], num_heads=[2, 4], window_size=4))),
        "wav2vec2": ("hf-wave", lambda: T.Wav2Vec2Model(T.Wav2Vec2Config(
            conv_dim=(h // 2, h // 2), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4, **common))),
    }


def _vision_models(gpu: bool) -> dict:
    import torchvision.models as M
    from torchvision.models.vision_transformer import VisionTransformer

    size = 128 if gpu else 64
    # BatchNorm keeps its fresh statistics (mean 0, variance 1), so the activations shrink layer by layer
    # (mobilenet_v2's logits are near 1e-9; SQNR does not mind the scale). Running statistics taken from random
    # images (the 65th session tried it) make the nets amplify rounding noise instead: eager bf16 itself then
    # lands 11-15 dB from fp64 at resnet50, mobilenet_v2 and googlenet, and a kernel's bug would hide in that.
    # 100 classes: enough logits that a run whose error stays below their rounding is rare (10 gave inf dB)
    convnets = {
        "resnet18": M.resnet18, "resnet50": M.resnet50, "mobilenet_v3_small": M.mobilenet_v3_small,
        "efficientnet_b0": M.efficientnet_b0, "convnext_tiny": M.convnext_tiny, "swin_t": M.swin_t,
        "regnet_x_400mf": M.regnet_x_400mf,
        # (65th session) ReLU6; BN with eps 1e-3 after bias-free convs; pre-activation BN -> ReLU -> conv with
        # concatenations; channel shuffles; convs with a bias and no BN; grouped bottlenecks; squeeze-excite;
        # cosine window attention with a continuous position bias
        "mobilenet_v2": M.mobilenet_v2,
        "googlenet": functools.partial(M.googlenet, aux_logits=False, init_weights=True), "densenet121": M.densenet121,
        "shufflenet_v2": M.shufflenet_v2_x0_5, "squeezenet": M.squeezenet1_1,
        "vgg11_bn": M.vgg11_bn, "resnext50": M.resnext50_32x4d, "regnet_y_400mf": M.regnet_y_400mf,
        "swin_v2_t": M.swin_v2_t,
    }
    models = {name: (lambda f=f: _head_without_bias(f(num_classes=100))) for name, f in convnets.items()}
    # torchvision zero-initialises the ViT head: a random head, so the logits are not all the bias
    models["vit"] = lambda: _random_head(VisionTransformer(image_size=size, patch_size=16, num_layers=2, num_heads=4,
                                                          hidden_dim=256 if gpu else 64, mlp_dim=512 if gpu else 96,
                                                          num_classes=100))
    return models


def _head_without_bias(model: torch.nn.Module) -> torch.nn.Module:
    """The bias of the last Linear or conv zeroed, so that the logits are what the features make of them: a
    fresh googlenet's or shufflenet's features reach its logits below bf16's rounding, and their output was the
    head's bias whatever the input (the same logits for two random images; inf dB against eager)."""
    last = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and m.bias is not None]
    with torch.no_grad():
        last[-1].bias.zero_()
    return model


class _Pooled(torch.nn.Module):
    """An HF encoder whose pooled output is the one compared (where the pooling head is what is being tested)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **kwargs):
        return self.model(**kwargs).pooler_output


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


def _no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Zero every dropout and stochastic-depth probability, so a training forward is deterministic and the
    compiled model's gradients can be compared with eager's."""
    for m in model.modules():
        for attr, value in list(vars(m).items()):
            if isinstance(value, float) and not isinstance(value, bool) and (
                    "dropout" in attr or "drop_prob" in attr or (attr == "p" and (
                        isinstance(m, torch.nn.modules.dropout._DropoutNd) or type(m).__name__ == "StochasticDepth"))):
                setattr(m, attr, 0.0)
    return model


def _inputs(kind: str, device: str, dtype: torch.dtype, gpu: bool, b: int, s: int, nchw: bool = False):
    """The call's keyword inputs and the mask of the output positions to compare (None: all)."""
    if kind == "hf":
        ids = torch.randint(3, 500, (b, s), device=device)
        mask = torch.ones(b, s, dtype=torch.long, device=device)
        mask[-1, s * 3 // 4:] = 0  # a padded row: the key-padding paths
        return {"input_ids": ids, "attention_mask": mask}, mask.bool()
    if kind == "hf-image":
        return {"pixel_values": torch.randn(b, 3, s, s, device=device).to(dtype)}, None
    if kind == "hf-audio":  # (the encoder's length is fixed by its config: 2 x max_source_positions frames)
        return {"input_features": torch.randn(b, 16, 64, device=device).to(dtype)}, None
    if kind == "hf-wave":  # raw audio: s hundred samples
        return {"input_values": torch.randn(b, 100 * s, device=device).to(dtype)}, None
    x = torch.randn(b, 3, s, s, device=device).to(dtype)
    return {"x": x if nchw else x.to(memory_format=torch.channels_last)}, None


def _call(model, kind: str, kwargs: dict):
    return _output(model(**kwargs) if kind.startswith("hf") else model(kwargs["x"]))


def _shapes(kind: str, mode: str, gpu: bool) -> list:
    """(batch, sequence length or image size) of each call. A dynamic mode calls three shapes: Dynamo compiles
    the first statically and recompiles on the second with symbolic sizes, which the third reuses."""
    if kind in ("hf", "hf-audio", "hf-wave"):
        first = (4, 128) if gpu else (2, 24)
        return [first, (3, 77), (5, 100)] if "dynamic" in mode or "symbolic" in mode else [first]
    first = (4 if gpu else 2, 128 if gpu else 64)
    return [first, (3, first[1]), (5, first[1])] if "dynamic" in mode or "symbolic" in mode else [first]


def _grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _grad_sqnr(ref_grads: dict, grads: dict) -> tuple[float, list, bool]:
    """The gradients' SQNR (dB) against ``ref_grads`` (all parameters together), the worst parameter's
    [name, dB], and whether ``grads`` has a NaN where the reference has none."""
    ref_grads, grads = dict(ref_grads), dict(grads)
    # a compiled graph gives zeros where eager gives None (a parameter whose output the loss does not read:
    # BERT's pooler), as backend="aot_eager" does
    for n in set(ref_grads) ^ set(grads):
        have = ref_grads.get(n, grads.get(n))
        if have.abs().max() > 0:
            raise AssertionError(f"{n}: a nonzero gradient in one run, none in the other")
        ref_grads[n] = grads[n] = have
    per = {n: _sqnr(ref_grads[n], grads[n]) for n in ref_grads if ref_grads[n].abs().max() > 0}
    total = _sqnr(torch.cat([ref_grads[n].flatten() for n in per]), torch.cat([grads[n].flatten() for n in per]))
    # the worst of those whose gradient is not noise around zero (a key projection's bias: softmax cancels it)
    norms = {n: ref_grads[n].double().norm().item() for n in per}
    worst = min((n for n in per if norms[n] >= 1e-4 * max(norms.values())), key=per.get)
    nan = any(bool((grads[n].isnan() & ~ref_grads[n].isnan()).any()) for n in grads)
    return round(total, 1), [worst, round(per[worst], 1)], nan


def _decode_pairs(model, compiled, device: str, gpu: bool, steps: int = 4) -> list:
    """A causal LM's prefill, then ``steps`` one-token decode steps against its KV cache, eager and compiled side
    by side (each with its own cache; the next token is eager's greedy choice for both; one row left-padded):
    the pairs of last-position logits. The growing cache makes Dynamo recompile with a symbolic length on the
    second step."""
    b, s = (4, 128) if gpu else (2, 24)
    ids = torch.randint(3, 500, (b, s), device=device)
    mask = torch.ones(b, s, dtype=torch.long, device=device)
    mask[-1, : s // 4] = 0  # a left-padded row, as batched generation pads
    e = model(input_ids=ids, attention_mask=mask, use_cache=True)
    c = compiled(input_ids=ids, attention_mask=mask, use_cache=True)
    pairs = [(e.logits[:, -1], c.logits[:, -1])]
    for _ in range(steps):
        tok = e.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
        e = model(input_ids=tok, attention_mask=mask, past_key_values=e.past_key_values, use_cache=True)
        c = compiled(input_ids=tok, attention_mask=mask, past_key_values=c.past_key_values, use_cache=True)
        pairs.append((e.logits[:, -1], c.logits[:, -1]))
    return pairs


class _NotApplicable(Exception):
    """A mode the model does not have (decode for an encoder): skipped, not failed."""


def run_one(name: str, build, kind: str, mode: str, device: str, dtype: torch.dtype, gpu: bool,
            min_db: float = 20.0) -> dict:
    """mode: float / int8 (inference, one shape), dynamic / int8-dynamic (inference at three shapes, the last two
    through one dynamic graph), train (a training forward and backward with dropout off: the output and the
    gradients against an fp32 copy's, within twice eager's own error (6 dB); int8-train in int8 mode;
    frozen-train with every Linear's weight frozen, as LoRA fine-tuning leaves them), symbolic / int8-symbolic
    (``torch.compile(dynamic=True)``: one graph with symbolic sizes from the first call, at three shapes),
    autocast / int8-autocast (an fp32 model run under ``torch.autocast`` in ``dtype``), autocast-train /
    int8-autocast-train (mixed-precision training: an fp32 model's training step under autocast, judged as train
    is against the fp32 model without autocast), nchw (a convnet and its
    input left in the default contiguous layout), decode / int8-decode (a causal LM's prefill and four decode
    steps against its KV cache)."""
    import tritonfuse
    from tritonfuse import config

    rec = {"model": name, "mode": mode, "device": device, "dtype": str(dtype)}
    train = "train" in mode
    try:
        torch.manual_seed(0)
        autocast = "autocast" in mode
        model = build().to(device=device, dtype=torch.float32 if autocast else dtype)
        model = _no_dropout(model.train()) if train else model.eval()
        if "frozen" in mode:  # as LoRA fine-tuning leaves them: the gradient flows through, none is kept
            for m in model.modules():
                if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D":
                    m.weight.requires_grad_(False)
        nchw = mode == "nchw"
        if nchw and kind != "vision":
            raise _NotApplicable("not a convnet")
        if kind == "vision" and not nchw:
            model = model.to(memory_format=torch.channels_last)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        # training in half precision strays from fp32 by itself (BatchNorm over a small batch: 8 dB of gradient
        # SQNR, eager as Inductor): a training step is judged against fp32, next to eager's own distance
        ref32 = copy.deepcopy(model).float() if train else None
        tritonfuse.reset()
        torch._dynamo.reset()
        quant = "int8" if mode.startswith("int8") else "none"
        compiled = torch.compile(model, backend="tritonfuse", dynamic=True if "symbolic" in mode else None)
        sqnrs, new_nan, repeatable = [], False, True
        rec["fails"] = []
        with torch.set_grad_enabled(train), config.patch(quant=quant), \
                torch.autocast(device, dtype=dtype, enabled=autocast):
            if "decode" in mode:
                if kind != "hf" or not hasattr(model, "lm_head"):
                    raise _NotApplicable("not a causal LM")
                start = time.perf_counter()
                for ref, out in _decode_pairs(model, compiled, device, gpu):
                    rec.setdefault("compile_s", round(time.perf_counter() - start, 1))
                    sqnrs.append(_sqnr(ref, out))
                    new_nan |= bool((out.isnan() & ~ref.isnan()).any())
            for b, s in ([] if "decode" in mode else _shapes(kind, mode, gpu)):
                kwargs, keep = _inputs(kind, device, torch.float32 if autocast else dtype, gpu, b, s, nchw)
                ref = _call(model, kind, kwargs)
                if train:
                    weight = torch.randn(ref.shape, device=device, dtype=torch.float32)
                    (ref.float() * weight).sum().backward()
                    ref_grads = _grads(model)
                    model.zero_grad(set_to_none=True)
                    with torch.autocast(device, enabled=False):  # (autocast-train: the reference in fp32)
                        r32 = _call(ref32, kind,
                                    {k: v.float() if v.is_floating_point() else v for k, v in kwargs.items()})
                        (r32 * weight).sum().backward()
                    g32 = _grads(ref32)
                start = time.perf_counter()
                out = _call(compiled, kind, kwargs)
                rec.setdefault("compile_s", round(time.perf_counter() - start, 1))
                if train:
                    (out.float() * weight).sum().backward()
                    grads = _grads(model)
                    model.zero_grad(set_to_none=True)
                    rec["grad_sqnr_db"], rec["worst_grad"], nan = _grad_sqnr(g32, grads)
                    rec["eager_grad_sqnr_db"] = _grad_sqnr(g32, ref_grads)[0]
                    new_nan |= nan
                    rec["out_vs_fp32_db"] = [round(_sqnr(r32.detach(), x.detach()), 1) for x in (out, ref)]
                    if (rec["grad_sqnr_db"] < rec["eager_grad_sqnr_db"] - 6
                            or rec["out_vs_fp32_db"][0] < rec["out_vs_fp32_db"][1] - 6):
                        rec["fails"].append("further from fp32 than twice eager's error")
                else:
                    again = _call(compiled, kind, kwargs)
                    repeatable &= bool(torch.equal(out, again))
                if keep is not None and ref.dim() >= 3:  # padded positions' outputs are not compared
                    ref, out = ref[keep], out[keep]
                sqnrs.append(_sqnr(ref.detach(), out.detach()))
                new_nan |= bool((out.isnan() & ~ref.isnan()).any())
        changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
        if changed:
            raise AssertionError(f"the compiled model changed parameters: {changed[:5]}")
        rec["sqnr_db"] = round(min(sqnrs), 1)
        if not train and rec["sqnr_db"] < min_db:
            rec["fails"].append(f"below {min_db} dB")
        rec["shapes"] = len(sqnrs)
        rec["new_nan"] = new_nan
        rec["repeatable"] = repeatable
        rec["counters"] = {k: v for k, v in tritonfuse.counters().items() if v["matched"]}
        rec["left"] = sorted({f"{s.family}: {s.reason}" for s in tritonfuse.sites() if s.status != "replaced"})
        rec["ok"] = True
    except _NotApplicable as e:
        rec["skipped"] = str(e)
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
    p.add_argument("--modes", default="float,int8",
                   help="comma list of float, int8, dynamic, int8-dynamic, symbolic, int8-symbolic, train, "
                        "int8-train, frozen-train, autocast, int8-autocast, autocast-train, int8-autocast-train, "
                        "nchw, decode, int8-decode (see run_one)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--min-db", type=float, default=20.0,
                   help="an inference run below this SQNR (dB) against eager fails (training: see run_one)")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    device = "cuda" if gpu else "cpu"
    dtype = getattr(torch, args.dtype)
    zoo = {name: ("hf", b) for name, b in _hf_models(gpu).items()}
    zoo.update(_hf_input_models(gpu))
    zoo.update({name: ("vision", b) for name, b in _vision_models(gpu).items()})
    names = [n for n in args.models.split(",") if n] or list(zoo)
    unknown = [n for n in names if n not in zoo]
    if unknown:
        p.error(f"unknown models {unknown}; known: {', '.join(zoo)}")
    records, bad = [], 0
    for name in names:
        kind, build = zoo[name]
        for mode in [m for m in args.modes.split(",") if m]:
            rec = run_one(name, build, kind, mode, device, dtype, gpu, args.min_db)
            if "skipped" in rec:
                print(f"skip {name:18s} {mode:12s} {rec['skipped']}", flush=True)
                continue
            failed = not rec["ok"] or rec["new_nan"] or bool(rec["fails"])
            bad += failed
            counts = {k: f"{v['replaced']}/{v['matched']}" for k, v in rec.get("counters", {}).items()}
            print(f"{'FAIL' if failed else 'ok  '} {name:18s} {mode:12s} "
                  + (f"{rec['compile_s']:6.1f}s {rec['sqnr_db']:6.1f} dB repeatable={rec['repeatable']} {counts}"
                     + (f" vs fp32: out {rec['out_vs_fp32_db'][0]} dB (eager {rec['out_vs_fp32_db'][1]}), grads "
                        f"{rec['grad_sqnr_db']} dB (eager {rec['eager_grad_sqnr_db']}; worst {rec['worst_grad']})"
                        if "grad_sqnr_db" in rec else "") + "".join(f" [{f}]" for f in rec["fails"])
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
