"""One launch that turns a fused projection ``[T, (Hq + Hk + Hv) * D]`` into packed q, k, v: q and k heads
RMS-normed and NeoX-rotated on their first ``rotary_dim`` channels, v heads copied.

It replaces, per attention input, two norm launches on ``.contiguous()`` copies, one RoPE launch and
the copy that packs v (SGLang's fused KV store takes only packed rows). The normed value is rounded
to the output dtype before the rotation, as in the unfused pipeline.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["num_tokens"])
def qk_norm_rope_kernel(
    x_ptr, q_ptr, k_ptr, v_ptr, wq_ptr, wk_ptr, cos_sin_ptr, pos_ptr,
    num_tokens, stride_x, stride_cs, eps,
    NUM_Q: tl.constexpr, NUM_K: tl.constexpr, NUM_V: tl.constexpr,
    HEAD_DIM: tl.constexpr, ROTARY_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    GEMMA: tl.constexpr,
):
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    o_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    o_d = tl.arange(0, BLOCK_D)
    m_t = o_t < num_tokens
    m_d = o_d < HEAD_DIM
    m_td = m_t[:, None] & m_d[None, :]
    o_t64 = o_t.to(tl.int64)
    p_x = x_ptr + o_t64[:, None] * stride_x + i_h * HEAD_DIM
    if i_h >= NUM_Q + NUM_K:  # v head: packed copy
        b_v = tl.load(p_x + o_d[None, :], mask=m_td)
        p_v = v_ptr + o_t64[:, None] * (NUM_V * HEAD_DIM) + (i_h - NUM_Q - NUM_K) * HEAD_DIM + o_d[None, :]
        tl.store(p_v, b_v, mask=m_td)
    else:
        if i_h < NUM_Q:
            p_w = wq_ptr
            p_o = q_ptr + o_t64[:, None] * (NUM_Q * HEAD_DIM) + i_h * HEAD_DIM + o_d[None, :]
        else:
            p_w = wk_ptr
            p_o = k_ptr + o_t64[:, None] * (NUM_K * HEAD_DIM) + (i_h - NUM_Q) * HEAD_DIM + o_d[None, :]
        b_x = tl.load(p_x + o_d[None, :], mask=m_td, other=0.0).to(tl.float32)
        b_inv = tl.rsqrt(tl.sum(b_x * b_x, axis=1) / HEAD_DIM + eps)  # [BLOCK_T]
        b_w = tl.load(p_w + o_d, mask=m_d, other=0.0).to(tl.float32)
        if GEMMA:
            b_w = b_w + 1.0
        b_n = (b_x * b_inv[:, None] * b_w[None, :]).to(q_ptr.dtype.element_ty).to(tl.float32)
        # The rotation partner of channel d (d < ROTARY_DIM): d + half in the first half, d - half in
        # the second; it is normed with the same row scale, so load and norm it directly.
        HALF: tl.constexpr = ROTARY_DIM // 2
        m_rot = o_d < ROTARY_DIM
        o_pair = tl.where(o_d < HALF, o_d + HALF, o_d - HALF)
        o_pair = tl.where(m_rot, o_pair, o_d)
        b_xp = tl.load(p_x + o_pair[None, :], mask=m_td, other=0.0).to(tl.float32)
        b_wp = tl.load(p_w + o_pair, mask=m_d, other=0.0).to(tl.float32)
        if GEMMA:
            b_wp = b_wp + 1.0
        b_np = (b_xp * b_inv[:, None] * b_wp[None, :]).to(q_ptr.dtype.element_ty).to(tl.float32)
        b_pos = tl.load(pos_ptr + o_t, mask=m_t, other=0).to(tl.int64)
        o_freq = tl.where(o_d < HALF, o_d, o_d - HALF)
        m_cs = m_t[:, None] & m_rot[None, :]
        p_cs = cos_sin_ptr + b_pos[:, None] * stride_cs + o_freq[None, :]
        b_cos = tl.load(p_cs, mask=m_cs, other=1.0).to(tl.float32)
        b_sin = tl.load(p_cs + HALF, mask=m_cs, other=0.0).to(tl.float32)
        b_sign = tl.where(o_d < HALF, -1.0, 1.0)
        b_out = tl.where(m_rot[None, :], b_n * b_cos + b_sign[None, :] * b_np * b_sin, b_n)
        tl.store(p_o, b_out.to(q_ptr.dtype.element_ty), mask=m_td)


def qk_norm_rope(
    x: torch.Tensor,
    num_q_heads: int,
    num_k_heads: int,
    num_v_heads: int,
    head_dim: int,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    positions: torch.Tensor,
    *,
    eps: float,
    gemma: bool,
    out: Optional[tuple] = None,
    block_t: int = 16,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Packed (q [T, Hq*D], k [T, Hk*D], v [T, Hv*D] or None) from the fused projection ``x``.

    ``x`` may be a column slice of a wider tensor (rows of any stride, unit column stride);
    ``cos_sin_cache`` is SGLang's ``[max_position, rotary_dim]`` (cos | sin) and ``positions`` index it.
    ``out``: preallocated packed ``(q, k, v)`` (v None when there are no v heads).
    """
    tokens = x.shape[0]
    total = num_q_heads + num_k_heads + num_v_heads
    rotary_dim = cos_sin_cache.shape[1]
    if x.dim() != 2 or x.shape[1] != total * head_dim or x.stride(1) != 1:
        raise ValueError(f"x must be [T, {total} * {head_dim}] with unit column stride, got {tuple(x.shape)} "
                         f"strides {x.stride()}")
    if rotary_dim % 2 or rotary_dim > head_dim:
        raise ValueError(f"rotary_dim {rotary_dim} must be even and at most head_dim {head_dim}")
    if cos_sin_cache.stride(1) != 1 or positions.shape != (tokens,):
        raise ValueError("cos_sin_cache needs unit column stride and positions one entry per token")
    if out is None:
        out = tuple(torch.empty(tokens, n * head_dim, dtype=x.dtype, device=x.device) if n else None
                    for n in (num_q_heads, num_k_heads, num_v_heads))
    q, k, v = out
    for t, n in zip(out, (num_q_heads, num_k_heads, num_v_heads)):
        if (t is None) != (n == 0) or (t is not None and (t.shape != (tokens, n * head_dim) or not t.is_contiguous()
                                                          or t.dtype != x.dtype)):
            raise ValueError(f"out tensors must be packed [T, H*D] in {x.dtype} (None for 0 heads)")
    if tokens:
        grid = (triton.cdiv(tokens, block_t), total)
        qk_norm_rope_kernel[grid](
            x, q, k, q if v is None else v, q_weight, k_weight, cos_sin_cache, positions,
            tokens, x.stride(0), cos_sin_cache.stride(0), eps,
            NUM_Q=num_q_heads, NUM_K=num_k_heads, NUM_V=num_v_heads, HEAD_DIM=head_dim,
            ROTARY_DIM=rotary_dim, BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_T=block_t, GEMMA=gemma,
        )
    return q, k, v
