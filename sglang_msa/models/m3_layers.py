"""MiniMax-M3 building blocks on SGLang layers: attention (dense or MSA-sparse), MLP, MoE.

Math (checked against transformers' ``minimax_m3_vl`` in ``tests/test_m3_model.py``):

* attention: per-head RMSNorm on q and k (Gemma style ``x * (1 + w)`` when ``use_gemma_norm``), then
  NeoX RoPE on the first ``rotary_dim`` channels of each head; sparse layers add an index branch
  (``index_n`` query heads and one shared key head of ``sparse_index_dim``) normed and rotated the
  same way, which the attention backend uses to pick key blocks;
* MLP / shared expert / experts: SwiGLU-OAI on non-interleaved ``[gate | up]`` halves,
  ``clamp(gate, max=L) * sigmoid(alpha * gate) * (clamp(up, -L, L) + 1)``;
* router: sigmoid scores, top-k chosen on ``score + e_score_correction_bias``, weights are the
  unbiased scores of the chosen experts renormalised to sum 1; the routed sum is scaled by
  ``routed_scaling_factor`` before the shared expert is added. On CUDA the shared expert runs as
  FusedMoE's one extra expert, as SGLang's own M3 does by default (``shared_expert_fusion``).

Tensor parallelism: q heads are split over the attention TP ranks, KV heads split (or replicated
when there are fewer KV heads than ranks), index heads split like KV heads so that each rank holds
one index head per local KV head (what the ``msa`` backend expects); MLPs split the intermediate
dimension. Each block all-reduces its output once.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sglang.srt.distributed import tensor_model_parallel_all_reduce
from sglang.srt.layers.layernorm import GemmaRMSNorm, RMSNorm
from sglang.srt.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE
from sglang.srt.layers.moe.topk import TopK
from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod
from sglang.srt.layers.radix_attention import RadixAttention
from sglang.srt.layers.rotary_embedding import RotaryEmbedding, get_rope
from sglang.srt.runtime_context import get_parallel
from sglang.srt.utils import add_prefix
from sglang.srt.utils.hf_transformers_utils import get_rope_config

logger = logging.getLogger("sglang_msa")

# On CUDA, q/k norm + RoPE + v packing run as one launch (sglang_msa.kernels.qk_norm_rope) per
# attention input; SGLANG_MSA_FUSED_QK_NORM_ROPE=0 keeps SGLang's separate norm and rotary modules.
FUSED_QK_NORM_ROPE_ENV = "SGLANG_MSA_FUSED_QK_NORM_ROPE"


# ----------------------------------------------------------------------------- config helpers


def sparse_attention_config(config) -> Optional[dict]:
    return getattr(config, "sparse_attention_config", None)


def is_sparse_attention_layer(config, layer_id: int) -> bool:
    cfg = sparse_attention_config(config)
    return bool(cfg) and bool(cfg["sparse_attention_freq"][layer_id])


def has_index_value(config, layer_id: int) -> bool:
    """Sparse layers whose index branch also has a value/output path (off in released M3)."""
    if not is_sparse_attention_layer(config, layer_id):
        return False
    flags = sparse_attention_config(config).get("sparse_disable_index_value")
    return not (flags is not None and flags[layer_id])


def is_moe_layer(config, layer_id: int) -> bool:
    freq = getattr(config, "moe_layer_freq", None)
    return True if freq is None else bool(freq[layer_id])


def rotary_dim_of(config, head_dim: int) -> int:
    rotary_dim = getattr(config, "rotary_dim", None)
    if rotary_dim:
        return int(rotary_dim)
    return int(head_dim * getattr(config, "partial_rotary_factor", 1.0))


def make_rms_norm(config, dim: int) -> nn.Module:
    if getattr(config, "use_gemma_norm", False):
        return GemmaRMSNorm(dim, eps=config.rms_norm_eps)
    return RMSNorm(dim, eps=config.rms_norm_eps)


def _split_heads(total: int, tp_size: int, what: str) -> int:
    """Heads per rank; fewer heads than ranks means each head is replicated on several ranks."""
    if total >= tp_size:
        if total % tp_size:
            raise ValueError(f"{total} {what} heads do not split evenly over {tp_size} ranks")
        return total // tp_size
    if tp_size % total:
        raise ValueError(f"{tp_size} ranks cannot replicate {total} {what} heads evenly")
    return 1


# ----------------------------------------------------------------------------- activations


def swiglu_oai(gate_up: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return gate * torch.sigmoid(alpha * gate) * (up + 1)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class GatedActivation(nn.Module):
    """``act(gate) * up`` on ``[gate | up]``: SwiGLU-OAI (``hidden_act: swigluoai``) or SiLU."""

    def __init__(self, config):
        super().__init__()
        self.kind = getattr(config, "hidden_act", "silu")
        if self.kind not in ("swigluoai", "silu"):
            raise ValueError(f"MiniMax-M3: unsupported hidden_act {self.kind!r}")
        self.alpha = float(getattr(config, "swiglu_alpha", 1.702))
        self.limit = float(getattr(config, "swiglu_limit", 7.0))

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        if self.kind == "swigluoai":
            return swiglu_oai(gate_up, self.alpha, self.limit)
        return silu_and_mul(gate_up)

    def fused_moe_kwargs(self) -> dict:
        """How SGLang's FusedMoE spells this activation (non-interleaved halves)."""
        if self.kind == "swigluoai":
            return {"activation": "silu", "gemm1_alpha": self.alpha, "gemm1_clamp_limit": self.limit,
                    "gate_up_interleaved": False}
        return {"activation": "silu", "gate_up_interleaved": False}


