"""fp32 torch reference for MSA sparse decode (one query token per request)."""

from __future__ import annotations

import math
from typing import Optional

import torch


def selected_positions(block_ids: torch.Tensor, seq_len: int, block_size: int) -> torch.Tensor:
    """Key positions a decode query attends to: every key of each selected block, causally cut.

    Entries < 0 are padding and may sit anywhere; a block that starts at or past ``seq_len`` adds
    nothing. A block listed twice is attended twice (the kernels treat each entry independently).
    """
    spans = []
    for blk in block_ids.tolist():
        if blk < 0:
            continue
        start = blk * block_size
        stop = min(start + block_size, seq_len)
        if start < stop:
            spans.append(torch.arange(start, stop, dtype=torch.long))
    if not spans:
        return torch.empty(0, dtype=torch.long)
    return torch.cat(spans)


@torch.no_grad()
def naive_sparse_decode(
    q: torch.Tensor,  # [B, num_q_heads, head_dim]
    k_cache: torch.Tensor,  # [max_slots, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [max_slots, num_kv_heads, head_dim]
    topk_idx: torch.Tensor,  # [num_kv_heads, B, topk] logical block ids, -1 = padding
    req_to_token: torch.Tensor,  # [max_reqs, max_context] position -> pool slot
    req_pool_indices: torch.Tensor,  # [B]
    seq_lens: torch.Tensor,  # [B]; the query sits at position seq_lens[b] - 1
    *,
    block_size: int,
    sm_scale: Optional[float] = None,
) -> torch.Tensor:
    """Sparse decode attention in fp32; returns [B, num_q_heads, head_dim] in q's dtype.

    A (request, head) with no selected key (all padding, or only blocks past the query) gets 0.
    """
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    group = num_q_heads // num_kv_heads
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    out = torch.zeros(batch, num_q_heads, head_dim, dtype=torch.float32, device=q.device)
    seq_lens_h = seq_lens.tolist()
    reqs_h = req_pool_indices.tolist()
    for b in range(batch):
        for h in range(num_kv_heads):
            pos = selected_positions(topk_idx[h, b].cpu(), seq_lens_h[b], block_size).to(q.device)
            if pos.numel() == 0:
                continue
            slots = req_to_token[reqs_h[b], pos].long()
            k = k_cache[slots, h].float()  # [n, D]
            v = v_cache[slots, h].float()
            qh = q[b, h * group : (h + 1) * group].float()  # [group, D]
            probs = torch.softmax(qh @ k.T * scale, dim=-1)
            out[b, h * group : (h + 1) * group] = probs @ v
    return out.to(q.dtype)
