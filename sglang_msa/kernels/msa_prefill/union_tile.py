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

Kernel variants (``plan(..., prefetch=)``; 0 is the default until measured on GPU):
- 0: per union block, load its id, its slot, then K/V, then the two dots. Compiled for sm_90 (block 128,
  16 tokens x 8 heads, 8 warps), Triton's pipeliner issues block j+1's cp.async at the end of block j
  (after the id -> slot chain) and waits for it first thing in j+1: every K/V load is exposed.
- 1: by hand, block j+2's id and slots and block j+1's K/V (in registers) are loaded during block j.
  Costs registers: the sm_90 build spills (~280 B/thread at 16 x 8 rows, 8 warps; less at 8 x 8).
- 2: the ids (and first slots, for whole-block pages) of 32 union entries are loaded into registers
  at once, so the K/V addresses of the inner loop depend on no load and Triton's pipeliner streams
  K/V through shared memory num_stages - 1 blocks ahead (num_stages 3 by default: 3 x 64 KB of K/V +
  32 KB of Q at block 128, 16 x 8 rows).
1 and 2 take each row's membership from multiplicities precomputed with the union (``UnionMap.mult``,
one [TILE_T] vector per block) instead of comparing the [rows, topk] selection tile every block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .tiles import kv_block_slots, load_block_rows, load_kv_block, online_softmax_step

_SENTINEL = 2**31 - 1  # sorts after every block id
_SENTINEL64 = 2**62  # sorts after every (block, token) key
U_CHUNK = tl.constexpr(32)  # PREFETCH 2: union entries whose block ids / first slots are loaded at once


@dataclass
class UnionMap:
    blocks: torch.Tensor  # [G, NT, U] int32: ascending distinct blocks of each tile, -1 padded
    count: torch.Tensor  # [G, NT] int32: number of blocks in the union
    # [G, NT, U + 1, TILE_T] uint8 (int32 past topk 255), or None: how many times token t of the tile
    # selected its union's block u (0 = not selected); row U is scratch. The kernel then reads one
    # TILE_T vector per block instead of comparing the [rows, topk] selection tile in every iteration.
    mult: torch.Tensor | None = None


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
    multiplicity: bool = False,
) -> UnionMap:
    """Per (KV group, tile) the sorted distinct valid blocks; device ops only, data-independent shapes.

    multiplicity: also the per-token multiplicity of each union block (``UnionMap.mult``)."""
    key = _tile_entries(topk_idx, token_pos, tile_start, tile_len, block_size, tile_tokens)
    if multiplicity:
        return _build_with_mult(key, tile_tokens, topk_idx.shape[-1], max_union)
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


