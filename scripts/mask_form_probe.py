"""Print the post-grad nodes under an SDPA site's mask (HF Llama with user position ids, tiny config): what
form a mask takes on this device. python scripts/mask_form_probe.py"""
import sys

import torch

sys.path.append(".")
from tritonfuse import config  # noqa: E402
from tritonfuse.patterns import attention as P  # noqa: E402
from tests.test_attention import _llama, _ids_and_padding  # noqa: E402

real, seen = P._read_mask, []


def spy(node, q, k, c):
    def walk(n, d=0):
        if d > 5 or not hasattr(n, "target"):
            return
        v = n.meta.get("val")
        print("  " * d, n.target, [str(a) for a in n.args], n.kwargs or "",
              (tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else None)
        for a in n.all_input_nodes:
            walk(a, d + 1)
    if not seen:
        walk(node)
    seen.append(1)
    return real(node, q, k, c)


P._read_mask = spy
dev = "cuda" if torch.cuda.is_available() else "cpu"
model = _llama("sdpa", torch.float16, dev)
ids, _ = _ids_and_padding(dev)
pos = torch.tensor([list(range(7)) + list(range(6))] * 2, device=dev)
with config.patch(patterns="attention"), torch.no_grad():
    torch.compile(model, backend="tritonfuse")(input_ids=ids, position_ids=pos, use_cache=False)
