"""Does each config of conv_bn's device-descriptor TMA kernel compile when Inductor compiles it (the kernel
inlined into Inductor's code) as it does when Triton launches it? In resnet50 with ``kernels.conv_bn.INLINE``
on, Inductor's compile of ``_conv1x1_device_tma_kernel`` failed (shared memory 344088 > 232448 bytes) for a
config that Triton's own launch had just run.

Run on a GPU:  python3 scripts/device_tma_inline_probe.py [--out FILE.jsonl]

For each config, with and without the residual: Triton's own compile (``metadata.shared``, bytes of shared
memory) and a launch checked against PyTorch; then ``torch.compile`` of the same launch through
``wrap_triton`` with that config alone, checked the same way, or the error it raised.
"""

from __future__ import annotations

import argparse
import json
import traceback

import torch
import torch.nn.functional as F
import triton
from torch.library import wrap_triton

import tritonfuse  # noqa: F401
from tritonfuse.kernels import conv_bn as C
from tritonfuse.kernels.common import scratch_allocator
from probe_log import run_meta  # (this folder: the first on sys.path when run as a script)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="device_tma_inline_probe.jsonl")
    args = ap.parse_args()
    dev = torch.device("cuda")
    tuner = C._conv1x1_device_tma_kernel
    jit = tuner.fn
    B, Cin, H, Cout = 64, 256, 14, 1024
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(B, Cin, H, H, device=dev, dtype=torch.float16, generator=g).contiguous(
        memory_format=torch.channels_last)
    w = (torch.randn(Cout, Cin, 1, 1, device=dev, dtype=torch.float16, generator=g) / Cin ** 0.5)
    r = torch.randn(B, Cout, H, H, device=dev, dtype=torch.float16, generator=g).contiguous(
        memory_format=torch.channels_last)
    shift = torch.randn(Cout, device=dev, dtype=torch.float16, generator=g)
    M, N, K = B * H * H, Cout, Cin
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    rows = []
    for cfg in tuner.configs:
        for has_res in (False, True):
            name = f"{cfg.kwargs['BLOCK_M']}x{cfg.kwargs['BLOCK_N']}x{cfg.kwargs['BLOCK_K']} s{cfg.num_stages} w{cfg.num_warps}"
            row = {"config": name, "has_res": has_res}
            ref = F.relu(F.conv2d(x.float(), w.float()) + shift.float()[None, :, None, None])
            if has_res:
                ref = ref + r.float()
            single = triton.autotune(configs=[cfg], key=["M_BUCKET"])(jit)

            def launch(kernel, x, w, r, shift, out):
                grid = (min(sms, triton.cdiv(M, cfg.kwargs["BLOCK_M"]) * triton.cdiv(N, cfg.kwargs["BLOCK_N"])),)
                kernel[grid](x, w, r if has_res else out, out, shift, out, out, out, out, 1e-5, M, N, K, M,
                             HAS_BIAS=True, HAS_BN=False, HAS_AFFINE=False, HAS_RES=has_res, ACT="relu",
                             ACT2="none", NUM_SMS=sms)
                return out

            try:
                out = torch.empty(B, Cout, H, H, device=dev, dtype=torch.float16).contiguous(
                    memory_format=torch.channels_last)
                with scratch_allocator():
                    launch(single, x, w, r, shift, out)
                torch.cuda.synchronize()
                row["triton_err"] = float((out.float() - ref).abs().max())
            except Exception as e:  # noqa: BLE001
                row["triton_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            try:  # the shared memory of what Triton compiled for this launch
                compiled = [k for cache in jit.device_caches.values() for k in cache[0].values()]
                row["triton_shared"] = [int(k.metadata.shared) for k in compiled]
            except Exception as e:  # noqa: BLE001 - another Triton's cache layout
                row["triton_shared"] = f"{type(e).__name__}: {e}"

            def fn(x, w, r, shift):
                out = torch.empty(B, Cout, H, H, device=x.device, dtype=x.dtype).contiguous(
                    memory_format=torch.channels_last)
                return launch(wrap_triton(single), x, w, r, shift, out)

            try:
                torch._dynamo.reset()
                got = torch.compile(fn, backend="inductor", dynamic=False)(x, w, r, shift)
                torch.cuda.synchronize()
                row["inductor_err"] = float((got.float() - ref).abs().max())
            except Exception as e:  # noqa: BLE001
                row["inductor_error"] = f"{type(e).__name__}: {str(e)[:300]}"
                row["inductor_tb"] = traceback.format_exc()[-1500:]
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "inductor_tb"}), flush=True)
            jit.device_caches.clear()  # the next config's compile alone in the cache
    meta = {**run_meta(), "command": f"python3 scripts/device_tma_inline_probe.py --out {args.out}"}
    with open(args.out, "w") as f:
        f.write(json.dumps(meta) + "\n")
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
