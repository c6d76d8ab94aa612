"""smg_rs vs the Python reference path (SGLang's MiniMax-M3 sampling/resize + HF processor).

Fixture videos are generated with the ffmpeg CLI into a session tmp dir. The reference
functions are SGLang's own, loaded from the installed package source (only the functions,
so that importing SGLang's model registry is not needed).
"""

from __future__ import annotations

import ast
import asyncio
import math
import os
import subprocess
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import pytest

import fixtures_video as fv

smg_rs = pytest.importorskip("smg_rs")
torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

pytestmark = [pytest.mark.cpu, pytest.mark.skipif(not fv.have_ffmpeg(), reason="needs the ffmpeg CLI")]

# Tolerances (documented in the report): smg_rs resamples float frames with
# fast_image_resize's CatmullRom convolution, torchvision with its antialiased bicubic; both
# are the same a=-0.5 kernel, so on identical decoded frames they agree to float rounding.
MAX_ABS_ERR_SAME_FRAMES = 2e-3
# For 8-bit sources our RGB frames equal TorchCodec's byte for byte, so the same bound holds
# against SGLang's full path (TorchCodec decode + torchvision + HF).


# ----------------------------------------------------------------------------- reference


def _load_sglang_minimax():
    import sglang
    from torchvision.transforms import InterpolationMode

    path = Path(sglang.__file__).parent / "srt" / "multimodal" / "processors" / "minimax_m3_vl.py"
    tree = ast.parse(path.read_text())
    wanted = {"get_hw_multiple_of", "_compute_sampled_frame_indices", "get_video_tensor"}
    body = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name in wanted]
    assert {n.name for n in body} == wanted, "SGLang's MiniMax-M3 processor changed shape"
    ns = {
        "math": math, "torch": torch, "torchvision": torchvision, "InterpolationMode": InterpolationMode,
        "Tuple": Tuple, "List": List, "Optional": Optional, "Union": Union,
        "round_up": lambda x, y: ((x - 1) // y + 1) * y,  # sglang.srt.utils.round_up
    }
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), ns)
    return ns


@pytest.fixture(scope="session")
def sgl():
    return _load_sglang_minimax()


@pytest.fixture(scope="session")
def hf_video_processor():
    mod = pytest.importorskip("transformers.models.minimax_m3_vl.video_processing_minimax_m3_vl")
    return mod.MiniMaxM3VLVideoProcessor()


def sglang_resize_config(vp) -> tuple[int, tuple[int, int]]:
    factor = vp.patch_size * vp.merge_size
    side = math.isqrt(int(vp.max_pixels))
    side -= side % factor
    return factor, (side, side)


class FramesReader:
    """The `vr` interface SGLang's get_video_tensor expects, over any frame getter."""

    def __init__(self, n: int, fps: float, getter):
        self._n, self.avg_fps, self._get = n, fps, getter

    def __len__(self):
        return self._n

    def get_frames_as_tensor(self, indices):
        return self._get(list(indices))


def reference_features(sgl, vp, reader, fps=None, max_frames=None):
    factor, max_size = sglang_resize_config(vp)
    resized, meta = asyncio.run(sgl["get_video_tensor"](reader, image_factor=factor, max_size=max_size, fps=fps, max_frames=max_frames))
    out = vp(videos=[resized], return_tensors="pt")
    pv = out["pixel_values_videos"].numpy()
    grid = tuple(int(v) for v in out["video_grid_thw"][0])
    return pv, grid, meta["frames_indices"]


def torchcodec_reader(path):
    from torchcodec.decoders import VideoDecoder

    dec = VideoDecoder(str(path), dimension_order="NHWC")
    return dec, FramesReader(len(dec), dec.metadata.average_fps, lambda ix: dec.get_frames_at(ix).data)


def smg_reader(path):
    """Reference path fed with frames decoded by smg_rs (isolates resize/normalize/layout)."""
    info = smg_rs.decode_frames(str(path), frame_indices=[0])
    return FramesReader(
        info.num_source_frames, info.source_fps,
        lambda ix: torch.from_numpy(smg_rs.decode_frames(str(path), frame_indices=ix).frames.copy()),
    )


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def vdir(tmp_path_factory):
    return tmp_path_factory.mktemp("smg_videos")


_MAKERS = {
    "h264_odd_444": fv.h264_odd_444,
    "h264_bframes": fv.h264_bframes,
    "vp9_webm": fv.vp9_webm,
    "mpeg4_avi": fv.mpeg4_avi,
    "hevc10_mkv": fv.hevc_10bit_mkv,
    "vfr_mp4": fv.vfr_mp4,
    "rotated_mp4": fv.rotated_mp4,
}
_ENCODER = {"vp9_webm": "libvpx-vp9", "hevc10_mkv": "libx265"}
_cache: dict[str, Path] = {}


@pytest.fixture(scope="session")
def video(vdir):
    def get(name: str) -> Path:
        if name in _ENCODER and not fv.have_encoder(_ENCODER[name]):
            pytest.skip(f"ffmpeg lacks {_ENCODER[name]}")
        if name not in _cache:
            _cache[name] = _MAKERS[name](vdir)
        return _cache[name]

    return get


