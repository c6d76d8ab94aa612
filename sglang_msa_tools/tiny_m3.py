"""Write a small random-weight MiniMax-M3 (or M3-VL) checkpoint in Hugging Face format.

    python -m sglang_msa_tools.tiny_m3 OUT_DIR [--preset {tiny,slice}] [--layers N] [--hidden H]
        [--experts E] [--heads Q --kv-heads K] [--vision] [--seed S] [--dtype bfloat16]
        [--config-only | --weights] [--force]

The checkpoint uses the tensor names of the released M3 checkpoints, which is what both SGLang's
in-tree ``MiniMaxM3SparseForCausalLM`` / ``MiniMaxM3SparseForConditionalGeneration`` and
transformers' ``minimax_m3_vl`` conversion mapping read:

* text: ``model.layers.N.self_attn.{q,k,v,o}_proj``, per-head ``q_norm``/``k_norm``, on sparse
  layers ``index_{q,k}_proj`` + ``index_{q,k}_norm`` (``index_{v,o}_proj`` only when the index
  value path is on), ``block_sparse_moe.{gate,e_score_correction_bias,experts.E.w1/w2/w3,
  shared_experts.*}`` on MoE layers and ``mlp.{gate,up,down}_proj`` on dense layers;
* vision (``--vision``): the text weights under ``language_model.``, a CLIP-style tower under
  ``vision_tower.vision_model.``, and ``multi_modal_projector`` + ``patch_merge_mlp``.

Presets: ``tiny`` (default, < 50 MB; keeps M3's 64 q / 4 kv heads of dim 128 that the sparse kernels
assume), ``slice`` (the real M3 widths on 1 dense + 3 sparse layers; ~50 GB of weights) and ``rank8``
(what one GPU computes in MiniMax-M3 served with ``--tp 8``, see :data:`RANK8`). ``slice`` and
``rank8`` write only the config + tokenizer for ``--load-format dummy`` unless ``--force`` is given.
Weights are seeded per tensor name, so a run is reproducible byte for byte and the language model of a
``--vision`` checkpoint equals the text checkpoint made with the same seed and sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import zlib
from typing import Iterator

from sglang_msa_tools import tiny_m3_tokenizer as tok

# Field values shared by every preset: the real M3 settings that SGLang and transformers read.
M3_COMMON = {
    "model_type": "minimax_m2",  # the released M3 text config says minimax_m2 (SGLang relies on it)
    "hidden_act": "swigluoai",  # dense / shared MLPs use the clamped SwiGLU like the experts
    "swiglu_alpha": 1.702,
    "swiglu_limit": 7.0,
    "rms_norm_eps": 1e-06,
    "rope_theta": 5000000.0,
    "rotary_dim": 64,  # SGLang reads rotary_dim ...
    "partial_rotary_factor": 0.5,  # ... transformers reads this (64 of head_dim 128)
    "qk_norm_type": "per_head",  # sparse layers require it
    "use_gemma_norm": True,  # norms compute x * (1 + w)
    "n_shared_experts": 1,
    "scoring_func": "sigmoid",
    "use_routing_bias": True,
    "routed_scaling_factor": 2.0,
    "num_mtp_modules": 0,
    "tie_word_embeddings": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "use_cache": True,
}

PRESETS = {
    "tiny": {
        "vocab_size": 1024,
        "hidden_size": 256,
        "intermediate_size": 128,
        "dense_intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 64,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "max_position_embeddings": 65536,
    },
    "slice": {
        "vocab_size": 200064,
        "hidden_size": 6144,
        "intermediate_size": 3072,
        "dense_intermediate_size": 12288,
        "num_hidden_layers": 4,
        "num_attention_heads": 64,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "num_local_experts": 128,
        "num_experts_per_tok": 4,
        "max_position_embeddings": 524288,
    },
}

# MiniMax-M3 as one GPU of a `--tp 8` deployment computes it, served at TP1. SGLang's M3 at attn TP 8
# (sglang/srt/models/minimax_m3.py): 64/8 = 8 query heads; 4 KV heads < 8 ranks, so each rank holds
# one KV head (replicated on 2 ranks); the index projection has 4 query heads over one shared key
# head, split over min(8, 4) ranks, so 1 index query head + the index key head per rank; experts,
# shared expert and dense MLP are TP-sharded (3072/8, 12288/8); vocabulary and hidden size are whole.
# The released model's first 3 of 60 layers are dense (attention and MLP): RANK8_DENSE_FRACTION.
TP_DEGREE = 8
RANK8_DENSE_FRACTION = 3 / 60
PRESETS["rank8"] = {
    **PRESETS["slice"],
    "num_hidden_layers": 20,
    "num_attention_heads": 64 // TP_DEGREE,
    "num_key_value_heads": 1,
    "intermediate_size": 3072 // TP_DEGREE,
    "dense_intermediate_size": 12288 // TP_DEGREE,
    "max_position_embeddings": 1048576,
}
INDEX_HEADS = {"rank8": 1}  # per preset; the released model's 4 otherwise (SPARSE_COMMON)
CONFIG_ONLY_PRESETS = ("slice", "rank8")


def default_dense_layers(preset: str, layers: int) -> int:
    """Leading dense layers: rank8 keeps the released model's fraction (at least one), others 1."""
    if preset == "rank8":
        return max(1, round(layers * RANK8_DENSE_FRACTION))
    return 1

