"""What the per-token int8 quantization costs once Inductor fuses it into the LayerNorm that produces its input.

In int8 mode a Linear whose input comes from a LayerNorm gets its activation quantized by graph ops
(``kernels.int8.symmetric_int8`` over each row), which Inductor fuses into the LayerNorm's kernel. Profiled
in the 39th session (bert-base b32 s512, H200, sites chosen as under CUDA graphs): that kernel takes 35-38 us
a call against 17.8 us for the float model's LayerNorm, though it moves only a sixth more bytes (an int8
copy of the output and a scale per row), 24 calls a forward: some 0.4 ms of bert-base's 6.0.

The variants, each compiled by Inductor from the ATen ops of ``y = layer_norm(x + r)`` and then:
- ``ln``: nothing more (the float model's kernel);
- ``first``: the quantizer as first shipped (to 5a70502): NaN/Inf found by its own ``isfinite().all()``
  reduction, ``nan_to_num`` before the scaling, rounding half away from zero as ``sign * floor(|v| + .5)``,
  a clamp;
- ``amax``: a row holds NaN/Inf exactly when its abs-max is not finite (max propagates NaN, eager and
  Inductor alike), so no second reduction; a select in place of ``nan_to_num``;
- ``trunc``: ``amax`` rounding as ``trunc(v + copysign(.5, v))`` (the same fp32 sum, so the same values) and
  no clamp (|v| <= 127 by construction, up to an ulp that rounds to 127 all the same): shipped from 2d4da6e
  (39th session) to the 40th;
- ``shipped``: ``kernels.int8.symmetric_int8`` today: ``trunc`` without ``torch.trunc``, the cast to int8
  truncating by itself (Inductor compiled the trunc as a conversion an element of its own, FRND, which sm_90
  runs at a quarter rate as it runs the cast's F2I);
- ``rne``: not the project's rounding (ties to even, so not compared bit for bit): ``v + 1.5 * 2^23`` and its
  bits less the constant's, no conversion instruction at all. What a switch of rounding rule would gain;
- ``shipped x3``: three quantizations of one output (bert's Q, K and V sites each insert their own): does
  Inductor share them?
- ``norm kernel``: tritonfuse's own LayerNorm kernel with its int8 output (``quant_out``);
- ``row kernel``: ``kernels.int8.quant_rows`` alone on the LayerNorm's output (what a site whose input has
  no fusable producer runs: BERT's down-projections, 16384x3072, took 0.050 ms with its first form).
Each variant's q and scales must equal ``first``'s bit for bit (NaN rows, Inf rows and zero rows included);
``--check`` runs that on the CPU in eager mode. At 5a70502 on the H200 (16384x768): ln 19.8 us, first 35.5,
amax 32.0, the trunc form 25.9, the norm kernel 32.0.

    python3 scripts/quant_fusion_probe.py [--shapes 16384x768,12608x768]
    python3 scripts/quant_fusion_probe.py --check

Rows: $OUT/quant-fusion-probe.jsonl (GPU ms per call from CUDA-graph replays, and bytes moved per us).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tritonfuse.kernels import int8 as Q  # noqa: E402
from tritonfuse.kernels import norm_residual as _norm  # noqa: E402,F401 - registers tritonfuse::norm_residual

QMAX = 127.0


def quant_first(y):
    yf = y.float()
    finite = torch.isfinite(yf).all(dim=1, keepdim=True)
    amax = yf.abs().amax(dim=1, keepdim=True).masked_fill(~finite, 0.0)
    inv = torch.where(amax > 0, torch.full_like(amax, QMAX) / amax, torch.zeros_like(amax))
    v = yf.nan_to_num(0.0, 0.0, 0.0) * inv
    q = (torch.sign(v) * torch.floor(v.abs() + 0.5)).clamp(-QMAX, QMAX).to(torch.int8)
    return q, (amax / QMAX).masked_fill(~finite, float("nan")).reshape(-1)


def quant_shipped(y):
    q, s = Q.symmetric_int8(y, (1,))
    return q, s.reshape(-1)


def _scaled(y):
    # the quantizer up to its rounding, as symmetric_int8 computes it: (v = y * 127 / abs-max, or 0 in a row
    # of zeros or one holding NaN/Inf, and the row scales)
    yf = y.float()
    amax = yf.abs().amax(dim=1, keepdim=True)  # NaN or Inf exactly when the row holds one
    finite = torch.isfinite(amax)
    amax = torch.where(finite, amax, torch.zeros_like(amax))
    inv = torch.where(amax > 0, torch.full_like(amax, QMAX) / amax, torch.zeros_like(amax))
    v = torch.where(finite, yf * inv, torch.zeros_like(yf))
    return v, torch.where(finite, amax / QMAX, torch.full_like(amax, float("nan"))).reshape(-1)


def quant_amax(y):
    v, s = _scaled(y)
    return (torch.sign(v) * torch.floor(v.abs() + 0.5)).clamp(-QMAX, QMAX).to(torch.int8), s


def quant_trunc(y):
    v, s = _scaled(y)
    return torch.trunc(v + torch.copysign(torch.full_like(v, 0.5), v)).to(torch.int8), s


def quant_rne(y):
    # ties to even (not the project's rule): round by the fp32 add itself, read the integer from the bits
    v, s = _scaled(y)
    return ((v + 12582912.0).view(torch.int32) - 0x4B400000).to(torch.int8), s


VARIANTS = {"first": quant_first, "amax": quant_amax, "trunc": quant_trunc, "shipped": quant_shipped}
TIES_TO_EVEN = {"rne": quant_rne}  # timed, and checked against "first" except at ties


def ln(x, r, w, b):
    return F.layer_norm(x + r, (x.shape[-1],), w, b, 1e-12)


def check(device: str = "cpu") -> None:
    torch.manual_seed(0)
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        y = (torch.randn(67, 300, device=device) * 3).to(dt)
        y[3] = 0
        y[5, 7] = float("nan")
        y[9, 2] = float("inf")
        y[11, 0] = -float("inf")
        y[13, :] = 0.5  # every value a half-way case: v = 127 exactly
        y[15, 1] = 1e-30 if dt == torch.float32 else 0  # a tiny nonzero amax row-element
        y[17] = y[17] * 1e-3
        y[19, :5] = torch.tensor([127.0, 0.5, -0.5, 1.5, -2.5])  # amax 127: v = y, half-way cases
        q0, s0 = quant_first(y)
        for name, fn in {**VARIANTS, **TIES_TO_EVEN}.items():
            q, s = fn(y)
            if name in TIES_TO_EVEN:  # off by one at most, and only at a tie
                assert ((q.int() - q0.int()).abs() <= 1).all() and (q != q0).sum() <= (q0 % 2 == 1).sum(), name
            else:
                assert torch.equal(q, q0), (name, dt, (q != q0).nonzero()[:5])
            assert torch.equal(s.isnan(), s0.isnan()) and torch.equal(s.nan_to_num(), s0.nan_to_num()), (name, dt)
        assert s0[5].isnan() and s0[9].isnan() and (q0[5] == 0).all() and s0[3] == 0
    print("check passed")


def main() -> None:
    from probe_log import graph_ms, jsonl_log, probe_parser, run_meta

    a = probe_parser(__doc__, "16384x768,12608x768").parse_args()
    if a.check:
        return check()

    check("cuda")
    emit = jsonl_log("quant-fusion-probe.jsonl", digits=4)
    meta = run_meta()
    dt, dev = torch.float16, "cuda"
    for shape in a.shapes.split(","):
        M, N = (int(v) for v in shape.split("x"))
        torch.manual_seed(0)
        x = torch.randn(M, N, device=dev, dtype=dt)
        r = torch.randn(M, N, device=dev, dtype=dt)
        w = 1 + 0.1 * torch.randn(N, device=dev, dtype=dt)
        b = 0.1 * torch.randn(N, device=dev, dtype=dt)
        base = 2 * M * N * 2  # x and r read
        fns = {"ln": (lambda x, r: ln(x, r, w, b), base + M * N * 2)}
        for name, qf in {**VARIANTS, **TIES_TO_EVEN}.items():
            fns[name] = ((lambda qf: lambda x, r: (lambda y: (y, *qf(y)))(ln(x, r, w, b)))(qf),
                         base + M * N * 3 + M * 4)
        fns["shipped x3"] = (lambda x, r: (lambda y: (y, *quant_shipped(y), *quant_shipped(y),
                                                      *quant_shipped(y)))(ln(x, r, w, b)), base + M * N * 3 + M * 4)
        ref = None
        torch._dynamo.reset()
        for name, (fn, nbytes) in fns.items():
            try:
                cf = torch.compile(fn, backend="inductor")
                out = cf(x, r)
                if name != "ln" and name not in TIES_TO_EVEN:
                    if ref is None:
                        ref = out
                    assert torch.equal(out[1], ref[1]) and torch.equal(out[2], ref[2]), name
                ms = graph_ms(lambda: cf(x, r))
                emit(**meta, shape=shape, variant=name, ms=ms, gbps=nbytes / ms / 1e6)
            except Exception as e:  # noqa: BLE001
                emit(**meta, shape=shape, variant=name, error=f"{type(e).__name__}: {str(e)[:200]}")
        y = ln(x, r, w, b)  # (eager's LayerNorm: not bit for bit the compiled one's output)
        q, sc = Q.quant_rows(y)
        q_ref, s_ref = Q.quant_rows_ref(y)
        assert torch.equal(q, q_ref) and torch.equal(sc, s_ref), "row kernel"
        ms = graph_ms(lambda: Q.quant_rows(y))
        emit(**meta, shape=shape, variant="row kernel", ms=ms, gbps=(M * N * 3 + M * 4) / ms / 1e6)
        try:
            def norm():
                return torch.ops.tritonfuse.norm_residual(x, r, w, b, 1e-12, "layer", False, False, False, True)
            out = norm()
            err = (out[4].int() - ref[1].int()).abs().max().item()
            emit(**meta, shape=shape, variant="norm kernel", ms=graph_ms(norm), q_max_diff=err,
                 gbps=(base + M * N * 3 + M * 4) / graph_ms(norm) / 1e6)
        except Exception as e:  # noqa: BLE001
            emit(**meta, shape=shape, variant="norm kernel", error=f"{type(e).__name__}: {str(e)[:200]}")


if __name__ == "__main__":
    main()
