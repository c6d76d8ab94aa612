"""fp32 torch reference of the MSA indexer (the rules are written down in README.md).

Plain loops over requests with the full score matrix materialized: slow, obvious, the ground truth
the Triton kernels are tested against.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

LOG2E = 1.4426950409
# Scores given to forced blocks (same constants as upstream, so mixed comparisons stay meaningful).
INIT_SCORE = 1e30
LOCAL_SCORE = 1e29
NAN_SCORE = -1e30
E4M3_MAX = 448.0


def quantize_e4m3(x: torch.Tensor):
    """Per-row (last dim) e4m3 quantization: (values float8_e4m3fn, scale fp32 [...]), x ~ values * scale.

    scale = absmax / 448 (1 for an all-zero row), values = round-to-nearest-even(x * (448 / absmax)):
    the fp8 index path's rule for keys (stored) and queries (in the kernels)."""
    x = x.float()
    amax = x.abs().amax(dim=-1)
    e4m3_max = torch.full_like(amax, E4M3_MAX)
    amax = torch.where(amax > 0, amax, e4m3_max)
    # tensor / tensor: correctly rounded like the kernels' div_rn. A Python scalar over a tensor
    # (448 / amax) is computed as 448 * (1 / amax) on CPU, an ulp off at times, and that ulp moves
    # values sitting on an e4m3 rounding tie by a whole e4m3 step (~0.05% of random bf16 values).
    inv = e4m3_max / amax
    vals = (x * inv[..., None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return vals, amax / e4m3_max


def dequantize_e4m3(vals: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return vals.float() * scale.float()[..., None]


def fp8_reference_inputs(idx_q: torch.Tensor, idx_k_cache: torch.Tensor, idx_k_scale: torch.Tensor):
    """What the fp8 path scores, in fp32: q quantized per (token, head) row and dequantized; the stored
    e4m3 keys [slots, 1, D] times their per-slot scales."""
    q = dequantize_e4m3(*quantize_e4m3(idx_q.cpu()))
    k = dequantize_e4m3(idx_k_cache.cpu()[:, 0], idx_k_scale.cpu()[: idx_k_cache.shape[0]])[:, None]
    return q, k


def score_scale(sm_scale: Optional[float], head_dim: int) -> float:
    """Factor applied to q·k before pooling: sm_scale·log2(e), rounded to fp32 like the kernels."""
    if sm_scale is None:
        sm_scale = head_dim**-0.5
    s = torch.tensor(sm_scale, dtype=torch.float32)
    return float(s * torch.tensor(LOG2E, dtype=torch.float32))


def pool_block_scores(logits: torch.Tensor, block_size: int, score_type: str) -> torch.Tensor:
    """[..., S] fp32 logits (base-2 units, -inf where masked) -> [..., ceil(S/block)] block scores."""
    *lead, seq = logits.shape
    n_blocks = math.ceil(seq / block_size)
    pad = n_blocks * block_size - seq
    if pad:
        logits = torch.nn.functional.pad(logits, (0, pad), value=float("-inf"))
    blocks = logits.reshape(*lead, n_blocks, block_size)
    peak = blocks.amax(dim=-1)
    if score_type == "max":
        return peak
    if score_type != "lse":
        raise ValueError(f"score_type must be 'max' or 'lse', got {score_type!r}")
    lse = peak + torch.log2(torch.exp2(blocks - peak[..., None]).sum(dim=-1))
    return torch.where(torch.isnan(lse), torch.full_like(lse, float("-inf")), lse)


def select_blocks(
    scores: torch.Tensor,
    n_causal: torch.Tensor,
    *,
    topk: int,
    init_blocks: int,
    local_blocks: int,
) -> torch.Tensor:
    """Top-k selection over rows of block scores.

    scores: [R, N] fp32 raw block scores; n_causal: [R] number of causal blocks of each row (blocks
    [0, n_causal) are candidates, the rest are ignored). Returns [R, topk] int32: the chosen block ids
    ascending, -1 padded. Order: forced score first, then score descending, then block id ascending.
    """
    rows, n = scores.shape
    out = torch.full((rows, topk), -1, dtype=torch.int32)
    ids = torch.arange(n)
    for r in range(rows):
        valid = int(n_causal[r])
        s = scores[r, :valid].clone()
        s = torch.where(torch.isnan(s), torch.full_like(s, NAN_SCORE), s)
        blk = ids[:valid]
        s = torch.where(blk < init_blocks, torch.full_like(s, INIT_SCORE), s)
        s = torch.where(blk >= valid - local_blocks, torch.full_like(s, LOCAL_SCORE), s)
        # stable descending sort: among equal scores the lower block id comes first
        order = torch.sort(s, descending=True, stable=True).indices
        chosen = torch.sort(order[: min(topk, valid)]).values
        out[r, : chosen.numel()] = chosen.to(torch.int32)
    return out


def _request_keys(idx_k_cache, req_to_token, pool_index, seq_len):
    slots = req_to_token[pool_index, :seq_len].long()
    return idx_k_cache[slots, 0].float()  # [S, D]


def naive_block_scores_prefill(
    idx_q, idx_k_cache, req_to_token, req_pool_indices, cu_seqlens_q, seq_lens, prefix_lens,
    *, block_size, score_type="max", sm_scale=None, idx_k_scale=None,
):
    """Raw causal block scores, a list over requests of [H, n_q, n_blocks] fp32 (-inf on future blocks).
    idx_k_scale: the cache is fp8 (e4m3 values + per-slot scales): score the fp8 path's inputs."""
    assert idx_k_cache.shape[1] == 1, "the index K cache has one head"
    if idx_k_scale is not None:
        idx_q, idx_k_cache = fp8_reference_inputs(idx_q, idx_k_cache, idx_k_scale)
    scale = score_scale(sm_scale, idx_q.shape[-1])
    out = []
    for r in range(len(seq_lens)):
        q0, q1 = int(cu_seqlens_q[r]), int(cu_seqlens_q[r + 1])
        seq_len, prefix = int(seq_lens[r]), int(prefix_lens[r])
        keys = _request_keys(idx_k_cache, req_to_token, int(req_pool_indices[r]), seq_len)
        q = idx_q[q0:q1].float().transpose(0, 1)  # [H, n, D]
        logits = (q @ keys.T) * scale  # [H, n, S]
        q_pos = prefix + torch.arange(q1 - q0)
        future = torch.arange(seq_len)[None, :] > q_pos[:, None]
        logits = logits.masked_fill(future[None], float("-inf"))
        out.append(pool_block_scores(logits, block_size, score_type))
    return out


def naive_indexer_prefill(
    idx_q: torch.Tensor,
    idx_k_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    prefix_lens: torch.Tensor,
    *,
    block_size: int,
    topk: int,
    init_blocks: int,
    local_blocks: int,
    score_type: str = "max",
    sm_scale: Optional[float] = None,
    idx_k_scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Top-k block ids per (index head, query token): int32 [H, total_q, topk], ascending, -1 padded.
    With idx_k_scale, idx_k_cache holds e4m3 values: the fp8 path (fp8_reference_inputs)."""
    args = [t.cpu() for t in (idx_q, idx_k_cache, req_to_token, req_pool_indices, cu_seqlens_q,
                              seq_lens, prefix_lens)]
    idx_q, _, _, _, cu_seqlens_q, seq_lens, prefix_lens = args
    per_request = naive_block_scores_prefill(*args, block_size=block_size, score_type=score_type,
                                             sm_scale=sm_scale, idx_k_scale=idx_k_scale)
    n_heads, total_q = idx_q.shape[1], idx_q.shape[0]
    out = torch.full((n_heads, total_q, topk), -1, dtype=torch.int32)
    for r, scores in enumerate(per_request):
        q0, q1 = int(cu_seqlens_q[r]), int(cu_seqlens_q[r + 1])
        q_pos = int(prefix_lens[r]) + torch.arange(q1 - q0)
        n_causal = q_pos // block_size + 1
        for h in range(n_heads):
            out[h, q0:q1] = select_blocks(scores[h], n_causal, topk=topk, init_blocks=init_blocks,
                                          local_blocks=local_blocks)
    return out


def naive_block_scores_decode(
    idx_q, idx_k_cache, req_to_token, req_pool_indices, seq_lens, *, block_size, score_type="max",
    sm_scale=None, idx_k_scale=None,
):
    """Decode block scores as a list over requests of [H, n_blocks]: the prefill rule for one query
    token per request at position seq_len - 1."""
    batch = len(seq_lens)
    cu = torch.arange(batch + 1, dtype=torch.int32)
    seq_lens = seq_lens.cpu()
    scores = naive_block_scores_prefill(
        idx_q.cpu(), idx_k_cache.cpu(), req_to_token.cpu(), req_pool_indices.cpu(), cu, seq_lens,
        seq_lens - 1, block_size=block_size, score_type=score_type, sm_scale=sm_scale,
        idx_k_scale=idx_k_scale)
    return [s[:, 0] for s in scores]


def naive_indexer_decode(
    idx_q: torch.Tensor,
    idx_k_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    block_size: int,
    topk: int,
    init_blocks: int,
    local_blocks: int,
    score_type: str = "max",
    sm_scale: Optional[float] = None,
    idx_k_scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Decode indexer (one query token per request): int32 [H, B, topk]."""
    seq_lens = seq_lens.cpu()
    batch = len(seq_lens)
    cu = torch.arange(batch + 1, dtype=torch.int32)
    return naive_indexer_prefill(
        idx_q, idx_k_cache, req_to_token, req_pool_indices, cu, seq_lens, seq_lens - 1,
        block_size=block_size, topk=topk, init_blocks=init_blocks, local_blocks=local_blocks,
        score_type=score_type, sm_scale=sm_scale, idx_k_scale=idx_k_scale)