# ----------------------------------------------------------------------------- MLP / MoE


class M3MLP(nn.Module):
    """Dense gated MLP (dense layers and the MoE shared expert); checkpoint ``gate_proj/up_proj`` fuse
    into ``gate_up_proj``."""

    def __init__(self, config, intermediate_size: int, quant_config=None, prefix: str = "",
                 reduce_results: bool = True):
        super().__init__()
        hidden = config.hidden_size
        self.gate_up_proj = MergedColumnParallelLinear(
            hidden, [intermediate_size] * 2, bias=False, quant_config=quant_config,
            prefix=add_prefix("gate_up_proj", prefix))
        self.down_proj = RowParallelLinear(
            intermediate_size, hidden, bias=False, quant_config=quant_config, reduce_results=reduce_results,
            prefix=add_prefix("down_proj", prefix))
        self.act = GatedActivation(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.down_proj(self.hidden(x))
        return out

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The activation before ``down_proj``."""
        gate_up, _ = self.gate_up_proj(x)
        return self.act(gate_up)

    def add_down_into(self, h: torch.Tensor, acc: torch.Tensor, beta: float) -> torch.Tensor:
        """``acc * beta + down_proj(h)``, written over ``acc``. Unquantized without a TP reduce it is one
        GEMM whose epilogue does the sum (``addmm_``): the separate add cost 0.19 ms per MoE layer of a
        16k-token prefill chunk (H100, rank8) and a launch per layer in decode."""
        dp = self.down_proj
        plain = (isinstance(dp.quant_method, UnquantizedLinearMethod) and dp.bias is None
                 and not dp.reduce_results and not getattr(dp, "use_decode_attn_tp", False)
                 and acc.is_contiguous() and acc.dtype == dp.weight.dtype)
        if plain:
            return acc.addmm_(h, dp.weight.t(), beta=beta)
        out, _ = dp(h)
        return out.add_(acc, alpha=beta)


def routed_experts_torch(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                         topk_ids: torch.Tensor, act) -> torch.Tensor:
    """Weighted sum of the chosen experts, one expert at a time (FusedMoE's math without its kernel).

    Used where SGLang's fused MoE kernels do not run (CPU). ``w13`` is ``[E, 2I, H]`` (gate rows then
    up rows), ``w2`` is ``[E, H, I]``; ids < 0 (padding) contribute nothing.
    """
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for expert in torch.unique(topk_ids).tolist():
        if expert < 0:
            continue
        token, slot = torch.nonzero(topk_ids == expert, as_tuple=True)
        h = act(F.linear(x[token], w13[expert]))
        y = F.linear(h, w2[expert]).float() * topk_weights[token, slot, None].float()
        out.index_add_(0, token, y)
    return out.to(x.dtype)


FUSE_SHARED_ENV = "SGLANG_MSA_FUSE_SHARED_EXPERT"


def tuned_moe_configs(num_experts: int, n: int) -> list[str]:
    """SGLang's tuned fused-MoE kernel configs (any Triton version's folder) for ``num_experts`` bf16
    experts of per-rank width ``n`` on this GPU, named as SGLang names them; [] where it has none."""
    import glob

    from sglang.srt.layers.moe.moe_runner.triton_utils import fused_moe_triton_config as cfgs

    name = cfgs.get_config_file_name(num_experts, n, None)
    root = os.environ.get("SGLANG_MOE_CONFIG_DIR", os.path.dirname(os.path.realpath(cfgs.__file__)))
    return sorted(os.path.relpath(f, root) for f in glob.glob(os.path.join(root, "configs", "triton_*", name)))


def shared_expert_fusion(config, quant_config=None) -> tuple[int, Optional[str]]:
    """(1, None) when the shared expert runs as FusedMoE's extra expert, else (0, why not).

    SGLang's own M3 fuses it by default and so do we, under the same conditions and the same switch
    (``--disable-shared-experts-fusion``): on the 2026-12-06 H200 run (rank8 proxy, 8 layers) SGLang
    with the fusion served 3% (2k prompts, c64) and 14% (128k, c1 and c4) more output tokens per
    second than without it, while ours ran the shared expert as its own MLP. TopK then appends the shared
    expert's id to every token with weight 1 and scales the routed weights by routed_scaling_factor,
    so FusedMoE's weighted sum is the whole block.

    One more condition of ours (bf16 experts): SGLang has a tuned fused-MoE config for the E + 1 experts,
    or none for E either. Its tuned configs are per expert count, and SGLang 0.5.17 ships one for 129
    experts of width 384 on H200 but only for 128 on H100, where the fused layer runs the default
    config: on one H100 (rank8, 12 layers) 128k prefill spent 63 ms per step in fused MoE against 26 ms
    unfused, and our served 128k TTFT p50 went from 672 to 930 ms once we fused (2026-12-06/07).
    ``SGLANG_MSA_FUSE_SHARED_EXPERT=1`` fuses regardless of the configs."""
    n_shared = getattr(config, "n_shared_experts", 0) or 0
    if n_shared == 0:
        return 0, "no shared expert"
    width = getattr(config, "shared_intermediate_size", None) or config.intermediate_size * n_shared
    if n_shared != 1 or width != config.intermediate_size:
        return 0, f"{n_shared} shared experts of width {width} (fused: one, as wide as a routed expert)"
    try:
        from sglang.srt.runtime_context import get_exec

        if get_exec().moe.disable_shared_experts_fusion:
            return 0, "--disable-shared-experts-fusion"
    except Exception:  # noqa: BLE001 - no server context (unit tests): SGLang's default applies
        pass
    if quant_config is not None and quant_config.get_name() == "modelopt_mixed":
        return 0, "shared and routed experts may be quantized differently (modelopt_mixed)"
    if not torch.cuda.is_available() or torch.version.hip is not None:
        return 0, "needs CUDA"
    if torch.cuda.get_device_capability()[0] < 8:
        return 0, "needs SM80 or newer"
    if getattr(get_parallel(), "moe_ep_size", 1) > 1:
        return 0, "expert parallelism"
    if quant_config is None and os.environ.get(FUSE_SHARED_ENV, "").strip().lower() not in ("1", "true", "yes", "on"):
        e = config.num_local_experts
        try:
            moe_tp = int(get_parallel().moe_tp_size or 1)
        except Exception:  # noqa: BLE001 - no parallel state (unit tests, offline tools): one rank
            moe_tp = 1
        n = config.intermediate_size // max(1, moe_tp)
        plain, fused = tuned_moe_configs(e, n), tuned_moe_configs(e + 1, n)
        if plain and not fused:
            return 0, (f"SGLang has a tuned fused-MoE config for {e} experts ({plain[-1]}) but none for the "
                       f"{e + 1} of the fused layout on this GPU ({FUSE_SHARED_ENV}=1 fuses anyway)")
    return 1, None


class M3MoE(nn.Module):
    """Sigmoid-routed top-k experts (SGLang ``TopK`` + ``FusedMoE``) plus an optional shared expert,
    fused into FusedMoE as one more expert where :func:`shared_expert_fusion` allows (``num_fused_shared``)."""

    def __init__(self, config, layer_id: int, quant_config=None, prefix: str = ""):
        super().__init__()
        from sglang.srt.layers.moe.utils import get_moe_a2a_backend

        if not get_moe_a2a_backend().is_none():
            raise NotImplementedError("sglang-msa MiniMax-M3: MoE all-to-all backends (DeepEP, ...) "
                                      "are not supported yet; use plain TP/EP")
        self.tp_size = get_parallel().tp_size
        self.num_experts = config.num_local_experts
        self.routed_scaling_factor = float(getattr(config, "routed_scaling_factor", 1.0) or 1.0)
        self.act = GatedActivation(config)

        # The router is never quantized. Its weights are in the model dtype and its logits come out
        # in fp32 (fp32 accumulation: they decide discrete choices), as SGLang's M3 does by default
        # (SGLANG_OPT_USE_BF16_ROUTER_GEMM); an fp32 weight copy cost 3x the time per layer.
        self.gate = ReplicatedLinear(config.hidden_size, self.num_experts, bias=False, quant_config=None,
                                     prefix=add_prefix("gate", prefix))
        if getattr(config, "use_routing_bias", False):
            self.e_score_correction_bias = nn.Parameter(torch.zeros(self.num_experts, dtype=torch.float32),
                                                        requires_grad=False)
        else:
            self.e_score_correction_bias = None
        n_fused, self.unfused_reason = shared_expert_fusion(config, quant_config)
        self.num_fused_shared = n_fused
        fused_topk = dict(num_fused_shared_experts=n_fused, routed_scaling_factor=self.routed_scaling_factor,
                          apply_routed_scaling_factor_on_output=True) if n_fused else {}
        self.topk = TopK(
            top_k=config.num_experts_per_tok + n_fused, layer_id=layer_id, renormalize=True,
            scoring_func=getattr(config, "scoring_func", "sigmoid"),
            correction_bias=self.e_score_correction_bias, **fused_topk,
        )
        self.experts = FusedMoE(
            num_experts=self.num_experts + n_fused, top_k=config.num_experts_per_tok + n_fused,
            hidden_size=config.hidden_size, intermediate_size=config.intermediate_size, layer_id=layer_id,
            quant_config=quant_config, reduce_results=False, prefix=add_prefix("experts", prefix),
            **({"num_fused_shared_experts": n_fused} if n_fused else {}), **self.act.fused_moe_kwargs(),
        )
        n_shared = getattr(config, "n_shared_experts", 0) or 0
        if n_shared and not n_fused:
            shared = getattr(config, "shared_intermediate_size", None) or config.intermediate_size * n_shared
            self.shared_experts = M3MLP(config, shared, quant_config, add_prefix("shared_experts", prefix),
                                        reduce_results=False)
        else:
            self.shared_experts = None

    def router_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.gate.weight
        if hidden_states.is_cuda and hidden_states.dtype == weight.dtype != torch.float32:
            return torch.mm(hidden_states, weight.t(), out_dtype=torch.float32)
        return hidden_states.float() @ weight.float().t()

    def route(self, hidden_states: torch.Tensor):
        return self.topk(hidden_states, self.router_logits(hidden_states))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # Everything that reads hidden_states runs before the experts: FusedMoE's default runner
        # writes its output over its input (``moe_runner_config.inplace``).
        shared_h = self.shared_experts.hidden(hidden_states) if self.shared_experts is not None else None
        topk_output = self.route(hidden_states)
        if hidden_states.is_cuda:
            routed = self.experts(hidden_states, topk_output)  # fused: shared expert and scaling included
        else:
            routed = routed_experts_torch(hidden_states, self.experts.w13_weight, self.experts.w2_weight,
                                          topk_output.topk_weights, topk_output.topk_ids, self.act)
            if self.experts.moe_runner_config.inplace:  # same aliasing as the kernel, so CPU tests see it
                routed = hidden_states.copy_(routed)
        if self.num_fused_shared:
            out = routed  # TopK weighted the shared expert 1 and the routed ones x routed_scaling_factor
        elif shared_h is not None:
            # shared + routed * routed_scaling_factor, the sum in the down projection's GEMM
            out = self.shared_experts.add_down_into(shared_h, routed, self.routed_scaling_factor)
        else:
            out = routed * self.routed_scaling_factor
        if self.tp_size > 1:
            out = tensor_model_parallel_all_reduce(out)
        return out


# ----------------------------------------------------------------------------- attention


class M3Attention(nn.Module):
    """GQA attention with per-head qk-norm and partial RoPE; MSA index branch on sparse layers.

    Sparse layers call the backend as ``attn(q, k, v, forward_batch, idx_q=[T, H_idx, D_idx],
    idx_k=[T, 1, D_idx], idx_v=...)`` and get ``(idx_out, out)``; dense layers get ``out``.
    """

    def __init__(self, config, layer_id: int, quant_config=None, prefix: str = ""):
        super().__init__()
        parallel = get_parallel()
        tp_rank, tp_size = parallel.attn_tp_rank, parallel.attn_tp_size
        self.tp_size = tp_size
        self.layer_id = layer_id
        hidden = config.hidden_size
        self.total_num_heads = config.num_attention_heads
        self.total_num_kv_heads = config.num_key_value_heads
        if self.total_num_heads % tp_size:
            raise ValueError(f"{self.total_num_heads} q heads do not split over {tp_size} ranks")
        self.num_heads = self.total_num_heads // tp_size
        self.num_kv_heads = _split_heads(self.total_num_kv_heads, tp_size, "KV")
        self.head_dim = getattr(config, "head_dim", None) or hidden // self.total_num_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        if getattr(config, "qk_norm_type", "per_head") != "per_head":
            raise NotImplementedError(f"MiniMax-M3: qk_norm_type={config.qk_norm_type!r} (only per_head)")

        self.qkv_proj = QKVParallelLinear(
            hidden, self.head_dim, self.total_num_heads, self.total_num_kv_heads, bias=False,
            quant_config=quant_config, tp_rank=tp_rank, tp_size=tp_size, prefix=add_prefix("qkv_proj", prefix))
        self.o_proj = RowParallelLinear(
            self.total_num_heads * self.head_dim, hidden, bias=False, reduce_results=False,
            quant_config=quant_config, tp_rank=tp_rank, tp_size=tp_size, prefix=add_prefix("o_proj", prefix))
        self.q_norm = make_rms_norm(config, self.head_dim)
        self.k_norm = make_rms_norm(config, self.head_dim)

        rope_theta, rope_scaling = get_rope_config(config)
        self.rotary_dim = rotary_dim_of(config, self.head_dim)
        max_position = getattr(config, "max_position_embeddings", 8192)

        def rope(head_size: int):
            return get_rope(head_size, rotary_dim=self.rotary_dim, max_position=max_position, base=rope_theta,
                            rope_scaling=rope_scaling, is_neox_style=True)

        self.rotary_emb = rope(self.head_dim)
        self.attn = RadixAttention(
            self.num_heads, self.head_dim, self.head_dim ** -0.5, num_kv_heads=self.num_kv_heads,
            layer_id=layer_id, quant_config=quant_config, prefix=add_prefix("attn", prefix))

        self.is_sparse = is_sparse_attention_layer(config, layer_id)
        self.index_o_proj = None
        if self.is_sparse:
            sparse = sparse_attention_config(config)
            self.total_idx_heads = int(sparse["sparse_num_index_heads"])
            self.idx_head_dim = int(sparse["sparse_index_dim"])
            # Index heads follow the KV heads over ranks: split when there are enough, else replicated.
            self.num_idx_heads = _split_heads(self.total_idx_heads, tp_size, "index")
            idx_tp_size = min(tp_size, self.total_idx_heads)
            self.idx_replicas = tp_size // idx_tp_size
            idx_rank = tp_rank // self.idx_replicas
            self.has_index_value = has_index_value(config, layer_id)
            self.index_qkv_proj = QKVParallelLinear(
                hidden, self.idx_head_dim, self.total_idx_heads, 1, bias=False, quant_config=quant_config,
                v_head_size=self.idx_head_dim if self.has_index_value else 0,
                tp_rank=idx_rank, tp_size=idx_tp_size, prefix=add_prefix("index_qkv_proj", prefix))
            self.index_q_norm = make_rms_norm(config, self.idx_head_dim)
            self.index_k_norm = make_rms_norm(config, self.idx_head_dim)
            same = self.idx_head_dim == self.head_dim
            self.index_rotary_emb = self.rotary_emb if same else rope(self.idx_head_dim)
            if self.has_index_value:
                self.index_o_proj = RowParallelLinear(
                    self.total_idx_heads * self.idx_head_dim, hidden, bias=False, reduce_results=False,
                    quant_config=quant_config, tp_rank=idx_rank, tp_size=idx_tp_size,
                    prefix=add_prefix("index_o_proj", prefix))

    @staticmethod
    def _norm_heads(x: torch.Tensor, norm: nn.Module, head_dim: int) -> torch.Tensor:
        tokens = x.shape[0]
        return norm(x.reshape(-1, head_dim).contiguous()).view(tokens, -1)

    def norm_rope_args(self, branch: str) -> Optional[dict]:
        """Arguments of ``qk_norm_rope`` / ``naive_qk_norm_rope`` for the ``"main"`` or ``"index"``
        projection, or None when that fused op does not express this layer's norm and RoPE (then the
        separate SGLang modules run)."""
        if branch == "main":
            heads = (self.num_heads, self.num_kv_heads, self.num_kv_heads)
            norms, rope, head_dim = (self.q_norm, self.k_norm), self.rotary_emb, self.head_dim
        else:
            heads = (self.num_idx_heads, 1, 1 if self.has_index_value else 0)
            norms, rope, head_dim = (self.index_q_norm, self.index_k_norm), self.index_rotary_emb, self.idx_head_dim
        gemma = isinstance(norms[0], GemmaRMSNorm)
        # Only the plain NeoX rotary (a cos|sin cache indexed by position; scaled variants differ).
        if (type(rope) is not RotaryEmbedding or not rope.is_neox_style or type(norms[0]) is not type(norms[1])
                or norms[0].variance_epsilon != norms[1].variance_epsilon
                or rope.cos_sin_cache.shape[-1] != rope.rotary_dim or norms[0].weight.dtype != norms[1].weight.dtype):
            return None
        return {"num_q_heads": heads[0], "num_k_heads": heads[1], "num_v_heads": heads[2], "head_dim": head_dim,
                "q_weight": norms[0].weight, "k_weight": norms[1].weight, "cos_sin_cache": rope.cos_sin_cache,
                "eps": norms[0].variance_epsilon, "gemma": gemma}

    def _fused_norm_rope(self, x: torch.Tensor, positions: torch.Tensor, branch: str):
        if not x.is_cuda or os.environ.get(FUSED_QK_NORM_ROPE_ENV, "1") == "0":
            return None
        args = self.norm_rope_args(branch)
        if args is None:
            return None
        from sglang_msa.kernels.qk_norm_rope import qk_norm_rope

        return qk_norm_rope(x, positions=positions, **args)

    def project_qkv(self, positions: torch.Tensor, hidden_states: torch.Tensor):
        """q [T, Hq*D], k/v [T, Hkv*D], q and k normed and rotated; all packed."""
        qkv, _ = self.qkv_proj(hidden_states)
        fused = self._fused_norm_rope(qkv, positions, "main")
        if fused is not None:
            return fused
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = self._norm_heads(q, self.q_norm, self.head_dim)
        k = self._norm_heads(k, self.k_norm, self.head_dim)
        q, k = self.rotary_emb(positions, q, k)
        # v is a strided view into the fused projection; SGLang's fused KV/index store kernel (the
        # MiniMax sparse pool) only takes rows with stride == width, so hand it a packed copy.
        return q, k, v.contiguous()

    def project_index(self, positions: torch.Tensor, hidden_states: torch.Tensor):
        """idx_q [T, H_idx*D_idx], idx_k [T, D_idx] (normed, rotated), idx_v [T, D_idx] or None."""
        idx, _ = self.index_qkv_proj(hidden_states)
        fused = self._fused_norm_rope(idx, positions, "index")
        if fused is not None:
            return fused
        q_size = self.num_idx_heads * self.idx_head_dim
        if self.has_index_value:
            idx_q, idx_k, idx_v = idx.split([q_size, self.idx_head_dim, self.idx_head_dim], dim=-1)
        else:
            (idx_q, idx_k), idx_v = idx.split([q_size, self.idx_head_dim], dim=-1), None
        idx_q = self._norm_heads(idx_q, self.index_q_norm, self.idx_head_dim)
        idx_k = self._norm_heads(idx_k, self.index_k_norm, self.idx_head_dim)
        idx_q, idx_k = self.index_rotary_emb(positions, idx_q, idx_k)
        return idx_q, idx_k, None if idx_v is None else idx_v.contiguous()

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, forward_batch) -> torch.Tensor:
        tokens = hidden_states.shape[0]
        q, k, v = self.project_qkv(positions, hidden_states)
        if not self.is_sparse:
            out, _ = self.o_proj(self.attn(q, k, v, forward_batch))
        else:
            idx_q, idx_k, idx_v = self.project_index(positions, hidden_states)
            idx_out, attn_out = self.attn(
                q.view(tokens, self.num_heads, self.head_dim),
                k.view(tokens, self.num_kv_heads, self.head_dim),
                v.reshape(tokens, self.num_kv_heads, self.head_dim),
                forward_batch,
                idx_q=idx_q.view(tokens, self.num_idx_heads, self.idx_head_dim),
                idx_k=idx_k.view(tokens, 1, self.idx_head_dim),
                idx_v=None if idx_v is None else idx_v.reshape(tokens, 1, self.idx_head_dim),
            )
            out, _ = self.o_proj(attn_out)
            if self.index_o_proj is not None:
                idx_out = idx_out.reshape(tokens, -1)
                if self.idx_replicas > 1:  # replicated ranks hold equal idx_out; the all-reduce sums them
                    idx_out = idx_out / self.idx_replicas
                out = out + self.index_o_proj(idx_out)[0]
        if self.tp_size > 1:
            out = tensor_model_parallel_all_reduce(out)
        return out


# ----------------------------------------------------------------------------- decoder layer


class M3DecoderLayer(nn.Module):
    """Pre-norm block; the residual stream is carried separately (fused add + norm)."""

    def __init__(self, config, layer_id: int, quant_config=None, prefix: str = ""):
        super().__init__()
        self.layer_id = layer_id
        self.self_attn = M3Attention(config, layer_id, quant_config, add_prefix("self_attn", prefix))
        self.is_moe = is_moe_layer(config, layer_id)
        # Module names follow the checkpoint: ``block_sparse_moe`` on MoE layers, ``mlp`` on dense ones.
        if self.is_moe:
            self.block_sparse_moe = M3MoE(config, layer_id, quant_config, add_prefix("block_sparse_moe", prefix))
        else:
            dense = getattr(config, "dense_intermediate_size", None) or config.intermediate_size
            self.mlp = M3MLP(config, dense, quant_config, add_prefix("mlp", prefix))
        self.input_layernorm = make_rms_norm(config, config.hidden_size)
        self.post_attention_layernorm = make_rms_norm(config, config.hidden_size)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_sparse_moe(x) if self.is_moe else self.mlp(x)

    def forward(self, positions, hidden_states, forward_batch, residual: Optional[torch.Tensor]):
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states, forward_batch)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.feed_forward(hidden_states), residual
