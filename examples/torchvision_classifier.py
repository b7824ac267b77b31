"""A torchvision classifier (ResNet-50, channels_last) under tritonfuse, compared with eager.

Random weights (``weights=None``, no download): b64 224px fp16 on a GPU, a small batch on the CPU.

    python examples/torchvision_classifier.py
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU only: Triton kernels run in its interpreter

import torchvision

import tritonfuse

gpu = torch.cuda.is_available()
device, dtype = ("cuda", torch.float16) if gpu else ("cpu", torch.float32)
torch.manual_seed(0)
model = torchvision.models.resnet50(weights=None).to(device, dtype, memory_format=torch.channels_last).eval()
batch, res = (64, 224) if gpu else (2, 64)
images = torch.randn(batch, 3, res, res, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)

compiled = torch.compile(model, backend="tritonfuse")  # plain: torch.compile(model)
with torch.no_grad():
    logits = compiled(images)
    ref = model(images)

agree = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
err = ((logits.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
print(f"logits {tuple(logits.shape)}: top-1 agrees with eager on {agree:.0%}, max relative error {err:.2e}")
print(tritonfuse.report())
