"""Reverse map by counting sort: the same CSR as ``reverse_map.py`` in ~8 launches instead of a stable sort.

``reverse_map.build_reverse_map`` keys every entry, sorts all ``G x T x topk`` keys (stable) and
searches the bucket bounds: ~20 launches, 0.36-0.69 ms per layer for a 16k chunk at the TP8 layout
on an H100 (benchmarks/results/kernels-*-regimes.json), more than the block-major kernel it feeds.

Here one kernel keys the entries and counts each bucket (atomics), a cumsum gives the bucket bounds,
a second kernel scatters each entry to ``bound + atomic cursor``, and a third cuts the buckets into
work items. Inside a bucket the entries come in no fixed order; the block-major kernel computes each
(token, slot) row on its own, so its output is bit-identical to the sorted map's. Items (bucket,
start, count) are identical too: they depend on the bucket counts only. Device-only, no host sync.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reverse_map import ReverseMap

BLOCK_E = 1024  # entries per program
BLOCK_B = 1024  # buckets per program


@triton.jit(do_not_specialize=["num_entries", "num_tokens", "topk", "bucket_stride_group", "num_buckets",
                               "stride_tg", "stride_tt", "stride_ts"])
def _key_count_kernel(
    topk_ptr, token_pos_ptr, key_base_ptr, key_ptr, count_ptr,
    num_entries, num_tokens, topk, bucket_stride_group, num_buckets, stride_tg, stride_tt, stride_ts,
    BLOCK_SIZE: tl.constexpr, BLOCK: tl.constexpr,
):
    o_e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m_e = o_e < num_entries
    i_s = o_e % topk
    i_t = (o_e // topk) % num_tokens
    i_g = o_e // (topk * num_tokens)
    blk = tl.load(topk_ptr + i_g * stride_tg + i_t * stride_tt + i_s * stride_ts, mask=m_e, other=-1)
    pos = tl.load(token_pos_ptr + i_t, mask=m_e, other=0)
    valid = m_e & (blk >= 0) & (blk * BLOCK_SIZE <= pos)
    key = i_g * bucket_stride_group + tl.load(key_base_ptr + i_t, mask=m_e, other=0) + blk
    key = tl.where(valid, key, num_buckets).to(tl.int32)  # sentinel: dropped
    tl.store(key_ptr + o_e, key, mask=m_e)
    tl.atomic_add(count_ptr + key, 1, mask=valid)


@triton.jit(do_not_specialize=["num_entries", "num_buckets"])
def _scatter_kernel(key_ptr, cursor_ptr, sorted_ptr, num_entries, num_buckets, BLOCK: tl.constexpr):
    o_e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m_e = o_e < num_entries
    key = tl.load(key_ptr + o_e, mask=m_e, other=0)
    valid = m_e & (key < num_buckets)
    slot = tl.atomic_add(cursor_ptr + key, 1, mask=valid)
    tl.store(sorted_ptr + slot, o_e.to(tl.int32), mask=valid)


@triton.jit(do_not_specialize=["num_buckets", "num_items", "item_tokens"])
def _items_kernel(
    count_ptr, bound_ptr, chunk_end_ptr, item_bucket_ptr, item_start_ptr, item_count_ptr,
    num_buckets, num_items, item_tokens, BLOCK: tl.constexpr,
):
    o_b = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m_b = o_b < num_buckets
    count = tl.load(count_ptr + o_b, mask=m_b, other=0)
    chunks = (count + item_tokens - 1) // item_tokens
    first = tl.load(chunk_end_ptr + o_b, mask=m_b, other=0) - chunks
    start = tl.load(bound_ptr + o_b, mask=m_b, other=0)
    for j in range(0, tl.max(chunks, 0)):
        m_j = m_b & (j < chunks) & (first + j < num_items)
        item = first + j
        tl.store(item_bucket_ptr + item, o_b, mask=m_j)
        tl.store(item_start_ptr + item, start + j * item_tokens, mask=m_j)
        tl.store(item_count_ptr + item, tl.minimum(item_tokens, count - j * item_tokens), mask=m_j)


def build_reverse_map_counting(
    topk_idx: torch.Tensor,
    token_pos: torch.Tensor,
    token_key_base: torch.Tensor,
    *,
    block_size: int,
    bucket_stride_group: int,
    num_buckets: int,
    num_items: int,
    item_tokens: int,
) -> ReverseMap:
    """``reverse_map.build_reverse_map``'s contract (same arguments, same items; entries of a bucket in
    any order). Idle items have count 0 and bucket/start 0."""
    device = topk_idx.device
    num_groups, num_tokens, topk = topk_idx.shape
    num_entries = num_groups * num_tokens * topk
    counts = torch.zeros(num_buckets + 1, dtype=torch.int32, device=device)  # + the sentinel's
    keys = torch.empty(max(num_entries, 1), dtype=torch.int32, device=device)
    sorted_entry = torch.empty(max(num_entries, 1), dtype=torch.int32, device=device)
    item_bucket = torch.zeros(num_items, dtype=torch.int32, device=device)
    item_start = torch.zeros(num_items, dtype=torch.int32, device=device)
    item_count = torch.zeros(num_items, dtype=torch.int32, device=device)
    if num_entries:
        grid_e = (triton.cdiv(num_entries, BLOCK_E),)
        _key_count_kernel[grid_e](
            topk_idx, token_pos, token_key_base, keys, counts,
            num_entries, num_tokens, topk, bucket_stride_group, num_buckets,
            topk_idx.stride(0), topk_idx.stride(1), topk_idx.stride(2),
            BLOCK_SIZE=block_size, BLOCK=BLOCK_E,
        )  # fmt: skip
        counts = counts[:num_buckets]
        bounds = torch.cumsum(counts, 0, dtype=torch.int32) - counts  # exclusive
        cursor = bounds.clone()
        _scatter_kernel[grid_e](keys, cursor, sorted_entry, num_entries, num_buckets, BLOCK=BLOCK_E)
        chunk_end = torch.cumsum((counts + (item_tokens - 1)) // item_tokens, 0, dtype=torch.int32)
        _items_kernel[(triton.cdiv(num_buckets, BLOCK_B),)](
            counts, bounds, chunk_end, item_bucket, item_start, item_count,
            num_buckets, num_items, item_tokens, BLOCK=BLOCK_B,
        )  # fmt: skip
    return ReverseMap(sorted_entry=sorted_entry[:num_entries], item_bucket=item_bucket, item_start=item_start,
                      item_count=item_count)