ALL = list(_MAKERS)


# --------------------------------------------------------------------------------- tests


def test_module_surface():
    assert isinstance(smg_rs.__version__, str) and smg_rs.__version__
    assert issubclass(smg_rs.SmgError, ValueError)
    for name in ("VideoDecodeError", "UnsupportedFormatError", "LimitExceededError", "InvalidArgumentError",
                 "HardwareUnavailableError"):
        assert issubclass(getattr(smg_rs, name), smg_rs.SmgError)
        assert name in smg_rs.__all__
    assert {"preprocess_video", "decode_frames", "preprocess_image"} <= set(smg_rs.__all__)


def test_decoder_argument_is_checked(video):
    path = video("h264_bframes")
    for call in (lambda d: smg_rs.decode_frames(path, frame_indices=[0], decoder=d),
                 lambda d: smg_rs.preprocess_video(path, max_frames=2, decoder=d)):
        with pytest.raises(smg_rs.InvalidArgumentError, match="'software' or 'nvdec'"):
            call("cuda")
        with pytest.raises(smg_rs.InvalidArgumentError):
            call("")
    soft = smg_rs.decode_frames(path, frame_indices=[0, 5], decoder="software")
    assert np.array_equal(soft.frames, smg_rs.decode_frames(path, frame_indices=[0, 5]).frames)


def test_nvdec_refuses_what_it_cannot_decode_before_decoding(video):
    """4:4:4 H.264 (NVDEC decodes 4:2:0): the typed error, on any machine, before any frame."""
    with pytest.raises(smg_rs.HardwareUnavailableError, match="yuv444p is not 4:2:0"):
        smg_rs.decode_frames(video("h264_odd_444"), frame_indices=[0], decoder="nvdec")
    with pytest.raises(smg_rs.HardwareUnavailableError, match="4:2:0"):
        smg_rs.preprocess_video(video("h264_odd_444"), max_frames=2, decoder="nvdec")


def _nvdec_or_reason(path) -> tuple[object, str | None]:
    try:
        return smg_rs.decode_frames(path, frame_indices=[0, 7, 31, 60], decoder="nvdec"), None
    except smg_rs.HardwareUnavailableError as exc:
        return None, str(exc)


def test_nvdec_equals_software_or_says_why_not(video):
    """Where NVDEC runs (a GPU machine whose driver exposes it), 8-bit 4:2:0 H.264 decodes to the
    software path's pixels; elsewhere (this CPU machine, CI) the call raises the typed error naming
    what is missing, and never a generic failure."""
    path = video("h264_bframes")
    got, why = _nvdec_or_reason(path)
    if got is None:
        assert "NVDEC" in why
        with pytest.raises(smg_rs.HardwareUnavailableError):
            smg_rs.preprocess_video(path, max_frames=2, decoder="nvdec")
        return
    soft = smg_rs.decode_frames(path, frame_indices=[0, 7, 31, 60])
    assert got.frames.shape == soft.frames.shape and got.frame_indices == soft.frame_indices
    assert np.abs(got.frames.astype(int) - soft.frames.astype(int)).max() == 0
    a = smg_rs.preprocess_video(path, max_frames=4, decoder="nvdec")
    b = smg_rs.preprocess_video(path, max_frames=4)
    assert a.grid_thw == b.grid_thw and np.array_equal(a.pixel_values, b.pixel_values)


@pytest.mark.parametrize("name", ALL)
def test_decode_matches_torchcodec(video, name):
    path = video(name)
    dec, _ = torchcodec_reader(path)
    ours = smg_rs.decode_frames(path)
    assert ours.num_source_frames == len(dec)
    assert ours.source_fps == pytest.approx(dec.metadata.average_fps, rel=1e-9)
    ref = dec.get_frames_at(list(range(len(dec))))
    assert ours.frames.shape == tuple(ref.data.shape)
    np.testing.assert_allclose(ours.timestamps, ref.pts_seconds.numpy(), atol=1e-9)
    diff = np.abs(ours.frames.astype(np.int16) - ref.data.numpy().astype(np.int16))
    # Same FFmpeg decoder and the FFmpeg CLI's swscale settings (bicubic) -> identical bytes,
    # 10-bit input included.
    assert diff.max() == 0, (name, diff.mean(), diff.max())


