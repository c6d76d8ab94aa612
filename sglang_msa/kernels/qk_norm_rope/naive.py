"""fp32 torch reference for the fused per-head RMSNorm + partial NeoX RoPE + head split."""

from __future__ import annotations

from typing import Optional

import torch


@torch.no_grad()
def naive_qk_norm_rope(
    x: torch.Tensor,  # [T, (Hq + Hk + Hv) * D]: q heads, then k heads, then v heads
    num_q_heads: int,
    num_k_heads: int,
    num_v_heads: int,
    head_dim: int,
    q_weight: torch.Tensor,  # [D]
    k_weight: torch.Tensor,  # [D]
    cos_sin_cache: torch.Tensor,  # [max_position, rotary_dim]: cos in the first half, sin in the second
    positions: torch.Tensor,  # [T]
    *,
    eps: float,
    gemma: bool,
    round_between: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(q, k, v) packed as [T, H*D] in x's dtype: q and k heads RMS-normed (weight ``w``, or ``1 + w``
    when ``gemma``) and rotated NeoX-style on their first ``rotary_dim`` channels; v heads copied.

    ``round_between`` rounds the normed value to x's dtype before the rotation, as the unfused
    pipeline (a norm kernel writing x's dtype, then a RoPE kernel) does.
    """
    tokens = x.shape[0]
    rotary_dim = cos_sin_cache.shape[1]
    half = rotary_dim // 2
    heads = x.float().view(tokens, -1, head_dim)
    cos_sin = cos_sin_cache.float()[positions.long()]  # [T, rotary_dim]
    cos, sin = cos_sin[:, None, :half], cos_sin[:, None, half:]

    def norm_rope(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        w = weight.float() + 1.0 if gemma else weight.float()
        normed = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * w
        if round_between:
            normed = normed.to(x.dtype).float()
        x1, x2, rest = normed[..., :half], normed[..., half:rotary_dim], normed[..., rotary_dim:]
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)
        return rotated.to(x.dtype).reshape(tokens, -1)

    q = norm_rope(heads[:, :num_q_heads], q_weight)
    k = norm_rope(heads[:, num_q_heads:num_q_heads + num_k_heads], k_weight)
    v = None
    if num_v_heads:
        v = heads[:, num_q_heads + num_k_heads:num_q_heads + num_k_heads + num_v_heads].to(x.dtype)
        v = v.reshape(tokens, -1)
    return q, k, v
