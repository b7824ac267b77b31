"""Attention family: flash-attention kernels vs an fp64 reference, and the patterns on real model graphs."""

import functools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import tritonfuse
from tritonfuse import config, registry
from tritonfuse.kernels import attention as K
from tests.utils import GraphOps, assert_close_to_ref, compiled_keys, fresh

HAS_CUDA = torch.cuda.is_available()
FP = [(torch.float16, 1e-3), (torch.bfloat16, 1e-2)]


def _qkv(B, Hq, Hkv, Sq, Sk, D, dtype, device, transposed=False, seed=0):
    if transposed:
        # as models produce them: [B, S, H, D] projections viewed as [B, H, S, D]
        q = fresh(B, Sq, Hq, D, dtype=dtype, device=device, seed=seed).transpose(1, 2)
        k = fresh(B, Sk, Hkv, D, dtype=dtype, device=device, seed=seed + 1).transpose(1, 2)
        v = fresh(B, Sk, Hkv, D, dtype=dtype, device=device, seed=seed + 2).transpose(1, 2)
    else:
        q = fresh(B, Hq, Sq, D, dtype=dtype, device=device, seed=seed)
        k = fresh(B, Hkv, Sk, D, dtype=dtype, device=device, seed=seed + 1)
        v = fresh(B, Hkv, Sk, D, dtype=dtype, device=device, seed=seed + 2)
    return q, k, v


def _sdpa(q, k, v, mask, scale, is_causal):
    # PyTorch's own same-dtype attention (GQA through enable_gqa); fully masked rows NaN -> 0 as ours
    if mask is not None and is_causal:  # SDPA takes one or the other: fold the causal mask in
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        mask = mask & keep if mask.dtype == torch.bool else mask.masked_fill(~keep, float("-inf"))
        is_causal = False
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, is_causal=is_causal,
                                         enable_gqa=q.shape[1] != k.shape[1])
    return out.nan_to_num(0.0)