def test_mpegts_matches_ffmpeg_cli(vdir):
    """MPEG-TS (no index; timestamps from 1.4 s): every frame byte-identical to the FFmpeg CLI's
    decode, timestamps increasing from the stream's own start. (TorchCodec's frame count for TS is an
    estimate it cannot decode to, so the CLI is the reference here.)"""
    path = fv.h264_ts(vdir)
    ours = smg_rs.decode_frames(path)
    raw = subprocess.run([fv.FFMPEG, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    cli = np.frombuffer(raw, np.uint8).reshape(-1, 120, 160, 3)
    assert ours.num_source_frames == len(cli) == 75 and ours.frames.tobytes() == cli.tobytes()
    ts = np.asarray(ours.timestamps)
    assert ts[0] >= 1.4 and np.allclose(np.diff(ts), 0.04)
    assert smg_rs.preprocess_video(path.read_bytes(), fps=2.0).frame_indices == \
        smg_rs.preprocess_video(path, fps=2.0).frame_indices


def test_rotation_matches_ffmpeg_cli(video):
    path = video("rotated_mp4")
    ours = smg_rs.decode_frames(path, frame_indices=[0, 5])
    assert ours.frames.shape == (2, 160, 96, 3)  # 160x96 landscape shown as portrait
    raw = subprocess.run(
        [fv.FFMPEG, "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout
    cli = np.frombuffer(raw, np.uint8).reshape(160, 96, 3)
    diff = np.abs(ours.frames[0].astype(np.int16) - cli.astype(np.int16))
    assert diff.mean() < 2.0, diff.mean()
    # the unrotated orientation would be a transposed shape; check content, not just shape
    flipped = np.abs(ours.frames[0][::-1, ::-1].astype(np.int16) - cli.astype(np.int16))
    assert flipped.mean() > 5 * max(diff.mean(), 0.5)


@pytest.mark.parametrize("name", ALL)
def test_minimax_matches_hf_on_same_frames(video, sgl, hf_video_processor, name):
    path = video(name)
    ours = smg_rs.preprocess_video(path)
    pv, grid, idx = reference_features(sgl, hf_video_processor, smg_reader(path))
    assert ours.frame_indices == list(idx)
    assert ours.grid_thw == grid
    assert ours.pixel_values.dtype == np.float32
    assert ours.pixel_values.shape == pv.shape
    err = float(np.abs(ours.pixel_values - pv).max())
    assert err < MAX_ABS_ERR_SAME_FRAMES, (name, err)


@pytest.mark.parametrize("name", ["h264_bframes", "vfr_mp4", "rotated_mp4", "mpeg4_avi"])
def test_minimax_matches_full_sglang_path(video, sgl, hf_video_processor, name):
    """Against SGLang's real decoder (TorchCodec): same indices and grid, close values."""
    path = video(name)
    ours = smg_rs.preprocess_video(path)
    _, reader = torchcodec_reader(path)
    pv, grid, idx = reference_features(sgl, hf_video_processor, reader)
    assert ours.frame_indices == list(idx)
    assert ours.grid_thw == grid
    err = float(np.abs(ours.pixel_values - pv).max())
    assert err < MAX_ABS_ERR_SAME_FRAMES, (name, err)


@pytest.mark.parametrize("fps,max_frames", [(2.0, None), (3.0, 5), (0.5, None), (7.0, 1)])
def test_sampling_options_match_sglang(video, sgl, hf_video_processor, fps, max_frames):
    path = video("h264_bframes")
    ours = smg_rs.preprocess_video(path, fps=fps, max_frames=max_frames)
    pv, grid, idx = reference_features(sgl, hf_video_processor, smg_reader(path), fps=fps, max_frames=max_frames)
    assert ours.frame_indices == list(idx)
    assert ours.grid_thw == grid
    assert float(np.abs(ours.pixel_values - pv).max()) < MAX_ABS_ERR_SAME_FRAMES


def test_tiny_frames_take_the_two_stage_resize(vdir, sgl, hf_video_processor):
    path = fv.sized_h264(vdir, "tiny.mp4", "24x20", 10, 1.0)
    ours = smg_rs.preprocess_video(path)
    pv, grid, idx = reference_features(sgl, hf_video_processor, smg_reader(path))
    assert grid == ours.grid_thw and grid[1:] == (4, 4)  # 28x28 first, then 56x56 by smart_resize
    assert float(np.abs(ours.pixel_values - pv).max()) < MAX_ABS_ERR_SAME_FRAMES


def test_large_frames_capped(vdir, sgl, hf_video_processor):
    path = fv.sized_h264(vdir, "wide.mp4", "1000x562", 5, 0.8)
    ours = smg_rs.preprocess_video(path)
    pv, grid, _ = reference_features(sgl, hf_video_processor, smg_reader(path))
    assert ours.grid_thw == grid and grid[2] * 14 == 756
    assert float(np.abs(ours.pixel_values - pv).max()) < MAX_ABS_ERR_SAME_FRAMES
    capped = smg_rs.preprocess_video(path, max_long_side=224)
    assert capped.grid_thw[2] * 14 == 224


def test_sources_are_equivalent(video):
    path = video("vp9_webm")
    a = smg_rs.preprocess_video(str(path))
    data = path.read_bytes()
    for src in (path, data, memoryview(data), bytearray(data)):
        b = smg_rs.preprocess_video(src)
        assert b.grid_thw == a.grid_thw
        np.testing.assert_array_equal(b.pixel_values, a.pixel_values)


def test_threads_and_dtype(video):
    path = video("h264_bframes")
    one = smg_rs.preprocess_video(path, threads=1, fps=4.0)
    two = smg_rs.preprocess_video(path, threads=2, fps=4.0)
    np.testing.assert_array_equal(one.pixel_values, two.pixel_values)
    half = smg_rs.preprocess_video(path, fps=4.0, dtype="float16")
    assert half.pixel_values.dtype == np.float16
    np.testing.assert_allclose(half.pixel_values.astype(np.float32), one.pixel_values, atol=4e-3, rtol=1e-3)


def test_odd_frame_count_pads_last_frame(video):
    path = video("h264_odd_444")  # 96 frames at 30 fps -> 0,30,60,90,95: five frames
    f = smg_rs.preprocess_video(path)
    assert f.frame_indices == [0, 30, 60, 90, 95]
    t, h, w = f.grid_thw
    assert t == 3
    pv = f.pixel_values.reshape(t, h * w, 3, 2, 14 * 14)
    np.testing.assert_array_equal(pv[2, :, :, 0], pv[2, :, :, 1])
    assert not np.array_equal(pv[1, :, :, 0], pv[1, :, :, 1])
    assert np.isfinite(f.pixel_values).all()
    assert f.timestamps == pytest.approx([i / 30 for i in f.frame_indices])


def test_vfr_uses_timestamps(video):
    path = video("vfr_mp4")
    d = smg_rs.decode_frames(path)
    assert d.num_source_frames == 50
    gaps = np.diff(d.timestamps)
    assert gaps.min() == pytest.approx(1 / 30, abs=1e-3) and gaps.max() == pytest.approx(0.1, abs=1e-3)


def test_preprocess_image_matches_hf():
    mod = pytest.importorskip("transformers.models.minimax_m3_vl.image_processing_minimax_m3_vl")
    ip = mod.MiniMaxM3VLImageProcessor()
    rng = np.random.default_rng(0)
    for shape in [(117, 203, 3), (600, 900, 3), (30, 41, 3)]:
        img = rng.integers(0, 256, size=shape, dtype=np.uint8)
        ours = smg_rs.preprocess_image(img)
        ref = ip(images=[torch.from_numpy(img).permute(2, 0, 1)], return_tensors="pt")
        assert ours.grid_thw == tuple(int(v) for v in ref["image_grid_thw"][0])
        err = np.abs(ours.pixel_values - ref["pixel_values"].numpy())
        # uint8 resampling: PIL-style integer rounding on both sides; a rare 1-level tie
        # difference is 1/255/std ~ 0.015.
        assert err.max() <= 0.016, (shape, err.max())
        assert (err > 1e-4).mean() < 0.01


def test_invalid_arguments(video):
    path = video("vp9_webm")
    with pytest.raises(smg_rs.InvalidArgumentError):
        smg_rs.preprocess_video(path, preset="nope")
    with pytest.raises(smg_rs.InvalidArgumentError):
        smg_rs.preprocess_video(path, fps=0.0)
    with pytest.raises(smg_rs.InvalidArgumentError):
        smg_rs.preprocess_video(path, threads=0)
    with pytest.raises(smg_rs.InvalidArgumentError):
        smg_rs.preprocess_video(path, dtype="int8")
    with pytest.raises(smg_rs.InvalidArgumentError):
        smg_rs.decode_frames(path, frame_indices=[10_000])
    with pytest.raises(smg_rs.InvalidArgumentError):
        smg_rs.decode_frames(12345)
    with pytest.raises(ValueError):  # a plain ValueError catch works too
        smg_rs.decode_frames(path, frame_indices=[-1])


def test_decode_frames_selection(video):
    path = video("mpeg4_avi")
    full = smg_rs.decode_frames(path)
    some = smg_rs.decode_frames(path, frame_indices=[7, 3, 7, 0])
    assert some.frame_indices == [7, 3, 7, 0]
    for k, i in enumerate(some.frame_indices):
        np.testing.assert_array_equal(some.frames[k], full.frames[i])
    thinned = smg_rs.decode_frames(path, max_frames=4)
    assert len(thinned.frame_indices) == 4 and thinned.frame_indices[-1] == full.num_source_frames - 1


@pytest.mark.parametrize("preset,patch", [("qwen2_vl", 14), ("qwen3_vl", 16), ("qwen3_vl_sglang", 16)])
@pytest.mark.parametrize("name", ["h264_bframes", "vfr_mp4"])
def test_qwen_presets_shapes(video, preset, patch, name):
    f = smg_rs.preprocess_video(video(name), preset=preset)
    t, h, w = f.grid_thw
    assert f.pixel_values.shape == (t * h * w, 3 * 2 * patch * patch)
    # Pairs of frames make one temporal patch; HF's Qwen3-VL sampling may pick an odd count and
    # repeats the last frame, SGLang's always picks an even one.
    assert t == -(-len(f.frame_indices) // 2) and h % 2 == 0 and w % 2 == 0
    if preset != "qwen3_vl":
        assert len(f.frame_indices) % 2 == 0


def test_preprocess_image_from_encoded_bytes(vdir, video):
    png = vdir / "still.png"
    fv.run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=202x116", "-frames:v", "1", str(png)])
    raw = subprocess.run(
        [fv.FFMPEG, "-v", "error", "-i", str(png), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout
    arr = np.frombuffer(raw, np.uint8).reshape(116, 202, 3)
    from_bytes = smg_rs.preprocess_image(png.read_bytes())
    from_array = smg_rs.preprocess_image(arr)
    assert from_bytes.grid_thw == from_array.grid_thw
    np.testing.assert_array_equal(from_bytes.pixel_values, from_array.pixel_values)
    with pytest.raises(smg_rs.UnsupportedFormatError):  # a video is not an image
        smg_rs.preprocess_image(video("vp9_webm").read_bytes())
    with pytest.raises(smg_rs.SmgError):
        smg_rs.preprocess_image(b"not an image" * 20)


# ------------------------------------------------------------------- qwen2_vl vs SGLang


def _load_sglang_qwen():
    import sglang
    from torchvision.transforms import InterpolationMode

    path = Path(sglang.__file__).parent / "srt" / "multimodal" / "processors" / "qwen_vl.py"
    tree = ast.parse(path.read_text())
    funcs = {"smart_resize", "round_by_factor", "ceil_by_factor", "floor_by_factor", "smart_nframes", "preprocess_video"}
    consts = {"IMAGE_FACTOR", "MIN_PIXELS", "MAX_RATIO", "VIDEO_TOTAL_PIXELS", "VIDEO_MIN_PIXELS", "VIDEO_MAX_PIXELS",
              "FRAME_FACTOR", "FPS", "FPS_MIN_FRAMES", "FPS_MAX_FRAMES"}
    body = []
    for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name in funcs:
            body.append(n)
        elif isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id in consts for t in n.targets):
            body.append(n)
    import logging
    import time as _time

    class VideoDecoderWrapper(FramesReader):
        pass

    ns = {"math": math, "np": np, "torch": torch, "torchvision": torchvision, "InterpolationMode": InterpolationMode,
          "os": os, "time": _time, "logger": logging.getLogger("sgl_qwen_ref"), "VideoDecoderWrapper": VideoDecoderWrapper,
          "MAX_PIXELS": 16384 * 28 * 28}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), ns)
    return ns


def test_qwen2_vl_matches_sglang_and_hf(video, monkeypatch):
    mod = pytest.importorskip("transformers.models.qwen2_vl.video_processing_qwen2_vl")
    ns = _load_sglang_qwen()
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self)  # no GPU here
    vp = mod.Qwen2VLVideoProcessor()
    for name in ("h264_bframes", "vp9_webm", "h264_odd_444"):
        path = video(name)
        info = smg_rs.decode_frames(str(path), frame_indices=[0])
        reader = ns["VideoDecoderWrapper"](
            info.num_source_frames, info.source_fps,
            lambda ix: torch.from_numpy(smg_rs.decode_frames(str(path), frame_indices=ix).frames.copy()),
        )
        frames, meta = asyncio.run(ns["preprocess_video"](reader, image_factor=28, video_config={}))
        ref = vp(videos=[frames], return_tensors="pt")
        ours = smg_rs.preprocess_video(path, preset="qwen2_vl")
        assert ours.frame_indices == [int(i) for i in meta["frames_indices"]]
        assert ours.grid_thw == tuple(int(v) for v in ref["video_grid_thw"][0])
        err = np.abs(ours.pixel_values - ref["pixel_values_videos"].numpy())
        # uint8 resampling on both sides (antialiased bilinear): fast_image_resize and torch
        # round differently in 3-7% of values, never by more than one uint8 level (~0.0155).
        assert err.max() <= 0.016, (name, err.max())
        assert (err > 1e-4).mean() < 0.10, (name, (err > 1e-4).mean())


# ----------------------------------------------------------- qwen3_vl vs HF, qwen3_vl_sglang vs SGLang

# `size` of the released Qwen3-VL checkpoints' video_preprocessor_config.json. The class
# defaults (shortest_edge 131072, longest_edge 786432) are not what a served model uses.
QWEN3_CHECKPOINT_SIZE = {"shortest_edge": 4096, "longest_edge": 25165824}
# One uint8 level after Qwen3-VL's normalization (mean = std = 0.5): 1 / (0.5 * 255).
QWEN3_ONE_LEVEL = 1 / 127.5


def _qwen3_video_processor(max_pixels=None, **kwargs):
    """The HF processor as the checkpoints configure it; `max_pixels` replaces longest_edge."""
    mod = pytest.importorskip("transformers.models.qwen3_vl.video_processing_qwen3_vl")
    size = dict(QWEN3_CHECKPOINT_SIZE, longest_edge=max_pixels) if max_pixels else QWEN3_CHECKPOINT_SIZE
    return mod.Qwen3VLVideoProcessor(size=size, **kwargs)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("h264_bframes", {}),  # 29.97 fps: 8 frames; 240x320 -> 256x320 (one side resampled)
        ("h264_odd_444", {}),  # 116x202 -> 128x192 (both sides), 6 frames
        ("vfr_mp4", {}),  # VFR, average 17.05 fps: 5 frames (odd: last one repeated)
        ("vp9_webm", {"fps": 5.0}),  # 25 fps clip at 5 fps: 10 frames
        ("mpeg4_avi", {"fps": 1.0, "max_frames": 3}),  # max_frames below min_frames (4) wins
        ("h264_bframes", {"max_pixels": 200_000}),  # clip-wide budget: 8 x 128x160
        ("rotated_mp4", {"fps": 5.0}),  # display-rotated portrait frames, 5 frames
    ],
)
def test_qwen3_vl_matches_hf(video, name, kwargs):
    """Preset `qwen3_vl` is transformers' Qwen3VLVideoProcessor on its own: it gets every
    decoded frame plus the video metadata and samples itself (`int(frames / fps_src * fps)`
    clamped to [min_frames, max_frames] and the frame count, `round(linspace)`, odd counts
    allowed), then one antialiased bicubic uint8 resize whose smart_resize budget
    (`size["longest_edge"]`, our `max_pixels`) covers the whole clip, mean/std 0.5.

    SGLang 0.5.17 preprocesses Qwen3-VL videos differently (multimodal/processors/qwen_vl.py,
    `preprocess_video`, shared with Qwen2-VL), then calls this processor with
    `do_sample_frames=False`: (1) it samples itself, an even count floored to 2 with a
    truncating `int64` linspace (vfr_mp4: SGLang [0, 16, 32, 49], HF [0, 12, 24, 37, 49]);
    (2) it first resizes with bilinear to multiples of 28 (its IMAGE_FACTOR, Qwen2-VL's) under
    a per-frame budget of 128*28*28 .. min(768*28*28, total_pixels / n * 2); (3) HF's bicubic
    smart_resize to multiples of 32 then runs on those frames. Grids differ (h264_bframes:
    HF (4, 16, 20), SGLang (4, 18, 24)); that path is preset `qwen3_vl_sglang`, tested below.

    HF reads `max_frames` from the processor (a `max_frames=` call argument is ignored), so it
    is passed to the constructor here.
    """
    path = video(name)
    full = smg_rs.decode_frames(path)
    n_src = full.num_source_frames
    vp = _qwen3_video_processor(kwargs.get("max_pixels"), **({"max_frames": kwargs["max_frames"]} if "max_frames" in kwargs else {}))
    meta = {"total_num_frames": n_src, "fps": full.source_fps, "duration": full.duration,
            "height": full.frames.shape[1], "width": full.frames.shape[2]}
    call = {"fps": kwargs["fps"]} if "fps" in kwargs else {}
    ref = vp(videos=[full.frames], video_metadata=[meta], return_metadata=True, return_tensors="pt", **call)
    ref_idx = [int(i) for i in ref["video_metadata"][0].frames_indices]
    ref_grid = tuple(int(v) for v in ref["video_grid_thw"][0])
    ours = smg_rs.preprocess_video(path, preset="qwen3_vl", **kwargs)
    assert ours.frame_indices == ref_idx
    assert ours.grid_thw == ref_grid
    assert ref_grid[0] == (len(ref_idx) + 1) // 2  # odd counts pad by repeating the last frame
    assert ours.timestamps == pytest.approx([full.timestamps[i] for i in ref_idx])
    pv = ref["pixel_values_videos"].numpy()
    assert ours.pixel_values.shape == pv.shape
    err = np.abs(ours.pixel_values - pv)
    # Both sides resample uint8 frames with the same antialiased Catmull-Rom weights, in two
    # rounded passes: measured bit-identical (max error 0.0) on every case here. One uint8
    # level is allowed for rounding ties (as in test_preprocess_image_matches_hf), rarely.
    assert err.max() <= QWEN3_ONE_LEVEL + 1e-6, (name, kwargs, err.max())
    assert (err > 1e-4).mean() < 0.01, (name, kwargs, (err > 1e-4).mean())


@pytest.mark.parametrize(
    "name,cfg",
    [
        ("h264_bframes", {}),  # 28-multiples 280x392 (min_pixels up-scale), then 288x384
        ("h264_odd_444", {}),
        ("vfr_mp4", {"fps": 5.0}),  # 14 frames (even), truncated linspace
        ("mpeg4_avi", {"fps": 3.0, "max_frames": 5}),  # max_frames floored to 4
        ("vp9_webm", {"max_pixels": 60_000}),  # SGLang's per-frame cap (below min: min wins)
        ("wide_1000x562", {}),  # 560x1008 first, then 576x1008
    ],
)
def test_qwen3_vl_sglang_matches_sglang_and_hf(video, vdir, monkeypatch, name, cfg):
    """Preset `qwen3_vl_sglang` is what SGLang 0.5.17 feeds a Qwen3-VL model: its Qwen-VL
    `preprocess_video` (sampling + bilinear resize to multiples of 28, the function is called
    without image_factor) and then Qwen3VLVideoProcessor with do_sample_frames=False and the
    checkpoints' size. See test_qwen3_vl_matches_hf for how this differs from HF alone."""
    ns = _load_sglang_qwen()
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self)  # no GPU here
    path = fv.sized_h264(vdir, "wide_1000x562.mp4", "1000x562", 5, 0.8) if name == "wide_1000x562" else video(name)
    info = smg_rs.decode_frames(str(path), frame_indices=[0])
    reader = ns["VideoDecoderWrapper"](
        info.num_source_frames, info.source_fps,
        lambda ix: torch.from_numpy(smg_rs.decode_frames(str(path), frame_indices=ix).frames.copy()),
    )
    frames, meta = asyncio.run(ns["preprocess_video"](reader, video_config=dict(cfg)))
    ref = _qwen3_video_processor()(videos=[frames], video_metadata=[meta], do_sample_frames=False, return_tensors="pt")
    ours = smg_rs.preprocess_video(path, preset="qwen3_vl_sglang", **cfg)
    assert ours.frame_indices == [int(i) for i in meta["frames_indices"]]
    assert len(ours.frame_indices) % 2 == 0
    assert ours.grid_thw == tuple(int(v) for v in ref["video_grid_thw"][0])
    pv = ref["pixel_values_videos"].numpy()
    assert ours.pixel_values.shape == pv.shape
    err = np.abs(ours.pixel_values - pv)
    # The bilinear uint8 stage rounds differently from torch's in a few percent of values by
    # one level (as for qwen2_vl); the second, bicubic resize (Catmull-Rom: negative lobes,
    # two rounded passes) carries such differences on, measured up to 3 levels (0.0235) in
    # 1-8% of values. Grids and indices are exact.
    assert err.max() <= 3 * QWEN3_ONE_LEVEL + 1e-6, (name, cfg, err.max())
    assert (err > 1e-4).mean() < 0.10, (name, cfg, (err > 1e-4).mean())


