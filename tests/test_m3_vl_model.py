"""Our MiniMax-M3-VL model (``sglang_msa.models.minimax_m3_vl``) on the CPU in fp32, against the tiny
``--vision`` checkpoint and transformers' ``minimax_m3_vl``.

As in ``test_m3_model.py`` (whose helpers this file imports), all SGLang work runs in one subprocess
(this file run as a script) that prints a JSON report. It covers:

* which class SGLang resolves for ``MiniMaxM3SparseForConditionalGeneration`` with and without
  ``SGLANG_MSA_MODELS`` (each arch exported by exactly one module of ``sglang_msa.models``);
* ``load_weights``: every parameter NaN-poisoned, then equal to the checkpoint tensors it comes from
  (vision q/k/v fused, ``out_proj`` -> ``proj``, text delegated), every checkpoint tensor consumed;
  under TP=2 (rank 1, built with overridden parallel sizes) each vision/projector shard holds its rows;
  the real M3-VL widths (``slice`` preset) build on the meta device with the checkpoint's shapes;
* vision q/k weights are scaled x8 in the checkpoint so the tower's attention is sharp enough for
  positions (the 3D RoPE) to matter; the tests check that they do;
* vision features of an image and a video (random pixels in the processor's layout, odd merged grids)
  vs transformers' ``get_image_features`` / ``get_video_features``; items encoded together equal the
  items encoded alone; ``vision_segment_max_frames`` cuts a video into independent segments;
* a whole forward: our processor (smg_rs) turns a prompt with an image and a video into
  ``MultimodalDataItem``s, ``pad_input_ids`` + SGLang's ``general_mm_embed_routine`` + the language
  model run with a dense causal attention stand-in (prompts shorter than ``topk * block`` keys, so MSA
  keeps every block and dense attention is exact) next to a text-only prompt, logits vs transformers;
  a chunked prefill whose cut falls inside the video yields the same input embeddings.

Not covered on the CPU: SGLang's GPU vision attention backends (the CPU picks ``sdpa``), a real
multi-rank vision forward, and the data-parallel encoder path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

import fixtures_video as fv  # noqa: E402
from checkpoint_match import match_params  # noqa: E402
import test_m3_model as m3  # noqa: E402  (its subprocess helpers; its tests are not re-collected)

from sglang_msa_tools import tiny_m3  # noqa: E402

REPO = m3.REPO
ARCH = "MiniMaxM3SparseForConditionalGeneration"

pytestmark = [
    pytest.mark.sglang,
    pytest.mark.skipif(not m3._has("sglang.srt.models.minimax_m3_vl"), reason="SGLang has no MiniMax-M3-VL"),
    pytest.mark.skipif(not m3._has("transformers.models.minimax_m3_vl"), reason="transformers has no minimax_m3_vl"),
]

# fp32 both sides; differences come from GEMM blocking and op order (measured: features 3e-7, logits
# 6e-7 of the reference's max). Relative to the reference's max.
REL_TOL = {"features": 1e-5, "logits": 1e-4}
HAVE_PROCESSOR = fv.have_ffmpeg() and m3._has("smg_rs")


# ----------------------------------------------------------------------------- fixture


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("m3_vl_model")
    args = {"ckpt": str(root / "tiny_vl")}
    tiny_m3.write_checkpoint(args["ckpt"], vision=True, seed=11)
    _sharpen_vision_attention(args["ckpt"])
    args["slice"] = str(root / "slice_vl")
    tiny_m3.write_checkpoint(args["slice"], preset="slice", vision=True)  # config only (meta build)
    if HAVE_PROCESSOR:
        from PIL import Image
        import numpy as np

        image = root / "noise.png"
        Image.fromarray(np.random.default_rng(3).integers(0, 256, (117, 203, 3), dtype=np.uint8)).save(image)
        args["image"] = str(image)
        args["video"] = str(fv.h264_odd_444(root))  # 203x117, 96 frames -> 5 sampled -> grid (3, 6, 8)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), json.dumps(args)],
                          env=m3._subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, f"subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(lines[-1][len("REPORT "):])


def _sharpen_vision_attention(path: str, factor: float = 8.0) -> None:
    """Scale the tower's q/k projections: at the checkpoint's 0.02 weight scale its attention is
    nearly uniform, so the 3D RoPE (and any error in it) would barely move the features."""
    from safetensors.torch import load_file, save_file

    file = os.path.join(path, "model.safetensors")
    ck = load_file(file)
    for name in ck:
        if name.startswith("vision_tower.") and re.search(r"\.self_attn\.[qk]_proj\.", name):
            ck[name] = ck[name] * factor  # a power of two: exact in bf16
    save_file(ck, file, {"format": "pt"})


def _close(m: dict, what: str) -> bool:
    return m["shape_ok"] and m["max_abs"] <= REL_TOL[what] * m["ref_max"]


# ----------------------------------------------------------------------------- tests


def test_sglang_resolves_our_vl_class_only_when_opted_in(report):
    reg = report["registry"]
    assert reg["off_package"] is None and reg["off_class"] == "sglang.srt.models.minimax_m3_vl", reg
    assert not reg["off_is_ours"]
    assert reg["on_package"] == "sglang_msa.models" and reg["on_is_ours"], reg
    # Unset: SGLang's class unless the server picked msa (opt-in), then ours (VL_BY_DEFAULT).
    assert reg["default_package"] is None and not reg["default_is_ours"], reg
    assert reg["msa_package"] == "sglang_msa.models" and reg["msa_is_ours"], reg
    assert reg["exporters"] == {"MiniMaxM3SparseForCausalLM": ["sglang_msa.models.minimax_m3"],
                                ARCH: ["sglang_msa.models.minimax_m3_vl"]}


def test_load_weights_fills_every_parameter_from_the_checkpoint(report):
    info = report["load"]
    assert info["num_params"] > 40 and info["num_vision_params"] > 15
    assert info["not_loaded"] == [], "parameters load_weights left NaN"
    assert info["missing"] == [], "parameters with no checkpoint source"
    assert info["mismatched"] == [], "parameters that differ from their checkpoint tensors"
    assert info["unused_checkpoint"] == [], "checkpoint tensors no parameter takes"
    assert info["returned_not_params"] == [] and info["params_not_returned"] == []
    assert info["gemma_weight_off"] == []
    assert info["warnings"] == []


def test_load_weights_skips_unused_and_warns_about_unknown_tensors(report):
    info = report["load_extra"]
    assert info["loaded"] == []
    assert info["unknown_warned"] and not info["post_layernorm_warned"]


def test_slice_preset_builds_on_meta_with_checkpoint_shapes(report):
    info = report["meta_slice"]
    assert info["mismatched"] == [] and info["missing"] == [] and info["unused_checkpoint"] == []
    assert info["qkv"] == [3 * 1280, 1280] and info["patch"] == [1280, 3, 2, 14, 14]
    assert info["merge_in"] == [6144, 4 * 6144]
    assert info["rot_dim"] == 78  # head_dim 80: 26 channels per axis, 2 pass through


def test_tensor_parallel_rank_takes_its_vision_shards(report):
    tp = report["tp_shards"]
    assert tp["nan_left"] == []
    assert tp["wrong"] == [], "shards that are not this rank's rows/columns"
    assert tp["qkv_shape"] == [3 * 64, 128]  # TP=2 of 2 heads x 64: one head of q, k and v


@pytest.mark.parametrize("what", ["image", "video"])
def test_vision_features_match_transformers(report, what):
    f = report["features"][what]
    assert f["grid"][1] // 2 % 2 == 1 or f["grid"][2] // 2 % 2 == 1, "want an odd merged grid"
    assert _close(f, "features"), f
    # The 3D RoPE matters: the same pixels on the transposed grid give other features.
    assert f["transposed_grid_diff"] > 100 * REL_TOL["features"] * f["ref_max"], f


def test_items_encoded_together_equal_items_encoded_alone(report):
    f = report["features"]["batched"]
    assert _close(f, "features"), f  # attending across the two images moves them by ~2e-2


def test_segment_max_frames_encodes_segments_independently(report):
    f = report["features"]["segments"]
    assert _close(f, "features"), f
    assert f["differs_from_unsegmented"] > 100 * REL_TOL["features"] * f["ref_max"], f


needs_processor = pytest.mark.skipif(not HAVE_PROCESSOR, reason="needs the ffmpeg CLI and smg_rs")


@needs_processor
def test_processor_items_fit_the_model(report):
    items = report["forward"]["items"]
    assert [i["modality"] for i in items] == ["IMAGE", "VIDEO"]
    for i in items:
        assert i["rows"] == i["patches"], i  # one pixel row per patch of the grid
        assert i["placeholders"] == i["patches"] // 4, i  # one token per merged 2x2 block
        assert i["padded_ok"], i
    assert items[1]["grid"][0] > 1 and len(items[1]["offsets"]) == items[1]["grid"][0]  # a run per frame group


@needs_processor
@pytest.mark.parametrize("what", ["image", "video"])
def test_processor_item_features_match_transformers(report, what):
    f = report["forward"]["features"][what]
    assert _close(f, "features"), f


@needs_processor
@pytest.mark.parametrize("mode", ["all_tokens", "extend_last_tokens"])
def test_full_forward_logits_match_transformers(report, mode):
    f = report["forward"][mode]
    assert _close(f, "logits"), f
    assert f["argmax_equal"], f
    # The media matter: the same prompt without them gives other logits.
    assert f["media_effect"] > 100 * REL_TOL["logits"] * f["ref_max"], f


@needs_processor
def test_chunked_prefill_cut_inside_the_video_gives_the_same_embeddings(report):
    c = report["forward"]["chunked"]
    assert c["cut_inside_video"], c
    assert c["max_abs"] <= 1e-6 * c["ref_max"], c


# ----------------------------------------------------------------------------- subprocess: registry


def _registry_check() -> dict:
    """The plugin switch, off then on, for the VL arch (see ``test_m3_model._registry_states``), and
    which of our modules export each class."""
    import importlib
    import pkgutil

    from sglang.srt.models import minimax_m3_vl as in_tree

    from sglang_msa import plugin
    from sglang_msa.models import minimax_m3_vl as ours

    out = m3._registry_states(ARCH, in_tree.MiniMaxM3SparseForConditionalGeneration,
                              ours.MiniMaxM3SparseForConditionalGeneration)
    exporters: dict[str, list[str]] = {}
    os.environ[plugin.MODELS_ENV] = "1"  # every class exported
    pkg = importlib.import_module("sglang_msa.models")
    for info in pkgutil.iter_modules(pkg.__path__, "sglang_msa.models."):
        entry = getattr(importlib.import_module(info.name), "EntryClass", [])
        for cls in entry if isinstance(entry, list) else [entry]:
            exporters.setdefault(cls.__name__, []).append(info.name)
    out["exporters"] = exporters
    return out


# ----------------------------------------------------------------------------- subprocess: weights

_VIT_ATTN = r"^(vision_tower\..*\.self_attn)"


def _expected(param: str, ck: dict):
    """Checkpoint tensors a parameter is made from: vision rules here, the rest as for the text model."""
    m = re.match(_VIT_ATTN + r"\.qkv_proj\.(weight|bias)$", param)
    if m:
        names = [f"{m[1]}.{p}_proj.{m[2]}" for p in "qkv"]
        return torch.cat([ck[n] for n in names]), names
    m = re.match(_VIT_ATTN + r"\.proj\.(weight|bias)$", param)
    if m:
        name = f"{m[1]}.out_proj.{m[2]}"
        return ck[name], [name]
    return m3._expected(param, ck)


def _collect_warnings():
    import logging

    warnings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    handler = Collect()
    logging.getLogger("sglang_msa").addHandler(handler)
    return warnings, lambda: logging.getLogger("sglang_msa").removeHandler(handler)


def _load_check(path: str):
    from safetensors.torch import load_file
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.layers.layernorm import GemmaRMSNorm

    from sglang_msa.models.minimax_m3_vl import MiniMaxM3SparseForConditionalGeneration as cls

    warnings, stop = _collect_warnings()
    model = cls(ModelConfig(path).hf_config)
    for p in model.parameters():
        p.data.fill_(float("nan"))
    ck = load_file(os.path.join(path, "model.safetensors"))
    returned = model.load_weights(iter(ck.items()))
    stop()
    params = dict(model.named_parameters())
    mismatched, used, missing = match_params(params, ck, _expected, values=True)
    info = {
        "num_params": len(params), "num_vision_params": sum(not n.startswith("language_model.") for n in params),
        "mismatched": mismatched, "missing": missing, "unused_checkpoint": sorted(set(ck) - used),
        "not_loaded": [n for n, p in params.items() if torch.isnan(p.float()).any()],
        "returned_not_params": sorted(returned - set(params)), "params_not_returned": sorted(set(params) - returned),
        "gemma_weight_off": [n for n, m in model.named_modules() if isinstance(m, GemmaRMSNorm)
                             and not torch.equal(m.gemma_weight, m.weight.detach() + 1)],
        "warnings": warnings,
    }

    # A tensor the tower never uses is skipped quietly; an unknown one is reported.
    w = ck["vision_tower.vision_model.pre_layrnorm.weight"]
    extra = [("vision_tower.vision_model.post_layernorm.weight", w),
             ("vision_tower.vision_model.encoder.layers.0.self_attn.no_such_proj.weight", w)]
    warnings, stop = _collect_warnings()
    returned = model.load_weights(iter(extra))
    stop()
    extra_info = {"loaded": sorted(returned), "unknown_warned": any("no_such_proj" in m for m in warnings),
                  "post_layernorm_warned": any("post_layernorm" in m for m in warnings)}
    return model, ck, info, extra_info


def _meta_check(path: str) -> dict:
    """The real M3-VL widths, built on the meta device: every shape fits the checkpoint's."""
    from sglang.srt.configs.model_config import ModelConfig

    from sglang_msa.models.minimax_m3_vl import MiniMaxM3SparseForConditionalGeneration as cls

    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    with torch.device("meta"):
        model = cls(ModelConfig(path).hf_config)
        ck = {n: torch.empty(shape) for n, (shape, _) in tiny_m3.checkpoint_specs(cfg).items()}
    params = dict(model.named_parameters())
    mismatched, used, missing = match_params(params, ck, _expected, values=False)
    tower = "vision_tower.vision_model."
    return {"mismatched": mismatched, "missing": missing, "unused_checkpoint": sorted(set(ck) - used),
            "qkv": list(params[tower + "encoder.layers.0.self_attn.qkv_proj.weight"].shape),
            "patch": list(params[tower + "embeddings.patch_embedding.weight"].shape),
            "merge_in": list(params["patch_merge_mlp.linear_1.weight"].shape),
            "rot_dim": model.vision_tower.vision_model.rope.rot_dim}


