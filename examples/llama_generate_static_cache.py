"""Llama ``generate`` with a static KV cache, its forward compiled by tritonfuse.

The recipe of the Hugging Face LLM-optimisation guide (a static cache, the forward compiled once for the
prompt and once for the one-token steps) with one change: ``backend="tritonfuse"``. The model is built from a
config (random weights, no download): a 1B Llama shape on a GPU, a tiny one on the CPU.

    python examples/llama_generate_static_cache.py
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU only: Triton kernels run in its interpreter

from transformers import LlamaConfig, LlamaForCausalLM

import tritonfuse

gpu = torch.cuda.is_available()
device, dtype = ("cuda", torch.bfloat16) if gpu else ("cpu", torch.float32)
size = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=8,
            intermediate_size=8192) if gpu else dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                     num_key_value_heads=2, intermediate_size=128)
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=32000, attn_implementation="sdpa", **size)).to(device, dtype).eval()
prompt = torch.randint(0, 32000, (2, 64 if gpu else 8), device=device)
gen = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=32 if gpu else 4, do_sample=False,
           pad_token_id=0, cache_implementation="static", disable_compile=True)

eager = model.generate(prompt, **gen)

model.forward = torch.compile(model.forward, backend="tritonfuse")  # plain: torch.compile(model.forward)
out = model.generate(prompt, **gen)

new = slice(prompt.shape[1], None)
same = (out[:, new] == eager[:, new]).float().mean().item()
print(f"generated {out.shape[1] - prompt.shape[1]} tokens x {out.shape[0]}; {same:.0%} of tokens equal to eager's "
      "(greedy decoding on random weights: near-ties may flip)")
print(tritonfuse.report())
