"""Pieces shared by the prefill and decode indexers: the selection key and the final sorted store.

A block's rank in the top-k is (score descending, block id ascending). Both are packed into one
int64 "order key" whose signed order is exactly that rank, so every comparison, min and max over
candidates is a single integer op and ties can never be resolved differently by two kernels.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950409)

INT64_MIN: tl.constexpr = tl.constexpr(-(2**63))
INT64_MAX: tl.constexpr = tl.constexpr(2**63 - 1)
# Scores of forced blocks and of NaN scores (upstream uses the same constants).
INIT_SCORE: tl.constexpr = tl.constexpr(1e30)
LOCAL_SCORE: tl.constexpr = tl.constexpr(1e29)
NAN_SCORE: tl.constexpr = tl.constexpr(-1e30)
# Sort key of an empty slot: above every real block id, so empty slots sort to the tail.
EMPTY_ID: tl.constexpr = tl.constexpr(2**30)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_common(idx_q: torch.Tensor, idx_k_cache: torch.Tensor, topk: int, init_blocks: int,
                 local_blocks: int, score_type: str) -> None:
    if score_type not in ("max", "lse"):
        raise ValueError(f"score_type must be 'max' or 'lse', got {score_type!r}")
    if idx_k_cache.dim() != 3 or idx_k_cache.shape[1] != 1:
        raise ValueError(f"idx_k_cache must be [max_slots, 1, head_dim], got {tuple(idx_k_cache.shape)}")
    if idx_k_cache.shape[2] != idx_q.shape[-1]:
        raise ValueError("idx_q and idx_k_cache head_dim differ")
    if idx_q.stride(-1) != 1 or idx_k_cache.stride(-1) != 1:
        raise ValueError("idx_q and idx_k_cache need a contiguous last dim")
    if init_blocks + local_blocks > topk:
        raise ValueError("init_blocks + local_blocks must not exceed topk")
    if topk > 128:
        raise ValueError("topk above 128 is not supported")


@triton.jit
def force_scores(b_score, i_blk, n_causal, init_blocks, local_blocks):
    """Apply the forced-block rule: the last `local_blocks` causal blocks get LOCAL_SCORE, else the
    first `init_blocks` get INIT_SCORE; NaN becomes NAN_SCORE. `i_blk`/`n_causal` broadcast."""
    b_score = tl.where(b_score != b_score, NAN_SCORE, b_score)
    b_score = tl.where(i_blk < init_blocks, INIT_SCORE, b_score)
    b_score = tl.where(i_blk >= n_causal - local_blocks, LOCAL_SCORE, b_score)
    return b_score


@triton.jit
def order_key(b_score, i_blk):
    """int64 key, larger = better: high word is the fp32 score mapped to a signed-int total order,
    low word is (2^31 - 1 - block id) so a lower id wins a score tie."""
    b_score = b_score + 0.0  # -0.0 -> +0.0, so the two zeros tie like they do as floats
    b_bits = b_score.to(tl.int32, bitcast=True)
    b_bits = b_bits ^ ((b_bits >> 31) & 0x7FFFFFFF)
    return (b_bits.to(tl.int64) << 32) | tl.cast(0x7FFFFFFF - i_blk, tl.int64)


@triton.jit
def key_block_id(b_key):
    return (0x7FFFFFFF - (b_key & 0x7FFFFFFF)).to(tl.int32)


@triton.jit
def key_score(b_key):
    """The fp32 score an order key was built from (the int mapping is its own inverse):
    order_key(key_score(k), key_block_id(k)) == k for every real key."""
    b_bits = (b_key >> 32).to(tl.int32)
    b_bits = b_bits ^ ((b_bits >> 31) & 0x7FFFFFFF)
    return b_bits.to(tl.float32, bitcast=True)


@triton.jit
def store_sorted_ids(p_out, b_ids, m_valid, m_row, TOPK: tl.constexpr):
    """Store each row of block ids ascending with -1 after the valid ones.

    b_ids [R, TOPK_PAD] int32 (distinct where m_valid), p_out [R] pointers to the rows' first slot
    (slots contiguous). Sorting is a rank computation plus a scatter store: the rank of an id is the
    number of smaller ids in its row, invalid slots get distinct keys above every id.
    """
    TOPK_PAD: tl.constexpr = b_ids.shape[1]
    o_j = tl.arange(0, TOPK_PAD)
    b_sort = tl.where(m_valid, b_ids, EMPTY_ID + o_j[None, :])
    # column by column rather than one [R, TOPK_PAD, TOPK_PAD] compare: keeps register use flat
    b_rank = tl.zeros_like(b_sort)
    for j in tl.static_range(TOPK_PAD):
        b_col = tl.sum(tl.where(o_j[None, :] == j, b_sort, 0), axis=1)
        b_rank += (b_col[:, None] < b_sort).to(tl.int32)
    b_val = tl.where(m_valid, b_ids, -1)
    tl.store(p_out[:, None] + b_rank, b_val, mask=m_row[:, None] & (b_rank < TOPK))


@triton.jit
def score_block(b_q, k_ptr, r2t_row_ptr, i_blk, q_pos, seq_len, scale, stride_k_s,
                 HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, SCORE_TYPE: tl.constexpr,
                 CONTIGUOUS_BLOCKS: tl.constexpr, CAUSAL_MASK: tl.constexpr, IEEE_DOT: tl.constexpr):
    """Pooled score of key block i_blk for each query row: [R] fp32 in base-2 units (q·k·scale).

    b_q [R, HEAD_DIM]; q_pos [R] the rows' absolute positions (keys after them are masked when
    CAUSAL_MASK, which also masks keys at or past seq_len). r2t_row_ptr: the request's
    req_to_token row."""
    o_n = tl.arange(0, BLOCK_SIZE)
    o_d = tl.arange(0, HEAD_DIM)
    o_pos = i_blk * BLOCK_SIZE + o_n
    m_pos = o_pos < seq_len
    if CONTIGUOUS_BLOCKS:
        # a page holds whole blocks: the block is one run of slots
        o_slot = tl.load(r2t_row_ptr + i_blk * BLOCK_SIZE).to(tl.int64) + o_n
    else:
        o_slot = tl.load(r2t_row_ptr + o_pos, mask=m_pos, other=0).to(tl.int64)
    p_k = k_ptr + o_slot[:, None] * stride_k_s + o_d[None, :]
    if CAUSAL_MASK:
        b_k = tl.load(p_k, mask=m_pos[:, None], other=0.0)
    else:
        b_k = tl.load(p_k)
    if IEEE_DOT:
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision="ieee")
    else:
        b_s = tl.dot(b_q, tl.trans(b_k))
    if CAUSAL_MASK:
        b_s = tl.where(o_pos[None, :] <= q_pos[:, None], b_s, float("-inf"))
    if SCORE_TYPE == "max":
        # scaling commutes with max bit-exactly (fp32 rounding is monotone), so scale once per row
        b_pool = tl.max(b_s, axis=1) * scale
    else:
        b_s = b_s * scale
        # rows that see none of this block keep -inf (they are never offered it)
        b_peak = tl.max(b_s, axis=1)
        b_peak = tl.where(b_peak == float("-inf"), 0.0, b_peak)
        b_pool = b_peak + tl.log2(tl.sum(tl.exp2(b_s - b_peak[:, None]), axis=1))
    return b_pool
