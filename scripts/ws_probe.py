"""Each config of the warp-specialized attention forward against the pointer kernel, on the GPU, one by one
(the 41st session's self-check found them differing): which configs, head dims and causal modes differ, and
whether the unspecialized config of the same kernel (device descriptors, two loops) does.

    python3 scripts/ws_probe.py
"""

import torch

from tritonfuse.kernels import attention as K


def main():
    dev = torch.device("cuda")
    configs = K._attn_fwd_ws_kernel.configs
    for d in (64, 128):
        for shape in ("toy", "even"):
            if shape == "toy":
                q, k, v = K._compare_inputs(dev, torch.float16, d)
            else:
                g = torch.Generator(device="cpu").manual_seed(1)
                q = torch.randn(2, 4, 512, d, generator=g).to(dev, torch.float16)
                k = torch.randn(2, 4, 512, d, generator=g).to(dev, torch.float16)
                v = torch.randn(2, 4, 512, d, generator=g).to(dev, torch.float16)
            B, H, Sq, _ = q.shape
            for causal in (False, True):
                o1 = K._empty_out(q)
                l1 = torch.empty((B, H, Sq), device=dev, dtype=torch.float32)
                K._launch_pointer(q, k, v, q, (0, 0, 0, 0), 0, o1, l1, d ** -0.5 * K.LOG2E, causal, True)
                for cfg in configs:
                    K._attn_fwd_ws_kernel.configs = [cfg]
                    o2 = torch.full_like(o1, float("nan"))
                    l2 = torch.full_like(l1, float("nan"))
                    try:
                        K._launch_ws(q, k, v, o2, l2, d ** -0.5 * K.LOG2E, causal, True, tune=False)
                        torch.cuda.synchronize()
                        diff = (o1.float() - o2.float()).abs()
                        bad = diff > 1e-2
                        rows = bad.any(-1).nonzero()
                        where = ""
                        if len(rows):
                            r = rows[:, 2]
                            where = f" bad rows {len(rows)} (row idx {r.min().item()}-{r.max().item()}, heads {rows[:, 1].unique().tolist()[:6]})"
                        msg = f"out {diff.nan_to_num(1e9).max().item():.3g} lse {(l1 - l2).abs().nan_to_num(1e9).max().item():.3g}{where}"
                    except Exception as e:  # noqa: BLE001
                        msg = f"{type(e).__name__}: {str(e)[:150]}"
                    finally:
                        K._attn_fwd_ws_kernel.configs = configs
                    print(f"D{d} {shape} causal={causal} {cfg.kwargs} s{cfg.num_stages}: {msg}", flush=True)


if __name__ == "__main__":
    main()