def _mask(kind, B, Hq, Sq, Sk, dtype, device):
    g = torch.Generator().manual_seed(7)
    if kind == "none":
        return None
    if kind == "bool_keypad":  # (B, 1, 1, Sk) key padding, as HF BERT builds it
        m = torch.ones(B, 1, 1, Sk, dtype=torch.bool)
        m[-1, ..., Sk // 2:] = False
        return m.to(device)
    if kind == "bool_full":  # (B, 1, Sq, Sk)
        return (torch.rand(B, 1, Sq, Sk, generator=g, device="cpu") > 0.3).to(device)
    if kind == "float_full":
        return torch.randn(B, 1, Sq, Sk, generator=g, device="cpu").to(device=device, dtype=dtype)
    if kind == "float_min_keypad":  # finfo.min padding, as HF's eager masks
        m = torch.zeros(B, 1, 1, Sk)
        m[-1, ..., Sk // 3:] = torch.finfo(torch.float32).min
        return m.to(device)
    raise ValueError(kind)


# --- kernels -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,atol", FP)
@pytest.mark.parametrize(
    "B,Hq,Hkv,Sq,Sk,D,causal,mask_kind,transposed",
    [
        (2, 3, 3, 37, 37, 80, False, "none", True),
        (1, 4, 2, 45, 37, 64, True, "none", False),  # GQA, Sq > Sk, causal top-left as SDPA
        (2, 2, 2, 37, 53, 96, True, "bool_full", True),  # Sq < Sk
        (2, 4, 1, 33, 33, 128, False, "bool_keypad", False),
        (2, 2, 2, 29, 29, 32, False, "float_full", True),
        (2, 2, 2, 21, 40, 256, False, "float_min_keypad", False),
    ],
)
def test_attention_kernel(B, Hq, Hkv, Sq, Sk, D, causal, mask_kind, transposed, dtype, atol, device):
    q, k, v = _qkv(B, Hq, Hkv, Sq, Sk, D, dtype, device, transposed)
    mask = _mask(mask_kind, B, Hq, Sq, Sk, dtype, device)
    scale = D ** -0.5
    out = torch.ops.tritonfuse.attention(q, k, v, mask, scale, causal)
    ref = K.attention_ref(q, k, v, mask, scale, causal, upcast=True)
    assert_close_to_ref(out, ref, _sdpa(q, k, v, mask, scale, causal), atol=atol)


@pytest.mark.parametrize("Sq,Hq,Hkv,mask_kind", [(1, 8, 2, "none"), (5, 4, 2, "bool_full"), (16, 2, 2, "float_full")])
def test_attention_decode_kernel(Sq, Hq, Hkv, mask_kind, device, monkeypatch):
    # short queries against a long KV cache: split-K kernels (the keys in several chunks, the last ragged)
    B, Sk, D, dtype = 2, K.DECODE_MIN_K + 45, 64, torch.float16
    q, k, v = _qkv(B, Hq, Hkv, Sq, Sk, D, dtype, device, transposed=True)
    assert K._use_decode(q, k, False)
    mask = _mask(mask_kind, B, Hq, Sq, Sk, dtype, device)
    settings = []
    real = K._decode_settings
    monkeypatch.setattr(K, "_decode_settings", lambda *a: settings.append(real(*a)) or settings[-1])
    out = torch.ops.tritonfuse.attention(q, k, v, mask, 0.125, False)
    assert settings and settings[0][0] > 1, settings
    ref = K.attention_ref(q, k, v, mask, 0.125, False, upcast=True)
    assert_close_to_ref(out, ref, _sdpa(q, k, v, mask, 0.125, False), atol=1e-3)


@pytest.mark.parametrize("mask_kind", ["bool_keypad", "float_min_keypad"])
def test_fully_masked_rows_are_zero(mask_kind, device):
    # every key of batch 1 masked: bool -> zeros (never NaN); finfo.min -> the mean of V, as eager gives
    q, k, v = _qkv(2, 2, 2, 19, 19, 32, torch.float16, device)
    mask = _mask(mask_kind, 2, 2, 19, 19, torch.float16, device)
    mask[1] = False if mask.dtype == torch.bool else torch.finfo(torch.float32).min
    out = torch.ops.tritonfuse.attention(q, k, v, mask, 0.2, False)
    assert torch.isfinite(out).all()
    if mask.dtype == torch.bool:
        assert (out[1] == 0).all()
    else:  # eager semantics: a uniform average of V
        torch.testing.assert_close(out[1].float(), v[1].float().mean(1, keepdim=True).expand_as(out[1]),
                                   atol=2e-3, rtol=0)


@pytest.mark.parametrize("dtype,atol", FP)
@pytest.mark.parametrize("B,Hq,Hkv,Sq,Sk,D,causal,mask_kind",
                         [(2, 2, 2, 37, 37, 80, False, "bool_keypad"), (1, 4, 2, 45, 37, 64, True, "none"),
                          (1, 2, 2, 23, 31, 32, False, "float_full"),
                          (2, 2, 1, 29, 29, 64, False, "float_min_keypad")])  # (GQA: two heads a key block)
def test_attention_backward(B, Hq, Hkv, Sq, Sk, D, causal, mask_kind, dtype, atol, device):
    q, k, v = _qkv(B, Hq, Hkv, Sq, Sk, D, dtype, device, transposed=True)
    mask = _mask(mask_kind, B, Hq, Sq, Sk, dtype, device)
    dout = fresh(B, Hq, Sq, D, dtype=dtype, device=device, seed=11)
    scale = D ** -0.5
    out, lse = torch.ops.tritonfuse.attention_fwd(q, k, v, mask, scale, causal)
    grads = torch.ops.tritonfuse.attention_bwd(dout, q, k, v, out, lse, mask, scale, causal)

    def autograd(fn, dt, *xs):
        xs = [x.detach().to(dt).requires_grad_() for x in xs]
        fn(*xs).backward(dout.to(device=xs[0].device, dtype=dt))
        return [x.grad for x in xs]

    m64 = None if mask is None else (mask.cpu() if mask.dtype == torch.bool else mask.double().cpu())
    ref = autograd(lambda a, b, c: K.attention_ref(a, b, c, m64, scale, causal),
                   torch.float64, q.cpu(), k.cpu(), v.cpu())
    eager = autograd(lambda a, b, c: _sdpa(a, b, c, mask, scale, causal), dtype, q, k, v)
    for name, g, r, e in zip(("dq", "dk", "dv"), grads, ref, eager):
        assert_close_to_ref(g, r, e, atol=atol, what=name)


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("causal,mask_kind,dtype", [(False, "none", torch.float16), (True, "none", torch.bfloat16),
                                                    (False, "float_min_keypad", torch.float16)])
def test_forward_loop_variants(fold, causal, mask_kind, dtype, device, monkeypatch):
    # the forward kernels with and without the scale folded into the exponent, over several whole key
    # blocks and a ragged one; keys 100-109 are scaled up so that running maxima jump mid-row
    monkeypatch.setattr(K, "FOLD_SCALE", fold)
    B, H, Sq, Sk, D = 1, 2, 70, 150, 64
    q, k, v = _qkv(B, H, H, Sq, Sk, D, dtype, device, transposed=True, seed=3)
    k = k.clone()
    k[:, :, 100:110] *= 6
    mask = _mask(mask_kind, B, H, Sq, Sk, dtype, device)
    scale = D ** -0.5
    ref = K.attention_ref(q, k, v, mask, scale, causal, upcast=True)
    eager = _sdpa(q, k, v, mask, scale, causal)
    m, m_strides, kind = K._mask_args(mask, (B, H, Sq, Sk), q)
    out, lse = K._empty_out(q), torch.empty((B, H, Sq), device=device, dtype=torch.float32)
    K._launch_pointer(q, k, v, m, m_strides, kind, out, lse, scale * K.LOG2E, causal, True)
    assert_close_to_ref(out, ref, eager, atol=1e-2 if dtype == torch.bfloat16 else 1e-3, what="pointer kernel")
    s64 = (q.double().cpu() @ k.double().cpu().transpose(-2, -1)) * scale
    if mask is not None:
        s64 = s64 + mask.double().cpu()
    if causal:
        s64 = s64.masked_fill(~torch.ones(Sq, Sk, dtype=torch.bool, device="cpu").tril(), float("-inf"))
    assert (lse.double().cpu() - s64.logsumexp(-1)).abs().max().item() < 1e-2
    if mask is None and (dtype == torch.float16 or device != "cpu"):
        # the TMA kernel serves unmasked attention (the interpreter's TMA loads garble bf16: GPU only)
        out2, lse2 = K._empty_out(q), torch.empty_like(lse)
        K._launch_tma(q, k, v, out2, lse2, scale * K.LOG2E, causal, True)
        assert_close_to_ref(out2, ref, eager, atol=1e-2 if dtype == torch.bfloat16 else 1e-3, what="TMA kernel")
        assert (lse2 - lse).abs().max().item() < 1e-3


@pytest.mark.parametrize("kernel", ["pointer", "tma"])
def test_causal_forward_in_lpt_order(kernel, device, monkeypatch):
    # CAUSAL_LPT: a flat grid over groups of heads, each group's longest query blocks first. 2 x 3 query heads
    # (GQA, 3 KV heads) in groups of 4: one whole group and a last group of 2; 77 rows in 16-row blocks (the
    # last one ragged). Every (query block, head) must be computed exactly once: the output matches fp64
    # and equals the head-major launch's bit for bit
    monkeypatch.setattr(K, "CAUSAL_LPT", True)
    B, Hq, Hkv, S, D = 2, 3, 3, 77, 64
    monkeypatch.setattr(K, "LPT_L2_BYTES", 4 * 2 * S * D * 2)  # the keys and values of 4 heads, fp16
    assert K._lpt(B * Hq, S, D, 2, True) == (True, 4) and K._lpt(B * Hq, S, D, 2, False) == (False, 1)
    dtype = torch.float16  # (the interpreter's TMA loads garble bf16)
    if kernel == "pointer":
        monkeypatch.setattr(K._attn_fwd_kernel, "configs", [K._cfg(16, 32, 4, 1)])
        monkeypatch.setattr(K._attn_fwd_kernel, "cache", {})
    elif device == "cpu":
        monkeypatch.setattr(K._attn_fwd_tma_kernel, "configs", [K._cfg(16, 32, 4, 1, K._tma_block_hook)])
        monkeypatch.setattr(K._attn_fwd_tma_kernel, "cache", {})
    q, k, v = _qkv(B, Hq, Hkv, S, S, D, dtype, device, seed=11)

    def run():
        out, lse = K._empty_out(q), torch.empty((B, Hq, S), device=device, dtype=torch.float32)
        if kernel == "pointer":
            m, m_strides, kind = K._mask_args(None, (B, Hq, S, S), q)
            K._launch_pointer(q, k, v, m, m_strides, kind, out, lse, D ** -0.5 * K.LOG2E, True, True)
        else:
            K._launch_tma(q, k, v, out, lse, D ** -0.5 * K.LOG2E, True, True)
        return out, lse

    out, lse = run()
    ref = K.attention_ref(q, k, v, None, D ** -0.5, True, upcast=True)
    assert_close_to_ref(out, ref, _sdpa(q, k, v, None, D ** -0.5, True), atol=1e-3, what=f"{kernel}, LPT order")
    monkeypatch.setattr(K, "CAUSAL_LPT", False)
    out2, lse2 = run()
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


@pytest.mark.parametrize("bm,bn", [(32, 32), (16, 32), (32, 16)])
def test_causal_padded_rows_without_keys(bm, bn, device, monkeypatch):
    # HF decoders' SDPA mask on the GPU: where(keep & (kv_idx <= q_idx), 0, fill), a finite fill. A row with a
    # kept key attends causally over the kept keys; a row with none (left padding's) gets the fill on every
    # score and attends over all keys, the ones past the diagonal too, as eager computes it
    monkeypatch.setattr(K._attn_fwd_kernel, "configs", [K._cfg(bm, bn, 4, 1)])
    monkeypatch.setattr(K._attn_fwd_kernel, "cache", {})
    B, Hq, Hkv, S, D = 4, 4, 2, 77, 64
    q, k, v = _qkv(B, Hq, Hkv, S, S, D, torch.bfloat16, device, transposed=True, seed=5)
    first = torch.tensor([0, 20, 45, S])  # no padding; inside a block; across blocks; no key at all
    keep = torch.arange(S)[None, :] >= first[:, None]
    keep[1, 50] = False  # a hole: rows past it still keep keys
    fill = -65536.0
    keys = torch.where(keep, 0.0, fill).to(torch.bfloat16).view(B, 1, 1, S).to(device)
    full = torch.where(keep[:, None, None, :] & torch.ones(S, S, dtype=torch.bool).tril(), 0.0, fill)
    full = full.to(device=device, dtype=torch.bfloat16)
    out = torch.ops.tritonfuse.attention_causal_padded(q, k, v, keys, D ** -0.5, fill)
    ref = K.attention_ref(q, k, v, full, D ** -0.5, False, upcast=True)
    assert_close_to_ref(out, ref, _sdpa(q, k, v, full, D ** -0.5, False), atol=1e-2, what="causal padded")
    # the rows without keys differ from what the causal flag alone gives them
    causal_only = K.attention_ref(q, k, v, keys, D ** -0.5, True, upcast=True)
    assert (causal_only[2, :, :45] - ref[2, :, :45]).abs().max() > 0.1
    with pytest.raises(ValueError, match="finite negative fill"):
        torch.ops.tritonfuse.attention_causal_padded(q, k, v, keys, D ** -0.5, float("-inf"))


def _spy_launches(monkeypatch, meta: str) -> list:
    """The value of the keyword ``meta`` in each kernel launch through ``registry.launcher`` from now on."""
    seen = []
    real = registry.launcher

    def spy(kernel):
        launch = real(kernel)

        class Grid:
            def __getitem__(self, grid):
                def call(*args, **kwargs):
                    seen.append(kwargs.get(meta))
                    return launch[grid](*args, **kwargs)
                return call
        return Grid()

    monkeypatch.setattr(registry, "launcher", spy)
    return seen


@pytest.mark.parametrize("mask_kind,read_as,causal", [("bool_keypad", 3, False), ("bool_keypad", 3, True),
                                                       ("float_min_keypad", 4, False), ("bool_full", 1, False)])
def test_key_padding_mask_read_once_per_tile(mask_kind, read_as, causal, device, monkeypatch):
    # a mask the same for every query (zero stride over queries) is read as one vector of keys per tile
    kinds = _spy_launches(monkeypatch, "MASK_KIND")
    B, H, Sq, Sk, D = 2, 2, 45, 70, 64
    q, k, v = _qkv(B, H, H, Sq, Sk, D, torch.float16, device, transposed=True, seed=5)
    mask = _mask(mask_kind, B, H, Sq, Sk, torch.float16, device)
    out = torch.ops.tritonfuse.attention(q, k, v, mask, D ** -0.5, causal)
    assert kinds == [read_as]
    ref = K.attention_ref(q, k, v, mask, D ** -0.5, causal, upcast=True)
    assert_close_to_ref(out, ref, _sdpa(q, k, v, mask, D ** -0.5, causal), atol=1e-3)


@pytest.mark.parametrize("fill,dtype,skips", [(None, torch.float16, True), ("min", torch.float16, True),
                                               (-10000.0, torch.bfloat16, True), (-30.0, torch.float16, False)])
@pytest.mark.parametrize("causal", [False, True])
def test_padding_mask_skips_the_key_blocks_it_drops(fill, dtype, skips, causal, device, monkeypatch):
    # a key-padding mask (bool, or an additive fill of finfo.min or -10000, which bf16 holds as -9984): the
    # forward and backward skip the key blocks it drops whole, with the same bits as reading them; a soft
    # fill (-30) drops nothing. Batch 1 keeps keys 0-69, batch 2 keys 140-299 (causal additive masks keep the
    # leading blocks: a row before the first kept key averages over the fill, as eager), batch 3 none; the
    # dropped blocks' K and V are then made NaN, which only a read of them could bring into the results. (The
    # mask read only at the ends of a run of kept keys, RUN_PADDING, rounds otherwise on a GPU: off here.)
    monkeypatch.setattr(K, "RUN_PADDING", False)
    B, Hq, Hkv, Sq, Sk, D = 4, 4, 2, 45, 300, 32
    q, k, v = _qkv(B, Hq, Hkv, Sq, Sk, D, dtype, device, transposed=True, seed=3)
    pos = torch.arange(Sk)
    keep = torch.stack([pos >= 0, pos < 70, pos >= 140, pos < 0]).view(B, 1, 1, Sk)
    fv = torch.finfo(dtype).min if fill == "min" else fill
    mask = (keep if fill is None else torch.where(keep, 0.0, fv).to(dtype)).to(device)
    dout = fresh(B, Hq, Sq, D, dtype=dtype, device=device, seed=9)
    scale = D ** -0.5

    def run(k, v):
        out, lse = torch.ops.tritonfuse.attention_fwd(q, k, v, mask, scale, causal)
        return (torch.ops.tritonfuse.attention(q, k, v, mask, scale, causal), out, lse,
                *torch.ops.tritonfuse.attention_bwd(dout, q, k, v, out, lse, mask, scale, causal))

    monkeypatch.setattr(K, "TRIM_PADDING", False)
    every = run(k, v)
    monkeypatch.setattr(K, "TRIM_PADDING", True)
    trimmed = run(k, v)
    for name, a, b in zip(("out", "fwd out", "lse", "dq", "dk", "dv"), trimmed, every):
        assert torch.equal(a, b), name
    ref = K.attention_ref(q, k, v, mask, scale, causal, upcast=True)
    assert_close_to_ref(trimmed[0], ref, _sdpa(q, k, v, mask, scale, causal), atol=1e-3 if dtype == torch.float16 else 1e-2)

    kn, vn = k.clone(), v.clone()  # every config's BLOCK_N divides 128: these blocks are dropped whole
    for t in (kn, vn):
        t[1, :, 128:] = float("nan")
        if fill is None or not causal:
            t[2, :, :128] = float("nan")
    nan = run(kn, vn)
    if skips:
        assert torch.equal(nan[0], every[0]) and torch.equal(nan[2], every[2])
        dk, dv = nan[4], nan[5]
        assert torch.isfinite(nan[3]).all() and (dk[1, :, 128:] == 0).all() and (dv[1, :, 128:] == 0).all()
        assert torch.equal(dk[0], every[4][0]) and torch.equal(dv[0], every[5][0])
    elif not causal:  # kept keys: read, and NaN there, as eager gives (causal rows 0-44 never see key 128)
        assert nan[0][1].isnan().all() and nan[0][0].isfinite().all()


@pytest.mark.parametrize("additive", [False, True])
def test_a_run_of_kept_keys_reads_its_mask_only_at_its_ends(additive, device, monkeypatch):
    # RUN_PADDING: a key-padding mask whose kept keys are one run (keys 0-299; 37-249, both ends inside a
    # block) has its inner key blocks run without the mask, with the same bits as reading it everywhere in
    # the interpreter (compiled for a GPU, the unmasked loop's arithmetic rounds otherwise: there to a few
    # units in the last place, far below what a key wrongly kept or dropped would change), as has a lone key
    # (bool: a run of one, all its blocks ends); one with a hole (0-199 less 100-109) is not a run and reads
    # the mask in every block, nor is, as an additive mask (HF's eager attention: 0 where kept, finfo.min where
    # not), a run that adds 0.5 to one of its keys
    runs = _spy_launches(monkeypatch, "RUN")
    B, H, Sq, Sk, D = 4, 2, 41, 300, 32
    q, k, v = _qkv(B, H, H, Sq, Sk, D, torch.float16, device, transposed=True, seed=11)
    pos = torch.arange(Sk)
    keep = torch.stack([pos >= 0, (pos >= 37) & (pos < 250), (pos < 200) & ((pos < 100) | (pos >= 110)),
                        pos == 150 if not additive else pos >= 0]).view(B, 1, 1, Sk)
    mask = keep
    if additive:
        mask = torch.where(keep, 0.0, torch.finfo(torch.float16).min).to(torch.float16)
        mask[3, ..., 200] = 0.5
    mask = mask.to(device)
    scale = D ** -0.5
    monkeypatch.setattr(K, "RUN_PADDING", False)
    every = torch.ops.tritonfuse.attention_fwd(q, k, v, mask, scale, False)
    monkeypatch.setattr(K, "RUN_PADDING", True)
    ends = torch.ops.tritonfuse.attention_fwd(q, k, v, mask, scale, False)
    assert runs == [False, True]
    if device == "cpu":
        assert torch.equal(ends[0], every[0]) and torch.equal(ends[1], every[1])
    else:
        torch.testing.assert_close(ends[0], every[0], rtol=0, atol=1e-3)
        torch.testing.assert_close(ends[1], every[1], rtol=0, atol=1e-4)
    ref = K.attention_ref(q, k, v, mask, scale, False, upcast=True)
    assert_close_to_ref(ends[0], ref, _sdpa(q, k, v, mask, scale, False), atol=1e-3)


def test_tma_kernel_matches_pointer_kernel(device):
    # the check the TMA forward passes before its first use (Hopper); under the interpreter on the CPU too
    K._tma_checked.clear()
    assert K._tma_self_check(torch.device(device), torch.float16)
    assert K._tma_failed is None


def test_tma_kernel_disabled_when_it_disagrees(monkeypatch, device):
    monkeypatch.setattr(K, "_tma_failed", None)
    monkeypatch.setattr(K, "_tma_checked", {})
    monkeypatch.setattr(K, "_launch_tma", lambda q, k, v, out, lse, *a: (out.zero_(), lse.zero_()))
    with pytest.warns(UserWarning, match="TMA kernel failed"):
        assert not K._tma_self_check(torch.device(device), torch.float16)
    assert "differ" in K._tma_failed


def _ws_launch(q, k, v, causal, configs, monkeypatch):
    monkeypatch.setattr(K._attn_fwd_ws_kernel, "configs", configs)
    B, H, Sq, D = q.shape
    out, lse = K._empty_out(q), torch.empty((B, H, Sq), device=q.device, dtype=torch.float32)
    K._launch_ws(q, k, v, out, lse, D ** -0.5 * K.LOG2E, causal, True, tune=False)
    return out, lse


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("Sk", [150, 128])
@pytest.mark.parametrize("square", [False, True])
def test_warp_specialized_forward(causal, Sk, square, device, monkeypatch):
    # the warp-specialized kernel's one loop masks every key block as needed (the diagonal, the ragged end
    # unless KEYS_EVEN); its configs without specialization take the two loops. GQA, strided operands, query
    # rows in a ragged last block. Under the interpreter both match the TMA kernel bit for bit
    if device == "cuda" and (not K._HAS_WS or K.capability(torch.device(device))[0] != 9):
        pytest.skip("warp specialization is built for sm_90")
    if device == "cuda" and (causal, True) not in K.WS_MODES:
        pytest.skip("causal masks: triton 3.6's partitioner gets the second consumer's rows wrong (WS_MODES)")
    B, Hq, Hkv, D = 2, 4, 2, 64
    Sq = Sk if square else 70  # (causal: aligned top-left, as SDPA's is_causal)
    q, k, v = _qkv(B, Hq, Hkv, Sq, Sk, D, torch.float16, device, transposed=True, seed=13)
    k = k.clone()
    k[:, :, 100:110] *= 6  # running maxima jump mid-row
    ref = K.attention_ref(q, k, v, None, D ** -0.5, causal, upcast=True)
    eager = _sdpa(q, k, v, None, D ** -0.5, causal)
    if device == "cpu":
        runs = {ws: _ws_launch(q, k, v, causal, [K._ws_cfg(32, 32, 1, ws)], monkeypatch) for ws in (True, False)}
        out, lse = K._empty_out(q), torch.empty((B, Hq, Sq), dtype=torch.float32)
        K._launch_tma(q, k, v, out, lse, D ** -0.5 * K.LOG2E, causal, True)
        for o, l in runs.values():
            assert torch.equal(o, out) and torch.equal(l, lse)
    else:
        runs = {str(c): _ws_launch(q, k, v, causal, [c], monkeypatch) for c in K._WS_CONFIGS}
    for o, _ in runs.values():
        assert_close_to_ref(o, ref, eager, atol=1e-3, what="warp-specialized kernel")


def test_warp_specialized_kernel_checks_each_config(monkeypatch, device):
    # before its first use at a head dim, every config must reproduce the pointer kernel (the autotuner may
    # pick any of them at a site's shapes)
    if device == "cuda":
        pytest.skip("a CPU check of the checking")
    configs = [K._ws_cfg(32, 32, 1), K._ws_cfg(16, 32, 1, ws=False)]
    monkeypatch.setattr(K._attn_fwd_ws_kernel, "configs", configs)
    monkeypatch.setattr(config, "warp_specialize", "1")
    monkeypatch.setattr(K, "_ws_failed", None)
    monkeypatch.setattr(K, "_tma_checked", {})
    monkeypatch.setattr(K, "capability", lambda dev: (9, 0))
    seen = []
    real = K._launch_ws

    def spy(*a, **kw):
        seen.append((K._attn_fwd_ws_kernel.configs[0].kwargs["BLOCK_M"], a[6]))
        return real(*a, **kw)

    monkeypatch.setattr(K, "_launch_ws", spy)
    q = torch.empty(1, 2, 8, 64, dtype=torch.float16)
    assert K._ws_ok(q) and K._ws_ok(q)  # checked once
    assert seen == [(32, False), (16, False)]  # WS_MODES: unmasked, no log-sum-exp
    assert K._attn_fwd_ws_kernel.configs == configs
    monkeypatch.setattr(config, "warp_specialize", "0")
    assert not K._ws_ok(q)
    monkeypatch.setattr(config, "warp_specialize", "1")
    monkeypatch.setattr(K, "capability", lambda dev: (10, 0))  # Blackwell: another partitioner, not built for
    assert not K._ws_ok(q)


def test_warp_specialized_kernel_disabled_when_it_disagrees(monkeypatch, device):
    monkeypatch.setattr(config, "warp_specialize", "1")
    monkeypatch.setattr(K, "_ws_failed", None)
    monkeypatch.setattr(K, "_tma_checked", {})
    monkeypatch.setattr(K, "capability", lambda dev: (9, 0))
    monkeypatch.setattr(K, "_launch_ws", lambda q, k, v, out, lse, *a, **kw: (out.zero_(), lse.zero_()))
    q = torch.empty(1, 2, 8, 64, dtype=torch.float16, device=device)
    with pytest.warns(UserWarning, match="warp-specialized attention kernel failed"):
        assert not K._ws_ok(q)
    assert "differ" in K._ws_failed
    assert not K._ws_ok(q)


def test_forward_falls_back_from_the_warp_specialized_kernel(monkeypatch, device):
    # a launch that fails: one warning, the TMA kernel serves this call and every later one
    calls = []
    monkeypatch.setattr(K, "_ws_failed", None)
    monkeypatch.setattr(K, "_tma_ok", lambda *ts: True)
    monkeypatch.setattr(K, "_tma_self_check", lambda dev, dtype: True)
    monkeypatch.setattr(K, "_ws_ok", lambda q: K._ws_failed is None)

    def ws(*a, **kw):
        calls.append("ws")
        raise RuntimeError("out of resources")

    monkeypatch.setattr(K, "_launch_ws", ws)
    monkeypatch.setattr(K, "_launch_tma", lambda *a: calls.append("tma"))
    q, k, v = _qkv(1, 2, 2, 40, 40, 64, torch.float16, device)
    # WS_MODES: not for a causal call or one that keeps the log-sum-exp (training)
    K._forward(q, k, v, None, 0.125, True, False)
    K._forward(q, k, v, None, 0.125, False, True)
    assert calls == ["tma", "tma"] and K._ws_failed is None
    with pytest.warns(UserWarning, match="warp-specialized attention kernel failed"):
        K._forward(q, k, v, None, 0.125, False, False)
    K._forward(q, k, v, None, 0.125, False, False)
    assert calls == ["tma", "tma", "ws", "tma", "tma"] and "out of resources" in K._ws_failed


@pytest.mark.parametrize("inlined", [True, False])
def test_probe_runs_the_kernel_the_site_will_run(monkeypatch, device, inlined):
    # an inlined site runs the pointer kernel: its probe must not compile (and self-check) the TMA kernel,
    # which serves op calls only; an op-called site's probe goes through the TMA path where it applies
    from tritonfuse import inline

    tma_calls = []
    monkeypatch.setattr(registry, "_failed", {})
    monkeypatch.setattr(inline, "will_inline", lambda op, dev: inlined)
    monkeypatch.setattr(K, "_tma_ok", lambda *ts: True)
    monkeypatch.setattr(K, "_tma_self_check", lambda dev, dtype: tma_calls.append(dtype) and False)
    assert K.probe(device, torch.float16, 64, "none", False, False) is None
    assert tma_calls == ([] if inlined else [torch.float16])


def test_unsupported_operands():
    q = torch.empty(1, 2, 8, 8, dtype=torch.float16)
    assert "head dim 8" in K.unsupported(q, q, q, None)
    q = torch.empty(1, 3, 8, 64, dtype=torch.float16)
    k = torch.empty(1, 2, 8, 64, dtype=torch.float16)
    assert "multiple" in K.unsupported(q, k, k, None)
    assert "mask" in K.unsupported(q, q, q, torch.zeros(2, 3, 8, 8, dtype=torch.float16))
    assert "mixed dtypes" in K.unsupported(q, q.float(), q, None)


# --- patterns ----------------------------------------------------------------------------------------


def _compile_check(fn, *args, expect, atol=2e-3, token="", **kwargs):
    # the ops of the graph the passes left, for a failure's message (no site at all: were the attention
    # GEMMs padded, lowered otherwise, or was the graph served from a cache, where no pass runs and the
    # list stays empty?); a constant token: caching as without it (``token``: another cache entry, for a
    # test that changes what the passes do where Inductor's cache key cannot see it)
    ops = GraphOps("test_attention._compile_check" + token)
    with torch.no_grad():
        ref = fn(*args, **kwargs)
        with config.patch(patterns="attention"):
            out = torch.compile(fn, backend="tritonfuse", options={"post_grad_custom_pre_pass": ops})(*args, **kwargs)
    assert tritonfuse.counters()["attention"] == expect, (tritonfuse.sites(), registry.errors(), ops.ops)
    # on a GPU the kernels are inlined into Inductor's code: a graph it could not compile so would be
    # retried with op calls (slower, and a second compile)
    assert not [e for e in registry.errors() if "inlining failed" in e]
    return out, ref


def _counts(m, r, f):
    return {"matched": m, "replaced": r, "fallback": f}


SDPA_FORMS = {
    "plain": lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v),
    "causal": lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    "bool_mask": lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
    "float_mask": lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=torch.where(m, 0.0, -1e4).to(q.dtype)),
    "gqa_scale": lambda q, k, v, m: F.scaled_dot_product_attention(q, k[:, :1], v[:, :1], scale=0.3, enable_gqa=True),
}


