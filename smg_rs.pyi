"""Type stubs for smg_rs: video preprocessing for multimodal LLM serving (Rust, FFmpeg)."""

import os
from typing import Literal, Sequence

import numpy as np
import numpy.typing as npt

__version__: str
__all__: list[str]

Source = str | os.PathLike[str] | bytes | bytearray | memoryview
Preset = Literal["minimax_m3", "qwen2_vl", "qwen3_vl", "qwen3_vl_sglang"]

class SmgError(ValueError):
    """Base class of every smg_rs error."""

class VideoDecodeError(SmgError):
    """The input could not be demuxed or decoded (corrupt, truncated, empty), or a requested
    frame is damaged: flagged by the decoder, lost, or predicted from a damaged frame of its GOP
    (smg_rs/README.md, "Damaged streams")."""

class UnsupportedFormatError(SmgError):
    """Container, codec or stream kind outside the allow-list, or not a video."""

class LimitExceededError(SmgError):
    """A documented resource limit was hit (size, pixels, frames, duration, aspect, time)."""

class InvalidArgumentError(SmgError):
    """An argument is out of range or inconsistent."""

class HardwareUnavailableError(SmgError):
    """`decoder="nvdec"` cannot run here: no CUDA driver or NVDEC, no NVDEC decoder for the codec
    in this build, or the GPU refused the stream. Software decoding still works."""

class VideoFeatures:
    """Patch features of one video or image (immutable)."""

    @property
    def pixel_values(self) -> npt.NDArray[np.float32] | npt.NDArray[np.float16]:
        """`(grid_t*grid_h*grid_w, C*temporal_patch*patch*patch)`."""
    @property
    def grid_thw(self) -> tuple[int, int, int]: ...
    @property
    def frame_indices(self) -> list[int]: ...
    @property
    def timestamps(self) -> list[float]: ...
    @property
    def source_fps(self) -> float: ...
    @property
    def duration(self) -> float: ...
    @property
    def num_source_frames(self) -> int: ...

class DecodedFrames:
    """Decoded RGB frames (immutable)."""

    @property
    def frames(self) -> npt.NDArray[np.uint8]:
        """`(n, height, width, 3)` RGB, display orientation."""
    @property
    def frame_indices(self) -> list[int]: ...
    @property
    def timestamps(self) -> list[float]: ...
    @property
    def source_fps(self) -> float: ...
    @property
    def duration(self) -> float: ...
    @property
    def num_source_frames(self) -> int: ...

def preprocess_video(
    source: Source,
    *,
    preset: Preset = "minimax_m3",
    fps: float | None = None,
    max_frames: int | None = None,
    max_pixels: int | None = None,
    max_long_side: int | None = None,
    dtype: Literal["float32", "float16"] = "float32",
    threads: int | None = None,
    max_input_bytes: int | None = None,
    max_frame_pixels: int | None = None,
    max_source_frames: int | None = None,
    max_duration_s: float | None = None,
    timeout_s: float | None = None,
    decoder: Literal["software", "nvdec"] = "software",
) -> VideoFeatures:
    """Decode, sample, resize, normalize and patchify a video for `preset`.

    "qwen3_vl" is transformers' Qwen3VLVideoProcessor with the released checkpoints' `size`
    (shortest_edge 4096, longest_edge 25165824): `n = int(frames / source_fps * fps)` clamped
    to [4, `max_frames` (768)] and to the frame count, indices `round(linspace(0, frames-1,
    n))` (n may be odd; the last frame is repeated), one antialiased bicubic resize to
    multiples of 32 with `max_pixels` (default 25165824) as the budget of the whole clip,
    mean/std 0.5. "qwen3_vl_sglang" is SGLang 0.5.17's Qwen3-VL path: SGLang's Qwen-VL
    sampling (even count, truncated linspace) and bilinear resize to multiples of 28
    (`max_pixels`: its per-frame budget), then the same HF resize (bicubic, multiples of 32).
    """

def decode_frames(
    source: Source,
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    frame_indices: Sequence[int] | None = None,
    threads: int | None = None,
    max_input_bytes: int | None = None,
    max_frame_pixels: int | None = None,
    max_source_frames: int | None = None,
    max_duration_s: float | None = None,
    timeout_s: float | None = None,
    decoder: Literal["software", "nvdec"] = "software",
) -> DecodedFrames:
    """Decode selected frames to uint8 RGB `(n, H, W, 3)`. `decoder="nvdec"`: on the GPU's NVDEC
    engine (opt-in; HardwareUnavailableError where it cannot run; smg_rs/README.md, "NVDEC")."""

def preprocess_image(
    image: npt.NDArray[np.uint8] | bytes | bytearray | memoryview,
    *,
    preset: Preset = "minimax_m3",
    max_pixels: int | None = None,
    dtype: Literal["float32", "float16"] = "float32",
) -> VideoFeatures:
    """Patch features of one RGB uint8 `(H, W, 3)` image, or encoded PNG/JPEG/WebP/BMP bytes."""

def buffer_cache_stats() -> tuple[int, int, int]:
    """(buffers kept, bytes kept, cap in bytes) of the cache of output buffers: a features array's
    memory goes there when the array and all its views are gone, for a later call whose output
    has (up to 1/8 less than) its size. Cap: SMG_RS_BUFFER_CACHE_MB (default 512, 0 disables);
    buffers under 1 MiB are not kept."""

def clear_buffer_cache() -> None:
    """Frees every buffer the output buffer cache keeps."""
