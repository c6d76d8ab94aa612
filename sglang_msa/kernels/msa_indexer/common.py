"""Pieces shared by the prefill and decode indexers: the selection key and the final sorted store.

A block's rank in the top-k is (score descending, block id ascending). Both are packed into one
int64 "order key" whose signed order is exactly that rank, so every comparison, min and max over
candidates is a single integer op and ties can never be resolved differently by two kernels.
"""

from __future__ import annotations

import os
from typing import Optional

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
# Largest finite float8 e4m3fn value: a row's absmax is scaled onto it.
E4M3_MAX: tl.constexpr = tl.constexpr(448.0)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_common(idx_q: torch.Tensor, idx_k_cache: torch.Tensor, topk: int, init_blocks: int,
                 local_blocks: int, score_type: str, idx_k_scale: Optional[torch.Tensor] = None) -> None:
    check_fp8_cache(idx_k_cache, idx_k_scale)
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


def check_fp8_cache(idx_k_cache: torch.Tensor, idx_k_scale: Optional[torch.Tensor]) -> None:
    """fp8 index path: e4m3 values [slots, 1, D] with one fp32 scale per slot, [slots] contiguous."""
    fp8 = idx_k_cache.dtype == torch.float8_e4m3fn
    if idx_k_scale is None:
        if fp8:
            raise ValueError("an float8_e4m3fn idx_k_cache needs its per-slot scales (idx_k_scale=)")
        return
    if not fp8:
        raise ValueError(f"idx_k_scale is given but idx_k_cache is {idx_k_cache.dtype}, not float8_e4m3fn")
    if idx_k_scale.dtype != torch.float32 or idx_k_scale.dim() != 1 or idx_k_scale.stride(0) != 1:
        raise ValueError("idx_k_scale must be a contiguous fp32 [slots] tensor")
    if idx_k_scale.shape[0] < idx_k_cache.shape[0]:
        raise ValueError("idx_k_scale has fewer slots than idx_k_cache")
    if idx_k_cache.shape[-1] % 32:
        raise ValueError("the fp8 index path needs head_dim % 32 == 0 (fp8 MMA reduction granularity)")


@triton.jit
def round_e4m3(x):
    """fp32 -> the nearest float8 e4m3fn value (ties to even), still fp32, saturated at +-448.

    Done in integer ops so the later cast is exact everywhere: the Triton interpreter's own fp32 -> fp8
    cast drops the carry when rounding crosses a power of two (1.99 -> 1.0). Same result as torch's and
    sm90's round-to-nearest-even cast for |x| <= 448."""
    b_bits = x.to(tl.int32, bitcast=True)
    b_abs = b_bits & 0x7FFFFFFF
    b_sign = b_bits ^ b_abs
    # normal e4m3 (|x| >= 2^-6): keep 3 mantissa bits (carry into the exponent is the right answer)
    b_norm = (b_abs + 0x7FFFF + ((b_abs >> 20) & 1)) & 0x7FF00000
    b_norm = tl.minimum(b_norm, 0x43E00000)  # 448
    # subnormal e4m3 (|x| < 2^-6): integer multiples of 2^-9, from the 24-bit significand
    b_man = (b_abs & 0x7FFFFF) | 0x800000
    # value = man / 2^shift units of 2^-9 (clamped: normal inputs, whose lane is discarded, shift less)
    b_shift = tl.maximum(tl.minimum(14 - ((b_abs >> 23) - 127), 31), 1)
    b_q = b_man >> b_shift
    b_rem = b_man - (b_q << b_shift)
    b_half = 1 << (b_shift - 1)
    b_q += ((b_rem > b_half) | ((b_rem == b_half) & ((b_q & 1) == 1))).to(tl.int32)
    b_sub = (b_q.to(tl.float32) * 0.001953125).to(tl.int32, bitcast=True)
    b_out = tl.where(b_abs >= 0x3C800000, b_norm, b_sub) | b_sign
    return b_out.to(tl.float32, bitcast=True)


