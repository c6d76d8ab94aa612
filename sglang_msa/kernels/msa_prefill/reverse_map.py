"""Reverse map for the KV-block-major kernel: for each selected (KV group, block) the query tokens.

The forward map ``topk_idx[g, t, s]`` (token -> blocks) is turned into CSR order (block -> tokens):
every valid entry ``e = (g * T + t) * topk + s`` gets a bucket key ``(g, segment(t), global block)``
and a stable sort groups the entries by key, keeping token order inside a bucket, so the result is
deterministic. Buckets are then cut into work items of at most ``item_tokens`` entries; the grid is
sized by an upper bound so that building the map never syncs with the host (idle items have
count 0).

``segment(t) = t // seg_tokens`` splits the query range: all items of one segment run next to each
other, so the segment's queries stay in L2 while its blocks are visited (without it, every block
re-reads queries from the whole sequence).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ReverseMap:
    sorted_entry: torch.Tensor  # [E] int32: entry ids in bucket order
    item_bucket: torch.Tensor  # [W] int32
    item_start: torch.Tensor  # [W] int32: first position in sorted_entry
    item_count: torch.Tensor  # [W] int32: entries of the item, 0 for idle programs


def max_work_items(num_entries: int, num_buckets: int, item_tokens: int) -> int:
    """Upper bound of sum(ceil(count_b / item_tokens)) over buckets: each bucket wastes < 1 item."""
    return num_entries // item_tokens + min(num_entries, num_buckets) + 1


def build_reverse_map(
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
    """Device-only (no host sync) CSR construction.

    token_key_base[t] = segment(t) * num_blocks_total + first global block of t's request, so the
    bucket of entry (g, t, s) is g * bucket_stride_group + token_key_base[t] + topk_idx[g, t, s].
    Entries that are -1 or lie wholly after the token (block * block_size > position) are dropped.
    """
    device = topk_idx.device
    num_groups, num_tokens, topk = topk_idx.shape
    blk = topk_idx.to(torch.int32)
    valid = (blk >= 0) & (blk * block_size <= token_pos.view(1, -1, 1))
    group_base = torch.arange(num_groups, device=device, dtype=torch.int32).view(-1, 1, 1) * bucket_stride_group
    key = group_base + token_key_base.view(1, -1, 1) + blk
    key = torch.where(valid, key, torch.full_like(key, num_buckets))  # sentinel sorts last
    sorted_key, order = torch.sort(key.reshape(-1), stable=True)  # reshape: topk_idx may be a strided view
    sorted_key = sorted_key.contiguous()

    bucket_ids = torch.arange(num_buckets + 1, device=device, dtype=torch.int32)
    bounds = torch.searchsorted(sorted_key, bucket_ids, out_int32=True)  # [num_buckets + 1]
    counts = bounds[1:] - bounds[:-1]
    chunks = (counts + (item_tokens - 1)) // item_tokens
    chunk_end = torch.cumsum(chunks, 0, dtype=torch.int32)

    items = torch.arange(num_items, device=device, dtype=torch.int32)
    item_bucket = torch.searchsorted(chunk_end, items, right=True, out_int32=True)
    live = item_bucket < num_buckets
    bucket = item_bucket.clamp_max(num_buckets - 1).long()
    first_item = chunk_end[bucket] - chunks[bucket]
    start = bounds[bucket] + (items - first_item) * item_tokens
    count = (bounds[bucket + 1] - start).clamp(0, item_tokens)
    count = torch.where(live, count, torch.zeros_like(count))
    return ReverseMap(
        sorted_entry=order.to(torch.int32),
        item_bucket=bucket.to(torch.int32),
        item_start=start.to(torch.int32),
        item_count=count.to(torch.int32),
    )
