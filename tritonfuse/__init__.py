"""tritonfuse: ``torch.compile(model, backend="tritonfuse")`` runs Linear+activation, attention,
norm+residual and Conv+BN subgraphs in fused Triton kernels and leaves the rest to Inductor."""

from . import config
from .registry import counters, reset, sites
from .report import report

__version__ = "0.1.0"
__all__ = ["config", "counters", "reset", "report", "sites", "__version__"]
