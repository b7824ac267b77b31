"""How long Inductor's compile-worker pool takes to run its first job on this machine, from a fresh process.

    python3 scripts/pool_start_probe.py

Prints one JSON line: the seconds ``import torch`` took, then, from just after it, ``maybe_warm_pool`` (what
``backend="inductor"`` and tritonfuse's entry point call), when a job of nothing (``time.time``) ran in a worker
and came back, and when 32 more had. A worker imports torch before its first job, so on a machine whose
``import torch`` is slow the pool is too, and a first compile that sends kernels to it early waits on it.
"""

import json
import time

t0 = time.time()
import torch  # noqa: E402
from torch._inductor import async_compile  # noqa: E402

imported = time.time()
async_compile.maybe_warm_pool()
warmed = time.time()
pool = async_compile.AsyncCompile.process_pool()
ran = pool.submit(time.time).result()
done = time.time()
for f in [pool.submit(time.time) for _ in range(32)]:
    f.result()
print(json.dumps({"import_torch": round(imported - t0, 2), "warm_call": round(warmed - imported, 2),
                  "noop_ran_after_warm": round(ran - imported, 2), "noop_done": round(done - imported, 2),
                  "32_noops_done": round(time.time() - imported, 2),
                  "threads": async_compile.get_compile_threads(), "torch": torch.__version__}))