@triton.jit
def quantize_rows_e4m3(b_x):
    """Per-row e4m3 quantization of [R, D]: (values e4m3 [R, D], scale fp32 [R]) with x ~ values * scale.

    scale = absmax / 448 (1 for an all-zero row); values = round(x * (448 / absmax)). Both divisions
    are correctly rounded (div_rn), so torch's `naive.quantize_e4m3` gives the same bits."""
    b_x = b_x.to(tl.float32)
    b_amax = tl.max(tl.abs(b_x), axis=1)
    b_amax = tl.where(b_amax > 0, b_amax, E4M3_MAX)
    b_inv = tl.math.div_rn(tl.full(b_amax.shape, 448.0, tl.float32), b_amax)
    b_val = round_e4m3(b_x * b_inv[:, None]).to(tl.float8e4nv)
    return b_val, tl.math.div_rn(b_amax, tl.full(b_amax.shape, 448.0, tl.float32))


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
def score_block(b_q, k_ptr, ks_ptr, r2t_row_ptr, i_blk, q_pos, seq_len, scale, stride_k_s,
                HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, SCORE_TYPE: tl.constexpr,
                CONTIGUOUS_BLOCKS: tl.constexpr, CAUSAL_MASK: tl.constexpr, IEEE_DOT: tl.constexpr,
                FP8: tl.constexpr):
    """Pooled score of key block i_blk for each query row: [R] fp32 in base-2 units (q·k·scale).

    b_q [R, HEAD_DIM]; q_pos [R] the rows' absolute positions (keys after them are masked when
    CAUSAL_MASK, which also masks keys at or past seq_len). r2t_row_ptr: the request's
    req_to_token row. FP8: b_q and the cache are e4m3, ks_ptr holds one fp32 scale per slot and
    `scale` is per row [R] (the row's q scale x sm_scale·log2e); otherwise ks_ptr is unused."""
    b_s = block_dots(b_q, k_ptr, ks_ptr, r2t_row_ptr, i_blk, q_pos, seq_len, stride_k_s,
                     HEAD_DIM, BLOCK_SIZE, CONTIGUOUS_BLOCKS, CAUSAL_MASK, IEEE_DOT, FP8)
    return pool_block(b_s, scale, SCORE_TYPE, FP8)


@triton.jit
def block_dots(b_q, k_ptr, ks_ptr, r2t_row_ptr, i_blk, q_pos, seq_len, stride_k_s,
               HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, CONTIGUOUS_BLOCKS: tl.constexpr,
               CAUSAL_MASK: tl.constexpr, IEEE_DOT: tl.constexpr, FP8: tl.constexpr):
    """The raw [R, BLOCK_SIZE] q·k of key block i_blk (fp8: times each key's scale), -inf where
    CAUSAL_MASK hides a key: the first half of :func:`score_block`."""
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
    if FP8:
        # e4m3 x e4m3 -> fp32 on tensor cores; both operands K-major (D contiguous). The key scale
        # varies along the block, so it goes in before the pooling; the row scale after (monotone).
        if CAUSAL_MASK:
            b_ks = tl.load(ks_ptr + o_slot, mask=m_pos, other=0.0)
        else:
            b_ks = tl.load(ks_ptr + o_slot)
        b_s = tl.dot(b_q, tl.trans(b_k)) * b_ks[None, :]
    elif IEEE_DOT:
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision="ieee")
    else:
        b_s = tl.dot(b_q, tl.trans(b_k))
    if CAUSAL_MASK:
        b_s = tl.where(o_pos[None, :] <= q_pos[:, None], b_s, float("-inf"))
    return b_s


@triton.jit
def pool_block(b_s, scale, SCORE_TYPE: tl.constexpr, FP8: tl.constexpr):
    """[R] pooled score of one block's raw dots (:func:`block_dots`): the second half of
    :func:`score_block`."""
    if SCORE_TYPE == "max":
        # scaling commutes with max bit-exactly (fp32 rounding is monotone), so scale once per row
        b_pool = tl.max(b_s, axis=1) * scale
    else:
        if FP8:
            b_s = b_s * scale[:, None]
        else:
            b_s = b_s * scale
        # rows that see none of this block keep -inf (they are never offered it)
        b_peak = tl.max(b_s, axis=1)
        b_peak = tl.where(b_peak == float("-inf"), 0.0, b_peak)
        b_pool = b_peak + tl.log2(tl.sum(tl.exp2(b_s - b_peak[:, None]), axis=1))
    return b_pool
