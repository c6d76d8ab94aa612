"""MiniMax-M3-VL multimodal processor whose image and video preprocessing runs in ``smg_rs``.

It subclasses SGLang's in-tree ``MiniMaxM3VLProcessor`` and replaces only the pixel work:

* videos are decoded, sampled, resized, normalized and patchified by ``smg_rs.preprocess_video``
  (FFmpeg from Rust, GIL released, run on SGLang's multimodal I/O threads) instead of TorchCodec +
  torchvision + the transformers video processor;
* images are still loaded by SGLang (URLs, base64, RGB conversion), then resized, normalized and
  patchified by ``smg_rs.preprocess_image``.

Everything after the features is the code SGLang runs anyway: the transformers processor's own
placeholder expansion (``replace_image_token`` / ``replace_video_token``, timestamps included) and
tokenization, then SGLang's item collection, offsets and per-item splitting. So the
``MultimodalDataItem``s carry the same modality, grids, offsets and input ids as SGLang's, with
pixel values equal up to resampling rounding.

A request goes through SGLang's own pipeline instead when smg_rs could disagree with it:

* the checkpoint's processor settings are not the ``minimax_m3`` preset's (patch/merge sizes,
  normalization, extra ``--mm-process-config`` keys, a ``frame_max_size`` above the pixel budget);
* a video comes out tiny (frames of at most 2 x 3136 pixels): smg_rs may then have applied the
  transformers ``smart_resize`` upscale, which SGLang's processor call skips (the transformers
  processor passes ``do_resize=False`` to its video processor). Such requests still decode with
  smg_rs (no TorchCodec needed); only sampling, resize and patchify use SGLang's code;

Bad video input is refused, never handed to another decoder: smg_rs' typed errors
(``UnsupportedFormatError`` for a payload that is not a video in an allowed container, e.g. a PNG
or text sent as video/mp4; ``VideoDecodeError`` for corrupt or truncated streams;
``LimitExceededError`` past ``max_input_bytes`` (2 GiB), ``max_frame_pixels`` (7680x4320),
``max_duration_s`` (4 h), ...) subclass ``ValueError``, which SGLang's HTTP layer answers with a 400
carrying the message. A server-side path that does not exist is refused with a ``ValueError`` naming
it. Videos in containers or codecs smg_rs was built without get the same 400;
``SGLANG_MSA_SMG_RS=0`` serves them with SGLang's own decoder.

``smg_rs`` is imported on the first request that carries media, never at import time (GPU images
may lack FFmpeg). If it cannot be imported, a warning is logged once and SGLang's path is used.
``SGLANG_MSA_SMG_RS=0`` forces SGLang's path; ``SGLANG_MSA_SMG_LIMITS`` takes a JSON object of
smg_rs limit arguments (``max_source_frames``, ``max_duration_s``, ``timeout_s``, ...).

``SGLANG_MSA_VIDEO_DECODER=nvdec`` (opt-in; default ``software``) decodes videos on the GPU's NVDEC
engine through smg_rs' ``decoder="nvdec"``; any other value than the two stops the server at
start-up. Where NVDEC cannot take a request (no driver support, a codec or size the GPU does not
decode), that request is decoded in software and a warning is logged once per reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Optional
from urllib.parse import unquote, urlparse

import numpy as np
import torch
from PIL import Image

from sglang.srt.managers.schedule_batch import MultimodalProcessorOutput
from sglang.srt.models.minimax_m3_vl import MiniMaxM3SparseForConditionalGeneration
from sglang.srt.multimodal.processors.minimax_m3_vl import MiniMaxM3VLProcessor as _SGLangProcessor
from sglang.srt.multimodal.processors.minimax_m3_vl import get_video_tensor
from sglang.srt.utils import CLIENT_MEDIA_EXCEPTIONS, get_video_bytes

logger = logging.getLogger(__name__)

ENABLE_ENV = "SGLANG_MSA_SMG_RS"
LIMITS_ENV = "SGLANG_MSA_SMG_LIMITS"
DECODER_ENV = "SGLANG_MSA_VIDEO_DECODER"
DECODERS = ("software", "nvdec")
_LIMIT_KEYS = ("threads", "max_input_bytes", "max_frame_pixels", "max_source_frames", "max_duration_s", "timeout_s")

# The minimax_m3 preset of smg_rs (CLIP normalization, 14 px patches, 2x2 merge, 2 frames a patch).
_PRESET_GEOMETRY = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2}
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_FACTOR = 28
_MIN_PIXELS = 4 * 28 * 28  # smg_rs' fixed smart_resize floor for this preset
_BICUBIC = 3

_smg_lock = threading.Lock()
_smg_state: dict[str, Any] = {}


def load_smg_rs():
    """The ``smg_rs`` module, imported on first use; None (logged once) when disabled or missing."""
    with _smg_lock:
        if "module" not in _smg_state:
            _smg_state["module"] = _import_smg_rs()
        return _smg_state["module"]


def _import_smg_rs():
    if os.environ.get(ENABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        logger.info("sglang-msa: %s=0; MiniMax-M3-VL media use SGLang's own preprocessing", ENABLE_ENV)
        return None
    try:
        import smg_rs
    except Exception as exc:  # ImportError, or a missing FFmpeg shared library (OSError)
        logger.warning("sglang-msa: smg_rs unavailable (%s); MiniMax-M3-VL media use SGLang's own "
                       "preprocessing", exc)
        return None
    return smg_rs


def video_decoder() -> str:
    """``SGLANG_MSA_VIDEO_DECODER``: smg_rs' video decoder, ``software`` (default) or ``nvdec``."""
    value = os.environ.get(DECODER_ENV, "").strip().lower() or "software"
    if value not in DECODERS:
        raise ValueError(f"{DECODER_ENV}={value!r}: expected one of {DECODERS}")
    return value


