"""The output buffer cache (smg_rs/src/bufcache.rs): a features array's memory goes back to a
bounded cache when the array and its views are gone, and a later call of the same output size
reuses it. Never while referenced, outputs unchanged, off with SMG_RS_BUFFER_CACHE_MB=0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import fixtures_video as fv

np = pytest.importorskip("numpy")
smg_rs = pytest.importorskip("smg_rs")
pytestmark = [pytest.mark.cpu, pytest.mark.skipif(not fv.have_ffmpeg(), reason="needs the ffmpeg CLI")]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    # ~4 MB of float32 features: above the cache's 1 MiB floor
    return fv.make(tmp_path_factory.mktemp("bufcache") / "clip.mp4", "320x240", 10, 3,
                   ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"])


def test_live_arrays_and_views_keep_their_buffer(clip):
    smg_rs.clear_buffer_cache()
    a = smg_rs.preprocess_video(str(clip)).pixel_values
    assert a.nbytes >= 1 << 20
    ref = a.copy()
    view = a[1:]
    del a
    b = smg_rs.preprocess_video(str(clip)).pixel_values  # `view` still holds the first buffer
    assert not np.shares_memory(b, view)
    assert smg_rs.buffer_cache_stats()[0] == 0
    b[...] = np.nan  # whatever is left in a buffer must not reach a later output
    del b
    n, kept, cap = smg_rs.buffer_cache_stats()
    assert n == 1 and kept >= ref.nbytes and cap > 0
    c = smg_rs.preprocess_video(str(clip)).pixel_values  # reuses b's buffer
    assert smg_rs.buffer_cache_stats()[0] == 0
    assert c.tobytes() == ref.tobytes()
    assert view.tobytes() == ref[1:].tobytes()  # untouched by the calls after it
    del view  # the first buffer goes back now
    assert smg_rs.buffer_cache_stats()[0] == 1
    smg_rs.clear_buffer_cache()
    assert smg_rs.buffer_cache_stats()[:2] == (0, 0)


def test_float16_and_float32_buffers_do_not_mix(clip):
    smg_rs.clear_buffer_cache()
    ref16 = smg_rs.preprocess_video(str(clip), dtype="float16").pixel_values.copy()
    smg_rs.clear_buffer_cache()  # drops the float16 buffer just freed
    x = smg_rs.preprocess_video(str(clip)).pixel_values
    x[...] = np.nan
    del x
    assert smg_rs.buffer_cache_stats()[0] == 1
    y = smg_rs.preprocess_video(str(clip), dtype="float16").pixel_values
    assert smg_rs.buffer_cache_stats()[0] == 1  # the float32 buffer stays where it is
    assert y.dtype == np.float16 and y.tobytes() == ref16.tobytes()
    smg_rs.clear_buffer_cache()


_CHILD = textwrap.dedent("""
    import json, sys
    import smg_rs
    for _ in range(3):
        smg_rs.preprocess_video(sys.argv[1])
    print(json.dumps(smg_rs.buffer_cache_stats()))
""")


@pytest.mark.parametrize("mb, kept", [("0", False), ("1", False), ("64", True)])
def test_cap_from_the_environment(clip, mb, kept):
    env = {**os.environ, "SMG_RS_BUFFER_CACHE_MB": mb}
    r = subprocess.run([sys.executable, "-c", _CHILD, str(clip)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    n, nbytes, cap = json.loads(r.stdout.strip().splitlines()[-1])
    assert cap == int(mb) * 1_000_000
    assert (n == 1) if kept else (n, nbytes) == (0, 0)
    assert nbytes <= cap
