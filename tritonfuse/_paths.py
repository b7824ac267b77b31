"""The checkout's place on ``sys.path`` (for ``python -m tritonfuse`` and the test suite; never on import).

The checkout holds the top-level folders ``kernels/`` and ``patterns/``, installed as ``tritonfuse.kernels`` and
``tritonfuse.patterns``. Run from the checkout, ``python -m ...`` puts it first on ``sys.path``, where those
folders shadow installed packages of the same names: transformers >= 5.25 requires HF's ``kernels``, and
building an HF model then failed with ``ImportError: cannot import name 'CUDAProperties' from 'kernels'``.
"""

from __future__ import annotations

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def checkout_behind_site_packages() -> None:
    """Move the checkout (``""`` or its path, where ``python -m`` or ``-c`` put it) to the end of ``sys.path``:
    installed packages win over its folders, and what only it holds (``tests.utils``) stays importable. Child
    processes started from it are told to leave it off (PYTHONSAFEPATH, Python >= 3.11)."""
    here = [p for p in sys.path if pathlib.Path(p or os.curdir).resolve() == ROOT]
    if here:
        sys.path[:] = [p for p in sys.path if p not in here] + [str(ROOT)]
        os.environ["PYTHONSAFEPATH"] = "1"