_fallback_logged: set[str] = set()


def with_software_fallback(smg, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; if NVDEC was asked for and cannot take this video, the same call
    decoded in software (a warning once per reason). smg_rs refuses what NVDEC does not take before
    decoding (HardwareUnavailableError); a stream NVDEC fails on midway raises VideoDecodeError, so
    that is retried in software too: a really damaged stream then fails there as it always would."""
    if kwargs.get("decoder", "software") == "software":
        return fn(*args, **kwargs)
    retry = tuple(c for c in (getattr(smg, "HardwareUnavailableError", None), getattr(smg, "VideoDecodeError", None))
                  if isinstance(c, type))
    try:
        return fn(*args, **kwargs)
    except retry as exc:
        reason = f"{type(exc).__name__}: {str(exc).split(';')[0]}"
        with _smg_lock:
            first = reason not in _fallback_logged
            _fallback_logged.add(reason)
        if first:
            logger.warning("sglang-msa: NVDEC unavailable for a video (%s); decoding in software", exc)
        return fn(*args, **{**kwargs, "decoder": "software"})


def smg_limits() -> dict:
    """smg_rs limit arguments from ``SGLANG_MSA_SMG_LIMITS`` (JSON object), unknown keys dropped."""
    raw = os.environ.get(LIMITS_ENV, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        logger.warning("sglang-msa: ignoring %s: not JSON", LIMITS_ENV)
        return {}
    if not isinstance(value, dict):
        logger.warning("sglang-msa: ignoring %s: not a JSON object", LIMITS_ENV)
        return {}
    limits = {k: v for k, v in value.items()
              if k in _LIMIT_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}
    if len(limits) != len(value):
        logger.warning("sglang-msa: %s: kept %s; limits are numbers named %s", LIMITS_ENV, limits, _LIMIT_KEYS)
    return limits


@dataclass(frozen=True)
class _PendingVideo:
    """A request video that smg_rs will read; SGLang's I/O threads resolve it to a source."""

    data: Any


@dataclass(frozen=True)
class _VideoSource:
    """A loaded video for smg_rs: a local path or the encoded bytes."""

    source: str | bytes


@dataclass
class _Features:
    """smg_rs features standing in for one raw image or video in SGLang's loaded data."""

    pixel_values: np.ndarray
    grid_thw: tuple[int, int, int]
    frame_indices: Optional[list[int]] = None  # videos: the sampled source frames
    source_fps: Optional[float] = None
    height: Optional[int] = None  # images: the source size, read by SGLang's token-count helper
    width: Optional[int] = None


def _resolve_video_source(data) -> Optional[_VideoSource]:
    """Path or bytes for smg_rs, following SGLang's reading of video references; None for frames."""
    ref = getattr(data, "url", data)  # sglang VideoData keeps the reference in .url
    if isinstance(ref, (bytearray, memoryview)):
        ref = bytes(ref)
    if isinstance(ref, bytes):
        return _VideoSource(ref)
    if not isinstance(ref, str):
        return None  # already-decoded frames: SGLang's loader passes them through
    if not ref.startswith(("http://", "https://", "data:")):
        for path in (ref, unquote(urlparse(ref).path)):
            if os.path.isfile(path):
                return _VideoSource(path)
        if _looks_like_path(ref):  # else SGLang reads it as base64 and says "Non-base64 digit found"
            path = unquote(urlparse(ref).path) if ref.startswith("file:") else ref
            raise ValueError(f"video file not found on the server: {path}")
    return _VideoSource(get_video_bytes(ref))  # URL download, data: URI, base64, file://


def _looks_like_path(ref: str) -> bool:
    """A file reference rather than raw base64 (base64 has no '.'; '/' alone is ambiguous)."""
    if ref.startswith("file:"):
        return True
    return ref.startswith(("./", "../", "~")) or (ref.startswith("/") and "." in ref)


def _short(data) -> str:
    text = str(getattr(data, "url", data))
    return text if len(text) <= 100 else text[:100] + "..."


def _to_tensor(features: list[_Features]) -> torch.Tensor:
    arrays = [f.pixel_values for f in features]
    return torch.from_numpy(arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0))