@pytest.mark.parametrize("name", ["h264_bframes", "vfr_mp4", "hevc10_mkv"])
def test_skipping_decode_matches_sequential_decode(video, name, monkeypatch):
    """Sparse selections let the decoder drop unrequested non-reference pictures; the frames
    it returns must be byte-identical to a full sequential decode (no skipping at all)."""
    path = video(name)
    monkeypatch.setenv("SMG_RS_SEQUENTIAL_DECODE", "1")
    full = smg_rs.decode_frames(path, threads=1)
    n = full.num_source_frames
    selections = [
        {"fps": 1.0}, {"fps": 2.0}, {"frame_indices": list(range(1, n, 7))},
        {"frame_indices": [n - 2, 2, 5, 2]}, {"frame_indices": [1]},
    ]
    for threads in (1, 2):
        for sel in selections:
            monkeypatch.setenv("SMG_RS_SEQUENTIAL_DECODE", "1")
            plain = smg_rs.decode_frames(path, threads=threads, **sel)
            monkeypatch.delenv("SMG_RS_SEQUENTIAL_DECODE")
            fast = smg_rs.decode_frames(path, threads=threads, **sel)
            assert fast.frame_indices == plain.frame_indices
            np.testing.assert_array_equal(fast.timestamps, plain.timestamps)
            assert fast.frames.tobytes() == plain.frames.tobytes(), (name, threads, sel)
            assert fast.frames.tobytes() == full.frames[fast.frame_indices].tobytes(), (name, threads, sel)
    monkeypatch.setenv("SMG_RS_SEQUENTIAL_DECODE", "1")
    plain = smg_rs.preprocess_video(path, fps=2.0, threads=1)
    monkeypatch.delenv("SMG_RS_SEQUENTIAL_DECODE")
    fast = smg_rs.preprocess_video(path, fps=2.0, threads=1)
    assert fast.frame_indices == plain.frame_indices and fast.grid_thw == plain.grid_thw
    assert np.asarray(fast.pixel_values).tobytes() == np.asarray(plain.pixel_values).tobytes()