def _tp_shard_check(path: str, ck: dict) -> dict:
    """Rank 1 of TP=2 without a second process: build the tower and projectors under overridden
    parallel sizes, load them, and check each shard is this rank's slice."""
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.runtime_context import get_parallel

    from sglang_msa.models import minimax_m3_vl as vl

    config = ModelConfig(path).hf_config
    with get_parallel().override(attn_tp_size=2, attn_tp_rank=1, tp_size=2, tp_rank=1):
        s = vl.VisionSettings.from_config(config)
        parts = {"vision_tower": vl.VisionTower(s, False, "vision_tower"),
                 "multi_modal_projector": vl.ParallelMLP(s.hidden_size, config.projector_hidden_size,
                                                     config.text_config.hidden_size, "gelu", True, False,
                                                     "multi_modal_projector", names=("linear_1", "linear_2"))}
        params = {f"{k}.{n}": p for k, mod in parts.items() for n, p in mod.named_parameters()}
        for p in params.values():
            p.data.fill_(float("nan"))
        for name, tensor in ck.items():
            if not name.startswith("language_model.") and not name.startswith("patch_merge_mlp."):
                vl.MiniMaxM3SparseForConditionalGeneration._load_vision_one(params, name, tensor)

    def rows(t):  # ColumnParallel / head split: second half of the output rows
        return t[t.shape[0] // 2:]

    wrong = []
    for name, p in params.items():
        m = re.match(_VIT_ATTN + r"\.qkv_proj\.(weight|bias)$", name)
        if m:
            want = torch.cat([rows(ck[f"{m[1]}.{x}_proj.{m[2]}"]) for x in "qkv"])
        elif re.search(r"\.(proj|fc2|linear_2)\.weight$", name):  # RowParallel: second half of the inputs
            src = ck[re.sub(r"self_attn\.proj\.", "self_attn.out_proj.", name)]
            want = src[:, src.shape[1] // 2:]
        elif re.search(r"\.(fc1|linear_1)\.(weight|bias)$", name):
            want = rows(ck[name])
        else:  # replicated: norms, patch embedding, RowParallel biases
            want = ck[re.sub(r"self_attn\.proj\.", "self_attn.out_proj.", name)]
        if tuple(p.shape) != tuple(want.shape) or not torch.equal(p.detach(), want.to(p.dtype)):
            wrong.append(name)
    return {"nan_left": [n for n, p in params.items() if torch.isnan(p).any()], "wrong": wrong,
            "qkv_shape": list(params["vision_tower.vision_model.encoder.layers.0.self_attn.qkv_proj.weight"].shape)}


# ----------------------------------------------------------------------------- subprocess: features


def _item(modality: str, pixels: torch.Tensor, grid: list[int]):
    from sglang.srt.managers.schedule_batch import Modality, MultimodalDataItem

    key = "image_grid_thw" if modality == "IMAGE" else "video_grid_thw"
    return MultimodalDataItem(modality=Modality[modality], feature=pixels,
                              model_specific_data={key: torch.tensor([grid])})


def _features_check(model, tf_model) -> dict:
    gen = torch.Generator().manual_seed(17)
    row = 3 * 2 * 14 * 14

    def pixels(grid):
        return torch.randn(grid[0] * grid[1] * grid[2], row, generator=gen)

    out = {}
    cases = {"image": ([1, 6, 10], model.get_image_feature, tf_model.get_image_features),
             "video": ([3, 10, 6], model.get_video_feature, tf_model.get_video_features)}
    items = {}
    for what, (grid, ours_fn, tf_fn) in cases.items():
        pv = pixels(grid)
        items[what] = _item(what.upper(), pv, grid)
        ours = ours_fn([items[what]])
        ref = tf_fn(pv, torch.tensor([grid])).pooler_output
        transposed = ours_fn([_item(what.upper(), pv, [grid[0], grid[2], grid[1]])])
        out[what] = {**m3._diff(ours, ref), "grid": grid,
                     "transposed_grid_diff": float((transposed - ours).abs().max())}

    # Two images in one encoder call: each attends only to itself.
    second = _item("IMAGE", pixels([1, 4, 2]), [1, 4, 2])
    together = model.get_image_feature([items["image"], second])
    alone = torch.cat([model.get_image_feature([items["image"]]), model.get_image_feature([second])])
    out["batched"] = m3._diff(together, alone)
    # transformers' reference runs one call's images as one sequence (informational, not asserted).
    tf_joint = tf_model.get_image_features(torch.cat([items["image"].feature, second.feature]),
                                           torch.tensor([[1, 6, 10], [1, 4, 2]])).pooler_output
    out["batched"]["transformers_joint_vs_alone"] = float((tf_joint - alone).abs().max())

    # vision_segment_max_frames=1: each temporal patch is its own sequence (frame index restarts).
    tower = model.vision_tower.vision_model
    video, (t, h, w) = items["video"], cases["video"][0]
    unsegmented = model.get_video_feature([video])
    tower.settings = dataclasses.replace(tower.settings, segment_max_frames=1)
    try:
        segmented = model.get_video_feature([video])
    finally:
        tower.settings = dataclasses.replace(tower.settings, segment_max_frames=None)
    frames = video.feature.split(h * w)
    per_frame = torch.cat([model.get_video_feature([_item("VIDEO", frames[i], [1, h, w])]) for i in range(t)])
    out["segments"] = {**m3._diff(segmented, per_frame),
                       "differs_from_unsegmented": float((segmented - unsegmented).abs().max())}
    return out


# ----------------------------------------------------------------------------- subprocess: forward


def _processor_output(path: str, image: str, video: str, text: str):
    """Our registered processor, built the way SGLang's tokenizer manager builds it."""
    import asyncio
    from types import SimpleNamespace

    import sglang.srt.multimodal.processors.base_processor as base_processor
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.server_args import ServerArgs
    from sglang.srt.utils.hf_transformers_utils import get_processor

    from sglang_msa.multimodal.minimax_m3_vl import MiniMaxM3VLSmgProcessor

    base_processor._is_cpu = True  # keeps SGLang's loader off cuda:<id> (as under its CPU engine)
    args = ServerArgs(model_path=path, device="cpu")
    hf_processor = get_processor(args.tokenizer_path, tokenizer_mode=args.tokenizer_mode,
                                 trust_remote_code=args.trust_remote_code, revision=args.revision,
                                 use_fast=not args.disable_fast_image_processor,
                                 tokenizer_backend=args.tokenizer_backend, model_name=args.model_path)
    processor = MiniMaxM3VLSmgProcessor(ModelConfig.from_server_args(args).hf_config, args, hf_processor, "default")
    request = SimpleNamespace(video_data=[video])
    return asyncio.run(processor.process_mm_data_async([image], None, text, request))


def _mm_batch_class():
    from sglang.srt.layers.logits_processor import LogitsMetadata

    @dataclasses.dataclass
    class MMBatch(LogitsMetadata):
        """What ``general_mm_embed_routine`` and the logits processor read of a ForwardBatch."""

        mm_inputs: list = None
        extend_prefix_lens_cpu: list = None
        input_embeds: torch.Tensor = None

        def contains_mm_inputs(self) -> bool:
            return any(m is not None for m in self.mm_inputs or [])

    return MMBatch


def _forward_check(model, tf_model, args: dict) -> dict:
    from sglang.srt.managers import mm_utils
    from sglang.srt.managers.schedule_batch import MultimodalInputs
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.srt.model_executor.forward_context import ForwardContext, set_forward_context

    MMBatch = _mm_batch_class()
    text = "Compare ]<]image[>[ with ]<]video[>[ and say what moves. Answer:"
    processed = _processor_output(args["ckpt"], args["image"], args["video"], text)
    mm_ids = torch.tensor(processed.input_ids)
    mm_inputs = MultimodalInputs.from_processor_output(processed)
    items = mm_inputs.mm_items
    image, video = items
    out: dict = {"items": []}
    padded = model.pad_input_ids(list(processed.input_ids), mm_inputs)
    for item in items:
        key = "image_grid_thw" if item.modality.name == "IMAGE" else "video_grid_thw"
        grid = item.model_specific_data[key].reshape(-1).tolist()
        token = mm_inputs.im_token_id if item.modality.name == "IMAGE" else mm_inputs.video_token_id
        positions = [i for a, b in item.offsets for i in range(a, b + 1)]
        out["items"].append({
            "modality": item.modality.name, "grid": grid, "offsets": item.offsets, "rows": item.feature.shape[0],
            "patches": grid[0] * grid[1] * grid[2], "placeholders": len(positions),
            "padded_ok": (all(mm_ids[i] == token and padded[i] == item.pad_value for i in positions)
                          and sum(mm_ids.eq(token).tolist()) == len(positions)),
        })
    mm_utils.init_mm_embedding_cache(1 << 30)

    # Each processor item's features vs transformers.
    out["features"] = {
        "image": m3._diff(model.get_image_feature([image]),
                          tf_model.get_image_features(image.feature, image.image_grid_thw).pooler_output),
        "video": m3._diff(model.get_video_feature([video]),
                          tf_model.get_video_features(video.feature, video.video_grid_thw).pooler_output),
    }

    # Batch: a text-only prompt, then the prompt with media.
    gen = torch.Generator().manual_seed(5)
    text_ids = torch.randint(16, model.config.text_config.vocab_size, (13,), generator=gen)
    lens = [len(text_ids), len(mm_ids)]
    cu = [0, lens[0], sum(lens)]
    ref_mm = tf_model(input_ids=mm_ids[None], pixel_values=image.feature, image_grid_thw=image.image_grid_thw,
                      pixel_values_videos=video.feature, video_grid_thw=video.video_grid_thw).logits[0]
    ref = torch.cat([tf_model(input_ids=text_ids[None]).logits[0], ref_mm])
    no_media = tf_model(input_ids=mm_ids[None]).logits[0]  # placeholder embeddings instead of features
    media_effect = float((no_media - ref_mm).abs().max())
    input_ids = torch.cat([text_ids, torch.tensor(padded)])
    positions = torch.cat([torch.arange(n) for n in lens])

    def batch():
        mm_utils.init_mm_embedding_cache(1 << 30)  # no features cached from an earlier call
        return MMBatch(forward_mode=ForwardMode.EXTEND, extend_seq_lens=torch.tensor(lens), extend_seq_lens_cpu=lens,
                       extend_prefix_lens_cpu=[0, 0], mm_inputs=[None, mm_inputs])

    lm = model.language_model
    set_forward_context(ForwardContext(attn_backend=m3._DenseCausalBackend(cu)))
    try:
        # Every token's logits: the logits processor swapped for the bare head.
        class BareHead(torch.nn.Module):
            def forward(self, ids, hidden, head, forward_batch):
                return hidden @ head.weight.T

        real = lm.logits_processor
        lm.logits_processor = BareHead()
        try:
            logits = model(input_ids.clone(), positions, batch())
        finally:
            lm.logits_processor = real
        out["all_tokens"] = {**m3._diff(logits, ref), "media_effect": media_effect,
                             "argmax_equal": bool(torch.equal(logits.argmax(-1), ref.argmax(-1)))}
        # The real path: EXTEND, each prompt's last token.
        last = model(input_ids.clone(), positions, batch()).next_token_logits
        ref_last = ref[torch.tensor(cu[1:]) - 1]
        out["extend_last_tokens"] = {**m3._diff(last, ref_last),
                                     "media_effect": float((no_media[-1] - ref_mm[-1]).abs().max()),
                                     "argmax_equal": bool(torch.equal(last.argmax(-1), ref_last.argmax(-1)))}
    finally:
        set_forward_context(None)

    # Chunked prefill: cut inside the video's second frame group; embeddings must match the whole prompt's.
    cut = video.offsets[1][0] + 3

    class Capture(torch.nn.Module):
        def get_input_embeddings(self):
            return lm.get_input_embeddings()

        def forward(self, input_ids=None, forward_batch=None, input_embeds=None, **kwargs):
            return input_embeds

    def embeds(ids, prefix):
        mm_utils.init_mm_embedding_cache(1 << 30)
        fb = MMBatch(forward_mode=ForwardMode.EXTEND, extend_seq_lens_cpu=[len(ids)], extend_prefix_lens_cpu=[prefix],
                     mm_inputs=[mm_inputs])
        return mm_utils.general_mm_embed_routine(input_ids=ids.clone(), forward_batch=fb, language_model=Capture(),
                                                 multimodal_model=model)

    ids = torch.tensor(padded)
    whole = embeds(ids, 0)
    chunks = torch.cat([embeds(ids[:cut], 0), embeds(ids[cut:], cut)])
    out["chunked"] = {**m3._diff(chunks, whole), "cut": cut,
                      "cut_inside_video": video.offsets[1][0] < cut <= video.offsets[1][1]}
    return out


# ----------------------------------------------------------------------------- subprocess: main


def _main(args: dict) -> None:
    import time

    t0 = time.time()

    def note(what):
        print(f"[{time.time() - t0:5.1f}s] {what}", file=sys.stderr, flush=True)

    torch.set_default_dtype(torch.float32)
    path = args["ckpt"]
    m3._setup_sglang(path)
    note("sglang set up")
    report: dict = {"registry": _registry_check()}
    note("registry")
    model, ck, report["load"], report["load_extra"] = _load_check(path)
    report["tp_shards"] = _tp_shard_check(path, ck)
    report["meta_slice"] = _meta_check(args["slice"])
    note("weights")
    tf_model = tiny_m3.load_transformers_model(path).eval()
    note("transformers loaded")
    with torch.no_grad():
        report["features"] = _features_check(model, tf_model)
        note("features")
        if "image" in args:
            report["forward"] = _forward_check(model, tf_model, args)
            note("forward")
    print("REPORT " + json.dumps(report), flush=True)
    os._exit(0)  # skip process-group teardown


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))