def _build_with_mult(key, tile_tokens, topk, max_union):
    """build_union_map's union plus the multiplicities, from one sort of (block, token) keys.

    Entry e of a tile belongs to its token e // topk. Sorted by (block, token), a block's entries are
    contiguous (its union position is the cumsum of block starts) and a token's repeats of it are one
    run; the last entry of each run writes the run length, so every destination is written once (a
    plain scatter, no atomics) and the invalid entries go to the scratch row."""
    num_groups, num_tiles, n = key.shape
    device = key.device
    e = torch.arange(n, device=device, dtype=torch.int64)
    valid = key != _SENTINEL
    ck = torch.where(valid, key.long() * tile_tokens + e // topk, torch.full_like(e, _SENTINEL64))
    s = torch.sort(ck, dim=-1).values
    live = s != _SENTINEL64
    blk = torch.where(live, s // tile_tokens, torch.full_like(s, -1))
    tok = s % tile_tokens
    new_blk = torch.ones_like(live)
    new_blk[..., 1:] = blk[..., 1:] != blk[..., :-1]
    new_blk &= live
    count = new_blk.sum(-1, dtype=torch.int32)
    upos = torch.cumsum(new_blk, -1, dtype=torch.int64) - 1  # union position of every live entry
    dest = torch.where(new_blk, upos, torch.full_like(upos, max_union))
    buf = torch.full((num_groups, num_tiles, max_union + 1), -1, dtype=torch.int32, device=device)
    buf.scatter_(-1, dest, blk.to(torch.int32))
    run_start = torch.ones_like(live)
    run_start[..., 1:] = s[..., 1:] != s[..., :-1]
    run_last = torch.ones_like(live)
    run_last[..., :-1] = run_start[..., 1:]
    run_last &= live
    first = torch.cummax(torch.where(run_start, e, torch.zeros_like(e)).expand_as(s), -1).values
    length = e - first + 1
    mdest = torch.where(run_last, upos * tile_tokens + tok, torch.full_like(upos, max_union * tile_tokens))
    mdtype = torch.uint8 if topk < 256 else torch.int32
    mult = torch.zeros((num_groups, num_tiles, (max_union + 1) * tile_tokens), dtype=mdtype, device=device)
    mult.scatter_(-1, mdest, length.to(mdtype))
    return UnionMap(
        blocks=buf[..., :max_union].contiguous(),
        count=count,
        mult=mult.view(num_groups, num_tiles, max_union + 1, tile_tokens),
    )


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


@triton.jit
def _attend_block(b_q, b_k, b_v, o_k, m_k, q_pos, b_mult, b_m, b_l, b_acc, sm_scale_log2):
    """One union block into the online softmax: b_mult [ROWS] fp32 is the block's multiplicity in each
    row's selection (0 -> masked, 2 -> counted twice)."""
    b_s = tl.dot(b_q, tl.trans(b_k)) * sm_scale_log2 + tl.log2(tl.maximum(b_mult, 1.0))[:, None]
    m_s = (b_mult > 0)[:, None] & (o_k[None, :] <= q_pos[:, None]) & m_k[None, :]
    b_s = tl.where(m_s, b_s, float("-inf"))
    return online_softmax_step(b_s, b_v, b_m, b_l, b_acc)


@triton.jit(do_not_specialize=["num_tiles", "max_union", "stride_tg"])
def union_tile_fwd_kernel(
    q_ptr,  # [T, HQ, D]
    k_ptr,  # [slots, HK, D]
    v_ptr,
    o_ptr,  # [T, HQ, D]
    topk_idx_ptr,  # [HK, T, topk]
    union_ptr,  # [HK, NT, U] int32
    union_count_ptr,  # [HK, NT] int32
    mult_ptr,  # [HK, NT, U + 1, TILE_T] multiplicities (MULT only)
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
    PREFETCH: tl.constexpr,  # 0: plain loop; 1: K/V prefetched by hand; 2: block table in registers (below)
    MULT: tl.constexpr,  # membership from mult_ptr (one TILE_T vector per block), not the selection tile
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
    m_tok = o_tok < n_tok
    m_row = m_tok & (o_h < GROUP)
    i_t = t0 + o_tok.to(tl.int64)
    head = i_g * GROUP + o_h
    b_q = tl.load(q_ptr + i_t[:, None] * stride_qn + head[:, None] * stride_qh + o_d[None, :], mask=m_row[:, None], other=0.0)
    q_pos = tl.load(token_pos_ptr + i_t, mask=m_tok, other=-1)  # padded rows see no key
    if not MULT:
        # each row's token selection (rows of one token repeat it; the loads hit the cache)
        o_s = tl.arange(0, BLOCK_TOPK)
        p_sel = topk_idx_ptr + i_g * stride_tg + i_t[:, None] * stride_tt + o_s[None, :] * stride_ts
        b_sel = tl.load(p_sel, mask=m_tok[:, None] & (o_s < topk)[None, :], other=-1).to(tl.int32)

    b_m = tl.full((ROWS,), -1.0e30, dtype=tl.float32)
    b_l = tl.zeros((ROWS,), dtype=tl.float32)
    b_acc = tl.zeros((ROWS, HEAD_DIM), dtype=tl.float32)
    n_union = tl.load(union_count_ptr + i_g * num_tiles + i_tile)
    p_union = union_ptr + (i_g * num_tiles + i_tile) * max_union
    p_mult = mult_ptr + (i_g * num_tiles + i_tile) * ((max_union + 1) * TILE_T) + o_tok
    if PREFETCH == 1:
        # Software pipelining by hand, as block_major's Q gather: in the chain block id -> slot -> K/V
        # every address depends on the previous load. Block j+2's id and slots are looked up, block
        # j+1's K comes in during block j's softmax and PV dot and its V during j+1's QK dot (issued
        # after the dot that frees the registers of the tile it replaces). Loads past the union are masked.
        blk_c = tl.load(p_union, mask=n_union > 0, other=0)
        slots_c, o_k_c, m_k_c = kv_block_slots(p_r2t, blk_c, seq_len, n_union > 0, BLOCK, PAGED_BLOCK)
        k_c = load_block_rows(k_ptr, slots_c, m_k_c, i_g, stride_ks, stride_kh, HEAD_DIM)
        v_c = load_block_rows(v_ptr, slots_c, m_k_c, i_g, stride_vs, stride_vh, HEAD_DIM)
        if MULT:
            mult_c = tl.load(p_mult, mask=m_tok & (n_union > 0), other=0)
        blk_n = tl.load(p_union + 1, mask=n_union > 1, other=0)
        slots_n, o_k_n, m_k_n = kv_block_slots(p_r2t, blk_n, seq_len, n_union > 1, BLOCK, PAGED_BLOCK)
        for j in range(0, n_union):
            live2 = j + 2 < n_union
            blk_nn = tl.load(p_union + j + 2, mask=live2, other=0)
            slots_nn, o_k_nn, m_k_nn = kv_block_slots(p_r2t, blk_nn, seq_len, live2, BLOCK, PAGED_BLOCK)
            if MULT:
                b_mult = mult_c.to(tl.float32)
                mult_c = tl.load(p_mult + (j + 1) * TILE_T, mask=m_tok & (j + 1 < n_union), other=0)
            else:
                b_mult = tl.sum((b_sel == blk_c).to(tl.float32), 1)
            b_s = tl.dot(b_q, tl.trans(k_c)) * sm_scale_log2 + tl.log2(tl.maximum(b_mult, 1.0))[:, None]
            k_c = load_block_rows(k_ptr, slots_n, m_k_n, i_g, stride_ks, stride_kh, HEAD_DIM)
            m_s = (b_mult > 0)[:, None] & (o_k_c[None, :] <= q_pos[:, None]) & m_k_c[None, :]
            b_s = tl.where(m_s, b_s, float("-inf"))
            b_m, b_l, b_acc = online_softmax_step(b_s, v_c, b_m, b_l, b_acc)
            v_c = load_block_rows(v_ptr, slots_n, m_k_n, i_g, stride_vs, stride_vh, HEAD_DIM)
            blk_c, o_k_c, m_k_c = blk_n, o_k_n, m_k_n
            blk_n, slots_n, o_k_n, m_k_n = blk_nn, slots_nn, o_k_nn, m_k_nn
    elif PREFETCH == 2:
        # The block ids (and, with whole-block pages, their first slots) of U_CHUNK union entries are
        # loaded at once into registers, so the K/V addresses of the inner loop come from no load in
        # the loop and Triton's pipeliner streams K/V into shared memory (cp.async) num_stages - 1
        # blocks ahead: no register cost, unlike PREFETCH 1. (With the id and slot loaded in the loop
        # it issues block j+1's copy at the end of block j and waits for it at once.)
        o_u = tl.arange(0, U_CHUNK)
        for j0 in range(0, n_union, U_CHUNK):
            m_u = j0 + o_u < n_union
            ids = tl.load(p_union + j0 + o_u, mask=m_u, other=0)
            if PAGED_BLOCK:
                firsts = tl.load(p_r2t + ids * BLOCK, mask=m_u, other=0)
            for jj in range(0, tl.minimum(U_CHUNK, n_union - j0)):
                i_blk = tl.sum(tl.where(o_u == jj, ids, 0))
                o_k = i_blk * BLOCK + tl.arange(0, BLOCK)
                m_k = o_k < seq_len
                if PAGED_BLOCK:
                    slots = tl.sum(tl.where(o_u == jj, firsts, 0)).to(tl.int64) + tl.arange(0, BLOCK).to(tl.int64)
                else:
                    slots = tl.load(p_r2t + o_k, mask=m_k, other=0).to(tl.int64)
                b_k = load_block_rows(k_ptr, slots, m_k, i_g, stride_ks, stride_kh, HEAD_DIM)
                b_v = load_block_rows(v_ptr, slots, m_k, i_g, stride_vs, stride_vh, HEAD_DIM)
                if MULT:
                    b_mult = tl.load(p_mult + (j0 + jj) * TILE_T, mask=m_tok, other=0).to(tl.float32)
                else:
                    b_mult = tl.sum((b_sel == i_blk).to(tl.float32), 1)
                b_m, b_l, b_acc = _attend_block(b_q, b_k, b_v, o_k, m_k, q_pos, b_mult, b_m, b_l, b_acc, sm_scale_log2)
    else:
        for j in range(0, n_union):
            i_blk = tl.load(p_union + j)
            b_k, b_v, o_k, m_k = load_kv_block(
                k_ptr, v_ptr, p_r2t, i_g, i_blk, seq_len,
                stride_ks, stride_kh, stride_vs, stride_vh, BLOCK, HEAD_DIM, PAGED_BLOCK,
            )  # fmt: skip
            if MULT:
                b_mult = tl.load(p_mult + j * TILE_T, mask=m_tok, other=0).to(tl.float32)
            else:
                # multiplicity of the block in each row's selection: 0 -> masked, 2 -> counted twice
                b_mult = tl.sum((b_sel == i_blk).to(tl.float32), 1)
            b_m, b_l, b_acc = _attend_block(b_q, b_k, b_v, o_k, m_k, q_pos, b_mult, b_m, b_l, b_acc, sm_scale_log2)
    b_o = b_acc / tl.maximum(b_l, 1.0e-30)[:, None]  # nothing selected: b_acc == 0 -> zeros
    p_o = o_ptr + i_t[:, None] * stride_on + head[:, None] * stride_oh + o_d[None, :]
    tl.store(p_o, b_o.to(o_ptr.dtype.element_ty), mask=m_row[:, None])


def launch_union_tile(plan, q, k_cache, v_cache, req_to_token, topk_idx, out):
    """plan.prefetch picks the hand-pipelined loop; a union map built with multiplicities (umap.mult)
    picks the precomputed membership."""
    umap = plan.umap
    mult = umap.mult is not None
    grid = (plan.num_tiles, plan.num_kv_heads)
    union_tile_fwd_kernel[grid](
        q, k_cache, v_cache, out, topk_idx, umap.blocks, umap.count, umap.mult if mult else umap.blocks,
        plan.tile_start, plan.tile_len, plan.tile_req, plan.token_pos,
        req_to_token, plan.req_pool_indices, plan.seq_lens,
        plan.sm_scale_log2, plan.topk, plan.num_tiles, plan.max_union,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        out.stride(0), out.stride(1), topk_idx.stride(0), topk_idx.stride(1), topk_idx.stride(2),
        req_to_token.stride(0),
        GROUP=plan.group, BLOCK_H=plan.block_h, HEAD_DIM=plan.head_dim, BLOCK=plan.block_size,
        TILE_T=plan.tile_tokens, BLOCK_TOPK=max(2, triton.next_power_of_2(plan.topk)),
        PAGED_BLOCK=plan.paged_block, PREFETCH=int(plan.prefetch), MULT=mult,
        num_warps=plan.num_warps, num_stages=plan.num_stages,
    )  # fmt: skip