_SHORT_GOP = {
    "h264_g12": fv.h264_gop12,
    "h264_g12_b2": fv.h264_gop12_bframes,
    "h264_g12_b2_mkv": fv.h264_gop12_bframes_mkv,
    "h264_g12_b2_ts": fv.h264_gop12_bframes_ts,
    "vfr_g12": fv.vfr_gop12,
    "hevc_g12_mkv": fv.hevc_gop12_mkv,
    "vp9_g12_webm": fv.vp9_gop12_webm,
    "mpeg4_g12_avi": fv.mpeg4_gop12_avi,
}
_SHORT_GOP_ENCODER = {"hevc_g12_mkv": "libx265", "vp9_g12_webm": "libvpx-vp9"}


@pytest.mark.parametrize("name", list(_SHORT_GOP))
def test_seeking_decode_matches_sequential_decode(vdir, name, monkeypatch):
    """Selections sparser than a GOP make the decoder seek to keyframes; every frame it
    returns must be byte-identical to a sequential decode (SMG_RS_SEQUENTIAL_DECODE=1: no
    seeking, no skipping) and to the same frame of a full decode, for paths and bytes."""
    if name in _SHORT_GOP_ENCODER and not fv.have_encoder(_SHORT_GOP_ENCODER[name]):
        pytest.skip(f"ffmpeg lacks {_SHORT_GOP_ENCODER[name]}")
    if fv.shutil.which("ffprobe") is None:
        pytest.skip("needs ffprobe")
    path = _SHORT_GOP[name](vdir)
    keys = fv.keyframe_indices(path)
    assert len(keys) >= 5 and keys[0] == 0, keys  # room to seek over whole GOPs
    monkeypatch.setenv("SMG_RS_SEQUENTIAL_DECODE", "1")
    full = smg_rs.decode_frames(path, threads=1)
    n = full.num_source_frames
    assert n >= 100
    # consecutive frames differ (moving pattern): a frame from the wrong position is caught
    assert all(full.frames[i].tobytes() != full.frames[i + 1].tobytes() for i in range(n - 1))
    on_keys = keys[2::2]
    before_keys = [k - 1 for k in keys[3::2]]
    selections = [
        {"fps": 1.0},
        {"fps": 0.5},
        {"fps": 2.0, "max_frames": 4},
        {"frame_indices": on_keys},
        {"frame_indices": before_keys},
        {"frame_indices": [n - 1, keys[-1], keys[3] - 1, keys[3], 0, keys[3], keys[1] + 1]},
        {"frame_indices": [keys[-2] + 1, keys[-2] + 1, keys[-2] + 1]},
        {"frame_indices": [n - 1]},
    ]
    _check_against_sequential(path, full, selections, name, monkeypatch)


