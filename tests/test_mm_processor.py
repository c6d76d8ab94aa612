"""Our smg_rs-backed MiniMax-M3-VL processor vs SGLang's own, on the same requests (CPU).

Both processors are built the way SGLang's tokenizer manager builds them (``ServerArgs``,
``ModelConfig``, ``get_processor``) on a tiny ``--vision`` checkpoint (config + tokenizer +
processor configs; no weights needed), and fed the same prompt and media: videos made with the
ffmpeg CLI, images written with PIL.

Two CPU shims let SGLang's own path run without a GPU, neither touching numbers:
``BaseMultimodalProcessor`` sends images to ``cuda:<base_gpu_id>`` unless SGLang's CPU engine is on
(``_is_cpu``), and SGLang's video decoder pins frame memory, which needs a CUDA driver.

Measured (max |ours - SGLang|, tiny and real M3 pixel budgets, H.264/VP9/MPEG-4, VFR, rotated):
video features up to 1.8e-4 (decoded bytes equal TorchCodec's; float bicubic rounding), 2.7e-5 in
these tests; image features 0.0. The image bound allows smg_rs' documented rare one-level uint8
rounding difference.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import importlib
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import fixtures_video as fv

torch = pytest.importorskip("torch")
pytest.importorskip("sglang")
pytest.importorskip("smg_rs")

pytestmark = [pytest.mark.sglang, pytest.mark.skipif(not fv.have_ffmpeg(), reason="needs the ffmpeg CLI")]

MODULE = "sglang_msa.multimodal.minimax_m3_vl"
VIDEO_TOL = 2e-3  # same decoded bytes; float bicubic in Rust vs torchvision
IMAGE_TOL = 0.016  # one uint8 level after CLIP normalization (1/255/0.2613 = 0.015)
IMAGE_TOL_FRACTION = 0.01  # share of image values allowed to differ by more than 1e-4


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    from sglang_msa_tools.tiny_m3 import write_checkpoint

    out = tmp_path_factory.mktemp("m3vl_tiny")
    write_checkpoint(str(out), "tiny", vision=True, config_only=True)
    return str(out)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, str]:
    from PIL import Image

    d = tmp_path_factory.mktemp("m3vl_media")
    rng = np.random.default_rng(7)
    png, jpg = d / "noise.png", d / "gradient.jpg"
    Image.fromarray(rng.integers(0, 256, (117, 203, 3), dtype=np.uint8)).save(png)
    yy, xx = np.mgrid[0:301, 0:187]
    grad = np.stack([xx * 255 // 186, yy * 255 // 300, (xx + yy) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(grad).save(jpg, quality=90)
    bframes = fv.h264_bframes(d)  # 320x240, 29.97 fps, 4 s: non-integer timestamps
    return {
        "odd": str(fv.h264_odd_444(d)),  # 203x117, 30 fps, 96 frames -> 5 sampled, padded to 6
        "bframes_data_uri": "data:video/mp4;base64," + base64.b64encode(Path(bframes).read_bytes()).decode(),
        "tiny": str(fv.sized_h264(d, "tiny.mp4", "24x20", 10, 1.0)),  # 28x28 after SGLang's resize
        "png": str(png),
        "jpg": str(jpg),
    }


@pytest.fixture(scope="module")
def cpu_sglang():
    """Let SGLang's own multimodal path run on a machine without a CUDA driver."""
    import sglang.srt.multimodal.processors.base_processor as base_processor

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(base_processor, "_is_cpu", True)  # as under SGLang's CPU engine
        mp.setattr(torch.Tensor, "pin_memory", lambda self, *args, **kwargs: self)
        yield


@pytest.fixture(scope="module")
def build(ckpt, cpu_sglang):
    """``build(mm_process_config) -> (sglang_processor, our_processor)`` as the tokenizer manager makes them."""
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.multimodal.processors.minimax_m3_vl import MiniMaxM3VLProcessor
    from sglang.srt.server_args import ServerArgs
    from sglang.srt.utils.hf_transformers_utils import get_processor

    ours_cls = importlib.import_module(MODULE).MiniMaxM3VLSmgProcessor

    def make(mm_process_config: dict | None = None):
        # SGLang's processor pops its video options from this dict: give each processor a copy.
        def server_args():
            return ServerArgs(model_path=ckpt, device="cpu", mm_process_config=copy.deepcopy(mm_process_config or {}))

        args = server_args()
        hf_config = ModelConfig.from_server_args(args).hf_config
        hf_processor = get_processor(
            args.tokenizer_path, tokenizer_mode=args.tokenizer_mode, trust_remote_code=args.trust_remote_code,
            revision=args.revision, use_fast=not args.disable_fast_image_processor,
            tokenizer_backend=args.tokenizer_backend, model_name=args.model_path)
        ref = MiniMaxM3VLProcessor(hf_config, args, hf_processor, "default")
        return ref, ours_cls(hf_config, server_args(), hf_processor, "default")

    return make


