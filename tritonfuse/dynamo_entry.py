"""What Dynamo loads for ``torch.compile(model, backend="tritonfuse")``: the ``torch_dynamo_backends`` entry
point in pyproject.toml names ``tritonfuse.dynamo_entry:tritonfuse_backend``.

Dynamo imports this module when it resolves the backend's name, in the ``torch.compile`` call, before the
model's first call traces anything. Importing it starts Inductor's compile workers (``warm_inductor_pool``),
the one thing it does besides naming the backend. A worker is a process that imports torch before it takes
its first job: on the H200 host the pool ran its first job 6.5-7.8 s after it was started, idle or not.
Started at the backend's entry, after Dynamo's trace, the pool was not ready when the survey sent it our
kernels, and the pass that decides waited for it: a first compile of bert-base took 16.2 s against 13.3 s
with the pool started before the trace (resnet50 17.0 against 15.6; Inductor's own 9.8 and 11.0; a428b51,
benchmarks/results/diagnostics, "Thirty-fifth session"). The backend still starts the pool on entry, for a
process that passes ``tritonfuse_backend`` itself, or whose pool Inductor shut down.
"""

from .backend import tritonfuse_backend, warm_inductor_pool

warm_inductor_pool()

__all__ = ["tritonfuse_backend"]