def _check_against_sequential(path, full, selections, name, monkeypatch, preprocess=True):
    """Every selection, from a path and from bytes, on 1 decoder and on 2 and 3 (parallel GOP
    workers when the frames lie under several keyframes): byte-identical to a sequential decode
    and to the same frames of `full`; preprocess_video too (it needs the frames in order)."""
    data = path.read_bytes()
    for source in (path, data):
        for threads in (1, 2, 3):
            for sel in selections:
                monkeypatch.setenv("SMG_RS_SEQUENTIAL_DECODE", "1")
                plain = smg_rs.decode_frames(source, threads=threads, **sel)
                monkeypatch.delenv("SMG_RS_SEQUENTIAL_DECODE")
                fast = smg_rs.decode_frames(source, threads=threads, **sel)
                where = (name, type(source).__name__, threads, sel)
                assert fast.frame_indices == plain.frame_indices, where
                if "frame_indices" in sel:
                    assert list(fast.frame_indices) == sel["frame_indices"], where
                np.testing.assert_array_equal(fast.timestamps, plain.timestamps)
                assert fast.frames.tobytes() == plain.frames.tobytes(), where
                assert fast.frames.tobytes() == full.frames[list(fast.frame_indices)].tobytes(), where
    for threads in (1, 2, 3) if preprocess else ():
        monkeypatch.setenv("SMG_RS_SEQUENTIAL_DECODE", "1")
        plain = smg_rs.preprocess_video(data, fps=1.0, threads=1)
        monkeypatch.delenv("SMG_RS_SEQUENTIAL_DECODE")
        fast = smg_rs.preprocess_video(data, fps=1.0, threads=threads)
        assert fast.frame_indices == plain.frame_indices and fast.grid_thw == plain.grid_thw
        np.testing.assert_array_equal(fast.timestamps, plain.timestamps)
        assert np.asarray(fast.pixel_values).tobytes() == np.asarray(plain.pixel_values).tobytes(), (name, threads)


