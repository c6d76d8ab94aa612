"""Fused prefill indexer: q·k scores, block pooling, forced blocks and top-k in one kernel.

One program owns a tile of query rows (BLOCK_M = tokens x index heads: all index heads of a token
share the one index-K head, so K is read once per tile for all of them) and streams over the
request's causal key blocks. Each key block is one [BLOCK_M, BLOCK_SIZE] dot, pooled to one score
per row, turned into an order key (see common.py) and offered to a per-row running top-k kept in
registers (evict the worst key when the new one beats it). The [T, S] score matrix never exists.

Split-K (`split_k` > 1): the key blocks of each query tile are cut into `split_k` contiguous ranges,
one program per (tile, range). Each writes its range's local top-k (fp32 score after forcing +
int32 block id, -1 for an empty slot) to a workspace [split_k, T, H_idx, topk]; a second kernel
merges the split_k lists of every (token, head) with the same order keys. The union of the local
top-k lists holds the global top-k, and the keys are distinct, so the selection is exactly the
unsplit kernel's (ties included). See README.md for the automatic rule and the workspace bound.
"""

from __future__ import annotations

from typing import Optional

import os

import torch
import triton
import triton.language as tl

from .common import (
    INT64_MAX,
    INT64_MIN,
    LOG2E,
    block_dots,
    check_common,
    force_scores,
    interpreting,
    key_block_id,
    key_score,
    order_key,
    pool_block,
    quantize_rows_e4m3,
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
def _take(b_list, b_sink, b_pool, i_blk, n_causal, init_blocks, local_blocks, CAUSAL: tl.constexpr,
          POOL_ONLY: tl.constexpr):
    """One block's pooled scores into the rows' top-k lists, or (POOL_ONLY) into their checksum."""
    if POOL_ONLY:
        if CAUSAL:  # only a partly visible block leaves rows at -inf
            b_sink += tl.where(b_pool == float("-inf"), 0.0, b_pool)
        else:
            b_sink += b_pool
    else:
        b_list = _offer(b_list, b_pool, i_blk, n_causal, init_blocks, local_blocks, CAUSAL)
    return b_list, b_sink


@triton.jit(do_not_specialize=["num_splits", "rows_bucket", "stride_o_h", "stride_ws_s"])
def _indexer_prefill_kernel(
    q_ptr, k_ptr, ks_ptr, r2t_ptr, pool_idx_ptr, cu_q_ptr, seq_lens_ptr, prefix_lens_ptr, out_ptr,
    ws_score_ptr, ws_id_ptr,
    num_heads, sm_scale, init_blocks, local_blocks, num_splits, rows_bucket,
    stride_q_t, stride_q_h, stride_k_s, stride_r2t, stride_o_h, stride_o_t, stride_ws_s,
    HEAD_DIM: tl.constexpr, H_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr, TOPK: tl.constexpr,
    TOPK_PAD: tl.constexpr, SCORE_TYPE: tl.constexpr, CONTIGUOUS_BLOCKS: tl.constexpr,
    IEEE_DOT: tl.constexpr, SPLIT: tl.constexpr, FP8: tl.constexpr, BLOCK_M: tl.constexpr,
    POOL_ONLY: tl.constexpr = False, PIPELINE: tl.constexpr = False,
):
    BLOCK_T: tl.constexpr = BLOCK_M // H_PAD
    # reversed so the longest (latest) causal tiles start first
    if SPLIT:
        # program_id(0) = tile * num_splits + range: the ranges of one tile are neighbours
        i_t = tl.num_programs(0) // num_splits - 1 - tl.program_id(0) // num_splits
        i_s = tl.program_id(0) % num_splits
    else:
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
    if FP8:
        # each (token, head) row gets its own e4m3 scale; it folds into the row's score factor
        b_q, b_qs = quantize_rows_e4m3(b_q)
        scale = b_qs * scale

    # Empty slots hold distinct keys below every real key; pad slots beyond TOPK are never evicted.
    o_j = tl.arange(0, TOPK_PAD)
    b_list = tl.where(o_j < TOPK, INT64_MIN + o_j.to(tl.int64), INT64_MAX)
    b_list = tl.broadcast_to(b_list[None, :], (BLOCK_M, TOPK_PAD))

    first_pos = prefix + i_t * BLOCK_T
    last_pos = prefix + tl.minimum(i_t * BLOCK_T + BLOCK_T, n_q) - 1
    n_full = (first_pos + 1) // BLOCK_SIZE  # blocks every row sees whole
    n_blocks = last_pos // BLOCK_SIZE + 1
    if SPLIT:
        # this program's contiguous range [lo, hi) of the tile's blocks (empty when i_s is too large)
        per_split = tl.cdiv(n_blocks, num_splits)
        lo = tl.minimum(i_s * per_split, n_blocks)
        hi = tl.minimum(lo + per_split, n_blocks)
    else:
        lo = 0
        hi = n_blocks
    b_sink = tl.zeros([BLOCK_M], dtype=tl.float32)  # POOL_ONLY: the pooled scores' sum, so none is dead code
    n_mid = tl.minimum(hi, n_full)
    if PIPELINE:
        # Experimental (benchmarks: bench_regimes' sweep): block j + 1's dots are issued before block j
        # is pooled, so the pooling need not wait for the tensor cores (the dots of iteration j are
        # only read in iteration j + 1). Same selection bit for bit as the plain loop below.
        if lo < n_mid:
            b_s = block_dots(b_q, k_ptr, ks_ptr, r2t_row_ptr, lo, q_pos, seq_len, stride_k_s,
                             HEAD_DIM, BLOCK_SIZE, CONTIGUOUS_BLOCKS, False, IEEE_DOT, FP8)
            for i_blk in range(lo, n_mid - 1):
                b_s_next = block_dots(b_q, k_ptr, ks_ptr, r2t_row_ptr, i_blk + 1, q_pos, seq_len, stride_k_s,
                                      HEAD_DIM, BLOCK_SIZE, CONTIGUOUS_BLOCKS, False, IEEE_DOT, FP8)
                b_list, b_sink = _take(b_list, b_sink, pool_block(b_s, scale, SCORE_TYPE, FP8), i_blk,
                                       n_causal, init_blocks, local_blocks, False, POOL_ONLY)
                b_s = b_s_next
            b_list, b_sink = _take(b_list, b_sink, pool_block(b_s, scale, SCORE_TYPE, FP8), n_mid - 1,
                                   n_causal, init_blocks, local_blocks, False, POOL_ONLY)
    else:
        for i_blk in range(lo, n_mid):
            b_pool = score_block(b_q, k_ptr, ks_ptr, r2t_row_ptr, i_blk, q_pos, seq_len, scale, stride_k_s,
                                 HEAD_DIM, BLOCK_SIZE, SCORE_TYPE, CONTIGUOUS_BLOCKS, False, IEEE_DOT, FP8)
            b_list, b_sink = _take(b_list, b_sink, b_pool, i_blk, n_causal, init_blocks, local_blocks, False,
                                   POOL_ONLY)
    for i_blk in range(tl.maximum(lo, n_full), hi):
        b_pool = score_block(b_q, k_ptr, ks_ptr, r2t_row_ptr, i_blk, q_pos, seq_len, scale, stride_k_s,
                             HEAD_DIM, BLOCK_SIZE, SCORE_TYPE, CONTIGUOUS_BLOCKS, True, IEEE_DOT, FP8)
        b_list, b_sink = _take(b_list, b_sink, b_pool, i_blk, n_causal, init_blocks, local_blocks, True,
                               POOL_ONLY)
    if POOL_ONLY:
        # diagnostic (benchmarks only): slot 0 of each row gets the sum's bits, the other slots are not written
        p_out = out_ptr + o_h.to(tl.int64) * stride_o_h + (q_start + o_tok).to(tl.int64) * stride_o_t
        tl.store(p_out, b_sink.to(tl.int32, bitcast=True), mask=m_row)
        return

    m_valid = (b_list > INT64_MIN + TOPK_PAD) & (b_list < INT64_MAX)
    if SPLIT:
        # partial list, unsorted: [num_splits, T, num_heads, TOPK] score + id, id -1 = empty slot
        o_row = (q_start + o_tok).to(tl.int64) * num_heads + o_h
        p_ws = i_s.to(tl.int64) * stride_ws_s + o_row[:, None] * TOPK + o_j[None, :]
        m_ws = m_row[:, None] & (o_j[None, :] < TOPK)
        tl.store(ws_score_ptr + p_ws, tl.where(m_valid, key_score(b_list), float("-inf")), mask=m_ws)
        tl.store(ws_id_ptr + p_ws, tl.where(m_valid, key_block_id(b_list), -1), mask=m_ws)
    else:
        p_out = out_ptr + o_h.to(tl.int64) * stride_o_h + (q_start + o_tok).to(tl.int64) * stride_o_t
        store_sorted_ids(p_out, key_block_id(b_list), m_valid, m_row, TOPK)


@triton.jit(do_not_specialize=["n_rows", "num_splits", "stride_ws_s", "stride_o_h"])
def _indexer_merge_kernel(
    ws_score_ptr, ws_id_ptr, out_ptr, n_rows, num_heads, num_splits, stride_ws_s, stride_o_h, stride_o_t,
    TOPK: tl.constexpr, TOPK_PAD: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Final top-k of each (token, head) row from its num_splits partial lists (same order keys)."""
    o_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    m_row = o_r < n_rows
    o_r64 = o_r.to(tl.int64)
    o_j = tl.arange(0, TOPK_PAD)
    b_list = tl.where(o_j < TOPK, INT64_MIN + o_j.to(tl.int64), INT64_MAX)
    b_list = tl.broadcast_to(b_list[None, :], (BLOCK_R, TOPK_PAD))
    m_ld = m_row[:, None] & (o_j[None, :] < TOPK)
    p_score = ws_score_ptr + o_r64[:, None] * TOPK + o_j[None, :]
    p_id = ws_id_ptr + o_r64[:, None] * TOPK + o_j[None, :]
    for _ in range(0, num_splits):
        b_score = tl.load(p_score, mask=m_ld, other=0.0)
        b_id = tl.load(p_id, mask=m_ld, other=-1)
        p_score += stride_ws_s  # pointer steps: no int32 overflow of split * stride
        p_id += stride_ws_s
        # an empty slot gets INT64_MIN, which never beats any list entry (all are >= INT64_MIN)
        b_key = tl.where(b_id >= 0, order_key(b_score, b_id), INT64_MIN)
        for j in tl.static_range(TOPK):
            b_cand = tl.max(tl.where(o_j[None, :] == j, b_key, INT64_MIN), axis=1)
            b_worst = tl.min(b_list, axis=1)
            m_take = b_cand > b_worst
            b_list = tl.where(m_take[:, None] & (b_list == b_worst[:, None]), b_cand[:, None], b_list)
    m_valid = (b_list > INT64_MIN + TOPK_PAD) & (b_list < INT64_MAX)
    o_t = o_r64 // num_heads
    o_h = o_r64 % num_heads
    p_out = out_ptr + o_h * stride_o_h + o_t * stride_o_t
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


def rows_bucket(max_seqlen_q: int) -> int:
    """Size class of a prefill batch for the autotuner's key (the kernel ignores it): <= 256, <= 1k,
    <= 4k, > 4k query tokens per request. Without it the first call of a key picked the config for
    every later shape, and a server's first prefill is SGLang's 128-token warm-up: the configs of a
    16k chunk ranged 1.28-1.82 ms on an H100 (128k, 1 index head), so a pick made on 128 tokens could
    cost a long prefill up to ~1.4x in its indexer."""
    bucket = 0
    while bucket < 3 and max_seqlen_q > 256 << (2 * bucket):
        bucket += 1
    return bucket


_indexer_prefill_tuned = triton.autotune(
    configs=_configs(),
    # SPLIT, not num_splits: the automatic S changes with the batch's grid, and a key per S would
    # autotune again (~0.5 s, on the serving path) for each new S. rows_bucket: one tuning per size
    # class of the batch (at most 4 per key, each on the first batch of its class)
    key=["num_heads", "HEAD_DIM", "BLOCK_SIZE", "TOPK", "SCORE_TYPE", "CONTIGUOUS_BLOCKS", "SPLIT", "FP8",
         "POOL_ONLY", "rows_bucket"],
    prune_configs_by={"early_config_prune": _prune},
)(_indexer_prefill_kernel)


# Split-K: at most this many ranges per tile (workspace <= MAX_SPLIT_K * 8 B per (token, head, slot)).
MAX_SPLIT_K = 16
SPLIT_K_ENV = "SGLANG_MSA_INDEXER_SPLIT_K"
_SM_COUNT: dict = {}


def _sm_count(device: torch.device) -> int:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


# Fewest key blocks per range the automatic rule makes. Served on an H100 (rank8-12l-split, 2026-12-07),
# 2k-token prompts without a prefix (cookbook, c64) had a 1.35x / 1.23x / 1.01x higher TTFT p50 with the
# split on than off in three repeats: their unsplit grid is small, so the rule split 16 key blocks into up
# to 16 ranges, about one block per range, whose merge and launch cost more than its scan. 16 blocks keeps
# every split measured to pay (16k chunks: S = 5 over >= 128 blocks; 2k over 64k: S = 16 over 512 blocks,
# 1.88x).
MIN_SPLIT_RANGE_BLOCKS = 16


def auto_split_k(programs: int, num_sms: int, key_blocks: Optional[int] = None) -> int:
    """Ranges per query tile from host sizes alone (no device data): 1 when the unsplit grid has >= 3
    programs per SM, else enough ranges for >= 4 programs per SM, capped at MAX_SPLIT_K and, where the
    longest request's key blocks are known, at key_blocks // MIN_SPLIT_RANGE_BLOCKS."""
    if programs <= 0 or programs >= 3 * num_sms:
        return 1
    split = max(1, min(MAX_SPLIT_K, triton.cdiv(4 * num_sms, programs)))
    if key_blocks is not None:
        split = max(1, min(split, key_blocks // MIN_SPLIT_RANGE_BLOCKS))
    return split


def choose_split_k(split_k: Optional[int], programs: int, device: torch.device,
                   key_blocks: Optional[int] = None) -> int:
    """split_k argument > SGLANG_MSA_INDEXER_SPLIT_K (an int >= 1 forces S, ``0``/``1`` = no split;
    unset or ``auto`` = auto_split_k on CUDA, 1 off CUDA (the interpreter)). Clamped to [1, MAX_SPLIT_K].

    ``auto`` is the default: on the H100 every measured 16k chunk (22 points, 1 index head, two cards)
    ran 1.01-1.08x faster split (S = 5) and none slower, and a short extend over a long prefix (an
    agentic turn: ~2.5k tokens over 57k) leaves the unsplit grid ~20-40 programs on 132 SMs."""
    if split_k is None:
        env = os.environ.get(SPLIT_K_ENV, "").strip().lower()
        if env in ("", "auto"):
            split_k = auto_split_k(programs, _sm_count(device), key_blocks) if device.type == "cuda" else 1
        elif env.isdigit():
            split_k = int(env)
        else:
            raise ValueError(f"{SPLIT_K_ENV}={env!r}: expected auto or an integer >= 0")
    return max(1, min(MAX_SPLIT_K, int(split_k)))


def split_workspace_bytes(total_q: int, num_heads: int, topk: int, split_k: int) -> int:
    """Bytes of the split-K workspace: fp32 score + int32 id per (range, token, head, slot); 0 unsplit."""
    return 0 if split_k <= 1 else split_k * total_q * num_heads * topk * 8


def _alloc_split_workspace(split_k, total_q, num_heads, topk, device):
    shape = (split_k, total_q, num_heads, topk)
    return (torch.empty(shape, dtype=torch.float32, device=device),
            torch.empty(shape, dtype=torch.int32, device=device))


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
    max_seqlen_k: Optional[int] = None,
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
    split_k: Optional[int] = None,
    idx_k_scale: Optional[torch.Tensor] = None,
    pool_only: bool = False,
    pipeline_dots: bool = False,
) -> torch.Tensor:
    """Top-k key blocks per (index head, extend token): int32 [H_idx, total_q, topk].

    idx_q [total_q, H_idx, D]; idx_k_cache [max_slots, 1, D] (may be a strided view);
    req_to_token [max_reqs, max_context] int32; req_pool_indices/seq_lens/prefix_lens [B];
    cu_seqlens_q [B+1] int32. page_size tells the slot layout: a multiple of block_size lets a
    block be read as one run of slots. Pass max_seqlen_q (host int) to avoid a device sync.
    Returns block ids of the request's sequence, ascending, -1 padded. Passing block_m (with
    num_warps/num_stages/maxnreg) skips the autotuner.

    split_k: key-block ranges per query tile (1 = the single fused kernel; > 1 = split-K + merge,
    same selection bit for bit). None: SGLANG_MSA_INDEXER_SPLIT_K (an int forces it, ``0``/``1`` turn
    the split off); unset or ``auto`` = auto_split_k on the grid of 128-row tiles, 1 off CUDA (see
    choose_split_k). max_seqlen_k (host int, the longest request's keys) lets the automatic rule keep
    >= MIN_SPLIT_RANGE_BLOCKS key blocks per range; None: the grid alone decides.

    idx_k_scale: the fp8 index path. idx_k_cache then holds float8 e4m3 values and idx_k_scale
    [slots] fp32 their per-slot scales (quant.quantize_index_k); each (token, head) query row is
    quantized to e4m3 in the kernel and scored on fp8 tensor cores. None: the bf16/fp16/fp32 path.

    pool_only: a diagnostic for benchmarks (the same K stream, dots and pooling, no top-k upkeep); the
    output then holds no selection (slot 0 of each row gets a checksum, the rest is left as it was).
    Needs split_k 1.

    pipeline_dots: an experiment for benchmarks (off by default, not used by the backend): the loop
    over fully visible blocks issues block j + 1's dots before pooling block j. Same selection.
    """
    check_common(idx_q, idx_k_cache, topk, init_blocks, local_blocks, score_type, idx_k_scale)
    fp8 = idx_k_scale is not None
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
    ref_rows = block_m or (max(32, h_pad) if interpreting() else max(128, h_pad))
    key_blocks = None if max_seqlen_k is None else triton.cdiv(max_seqlen_k, block_size)
    n_split = choose_split_k(split_k, triton.cdiv(max_seqlen_q, ref_rows // h_pad) * batch, idx_q.device,
                             key_blocks)
    if pool_only and n_split > 1:
        raise ValueError("pool_only (a diagnostic) needs split_k=1")
    if n_split > 1:
        ws_score, ws_id = _alloc_split_workspace(n_split, total_q, num_heads, topk, idx_q.device)
        stride_ws = ws_score.stride(0)
    else:
        ws_score, ws_id, stride_ws = out, out, 0  # unused
    args = (
        idx_q, idx_k_cache, idx_k_scale if fp8 else idx_k_cache, req_to_token, req_pool_indices,
        cu_seqlens_q, seq_lens, prefix_lens, out, ws_score, ws_id,
        num_heads, sm_scale, init_blocks, local_blocks, n_split, rows_bucket(max_seqlen_q),
        idx_q.stride(0), idx_q.stride(1), idx_k_cache.stride(0), req_to_token.stride(0),
        out.stride(0), out.stride(1), stride_ws,
    )
    meta = dict(
        HEAD_DIM=head_dim, H_PAD=h_pad, BLOCK_SIZE=block_size, TOPK=topk,
        TOPK_PAD=triton.next_power_of_2(topk), SCORE_TYPE=score_type,
        CONTIGUOUS_BLOCKS=page_size % block_size == 0, IEEE_DOT=idx_q.dtype == torch.float32 and not fp8,
        SPLIT=n_split > 1, FP8=fp8, POOL_ONLY=pool_only, PIPELINE=pipeline_dots,
    )

    def grid(META):
        return (triton.cdiv(max_seqlen_q, META["BLOCK_M"] // h_pad) * n_split, batch)

    if block_m is not None or interpreting():
        bm = block_m or max(32, h_pad)
        extra = {} if maxnreg is None else {"maxnreg": maxnreg}
        _indexer_prefill_kernel[grid](*args, **meta, BLOCK_M=bm, num_warps=num_warps,
                                      num_stages=num_stages, **extra)
    else:
        _indexer_prefill_tuned[grid](*args, **meta)
    if n_split > 1:
        n_rows = total_q * num_heads
        block_r = 32 if interpreting() else 64
        _indexer_merge_kernel[(triton.cdiv(n_rows, block_r),)](
            ws_score, ws_id, out, n_rows, num_heads, n_split, stride_ws, out.stride(0), out.stride(1),
            TOPK=topk, TOPK_PAD=triton.next_power_of_2(topk), BLOCK_R=block_r, num_warps=4)
    return out
