"""smg_rs frees what it demuxes: repeated calls on one clip do not grow the process (issue #15, bug 1).

Each call used to leak every packet it read (the packet scan and the decode loop both refilled one
packet with ``av_read_frame`` without unreferencing it), so RSS grew by about the input's size per
call. Measured in a fresh process, after a warm-up call, over calls whose leak would be ~40x the bound;
preprocess_video too (its output goes through the output buffer cache).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import fixtures_video as fv

pytest.importorskip("smg_rs")
pytestmark = [pytest.mark.cpu, pytest.mark.skipif(not fv.have_ffmpeg(), reason="needs the ffmpeg CLI")]

CALLS = 40
BOUND_MB = 16.0

# What both child processes start with: the clip as a path and as bytes, and the process's RSS.
_CHILD_HEAD = textwrap.dedent("""
    import gc, json, sys
    import smg_rs
    path, calls = sys.argv[1], int(sys.argv[2])
    data = open(path, "rb").read()

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 1e6
""")

_CHILD = _CHILD_HEAD + textwrap.dedent("""
    for source in (path, data):  # a file path, then bytes in memory
        smg_rs.decode_frames(source, frame_indices=[0])
    before = rss_mb()
    for i in range(calls):
        smg_rs.decode_frames(path if i % 2 else data, frame_indices=[0])
    print(json.dumps({"growth_mb": rss_mb() - before, "input_mb": len(data) / 1e6}))
""")


def _run_child(script: str, tmp_path, timeout: int) -> dict:
    """Runs ``script`` over CALLS calls on a high-bitrate clip (~4 MB) in a fresh process; its report."""
    clip = fv.make(tmp_path / "big.mp4", "1280x720", 30, 4, ["-c:v", "libx264", "-preset", "ultrafast",
                                                             "-crf", "8", "-g", "30", "-pix_fmt", "yuv420p"])
    r = subprocess.run([sys.executable, "-c", script, str(clip), str(CALLS)], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_repeated_decode_does_not_leak_the_input(tmp_path):
    # A per-call leak of the clip's packets would be ~160 MB over the calls.
    report = _run_child(_CHILD, tmp_path, timeout=300)
    assert report["input_mb"] > 2.0, report  # the clip is large enough for a leak to show
    assert report["growth_mb"] < BOUND_MB, report


_CHILD_FEATURES = _CHILD_HEAD + textwrap.dedent("""
    out_mb = 0.0
    for source in (path, data):
        out_mb = smg_rs.preprocess_video(source).pixel_values.nbytes / 1e6
    trace = []
    for i in range(calls):
        feats = smg_rs.preprocess_video(path if i % 2 else data)
        del feats
        gc.collect()
        trace.append(rss_mb())
    k = 5  # glibc arena heaps move single readings by a few MB and back: compare window minima
    print(json.dumps({"growth_mb": min(trace[-k:]) - min(trace[:k]), "first_last_mb": trace[-1] - trace[0],
                      "input_mb": len(data) / 1e6, "output_mb": out_mb, "cache": smg_rs.buffer_cache_stats()}))
""")


def test_repeated_preprocess_does_not_leak_input_or_output(tmp_path):
    # Same clip as above; the features (float32) go through the output buffer cache: a buffer
    # never returned or freed would leak the output's size per call, a packet leak the input's.
    report = _run_child(_CHILD_FEATURES, tmp_path, timeout=600)
    assert report["input_mb"] > 2.0 and report["output_mb"] > 2.0, report
    # 35 calls between the windows: a leak of either size would be > 70 MB
    assert report["growth_mb"] < BOUND_MB, report
    assert report["cache"][1] <= report["cache"][2], report  # kept bytes within the cap
