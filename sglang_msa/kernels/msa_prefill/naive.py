"""fp32 torch reference for MSA sparse prefill attention.

Semantics (SGLang ``flash_prefill_with_gqa_share_sparse``, block_size_q = 1): every query token,
for each q head of its KV group, attends to the keys of the logical blocks its group selected in
``topk_idx``, causally (key position <= query position), with one softmax over all of them.

Definitions where upstream is silent or undefined:
- ``-1`` entries are skipped wherever they sit in a row (upstream requires right padding).
- A selected block that lies wholly after the query contributes nothing (upstream gets NaN when such
  a block is the first of a row; the indexer never emits one).
- A row with no usable block yields zeros (upstream yields NaN).
- A block listed twice counts twice (each slot is a separate softmax partial, as upstream loops
  over slots); the indexer emits unique blocks, so this only matters for hand-made inputs.
"""

from __future__ import annotations

import math

import torch


def naive_sparse_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    topk_idx: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    prefix_lens: torch.Tensor,
    *,
    block_size: int,
    sm_scale: float | None = None,
    sink: torch.Tensor | None = None,
) -> torch.Tensor:
    """Returns o [T, num_q_heads, head_dim] in fp32."""
    if sink is not None:
        raise NotImplementedError("MSA sparse prefill has no attention sink (MiniMax-M3 passes None)")
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    group = num_q_heads // num_kv_heads
    scale = head_dim**-0.5 if sm_scale is None else sm_scale
    cu = cu_seqlens_q.tolist()
    out = torch.zeros(num_tokens, num_q_heads, v_cache.shape[-1], dtype=torch.float32, device=q.device)
    for r in range(len(cu) - 1):
        q0, q1 = cu[r], cu[r + 1]
        n = q1 - q0
        if n == 0:
            continue
        seq_len = int(seq_lens[r])
        prefix = int(prefix_lens[r])
        slots = req_to_token[int(req_pool_indices[r]), :seq_len].long()
        k = k_cache[slots].float()  # [L, G, D]
        v = v_cache[slots].float()
        num_blocks = math.ceil(seq_len / block_size)
        blk = topk_idx[:, q0:q1, :].long()  # [G, n, topk]
        usable = (blk >= 0) & (blk < num_blocks)
        # multiplicity of every block in each row (a trash column collects the unusable entries)
        counts = torch.zeros(num_kv_heads, n, num_blocks + 1, dtype=torch.float32, device=q.device)
        counts.scatter_add_(2, torch.where(usable, blk, num_blocks), torch.ones_like(blk, dtype=torch.float32))
        mult = counts[..., :num_blocks].repeat_interleave(block_size, dim=-1)[..., :seq_len]  # [G, n, L]
        q_pos = prefix + torch.arange(n, device=q.device)
        causal = torch.arange(seq_len, device=q.device)[None, :] <= q_pos[:, None]  # [n, L]
        mult = mult * causal[None]
        qr = q[q0:q1].float().view(n, num_kv_heads, group, head_dim)
        logits = torch.einsum("ngid,lgd->gnil", qr, k) * scale  # [G, n, group, L]
        weight = mult[:, :, None, :]
        logits = logits.masked_fill(weight == 0, float("-inf"))
        row_max = logits.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).min)
        p = torch.exp(logits - row_max) * weight
        denom = p.sum(dim=-1, keepdim=True)
        p = torch.where(denom > 0, p / denom.clamp_min(1e-30), torch.zeros_like(p))
        o = torch.einsum("gnil,lgd->ngid", p, v)
        out[q0:q1] = o.reshape(n, num_q_heads, -1)
    return out
