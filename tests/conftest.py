"""Test tiers and shared fixtures.

Tiers (pytest markers): ``cpu`` is the default (no GPU; Triton kernels run under
``TRITON_INTERPRET=1``), ``gpu`` needs CUDA and is skipped without it (run those through the device
tool), ``sglang`` imports the real installed SGLang. ``cargo test`` covers the Rust core.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The tooling package (sglang_msa_tools: tiny checkpoints, demo) is not in the wheel; tests take it
# from the clone. Appended, not prepended, so `import sglang_msa` still finds the installed package
# first when there is one (scripts/test.sh runs pytest from a scratch directory for that reason).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # the smg_rs tests run without torch
    torch = None
    HAS_CUDA = False

# Triton reads TRITON_INTERPRET when a kernel is decorated, so this must precede kernel imports.
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on a Hopper machine with SGLang 0.5.17 installed)")
    for item in items:
        if "gpu" in item.keywords:
            if not HAS_CUDA:
                item.add_marker(skip_gpu)
        else:
            item.add_marker(pytest.mark.cpu)


@pytest.fixture
def device() -> str:
    """Where kernel tests run: the GPU when there is one, else the CPU under the interpreter."""
    return "cuda" if HAS_CUDA else "cpu"


@pytest.fixture
def nan_like():
    """Allocate output buffers pre-filled with NaN, so an element a kernel forgets to write fails.

    ``nan_like(shape, dtype=..., device=...)`` or ``nan_like(tensor)``.
    """

    def make(shape_or_tensor, dtype=None, device=None):
        if torch is None:
            raise RuntimeError("nan_like needs torch")
        if isinstance(shape_or_tensor, torch.Tensor):
            ref = shape_or_tensor
            return torch.full_like(ref, float("nan"), dtype=dtype or ref.dtype, device=device or ref.device)
        return torch.full(tuple(shape_or_tensor), float("nan"), dtype=dtype or torch.float32, device=device or "cpu")

    return make
