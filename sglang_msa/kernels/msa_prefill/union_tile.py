"""Union-tile sparse prefill: one program per (query tile, KV group), no partials, no combine.

A query tile is ``TILE_T`` consecutive tokens of one request; with the KV group's q heads they form
the MMA rows (``TILE_T * BLOCK_H``, e.g. 8 tokens x 16 heads = 128 rows for M3). ``topk_idx`` is
per (KV group, token): all q heads of a group share their token's selection, so the tile's key blocks
are the union of the blocks its tokens selected. The program walks that union (ascending), computes
QK^T for the whole tile, masks the (row, key) pairs whose token did not select the block (and the
causal mask inside a token's own block), keeps an online softmax in registers and writes o directly.

Exact (naive.py's semantics): a block listed twice in a row counts twice (its scores get
+log2(multiplicity)); ``-1`` and blocks starting after the token are ignored; a row with nothing
selected gets zeros.

When it pays: the work is ``union x rows`` instead of ``topk x rows``, and each union block's K/V is
loaded once per tile instead of once per (token, slot). With coherent selections (neighbouring rows
share ~0.9 of their blocks, as real indexers give) the union of an 8-16-token tile is a small
multiple of topk and there is no partial workspace round trip. With random selections the union
approaches ``TILE_T * topk`` blocks and block-major wins. ``mean_tile_union`` measures the union on
the device so a caller can choose; see ``prefer_union_tile`` for the (GPU-unmeasured) rule.

The union is built on the device with fixed shapes (no host sync): each tile's ``TILE_T * topk``
block ids (invalid ones replaced by a sentinel) are sorted per row, first occurrences are kept and
compacted with a cumsum + scatter into a ``[G, num_tiles, max_union]`` buffer padded with -1, where
``max_union = min(TILE_T * topk, causal blocks of the longest request)`` is fixed by ``plan``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .tiles import load_kv_block

_SENTINEL = 2**31 - 1  # sorts after every block id


@dataclass
class UnionMap:
    blocks: torch.Tensor  # [G, NT, U] int32: ascending distinct blocks of each tile, -1 padded
    count: torch.Tensor  # [G, NT] int32: number of blocks in the union


def max_union_blocks(tile_tokens: int, topk: int, seq_lens: list[int], block_size: int) -> int:
    """Fixed width of the union buffer: no tile can select more distinct causal blocks."""
    causal = max((triton.cdiv(n, block_size) for n in seq_lens), default=1)
    return max(1, min(tile_tokens * topk, causal))


def _tile_entries(topk_idx, token_pos, tile_start, tile_len, block_size, tile_tokens):
    """Block ids of each tile's tokens [G, NT, TILE_T * topk], invalid entries = sentinel."""
    num_groups, num_tokens, topk = topk_idx.shape
    o_j = torch.arange(tile_tokens, device=topk_idx.device, dtype=torch.int32)
    tok = tile_start.view(-1, 1) + o_j.view(1, -1)  # [NT, TILE_T]
    live = o_j.view(1, -1) < tile_len.view(-1, 1)
    tok = torch.where(live, tok, torch.zeros_like(tok)).clamp_max(max(num_tokens - 1, 0)).long()
    blk = topk_idx[:, tok, :].to(torch.int32)  # [G, NT, TILE_T, topk]
    pos = token_pos[tok].view(1, *tok.shape, 1)
    valid = live.view(1, *live.shape, 1) & (blk >= 0) & (blk * block_size <= pos)
    key = torch.where(valid, blk, torch.full_like(blk, _SENTINEL))
    return key.view(num_groups, tok.shape[0], tile_tokens * topk)


def build_union_map(
    topk_idx: torch.Tensor,
    token_pos: torch.Tensor,
    tile_start: torch.Tensor,
    tile_len: torch.Tensor,
    *,
    block_size: int,
    tile_tokens: int,
    max_union: int,
) -> UnionMap:
    """Per (KV group, tile) the sorted distinct valid blocks; device ops only, data-independent shapes."""
    key = _tile_entries(topk_idx, token_pos, tile_start, tile_len, block_size, tile_tokens)
    s = torch.sort(key, dim=-1).values
    first = torch.ones_like(s, dtype=torch.bool)
    first[..., 1:] = s[..., 1:] != s[..., :-1]
    first &= s != _SENTINEL
    count = first.sum(-1, dtype=torch.int32)
    dest = torch.cumsum(first, -1, dtype=torch.int32) - 1
    dest = torch.where(first, dest, torch.full_like(dest, max_union)).long()  # the rest -> a trash column
    buf = torch.full((*s.shape[:2], max_union + 1), -1, dtype=torch.int32, device=s.device)
    buf.scatter_(-1, dest, s)
    return UnionMap(blocks=buf[..., :max_union].contiguous(), count=count)


