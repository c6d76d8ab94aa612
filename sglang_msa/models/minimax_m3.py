"""MiniMax-M3 (text) for SGLang, written for the ``msa`` backend.

``MiniMaxM3SparseForCausalLM`` is built from SGLang's layers (parallel linears, ``FusedMoE`` +
``TopK``, ``RadixAttention``, ``LogitsProcessor``; blocks in :mod:`sglang_msa.models.m3_layers`) and
loads the Hugging Face M3 checkpoint (``load_weights``). Sparse layers hand the index branch to the
attention backend (SGLang's MiniMax hybrid backend, with ``msa`` or SGLang's own sparse kernels).

The plugin registers this class by default (``SGLANG_MSA_MODELS=0`` hands the architecture back to
SGLang's in-tree M3); the VL class built on it (:mod:`sglang_msa.models.minimax_m3_vl`) only with
``SGLANG_MSA_MODELS=1`` for now (see :mod:`sglang_msa.models`).
"""

from __future__ import annotations

import logging
import re
from typing import Iterable, Optional

import torch
from torch import nn

from sglang.srt.distributed import get_pp_group
from sglang.srt.layers.logits_processor import LogitsProcessor
from sglang.srt.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from sglang.srt.model_loader.weight_utils import default_weight_loader
from sglang.srt.utils import add_prefix

from sglang_msa.models.m3_layers import M3DecoderLayer, make_rms_norm

logger = logging.getLogger("sglang_msa")

# Checkpoint projection -> (SGLang fused projection, shard id). Matched on the last module name only,
# so ``index_q_proj`` never collides with ``q_proj``.
_FUSED = {
    "q_proj": ("qkv_proj", "q"),
    "k_proj": ("qkv_proj", "k"),
    "v_proj": ("qkv_proj", "v"),
    "index_q_proj": ("index_qkv_proj", "q"),
    "index_k_proj": ("index_qkv_proj", "k"),
    "index_v_proj": ("index_qkv_proj", "v"),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}
# block_sparse_moe.experts.<j>.<w1|w2|w3>.<leaf>: w1 = gate, w3 = up (both into w13), w2 = down.
_EXPERT = re.compile(r"^(?P<moe>.+\.experts)\.(?P<expert>\d+)\.(?P<w>w[123])\.(?P<leaf>[^.]+)$")
# block_sparse_moe.shared_experts.<gate|up|down>_proj.<leaf>: with the fusion, FusedMoE's last expert.
_SHARED = re.compile(r"^(?P<moe>.+)\.shared_experts\.(?P<proj>gate|up|down)_proj\.(?P<leaf>[^.]+)$")
_SHARED_AS_EXPERT = {"gate": "w1", "up": "w3", "down": "w2"}
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_MTP = re.compile(r"(?:^|\.)mtp\.")


