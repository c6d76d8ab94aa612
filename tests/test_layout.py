"""Layout (#14): ``sglang_msa/`` holds only what a server imports; tooling lives in
``sglang_msa_tools/`` and depends on the product, never the other way round."""

from __future__ import annotations

import ast

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ROOT / "sglang_msa"
TOOLS = ROOT / "sglang_msa_tools"
MOVED = ("tiny_m3", "tiny_m3_tokenizer", "demo", "pipeline_check")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_product_never_imports_the_tools():
    offenders = {}
    for path in sorted(PRODUCT.rglob("*.py")):
        bad = {m for m in _imported_modules(path)
               if m == "sglang_msa_tools" or m.startswith("sglang_msa_tools.")
               or any(m == f"sglang_msa.{name}" for name in MOVED)}
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
        assert "sglang_msa_tools" not in path.read_text(), f"{path} names sglang_msa_tools"
    assert not offenders, offenders


def test_tools_moved_out_of_the_product():
    for name in MOVED:
        assert not (PRODUCT / f"{name}.py").exists(), f"sglang_msa/{name}.py is tooling"
        assert (TOOLS / f"{name}.py").exists()
    assert (TOOLS / "__init__.py").read_text().lstrip().startswith('"""')


def test_wheel_ships_only_the_product():
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert cfg["tool"]["maturin"]["python-packages"] == ["sglang_msa"]


def test_demo_script_runs_the_tools_demo_from_the_clone():
    script = (ROOT / "scripts" / "demo.sh").read_text()
    assert "-m sglang_msa_tools.demo" in script
    assert '"$ROOT/sglang_msa_tools"' in script  # linked in: not in the wheel