@pytest.mark.parametrize("form", list(SDPA_FORMS))
def test_sdpa_forms(form, device):
    q, k, v = _qkv(2, 2, 2, 37, 37, 80, torch.float16, device, transposed=True)
    m = _mask("bool_keypad", 2, 2, 37, 37, torch.float16, device)
    out, eager = _compile_check(SDPA_FORMS[form], q, k, v, m, expect=_counts(1, 1, 0))
    ref = SDPA_FORMS[form](*(x.double() for x in (q, k, v)), m)
    assert_close_to_ref(out, ref, eager, atol=1e-3)


INF_MASKS = {
    # the forms a -inf additive mask takes: HF's, and SDPA's own conversion of a bool mask on CUDA
    "python_scalars": lambda m, dt: torch.where(m, 0.0, float("-inf")).to(dt),
    "scalar_tensors": lambda m, dt: torch.where(m, torch.scalar_tensor(0.0, dtype=dt, device=m.device),
                                                torch.scalar_tensor(float("-inf"), dtype=dt, device=m.device)),
    "negated": lambda m, dt: torch.where(~m, float("-inf"), 0.0).to(dt),
    "masked_fill": lambda m, dt: torch.zeros_like(m, dtype=dt).masked_fill(m.logical_not(), float("-inf")),
}


@pytest.mark.parametrize("form", list(INF_MASKS))
def test_inf_additive_mask_read_as_its_bool(form, device):
    # a -inf additive mask is read as the bool it was built from (1 byte a score instead of 2), whichever
    # way the where holds its fills; a finite fill stays additive (SDPA_FORMS' float_mask)
    q, k, v = _qkv(2, 2, 2, 37, 37, 32, torch.float16, device, transposed=True)
    m = _mask("bool_full", 2, 2, 37, 37, torch.float16, device)

    def f(q, k, v, m):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=INF_MASKS[form](m, q.dtype))

    out, eager = _compile_check(f, q, k, v, m, expect=_counts(1, 1, 0))
    ref = f(*(x.double() for x in (q, k, v)), m)
    assert_close_to_ref(out, ref, eager, atol=1e-3)
    assert [s.detail.endswith("mask=(2, 1, 37, 37) bool") for s in tritonfuse.sites()] == [True], tritonfuse.sites()


def test_sdpa_with_one_visible_kv_repeat_reads_both_repeated(device):
    # K's heads repeated as HF's repeat_kv does (the kernel could read the 2 heads under it), V's tiled another
    # way: the site reads both as the 4 heads SDPA gets, rather than K and V with different head counts
    q, k, v = _qkv(2, 4, 2, 13, 13, 16, torch.float16, device)

    def f(q, k, v):
        B, H, S, D = k.shape
        k4 = k[:, :, None].expand(B, H, 2, S, D).reshape(B, 2 * H, S, D)
        return F.scaled_dot_product_attention(q, k4, v.repeat(1, 2, 1, 1))

    out, eager = _compile_check(f, q, k, v, expect=_counts(1, 1, 0))
    ref = f(*(x.double() for x in (q, k, v)))
    assert_close_to_ref(out, ref, eager, atol=1e-3)
    assert ["Hq=4 Hkv=4" in s.detail for s in tritonfuse.sites()] == [True]


@pytest.mark.parametrize("form", ["gqa_causal", "bool_mask"])
def test_sdpa_math_decomposition(form, device):
    # SDPA's math path (no fused kernel applies) is decomposed into bmm/softmax in fp32 with pre-scaled q, k
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = _qkv(2, 4, 2, 21, 21, 32, torch.float16, device)
    m = _mask("bool_keypad", 2, 4, 21, 21, torch.float16, device)

    def f(q, k, v, m):
        with sdpa_kernel([SDPBackend.MATH]):
            if form == "gqa_causal":
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            return F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                                  attn_mask=m)

    out, eager = _compile_check(f, q, k, v, m, expect=_counts(1, 1, 0))
    ref = K.attention_ref(q, k, v, m if form == "bool_mask" else None, 32 ** -0.5, form == "gqa_causal",
                          upcast=True)
    assert_close_to_ref(out, ref, eager, atol=1e-3)
    if form == "gqa_causal":
        # the math path repeats K/V heads under k's half of the scale, and builds the causal mask from two
        # iotas: served as GQA (K/V not repeated) with the causal flag (on CUDA, HF Llama's sdpa attention
        # with enable_gqa can take this path)
        detail = tritonfuse.sites()[0].detail
        assert "Hq=4 Hkv=2" in detail and "mask=none causal" in detail, detail


@pytest.mark.parametrize("fill", [float("-inf"), torch.finfo(torch.float16).min])
def test_sdpa_with_a_causal_mask_built_in_the_graph(fill, device):
    # where(key_pos <= query_pos, 0, fill), broadcast over batch and heads, as HF Llama hands SDPA on CUDA:
    # served with the causal flag (no mask read); an anti-causal mask stays a mask
    q, k, v = _qkv(2, 4, 2, 19, 19, 32, torch.float16, device)

    def f(q, k, v, flip=False):
        i = torch.arange(q.shape[2], device=q.device)
        keep = (i[None, :] >= i[:, None]) if flip else (i[None, :] <= i[:, None])
        m = torch.where(keep, 0.0, fill).to(q.dtype)[None, None].expand(q.shape[0], 1, -1, -1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True)

    out, eager = _compile_check(f, q, k, v, expect=_counts(1, 1, 0))
    assert "mask=none causal" in tritonfuse.sites()[0].detail, tritonfuse.sites()[0].detail
    assert_close_to_ref(out, K.attention_ref(q, k, v, None, 32 ** -0.5, True, upcast=True), eager, atol=1e-3)
    torch._dynamo.reset()
    tritonfuse.reset()
    out, eager = _compile_check(f, q, k, v, True, expect=_counts(1, 1, 0))
    assert "causal" not in tritonfuse.sites()[0].detail, tritonfuse.sites()[0].detail
    torch.testing.assert_close(out, eager, atol=2e-3, rtol=2e-3)


HANDWRITTEN = {
    "div_sqrt_d": lambda q, k, v, m: torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1) @ v,
    "masked_fill": lambda q, k, v, m: torch.softmax(
        (q @ k.transpose(-2, -1) * 0.1).masked_fill(~m, float("-inf")), -1) @ v,
    "masked_fill_finite": lambda q, k, v, m: torch.softmax(
        (q @ k.transpose(-2, -1) * 0.1).masked_fill(m == 0, -1e4), -1) @ v,
    "additive_fp32_softmax": lambda q, k, v, m: torch.softmax(
        q @ k.transpose(-2, -1) * 0.1 + torch.where(m, 0.0, -65504.0).to(q.dtype), -1,
        dtype=torch.float32).to(q.dtype) @ v,
    "mask_plus_scores": lambda q, k, v, m: torch.softmax(
        torch.where(m, 0.0, -1e4).to(q.dtype) + q @ k.transpose(-2, -1), -1) @ v,
}


