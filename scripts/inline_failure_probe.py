"""Which inlined kernel fails Inductor's compile, with which configs and argument types.

With ``kernels.conv_bn.INLINE`` on, resnet50's compile failed on the H200 with "No valid triton configs"
(a 1x1 TMA config needing 344088 bytes of shared memory: a 4-byte output or residual tile, which the
kernel's pruning should have dropped), and the backend recompiled the graph without inlining. This runs
``tritonfuse explain MODEL`` with the flag on and ``TRITONFUSE_FALLBACK_ON_ERROR=0``, with a hook on
Inductor's ``CachingAutotuner._make_launchers`` that prints, for a kernel none of whose configs compiled,
its name, each config and the signature Inductor compiled it for.

Run on a GPU:  python3 scripts/inline_failure_probe.py [MODEL]    (default resnet50)
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    os.environ["TRITONFUSE_FALLBACK_ON_ERROR"] = "0"
    os.environ.setdefault("TRITONFUSE_MEASURE_BUDGET_S", "inf")
    import tritonfuse.kernels.conv_bn as conv_bn
    from torch._inductor.runtime import triton_heuristics

    conv_bn.INLINE = True
    real = triton_heuristics.CachingAutotuner._make_launchers

    def reporting(self, *args, **kwargs):
        try:
            return real(self, *args, **kwargs)
        except Exception as e:
            print(f"FAILED kernel {getattr(self.fn, '__name__', self.fn)}: {e}", file=sys.stderr)
            for r in getattr(self, "compile_results", None) or []:
                print(f"  config {getattr(r, 'config', r)}", file=sys.stderr)
            meta = getattr(self, "triton_meta", None) or {}
            print(f"  signature {meta.get('signature')}", file=sys.stderr)
            print(f"  constants {meta.get('constants')}", file=sys.stderr)
            raise

    triton_heuristics.CachingAutotuner._make_launchers = reporting
    from tritonfuse.cli import main as cli

    return cli(["explain", sys.argv[1] if len(sys.argv) > 1 else "resnet50", "--no-progress"])


if __name__ == "__main__":
    raise SystemExit(main())
