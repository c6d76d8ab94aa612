"""Triton helpers shared by the prefill kernels."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_kv_block(
    k_ptr,
    v_ptr,
    p_r2t,  # req_to_token row of the request
    i_g,
    i_blk,
    seq_len,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    BLOCK: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGED_BLOCK: tl.constexpr,
):
    """K and V tiles [BLOCK, HEAD_DIM] of logical block i_blk, keys past seq_len zeroed.

    PAGED_BLOCK: pages hold whole blocks, so the block is BLOCK consecutive slots from the slot of
    its first position; otherwise each position is looked up (page size 1, any slot order).
    """
    o_k = i_blk * BLOCK + tl.arange(0, BLOCK)
    m_k = o_k < seq_len
    o_d = tl.arange(0, HEAD_DIM)
    if PAGED_BLOCK:
        slots = tl.load(p_r2t + i_blk * BLOCK).to(tl.int64) + tl.arange(0, BLOCK).to(tl.int64)
    else:
        slots = tl.load(p_r2t + o_k, mask=m_k, other=0).to(tl.int64)
    p_k = k_ptr + slots[:, None] * stride_ks + i_g.to(tl.int64) * stride_kh + o_d[None, :]
    p_v = v_ptr + slots[:, None] * stride_vs + i_g.to(tl.int64) * stride_vh + o_d[None, :]
    b_k = tl.load(p_k, mask=m_k[:, None], other=0.0)
    b_v = tl.load(p_v, mask=m_k[:, None], other=0.0)
    return b_k, b_v, o_k, m_k


# The two halves of load_kv_block, for kernels that pipeline them by hand (the slots of a later block
# are looked up while an earlier block's K/V are in flight). load_kv_block itself stays one piece so the
# kernels that use it compile as before.
@triton.jit
def kv_block_slots(p_r2t, i_blk, seq_len, live, BLOCK: tl.constexpr, PAGED_BLOCK: tl.constexpr):
    """Slots [BLOCK] int64, positions o_k and key mask m_k of block i_blk; live=False (a prefetch past
    the last block) masks every key and reads nothing."""
    o_k = i_blk * BLOCK + tl.arange(0, BLOCK)
    m_k = (o_k < seq_len) & live
    if PAGED_BLOCK:
        slots = tl.load(p_r2t + i_blk * BLOCK, mask=live, other=0).to(tl.int64) + tl.arange(0, BLOCK).to(tl.int64)
    else:
        slots = tl.load(p_r2t + o_k, mask=m_k, other=0).to(tl.int64)
    return slots, o_k, m_k


@triton.jit
def load_block_rows(ptr, slots, m_k, i_g, stride_s, stride_h, HEAD_DIM: tl.constexpr):
    """K or V tile [BLOCK, HEAD_DIM] of KV group i_g at the given slots; masked keys read as zeros."""
    o_d = tl.arange(0, HEAD_DIM)
    p = ptr + slots[:, None] * stride_s + i_g.to(tl.int64) * stride_h + o_d[None, :]
    return tl.load(p, mask=m_k[:, None], other=0.0)


@triton.jit
def online_softmax_step(b_s, b_v, b_m, b_l, b_acc):
    """Fold one masked score tile b_s [rows, keys] (log2 domain, -inf where masked) and its V tile into
    the running row max b_m, sum b_l and output accumulator b_acc; returns the three updated."""
    b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
    b_p = tl.exp2(b_s - b_m_new[:, None])
    alpha = tl.exp2(b_m - b_m_new)
    b_l = b_l * alpha + tl.sum(b_p, 1)
    b_acc = b_acc * alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v)
    return b_m_new, b_l, b_acc
