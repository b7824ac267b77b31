"""Design sweep for the attention decode kernel's settings (a GPU, one call): each (splits of the keys,
BLOCK_N, warps, stages) timed from CUDA-graph replays, beside SDPA at the same shape.

``_decode_settings`` in ``kernels/attention.py`` comes from here. Variants: ``ours`` (split kernel +
combine kernel, as the op runs them) and ``split_only`` (the split kernel alone, to see what the combine
launch costs).

Run: ``python scripts/decode_sweep.py [--quick] > sweep.jsonl``; one JSON line per timing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from common import gpu_time  # noqa: E402

from tritonfuse.kernels import attention as K  # noqa: E402

# (B, Hq, Hkv, Sq, Sk, D): the decode shape first, then a long-cache batch-1 one and a wider group
SHAPES = [(8, 16, 8, 1, 4096, 128), (1, 32, 8, 1, 16384, 128), (16, 32, 8, 1, 2048, 64), (8, 16, 8, 4, 4096, 128)]


def emit(**kw):
    print(json.dumps(kw), flush=True)


def bench(fn):
    return gpu_time(fn, rep=40, timer="graph")


def run(shape, settings, combine=True):
    B, Hq, Hkv, Sq, Sk, D = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, Hq, Sq, D, device="cuda", dtype=torch.float16, generator=g)
    k = torch.randn(B, Hkv, Sk, D, device="cuda", dtype=torch.float16, generator=g)
    v = torch.randn(B, Hkv, Sk, D, device="cuda", dtype=torch.float16, generator=g)
    scale = D ** -0.5
    nbytes = 2 * B * Hkv * Sk * D * 2
    label = dict(shape="B{} Hq{} Hkv{} Sq{} Sk{} D{}".format(*shape))
    ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    emit(variant="sdpa", ms=round(bench(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)), 5), **label)
    out = torch.empty_like(q)
    lse = torch.empty((B, Hq, Sq), device="cuda", dtype=torch.float32)
    m, m_strides, mask_kind = K._mask_args(None, (B, Hq, Sq, Sk), q)
    orig = K._decode_settings
    for cfg in settings:
        K._decode_settings = lambda *_: cfg  # noqa: E731
        try:
            def call(combine=True):
                K._launch_decode(q, k, v, m, m_strides, mask_kind, out, lse, scale * K.LOG2E, False, False,
                                 combine=combine)

            call()
            err = (out.float() - ref.float()).abs().max().item()
            ms = bench(call)
            rec = dict(variant="ours", splits=cfg[0], block_n=cfg[1], warps=cfg[2], stages=cfg[3], ms=round(ms, 5),
                       tbps=round(nbytes / ms / 1e9, 3), max_err=err, **label)
            if combine:
                rec["split_only_ms"] = round(bench(lambda: call(False)), 5)
            emit(**rec)
        except Exception as e:  # out of resources and the like
            emit(variant="ours", splits=cfg[0], block_n=cfg[1], warps=cfg[2], stages=cfg[3],
                 failed=f"{type(e).__name__}: {str(e)[:100]}", **label)
        finally:
            K._decode_settings = orig
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    default = orig(B * Hkv, Sk, max(16, 1 << (D - 1).bit_length()), sms)
    emit(variant="default_settings", settings=list(default), **label)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the first shape alone")
    args = ap.parse_args()
    t0 = time.time()
    emit(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=__import__("triton").__version__)
    settings = list(itertools.product((4, 5, 8, 12, 16, 32), (32, 64, 128), (2, 4, 8), (2, 3, 4)))
    for shape in SHAPES[:1] if args.quick else SHAPES:
        run(shape, settings)
    emit(total_s=round(time.time() - t0, 1))


if __name__ == "__main__":
    main()