# The MSA settings of the released model (identical for both presets).
SPARSE_COMMON = {
    "sparse_num_index_heads": 4,
    "sparse_index_dim": 128,
    "sparse_block_size": 128,
    "sparse_topk_blocks": 16,
    "sparse_init_block": 0,
    "sparse_local_block": 1,
    "sparse_score_type": "max",
}

VISION_PRESETS = {
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 2, "image_size": 224},
    "slice": {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
              "num_attention_heads": 16, "image_size": 2016},
}

PATCH_SIZE = 14
TEMPORAL_PATCH_SIZE = 2
SPATIAL_MERGE_SIZE = 2
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# Pixel budgets: the real processor defaults for slice, a few dozen vision tokens for tiny.
MAX_PIXELS = {"tiny": 64 * 28 * 28, "slice": 451584}
VIDEO_MAX_PIXELS = {"tiny": 16 * 28 * 28, "slice": 768 * 28 * 28}
for _table in (VISION_PRESETS, MAX_PIXELS, VIDEO_MAX_PIXELS):  # rank8's vision side is the real one
    _table["rank8"] = _table["slice"]

WEIGHT_STD = 0.02
NORM_JITTER = 0.02  # small noise on norm weights so that swapped norms are detectable
BIAS_STD = 0.01
SHARD_BYTES = 4 << 30


# ----------------------------------------------------------------------------- configs


