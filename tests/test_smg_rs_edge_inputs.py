"""smg_rs on inputs the reference tests do not cover (issue #15): damaged streams, several
video streams, 10-bit and odd-sized 4:2:0 pixels, mirrored display matrices, lost timestamps.

The references are the FFmpeg CLI (`ffmpeg -i clip -f rawvideo -pix_fmt rgb24 -`, autorotate
on), ffprobe and TorchCodec (SGLang's decoder). Fixture videos are made with the ffmpeg CLI.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

import fixtures_video as fv

smg_rs = pytest.importorskip("smg_rs")

pytestmark = [
    pytest.mark.cpu,
    pytest.mark.skipif(not fv.have_ffmpeg() or fv.shutil.which("ffprobe") is None, reason="needs the ffmpeg CLI and ffprobe"),
]


@pytest.fixture(scope="module")
def vdir(tmp_path_factory):
    return tmp_path_factory.mktemp("smg_edge")


def cli_rgb(path, height: int, width: int) -> np.ndarray:
    """Every frame as the FFmpeg CLI outputs it (bicubic swscale, autorotate)."""
    raw = subprocess.run(
        [fv.FFMPEG, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def decode_both_paths(monkeypatch, source, threads, **sel):
    """(sequential, fast) outcome of decode_frames: the result, or the exception type."""
    out = []
    for sequential in (True, False):
        if sequential:
            monkeypatch.setenv("SMG_RS_SEQUENTIAL_DECODE", "1")
        else:
            monkeypatch.delenv("SMG_RS_SEQUENTIAL_DECODE", raising=False)
        try:
            out.append(smg_rs.decode_frames(source, threads=threads, **sel))
        except smg_rs.SmgError as e:
            out.append(type(e))
    return out


def test_damaged_stream_raises_the_same_on_every_path(vdir, monkeypatch):
    """Bug 2: 1% of the bytes inverted inside the second GOP. A requested frame at or after the
    damage in that GOP raises VideoDecodeError (TorchCodec raises there too) on the sequential
    and the fast paths, with 1 or 2 threads; frames before the damage and in the next GOP come
    back, identical to the undamaged file's."""
    clean, damaged = fv.damaged_mp4(vdir)
    monkeypatch.setenv("SMG_RS_SEQUENTIAL_DECODE", "1")
    reference = smg_rs.decode_frames(clean, threads=1).frames
    assert reference.shape[0] == 150
    raising = [{"fps": 2.0}, {}, {"frame_indices": [10, 80]}, {"frame_indices": [77]}, {"frame_indices": [99, 120]}]
    intact = [{"frame_indices": [10, 60, 76]}, {"frame_indices": [0, 120, 149]}, {"fps": 1.0}]
    for source in (damaged, damaged.read_bytes()):
        for threads in (1, 2):
            for sel in raising:
                got = decode_both_paths(monkeypatch, source, threads, **sel)
                assert got == [smg_rs.VideoDecodeError] * 2, (threads, sel, got)
            for sel in intact:
                for got in decode_both_paths(monkeypatch, source, threads, **sel):
                    assert not isinstance(got, type), (threads, sel, got)
                    assert max(got.frame_indices) < 77 or min(i for i in got.frame_indices if i >= 77) >= 100
                    assert got.frames.tobytes() == reference[list(got.frame_indices)].tobytes(), (threads, sel)
    monkeypatch.delenv("SMG_RS_SEQUENTIAL_DECODE", raising=False)
    with pytest.raises(smg_rs.VideoDecodeError):
        smg_rs.preprocess_video(damaged, fps=2.0)


def test_default_video_stream_is_decoded(vdir):
    """Bug 3: with two video streams, the one FFmpeg picks (av_find_best_stream: the default
    one here), as TorchCodec and the FFmpeg CLI do, not the largest."""
    path = fv.two_video_streams_mp4(vdir)
    ours = smg_rs.decode_frames(path)
    assert ours.frames.shape == (10, 64, 96, 3)
    assert ours.frames.tobytes() == cli_rgb(path, 64, 96).tobytes()
    torchcodec = pytest.importorskip("torchcodec.decoders")
    ref = torchcodec.VideoDecoder(str(path), dimension_order="NHWC")
    assert ours.frames.tobytes() == ref[:].numpy().tobytes()


