"""Merge the block-major partials of each (token, KV group) by their LSE into o.

Slot validity is recomputed from topk_idx with the reverse map's rule (id >= 0 and the block starts
at or before the token), so the workspace needs no initialisation: missing slots are never read.
A token with no valid slot gets zeros.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["num_tokens", "stride_tg"])
def combine_kernel(
    o_ptr,  # [T, HQ, D]
    ws_o_ptr,  # [E * GROUP, D]
    ws_lse_ptr,  # [E * GROUP]
    topk_idx_ptr,  # [HK, T, topk]
    token_pos_ptr,
    num_tokens,
    stride_on,
    stride_oh,
    stride_tg,
    stride_tt,
    stride_ts,
    GROUP: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK: tl.constexpr,
    TOPK: tl.constexpr,
    BLOCK_TOPK: tl.constexpr,
):
    i_t = tl.program_id(0).to(tl.int64)
    i_g = tl.program_id(1).to(tl.int64)
    o_s = tl.arange(0, BLOCK_TOPK)
    o_h = tl.arange(0, BLOCK_H)
    o_d = tl.arange(0, HEAD_DIM)
    m_h = o_h < GROUP
    q_pos = tl.load(token_pos_ptr + i_t)
    p_row = topk_idx_ptr + i_g * stride_tg + i_t * stride_tt
    blk = tl.load(p_row + o_s * stride_ts, mask=o_s < TOPK, other=-1)
    valid = (blk >= 0) & (blk * BLOCK <= q_pos)
    entry0 = (i_g * num_tokens + i_t) * TOPK
    lse = tl.load(
        ws_lse_ptr + (entry0 + o_s[:, None]) * GROUP + o_h[None, :],
        mask=valid[:, None] & m_h[None, :],
        other=float("-inf"),
    )  # [BLOCK_TOPK, BLOCK_H]
    b_max = tl.maximum(tl.max(lse, 0), -1.0e30)
    w = tl.exp2(lse - b_max[None, :])
    w_sum = tl.sum(w, 0)
    w = w / tl.maximum(w_sum, 1.0e-30)[None, :]  # all-zero column: no valid slot -> zeros
    acc = tl.zeros((BLOCK_H, HEAD_DIM), dtype=tl.float32)
    for s in tl.static_range(TOPK):
        w_s = tl.sum(tl.where(o_s[:, None] == s, w, 0.0), 0)  # row s of w, [BLOCK_H]
        valid_s = tl.sum(tl.where(o_s == s, valid.to(tl.int32), 0), 0) > 0
        p_part = ws_o_ptr + ((entry0 + s) * GROUP + o_h[:, None]) * HEAD_DIM + o_d[None, :]
        part = tl.load(p_part, mask=valid_s & m_h[:, None], other=0.0)
        acc += w_s[:, None] * part.to(tl.float32)
    p_o = o_ptr + i_t * stride_on + (i_g * GROUP + o_h[:, None]) * stride_oh + o_d[None, :]
    tl.store(p_o, acc.to(o_ptr.dtype.element_ty), mask=m_h[:, None])


def launch_combine(plan, out, topk_idx):
    grid = (plan.num_tokens, plan.num_kv_heads)
    combine_kernel[grid](
        out, plan.ws_o, plan.ws_lse, topk_idx, plan.token_pos, plan.num_tokens,
        out.stride(0), out.stride(1), topk_idx.stride(0), topk_idx.stride(1), topk_idx.stride(2),
        GROUP=plan.group, BLOCK_H=plan.block_h, HEAD_DIM=plan.head_dim, BLOCK=plan.block_size,
        TOPK=plan.topk, BLOCK_TOPK=triton.next_power_of_2(plan.topk),
        num_warps=4,
    )  # fmt: skip
