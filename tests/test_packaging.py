"""What `pip install .` must leave behind: both modules, the version, typed stubs, the entry point."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

import pytest


def test_smg_rs_is_installed_with_version_and_stubs():
    smg_rs = pytest.importorskip("smg_rs")
    assert smg_rs.__version__ == md.version("sglang-msa")
    pkg = Path(smg_rs.__file__).parent
    assert (pkg / "py.typed").exists(), "maturin ships py.typed only when smg_rs.pyi sits at the repo root"
    stub = (pkg / "__init__.pyi").read_text()
    for name in ("def preprocess_video", "class VideoFeatures", "class SmgError", "class LimitExceededError"):
        assert name in stub


def test_sglang_msa_ships_with_the_distribution():
    import sglang_msa

    files = {str(f) for f in md.files("sglang-msa") or []}
    assert any(f.endswith("sglang_msa/plugin.py") for f in files)
    assert any(f.endswith("sglang_msa/kernels/msa_prefill/block_major.py") for f in files)
    assert sglang_msa.__version__ == md.version("sglang-msa")