@pytest.mark.parametrize("form", list(HANDWRITTEN))
def test_handwritten_forms(form, device):
    q, k, v = _qkv(2, 2, 2, 21, 21, 32, torch.float16, device, transposed=True)
    m = _mask("bool_keypad", 2, 2, 21, 21, torch.float16, device)
    drop = torch.nn.Dropout(0.1).eval()  # a no-op in eval mode, as in models
    out, eager = _compile_check(lambda *a: drop(HANDWRITTEN[form](*a)), q, k, v, m, expect=_counts(1, 1, 0))
    ref = HANDWRITTEN[form](*(x.double() for x in (q, k, v)), m)
    assert_close_to_ref(out, ref, eager, atol=1e-3)


def test_a_site_whose_replacement_raises_is_counted_as_left_to_inductor(monkeypatch, device):
    # the site was recorded as replaced before its replacement raised: it is counted as Inductor's, with the
    # error, and the model runs (unguarded, the attention pass failed and no site was recorded)
    import sys

    import torch._functorch.config as fconfig
    import torch._inductor.config as iconfig
    from torch._inductor.pattern_matcher import Match

    from tritonfuse.patterns import attention as P

    real = Match.replace_by_example

    def replace(self, *args, **kwargs):
        if sys._getframe(1).f_globals.get("__name__") == P.__name__:  # ours only, not Inductor's own passes
            raise RuntimeError("simulated replacement bug")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Match, "replace_by_example", replace)
    q, k, v = _qkv(2, 2, 2, 21, 21, 32, torch.float16, device, transposed=True)
    m = _mask("bool_keypad", 2, 2, 21, 21, torch.float16, device)
    f = HANDWRITTEN["masked_fill_finite"]
    with torch.no_grad(), config.patch(patterns="attention"), iconfig.patch(fx_graph_cache=False), \
            fconfig.patch(enable_autograd_cache=False), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(f, backend="tritonfuse")(q, k, v, m)
    assert tritonfuse.counters()["attention"] == _counts(1, 0, 1), (tritonfuse.sites(), registry.errors())
    assert "RuntimeError: simulated replacement bug" in tritonfuse.sites()[0].reason
    assert len([w for w in caught if "simulated replacement bug" in str(w.message)]) == 1
    torch.testing.assert_close(out, f(q, k, v, m), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("offset,causal", [(0, True), (3, False)])
def test_materialised_causal_mask(offset, causal, device):
    # where(key <= query + offset, 0, min): offset 0 is SDPA's causal mask (served as the flag), 3 is not
    def f(q, k, v):
        pos = torch.arange(q.shape[-2], device=q.device)
        keep = pos[None, None, None, :] <= pos[None, None, :, None] + offset
        mask = torch.where(keep, 0.0, torch.finfo(torch.float16).min).to(q.dtype)
        return torch.softmax(q @ k.transpose(-2, -1) * 0.125 + mask, -1, dtype=torch.float32).to(q.dtype) @ v

    q, k, v = _qkv(2, 2, 2, 19, 19, 32, torch.float16, device)
    out, eager = _compile_check(f, q, k, v, expect=_counts(1, 1, 0))
    assert ("mask=none causal" in tritonfuse.sites()[0].detail) == causal
    assert_close_to_ref(out, f(q.double(), k.double(), v.double()), eager, atol=1e-3)


@pytest.mark.parametrize("query_side,causal", [("pos + 0", True), ("pos", True), ("pos + 1", False),
                                               ("pos - 0.5", False)])
def test_causal_mask_read_from_decomposed_graph(query_side, causal):
    # the mask as Inductor's decompositions trace it: iota, unsqueezes, where's scalars as scalar_tensor, and
    # on CUDA a ``+ 0`` offset kept in the graph (the H200 run's materialised masks were missed for that)
    from torch._inductor.decomposition import select_decomp_table
    from torch.fx.experimental.proxy_tensor import make_fx

    from tritonfuse.patterns import attention as A

    def mask(q):
        pos = torch.arange(q.shape[-2], device=q.device)
        query = eval(query_side, {"pos": pos[None, None, :, None]})
        keep = pos[None, None, None, :] <= query
        return torch.where(keep, 0.0, torch.finfo(torch.float16).min).to(q.dtype)

    gm = make_fx(mask, decomposition_table=select_decomp_table(), tracing_mode="fake")(
        torch.empty(2, 2, 19, 32, dtype=torch.float16, device="cpu"))
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    out = out[0] if isinstance(out, (list, tuple)) else out
    assert A._is_causal_mask(out, 19, 19) == causal
    assert not A._is_causal_mask(out, 19, 23)  # keys longer than queries: not the top-left mask


def test_reused_probabilities_not_rewritten(device):
    # the probabilities are returned too: nothing may be rewritten
    def f(q, k, v):
        p = torch.softmax(q @ k.transpose(-2, -1) * 0.125, -1)
        return p @ v, p

    q, k, v = _qkv(1, 2, 2, 17, 17, 32, torch.float16, device)
    (out, p), (ref, pref) = _compile_check(f, q, k, v, expect=_counts(0, 0, 0))
    torch.testing.assert_close(p, pref, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=2e-3)


def test_site_is_measured_on_its_own_device(monkeypatch, device):
    # the check reads meta stand-ins of the operands: the timing must still happen where the site runs
    # (measured on "meta", nothing was ever timed and every site was replaced)
    from tritonfuse import registry

    seen = []
    real = registry.measured_choice

    def spy(key, dev, *args, **kwargs):
        seen.append(torch.device(dev).type)
        return real(key, dev, *args, **kwargs)

    monkeypatch.setattr(registry, "measured_choice", spy)
    q, k, v = _qkv(2, 2, 2, 37, 37, 64, torch.float16, device)
    # a graph served from Inductor's cache (an earlier run's) would skip the pass, and the measuring
    # (the configs' own patch(): monkeypatch's undo deletes a config entry it thinks it added)
    aot = {"enable_autograd_cache": False} if hasattr(torch._functorch.config, "enable_autograd_cache") else {}
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(**aot):
        _compile_check(SDPA_FORMS["causal"], q, k, v, None, expect=_counts(1, 1, 0))
    assert seen == [torch.device(device).type]


@pytest.mark.parametrize("mshape,dtype", [((5, 1, 1, 37), torch.bool), ((3, 4, 1, 20), torch.float16),
                                          ((1, 1, 1, 33), torch.float32)])
def test_timing_masks(mshape, dtype):
    # a key-padding site is timed on a batch padded at the end and on one without padding
    b, sk = mshape[0], mshape[-1]

    def kept(m):
        return m if m.dtype == torch.bool else m == 0

    padded, unpadded = (kept(K._timing_mask(mshape, dtype, "cpu", p)) for p in (True, False))
    assert padded.shape == unpadded.shape == mshape
    assert unpadded.all()
    lengths = padded[:, 0, 0].sum(-1)
    for i in range(b):
        assert padded[i, :, 0, :lengths[i]].all() and not padded[i, :, 0, lengths[i]:].any()  # a prefix
    assert (padded == padded[:, :1, :1]).all()  # the same keys for every head and query
    assert (lengths >= sk // 2).all() and (lengths < sk).any()  # padding there is (keeps half or more)
    if b > 1:
        assert lengths[0] == sk
    if dtype != torch.bool:
        m = K._timing_mask(mshape, dtype, "cpu", True)
        assert set(m.unique().tolist()) == {0.0, float("-inf")}
    scattered = kept(K._timing_mask((2, 1, 7, 40), dtype, "cpu", None))
    assert scattered[..., 0].all() and not scattered.all()


def _stub_timings(monkeypatch, ratios, graphed_asks=None):
    """registry.measured_choice answering from ``ratios`` (key suffix -> ours/theirs), the keys asked kept
    (and each ask's ``graphed`` in ``graphed_asks``)."""
    asked = []

    def stub(key, dev, ours, theirs, graphed=False, **kw):
        suffix = key.rsplit("|", 1)[-1] if key.endswith("batch") else ""
        asked.append(suffix)
        if graphed_asks is not None:
            graphed_asks.append(graphed)
        r = ratios[suffix]
        return registry._decided({"ours_ms": 0.1 * r, "theirs_ms": 0.1, "ratio": r, "rounds": 40})

    monkeypatch.setattr(registry, "measured_choice", stub)
    return asked


@pytest.mark.parametrize("padded,unpadded,use,asked", [
    (0.90, 0.98, True, ["padded batch", "unpadded batch"]),  # wins padded, no loss unpadded
    (0.90, 1.04, False, ["padded batch", "unpadded batch"]),  # an unpadded batch would lose
    (0.99, 0.90, False, ["padded batch"]),  # no win by the margin where padding helps: not timed further
])
@pytest.mark.parametrize("train", [False, True])
def test_key_padding_site_timed_padded_and_unpadded(monkeypatch, padded, unpadded, use, asked, train):
    # (a training site too, its forward and backward timed together; as GPU time alone where the two ops
    # will be inlined: their op calls' host time is no cost of the inlined kernels)
    graphed = []
    got = _stub_timings(monkeypatch, {"padded batch": padded, "unpadded batch": unpadded}, graphed)
    from tritonfuse import inline

    monkeypatch.setattr(inline, "will_inline", lambda op, dev: op == torch.ops.tritonfuse.attention_bwd.default)
    q, k, v = (torch.empty(4, 12, 512, 64, dtype=torch.float16, device="meta") for _ in range(3))
    mask = torch.empty(4, 1, 1, 512, dtype=torch.float16, device="meta")
    rec = K.measure(q, k, v, mask, False, device="cpu", train=train)
    assert rec["use"] == use and got == asked
    assert graphed == [train] * len(asked)
    if not use:
        reason = registry.slower_reason(rec, rec.get("vs", "SDPA"))
        assert ("without padding" in reason) == (padded < 0.97), reason


@pytest.mark.parametrize("mshape", [None, (4, 1, 512, 512)])
def test_other_masks_timed_once(monkeypatch, mshape):
    got = _stub_timings(monkeypatch, {"": 0.9})
    q, k, v = (torch.empty(4, 12, 512, 64, dtype=torch.float16, device="meta") for _ in range(3))
    mask = None if mshape is None else torch.empty(mshape, dtype=torch.bool, device="meta")
    assert K.measure(q, k, v, mask, False, device="cpu")["use"] and got == [""]


@pytest.mark.parametrize("masked", [False, True])
def test_gqa_site_timed_against_sdpa_as_the_graph_runs_it(monkeypatch, masked):
    # SDPA's side of a GQA site: without a mask on the 2 K/V heads (enable_gqa, what the attention pass gives a
    # causal site it leaves to SDPA), with one on K/V repeated to the 4 query heads (the graph's repeat_kv)
    calls, real = [], F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        calls.append((k.shape[1], kw.get("enable_gqa", False)))
        return real(q, k, v, **kw)

    def stub(key, dev, ours, theirs, graphed=False, **kw):
        for f in theirs:
            f()
        return registry._decided({"ours_ms": 0.1, "theirs_ms": 0.1, "ratio": 1.0, "rounds": 40})

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(registry, "measured_choice", stub)
    q = torch.empty(2, 4, 16, 32, device="meta")
    k, v = (torch.empty(2, 2, 16, 32, device="meta") for _ in range(2))
    mask = torch.empty(2, 1, 16, 16, dtype=torch.bool, device="meta") if masked else None
    K.measure(q, k, v, mask, not masked, device="cpu")
    gqa = not masked and K.sdpa_takes_gqa(torch.device("cpu"), torch.float32, 32)
    assert calls == ([(2, True)] if gqa else [(4, False)]), calls


def test_padding_site_that_loses_unpadded_is_left_to_inductor(monkeypatch, device):
    # the report says why: the kernel measured slower than SDPA on a batch without padding
    _stub_timings(monkeypatch, {"padded batch": 0.8, "unpadded batch": 1.1})
    q, k, v = _qkv(2, 2, 2, 41, 41, 64, torch.float16, device)
    m = _mask("bool_keypad", 2, 2, 41, 41, torch.float16, device)
    aot = {"enable_autograd_cache": False} if hasattr(torch._functorch.config, "enable_autograd_cache") else {}
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(**aot):
        out, ref = _compile_check(SDPA_FORMS["bool_mask"], q, k, v, m, expect=_counts(1, 0, 1))
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=2e-3)
    (site,) = tritonfuse.sites()
    assert "slower than SDPA on a batch without padding" in site.reason, site.reason


def test_dynamic_sequence_length(device):
    # one compile serves several lengths (symbolic B and S; the head dim comes from the model's view)
    def split(x):
        return x.view(x.shape[0], x.shape[1], 2, 32).transpose(1, 2)

    def f(x, m):
        return F.scaled_dot_product_attention(split(x), split(x.flip(-1)), split(-x), attn_mask=m)

    compiled = torch.compile(f, backend="tritonfuse", dynamic=True)
    for S in (19, 23):
        x = fresh(2, S, 64, dtype=torch.float16, device=device, seed=S)
        m = _mask("bool_keypad", 2, 2, S, S, torch.float16, device)
        with torch.no_grad(), config.patch(patterns="attention"):
            out = compiled(x, m)
        ref = f(x.double(), m)
        assert_close_to_ref(out, ref, f(x, m), atol=1e-3)
    assert tritonfuse.counters()["attention"] == _counts(1, 1, 0)
    assert "Sq=s" in tritonfuse.sites()[0].detail  # the site was symbolic


def test_unsupported_head_dim_falls_back(device):
    q, k, v = _qkv(1, 2, 2, 17, 17, 8, torch.float16, device)
    out, ref = _compile_check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), q, k, v,
                              expect=_counts(1, 0, 1))
    assert "head dim 8" in tritonfuse.sites()[0].reason
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-3)


