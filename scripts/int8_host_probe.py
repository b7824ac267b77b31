"""GPU probe: the autotuned W8A8 TMA kernels' GPU time (CUDA-graph replays of 10 calls, median) at BERT/ViT/
Llama MLP shapes beside cuBLAS and the row quantizer, the config each autotuner chose, and the host cost of
one ``int8_linear`` op call and of its parts (wall time per call, 200 calls back to back) with a cProfile of
300 calls written to ``$PROFILE_OUT`` (default /tmp/int8_host_profile.txt). One JSON line per result.

    python3 scripts/int8_host_probe.py > host.jsonl
"""

import cProfile
import io
import json
import os
import pstats
import time

import torch

from int8_epilogue_probe import SHAPES  # scripts/ (the running script's folder)
from tritonfuse.kernels import int8 as Q


def emit(**r):
    print(json.dumps(r), flush=True)


def graph_ms(fn, n=50):
    fn()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(10):
            fn()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        a, b = torch.cuda.Event(True), torch.cuda.Event(True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 10)
    ts.sort()
    return ts[len(ts) // 2]


def host_us(fn, calls=200):
    """Wall time per call of ``calls`` back-to-back calls (after 20 warm-up calls), in us."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - t) / calls
    torch.cuda.synchronize()
    return host * 1e6


def main():
    for M, K, N, act in SHAPES:
        x = torch.randn(M, K, device="cuda", dtype=torch.float16)
        w = torch.randn(N, K, device="cuda", dtype=torch.float16) * 0.05
        b = torch.randn(N, device="cuda", dtype=torch.float16)
        xq, xs = Q.quant_rows(x)
        wq, ws = Q.quantize_weight(w)
        s = dict(M=M, K=K, N=N, act=act)
        for what, fn in [
            ("host_tma", lambda: Q._w8a8(xq, xs, wq, ws, b, act, torch.float16)),
            ("device_tma", lambda: Q._w8a8(xq, xs, wq, ws, b, act, torch.float16, use_tma="device")),
            ("quant_rows", lambda: Q.quant_rows(x)),
            ("cublas_linear", lambda: torch.nn.functional.linear(x, w, b)),
        ]:
            try:
                emit(**s, what=what, graph_ms=graph_ms(fn))
            except Exception as e:
                emit(**s, what=what, err=repr(e)[:200])
        for tuner in (Q._w8a8_tma_kernel, Q._w8a8_device_tma_kernel):
            for key, cfg in tuner.cache.items():
                if key[0] == Q._m_bucket(M) and N in key and K in key:
                    emit(**s, kernel=tuner.fn.__name__, chosen=str(cfg))

    # host cost of the op call (no graph): wall per call with the GPU idle-ish (small M), and a profile
    for M, K, N in [(64, 768, 768), (16384, 768, 768)]:
        x = torch.randn(M, K, device="cuda", dtype=torch.float16)
        w = torch.randn(N, K, device="cuda", dtype=torch.float16) * 0.05
        b = torch.randn(N, device="cuda", dtype=torch.float16)
        op = lambda: torch.ops.tritonfuse.int8_linear(x, w, b, "none", "int8")
        emit(M=M, K=K, N=N, what="int8_linear op", host_us_per_call=host_us(op), wall_us=None)
        xq, xs = Q.quant_rows(x)
        wq, ws = Q.quantize_weight(w)
        for name, f in [
            ("quant_rows", lambda: Q.quant_rows(x)),
            ("_w8a8", lambda: Q._w8a8(xq, xs, wq, ws, b, "none", torch.float16)),
            ("F.linear", lambda: torch.nn.functional.linear(x, w, b)),
        ]:
            emit(M=M, what=name, host_us_per_call=host_us(f))
        if M == 64:
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(300):
                op()
            pr.disable()
            torch.cuda.synchronize()
            io_ = io.StringIO()
            st = pstats.Stats(pr, stream=io_)
            st.sort_stats("tottime").print_stats(35)
            st.sort_stats("cumulative").print_stats(45)
            open(os.environ.get("PROFILE_OUT", "/tmp/int8_host_profile.txt"), "w").write(io_.getvalue())


if __name__ == "__main__":
    main()
