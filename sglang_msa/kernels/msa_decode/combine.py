"""Merge split-K partial decode outputs by their log-sum-exp (base 2)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def combine_splits_kernel(
    part_o_ptr,  # [B, num_q_heads, NUM_SPLITS, HEAD_DIM] fp32, each split already normalised
    part_lse_ptr,  # [B, num_q_heads, NUM_SPLITS] fp32, log2 of the split's softmax mass; -inf if empty
    out_ptr,  # [B, num_q_heads, HEAD_DIM], last dim contiguous
    s_out_b,
    s_out_h,
    NUM_Q_HEADS: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    i_b = tl.program_id(0)
    i_hq = tl.program_id(1)
    row0 = (i_b.to(tl.int64) * NUM_Q_HEADS + i_hq) * NUM_SPLITS
    o_s = tl.arange(0, SPLITS_PAD)
    o_d = tl.arange(0, HEAD_DIM)
    m_s = o_s < NUM_SPLITS

    b_lse = tl.load(part_lse_ptr + row0 + o_s, mask=m_s, other=float("-inf"))
    b_max = tl.max(b_lse, axis=0)
    # An empty row has every split at -inf: shift by 0 so the weights come out 0, not NaN.
    b_max = tl.where(b_max == float("-inf"), 0.0, b_max)
    b_w = tl.exp2(b_lse - b_max)
    b_sum = tl.sum(b_w, axis=0)

    p_o = part_o_ptr + (row0 + o_s)[:, None] * HEAD_DIM + o_d[None, :]
    b_o = tl.load(p_o, mask=m_s[:, None], other=0.0)
    b_out = tl.sum(b_o * b_w[:, None], axis=0) / tl.where(b_sum > 0, b_sum, 1.0)

    p_out = out_ptr + i_b.to(tl.int64) * s_out_b + i_hq.to(tl.int64) * s_out_h + o_d
    tl.store(p_out, b_out.to(out_ptr.dtype.element_ty))