def text_config(preset: str = "tiny", layers: int | None = None, hidden: int | None = None,
                experts: int | None = None, heads: int | None = None, kv_heads: int | None = None,
                dense_layers: int | None = None, index_value: bool = False, dtype: str = "bfloat16") -> dict:
    """The text-model config.json contents (also the ``text_config`` of a VL checkpoint)."""
    cfg = dict(PRESETS[preset])
    if layers is not None:
        cfg["num_hidden_layers"] = layers
    if hidden is not None:
        cfg["hidden_size"] = hidden
    if experts is not None:
        cfg["num_local_experts"] = experts
        cfg["num_experts_per_tok"] = min(cfg["num_experts_per_tok"], experts)
    if heads is not None:
        cfg["num_attention_heads"] = heads
    if kv_heads is not None:
        cfg["num_key_value_heads"] = kv_heads
    n = cfg["num_hidden_layers"]
    if dense_layers is None:
        dense_layers = default_dense_layers(preset, n)
    if not 0 <= dense_layers <= n:
        raise ValueError(f"--dense-layers {dense_layers} must be in [0, {n}]")
    if cfg["num_attention_heads"] % cfg["num_key_value_heads"]:
        raise ValueError("the number of q heads must be a multiple of the number of kv heads")

    ids = tok.special_token_ids(cfg["vocab_size"])
    # Layers [0, dense_layers) are dense attention + dense MLP; the rest are MSA + MoE.
    is_sparse = [int(i >= dense_layers) for i in range(n)]
    out = {"architectures": ["MiniMaxM3SparseForCausalLM"], **M3_COMMON, **cfg}
    out["shared_intermediate_size"] = cfg["intermediate_size"] * M3_COMMON["n_shared_experts"]
    out["moe_layer_freq"] = list(is_sparse)
    out["sparse_attention_config"] = {
        "sparse_attention_freq": list(is_sparse),
        **SPARSE_COMMON,
        "sparse_num_index_heads": INDEX_HEADS.get(preset, SPARSE_COMMON["sparse_num_index_heads"]),
        # transformers' indexer has no value path, like the released checkpoint.
        "sparse_disable_index_value": [0] * n if index_value else list(is_sparse),
    }
    out["bos_token_id"] = ids[tok.BOS]
    out["eos_token_id"] = ids[tok.EOS]
    out["pad_token_id"] = ids[tok.PAD]
    out["torch_dtype"] = dtype
    return dict(sorted(out.items(), key=lambda kv: kv[0] != "architectures"))


def vision_config(preset: str = "tiny") -> dict:
    """CLIP-style tower config with the fields SGLang's CLIPVisionConfig and transformers read."""
    v = VISION_PRESETS[preset]
    return {
        "model_type": "clip_vision_model",
        **v,
        "num_channels": 3,
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "spatial_merge_size": SPATIAL_MERGE_SIZE,
        "hidden_act": "gelu",
        "projector_hidden_act": "gelu",
        "layer_norm_eps": 1e-05,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "position_embedding_type": "rope",
        "rope_mode": "3d",
        "rope_theta": 10000.0,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "vision_segment_max_frames": None,
        "img_token_compression_config": _compression_config(),
    }


def _compression_config() -> dict:
    return {"temporal_patch_size": TEMPORAL_PATCH_SIZE, "spatial_merge_size": SPATIAL_MERGE_SIZE}


def vl_config(text: dict, vision: dict) -> dict:
    """The top-level ``minimax_m3_vl`` config wrapping a text and a vision config."""
    text = {k: v for k, v in text.items() if k != "architectures"}
    ids = tok.special_token_ids(text["vocab_size"])
    return {
        "architectures": ["MiniMaxM3SparseForConditionalGeneration"],
        "model_type": "minimax_m3_vl",
        "text_config": text,
        "vision_config": vision,
        "image_token_index": ids[tok.IMAGE],
        "video_token_index": ids[tok.VIDEO],
        "projector_hidden_size": text["hidden_size"],
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": True,
        "patch_merge_bias": True,
        "img_token_compression_config": _compression_config(),
        "process_image_mode": "dynamic_res",
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
        "tie_word_embeddings": False,
        "bos_token_id": text["bos_token_id"],
        "eos_token_id": text["eos_token_id"],
        "pad_token_id": text["pad_token_id"],
        "torch_dtype": text["torch_dtype"],
    }


def processor_configs(preset: str) -> dict[str, dict]:
    """preprocessor_config.json / video_preprocessor_config.json / processor_config.json."""
    shared = {
        "processor_class": "MiniMaxM3VLProcessor",
        "do_resize": True,
        "resample": 3,  # bicubic
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "do_convert_rgb": True,
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "merge_size": SPATIAL_MERGE_SIZE,
    }
    image = {"image_processor_type": "MiniMaxM3VLImageProcessor", **shared,
             "max_pixels": MAX_PIXELS[preset]}
    video = {"video_processor_type": "MiniMaxM3VLVideoProcessor", **shared,
             "min_pixels": 4 * 28 * 28, "max_pixels": VIDEO_MAX_PIXELS[preset],
             "do_sample_frames": False, "fps": 1.0, "min_frames": 4, "max_frames": 768}
    return {
        "preprocessor_config.json": image,
        "video_preprocessor_config.json": video,
        "processor_config.json": {"processor_class": "MiniMaxM3VLProcessor"},
    }