def _preset_mismatches(proc, what: str) -> list[str]:
    """Why a transformers image/video processor does not compute what smg_rs' minimax_m3 preset does."""
    out = []
    for name, want in _PRESET_GEOMETRY.items():
        if getattr(proc, name, None) != want:
            out.append(f"{what} {name}={getattr(proc, name, None)!r} (preset: {want})")
    if not getattr(proc, "do_rescale", False) or not math.isclose(getattr(proc, "rescale_factor", 0.0), 1 / 255):
        out.append(f"{what} rescaling differs from 1/255")
    mean, std = getattr(proc, "image_mean", None), getattr(proc, "image_std", None)
    if (not getattr(proc, "do_normalize", False) or mean is None or std is None
            or not np.allclose(mean, _CLIP_MEAN, rtol=0, atol=1e-7)
            or not np.allclose(std, _CLIP_STD, rtol=0, atol=1e-7)):
        out.append(f"{what} normalization differs from CLIP mean/std")
    return out


class MiniMaxM3VLSmgProcessor(_SGLangProcessor):
    """SGLang's MiniMax-M3-VL processor with smg_rs computing image and video features.

    Lookup is by architecture name, so this serves SGLang's in-tree
    ``MiniMaxM3SparseForConditionalGeneration`` and any out-of-tree class of that name.
    """

    models = [MiniMaxM3SparseForConditionalGeneration]

    def __init__(self, hf_config, server_args, _processor, *args, **kwargs):
        super().__init__(hf_config, server_args, _processor, *args, **kwargs)
        self._smg_image_kwargs = self._image_settings()
        self._smg_video_kwargs = self._video_settings()
        self._smg_limits = smg_limits()
        decoder = video_decoder()  # a bad value stops the server here, at start-up
        if decoder != "software":
            self._smg_limits["decoder"] = decoder
            logger.info("sglang-msa: MiniMax-M3-VL videos decode with %s (%s)", decoder, DECODER_ENV)
        if self._smg_video_kwargs is not None:
            self._smg_video_kwargs.update(self._smg_limits)

    # ------------------------------------------------------------------ settings (once)

    def _expansion_api_missing(self) -> list[str]:
        names = ("replace_image_token", "replace_video_token", "get_text_with_replacements")
        return [f"processor lacks {n}()" for n in names if not hasattr(self._processor, n)]

    def _image_settings(self) -> Optional[dict]:
        ip = getattr(self._processor, "image_processor", None)
        if ip is None:
            return None
        problems = _preset_mismatches(ip, "image processor") + self._expansion_api_missing()
        if not getattr(ip, "do_resize", False) or getattr(ip, "resample", _BICUBIC) != _BICUBIC:
            problems.append("image processor does not resize bicubically")
        extra = sorted(set(self.image_config) - {"max_pixels"})
        if extra:
            problems.append(f"image config keys {extra}")
        if problems:
            logger.warning("sglang-msa: images use SGLang's preprocessing: %s", "; ".join(problems))
            return None
        return {"max_pixels": int(self.image_config.get("max_pixels", ip.max_pixels))}

    def _video_settings(self) -> Optional[dict]:
        vp = getattr(self._processor, "video_processor", None)
        if vp is None:
            return None
        problems = _preset_mismatches(vp, "video processor") + self._expansion_api_missing()
        if getattr(vp, "min_pixels", _MIN_PIXELS) != _MIN_PIXELS:
            problems.append(f"video processor min_pixels={vp.min_pixels} (preset: {_MIN_PIXELS})")
        if self.video_config:  # what SGLang did not pop goes to the HF video processor
            problems.append(f"video config keys {sorted(self.video_config)}")
        long_side = max_pixels = None
        try:
            factor, max_size = self._video_resize_config()
            long_side = int(self.video_frame_max_size or max_size[0])
            max_pixels = int(vp.max_pixels)
            # SGLang caps the long side only; beyond the pixel budget smg_rs would shrink again.
            if factor != _FACTOR or (-(-long_side // _FACTOR) * _FACTOR) ** 2 > max_pixels:
                problems.append(f"frame long side {long_side} exceeds the {max_pixels}-pixel budget")
        except Exception as exc:
            problems.append(f"no video size settings ({exc})")
        if problems:
            logger.warning("sglang-msa: videos use SGLang's resize and patchify: %s", "; ".join(problems))
            return None
        fps = None if self.video_fps is None else float(self.video_fps)
        max_frames = None if self.video_max_frames is None else int(self.video_max_frames)
        return {"fps": fps, "max_frames": max_frames, "max_pixels": max_pixels, "max_long_side": long_side}

    # ------------------------------------------------------------------ loading

    @classmethod
    def _load_single_item(cls, data, modality, *args, **kwargs):
        if isinstance(data, _PendingVideo):
            try:
                source = _resolve_video_source(data.data)
            except CLIENT_MEDIA_EXCEPTIONS as exc:
                raise ValueError(f"Error while loading data {_short(data.data)}: {exc}") from exc
            except Exception as exc:
                raise RuntimeError(f"Error while loading data {_short(data.data)}: {exc}") from exc
            if source is not None:
                return source
            data = data.data
        return super()._load_single_item(data, modality, *args, **kwargs)

    def _smg_features(self, smg, images: list, videos: list) -> Optional[tuple[list, list]]:
        """smg_rs features for the raw items (dicts pass through), or None if SGLang's path must run.

        Blocking; runs on an I/O thread (smg_rs releases the GIL).
        """
        raw_images = [x for x in images if not isinstance(x, dict)]
        raw_videos = [x for x in videos if not isinstance(x, dict)]
        if raw_images and (self._smg_image_kwargs is None
                           or not all(isinstance(x, Image.Image) for x in raw_images)):
            return None
        if raw_videos and (self._smg_video_kwargs is None
                           or not all(isinstance(x, _VideoSource) for x in raw_videos)):
            return None
        out_videos = []
        for item in videos:
            if isinstance(item, dict):
                out_videos.append(item)
                continue
            f = with_software_fallback(smg, smg.preprocess_video, item.source, **self._smg_video_kwargs)
            _, grid_h, grid_w = f.grid_thw
            # Tiny frames: smg_rs upscales them with smart_resize, SGLang's processor call does not.
            if grid_h * grid_w * 14 * 14 <= 2 * _MIN_PIXELS:
                return None
            out_videos.append(_Features(f.pixel_values, tuple(f.grid_thw), list(f.frame_indices), float(f.source_fps)))
        out_images = []
        for item in images:
            if isinstance(item, dict):
                out_images.append(item)
                continue
            rgb = np.asarray(item)
            if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
                return None  # SGLang's loader hands over RGB; anything else stays on its path
            f = smg.preprocess_image(rgb, **self._smg_image_kwargs)
            out_images.append(_Features(f.pixel_values, tuple(f.grid_thw), height=item.height, width=item.width))
        return out_images, out_videos

    async def _sglang_video_tensors(self, smg, videos: list) -> tuple[list, list]:
        """SGLang's sampling and resize for the raw videos, frames decoded by smg_rs."""
        image_factor, max_size = self._video_resize_config()
        out, metadata = [], []
        for item in videos:
            if isinstance(item, dict):
                out.append(item)
                continue
            reader = _SmgFrameReader(smg, item.source, self._smg_limits) if isinstance(item, _VideoSource) else item
            tensor, meta = await get_video_tensor(
                reader, image_factor=image_factor, max_size=max_size, fps=self.video_fps,
                frame_max_size=self.video_frame_max_size, max_frames=self.video_max_frames)
            out.append(tensor)
            metadata.append(meta)
        return out, metadata

    # ------------------------------------------------------------------ request entry

    async def process_mm_data_async(self, image_data, audio_data, input_text, request_obj, **kwargs):
        video_data = getattr(request_obj, "video_data", None)
        smg = load_smg_rs() if (image_data or video_data) else None
        if smg is None:
            return await super().process_mm_data_async(image_data, audio_data, input_text, request_obj, **kwargs)

        if isinstance(video_data, list):
            video_data = [v if self._is_preprocessed_input(v) else _PendingVideo(v) for v in video_data]
        base_output = await self.load_mm_data(
            prompt=input_text, image_data=image_data, video_data=video_data, multimodal_tokens=self.mm_tokens)

        loop = asyncio.get_running_loop()
        video_metadata = None
        try:
            features = await loop.run_in_executor(
                self.io_executor, self._smg_features, smg, base_output.images, base_output.videos)
            if features is not None:
                base_output.images, base_output.videos = features
            elif any(not isinstance(v, dict) for v in base_output.videos):
                base_output.videos, video_metadata = await self._sglang_video_tensors(smg, base_output.videos)
        except smg.UnsupportedFormatError as exc:
            # Not a video smg_rs can read (a PNG, text, an unbuilt container): a 400, never another
            # decoder (SGLang's reads a PNG as a one-frame video). SGLANG_MSA_SMG_RS=0 uses SGLang's.
            raise smg.UnsupportedFormatError(f"unsupported video: {exc}") from exc

        mm_items, input_ids, _ = self.process_and_combine_mm_data(
            base_output=base_output, mm_tokens=self.mm_tokens, video_metadata=video_metadata)
        return MultimodalProcessorOutput(
            input_ids=input_ids.tolist() if hasattr(input_ids, "tolist") else input_ids,
            mm_items=mm_items,
            im_start_id=self.IM_START_TOKEN_ID,
            im_end_id=self.IM_END_TOKEN_ID,
            im_token_id=self.IM_TOKEN_ID,
            video_token_id=self.VIDEO_TOKEN_ID,
        )

    def process_mm_data(self, input_text, images=None, videos=None, audios=None, processor=None, **kwargs):
        """The transformers processor's output, with smg_rs features where the loaded items carry them."""
        media = list(images or []) + list(videos or [])
        if audios or not media or not all(isinstance(m, _Features) for m in media):
            return super().process_mm_data(input_text, images=images, videos=videos, audios=audios,
                                           processor=processor, **kwargs)
        kwargs.pop("video_metadata", None)
        hf = processor if processor is not None else self._processor
        features: dict[str, torch.Tensor] = {}
        image_text, video_text = [], []
        if images:
            grids = torch.tensor([f.grid_thw for f in images], dtype=torch.long)
            features["pixel_values"] = _to_tensor(images)
            features["image_grid_thw"] = grids
            image_text = [hf.replace_image_token({"image_grid_thw": grids}, i) for i in range(len(images))]
        if videos:
            grids = torch.tensor([f.grid_thw for f in videos], dtype=torch.long)
            metadata = [SimpleNamespace(fps=f.source_fps, frames_indices=f.frame_indices) for f in videos]
            features["pixel_values_videos"] = _to_tensor(videos)
            features["video_grid_thw"] = grids
            inputs = {"video_grid_thw": grids, "video_metadata": metadata}
            video_text = [hf.replace_video_token(inputs, i) for i in range(len(videos))]
        expanded, _ = hf.get_text_with_replacements([input_text], image_text, video_text)
        # Tokenize exactly as SGLang does (same processor call, BOS handling, kwargs), text only.
        result = super().process_mm_data(expanded[0], processor=processor, **kwargs)
        result.update(features)
        return result


class _SmgFrameReader:
    """The decoder interface SGLang's ``get_video_tensor`` uses (len, avg_fps, frames), over smg_rs."""

    def __init__(self, smg, source, limits: dict):
        self._smg, self._source, self._limits = smg, source, limits
        probe = with_software_fallback(smg, smg.decode_frames, source, frame_indices=[0], **limits)
        self._num_frames = probe.num_source_frames
        self.avg_fps = probe.source_fps

    def __len__(self) -> int:
        return self._num_frames

    def get_frames_as_tensor(self, indices) -> torch.Tensor:
        decoded = with_software_fallback(self._smg, self._smg.decode_frames, self._source,
                                         frame_indices=list(indices), **self._limits)
        return torch.from_numpy(decoded.frames)