TRAIN_FORMS = {
    "plain": lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v),
    "causal": lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    "bool_mask": lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
    "float_mask_scale": lambda q, k, v, m: F.scaled_dot_product_attention(
        q, k, v, attn_mask=torch.where(m, 0.0, -1e4).to(q.dtype), scale=0.3),
}


def _train_compile(fn, *args, ops=None):
    """``fn`` compiled with the attention family alone, called with ``args`` (those that require grad are
    the leaves), then its backward against a random output gradient: (output, gradients, the call targets
    of the forward and backward graphs after our passes)."""
    ops = ops or GraphOps()
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    with config.patch(patterns="attention"):
        out = torch.compile(fn, backend="tritonfuse", options={"post_grad_custom_pre_pass": ops})(*args)
        dout = fresh(*out.shape, dtype=out.dtype, device=out.device, seed=11)
        grads = torch.autograd.grad(out, leaves, dout)
    return out, grads, dout, ops.ops


def _check_train_grads(fn, qkv, mask, out, grads, dout) -> None:
    """The compiled output and dQ, dK, dV within twice eager's own error of fp64's."""
    eager = fn(*qkv, mask)
    eager_grads = torch.autograd.grad(eager, qkv, dout)
    leaves = [x.detach().double().requires_grad_() for x in qkv]
    ref = fn(*leaves, mask)
    ref_grads = torch.autograd.grad(ref, leaves, dout.double())
    assert_close_to_ref(out, ref, eager, atol=2e-3)
    for what, g, r, e in zip(("dq", "dk", "dv"), grads, ref_grads, eager_grads):
        assert_close_to_ref(g, r, e, atol=2e-3, what=what)


def _sdpa_backward_left(ops) -> list:
    return [o for o in ops if "scaled_dot_product" in o and "backward" in o]


@pytest.mark.parametrize("form", list(TRAIN_FORMS))
def test_training_sdpa_served_forward_and_backward(form, device):
    # a training graph: the joint-graph pass replaces SDPA's forward (its log-sum-exp saved) and its backward
    # together by ours; output and dQ, dK, dV within twice eager's own error of fp64
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    q, k, v = (x.requires_grad_() for x in _qkv(2, 2, 2, 37, 37, 48, dtype, device, transposed=True))
    m = _mask("bool_keypad", 2, 2, 37, 37, dtype, device)
    fn = TRAIN_FORMS[form]
    out, grads, dout, ops = _train_compile(fn, q, k, v, m)
    assert tritonfuse.counters()["attention"] == _counts(1, 1, 0), (tritonfuse.sites(), registry.errors())
    assert tritonfuse.sites()[0].kernel == "attention[sdpa,train]"
    assert not _sdpa_backward_left(ops), ops
    _check_train_grads(fn, (q, k, v), m, out, grads, dout)


def _hf_padding_attention(q, k, v, keep, fill):
    # a padding mask as HF builds it, at the scores' size: where(keep[B, 1, 1, Sk] & (q_idx >= 0), 0, fill)
    S = q.shape[2]
    rows = torch.arange(S, device=q.device)[:, None] >= 0
    full = (keep[:, None, None, :] & rows).expand(q.shape[0], 1, S, S)
    m = torch.where(full, torch.tensor(0.0, device=q.device), torch.tensor(fill, device=q.device)).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m)


@pytest.mark.parametrize("fill", [-1e4, float("-inf")])
def test_training_padding_mask_read_as_its_keys(fill, device):
    # a training site's padding mask built at the scores' size is read as its [B, 1, 1, Sk] keys, as at
    # inference (the additive mask rebuilt from the keys: with a finite fill, a sequence with no key then
    # attends over all of them, as in eager). Output and dQ, dK, dV within twice eager's error of fp64
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    B, S = 3, 37
    q, k, v = (x.requires_grad_() for x in _qkv(B, 2, 2, S, S, 32, dtype, device, transposed=True))
    keep = torch.ones(B, S, dtype=torch.bool)
    keep[1, 23:] = False
    if math.isfinite(fill):
        keep[2] = False  # (with -inf, eager's rows without keys are NaN)
    keep = keep.to(device)
    fn = functools.partial(_hf_padding_attention, fill=fill)
    out, grads, dout, _ = _train_compile(fn, q, k, v, keep)
    assert tritonfuse.counters()["attention"] == _counts(1, 1, 0), (tritonfuse.sites(), registry.errors())
    assert f"mask=({B}, 1, 1, {S})" in tritonfuse.sites()[0].detail, tritonfuse.sites()
    _check_train_grads(fn, (q, k, v), keep, out, grads, dout)


@pytest.mark.parametrize("case", ["dropout", "learned_bias"])
def test_training_sdpa_not_served(case, device):
    # attention dropout (our kernels have none) and a mask that gets a gradient (a learned bias) stay
    # Inductor's. On CUDA they are SDPA sites, counted with the reason; on the CPU SDPA lowers them to its
    # math path, no site at all
    q, k, v = (x.requires_grad_() for x in _qkv(1, 2, 2, 17, 17, 32, torch.float32, device))
    bias = fresh(1, 2, 17, 17, device=device, seed=5).requires_grad_(case == "learned_bias")
    p = 0.1 if case == "dropout" else 0.0
    out, grads, dout, ops = _train_compile(lambda q, k, v, b: F.scaled_dot_product_attention(q, k, v, b, p),
                                           q, k, v, bias)
    assert all(torch.isfinite(g).all() for g in grads)
    sites = [s for s in tritonfuse.sites() if s.family == "attention"]
    assert all(s.status == "fallback" for s in sites), sites
    if device == "cuda":
        assert len(sites) == 1 and ("dropout" if case == "dropout" else "gradient") in sites[0].reason, sites
    else:
        assert not sites and not any("tritonfuse" in o for o in ops), (sites, ops)
    if case == "learned_bias":  # (dropout draws other numbers each call)
        eager_grads = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, bias), (q, k, v, bias), dout)
        for g, e in zip(grads, eager_grads):
            torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("aot_cache", [True, False])
def test_training_site_counted_when_served_from_the_cache(device, monkeypatch, tmp_path, aot_cache):
    # the joint-graph pass's sites are kept with the forward graph's record: a compile served from Inductor's
    # caches (AOTAutograd's, or the FX graph cache under a joint pass that ran) counts them once, as the first
    from torch._functorch import config as fconfig

    from tritonfuse import backend


    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    joint_runs = []
    real = backend.TritonfusePasses._joint
    monkeypatch.setattr(backend.TritonfusePasses, "_joint", lambda self, g: joint_runs.append(1) or real(self, g))
    q, k, v = (x.requires_grad_() for x in _qkv(1, 2, 2, 21, 21, 32, torch.float32, device))
    runs = []
    for _ in range(2):
        tritonfuse.reset()
        torch._dynamo.reset()
        before = len(joint_runs)
        with fconfig.patch(enable_autograd_cache=aot_cache):
            _train_compile(TRAIN_FORMS["causal"], q, k, v, None, ops=GraphOps("test_attention.train_cache"))
        runs.append(len(joint_runs) - before)
        assert tritonfuse.counters()["attention"] == _counts(1, 1, 0), (runs, tritonfuse.sites())
    # the second compile: AOTAutograd's cache served it, or the joint pass ran again and the FX graph cache
    # served the forward and backward graphs
    assert runs == ([1, 0] if aot_cache else [1, 1]), runs


def test_llama_training_step(device):
    # HF Llama (sdpa, GQA through repeat_kv, causal) in a training step: each layer's attention forward and
    # backward served; the parameters' gradients within twice eager's own error of an fp64 copy's
    dtype = torch.float16 if device == "cuda" else torch.float32
    model = _llama("sdpa", dtype, device).train()
    ref64 = _llama("sdpa", torch.float64, "cpu").train()
    ref64.load_state_dict({k: v.double().cpu() for k, v in model.state_dict().items()})
    ids, _ = _ids_and_padding(device)
    ops = GraphOps()
    with config.patch(patterns="attention"):
        compiled = torch.compile(model, backend="tritonfuse", options={"post_grad_custom_pre_pass": ops})
        compiled(input_ids=ids, use_cache=False).last_hidden_state.float().square().mean().backward()
    assert tritonfuse.counters()["attention"] == _counts(2, 2, 0), (tritonfuse.sites(), registry.errors())
    assert not _sdpa_backward_left(ops.ops), ops.ops
    # the causal flag set: without a cache (use_cache=False, as a training step runs) HF's mask is causal & a
    # packed-sequence test (its positions gathered per batch), read whole with the flag joined (the kernels
    # skip the blocks past the diagonal)
    details = [s.detail for s in tritonfuse.sites()]
    assert all(d.endswith(" causal") for d in details), details
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model(input_ids=ids, use_cache=False).last_hidden_state.float().square().mean().backward()
    ref64(input_ids=ids.cpu(), use_cache=False).last_hidden_state.square().mean().backward()
    ref = dict(ref64.named_parameters())
    for n, p in model.named_parameters():
        if "embed" not in n:  # (an embedding's gradient is a scatter of the others)
            assert_close_to_ref(got[n], ref[n].grad, p.grad, atol=1e-3 if dtype == torch.float16 else 1e-6, what=n)


# --- real models (tiny configs) ----------------------------------------------------------------------


def _bert(impl, dtype, device, layers=2):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(hidden_size=64, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=128,
                     vocab_size=100, attn_implementation=impl)
    torch.manual_seed(0)
    return BertModel(cfg).eval().to(device=device, dtype=dtype)


def _llama(impl, dtype, device):
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=100, attn_implementation=impl)
    torch.manual_seed(0)
    return LlamaModel(cfg).eval().to(device=device, dtype=dtype)


def _ids_and_padding(device, B=2, S=13):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 100, (B, S), generator=g, device="cpu").to(device)
    mask = torch.ones(B, S, dtype=torch.long, device=device)
    mask[1, 9:] = 0
    return ids, mask


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_bert_padding_mask(impl, device):
    model = _bert(impl, torch.float16, device)
    ids, mask = _ids_and_padding(device)
    out, ref = _compile_check(model, input_ids=ids, attention_mask=mask, expect=_counts(2, 2, 0))
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=1e-2, rtol=1e-2)
    # on the CPU sdpa's where(keep, 0, -inf) mask is read as the bool keep; eager's finfo.min mask stays
    # additive. On CUDA the graph hands SDPA a float mask either way (seen on the H200, commit 3d9f8a9:
    # "mask=(2, 1, 13, 13) float16" for sdpa too), served as an additive mask.
    details = [s.detail for s in tritonfuse.sites()]
    expect_bool = impl == "sdpa" and device == "cpu"
    assert all(("bool" in d) == expect_bool for d in details), details
    # HF builds the padding mask at the scores' size, [B, 1, Sq, Sk]; the kernel gets the [B, 1, 1, Sk] keys
    # it is built from, read once per tile of keys
    assert all(f"mask=({ids.shape[0]}, 1, 1, {ids.shape[1]})" in d for d in details), details


@pytest.mark.parametrize("offset,fill,narrowed", [(0, -65504.0, True), (None, float("-inf"), True),
                                                  (1, -65504.0, False)])
def test_padding_mask_narrowed_in_the_cuda_graph_form(offset, fill, narrowed):
    # HF's padding mask as Inductor's CUDA graph shows it (seen on the H200): the query positions of
    # ``q_idx >= 0`` are ``iota + 0``; an offset other than 0 could make positions negative: not narrowed
    from tritonfuse.patterns import attention as P

    aten, prims = torch.ops.aten, torch.ops.prims
    B, S = 2, 13
    g = torch.fx.Graph()

    def node(target, args, val, **kwargs):
        n = g.call_function(target, args, kwargs)
        n.meta["val"] = val
        return n

    pos = node(prims.iota.default, (S,), torch.arange(S), start=0, step=1)
    if offset is not None:
        pos = node(aten.add.Tensor, (pos, offset), torch.arange(S) + offset)
    q_pos = node(aten.unsqueeze.default, (pos, 1), torch.arange(S)[:, None])
    rows = node(aten.ge.Scalar, (q_pos, 0), torch.ones(S, 1, dtype=torch.bool))
    true = node(aten.full.default, ([], True), torch.tensor(True))
    rows = node(aten.bitwise_and.Tensor, (true, rows), torch.ones(S, 1, dtype=torch.bool))
    keys = g.placeholder("keys")
    keys.meta["val"] = torch.ones(B, 1, 1, S, dtype=torch.bool)
    both = node(aten.bitwise_and.Tensor, (rows, keys), torch.ones(B, 1, S, S, dtype=torch.bool))
    full = node(aten.expand.default, (both, [B, -1, S, S]), torch.ones(B, 1, S, S, dtype=torch.bool))
    zero = node(aten.full.default, ([], 0.0), torch.tensor(0.0, dtype=torch.float16))
    low = node(aten.full.default, ([], fill), torch.tensor(fill, dtype=torch.float16))
    mask = node(aten.where.self, (full, zero, low), torch.zeros(B, 1, S, S, dtype=torch.float16))
    got = P._narrow_mask(mask, S, S)
    assert (got is not None) == narrowed
    if narrowed:
        node_, build, val, causal, empty_fill, fills = got
        assert not causal and empty_fill is None and fills == (0.0, fill, torch.float16)
        assert node_ is keys and tuple(val.shape) == (B, 1, 1, S) and val.dtype == torch.float16
        keep = torch.rand(B, 1, 1, S) > 0.3
        want = torch.where(keep.expand(B, 1, S, S), torch.tensor(0.0), torch.tensor(fill)).half()
        assert torch.equal(build(keep).expand(B, 1, S, S), want)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_llama_gqa_causal(impl, device):
    model = _llama(impl, torch.float16, device)
    ids, _ = _ids_and_padding(device)
    out, ref = _compile_check(model, input_ids=ids, expect=_counts(2, 2, 0))
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=1e-2, rtol=1e-2)
    # GQA served without repeating K/V, and eager's materialised causal mask read as the causal flag
    details = [s.detail for s in tritonfuse.sites()]
    assert all("Hq=4 Hkv=2" in d and "mask=none causal" in d for d in details), details