@pytest.fixture(scope="module")
def default_pair(build):
    return build()


@pytest.fixture
def smg_used(monkeypatch):
    """Records, per request, whether smg_rs computed the features (False: SGLang's resize ran)."""
    cls = importlib.import_module(MODULE).MiniMaxM3VLSmgProcessor
    original, calls = cls._smg_features, []

    def spy(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append(result is not None)
        return result

    monkeypatch.setattr(cls, "_smg_features", spy)
    return calls


def run(processor, text, images=None, videos=None):
    request = SimpleNamespace(video_data=videos)
    return asyncio.run(processor.process_mm_data_async(images, None, text, request))


def compare(ours, ref) -> dict[str, float]:
    """Assert the outputs match item by item; return the max feature error per modality."""
    assert ours.input_ids == ref.input_ids
    for key in ("im_start_id", "im_end_id", "im_token_id", "video_token_id"):
        assert getattr(ours, key) == getattr(ref, key), key
    assert len(ours.mm_items) == len(ref.mm_items)
    errors: dict[str, float] = {}
    for a, b in zip(ours.mm_items, ref.mm_items):
        assert a.modality == b.modality and a.format == b.format
        assert a.offsets == b.offsets
        assert a.model_specific_data.keys() == b.model_specific_data.keys()
        for key, value in b.model_specific_data.items():
            assert torch.equal(a.model_specific_data[key], value), key
        assert a.feature.dtype == b.feature.dtype == torch.float32
        assert a.feature.shape == b.feature.shape
        assert torch.isfinite(a.feature).all()
        diff = (a.feature - b.feature).abs()
        name = a.modality.name.lower()
        errors[name] = max(errors.get(name, 0.0), float(diff.max()))
        if name == "image":
            assert float((diff > 1e-4).float().mean()) < IMAGE_TOL_FRACTION
    assert errors.get("video", 0.0) < VIDEO_TOL, errors
    assert errors.get("image", 0.0) < IMAGE_TOL, errors
    return errors


def video_tokens(processor, out) -> int:
    return sum(1 for t in out.input_ids if t == processor.VIDEO_TOKEN_ID)


# --------------------------------------------------------------------------------- tests


def test_videos_and_images_match_sglang(default_pair, media, smg_used):
    ref_proc, ours_proc = default_pair
    assert ours_proc._smg_image_kwargs is not None and ours_proc._smg_video_kwargs is not None
    text = "Compare ]<]video[>[ with ]<]image[>[, then ]<]video[>[ and ]<]image[>[. Answer:"
    kwargs = dict(images=[media["png"], media["jpg"]], videos=[media["odd"], media["bframes_data_uri"]])
    ref = run(ref_proc, text, **kwargs)
    ours = run(ours_proc, text, **kwargs)
    errors = compare(ours, ref)
    print(f"max |ours - sglang|: {errors}")
    assert smg_used == [True]
    kinds = [item.modality.name for item in ours.mm_items]
    assert kinds == ["IMAGE", "IMAGE", "VIDEO", "VIDEO"]
    grids = [tuple(item.model_specific_data["video_grid_thw"].flatten().tolist()) for item in ours.mm_items[2:]]
    assert grids == [(3, 6, 8), (3, 6, 8)]  # odd: 5 frames -> 3 temporal groups; bframes: 4 s at 1 fps
    assert [len(item.offsets) for item in ours.mm_items] == [1, 1, 3, 3]  # one run per temporal group
    decoded = ours_proc._processor.tokenizer.decode(ours.input_ids)
    assert "]<]3.2 seconds[>[" in decoded and "]<]4.0 seconds[>[" in decoded  # 95/30 s; frame 120 at 29.97 fps


def test_tiny_video_keeps_sglang_size(default_pair, media, smg_used):
    """smg_rs would upscale 28x28 frames to 56x56; SGLang's processor call does not."""
    ref_proc, ours_proc = default_pair
    text = "A tiny clip: ]<]video[>["
    ref = run(ref_proc, text, videos=[media["tiny"]])
    ours = run(ours_proc, text, videos=[media["tiny"]])
    compare(ours, ref)
    assert ours.mm_items[0].model_specific_data["video_grid_thw"].tolist() == [[1, 2, 2]]
    assert smg_used == [False]


def test_pretokenized_prompt_with_image(default_pair, media, smg_used):
    """Token-id prompts take SGLang's retokenize-avoiding path, which reads the image sizes."""
    ref_proc, ours_proc = default_pair
    tokenizer = ours_proc._processor.tokenizer
    ids = tokenizer.encode("Look: ]<]image[>[ ok", add_special_tokens=False)
    ref = run(ref_proc, list(ids), images=[media["jpg"]])
    ours = run(ours_proc, list(ids), images=[media["jpg"]])
    compare(ours, ref)
    grid = ours.mm_items[0].model_specific_data["image_grid_thw"]
    assert grid.tolist() == [[1, 20, 12]]  # 301x187 -> 280x168 under the 224x224-pixel budget
    assert sum(1 for t in ours.input_ids if t == ours_proc.IM_TOKEN_ID) == 20 * 12 // 4
    assert smg_used == [True]


@pytest.mark.parametrize("config", [
    {"video": {"fps": 2.0, "max_frames": 3}, "image": {"max_pixels": 12544}},
    {"video": {"fps": 0.5}},
])
def test_configured_sampling_and_budget_match(build, media, config, smg_used):
    ref_proc, ours_proc = build(config)
    assert ours_proc._smg_video_kwargs is not None
    text = "]<]image[>[ and ]<]video[>["
    kwargs = dict(images=[media["png"]], videos=[media["odd"]])
    ref = run(ref_proc, text, **kwargs)
    ours = run(ours_proc, text, **kwargs)
    compare(ours, ref)
    assert smg_used == [True]


def test_settings_outside_the_preset_use_sglang_resize(build, media, smg_used):
    """A frame long side above the pixel budget: smg_rs decodes, SGLang's code resizes."""
    ref_proc, ours_proc = build({"video": {"frame_max_size": 200}, "image": {"image_mean": [0.5, 0.5, 0.5]}})
    assert ours_proc._smg_video_kwargs is None and ours_proc._smg_image_kwargs is None
    text = "]<]video[>[ ]<]image[>["
    kwargs = dict(images=[media["png"]], videos=[media["odd"]])
    ref = run(ref_proc, text, **kwargs)
    ours = run(ours_proc, text, **kwargs)
    errors = compare(ours, ref)
    assert errors["image"] == 0.0  # same HF image processor on the same PIL image
    assert smg_used == [False]


@pytest.fixture
def smg_rs_missing(monkeypatch):
    """``import smg_rs`` fails and the module's cached import is forgotten."""
    mod = importlib.import_module(MODULE)
    monkeypatch.setattr(mod, "_smg_state", {})
    monkeypatch.setitem(sys.modules, "smg_rs", None)
    return mod


def test_without_smg_rs_falls_back_to_sglang(default_pair, media, smg_rs_missing, caplog):
    ref_proc, ours_proc = default_pair
    text = "]<]video[>[ ]<]image[>["
    kwargs = dict(images=[media["png"]], videos=[media["odd"]])
    with caplog.at_level(logging.WARNING, logger=MODULE):
        ours = run(ours_proc, text, **kwargs)
    assert any("smg_rs unavailable" in r.getMessage() for r in caplog.records)
    ref = run(ref_proc, text, **kwargs)
    errors = compare(ours, ref)
    assert errors == {"video": 0.0, "image": 0.0}  # literally SGLang's path


def test_text_only_request_does_not_load_smg_rs(default_pair, smg_rs_missing, caplog):
    ref_proc, ours_proc = default_pair
    with caplog.at_level(logging.WARNING, logger=MODULE):
        ours = run(ours_proc, "just text, no media")
    assert smg_rs_missing._smg_state == {} and not caplog.records
    ref = run(ref_proc, "just text, no media")
    assert ours.input_ids == ref.input_ids and ours.mm_items == ref.mm_items == []


def test_video_decoder_setting(monkeypatch):
    mod = importlib.import_module(MODULE)
    monkeypatch.delenv(mod.DECODER_ENV, raising=False)
    assert mod.video_decoder() == "software"
    monkeypatch.setenv(mod.DECODER_ENV, " NVDEC ")
    assert mod.video_decoder() == "nvdec"
    monkeypatch.setenv(mod.DECODER_ENV, "cuda")
    with pytest.raises(ValueError, match="SGLANG_MSA_VIDEO_DECODER"):
        mod.video_decoder()


def test_nvdec_failure_falls_back_to_software_once_logged(caplog):
    mod = importlib.import_module(MODULE)

    class Unavailable(Exception):
        pass

    calls = []

    def decode(src, *, decoder="software", frame_indices=()):
        calls.append(decoder)
        if decoder == "nvdec":
            raise Unavailable("NVDEC: cannot open h264_cuvid (Function not implemented); needs a driver")
        return f"{src}:{decoder}"

    smg = SimpleNamespace(HardwareUnavailableError=Unavailable)
    mod._fallback_logged.clear()
    with caplog.at_level(logging.WARNING, logger=MODULE):
        assert mod.with_software_fallback(smg, decode, "a.mp4", decoder="nvdec") == "a.mp4:software"
        assert mod.with_software_fallback(smg, decode, "b.mp4", decoder="nvdec") == "b.mp4:software"
        assert mod.with_software_fallback(smg, decode, "c.mp4") == "c.mp4:software"
    assert calls == ["nvdec", "software", "nvdec", "software", "software"]
    assert sum("NVDEC unavailable" in r.message for r in caplog.records) == 1
    # other errors are not swallowed
    def broken(src, *, decoder="software"):
        raise ValueError("corrupt")
    with pytest.raises(ValueError, match="corrupt"):
        mod.with_software_fallback(smg, broken, "d.mp4", decoder="nvdec")

    # a decode error under NVDEC is retried in software; one that software also raises propagates
    class DecodeError(Exception):
        pass

    smg = SimpleNamespace(HardwareUnavailableError=Unavailable, VideoDecodeError=DecodeError)
    seen = []

    def midway(src, *, decoder="software"):
        seen.append(decoder)
        if decoder == "nvdec" or src == "damaged.mp4":
            raise DecodeError(f"stream is damaged: {src}")
        return "ok"

    assert mod.with_software_fallback(smg, midway, "a.mp4", decoder="nvdec") == "ok"
    with pytest.raises(DecodeError, match="damaged.mp4"):
        mod.with_software_fallback(smg, midway, "damaged.mp4", decoder="nvdec")
    assert seen == ["nvdec", "software", "nvdec", "software"]


def test_processor_passes_the_decoder_to_smg_rs(build, monkeypatch):
    mod = importlib.import_module(MODULE)
    monkeypatch.setenv(mod.DECODER_ENV, "nvdec")
    _, ours = build()
    assert ours._smg_limits["decoder"] == "nvdec" and ours._smg_video_kwargs["decoder"] == "nvdec"
    monkeypatch.setenv(mod.DECODER_ENV, "gpu")
    with pytest.raises(ValueError, match="SGLANG_MSA_VIDEO_DECODER"):
        build()
    monkeypatch.delenv(mod.DECODER_ENV)
    _, ours = build()
    assert "decoder" not in ours._smg_limits and "decoder" not in ours._smg_video_kwargs


def test_import_does_not_import_smg_rs(monkeypatch):
    attempts = []

    class Spy:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.split(".")[0] == "smg_rs":
                attempts.append(name)
            return None

    original = importlib.import_module(MODULE)
    monkeypatch.delitem(sys.modules, "smg_rs", raising=False)
    monkeypatch.delitem(sys.modules, MODULE)
    monkeypatch.setattr(sys, "meta_path", [Spy(), *sys.meta_path])
    fresh = importlib.import_module(MODULE)  # executes the module again (SGLang is already imported)
    assert fresh is not original and hasattr(fresh, "MiniMaxM3VLSmgProcessor")
    assert attempts == [] and "smg_rs" not in sys.modules


def test_registry_resolves_m3_vl_to_ours_only_when_registered(monkeypatch, default_pair):
    import sglang.srt.managers.multimodal_processor as registry
    from sglang.srt.models.minimax_m3_vl import MiniMaxM3SparseForConditionalGeneration as Arch
    from sglang.srt.multimodal.processors.minimax_m3_vl import MiniMaxM3VLProcessor

    ref_proc, _ = default_pair
    hf_config, args, hf_processor = ref_proc.hf_config, ref_proc.server_args, ref_proc._processor
    # What import_processors("sglang.srt.multimodal.processors") leaves for M3-VL (importing every
    # SGLang processor takes ~20 s here), plus an unrelated entry that must survive.
    other = type("OtherForCausalLM", (), {})
    monkeypatch.setattr(registry, "PROCESSOR_MAPPING", {Arch: MiniMaxM3VLProcessor, other: object})
    assert type(registry.get_mm_processor(hf_config, args, hf_processor, "default")) is MiniMaxM3VLProcessor

    # The tokenizer manager's step for SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE.
    registry.import_processors("sglang_msa.multimodal", overwrite=True)
    ours_cls = importlib.import_module(MODULE).MiniMaxM3VLSmgProcessor
    names = [cls.__name__ for cls in registry.PROCESSOR_MAPPING]
    assert names.count(Arch.__name__) == 1 and registry.PROCESSOR_MAPPING[other] is object
    assert type(registry.get_mm_processor(hf_config, args, hf_processor, "default")) is ours_cls


def test_plugin_points_sglang_at_our_processors(monkeypatch):
    from sglang_msa import plugin

    register = getattr(plugin, "_register_mm_processor", None)
    if register is None:
        pytest.skip("plugin.register() does not set SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE yet")
    from sglang.srt.environ import envs

    monkeypatch.delenv("SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE", raising=False)
    register()
    assert envs.SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE.get() == "sglang_msa.multimodal"
    monkeypatch.setenv("SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE", "someone.else")
    register()  # never overrides another package
    assert envs.SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE.get() == "someone.else"