def generation_config(text: dict) -> dict:
    return {
        "bos_token_id": text["bos_token_id"],
        "eos_token_id": text["eos_token_id"],
        "pad_token_id": text["pad_token_id"],
        "do_sample": True,
        "temperature": 1.0,
        "top_p": 0.95,
        "top_k": 40,
    }


# ----------------------------------------------------------------------------- weight layout

# Init kinds: "w" normal(0, 0.02); "norm" RMSNorm weight (0 or 1 + jitter, per use_gemma_norm);
# "ln" LayerNorm weight (1 + jitter); "b" small normal bias; "ebias" fp32 routing bias.


def text_weight_specs(cfg: dict, prefix: str = "") -> dict[str, tuple[tuple[int, ...], str]]:
    """Every text tensor of the checkpoint: name -> (shape, init kind), in a fixed order."""
    h, d = cfg["hidden_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    sparse = cfg["sparse_attention_config"]
    ih, idim = sparse["sparse_num_index_heads"], sparse["sparse_index_dim"]
    e, inter = cfg["num_local_experts"], cfg["intermediate_size"]
    shared = cfg["intermediate_size"] * cfg["n_shared_experts"]
    dense = cfg["dense_intermediate_size"]

    specs: dict[str, tuple[tuple[int, ...], str]] = {}
    m = prefix + "model."
    specs[m + "embed_tokens.weight"] = ((cfg["vocab_size"], h), "w")
    for i in range(cfg["num_hidden_layers"]):
        p = f"{m}layers.{i}."
        a = p + "self_attn."
        specs[a + "q_proj.weight"] = ((q, h), "w")
        specs[a + "k_proj.weight"] = ((kv, h), "w")
        specs[a + "v_proj.weight"] = ((kv, h), "w")
        specs[a + "o_proj.weight"] = ((h, q), "w")
        specs[a + "q_norm.weight"] = ((d,), "norm")
        specs[a + "k_norm.weight"] = ((d,), "norm")
        if sparse["sparse_attention_freq"][i]:
            specs[a + "index_q_proj.weight"] = ((ih * idim, h), "w")
            specs[a + "index_k_proj.weight"] = ((idim, h), "w")
            if not sparse["sparse_disable_index_value"][i]:
                specs[a + "index_v_proj.weight"] = ((idim, h), "w")
                specs[a + "index_o_proj.weight"] = ((h, ih * idim), "w")
            specs[a + "index_q_norm.weight"] = ((idim,), "norm")
            specs[a + "index_k_norm.weight"] = ((idim,), "norm")
        if cfg["moe_layer_freq"][i]:
            b = p + "block_sparse_moe."
            specs[b + "gate.weight"] = ((e, h), "w")
            specs[b + "e_score_correction_bias"] = ((e,), "ebias")
            for j in range(e):
                specs[f"{b}experts.{j}.w1.weight"] = ((inter, h), "w")
                specs[f"{b}experts.{j}.w2.weight"] = ((h, inter), "w")
                specs[f"{b}experts.{j}.w3.weight"] = ((inter, h), "w")
            specs[b + "shared_experts.gate_proj.weight"] = ((shared, h), "w")
            specs[b + "shared_experts.up_proj.weight"] = ((shared, h), "w")
            specs[b + "shared_experts.down_proj.weight"] = ((h, shared), "w")
        else:
            specs[p + "mlp.gate_proj.weight"] = ((dense, h), "w")
            specs[p + "mlp.up_proj.weight"] = ((dense, h), "w")
            specs[p + "mlp.down_proj.weight"] = ((h, dense), "w")
        specs[p + "input_layernorm.weight"] = ((h,), "norm")
        specs[p + "post_attention_layernorm.weight"] = ((h,), "norm")
    specs[m + "norm.weight"] = ((h,), "norm")
    specs[prefix + "lm_head.weight"] = ((cfg["vocab_size"], h), "w")
    return specs


def vision_weight_specs(cfg: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """The vision tower, projector and patch merger tensors of a VL checkpoint."""
    v, text = cfg["vision_config"], cfg["text_config"]
    hv, iv = v["hidden_size"], v["intermediate_size"]
    ht, proj = text["hidden_size"], cfg["projector_hidden_size"]
    merged = ht * v["img_token_compression_config"]["spatial_merge_size"] ** 2
    patch = (hv, v["num_channels"], TEMPORAL_PATCH_SIZE, v["patch_size"], v["patch_size"])

    specs: dict[str, tuple[tuple[int, ...], str]] = {}
    t = "vision_tower.vision_model."
    specs[t + "embeddings.patch_embedding.weight"] = (patch, "w")
    _layer_norm(specs, t + "pre_layrnorm", hv)  # sic: the released name
    for i in range(v["num_hidden_layers"]):
        p = f"{t}encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _linear(specs, p + "self_attn." + name, hv, hv)
        _layer_norm(specs, p + "layer_norm1", hv)
        _linear(specs, p + "mlp.fc1", hv, iv)
        _linear(specs, p + "mlp.fc2", iv, hv)
        _layer_norm(specs, p + "layer_norm2", hv)
    # No post_layernorm: SGLang builds one but never runs it, and transformers has none.
    _linear(specs, "multi_modal_projector.linear_1", hv, proj)
    _linear(specs, "multi_modal_projector.linear_2", proj, ht)
    _linear(specs, "patch_merge_mlp.linear_1", merged, proj)
    _linear(specs, "patch_merge_mlp.linear_2", proj, ht)
    return specs


def _linear(specs: dict, name: str, fan_in: int, fan_out: int) -> None:
    specs[name + ".weight"] = ((fan_out, fan_in), "w")
    specs[name + ".bias"] = ((fan_out,), "b")


def _layer_norm(specs: dict, name: str, dim: int) -> None:
    specs[name + ".weight"] = ((dim,), "ln")
    specs[name + ".bias"] = ((dim,), "b")


def checkpoint_specs(config: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """All tensors for a text or VL config.json dict."""
    if "text_config" in config:
        return {**text_weight_specs(config["text_config"], prefix="language_model."),
                **vision_weight_specs(config)}
    return text_weight_specs(config)


def checkpoint_bytes(config: dict, dtype: str = "bfloat16") -> int:
    width = {"bfloat16": 2, "float16": 2, "float32": 4}[dtype]
    return sum(math.prod(shape) * (4 if kind == "ebias" else width)
               for shape, kind in checkpoint_specs(config).values())


# ----------------------------------------------------------------------------- random weights


def _tensor_seed(seed: int, name: str) -> int:
    # Seed from the name without the VL prefix, so text and VL checkpoints share language weights.
    key = name.removeprefix("language_model.")
    return (seed * 0x9E3779B1 + zlib.crc32(key.encode())) % (1 << 63)


def make_tensor(name: str, shape: tuple[int, ...], kind: str, seed: int, dtype, gemma_norm: bool):
    import torch

    gen = torch.Generator().manual_seed(_tensor_seed(seed, name))
    x = torch.empty(shape, dtype=torch.float32)
    if kind == "w":
        x.normal_(0.0, WEIGHT_STD, generator=gen)
    elif kind == "norm":
        x.normal_(0.0 if gemma_norm else 1.0, NORM_JITTER, generator=gen)
    elif kind == "ln":
        x.normal_(1.0, NORM_JITTER, generator=gen)
    elif kind in ("b", "ebias"):
        x.normal_(0.0, BIAS_STD, generator=gen)
    else:
        raise ValueError(kind)
    # The routing bias stays fp32, as in the released checkpoints.
    return x if kind == "ebias" else x.to(dtype)


def iter_weights(config: dict, seed: int = 0, dtype: str = "bfloat16") -> Iterator[tuple[str, object]]:
    import torch

    text = config.get("text_config", config)
    torch_dtype = getattr(torch, dtype)
    for name, (shape, kind) in checkpoint_specs(config).items():
        yield name, make_tensor(name, shape, kind, seed, torch_dtype, text["use_gemma_norm"])


def write_weights(out_dir: str, config: dict, seed: int, dtype: str, shard_bytes: int = SHARD_BYTES) -> list[str]:
    """Write model.safetensors, or numbered shards plus the index when larger than ``shard_bytes``."""
    from safetensors.torch import save_file

    # One metadata key only: safetensors writes metadata in hash-map order, which varies per run.
    metadata = {"format": "pt"}
    total = checkpoint_bytes(config, dtype)
    if total <= shard_bytes:
        save_file(dict(iter_weights(config, seed, dtype)), os.path.join(out_dir, "model.safetensors"), metadata)
        return ["model.safetensors"]

    # Group names into shards first (from shapes only), then materialise one shard at a time.
    groups: list[list[str]] = [[]]
    size = 0
    width = 4 if dtype == "float32" else 2
    for name, (shape, kind) in checkpoint_specs(config).items():
        nbytes = math.prod(shape) * (4 if kind == "ebias" else width)
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    files, weight_map = [], {}
    tensors = iter_weights(config, seed, dtype)
    for k, names in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        shard = dict(next(tensors) for _ in names)
        assert list(shard) == names
        save_file(shard, os.path.join(out_dir, fname), metadata)
        weight_map.update({n: fname for n in names})
        files.append(fname)
        print(f"  wrote {fname} ({len(names)} tensors)", file=sys.stderr)
    _write_json(os.path.join(out_dir, "model.safetensors.index.json"),
                {"metadata": {"total_size": total}, "weight_map": weight_map})
    return files


# ----------------------------------------------------------------------------- transformers reference


def load_transformers_model(path: str, dtype=None, **kwargs):
    """Load a checkpoint written here into transformers (a CPU/GPU reference for SGLang's logits).

    VL checkpoints go through transformers' own ``minimax_m3_vl`` loader. transformers has no
    text-only M3 loader for the released tensor names, so for text checkpoints this registers the
    same conversion rules for ``MiniMaxM3VLForCausalLM`` with the language-model prefix dropped
    (``block_sparse_moe`` -> ``mlp``, ``index_*`` -> ``indexer.*``, experts stacked, gate/up fused).
    Needs a transformers with ``minimax_m3_vl`` (5.12+).
    """
    import torch
    from transformers.models.minimax_m3_vl import (MiniMaxM3SparseForConditionalGeneration,
                                                   MiniMaxM3VLForCausalLM, MiniMaxM3VLTextConfig)

    dtype = dtype or torch.float32
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    if "text_config" in config:
        return MiniMaxM3SparseForConditionalGeneration.from_pretrained(path, dtype=dtype, **kwargs)
    _register_text_conversion()
    text = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    return MiniMaxM3VLForCausalLM.from_pretrained(path, config=MiniMaxM3VLTextConfig(**text), dtype=dtype,
                                                  **kwargs)


def _register_text_conversion() -> None:
    from transformers.conversion_mapping import (get_checkpoint_conversion_mapping,
                                                 register_checkpoint_conversion_mapping)
    from transformers.core_model_loading import WeightRenaming

    vl_prefixes = ("language_model", "vision_tower", "multi_modal_projector", "patch_merge_mlp")
    # Keep the VL rules that are not tied to the VL key prefixes (index renames, expert stacking).
    generic = [t for t in get_checkpoint_conversion_mapping("minimax_m3_vl")
               if not any(p in src for src in t.source_patterns for p in vl_prefixes)]
    moe = [WeightRenaming(rf"\.layers\.(\d+)\.block_sparse_moe\.{re.escape(src)}", rf".layers.\1.mlp.{dst}")
           for src, dst in (("experts.", "experts."), ("shared_experts.", "shared_experts."),
                            ("gate.weight", "gate.weight"),
                            ("e_score_correction_bias", "gate.e_score_correction_bias"))]
    register_checkpoint_conversion_mapping("MiniMaxM3VLForCausalLM", moe + generic, overwrite=True)


# ----------------------------------------------------------------------------- writer


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_checkpoint(out_dir: str, preset: str = "tiny", *, layers: int | None = None,
                     hidden: int | None = None, experts: int | None = None, heads: int | None = None,
                     kv_heads: int | None = None, dense_layers: int | None = None, index_value: bool = False,
                     vision: bool = False, seed: int = 0, dtype: str = "bfloat16",
                     config_only: bool | None = None, force: bool = False) -> dict:
    """Write the checkpoint directory and return its config dict.

    ``config_only`` defaults to True for ``slice`` and ``rank8`` (serve them with ``--load-format
    dummy``); writing their weights needs ``force=True``.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    text = text_config(preset, layers, hidden, experts, heads, kv_heads, dense_layers, index_value, dtype)
    config = vl_config(text, vision_config(preset)) if vision else text

    if config_only is None:
        config_only = preset in CONFIG_ONLY_PRESETS and not force
    if not config_only and preset in CONFIG_ONLY_PRESETS and not force:
        gb = checkpoint_bytes(config, dtype) / 1e9
        raise SystemExit(
            f"refusing to write the {preset} weights: about {gb:.0f} GB of random {dtype} tensors. "
            f"Use --config-only (the default for {preset}) and serve with --load-format dummy, "
            "or pass --force to write them anyway.")

    os.makedirs(out_dir, exist_ok=True)
    _write_json(os.path.join(out_dir, "config.json"), config)
    _write_json(os.path.join(out_dir, "generation_config.json"), generation_config(text))
    tok.write_tokenizer(out_dir, text["vocab_size"], text["max_position_embeddings"])
    if vision:
        for fname, obj in processor_configs(preset).items():
            _write_json(os.path.join(out_dir, fname), obj)
        # transformers' processors read their template from this file, tokenizers from their config.
        with open(os.path.join(out_dir, "chat_template.jinja"), "w") as f:
            f.write(tok.CHAT_TEMPLATE)
    if not config_only:
        write_weights(out_dir, config, seed, dtype)
    return config


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sglang_msa_tools.tiny_m3", description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--layers", type=int, help="number of decoder layers")
    ap.add_argument("--dense-layers", type=int, default=None,
                    help="leading dense-attention + dense-MLP layers (default 1; rank8: 3/60 of --layers)")
    ap.add_argument("--hidden", type=int, help="hidden size")
    ap.add_argument("--experts", type=int, help="routed experts per MoE layer")
    ap.add_argument("--heads", type=int, help="q heads (default 64; the MSA kernels assume 64/4 x 128)")
    ap.add_argument("--kv-heads", type=int, help="kv heads (default 4)")
    ap.add_argument("--index-value", action="store_true",
                    help="keep the indexer value path (index_v/o_proj); transformers cannot load that")
    ap.add_argument("--vision", action="store_true", help="write an M3-VL checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--config-only", dest="config_only", action="store_true", default=None,
                      help="config + tokenizer only, for --load-format dummy (default for slice, rank8)")
    mode.add_argument("--weights", dest="config_only", action="store_false", help="also write weights")
    ap.add_argument("--force", action="store_true", help="allow writing the slice / rank8 weights (tens of GB)")
    args = ap.parse_args(argv)

    config = write_checkpoint(
        args.out_dir, args.preset, layers=args.layers, hidden=args.hidden, experts=args.experts,
        heads=args.heads, kv_heads=args.kv_heads, dense_layers=args.dense_layers,
        index_value=args.index_value, vision=args.vision, seed=args.seed, dtype=args.dtype,
        config_only=args.config_only, force=args.force)
    files = sorted(os.listdir(args.out_dir))
    size = sum(os.path.getsize(os.path.join(args.out_dir, f)) for f in files)
    print(f"wrote {config['architectures'][0]} ({args.preset}) to {args.out_dir}: "
          f"{len(files)} files, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
