"""Run on a GPU: python3 scripts/cudnn_fused_probe.py (writes $OUT/cudnn_fused_probe.json).

ResNet-50's convolutions (b64, fp16, channels_last), each distinct shape and epilogue once: cuDNN's fused
conv + bias + ReLU (aten.cudnn_convolution_relu) and conv + bias + residual + ReLU
(aten.cudnn_convolution_add_relu), with BN folded into the weight and bias, against cuDNN's conv followed by
Inductor's fused epilogue (a compiled pointwise function of the conv output, BN folded the same way), and the
conv alone. GPU time from CUDA graphs; the fused output's max error against the unfused one."""
import json
import os

import torch
import torchvision

from probe_log import graph_ms

torch.backends.cudnn.benchmark = True
dev, dt = "cuda", torch.float16
model = torchvision.models.resnet50().to(dev, dt).eval().to(memory_format=torch.channels_last)
seen, sites = set(), []


def hook(mod, inp, out):
    x = inp[0]
    key = (tuple(x.shape), tuple(mod.weight.shape), mod.stride, mod.padding)
    sites.append((mod, key))


hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
with torch.no_grad():
    model(torch.randn(64, 3, 224, 224, device=dev, dtype=dt).to(memory_format=torch.channels_last))
for h in hooks:
    h.remove()
# which convs feed a residual add: each bottleneck's conv3 (its BN's output is added to the identity)
res_convs = {id(b.conv3) for b in model.modules() if isinstance(b, torchvision.models.resnet.Bottleneck)}
rows = []
for mod, (xs, ws, stride, pad) in sites:
    res = id(mod) in res_convs
    if (xs, ws, stride, pad, res) in seen:
        continue
    seen.add((xs, ws, stride, pad, res))
    x = torch.randn(xs, device=dev, dtype=dt).to(memory_format=torch.channels_last)
    w = (torch.randn(ws, device=dev, dtype=dt) / (ws[1] * ws[2] * ws[3]) ** 0.5).to(memory_format=torch.channels_last)
    b = torch.randn(ws[0], device=dev, dtype=dt) * 0.1
    conv = lambda: torch.ops.aten.convolution(x, w, None, list(stride), list(pad), [1, 1], False, [0, 0], 1)
    y = conv()
    z = torch.randn_like(y) if res else None
    if res:
        epi = torch.compile(lambda y, b, z: torch.relu(y + b.view(1, -1, 1, 1) + z))
        unfused = lambda: epi(conv(), b, z)
        fused = lambda: torch.ops.aten.cudnn_convolution_add_relu(x, w, z, 1.0, b, list(stride), list(pad), [1, 1], 1)
    else:
        epi = torch.compile(lambda y, b: torch.relu(y + b.view(1, -1, 1, 1)))
        unfused = lambda: epi(conv(), b)
        fused = lambda: torch.ops.aten.cudnn_convolution_relu(x, w, b, list(stride), list(pad), [1, 1], 1)
    row = {"x": list(xs), "w": list(ws), "stride": list(stride), "pad": list(pad), "residual": res}
    try:
        ref, got = unfused().float(), fused().float()
        row["max_abs_diff"] = (ref - got).abs().max().item()
        row["max_abs_ref"] = ref.abs().max().item()
        row["fused_channels_last"] = fused().is_contiguous(memory_format=torch.channels_last)
        row.update(conv_ms=graph_ms(conv), unfused_ms=graph_ms(unfused), fused_ms=graph_ms(fused))
        row["fused_vs_unfused"] = row["fused_ms"] / row["unfused_ms"]
    except Exception as e:  # noqa: BLE001
        row["error"] = f"{type(e).__name__}: {e}"[:300]
    print(json.dumps(row), flush=True)
    rows.append(row)
# folding BN into the weights each forward: every conv's w * scale, for the whole network
ws_all = [m.weight for m, _ in sites]
scales = [torch.rand(w.shape[0], device=dev, dtype=dt) for w in ws_all]
fold = torch.compile(lambda ws, ss: [w * s.view(-1, 1, 1, 1) for w, s in zip(ws, ss)])
fold_ms = graph_ms(lambda: fold(ws_all, scales))
tot = {k: sum(r.get(k, 0) for r in rows) for k in ("conv_ms", "unfused_ms", "fused_ms")}
print(json.dumps({"fold_all_weights_ms": fold_ms, **tot}))
json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
           "rows": rows, "fold_all_weights_ms": fold_ms},
          open(os.path.join(os.environ.get("OUT", "/tmp"), "cudnn_fused_probe.json"), "w"), indent=1)