def mean_tile_union(
    topk_idx: torch.Tensor, token_pos: torch.Tensor, token_req: torch.Tensor, *, block_size: int, tile_tokens: int
) -> torch.Tensor:
    """Mean number of distinct valid blocks per (KV group, query tile): a 0-dim fp32 device tensor, no sync.

    Tiles are ``tile_tokens`` consecutive tokens of one request, as in the union-tile kernel (the
    plan's ``token_pos`` / ``token_req`` give the batch layout). Compare it with topk, e.g. through
    ``prefer_union_tile``.
    """
    num_groups, num_tokens, topk = topk_idx.shape
    device = topk_idx.device
    if num_tokens == 0:
        return torch.zeros((), dtype=torch.float32, device=device)
    t = torch.arange(num_tokens, device=device, dtype=torch.int64)
    req = token_req.long()
    is_first = torch.ones(num_tokens, dtype=torch.bool, device=device)
    is_first[1:] = req[1:] != req[:-1]
    first_tok = torch.cummax(torch.where(is_first, t, torch.zeros_like(t)), 0).values
    local = t - first_tok
    starts = is_first | (local % tile_tokens == 0)
    tile = torch.cumsum(starts.long(), 0) - 1  # global tile id of every token
    num_tiles = starts.sum()
    blk = topk_idx.long()
    valid = (blk >= 0) & (blk * block_size <= token_pos.long().view(1, -1, 1))
    span = 1 << 31  # block ids < 2^31; (group, tile) < 2^32 keeps the key in int64
    g = torch.arange(num_groups, device=device, dtype=torch.int64).view(-1, 1, 1)
    key = (g * num_tokens + tile.view(1, -1, 1)) * span + blk.clamp_min(0)
    key = torch.where(valid, key, torch.full_like(key, -1)).view(-1)
    s = torch.sort(key).values
    new = torch.ones_like(s, dtype=torch.bool)
    new[1:] = s[1:] != s[:-1]
    distinct = (new & (s >= 0)).sum()
    return distinct.float() / (num_tiles * num_groups).float()


# The rule we would use to pick union-tile over block-major, from the cost model only (no GPU
# figures yet): union-tile does union/topk times the useful MMA work but skips the partials round
# trip (~25% of block-major's prefill time) and the reverse map, so it should win while the union
# stays within ~2.5x topk. Not wired into "auto" until measured.
UNION_TILE_MAX_RATIO = 2.5


def prefer_union_tile(mean_union: torch.Tensor, topk: int, max_ratio: float = UNION_TILE_MAX_RATIO) -> torch.Tensor:
    """Bool device tensor: mean union per tile <= max_ratio * topk (read it on the host only when planning)."""
    return mean_union <= max_ratio * topk


