"""The GPU probes' log: each result as a JSON line under $OUT and as one readable line on stdout."""

from __future__ import annotations

import json
import os


def jsonl_log(name: str, digits: int = 4):
    """``emit(**fields)`` appending to ``$OUT/<name>`` (``/tmp`` without OUT), floats printed to ``digits``."""
    log = open(os.path.join(os.environ.get("OUT", "/tmp"), name), "a")

    def emit(**kw):
        log.write(json.dumps(kw) + "\n")
        log.flush()
        print(" ".join(f"{k}={v:.{digits}f}" if isinstance(v, float) else f"{k}={v}" for k, v in kw.items()),
              flush=True)

    return emit
