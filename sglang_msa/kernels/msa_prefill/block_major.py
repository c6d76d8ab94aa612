"""KV-block-major sparse prefill: one program per (KV group, block, item of gathered queries).

The program loads its K/V block once, then walks the item's queries CHUNK tokens at a time: CHUNK
tokens x the group's q heads form one MMA tile (8 x 16 = 128 rows for M3). Each (token, slot) gets
a block-local softmax partial: o normalised by its own sum, plus lse (log2 domain), written to a
workspace indexed by the entry id (g * T + t) * topk + s; ``combine.py`` merges a token's partials.

Cost model (H200, 64k tokens, 64/4 heads, top-16 random blocks): 4.2 TFLOP useful, and every
(token, slot) moves its Q rows in (4 KB, mostly L2) and its bf16 partial out (4 KB) -- 17 GB of
workspace written here and read back by the combine (4.6 ms at ~3.9 TB/s). This kernel: 14.3 ms
(~295 TFLOP/s); it is latency-bound, which is why the Q gather is pipelined by hand (PREFETCH) and
64-row tiles on 4 warps (two programs per SM) beat 128-row tiles on 8 warps.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tiles import load_kv_block


@triton.jit(do_not_specialize=["num_tokens", "num_blocks_total", "bucket_stride_group"])
def block_major_fwd_kernel(
    q_ptr,  # [T, HQ, D]
    k_ptr,  # [slots, HK, D]
    v_ptr,
    ws_o_ptr,  # [E * GROUP, D]
    ws_lse_ptr,  # [E * GROUP] fp32, log2 domain
    item_bucket_ptr,
    item_start_ptr,
    item_count_ptr,
    sorted_entry_ptr,
    block_req_ptr,  # [NB] request of each global block
    block_local_ptr,  # [NB] logical block id inside its request
    token_pos_ptr,  # [T] absolute position of each query token
    req_to_token_ptr,
    req_pool_ptr,
    seq_lens_ptr,
    sm_scale_log2,
    num_tokens,
    topk,
    num_blocks_total,
    bucket_stride_group,
    stride_qn,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    stride_r2t,
    GROUP: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK: tl.constexpr,
    CHUNK: tl.constexpr,
    PAGED_BLOCK: tl.constexpr,
    PREFETCH: tl.constexpr,
):
    i_w = tl.program_id(0)
    n = tl.load(item_count_ptr + i_w)
    if n == 0:
        return
    bucket = tl.load(item_bucket_ptr + i_w)
    start = tl.load(item_start_ptr + i_w)
    i_g = bucket // bucket_stride_group
    i_gb = bucket % num_blocks_total
    i_r = tl.load(block_req_ptr + i_gb)
    i_blk = tl.load(block_local_ptr + i_gb)
    seq_len = tl.load(seq_lens_ptr + i_r)
    sid = tl.load(req_pool_ptr + i_r).to(tl.int64)
    b_k, b_v, o_k, m_k = load_kv_block(
        k_ptr, v_ptr, req_to_token_ptr + sid * stride_r2t, i_g, i_blk, seq_len,
        stride_ks, stride_kh, stride_vs, stride_vh, BLOCK, HEAD_DIM, PAGED_BLOCK,
    )  # fmt: skip
    b_kt = tl.trans(b_k)

    ROWS: tl.constexpr = CHUNK * BLOCK_H
    o_row = tl.arange(0, ROWS)
    o_tok = o_row // BLOCK_H
    o_h = o_row % BLOCK_H
    o_d = tl.arange(0, HEAD_DIM)
    m_h = o_h < GROUP
    head = (i_g * GROUP + o_h).to(tl.int64)
    p_entry = sorted_entry_ptr + start + o_tok
    if PREFETCH:
        # software pipelining by hand: the gathered Q rows of chunk i+1 and the entry ids of chunk
        # i+2 are in flight while chunk i computes (their addresses depend on earlier loads, which
        # Triton's pipeliner does not overlap)
        e_cur = tl.load(p_entry, mask=o_tok < n, other=0)
        t_cur = ((e_cur // topk) % num_tokens).to(tl.int64)
        q_cur = tl.load(
            q_ptr + t_cur[:, None] * stride_qn + head[:, None] * stride_qh + o_d[None, :],
            mask=((o_tok < n) & m_h)[:, None], other=0.0,
        )
        pos_cur = tl.load(token_pos_ptr + t_cur, mask=o_tok < n, other=0)
        e_next = tl.load(p_entry + CHUNK, mask=(CHUNK + o_tok) < n, other=0)
    for j0 in range(0, n, CHUNK):
        m_tok = (j0 + o_tok) < n
        m_row = m_tok & m_h
        if PREFETCH:
            e = e_cur
            b_q = q_cur
            q_pos = pos_cur
            m_next = (j0 + CHUNK + o_tok) < n
            t_next = ((e_next // topk) % num_tokens).to(tl.int64)
            q_cur = tl.load(
                q_ptr + t_next[:, None] * stride_qn + head[:, None] * stride_qh + o_d[None, :],
                mask=(m_next & m_h)[:, None], other=0.0,
            )
            pos_cur = tl.load(token_pos_ptr + t_next, mask=m_next, other=0)
            e_cur = e_next
            e_next = tl.load(p_entry + j0 + 2 * CHUNK, mask=(j0 + 2 * CHUNK + o_tok) < n, other=0)
        else:
            e = tl.load(p_entry + j0, mask=m_tok, other=0)
            i_t = ((e // topk) % num_tokens).to(tl.int64)
            q_pos = tl.load(token_pos_ptr + i_t, mask=m_tok, other=0)
            p_q = q_ptr + i_t[:, None] * stride_qn + head[:, None] * stride_qh + o_d[None, :]
            b_q = tl.load(p_q, mask=m_row[:, None], other=0.0)
        b_s = tl.dot(b_q, b_kt) * sm_scale_log2
        m_s = (o_k[None, :] <= q_pos[:, None]) & m_k[None, :]
        b_s = tl.where(m_s, b_s, float("-inf"))
        # the reverse map keeps only blocks starting at or before the token, so a live row has a
        # finite max; padded rows are clamped to stay NaN-free and are not stored
        b_m = tl.maximum(tl.max(b_s, 1), -1.0e30)
        b_p = tl.exp2(b_s - b_m[:, None])
        b_l = tl.maximum(tl.sum(b_p, 1), 1.0e-30)
        b_o = tl.dot(b_p.to(b_v.dtype), b_v) / b_l[:, None]
        b_lse = b_m + tl.log2(b_l)
        row = e.to(tl.int64) * GROUP + o_h
        tl.store(ws_o_ptr + row[:, None] * HEAD_DIM + o_d[None, :], b_o.to(ws_o_ptr.dtype.element_ty), mask=m_row[:, None])
        tl.store(ws_lse_ptr + row, b_lse, mask=m_row)


def launch_block_major(plan, q, k_cache, v_cache, req_to_token):
    rmap = plan.rmap
    grid = (plan.num_items,)
    block_major_fwd_kernel[grid](
        q, k_cache, v_cache, plan.ws_o, plan.ws_lse,
        rmap.item_bucket, rmap.item_start, rmap.item_count, rmap.sorted_entry,
        plan.block_req, plan.block_local, plan.token_pos,
        req_to_token, plan.req_pool_indices, plan.seq_lens,
        plan.sm_scale_log2, plan.num_tokens, plan.topk, plan.num_blocks_total, plan.bucket_stride_group,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        req_to_token.stride(0),
        GROUP=plan.group, BLOCK_H=plan.block_h, HEAD_DIM=plan.head_dim, BLOCK=plan.block_size,
        CHUNK=plan.chunk_tokens, PAGED_BLOCK=plan.paged_block, PREFETCH=plan.prefetch,
        num_warps=plan.num_warps, num_stages=plan.num_stages,
    )  # fmt: skip
