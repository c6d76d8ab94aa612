"""MiniMax-M3-VL for SGLang: a CLIP-style vision tower with 3D RoPE, a two-stage projector, and our
MiniMax-M3 text model (:class:`sglang_msa.models.minimax_m3.MiniMaxM3SparseForCausalLM`).

Math (checked against transformers' ``minimax_m3_vl`` in ``tests/test_m3_vl_model.py``):

* patches: each row of ``pixel_values`` is one ``C x T x P x P`` patch (``T`` = 2 frames, ``P`` = 14),
  rows already grouped in ``merge x merge`` blocks by the processor; a Conv3d whose kernel equals its
  stride is a matmul over that row, so it runs as one;
* tower: LayerNorm (``pre_layrnorm``), then pre-norm blocks of bidirectional attention and a GELU MLP;
  attention rotates q and k with a 3D RoPE: the first ``3 * a`` channels of a head (``a`` = the
  largest even number <= ``head_dim // 3``) carry ``a / 2`` frequencies for each of the frame, row and
  column index of the patch (NeoX halves), the rest pass through;
* projector: every patch goes through ``linear_2(gelu(linear_1(x)))`` to the text width, then each
  block of ``merge**2`` consecutive patches is concatenated and fused into one token by
  ``patch_merge_mlp`` (same shape of MLP). Image and video tokens replace their placeholder tokens.

Each image or video (each grid row of an item) attends only to itself, so features do not depend on
which other items share the encoder batch (SGLang batches items across requests and caches them per
item). transformers' reference runs all images of one call as one sequence; with one item per call
the two agree. ``vision_segment_max_frames``, when set, cuts a video into segments of that many
temporal patches that attend (and number their frames) separately.

Tensor parallelism: the tower's attention heads and MLPs and both projector MLPs are split over the
attention-TP ranks (``--mm-enable-dp-encoder`` runs a whole tower per rank instead, via SGLang's
data-parallel encoder helper). The vision parts are not quantized; ``quant_config`` applies to the
language model.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from sglang.srt.layers.activation import get_act_fn
from sglang.srt.layers.attention.vision import (
    FLASHINFER_WORKSPACE_SIZE_BYTES,
    VisionAttention,
    prepare_flashinfer_cudnn_vision_attention_metadata,
    prepare_vision_attention_metadata,
)
from sglang.srt.layers.dp_attention import is_dp_attention_enabled
from sglang.srt.layers.linear import ColumnParallelLinear, RowParallelLinear
from sglang.srt.managers.mm_utils import (
    MultiModalityDataPaddingPatternMultimodalTokens,
    general_mm_embed_routine,
)
from sglang.srt.managers.schedule_batch import MultimodalDataItem, MultimodalInputs
from sglang.srt.model_loader.weight_utils import default_weight_loader
from sglang.srt.runtime_context import get_mm, get_parallel
from sglang.srt.utils import add_prefix

from sglang_msa.models.minimax_m3 import MiniMaxM3SparseForCausalLM

logger = logging.getLogger("sglang_msa")

TEXT_PREFIX = "language_model."
_VIT_QKV = re.compile(r"^(?P<attn>.+\.self_attn)\.(?P<which>[qkv])_proj\.(?P<leaf>weight|bias)$")
_VIT_OUT = re.compile(r"^(?P<attn>.+\.self_attn)\.out_proj\.(?P<leaf>weight|bias)$")
# Tensors the model has no use for: transformers' tower has no final norm either, and rotary
# frequencies / position ids are recomputed.
_UNUSED = re.compile(r"(?:^vision_tower\.vision_model\.post_layernorm\.|rotary_emb\.inv_freq$|\.position_ids$)")


# ----------------------------------------------------------------------------- config


def _field(cfg, name: str, default=None):
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


@dataclass(frozen=True)
class VisionSettings:
    """What the tower reads from ``vision_config`` (a dict under SGLang's config class, an object
    under transformers'), with the released model's values as defaults."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_channels: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    hidden_act: str
    layer_norm_eps: float
    rope_theta: float
    segment_max_frames: Optional[int]

    @classmethod
    def from_config(cls, config) -> "VisionSettings":
        v = config.vision_config
        compression = _field(v, "img_token_compression_config") or _field(config, "img_token_compression_config") or {}
        rope = _field(v, "rope_parameters") or {}
        theta = _field(v, "rope_theta") or _field(rope, "rope_theta") or 10000.0
        if _field(v, "position_embedding_type", "rope") != "rope" or _field(v, "rope_mode", "3d") != "3d":
            raise NotImplementedError("sglang-msa MiniMax-M3-VL: only the 3D-RoPE vision tower is supported")
        return cls(
            hidden_size=int(_field(v, "hidden_size")),
            intermediate_size=int(_field(v, "intermediate_size")),
            num_layers=int(_field(v, "num_hidden_layers")),
            num_heads=int(_field(v, "num_attention_heads")),
            num_channels=int(_field(v, "num_channels", 3)),
            patch_size=int(_field(v, "patch_size", 14)),
            temporal_patch_size=int(_field(v, "temporal_patch_size") or compression.get("temporal_patch_size", 2)),
            merge_size=int(_field(v, "spatial_merge_size") or compression.get("spatial_merge_size", 2)),
            hidden_act=str(_field(v, "hidden_act", "gelu")),
            layer_norm_eps=float(_field(v, "layer_norm_eps", 1e-5)),
            rope_theta=float(theta),
            segment_max_frames=_field(v, "vision_segment_max_frames"),
        )


def split_segments(grids: list[list[int]], max_frames: Optional[int]) -> list[tuple[int, int, int]]:
    """Each ``(t, h, w)`` grid, cut into pieces of at most ``max_frames`` temporal patches."""
    out = []
    for t, h, w in grids:
        step = t if not max_frames else int(max_frames)
        out.extend((min(step, t - s), h, w) for s in range(0, t, step))
    return out


# ----------------------------------------------------------------------------- 3D RoPE


class VisionRope3D(nn.Module):
    """cos/sin per patch: frame, row and column index each drive ``axis_dim / 2`` frequencies."""

    def __init__(self, head_dim: int, theta: float, merge_size: int):
        super().__init__()
        self.axis_dim = 2 * ((2 * (head_dim // 2)) // 3 // 2)
        self.rot_dim = 3 * self.axis_dim
        self.merge_size = merge_size
        self.theta = theta

    def positions(self, t: int, h: int, w: int) -> torch.Tensor:
        """``[t*h*w, 3]`` (frame, row, column) in the processor's order: frame, then merge block
        (row-major), then row and column inside the block."""
        m = self.merge_size
        rows = torch.arange(h).view(h // m, m, 1, 1).expand(h // m, m, w // m, m)
        cols = torch.arange(w).view(1, 1, w // m, m).expand(h // m, m, w // m, m)
        rows = rows.permute(0, 2, 1, 3).reshape(-1)
        cols = cols.permute(0, 2, 1, 3).reshape(-1)
        frames = torch.arange(t).repeat_interleave(h * w)
        return torch.stack([frames, rows.repeat(t), cols.repeat(t)], dim=-1)

    def forward(self, segments: list[tuple[int, int, int]], device) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.cat([self.positions(*s) for s in segments]).to(device=device, dtype=torch.float32)
        # Made here, in fp32, rather than kept as a buffer that a dtype cast or meta init would spoil.
        exponents = torch.arange(0, self.axis_dim, 2, dtype=torch.float32, device=device) / self.axis_dim
        inv_freq = self.theta ** -exponents
        freqs = (pos[:, :, None] * inv_freq).flatten(1)  # [n, 3 * axis_dim / 2]: frame | row | column
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos()[:, None, :], emb.sin()[:, None, :]  # broadcast over heads


def apply_vision_rope(q, k, position_embeddings, x_shape=None):
    """Rotate the first ``rot_dim`` channels of each head (NeoX halves) in fp32; the rest pass."""
    cos, sin = position_embeddings
    rot = cos.shape[-1]

    def rotate(x):
        x_rot = x[..., :rot].float()
        first, second = x_rot.chunk(2, dim=-1)
        turned = torch.cat([-second, first], dim=-1)
        return torch.cat([(x_rot * cos + turned * sin).to(x.dtype), x[..., rot:]], dim=-1)

    return rotate(q), rotate(k)


# ----------------------------------------------------------------------------- tower


def _vision_tp(use_data_parallel: bool) -> tuple[int, int]:
    if use_data_parallel:
        return 1, 0
    parallel = get_parallel()
    return parallel.attn_tp_size, parallel.attn_tp_rank


class PatchEmbedding(nn.Module):
    """The Conv3d patch embedding (checkpoint shape ``[D, C, T, P, P]``, no bias) as a matmul."""

    def __init__(self, s: VisionSettings):
        super().__init__()
        shape = (s.hidden_size, s.num_channels, s.temporal_patch_size, s.patch_size, s.patch_size)
        self.weight = nn.Parameter(torch.empty(shape), requires_grad=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        w = self.weight.flatten(1)
        if pixel_values.shape[-1] != w.shape[1]:
            raise ValueError(f"pixel rows of {pixel_values.shape[-1]} values; the patch embedding takes {w.shape[1]}")
        return F.linear(pixel_values.to(w.dtype), w)


class VisionEmbeddings(nn.Module):
    def __init__(self, s: VisionSettings):
        super().__init__()
        self.patch_embedding = PatchEmbedding(s)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.patch_embedding(pixel_values)


class ParallelMLP(nn.Module):
    """``down(act(up(x)))``: column-parallel up, row-parallel down over the vision TP ranks. Module
    names follow the checkpoint: ``fc1/fc2`` in the tower, ``linear_1/linear_2`` in the projectors."""

    def __init__(self, d_in: int, d_mid: int, d_out: int, act: str, bias: bool, use_data_parallel: bool,
                 prefix: str, names: tuple[str, str] = ("fc1", "fc2")):
        super().__init__()
        tp_size, tp_rank = _vision_tp(use_data_parallel)
        self._names = names
        up = ColumnParallelLinear(d_in, d_mid, bias=bias, tp_size=tp_size, tp_rank=tp_rank,
                                  prefix=add_prefix(names[0], prefix))
        down = RowParallelLinear(d_mid, d_out, bias=bias, tp_size=tp_size, tp_rank=tp_rank,
                                 prefix=add_prefix(names[1], prefix),
                                 use_dp_attention_reduce=is_dp_attention_enabled())
        self.add_module(names[0], up)
        self.add_module(names[1], down)
        self.act = get_act_fn(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, down = (getattr(self, n) for n in self._names)
        h, _ = up(x)
        out, _ = down(self.act(h))
        return out


class VisionEncoderLayer(nn.Module):
    def __init__(self, s: VisionSettings, use_data_parallel: bool, workspace_buffer, prefix: str):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps)
        self.self_attn = VisionAttention(
            embed_dim=s.hidden_size, num_heads=s.num_heads, projection_size=s.hidden_size,
            use_qkv_parallel=True, flatten_batch=True, prefix=add_prefix("self_attn", prefix),
            use_data_parallel=use_data_parallel, use_dp_attention_reduce=is_dp_attention_enabled(),
            customized_position_embedding_applier=apply_vision_rope, workspace_buffer=workspace_buffer)
        self.layer_norm2 = nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps)
        self.mlp = ParallelMLP(s.hidden_size, s.intermediate_size, s.hidden_size, s.hidden_act, True,
                           use_data_parallel, add_prefix("mlp", prefix))

    def forward(self, x, rope, cu_seqlens, metadata) -> torch.Tensor:
        attn = self.self_attn(self.layer_norm1(x), cu_seqlens=cu_seqlens, position_embeddings=rope,
                              forward_metadata=metadata, max_seqlen=metadata.max_seqlen)
        x = x + attn.view_as(x)
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoder(nn.Module):
    def __init__(self, s: VisionSettings, use_data_parallel: bool, workspace_buffer, prefix: str):
        super().__init__()
        self.layers = nn.ModuleList(
            VisionEncoderLayer(s, use_data_parallel, workspace_buffer, add_prefix(f"layers.{i}", prefix))
            for i in range(s.num_layers))


class VisionTransformer(nn.Module):
    """Patch embedding -> pre-norm -> encoder; one hidden state per patch."""

    def __init__(self, s: VisionSettings, use_data_parallel: bool, prefix: str):
        super().__init__()
        self.settings = s
        self.use_data_parallel = use_data_parallel
        self.backend = get_mm().mm_attention_backend
        workspace = None
        if self.backend == "flashinfer_cudnn" and torch.cuda.is_available():
            workspace = torch.empty(FLASHINFER_WORKSPACE_SIZE_BYTES, dtype=torch.uint8,
                                    device=torch.device("cuda", torch.cuda.current_device()))
        self.embeddings = VisionEmbeddings(s)
        self.pre_layrnorm = nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps)  # sic: the checkpoint's name
        self.encoder = VisionEncoder(s, use_data_parallel, workspace, add_prefix("encoder", prefix))
        self.rope = VisionRope3D(s.hidden_size // s.num_heads, s.rope_theta, s.merge_size)

    def _attention_metadata(self, segments, device):
        lens = torch.tensor([t * h * w for t, h, w in segments], dtype=torch.int32)
        cu_seqlens = F.pad(lens.cumsum(0, dtype=torch.int32), (1, 0))
        if self.backend == "flashinfer_cudnn":
            tp_size, _ = _vision_tp(self.use_data_parallel)
            meta = prepare_flashinfer_cudnn_vision_attention_metadata(
                cu_seqlens, device, elem_per_token=self.settings.hidden_size // tp_size)
            return meta.packed_indptrs, meta
        meta = prepare_vision_attention_metadata(cu_seqlens, device, max_seqlen=int(lens.max()))
        return meta.cu_seqlens, meta

    def forward(self, pixel_values: torch.Tensor, grids: list[list[int]]) -> torch.Tensor:
        segments = split_segments(grids, self.settings.segment_max_frames)
        total = sum(t * h * w for t, h, w in segments)
        if pixel_values.shape[0] != total:
            raise ValueError(f"{pixel_values.shape[0]} pixel rows for grids {grids} ({total} patches)")
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        rope = self.rope(segments, x.device)
        cu_seqlens, meta = self._attention_metadata(segments, x.device)
        for layer in self.encoder.layers:
            x = layer(x, rope, cu_seqlens, meta)
        return x


class VisionTower(nn.Module):
    """Holds the transformer under the checkpoint's ``vision_tower.vision_model`` name."""

    def __init__(self, s: VisionSettings, use_data_parallel: bool, prefix: str):
        super().__init__()
        self.vision_model = VisionTransformer(s, use_data_parallel, add_prefix("vision_model", prefix))


class _DataParallelEncoder:
    """The callable SGLang's data-parallel encoder helper expects: (pixels, grid tensor) -> tokens."""

    def __init__(self, model: "MiniMaxM3SparseForConditionalGeneration"):
        self._model = model
        self.spatial_merge_size = model.vision.merge_size
        self.out_hidden_size = model.config.text_config.hidden_size
        self.device = model.vision_tower.vision_model.embeddings.patch_embedding.weight.device

    def __call__(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        return self._model.encode_vision(pixel_values, grid_thw.tolist())


# ----------------------------------------------------------------------------- model


class MiniMaxM3SparseForConditionalGeneration(nn.Module):
    """MiniMax-M3-VL: vision tower + projector + patch merger + :class:`MiniMaxM3SparseForCausalLM`."""

    # The text model's fusions; the tower's qkv_proj fuses the same names.
    packed_modules_mapping = MiniMaxM3SparseForCausalLM.packed_modules_mapping
    num_fused_shared_experts = 0  # set per instance from the text model (shared_expert_fusion)

    def __init__(self, config, quant_config=None, prefix: str = ""):
        super().__init__()
        self.config = config
        self.quant_config = quant_config
        self.vision = VisionSettings.from_config(config)
        self.use_data_parallel = bool(get_mm().mm_enable_dp_encoder)
        text_hidden = config.text_config.hidden_size
        proj_hidden = getattr(config, "projector_hidden_size", None) or text_hidden
        proj_act = getattr(config, "projector_hidden_act", None) or "gelu"

        self.vision_tower = VisionTower(self.vision, self.use_data_parallel, add_prefix("vision_tower", prefix))
        self.multi_modal_projector = ParallelMLP(
            self.vision.hidden_size, proj_hidden, text_hidden, proj_act,
            bool(getattr(config, "multimodal_projector_bias", True)), self.use_data_parallel,
            add_prefix("multi_modal_projector", prefix), names=("linear_1", "linear_2"))
        self.patch_merge_mlp = ParallelMLP(
            text_hidden * self.vision.merge_size ** 2, proj_hidden, text_hidden, proj_act,
            bool(getattr(config, "patch_merge_bias", True)), self.use_data_parallel,
            add_prefix("patch_merge_mlp", prefix), names=("linear_1", "linear_2"))
        self.language_model = MiniMaxM3SparseForCausalLM(config.text_config, quant_config,
                                                         add_prefix("language_model", prefix))
        self.num_fused_shared_experts = self.language_model.num_fused_shared_experts
        # Both VL classes carry SGLang's name; this line tells in a server log which one was built.
        logger.info("sglang-msa: built %s (sglang_msa.models)", type(self).__name__)

    # ------------------------------------------------------------------------- SGLang interface

    @property
    def start_layer(self) -> int:
        return self.language_model.start_layer

    @property
    def end_layer(self) -> int:
        return self.language_model.end_layer

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_embed_and_head(self):
        return self.language_model.get_embed_and_head()

    @classmethod
    def get_model_config_for_expert_location(cls, config):
        return MiniMaxM3SparseForCausalLM.get_model_config_for_expert_location(
            getattr(config, "text_config", None) or config)

    def pad_input_ids(self, input_ids: List[int], mm_inputs: MultimodalInputs) -> List[int]:
        """Placeholder tokens -> each item's pad value (its hash), for prefix caching per item."""
        return MultiModalityDataPaddingPatternMultimodalTokens().pad_input_tokens(input_ids, mm_inputs)

    def get_image_feature(self, items: List[MultimodalDataItem]) -> torch.Tensor:
        return self._item_features(items, "image_grid_thw")

    def get_video_feature(self, items: List[MultimodalDataItem]) -> torch.Tensor:
        return self._item_features(items, "video_grid_thw")

    def _item_features(self, items: List[MultimodalDataItem], grid_key: str) -> torch.Tensor:
        """Text-width tokens for the items, concatenated in item order (one per merged patch)."""
        weight = self.vision_tower.vision_model.embeddings.patch_embedding.weight
        pixel_values = torch.cat([torch.as_tensor(item.feature).reshape(-1, weight[0].numel())
                                  for item in items]).to(weight.device, weight.dtype)
        grids = [list(map(int, row)) for item in items
                 for row in torch.as_tensor(item.model_specific_data[grid_key]).reshape(-1, 3).tolist()]
        if self.use_data_parallel:
            from sglang.srt.multimodal.mm_utils import run_dp_sharded_mrope_vision_model

            return run_dp_sharded_mrope_vision_model(_DataParallelEncoder(self), pixel_values, grids,
                                                     rope_type="rope_3d")
        return self.encode_vision(pixel_values, grids)

    def encode_vision(self, pixel_values: torch.Tensor, grids: list[list[int]]) -> torch.Tensor:
        """Patches ``[sum(t*h*w), C*T*P*P]`` of the ``(t, h, w)`` grids -> ``[sum(t*h*w) / merge**2, text hidden]``."""
        for t, h, w in grids:
            if h % self.vision.merge_size or w % self.vision.merge_size:
                raise ValueError(f"grid {(t, h, w)} is not a multiple of the merge size {self.vision.merge_size}")
        patches = self.vision_tower.vision_model(pixel_values, grids)
        tokens = self.multi_modal_projector(patches)
        merged = tokens.reshape(-1, tokens.shape[-1] * self.vision.merge_size ** 2)
        return self.patch_merge_mlp(merged)

    @torch.no_grad()
    def forward(self, input_ids, positions, forward_batch, input_embeds: Optional[torch.Tensor] = None,
                pp_proxy_tensors=None, **kwargs):
        lm = self.language_model
        with_media = (not forward_batch.forward_mode.is_decode()) and forward_batch.contains_mm_inputs()
        if input_embeds is not None and not with_media:  # embeddings handed in by the runner
            hidden_states = lm.model(input_ids, positions, forward_batch, input_embeds)
        else:
            hidden_states = general_mm_embed_routine(input_ids=input_ids, forward_batch=forward_batch,
                                                     language_model=lm.model, multimodal_model=self,
                                                     positions=positions)
        return lm.logits_processor(input_ids, hidden_states, lm.lm_head, forward_batch)

    # ------------------------------------------------------------------------- weights

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load a Hugging Face M3-VL checkpoint; returns the names of the parameters written.

        ``language_model.*`` goes to the text model's loader (prefix stripped); vision tensors load
        here: per-layer ``q/k/v_proj`` into SGLang's fused ``qkv_proj`` (this rank's heads),
        ``out_proj`` into ``proj``, the rest by name.
        """
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        unknown: list[str] = []

        def text_only(stream) -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in stream:
                if name.startswith(TEXT_PREFIX):
                    yield name[len(TEXT_PREFIX):], tensor
                elif not _UNUSED.search(name):
                    target = self._load_vision_one(params, name, tensor)
                    if target is None:
                        unknown.append(name)
                    else:
                        loaded.add(target)

        text_loaded = self.language_model.load_weights(text_only(weights))
        loaded.update(TEXT_PREFIX + n for n in text_loaded)
        if unknown:
            logger.warning("sglang-msa MiniMax-M3-VL: %d checkpoint tensors have no parameter, e.g. %s",
                           len(unknown), unknown[:5])
        return loaded

    @staticmethod
    def _load_vision_one(params: dict, name: str, tensor: torch.Tensor) -> Optional[str]:
        qkv = _VIT_QKV.match(name)
        if qkv is not None:
            target = f"{qkv['attn']}.qkv_proj.{qkv['leaf']}"
            param = params.get(target)
            if param is None:
                return None
            param.weight_loader(param, tensor, qkv["which"])
            return target
        out = _VIT_OUT.match(name)
        target = f"{out['attn']}.proj.{out['leaf']}" if out is not None else name
        param = params.get(target)
        if param is None:
            return None
        getattr(param, "weight_loader", default_weight_loader)(param, tensor)
        return target


def __getattr__(name: str):
    # ``EntryClass`` is computed on access (PEP 562), so the switch is read when SGLang builds its
    # registry, not when this module happened to be imported first.
    if name == "EntryClass":
        from sglang_msa.models import vl_enabled

        return [MiniMaxM3SparseForConditionalGeneration] if vl_enabled() else []
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