def _hf_decoder_mask(device) -> str:
    # the dtype of HF's decoder mask in a tiny fp16 Llama's graph: a bool one on the CPU; on CUDA additive,
    # where(mask, 0, finfo.min) (seen on the H100: scripts/mask_form_probe.py)
    return "bool" if device == "cpu" else "float16"


def test_llama_packed_sequences_keep_their_mask(device):
    # position ids that restart mark sequences packed in one row: HF's mask (no cache) is then pos[kv] <=
    # pos[q] & a same-sequence test, over the position ids rather than the indices. The site is served with
    # the mask read whole (no causal flag: the ids are the user's), and the two sequences of a row do not
    # attend to each other. Position ids restart at 7 in row 0 and at 5 in row 1
    model = _llama("sdpa", torch.float16, device)
    ids, _ = _ids_and_padding(device)
    pos = torch.tensor([list(range(7)) + list(range(6)), list(range(5)) + list(range(8))], device=device)
    out, ref = _compile_check(model, input_ids=ids, position_ids=pos, use_cache=False, expect=_counts(2, 2, 0))
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=1e-2, rtol=1e-2)
    details = [s.detail for s in tritonfuse.sites()]
    assert all(d.endswith(f"mask=(2, 1, 13, 13) {_hf_decoder_mask(device)}") for d in details), details
    # (the packing is kept: row 0's second sequence, alone, gives its 6 outputs)
    with torch.no_grad():
        alone = model(input_ids=ids[:1, 7:], use_cache=False).last_hidden_state
    torch.testing.assert_close(out.last_hidden_state[:1, 7:], alone, atol=1e-2, rtol=1e-2)


def _gqa_served(device) -> bool:
    # where a mask-free SDPA site left to SDPA gets its K/V heads unrepeated (the pass's switch on, and a fused
    # kernel that takes them: the CPU's, or CUDA from sm80 on at these tests' half types and head dims)
    from tritonfuse.patterns import attention as P

    return P.SDPA_GQA and (device == "cpu" or torch.cuda.get_device_capability() >= (8, 0))


class _SdpaNodes(GraphOps):
    """Run after tritonfuse's passes: for each SDPA forward or backward node left in a graph, (op, whether
    it has a mask, is_causal); ``heads``: the heads of its q and its k, for each."""

    def __init__(self):
        super().__init__()
        self.heads = []

    def __call__(self, graph):
        from torch.fx.operator_schemas import normalize_function

        for n in graph.nodes:
            if n.op == "call_function" and "scaled_dot_product" in str(n.target):
                a = normalize_function(n.target, n.args, n.kwargs, normalize_to_only_use_kwargs=True).kwargs
                mask = a.get("attn_mask", a.get("attn_bias"))
                self.ops.append((str(n.target), mask is not None, bool(a.get("is_causal", False))))
                self.heads.append(tuple(a[x].meta["val"].shape[1] for x in ("query", "key")))


@pytest.mark.parametrize("cap", [None, "CONSTANT_NUMEL", "CONSTANT_BYTES"])
def test_llama_without_cache_mask_is_the_causal_flag(cap, device, monkeypatch):
    # without a KV cache (use_cache=False) HF builds its decoder mask as causal & a packed-sequence test over
    # its own positions (arange). That test depends on no graph input: computed at compile time it is True
    # everywhere, so the mask is exactly causal and the kernels get the causal flag and no mask. With the
    # constant computation capped below the mask's size (338 elements) or its tensors' bytes (more than
    # 2 KiB), the mask is read whole (with the flag joined)
    if cap is not None:
        from tritonfuse.patterns import attention as P

        monkeypatch.setattr(P, cap, 300 if cap == "CONSTANT_NUMEL" else 2048)
    model = _llama("sdpa", torch.float16, device)
    ids, _ = _ids_and_padding(device)
    out, ref = _compile_check(model, input_ids=ids, use_cache=False, expect=_counts(2, 2, 0), token=f"cap{cap}")
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=1e-2, rtol=1e-2)
    details = [s.detail for s in tritonfuse.sites()]
    # (HF's finite fill on CUDA stays additive, without the flag: _implies_causal takes bool masks)
    capped = {"bool": "bool causal", "float16": "float16"}[_hf_decoder_mask(device)]
    want = "mask=none causal" if cap is None else f"mask=(2, 1, 13, 13) {capped}"
    assert all(d.endswith(want) for d in details), details


@pytest.mark.parametrize("steps", ["integer", "float", "empty"])
def test_constant_mask_operand_computed_at_compile_time(steps, device):
    # a user's causal mask & an operand built from no input that is True everywhere: computed at compile
    # time over integers, the mask is exactly causal (the flag, no mask); one with a floating-point step is
    # not computed (the CPU's last bits may differ from the GPU's), and the mask is read with the flag; nor
    # one read from uninitialised memory (here True whatever it holds, but not a value to compute)
    q, k, v = _qkv(2, 2, 2, 37, 37, 32, torch.float16, device, transposed=True)

    def f(q, k, v):
        i = torch.arange(q.shape[2], device=q.device)
        if steps == "empty":
            near = torch.empty(1, q.shape[2], dtype=torch.int64, device=q.device) >= torch.iinfo(torch.int64).min
        else:
            j = i if steps == "integer" else i.float() * 0.5
            near = j[None, :] < 10 ** 6
        return F.scaled_dot_product_attention(q, k, v, attn_mask=(i[None, :] <= i[:, None]) & near)

    out, eager = _compile_check(f, q, k, v, expect=_counts(1, 1, 0))
    ref = f(*(x.double() for x in (q, k, v)))
    assert_close_to_ref(out, ref, eager, atol=1e-3)
    # (the operand not computed is read as keys: it holds no query axis. On CUDA, SDPA hands its bool mask
    # on as where(mask, 0, -65504), a finite fill, kept additive: seen on the H100 with torch 2.11)
    keys = "bool" if device == "cpu" else "float16"
    want = "mask=none causal" if steps == "integer" else f"mask=(1, 37) {keys} causal"
    assert [s.detail.endswith(want) for s in tritonfuse.sites()] == [True], tritonfuse.sites()


@pytest.mark.parametrize("window", [64, 5])
def test_sliding_window_within_reach_is_the_causal_flag(window, device):
    # HF Mistral's sliding-window mask (no cache): causal & kv_idx > q_idx - window & the packed-sequence
    # test. With the window past the sequence (64 > 13 tokens) that leaf is True everywhere at this size, so
    # the mask is exactly causal; with a window of 5 it is not, and the mask is read whole
    from transformers import MistralConfig, MistralModel

    cfg = MistralConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=128, vocab_size=100, sliding_window=window, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = MistralModel(cfg).eval().to(device=device, dtype=torch.float16)
    ids, _ = _ids_and_padding(device)
    out, ref = _compile_check(model, input_ids=ids, use_cache=False, expect=_counts(2, 2, 0))
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=1e-2, rtol=1e-2)
    details = [s.detail for s in tritonfuse.sites()]
    whole = {"bool": "bool causal", "float16": "float16"}[_hf_decoder_mask(device)]
    want = "mask=none causal" if window == 64 else f"mask=(2, 1, 13, 13) {whole}"
    assert all(d.endswith(want) for d in details), details


@pytest.mark.parametrize("train", [False, True], ids=["infer", "train"])
@pytest.mark.parametrize("positions", ["own", "packed"])
def test_causal_mask_left_to_sdpa_as_its_flag(positions, train, device, monkeypatch):
    # a site the kernels do not serve (here: every one, as if SDPA were measured faster) whose mask is
    # exactly causal is left to SDPA with is_causal=True and no mask, the SDPA the timing ran: in training
    # its backward too. Output and gradients as eager's. With user position ids that restart (packed
    # sequences) the mask is not causal alone: SDPA keeps it and no causal flag
    from tritonfuse.patterns import attention as P

    monkeypatch.setattr(K, "probe", lambda *a, **k: "left to SDPA (test)")
    dtype = torch.float16 if device == "cuda" else torch.float32
    model = _llama("sdpa", dtype, device).train(train)
    ids, _ = _ids_and_padding(device)
    kw = dict(input_ids=ids, use_cache=False)
    if positions == "packed":
        kw["position_ids"] = torch.tensor([list(range(7)) + list(range(6))] * 2, device=device)
    nodes = _SdpaNodes()
    with config.patch(patterns="attention"), torch.set_grad_enabled(train):
        compiled = torch.compile(model, backend="tritonfuse", options={"post_grad_custom_post_pass": nodes})
        out = compiled(**kw).last_hidden_state
        if train:
            out.float().square().mean().backward()
    assert tritonfuse.counters()["attention"] == _counts(2, 0, 2), (tritonfuse.sites(), registry.errors())
    reasons = [s.reason for s in tritonfuse.sites()]
    dropped = positions == "own"
    assert all(r.endswith(P.CAUSAL_NOTE) == dropped for r in reasons), reasons
    assert len(nodes.ops) == (4 if train else 2), nodes.ops  # (forward and backward ops in training)
    assert all(has_mask != dropped and causal == dropped for _, has_mask, causal in nodes.ops), nodes.ops
    # inference SDPA with the causal flag alone takes the 2 K/V heads (enable_gqa), not the graph's repeat of them
    gqa = dropped and not train and _gqa_served(device)
    assert nodes.heads == [(4, 2 if gqa else 4)] * len(nodes.ops), nodes.heads
    got = {n: p.grad.clone() for n, p in model.named_parameters()} if train else {}
    model.zero_grad()
    with torch.set_grad_enabled(train):
        ref = model(**kw).last_hidden_state
        if train:
            ref.float().square().mean().backward()
    tol = dict(atol=1e-2, rtol=1e-2) if dtype == torch.float16 else dict(atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out, ref, **tol)
    for n, p in model.named_parameters():
        if train:
            torch.testing.assert_close(got[n], p.grad, **tol, msg=n)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_llama_gqa_under_autocast(impl, device):
    # an fp32 model under autocast: RoPE's fp32 cos/sin make Q and K fp32 while V stays half, so autocast
    # casts the repeated K (and Q) to half before SDPA, and not V. The site is served, K/V heads unrepeated
    # on both sides (a cast of the 2 K heads, not of the repeated 4)
    # (with a padding mask HF repeats K/V by hand rather than pass enable_gqa to SDPA)
    model = _llama(impl, torch.float32, device)
    ids, mask = _ids_and_padding(device)
    half = torch.bfloat16 if device == "cpu" else torch.float16
    with torch.autocast(device, dtype=half):
        out, ref = _compile_check(model, input_ids=ids, attention_mask=mask, expect=_counts(2, 2, 0))
    keep = mask.bool()
    torch.testing.assert_close(out.last_hidden_state[keep], ref.last_hidden_state[keep], atol=2e-2, rtol=2e-2)
    details = [s.detail for s in tritonfuse.sites()]
    assert all("Hq=4 Hkv=2" in d for d in details), details
    # SDPA's mask becomes the causal flag and the keys; eager's finite-fill mask stays whole (as without autocast)
    assert all(("causal" in d) == (impl == "sdpa") for d in details), details


def test_causal_sdpa_takes_unrepeated_kv_under_autocast(device, monkeypatch):
    # an fp32 Llama under autocast, its sites left to SDPA with the causal flag: autocast casts the repeated K
    # (fp32 from RoPE) and Q to half; SDPA gets the 2 K/V heads, K cast before any repeat (enable_gqa)
    monkeypatch.setattr(K, "probe", lambda *a, **k: "left to SDPA (test)")
    model = _llama("sdpa", torch.float32, device)
    ids, _ = _ids_and_padding(device)
    half = torch.bfloat16 if device == "cpu" else torch.float16
    nodes = _SdpaNodes()
    with torch.no_grad(), torch.autocast(device, dtype=half), config.patch(patterns="attention"):
        ref = model(input_ids=ids, use_cache=False).last_hidden_state
        out = torch.compile(model, backend="tritonfuse", options={"post_grad_custom_post_pass": nodes})(
            input_ids=ids, use_cache=False).last_hidden_state
    assert tritonfuse.counters()["attention"] == _counts(2, 0, 2), (tritonfuse.sites(), registry.errors())
    gqa = _gqa_served(device)
    assert nodes.heads == [(4, 2 if gqa else 4)] * 2 and all(causal for _, _, causal in nodes.ops), nodes.heads
    torch.testing.assert_close(out.float(), ref.float(), atol=3e-2, rtol=3e-2)


