"""Fused prefill indexer: q·k scores, block pooling, forced blocks and top-k in one kernel.

One program owns a tile of query rows (BLOCK_M = tokens x index heads: all index heads of a token
share the one index-K head, so K is read once per tile for all of them) and streams over the
request's causal key blocks. Each key block is one [BLOCK_M, BLOCK_SIZE] dot, pooled to one score
per row, turned into an order key (see common.py) and offered to a per-row running top-k kept in
registers (evict the worst key when the new one beats it). The [T, S] score matrix never exists.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .common import (
    INT64_MAX,
    INT64_MIN,
    LOG2E,
    check_common,
    force_scores,
    interpreting,
    key_block_id,
    order_key,
    score_block,
    store_sorted_ids,
)


@triton.jit
def _offer(b_list, b_pool, i_blk, n_causal, init_blocks, local_blocks, CAUSAL_MASK: tl.constexpr):
    """Offer block i_blk (one score per row) to the per-row running top-k list of order keys."""
    b_key = order_key(force_scores(b_pool, i_blk, n_causal, init_blocks, local_blocks), i_blk)
    b_worst = tl.min(b_list, axis=1)
    m_take = b_key > b_worst
    if CAUSAL_MASK:
        m_take = m_take & (i_blk < n_causal)
    return tl.where(m_take[:, None] & (b_list == b_worst[:, None]), b_key[:, None], b_list)


@triton.jit
def _indexer_prefill_kernel(
    q_ptr, k_ptr, r2t_ptr, pool_idx_ptr, cu_q_ptr, seq_lens_ptr, prefix_lens_ptr, out_ptr,
    num_heads, sm_scale, init_blocks, local_blocks,
    stride_q_t, stride_q_h, stride_k_s, stride_r2t, stride_o_h, stride_o_t,
    HEAD_DIM: tl.constexpr, H_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr, TOPK: tl.constexpr,
    TOPK_PAD: tl.constexpr, SCORE_TYPE: tl.constexpr, CONTIGUOUS_BLOCKS: tl.constexpr,
    IEEE_DOT: tl.constexpr, BLOCK_M: tl.constexpr,
):
    BLOCK_T: tl.constexpr = BLOCK_M // H_PAD
    # reversed so the longest (latest) causal tiles start first
    i_t = tl.num_programs(0) - 1 - tl.program_id(0)
    i_b = tl.program_id(1)
    q_start = tl.load(cu_q_ptr + i_b)
    n_q = tl.load(cu_q_ptr + i_b + 1) - q_start
    if i_t * BLOCK_T >= n_q:
        return
    seq_len = tl.load(seq_lens_ptr + i_b)
    prefix = tl.load(prefix_lens_ptr + i_b)
    pool_idx = tl.load(pool_idx_ptr + i_b).to(tl.int64)
    r2t_row_ptr = r2t_ptr + pool_idx * stride_r2t
    scale = sm_scale * LOG2E

    o_m = tl.arange(0, BLOCK_M)
    o_tok = i_t * BLOCK_T + o_m // H_PAD
    o_h = o_m % H_PAD
    m_row = (o_tok < n_q) & (o_h < num_heads)
    q_pos = prefix + o_tok
    n_causal = q_pos // BLOCK_SIZE + 1
    o_d = tl.arange(0, HEAD_DIM)
    p_q = q_ptr + (q_start + o_tok).to(tl.int64)[:, None] * stride_q_t + o_h[:, None] * stride_q_h + o_d[None, :]
    b_q = tl.load(p_q, mask=m_row[:, None], other=0.0)

    # Empty slots hold distinct keys below every real key; pad slots beyond TOPK are never evicted.
    o_j = tl.arange(0, TOPK_PAD)
    b_list = tl.where(o_j < TOPK, INT64_MIN + o_j.to(tl.int64), INT64_MAX)
    b_list = tl.broadcast_to(b_list[None, :], (BLOCK_M, TOPK_PAD))

    first_pos = prefix + i_t * BLOCK_T
    last_pos = prefix + tl.minimum(i_t * BLOCK_T + BLOCK_T, n_q) - 1
    n_full = (first_pos + 1) // BLOCK_SIZE  # blocks every row sees whole
    n_blocks = last_pos // BLOCK_SIZE + 1
    for i_blk in range(0, n_full):
        b_pool = score_block(b_q, k_ptr, r2t_row_ptr, i_blk, q_pos, seq_len, scale, stride_k_s,
                              HEAD_DIM, BLOCK_SIZE, SCORE_TYPE, CONTIGUOUS_BLOCKS, False, IEEE_DOT)
        b_list = _offer(b_list, b_pool, i_blk, n_causal, init_blocks, local_blocks, False)
    for i_blk in range(n_full, n_blocks):
        b_pool = score_block(b_q, k_ptr, r2t_row_ptr, i_blk, q_pos, seq_len, scale, stride_k_s,
                              HEAD_DIM, BLOCK_SIZE, SCORE_TYPE, CONTIGUOUS_BLOCKS, True, IEEE_DOT)
        b_list = _offer(b_list, b_pool, i_blk, n_causal, init_blocks, local_blocks, True)

    m_valid = (b_list > INT64_MIN + TOPK_PAD) & (b_list < INT64_MAX)
    p_out = out_ptr + o_h.to(tl.int64) * stride_o_h + (q_start + o_tok).to(tl.int64) * stride_o_t
    store_sorted_ids(p_out, key_block_id(b_list), m_valid, m_row, TOPK)


# (BLOCK_M, num_warps, num_stages, maxnreg): capping 8-warp tiles at 128 registers lets two CTAs
# share an SM (one's wgmma overlaps the other's pooling/top-k) without spilling.
PREFILL_CONFIGS = [(128, 8, 2, 128), (128, 8, 3, 128), (64, 4, 2, None), (64, 4, 3, None), (256, 8, 2, None)]


def _configs():
    return [triton.Config({"BLOCK_M": bm}, num_warps=nw, num_stages=ns, maxnreg=mr)
            for bm, nw, ns, mr in PREFILL_CONFIGS]


def _prune(configs, named_args, **kwargs):
    h_pad = kwargs.get("H_PAD", named_args.get("H_PAD", 1))
    kept = [c for c in configs if c.kwargs["BLOCK_M"] >= h_pad]
    return kept or [triton.Config({"BLOCK_M": triton.next_power_of_2(h_pad)}, num_warps=4, num_stages=2)]


_indexer_prefill_tuned = triton.autotune(
    configs=_configs(),
    key=["num_heads", "HEAD_DIM", "BLOCK_SIZE", "TOPK", "SCORE_TYPE", "CONTIGUOUS_BLOCKS"],
    prune_configs_by={"early_config_prune": _prune},
)(_indexer_prefill_kernel)


def indexer_prefill(
    idx_q: torch.Tensor,
    idx_k_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    prefix_lens: torch.Tensor,
    *,
    max_seqlen_q: Optional[int] = None,
    block_size: int,
    topk: int,
    init_blocks: int,
    local_blocks: int,
    score_type: str = "max",
    sm_scale: Optional[float] = None,
    page_size: int = 1,
    out: Optional[torch.Tensor] = None,
    block_m: Optional[int] = None,
    num_warps: int = 4,
    num_stages: int = 2,
    maxnreg: Optional[int] = None,
) -> torch.Tensor:
    """Top-k key blocks per (index head, extend token): int32 [H_idx, total_q, topk].

    idx_q [total_q, H_idx, D]; idx_k_cache [max_slots, 1, D] (may be a strided view);
    req_to_token [max_reqs, max_context] int32; req_pool_indices/seq_lens/prefix_lens [B];
    cu_seqlens_q [B+1] int32. page_size tells the slot layout: a multiple of block_size lets a
    block be read as one run of slots. Pass max_seqlen_q (host int) to avoid a device sync.
    Returns block ids of the request's sequence, ascending, -1 padded. Passing block_m (with
    num_warps/num_stages/maxnreg) skips the autotuner.
    """
    check_common(idx_q, idx_k_cache, topk, init_blocks, local_blocks, score_type)
    total_q, num_heads, head_dim = idx_q.shape
    batch = seq_lens.shape[0]
    if sm_scale is None:
        sm_scale = head_dim**-0.5
    if max_seqlen_q is None:
        max_seqlen_q = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max()) if batch else 0
    if out is None:
        out = torch.empty((num_heads, total_q, topk), dtype=torch.int32, device=idx_q.device)
    if total_q == 0 or batch == 0 or max_seqlen_q == 0:
        return out
    assert out.shape == (num_heads, total_q, topk) and out.dtype == torch.int32 and out.stride(2) == 1
    h_pad = triton.next_power_of_2(num_heads)
    args = (
        idx_q, idx_k_cache, req_to_token, req_pool_indices, cu_seqlens_q, seq_lens, prefix_lens, out,
        num_heads, sm_scale, init_blocks, local_blocks,
        idx_q.stride(0), idx_q.stride(1), idx_k_cache.stride(0), req_to_token.stride(0),
        out.stride(0), out.stride(1),
    )
    meta = dict(
        HEAD_DIM=head_dim, H_PAD=h_pad, BLOCK_SIZE=block_size, TOPK=topk,
        TOPK_PAD=triton.next_power_of_2(topk), SCORE_TYPE=score_type,
        CONTIGUOUS_BLOCKS=page_size % block_size == 0, IEEE_DOT=idx_q.dtype == torch.float32,
    )

    def grid(META):
        return (triton.cdiv(max_seqlen_q, META["BLOCK_M"] // h_pad), batch)

    if block_m is not None or interpreting():
        bm = block_m or max(32, h_pad)
        extra = {} if maxnreg is None else {"maxnreg": maxnreg}
        _indexer_prefill_kernel[grid](*args, **meta, BLOCK_M=bm, num_warps=num_warps,
                                      num_stages=num_stages, **extra)
    else:
        _indexer_prefill_tuned[grid](*args, **meta)
    return out
