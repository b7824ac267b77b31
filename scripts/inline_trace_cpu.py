"""What each inlined conv launch of a torchvision model (default ResNet-50) would hand Inductor, found on a CPU
machine.

The model (fp16, channels_last, 2x3x64x64) is compiled with ``backend="tritonfuse"`` and
``kernels.conv_bn.INLINE`` on, for a pretended Hopper GPU: Triton traces kernels for an sm_90 target (never
compiled or run), GPU timing is off (every site is replaced), the kernel probes are skipped. A post-grad pass
after tritonfuse's runs ``tritonfuse.inline``'s pass on a copy of the graph and prints, per inlined launch,
the kernel, the configs it is handed and its tensors' dtypes, then how many op calls were inlined and why
the others were kept; then the compile is stopped.

Run without TRITON_INTERPRET:  python scripts/inline_trace_cpu.py [--model resnet50] [--quiet]
(``--model``: a torchvision constructor, e.g. resnet18, mobilenet_v3_small, efficientnet_b0, regnet_y_400mf;
``--quiet``: the counts only)
"""

from __future__ import annotations

import argparse
import copy

import torch
import triton
from triton.backends.compiler import GPUTarget


class _Hopper:  # Triton's frontend only
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0


class _Stop(Exception):
    pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--quiet", action="store_true")
    opts = ap.parse_args()
    triton.runtime.driver.set_active(_Hopper())
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from torch._inductor.custom_graph_pass import CustomGraphPass
    import torchvision

    import tritonfuse
    from tritonfuse import config, inline, registry
    from tritonfuse.kernels import conv_bn as CB

    registry.device_unsupported = lambda device: None
    registry.guarded_probe = lambda key, probe: None
    CB.probe = lambda *a, **k: None
    inline.unavailable = lambda device: None
    CB._hopper = lambda device: True
    CB.INLINE = True
    hop = inline._hops()[0]

    shown = []  # set when the pass got through the graph: an error in it would fall back silently

    class Show(CustomGraphPass):
        def __call__(self, graph):
            g = copy.deepcopy(graph)
            inline.inline_pass(g)
            for node in g.nodes:
                if node.op != "call_function" or node.target is not hop:
                    continue
                k = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
                name = k
                while hasattr(name, "fn"):
                    name = name.fn
                cfgs = [f"{c.kwargs.get('BLOCK_M')}x{c.kwargs.get('BLOCK_N')}x{c.kwargs.get('BLOCK_K')} s{c.num_stages}"
                        for c in getattr(k, "configs", [])]
                args = node.kwargs["kwargs"]
                dtypes = sorted({str(v.meta["val"].dtype).replace("torch.", "") for v in args.values()
                                 if isinstance(v, torch.fx.Node) and isinstance(v.meta.get("val"), torch.Tensor)})
                flags = {f: args.get(f) for f in ("HAS_RES", "N", "K") if f in args}
                if not opts.quiet:
                    print(f"{name.__name__} {flags} tensors {dtypes}: {', '.join(cfgs)}")
            shown.append(True)
            raise _Stop

        def uuid(self):
            return None

    model = getattr(torchvision.models, opts.model)().eval().to(torch.float16).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float16).to(memory_format=torch.channels_last)
    with config.patch(measure="0", fallback_on_error="1"), torch.no_grad():
        try:
            torch.compile(model, backend="tritonfuse", options={"post_grad_custom_pre_pass": Show()})(x)
        except Exception as e:  # noqa: BLE001 - _Stop, wrapped by Inductor or by the backend's fallback
            if "_Stop" not in repr(e) and not isinstance(e, _Stop):
                raise
    if not shown:
        print(f"{opts.model}: the inspecting pass did not get through the graph (an error in it made the "
              "compile fall back)")
        return 1
    counts = inline.counts()
    # (sites count as fallbacks: the stop looks like a failed compile to the backend; matched is what counts)
    matched = {f: c["matched"] for f, c in tritonfuse.counters().items() if c["matched"]}
    print(f"{opts.model}: sites matched {matched}; op calls inlined {counts['inlined']}, kept {counts['kept']} "
          f"{counts['reasons']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