class _RepeatKV(torch.nn.Module):
    # SDPA on K/V repeated to the query heads as HF's repeat_kv does, no mask
    def __init__(self, causal):
        super().__init__()
        self.causal = causal

    def forward(self, q, k, v):
        b, h, s, d = k.shape
        k, v = (t[:, :, None, :, :].expand(b, h, 2, s, d).reshape(b, h * 2, s, d) for t in (k, v))
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_without_mask_left_to_sdpa_takes_unrepeated_kv(causal, device, monkeypatch):
    # a mask-free SDPA site left to SDPA (as if measured faster) whose K/V the graph repeats: SDPA gets the
    # K/V heads as they are (enable_gqa), as the timing ran it, with the site's causal flag
    monkeypatch.setattr(K, "probe", lambda *a, **k: "left to SDPA (test)")
    dtype = torch.float16 if device == "cuda" else torch.float32
    q = fresh(2, 4, 37, 32, dtype=dtype, device=device)
    k, v = (fresh(2, 2, 37, 32, dtype=dtype, device=device, seed=s) for s in (1, 2))
    nodes = _SdpaNodes()
    model = _RepeatKV(causal)
    with torch.no_grad(), config.patch(patterns="attention"):
        ref = model(q, k, v)
        out = torch.compile(model, backend="tritonfuse", options={"post_grad_custom_post_pass": nodes})(q, k, v)
    assert tritonfuse.counters()["attention"] == _counts(1, 0, 1), (tritonfuse.sites(), registry.errors())
    gqa = _gqa_served(device)
    assert nodes.heads == [(4, 2 if gqa else 4)] and nodes.ops[0][1:] == (False, causal), (nodes.heads, nodes.ops)
    torch.testing.assert_close(out, ref, **({"atol": 2e-3, "rtol": 2e-3} if dtype == torch.float16 else {}))


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_llama_causal_with_padding(impl, device):
    # a decoder with a padding mask: HF's keep[B, 1, 1, S] & (kv_idx <= q_idx) at the scores' size. A bool
    # (-inf) mask is served as the causal flag plus the keys; eager's finite-fill mask is not split (its
    # rows with every key masked average over all keys), and stays a full mask
    model = _llama(impl, torch.float16, device)
    ids, mask = _ids_and_padding(device)
    mask[0, :3] = 0  # left padding too: rows 0-2 of sequence 0 see no key
    out, ref = _compile_check(model, input_ids=ids, attention_mask=mask, expect=_counts(2, 2, 0))
    keep = mask.bool()
    torch.testing.assert_close(out.last_hidden_state[keep], ref.last_hidden_state[keep], atol=1e-2, rtol=1e-2)
    sites = tritonfuse.sites()
    details = [(s.kernel, s.detail) for s in sites]
    split = [f"mask=(2, 1, 1, 13) bool causal" in s.detail for s in sites]
    full = [f"mask=(2, 1, 13, 13)" in s.detail and "causal" not in s.detail for s in sites]
    padded = [s.kernel == "attention[sdpa,causal_padded]" and "mask=(2, 1, 1, 13) float16 causal" in s.detail
              for s in sites]
    if impl == "eager":  # eager's finfo.min mask: kept whole
        assert all(full), details
    elif device == "cpu":  # SDPA's bool mask
        assert all(split), details
    else:  # on CUDA (transformers 5.17 fills with -65536): the rows without keys too, every row as eager's
        assert all(split) or all(padded), details
        if all(padded):
            torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=1e-2, rtol=1e-2)

def _decoder_mask_attention(fill):
    # HF decoders' SDPA mask as transformers 5.17 builds it on the GPU (seen on the H200): keep[B, 1, 1, S] &
    # (kv_idx <= q_idx), filled at the scores' size in the model's dtype
    def fn(q, k, v, keep):
        B, H, S, D = q.shape
        pos = torch.arange(S, device=q.device)
        m = keep[:, None, None, :].bool() & (pos[None, None, None, :] <= pos[None, None, :, None])
        mask = torch.where(m.expand(B, 1, S, S), torch.tensor(0.0, dtype=q.dtype), torch.tensor(fill, dtype=q.dtype))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return fn


@pytest.mark.parametrize("fill,kernel,read", [(-65536.0, "attention[sdpa,causal_padded]", "bfloat16"),
                                               (float("-inf"), "attention[sdpa]", "bool")])
def test_causal_padding_mask_with_finite_fill(fill, kernel, read, device):
    # a finite fill: the causal flag plus the keys, and the rows without keys (left padding's) attend over all
    # keys as in eager, every row compared; a -inf fill is a bool mask (those rows are zeros, eager's NaN)
    B, H, S, D = 3, 2, 40, 32
    q, k, v = _qkv(B, H, H, S, S, D, torch.bfloat16, device, seed=11)
    keep = torch.ones(B, S, dtype=torch.long, device=device)
    keep[1, :9] = 0
    keep[2, :25] = 0
    keep[2, 30] = 0
    out, ref = _compile_check(_decoder_mask_attention(fill), q, k, v, keep, expect=_counts(1, 1, 0))
    site, = tritonfuse.sites()
    assert site.kernel == kernel and f"mask=(3, 1, 1, 40) {read} causal" in site.detail, site
    rows = slice(None) if math.isfinite(fill) else (keep.cumsum(1) > 0)[:, None, :].expand(B, H, S)
    torch.testing.assert_close(out[rows].float(), ref[rows].float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("shift,dtype", [(3, torch.float32), (3, torch.float16), (0, torch.float16)])
def test_swin_shifted_window_attention(shift, dtype, device):
    # torchvision's Swin: the relative-position bias, and with a shift the window mask added through a 5-D view
    import copy

    from torchvision.models.swin_transformer import ShiftedWindowAttention

    torch.manual_seed(0)
    m = ShiftedWindowAttention(64, [7, 7], [shift, shift], 2).eval().to(device=device, dtype=dtype)
    with torch.no_grad():
        m.relative_position_bias_table.normal_(0, 0.5)  # zero-initialised otherwise: a bias of no effect
    x = fresh(2, 14, 14, 64, dtype=dtype, device=device)
    out, eager = _compile_check(m, x, expect=_counts(1, 1, 0))
    site, = tritonfuse.sites()
    # shifted: the 4 windows join the 2 heads, one mask of bias + window mask for all of them
    assert site.detail.startswith("B=2 Hq=8" if shift else "B=8 Hq=2"), site
    with torch.no_grad():
        ref = copy.deepcopy(m).double()(x.double())
    assert_close_to_ref(out, ref, eager, atol=1e-4 if dtype == torch.float32 else 1e-3)


def test_swin_model(device):
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer([4, 4], 32, [2, 2], [2, 4], [4, 4], num_classes=10).eval().to(device=device,
                                                                                          dtype=torch.float16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 0.5)
    x = fresh(2, 3, 32, 32, dtype=torch.float16, device=device)
    out, eager = _compile_check(model, x, expect=_counts(4, 4, 0))  # 2 stages x (plain, shifted) blocks
    torch.testing.assert_close(out, eager, atol=1e-2, rtol=1e-2)


def _window_attention(q, k, v, bias, wmask):
    # Swin's form: 8 windows of 2 images (4 each), 2 heads, 16 tokens; the window mask through a 5-D view
    s = q @ k.transpose(-2, -1) + bias
    s = s.view(2, 4, 2, 16, 16) + wmask
    return torch.softmax(s.view(-1, 2, 16, 16), -1) @ v


def _window_inputs(wmask_shape, device):
    q, k, v = _qkv(8, 2, 2, 16, 16, 32, torch.float32, device)
    bias = fresh(1, 2, 16, 16, device=device)
    wmask = torch.where(fresh(*wmask_shape, device=device) > 0, 0.0, -100.0)
    return q, k, v, bias, wmask


@pytest.mark.parametrize("wmask_shape", [(1, 4, 1, 16, 16), (4, 1, 16, 16)])
def test_window_mask_shapes(wmask_shape, device):
    # the window mask as Swin builds it (5-D) or without its leading 1 (4-D, broadcast the same way)
    inputs = _window_inputs(wmask_shape, device)
    out, eager = _compile_check(_window_attention, *inputs, expect=_counts(1, 1, 0))
    assert_close_to_ref(out, _window_attention(*(t.double() for t in inputs)), eager, atol=1e-5)


def test_window_mask_with_batch_not_rewritten(device):
    # a window mask that differs per image cannot be one mask for the joined windows: left to Inductor
    inputs = _window_inputs((2, 4, 1, 16, 16), device)
    out, ref = _compile_check(_window_attention, *inputs, expect=_counts(1, 0, 1))
    assert "vary with the batch" in tritonfuse.sites()[0].reason
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_vit_multihead_attention(device):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=64,
                              mlp_dim=64).eval().to(device=device, dtype=torch.float16)
    x = fresh(2, 3, 32, 32, dtype=torch.float16, device=device)
    out, ref = _compile_check(model, x, expect=_counts(2, 2, 0))
    torch.testing.assert_close(out, ref, atol=1e-2, rtol=1e-2)


def test_bert_output_attentions_not_rewritten(device):
    model = _bert("eager", torch.float16, device)
    ids, mask = _ids_and_padding(device)
    out, ref = _compile_check(model, input_ids=ids, attention_mask=mask, output_attentions=True,
                              expect=_counts(0, 0, 0))
    for a, r in zip(out.attentions, ref.attentions):
        torch.testing.assert_close(a, r, atol=1e-3, rtol=1e-3)


# --- GPU: the CUDA graphs hold other SDPA nodes (flash / efficient / cudnn) --------------------------


@pytest.fixture
def no_cudnn_sdpa():
    # cuDNN SDPA nodes are left to Inductor (faster on the H100): pin flash/efficient for exact counts
    old = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    yield
    torch.backends.cuda.enable_cudnn_sdp(old)


@pytest.mark.cuda
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_cuda_bert_and_llama_counts(impl, no_cudnn_sdpa):
    ids, mask = _ids_and_padding("cuda", B=4, S=77)
    model = _bert(impl, torch.float16, "cuda")
    out, ref = _compile_check(model, input_ids=ids, attention_mask=mask, expect=_counts(2, 2, 0))
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=1e-2, rtol=1e-2)
    tritonfuse.reset()
    torch._dynamo.reset()
    model = _llama(impl, torch.float16, "cuda")
    out, ref = _compile_check(model, input_ids=ids, expect=_counts(2, 2, 0))
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=1e-2, rtol=1e-2)


@pytest.mark.cuda
@pytest.mark.parametrize("form", list(SDPA_FORMS))
def test_cuda_sdpa_forms(form, no_cudnn_sdpa):
    q, k, v = _qkv(2, 4, 4, 300, 300, 128, torch.float16, "cuda", transposed=True)
    m = _mask("bool_keypad", 2, 4, 300, 300, torch.float16, "cuda")
    out, eager = _compile_check(SDPA_FORMS[form], q, k, v, m, expect=_counts(1, 1, 0))
    ref = SDPA_FORMS[form](*(x.double() for x in (q, k, v)), m)
    assert_close_to_ref(out, ref, eager, atol=1e-3)


@pytest.mark.cuda
def test_cuda_cudnn_sdpa_served_with_measuring_off():
    # a cuDNN-lowered SDPA node is a site like the others (98c650e dropped a fixed "cuDNN is faster" rule):
    # with measured choices off, as in this suite, it is replaced; with them on, its timing decides
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = _qkv(2, 4, 4, 256, 256, 128, torch.float16, "cuda")

    def f(q, k, v):
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v)

    out, ref = _compile_check(f, q, k, v, expect=_counts(1, 1, 0))
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=2e-3)


def test_every_pattern_holds_a_batched_gemm_or_sdpa():
    # pattern_spec skips the family for a graph with neither: sound only if every pattern holds one
    from tritonfuse.patterns import attention as P
    from tests.utils import pattern_entries, pattern_ops

    anchors = {torch.ops.aten.bmm.default, *P.SDPA_OPS}
    entries = pattern_entries(P.pattern_pass())
    assert len(entries) > 50
    assert all(pattern_ops(e.pattern) & anchors for e in entries)
    assert P.pattern_spec(frozenset({torch.ops.aten.mm.default})) is None
    assert P.pattern_spec(frozenset({torch.ops.aten.bmm.default})) == ()


@pytest.mark.cuda
def test_an_attention_probe_compiles_a_kernel_its_sites_compile_too(monkeypatch):
    # a BERT-like site (sequence a multiple of 16, an additive key-padding mask) compiles its configs; the
    # probe of its variant then compiles nothing of its own (before: 19 queries and 23 keys, a compile apart)
    from tritonfuse import inline

    q, k, v = (fresh(2, 2, 128, 64, dtype=torch.float16, device="cuda") for _ in range(3))
    mask = fresh(2, 1, 1, 128, dtype=torch.float16, device="cuda")
    tma = not inline.will_inline(torch.ops.tritonfuse.attention.default, q.device)  # as the probe decides
    K._forward(q, k, v, mask, 0.125, False, store_lse=False, tma=tma)
    kernel = K._attn_fwd_tma_kernel if tma else K._attn_fwd_kernel
    site = compiled_keys(kernel)
    monkeypatch.setattr(registry, "_failed", {})  # (run again though another test probed it)
    assert K.probe("cuda", torch.float16, 64, "float16", False, False) is None
    assert compiled_keys(kernel) == site


