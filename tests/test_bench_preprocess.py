"""benchmarks/bench_preprocess.py's baselines compute what they claim: every decoder fed into SGLang's
sampling/resize and the HF processor picks the same frames and grid as SGLang's own path and smg_rs,
with the same pixels up to the decoders' RGB conversion."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("torch")
pytest.importorskip("transformers.models.minimax_m3_vl")
pytest.importorskip("smg_rs")
pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI for the clip")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import fixtures_video as fv  # noqa: E402


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    # Odd size, 2 s GOP over 4 s: SGLang's 1 fps sampling spans two GOPs.
    out = tmp_path_factory.mktemp("bench_pre") / "clip.mp4"
    return fv.make(out, "202x118", 25, 4.0, ["-c:v", "libx264", "-preset", "veryfast", "-g", "50", "-pix_fmt", "yuv420p"])


def test_pyav_baseline_matches_sglang_path_and_smg_rs(clip):
    pytest.importorskip("av")
    pytest.importorskip("torchcodec")
    import smg_rs

    from benchmarks import bench_preprocess as bp

    ref_pv, ref_grid, ref_idx = bp.python_path_factory()(clip, 1)
    for threads in (1, 2):
        pv, grid, idx = bp.decoder_path_factory(bp.pyav_reader)(clip, threads)
        assert grid == ref_grid and list(idx) == list(ref_idx)
        assert pv.shape == ref_pv.shape
        # The same FFmpeg decoder underneath; RGB conversion may round differently by a level.
        assert float(np.abs(pv - ref_pv).max()) <= 0.02
    ours = smg_rs.preprocess_video(clip, threads=1)
    assert tuple(ours.grid_thw) == ref_grid and ours.frame_indices == list(ref_idx)
    assert "pyav" in bp.alt_paths()