class MiniMaxM3Model(nn.Module):
    def __init__(self, config, quant_config=None, prefix: str = ""):
        super().__init__()
        if get_pp_group().world_size > 1:
            raise NotImplementedError("sglang-msa MiniMax-M3: pipeline parallelism is not supported yet")
        self.config = config
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                   prefix=add_prefix("embed_tokens", prefix))
        self.layers = nn.ModuleList(
            M3DecoderLayer(config, i, quant_config, add_prefix(f"layers.{i}", prefix))
            for i in range(config.num_hidden_layers)
        )
        self.norm = make_rms_norm(config, config.hidden_size)
        self.start_layer, self.end_layer = 0, config.num_hidden_layers

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def forward(self, input_ids, positions, forward_batch, input_embeds: Optional[torch.Tensor] = None):
        hidden_states = self.embed_tokens(input_ids) if input_embeds is None else input_embeds
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, forward_batch, residual)
        if residual is None:  # no layers
            return self.norm(hidden_states)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class MiniMaxM3SparseForCausalLM(nn.Module):
    """MiniMax-M3 text model (architecture name from the Hugging Face config)."""

    # For quantization / LoRA helpers that look up which checkpoint projections a module fuses.
    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "index_qkv_proj": ["index_q_proj", "index_k_proj", "index_v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }
    num_fused_shared_experts = 0  # 1 once built where the shared expert runs inside FusedMoE (m3_layers)

    def __init__(self, config, quant_config=None, prefix: str = ""):
        super().__init__()
        self.config = config
        self.quant_config = quant_config
        self.model = MiniMaxM3Model(config, quant_config, add_prefix("model", prefix))
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, quant_config=quant_config,
                                      prefix=add_prefix("lm_head", prefix))
        if getattr(config, "tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight
        self.logits_processor = LogitsProcessor(config)
        moes = [m.block_sparse_moe for m in self.model.layers if getattr(m, "is_moe", False)]
        self.num_fused_shared_experts = max((m.num_fused_shared for m in moes), default=0)
        fusion = ("shared expert fused into FusedMoE" if self.num_fused_shared_experts
                  else f"shared expert as its own MLP ({moes[0].unfused_reason})" if moes else "no MoE layers")
        logger.info("sglang-msa: built %s (sglang_msa.models), %d layers, %s", type(self).__name__,
                    config.num_hidden_layers, fusion)

    @property
    def start_layer(self) -> int:
        return self.model.start_layer

    @property
    def end_layer(self) -> int:
        return self.model.end_layer

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def get_embed_and_head(self):
        return self.model.embed_tokens.weight, self.lm_head.weight

    @torch.no_grad()
    def forward(self, input_ids, positions, forward_batch, input_embeds: Optional[torch.Tensor] = None,
                pp_proxy_tensors=None, **kwargs):
        hidden_states = self.model(input_ids, positions, forward_batch, input_embeds)
        return self.logits_processor(input_ids, hidden_states, self.lm_head, forward_batch)

    # ------------------------------------------------------------------------- weights

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load Hugging Face M3 tensors; returns the names of the parameters that were written.

        q/k/v (and index q/k/v) fuse into ``qkv_proj`` (``index_qkv_proj``), gate/up into
        ``gate_up_proj``, per-expert ``w1/w2/w3`` into FusedMoE's ``w13_*`` / ``w2_*``; the layer loaders
        take this rank's shard. MTP tensors are skipped (no MTP module is built).
        """
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        unknown: list[str] = []
        num_layers = self.config.num_hidden_layers
        tied = getattr(self.config, "tie_word_embeddings", False)
        for name, tensor in weights:
            if _MTP.search(name) or "rotary_emb.inv_freq" in name:
                continue
            if tied and name == "lm_head.weight":
                continue  # the head is the embedding; never overwrite it with a second copy
            layer = _LAYER.search(name)
            if layer is not None and int(layer.group(1)) >= num_layers:
                continue  # MTP layers stored after the decoder layers
            if self.num_fused_shared_experts:
                name = self._shared_as_expert(name)
            target = self._load_one(params, name, tensor)
            if target is None:
                unknown.append(name)
            else:
                loaded.add(target)
        if unknown:
            logger.warning("sglang-msa MiniMax-M3: %d checkpoint tensors have no parameter, e.g. %s",
                           len(unknown), unknown[:5])
        return loaded

    def _shared_as_expert(self, name: str) -> str:
        """With the fusion, the shared expert's checkpoint name as FusedMoE's last expert (id E)."""
        shared = _SHARED.match(name)
        if shared is None:
            return name
        w = _SHARED_AS_EXPERT[shared["proj"]]
        return f"{shared['moe']}.experts.{self.config.num_local_experts}.{w}.{shared['leaf']}"

    @staticmethod
    def _load_one(params: dict, name: str, tensor: torch.Tensor) -> Optional[str]:
        """Write one checkpoint tensor into its parameter; the parameter name, or None if none takes it."""
        expert = _EXPERT.match(name)
        if expert is not None:
            w, leaf = expert["w"], expert["leaf"]
            target = f"{expert['moe']}.{'w2' if w == 'w2' else 'w13'}_{leaf}"
            param = params.get(target)
            if param is None:
                return None
            param.weight_loader(param, tensor, target, shard_id=w, expert_id=int(expert["expert"]))
            return target

        module, _, leaf = name.rpartition(".")
        parent, _, last = module.rpartition(".")
        if last in _FUSED:
            fused, shard = _FUSED[last]
            target = f"{parent}.{fused}.{leaf}"
            param = params.get(target)
            if param is None:
                return None
            param.weight_loader(param, tensor, shard)
            return target

        param = params.get(name)
        if param is None:
            return None
        getattr(param, "weight_loader", default_weight_loader)(param, tensor)
        return name

    @classmethod
    def get_model_config_for_expert_location(cls, config):
        from sglang.srt.eplb.expert_location import ModelConfigForExpertLocation

        return ModelConfigForExpertLocation(num_layers=config.num_hidden_layers,
                                            num_logical_experts=config.num_local_experts, num_groups=None)


EntryClass = [MiniMaxM3SparseForCausalLM]