@pytest.mark.parametrize("maker,encoder", [(fv.hevc_10bit_mkv, "libx265"), (fv.vp9_odd_420, "libvpx-vp9")])
def test_rgb_equals_ffmpeg_cli_on_10bit_and_odd_420(vdir, maker, encoder):
    """Bug 4: the RGB conversion is the FFmpeg CLI's (bicubic swscale), byte for byte, also
    for 10-bit and odd-sized 4:2:0 frames (bilinear was up to 2.8 levels off there)."""
    if not fv.have_encoder(encoder):
        pytest.skip(f"ffmpeg lacks {encoder}")
    path = maker(vdir)
    ours = smg_rs.decode_frames(path)
    n, h, w, _ = ours.frames.shape
    cli = cli_rgb(path, h, w)
    assert cli.shape[0] == n
    diff = np.abs(ours.frames.astype(np.int16) - cli.astype(np.int16))
    assert diff.max() == 0, (path.name, diff.max(), diff.mean())


@pytest.mark.parametrize(
    "name,matrix,shape",
    [
        ("hflip", (-1, 0, 0, 1), (96, 160)),
        ("vflip", (1, 0, 0, -1), (96, 160)),
        ("transpose", (0, 1, 1, 0), (160, 96)),
        ("antitranspose", (0, -1, -1, 0), (160, 96)),
        ("rot180", (-1, 0, 0, -1), (96, 160)),
    ],
)
def test_mirrored_display_matrix_follows_ffmpeg(vdir, name, matrix, shape):
    """Bug 5: display matrices with a mirror are applied as the FFmpeg CLI's autorotate does
    (a horizontal mirror is not a 180° turn; a vertical one is not ignored)."""
    base = fv.sized_h264(vdir, "orient_base.mp4", "160x96", 10, 1.0)
    path = fv.with_display_matrix(base, vdir / f"orient_{name}.mp4", *matrix)
    ours = smg_rs.decode_frames(path)
    assert ours.frames.shape[1:3] == shape
    assert ours.frames.tobytes() == cli_rgb(path, *shape).tobytes()
    plain = smg_rs.decode_frames(base).frames
    expected = {
        "hflip": plain[:, :, ::-1],
        "vflip": plain[:, ::-1],
        "transpose": plain.transpose(0, 2, 1, 3),
        "antitranspose": plain[:, ::-1, ::-1].transpose(0, 2, 1, 3),
        "rot180": plain[:, ::-1, ::-1],
    }[name]
    assert ours.frames.tobytes() == np.ascontiguousarray(expected).tobytes()


def test_lost_timestamps_keep_the_real_times(vdir):
    """Bug 6: an MKV that lost packets (frames 60..110) and one packet's timestamp reports the
    timestamps the file has (ffprobe), estimating only the missing one, instead of inventing
    `i / fps` for every frame (last frame 3.92 s instead of 5.96 s)."""
    path = fv.lost_timestamp_mkv(vdir)
    pts = fv.probe_packets(path, "pts", "csv=p=0").split()
    assert len(pts) == 99 and pts.count("N/A") == 1, pts[:8]
    ours = smg_rs.decode_frames(path, frame_indices=[0])
    assert ours.num_source_frames == 99
    times = smg_rs.decode_frames(path, fps=100.0).timestamps
    known = sorted(int(p) / 1000 for p in pts if p != "N/A")  # Matroska: 1 ms time base
    missing = pts.index("N/A")
    expected = sorted(known + [(int(pts[missing - 1]) + 40) / 1000])
    np.testing.assert_allclose(times, expected, atol=1e-9)
    assert times[-1] == pytest.approx(5.96)
    assert ours.duration == pytest.approx(6.0)
    assert ours.source_fps == pytest.approx(99 / 6.0)
