"""llama-1b prefill (b8 s1024, bf16) with a left-padded attention_mask on the GPU: Inductor against tritonfuse
(median of 20 calls after 3, CUDA events), the outputs' cosine against eager over the kept tokens, and what
the attention sites got.

    python3 scripts/padded_prefill.py
"""
import time, statistics, torch, tritonfuse
from tritonfuse import zoo
torch.manual_seed(0)
spec = zoo.get("llama-1b-prefill")
w = spec.build(False, 8, False)
model = w.model.to("cuda", torch.bfloat16).eval()
inp = w.inputs(model, "cuda", torch.bfloat16, 0)
kw = dict(inp.kwargs)
B, S = kw["input_ids"].shape
g = torch.Generator().manual_seed(1)
lengths = torch.randint(S // 2, S + 1, (B,), generator=g); lengths[0] = S
mask = (torch.arange(S)[None, :] >= (S - lengths)[:, None]).long().cuda()  # left padding, as generation pads
kw["attention_mask"] = mask

def timeit(fn, n=20):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        a = torch.cuda.Event(enable_timing=True); b = torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    return statistics.median(ts)

with torch.no_grad():
    ref = model(**kw).logits.float()
    res = {}
    for backend in ("inductor", "tritonfuse"):
        torch._dynamo.reset(); tritonfuse.reset()
        t0 = time.time()
        c = torch.compile(model, backend=backend)
        out = c(**kw).logits.float()
        ct = time.time() - t0
        keep = mask.bool()
        cos = torch.nn.functional.cosine_similarity(out[keep], ref[keep], dim=-1).min().item()
        ms = timeit(lambda: c(**kw))
        res[backend] = ms
        print(f"{backend}: {ms:.2f} ms (compile {ct:.0f} s), min cosine vs eager over kept tokens {cos:.5f}", flush=True)
        if backend == "tritonfuse":
            print(tritonfuse.counters())
            for s in tritonfuse.sites():
                if s.family == "attention":
                    print("  attention site:", s.status, s.kernel, s.detail, "|", s.reason, s.measured)
                    break
    print("eager:", f"{timeit(lambda: model(**kw)):.2f} ms")
    print(f"tritonfuse / inductor: {res['inductor'] / res['tritonfuse']:.3f}x")