def test_dead_tail_raises_alike_on_every_path(vdir, monkeypatch):
    """The last 3 packets of the stream cannot be decoded (the decoder rejects them, as
    TorchCodec reports): a selection that asks for one of them raises VideoDecodeError on one
    decoder as on several, sequential or seeking; the frames before them decode as usual."""
    if fv.shutil.which("ffprobe") is None:
        pytest.skip("needs ffprobe")
    path = fv.h264_gop12_dead_tail(vdir, dead=3)
    keys = fv.keyframe_indices(path)
    assert len(keys) >= 8 and keys[0] == 0, keys
    monkeypatch.setenv("SMG_RS_SEQUENTIAL_DECODE", "1")
    full = smg_rs.decode_frames(path, threads=1, frame_indices=list(range(147)))
    n = smg_rs.decode_frames(path, frame_indices=[0]).num_source_frames
    assert n == 150
    assert all(full.frames[i].tobytes() != full.frames[i + 1].tobytes() for i in range(146))
    intact = [
        {"frame_indices": [0, keys[3], keys[3], keys[-2] + 1, n - 4, keys[5] - 1]},
        {"frame_indices": [keys[2], keys[4], n - 4]},
        {"frame_indices": list(range(n - 3))},
    ]
    _check_against_sequential(path, full, intact, "h264_g12_dead_tail", monkeypatch, preprocess=False)
    dead = [{"fps": 1.0}, {"fps": 2.0}, {"frame_indices": [n - 1, 0, keys[3]]}, {"frame_indices": [keys[2], n - 3]}, {}]
    for source in (path, path.read_bytes()):
        for threads in (1, 2, 3):
            for sel in dead:
                for sequential in ("1", None):
                    if sequential:
                        monkeypatch.setenv("SMG_RS_SEQUENTIAL_DECODE", sequential)
                    else:
                        monkeypatch.delenv("SMG_RS_SEQUENTIAL_DECODE", raising=False)
                    with pytest.raises(smg_rs.VideoDecodeError, match="damaged"):
                        smg_rs.decode_frames(source, threads=threads, **sel)
