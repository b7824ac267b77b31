"""A Hugging Face text encoder (BERT) under tritonfuse: a padded batch, compared with eager.

Built from a config (random weights, no download): BERT-base on a GPU in fp16, a tiny BERT on the CPU.

    python examples/hf_text_model.py
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU only: Triton kernels run in its interpreter

from transformers import BertConfig, BertModel

import tritonfuse

gpu = torch.cuda.is_available()
device, dtype = ("cuda", torch.float16) if gpu else ("cpu", torch.float32)
config = BertConfig(attn_implementation="sdpa") if gpu else BertConfig(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, attn_implementation="sdpa")
torch.manual_seed(0)
model = BertModel(config).to(device, dtype).eval()

batch, seq = (32, 512) if gpu else (2, 16)
input_ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
attention_mask = torch.ones_like(input_ids)
attention_mask[1:, seq // 2:] = 0  # padding: every sequence but the first is half as long

compiled = torch.compile(model, backend="tritonfuse")  # plain: torch.compile(model)
with torch.no_grad():
    out = compiled(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    ref = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

cos = torch.nn.functional.cosine_similarity(out.float().flatten(), ref.float().flatten(), dim=0).item()
print(f"last_hidden_state {tuple(out.shape)}: cosine vs eager {cos:.6f}")
print(tritonfuse.report())