class _AttentionInputs(GraphOps):
    """Run after tritonfuse's passes: for each attention op (ours or SDPA's), its q, k and v as (their op, the
    op they view: an ``as_strided``'s argument, else the first non-view above them)."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def __call__(self, graph):
        from tritonfuse.patterns import attention as P

        ops = P._attention_input_ops()
        for n in graph.nodes:
            if n.op == "call_function" and n.target in ops:
                self.inputs.append([self._chain(a) for a in n.args[:3]])

    @staticmethod
    def _chain(node):
        from tritonfuse.patterns import attention as P

        top = node.args[0] if node.target == torch.ops.aten.as_strided.default else P._view_top(node)
        return [str(node.target), str(top.target)]


class _MHA(torch.nn.Module):
    # torchvision ViT's attention: batch-first MultiheadAttention over one packed in-projection with bias
    def __init__(self, e=64, heads=4):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(e, heads, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


class _PackedQKV(torch.nn.Module):
    # the same reshapes and copy of q/k/v, packed from a projection (or the input itself) and viewed back
    def __init__(self, e=64, heads=4, project=True, undo=True):
        super().__init__()
        self.heads, self.undo = heads, undo
        self.proj = torch.nn.Linear(e, 3 * e, bias=False) if project else None

    def forward(self, x):
        S, B, E = x.shape[0], x.shape[1], x.shape[2] // (1 if self.proj is not None else 3)
        H, D = self.heads, E // self.heads
        p = self.proj(x) if self.proj is not None else x
        p = p.unflatten(-1, (3, E)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
        if self.undo:  # MultiheadAttention's views: each of q/k/v [S, B*H, D] -> [B, H, S, D]
            q, k, v = (t.view(S, B * H, D).transpose(0, 1).view(B, H, S, D) for t in p)
        else:  # views that reorder the copy's elements: no strides of the projection give them
            q, k, v = (t.view(H, B, S, D).transpose(0, 1) for t in p)
        return F.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("case", ["mha", "mha-sdpa", "mha-int8", "input", "reordered", "off"])
def test_attention_reads_packed_qkv_without_their_copy(case, device, monkeypatch, no_compile_cache):
    # MultiheadAttention copies its packed q/k/v projection (.contiguous()) only to view each as [B, H, S, D];
    # Inductor fused the projection's bias add into that copy, one kernel per input on the GPU. The attention
    # op (ours, or SDPA left to Inductor) reads them as strided views of the projection instead, the bias
    # folded into the GEMM (addmm, or the W8A8 op's epilogue). Not where the copy's source is a graph input
    # (a mutation could change it before the read), nor where the views reorder the copy's elements, nor with
    # the pass off. Outputs as eager's either way
    from tritonfuse.patterns import attention as P

    torch.manual_seed(0)
    dtype = torch.float16
    if case == "mha-sdpa":
        monkeypatch.setattr(K, "probe", lambda *a, **k: "left to SDPA (test)")
    monkeypatch.setattr(P, "STRIDED_INPUTS", case != "off")
    model = (_PackedQKV(project=case != "input", undo=case != "reordered") if case in ("input", "reordered")
             else _MHA()).eval().to(device=device, dtype=dtype)
    x = fresh(5, 3, 64 * (3 if case == "input" else 1), dtype=dtype, device=device)
    if case == "input":
        x = x.transpose(0, 1)  # (the model reads [S, B, 3E]: here a non-contiguous graph input)
    seen = _AttentionInputs()
    with torch.no_grad(), config.patch(patterns="attention,linear_act", quant="int8" if case == "mha-int8" else "none"):
        out = torch.compile(model, backend="tritonfuse", options={"post_grad_custom_pre_pass": seen})(x)
        ref = model(x)
    served = 0 if case == "mha-sdpa" else 1
    assert tritonfuse.counters()["attention"] == _counts(1, served, 1 - served), tritonfuse.sites()
    assert len(seen.inputs) == 1, seen.inputs
    gemm = {"mha": "aten.addmm.default", "mha-sdpa": "aten.addmm.default",
            "mha-int8": "tritonfuse.int8_linear.default"}.get(case)
    if gemm is not None:  # all three read as strided views of one GEMM with the bias folded in
        assert seen.inputs[0] == [["aten.as_strided.default", gemm]] * 3, seen.inputs
        assert "aten.mm.default" not in seen.ops and "aten.clone.default" not in seen.ops, seen.ops
    else:
        assert all(chain[-1] == "aten.clone.default" for chain in seen.inputs[0]), seen.inputs
    tol = 3e-2 if case == "mha-int8" else 2e-3
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)


def test_compose_strides_against_as_strided():
    # every answer compose_strides gives holds the same elements as the views of the copy; the packed q/k/v
    # of MultiheadAttention get one; a view merging a transposed copy's dims gets none
    import random

    from tritonfuse.patterns.attention import compose_strides

    def composed(x, t, f):
        got = compose_strides(tuple(t.shape), t.stride(), t.storage_offset(), tuple(f.shape), f.stride(),
                              f.storage_offset())
        if got is not None:
            assert torch.equal(x.as_strided(tuple(f.shape), *got), f), (t.shape, f.shape, f.stride(), got)
        return got

    S, B, E, H = 7, 3, 12, 2
    x = torch.randn(S * B, 3 * E)
    t = x.view(S, B, 3 * E).unflatten(-1, (3, E)).unsqueeze(0).transpose(0, -2).squeeze(-2)
    c = t.clone(memory_format=torch.contiguous_format)
    for i in range(3):
        f = c[i].view(S, B * H, E // H).transpose(0, 1).view(B, H, S, E // H)
        assert composed(x, t, f) == ([3 * E, E // H, B * 3 * E, 1], i * E)
    x = torch.randn(6, 4)
    assert composed(x, x.t(), x.t().clone(memory_format=torch.contiguous_format).view(24)) is None
    random.seed(0)
    answered = 0
    for _ in range(2000):
        x = torch.randn(*[random.choice([1, 2, 3, 4]) for _ in range(random.randint(1, 4))])
        t = x.permute(*random.sample(range(x.dim()), x.dim()))
        if t.shape[0] > 1 and random.random() < 0.5:
            t = t[1:]
        f = t.clone(memory_format=torch.contiguous_format).reshape(-1)
        dims, m = [], f.numel()
        while m > 1:
            d = random.choice([q for q in range(2, m + 1) if m % q == 0])
            dims.append(d)
            m //= d
        f = f.view(*dims or [1])
        f = f.permute(*random.sample(range(f.dim()), f.dim()))
        if f.dim() > 1 and random.random() < 0.5:
            f = f.select(0, random.randrange(f.shape[0]))
        if f.dim() and f.shape[-1] > 1 and random.random() < 0.3:
            f = f[..., ::2]
        answered += composed(x, t, f) is not None
    assert 1000 < answered < 2000  # (most views are strided; some are not)


def test_strided_inputs_switch_keys_the_graph_cache(tmp_path, monkeypatch):
    # STRIDED_INPUTS (the A/B scripts turn it) is part of Inductor's graph-cache key: with it off, a compile is
    # not served the graph compiled with it on (there the in-projection's bias is in an addmm too)
    import torch._functorch.config as fconfig
    import torch._inductor.config as iconfig
    from torch._inductor.utils import run_and_get_code

    from tritonfuse.patterns import attention as P

    assert P.STRIDED_INPUTS is True  # on by default: run on the H200 in the 55th session
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = _MHA().eval()
    x = fresh(5, 3, 64, seed=54)
    for on in (True, False, True):
        monkeypatch.setattr(P, "STRIDED_INPUTS", on)
        tritonfuse.reset()
        torch._dynamo.reset()
        with torch.no_grad(), config.patch(patterns="attention"), iconfig.patch(fx_graph_cache=True), \
                fconfig.patch(enable_autograd_cache=True):
            _, code = run_and_get_code(torch.compile(model, backend="tritonfuse"), x)
        # (the out-projection's is an addmm either way)
        assert "".join(code).count("extern_kernels.addmm(") == (2 if on else 1), on


def _table_marks(fn, *args) -> list:
    # tables_pass on fn's ATen graph: the targets of the nodes it marked
    from torch.fx.experimental.proxy_tensor import make_fx

    from tritonfuse.patterns import attention as P

    graph = make_fx(fn, tracing_mode="fake")(*args).graph
    made = P.tables_pass(graph)
    marked = [n.target for n in graph.nodes if n.meta.get("inductor_realize_to_strides")]
    assert made == len(marked)
    return marked


def test_tables_pass_marks_broadcast_tables_alone(monkeypatch):
    from tritonfuse.patterns import attention as P

    pos = torch.arange(13.0)[:, None] * fresh(6, seed=55).exp()  # [13, 6]: positions times frequencies
    x, y = fresh(4, 5, 13, 6, seed=56), fresh(2, 13, 6, seed=57)

    def rope(pos, x):  # a table read by a tensor 20x its size, through a view; stored after its cast
        c = pos.cos().to(torch.float16).unsqueeze(0)
        return x * c + x.flip(-1) * pos.sin()

    monkeypatch.setattr(P, "TABLE_MIN_READS", 0)
    assert sorted(map(str, _table_marks(rope, pos, x))) == ["aten._to_copy.default", "aten.sin.default"]
    assert _table_marks(lambda pos, x: x.cos() * x, pos, x) == []  # the cos of an activation: no table
    assert _table_marks(lambda pos, y: y * pos.cos(), pos, y) == []  # a reader only twice the table's size
    monkeypatch.setattr(P, "TABLE_MIN_READS", x.numel() + 1)  # the readers compute too few of its values
    assert _table_marks(rope, pos, x) == []
    monkeypatch.setattr(P, "TABLES", False)
    monkeypatch.setattr(P, "TABLE_MIN_READS", 0)
    assert _table_marks(rope, pos, x) == []
    # the switch (the A/B scripts turn it) is part of Inductor's graph-cache key
    from tritonfuse import backend

    off = backend._settings_hash()
    monkeypatch.setattr(P, "TABLES", True)
    assert backend._settings_hash() != off


def test_llama_rope_tables_are_computed_once(monkeypatch, device, no_compile_cache):
    # HF Llama's rotary cos and sin ([1, S, D], computed once in the model) are read by every layer's q and k:
    # with the pass, one kernel computes them and the readers load them; without it, each reader computes its
    # own. Their values differ only where Inductor keeps an inlined table's fp16 cast in fp32; the stored table
    # is rounded as eager rounds it.
    import copy
    import re

    from torch._inductor.utils import run_and_get_code

    from tritonfuse.patterns import attention as P

    monkeypatch.setattr(P, "TABLE_MIN_READS", 0)
    model = _llama("sdpa", torch.float16, device)
    ids, _ = _ids_and_padding(device)
    made, real = [], P.tables_pass
    monkeypatch.setattr(P, "tables_pass", lambda graph: made.append(real(graph)) or made[-1])
    outs, cos = {}, {}
    for on in (True, False):
        monkeypatch.setattr(P, "TABLES", on)
        tritonfuse.reset()
        torch._dynamo.reset()
        with torch.no_grad(), config.patch(patterns="attention"):
            out, code = run_and_get_code(torch.compile(model, backend="tritonfuse"), input_ids=ids)
        outs[on], cos[on] = out.last_hidden_state, len(re.findall(r"\bcos\(|\.cos\(", "".join(code)))
    assert made == [2, 0]  # (the cos and the sin table)
    assert cos[True] == 1 and cos[False] >= 2, cos
    with torch.no_grad():
        eager = model(input_ids=ids).last_hidden_state
        ref64 = copy.deepcopy(model).to(device="cpu", dtype=torch.float64)(input_ids=ids.cpu()).last_hidden_state
    assert_close_to_ref(outs[True], ref64, eager, atol=1e-3)


def test_sdpa_takes_gqa_where_a_fused_kernel_serves_it(monkeypatch):
    # K/V unrepeated go to SDPA only where flash or cuDNN serves them: on CUDA sm80 on, half types, head dims to
    # 256 (elsewhere the memory-efficient kernel, which takes no GQA, would leave SDPA its math form)
    import types

    from tritonfuse.patterns import attention as P

    def q(device="cuda", dtype=torch.bfloat16, d=128):
        return types.SimpleNamespace(device=torch.device(device), dtype=dtype, shape=(8, 16, 1024, d))

    monkeypatch.setattr(P, "SDPA_GQA", True)
    if not K.sdpa_takes_gqa(torch.device("cpu"), torch.float16, 64):
        pytest.skip("this torch's SDPA has no enable_gqa")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert P._sdpa_takes_gqa(q()) and P._sdpa_takes_gqa(q(dtype=torch.float16)) and P._sdpa_takes_gqa(q("cpu"))
    assert not P._sdpa_takes_gqa(q(dtype=torch.float32)) and not P._sdpa_takes_gqa(q(d=512))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert not P._sdpa_takes_gqa(q()) and P._sdpa_takes_gqa(q("cpu"))
    monkeypatch.setattr(P, "SDPA_GQA", False)  # (torch before 2.5)
    assert not P._sdpa_takes_gqa(q("cpu"))
