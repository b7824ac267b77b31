"""A training step (forward, backward, AdamW) with the model compiled by tritonfuse.

A small BERT classifier built from a config; the same steps run in eager from the same weights, and the
losses are printed side by side. Larger on a GPU (bf16), tiny on the CPU.

    python examples/training_step.py
"""

import copy
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU only: Triton kernels run in its interpreter

from transformers import BertConfig, BertForSequenceClassification

import tritonfuse

gpu = torch.cuda.is_available()
device, dtype = ("cuda", torch.bfloat16) if gpu else ("cpu", torch.float32)
size = dict(hidden_size=768, num_hidden_layers=6, num_attention_heads=12, intermediate_size=3072) if gpu else \
    dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
config = BertConfig(num_labels=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                    attn_implementation="sdpa", **size)
torch.manual_seed(0)
model = BertForSequenceClassification(config).to(device, dtype).train()
reference = copy.deepcopy(model)

batch, seq, steps = (32, 256, 5) if gpu else (4, 16, 3)
data = [(torch.randint(0, config.vocab_size, (batch, seq), device=device),
         torch.randint(0, 4, (batch,), device=device)) for _ in range(steps)]


def train(model, forward):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-6)
    losses = []
    for ids, labels in data:
        loss = forward(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


compiled = torch.compile(model, backend="tritonfuse")  # plain: torch.compile(model)
fused = train(model, compiled)
eager = train(reference, reference)
for i, (a, b) in enumerate(zip(fused, eager)):
    print(f"step {i}: loss tritonfuse {a:.5f}   eager {b:.5f}")
print(tritonfuse.report())
