"""Malformed / hostile inputs: each must raise a subclass of smg_rs.SmgError quickly.

Every case runs in a child process with a timeout, so a crash (signal) or a hang is a test
failure instead of a dead pytest run. The child tries the path and the in-memory (bytes) input.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fixtures_video as fv

pytest.importorskip("smg_rs")
pytestmark = [pytest.mark.cpu, pytest.mark.skipif(not fv.have_ffmpeg(), reason="needs the ffmpeg CLI")]

TIME_BOUND_S = 30.0

CHILD = r"""
import json, sys, smg_rs
path = sys.argv[1]
out = []
for src in (path, open(path, "rb").read()):
    try:
        smg_rs.preprocess_video(src)
        out.append("no-error")
    except smg_rs.SmgError as e:
        out.append(type(e).__name__)
    except BaseException as e:
        out.append("untyped:" + type(e).__name__ + ":" + str(e)[:200])
print(json.dumps(out))
"""


def _h264(d: Path, name: str, size: str, rate: float, dur: float, faststart: bool) -> Path:
    args = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if faststart:
        args += ["-movflags", "+faststart"]
    return fv.make(d / name, size, rate, dur, args)


def _truncate(src: Path, dst: Path, frac: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * frac)])
    return dst


def _bitflip(src: Path, dst: Path) -> Path:
    data = bytearray(src.read_bytes())
    start = data.find(b"mdat") + 64  # keep the container, ruin the coded frames
    for i in range(start, len(data) - 16, 5):
        data[i] ^= 0xA5
    dst.write_bytes(bytes(data))
    return dst


def _corpus(d: Path) -> dict[str, Path]:
    c: dict[str, Path] = {}
    (d / "empty.mp4").write_bytes(b"")
    c["zero_length"] = d / "empty.mp4"
    plain = _h264(d, "plain.mp4", "128x96", 25, 2.0, faststart=False)
    fast = _h264(d, "fast.mp4", "128x96", 25, 2.0, faststart=True)
    c["truncated_moov_at_end"] = _truncate(plain, d / "trunc_moov_end.mp4", 0.6)
    c["truncated_faststart"] = _truncate(fast, d / "trunc_fast.mp4", 0.6)
    c["random_bytes"] = d / "random.mp4"
    c["random_bytes"].write_bytes(os.urandom(64 * 1024))
    c["text"] = d / "text.mp4"
    c["text"].write_text("this is not a video\n" * 200)
    png = d / "frame.png"
    fv.run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=64x64", "-frames:v", "1", str(png)])
    c["png_named_mp4"] = d / "png.mp4"
    c["png_named_mp4"].write_bytes(png.read_bytes())
    c["bit_flipped_payload"] = _bitflip(fast, d / "flipped.mp4")
    # 8192x8192 black frames compress to a few KB: a decompression bomb.
    c["bomb_8192"] = fv.make(d / "bomb.mp4", "8192x8192", 1, 1, ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"], pattern="color=c=black")
    c["frames_20k_mp4"] = _h264(d, "many.mp4", "16x16", 1000, 20.0, faststart=True)
    c["frames_20k_mkv"] = fv.make(d / "many.mkv", "16x16", 1000, 20.0, ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"])
    c["audio_only"] = d / "audio.mp4"
    fv.run_ffmpeg(["-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(c["audio_only"])])
    c["aspect_over_200"] = _h264(d, "thin.mp4", "4020x16", 5, 0.4, faststart=True)
    c["smaller_than_patch"] = _h264(d, "small.mp4", "8x8", 5, 0.4, faststart=True)
    c["codec_not_allowed"] = fv.make(d / "raw.avi", "32x32", 5, 0.4, ["-c:v", "rawvideo", "-pix_fmt", "rgb24"])
    return c


EXPECTED = {
    "zero_length": {"VideoDecodeError"},
    "truncated_moov_at_end": {"VideoDecodeError"},
    "truncated_faststart": {"VideoDecodeError"},
    "random_bytes": {"VideoDecodeError", "UnsupportedFormatError"},
    "text": {"VideoDecodeError", "UnsupportedFormatError"},
    "png_named_mp4": {"UnsupportedFormatError"},
    "bit_flipped_payload": {"VideoDecodeError"},
    "bomb_8192": {"LimitExceededError"},
    "frames_20k_mp4": {"LimitExceededError"},
    "frames_20k_mkv": {"LimitExceededError"},
    "audio_only": {"UnsupportedFormatError"},
    "aspect_over_200": {"LimitExceededError"},
    "smaller_than_patch": {"LimitExceededError"},
    "codec_not_allowed": {"UnsupportedFormatError"},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("smg_malformed"))


def run_case(path: Path) -> tuple[list[str], float, int]:
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=TIME_BOUND_S)
    elapsed = time.monotonic() - t0
    lines = res.stdout.strip().splitlines()
    outcome = json.loads(lines[-1]) if res.returncode == 0 and lines else [f"crash rc={res.returncode}: {res.stderr[-300:]}"]
    return outcome, elapsed, res.returncode


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_malformed_input_raises_typed_error(corpus, case):
    outcome, elapsed, rc = run_case(corpus[case])
    assert rc == 0, outcome
    assert elapsed < TIME_BOUND_S
    for got in outcome:
        assert got in EXPECTED[case], (case, outcome)