@triton.jit(do_not_specialize=["num_tiles", "max_union", "stride_tg"])
def union_tile_fwd_kernel(
    q_ptr,  # [T, HQ, D]
    k_ptr,  # [slots, HK, D]
    v_ptr,
    o_ptr,  # [T, HQ, D]
    topk_idx_ptr,  # [HK, T, topk]
    union_ptr,  # [HK, NT, U] int32
    union_count_ptr,  # [HK, NT] int32
    tile_start_ptr,  # [NT] first token of each tile
    tile_len_ptr,  # [NT] tokens in the tile
    tile_req_ptr,  # [NT] request of each tile
    token_pos_ptr,  # [T] absolute position of each query token
    req_to_token_ptr,
    req_pool_ptr,
    seq_lens_ptr,
    sm_scale_log2,
    topk,
    num_tiles,
    max_union,
    stride_qn,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    stride_on,
    stride_oh,
    stride_tg,
    stride_tt,
    stride_ts,
    stride_r2t,
    GROUP: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK: tl.constexpr,
    TILE_T: tl.constexpr,
    BLOCK_TOPK: tl.constexpr,
    PAGED_BLOCK: tl.constexpr,
):
    i_tile = tl.program_id(0)
    i_g = tl.program_id(1).to(tl.int64)
    t0 = tl.load(tile_start_ptr + i_tile).to(tl.int64)
    n_tok = tl.load(tile_len_ptr + i_tile)
    i_r = tl.load(tile_req_ptr + i_tile)
    seq_len = tl.load(seq_lens_ptr + i_r)
    sid = tl.load(req_pool_ptr + i_r).to(tl.int64)
    p_r2t = req_to_token_ptr + sid * stride_r2t

    ROWS: tl.constexpr = TILE_T * BLOCK_H
    o_row = tl.arange(0, ROWS)
    o_tok = o_row // BLOCK_H
    o_h = o_row % BLOCK_H
    o_d = tl.arange(0, HEAD_DIM)
    o_s = tl.arange(0, BLOCK_TOPK)
    m_tok = o_tok < n_tok
    m_row = m_tok & (o_h < GROUP)
    i_t = t0 + o_tok.to(tl.int64)
    head = i_g * GROUP + o_h
    b_q = tl.load(q_ptr + i_t[:, None] * stride_qn + head[:, None] * stride_qh + o_d[None, :], mask=m_row[:, None], other=0.0)
    q_pos = tl.load(token_pos_ptr + i_t, mask=m_tok, other=-1)  # padded rows see no key
    # each row's token selection (rows of one token repeat it; the loads hit the cache)
    p_sel = topk_idx_ptr + i_g * stride_tg + i_t[:, None] * stride_tt + o_s[None, :] * stride_ts
    b_sel = tl.load(p_sel, mask=m_tok[:, None] & (o_s < topk)[None, :], other=-1).to(tl.int32)

    b_m = tl.full((ROWS,), -1.0e30, dtype=tl.float32)
    b_l = tl.zeros((ROWS,), dtype=tl.float32)
    b_acc = tl.zeros((ROWS, HEAD_DIM), dtype=tl.float32)
    n_union = tl.load(union_count_ptr + i_g * num_tiles + i_tile)
    p_union = union_ptr + (i_g * num_tiles + i_tile) * max_union
    for j in range(0, n_union):
        i_blk = tl.load(p_union + j)
        b_k, b_v, o_k, m_k = load_kv_block(
            k_ptr, v_ptr, p_r2t, i_g, i_blk, seq_len,
            stride_ks, stride_kh, stride_vs, stride_vh, BLOCK, HEAD_DIM, PAGED_BLOCK,
        )  # fmt: skip
        # multiplicity of the block in each row's selection: 0 -> masked, 2 -> counted twice
        b_mult = tl.sum((b_sel == i_blk).to(tl.float32), 1)
        b_s = tl.dot(b_q, tl.trans(b_k)) * sm_scale_log2 + tl.log2(tl.maximum(b_mult, 1.0))[:, None]
        m_s = (b_mult > 0)[:, None] & (o_k[None, :] <= q_pos[:, None]) & m_k[None, :]
        b_s = tl.where(m_s, b_s, float("-inf"))
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_p = tl.exp2(b_s - b_m_new[:, None])
        alpha = tl.exp2(b_m - b_m_new)
        b_l = b_l * alpha + tl.sum(b_p, 1)
        b_acc = b_acc * alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v)
        b_m = b_m_new
    b_o = b_acc / tl.maximum(b_l, 1.0e-30)[:, None]  # nothing selected: b_acc == 0 -> zeros
    p_o = o_ptr + i_t[:, None] * stride_on + head[:, None] * stride_oh + o_d[None, :]
    tl.store(p_o, b_o.to(o_ptr.dtype.element_ty), mask=m_row[:, None])


def launch_union_tile(plan, q, k_cache, v_cache, req_to_token, topk_idx, out):
    umap = plan.umap
    grid = (plan.num_tiles, plan.num_kv_heads)
    union_tile_fwd_kernel[grid](
        q, k_cache, v_cache, out, topk_idx, umap.blocks, umap.count,
        plan.tile_start, plan.tile_len, plan.tile_req, plan.token_pos,
        req_to_token, plan.req_pool_indices, plan.seq_lens,
        plan.sm_scale_log2, plan.topk, plan.num_tiles, plan.max_union,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        out.stride(0), out.stride(1), topk_idx.stride(0), topk_idx.stride(1), topk_idx.stride(2),
        req_to_token.stride(0),
        GROUP=plan.group, BLOCK_H=plan.block_h, HEAD_DIM=plan.head_dim, BLOCK=plan.block_size,
        TILE_T=plan.tile_tokens, BLOCK_TOPK=max(2, triton.next_power_of_2(plan.topk)),
        PAGED_BLOCK=plan.paged_block,
        num_warps=plan.num_warps, num_stages=plan.num_stages,
    )  # fmt: skip
