"""The README's main job (``python -m sglang_msa_tools.demo``): what it leaves behind and what it prints."""

from __future__ import annotations

import re

import pytest

from sglang_msa_tools import demo


@pytest.fixture
def quiet_steps(monkeypatch):
    """The demo's steps replaced by ones that write a file into the work folder (the real ones are
    exercised by the README command in CI and by the kernel tests)."""
    seen = {}

    def model(workdir):
        (workdir / "tiny-m3").mkdir()
        (workdir / "tiny-m3" / "config.json").write_text("{}")
        seen["workdir"] = workdir

    monkeypatch.setattr(demo, "make_sample_video", lambda path: path)
    monkeypatch.setattr(demo, "step_video", lambda video: None)
    monkeypatch.setattr(demo, "step_model", model)
    monkeypatch.setattr(demo, "step_kernels", lambda tokens: 0.0)
    monkeypatch.setattr(demo, "step_sglang", lambda: None)
    return seen


def test_demo_removes_its_temporary_folder(quiet_steps, capsys):
    assert demo.main([]) == 0
    assert not quiet_steps["workdir"].exists()
    assert "temporary files removed" in capsys.readouterr().out


def test_demo_keeps_a_named_workdir(quiet_steps, tmp_path):
    assert demo.main(["--workdir", str(tmp_path / "keep")]) == 0
    assert (tmp_path / "keep" / "tiny-m3" / "config.json").exists()


def test_demo_fails_when_a_step_fails(quiet_steps, monkeypatch, capsys):
    monkeypatch.setattr(demo, "step_kernels", lambda tokens: (_ for _ in ()).throw(RuntimeError("boom")))
    assert demo.main([]) == 1
    assert "failed steps: kernels" in capsys.readouterr().out


def test_launch_command_is_the_readmes_and_every_flag_is_explained():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert demo.LAUNCH_COMMAND in readme
    for flag in re.findall(r"--[a-z][a-z-]+", demo.LAUNCH_COMMAND):
        assert flag in demo.LAUNCH_NOTE


def test_pipeline_check_reports_each_stage_as_it_finishes():
    from sglang_msa_tools.pipeline_check import run_pipeline_check

    streamed = []
    report = run_pipeline_check(tokens=96, progress=streamed.append)
    assert streamed == report["lines"]
    assert streamed[-1].startswith("PASS")
