"""Query-major sparse prefill: one program per (query token, KV group) walking its selected blocks.

The group's q heads form the MMA rows (16 for M3), and each selected block's K/V is loaded for this
token alone. No reverse map, workspace or combine pass: the fallback for short extends (decode-like
chunks), where the block-major plan/sort/combine overheads dominate.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tiles import load_kv_block, online_softmax_step


@triton.jit(do_not_specialize=["stride_tg"])
def query_major_fwd_kernel(
    q_ptr,  # [T, HQ, D]
    k_ptr,
    v_ptr,
    o_ptr,  # [T, HQ, D]
    topk_idx_ptr,  # [HK, T, topk]
    token_pos_ptr,
    token_req_ptr,
    req_to_token_ptr,
    req_pool_ptr,
    seq_lens_ptr,
    sm_scale_log2,
    topk,
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
    PAGED_BLOCK: tl.constexpr,
):
    i_t = tl.program_id(0).to(tl.int64)
    i_g = tl.program_id(1).to(tl.int64)
    i_r = tl.load(token_req_ptr + i_t)
    q_pos = tl.load(token_pos_ptr + i_t)
    seq_len = tl.load(seq_lens_ptr + i_r)
    sid = tl.load(req_pool_ptr + i_r).to(tl.int64)
    p_r2t = req_to_token_ptr + sid * stride_r2t
    o_h = tl.arange(0, BLOCK_H)
    o_d = tl.arange(0, HEAD_DIM)
    m_h = o_h < GROUP
    head = i_g * GROUP + o_h
    b_q = tl.load(q_ptr + i_t * stride_qn + head[:, None] * stride_qh + o_d[None, :], mask=m_h[:, None], other=0.0)
    b_m = tl.full((BLOCK_H,), -1.0e30, dtype=tl.float32)
    b_l = tl.zeros((BLOCK_H,), dtype=tl.float32)
    b_acc = tl.zeros((BLOCK_H, HEAD_DIM), dtype=tl.float32)
    p_row = topk_idx_ptr + i_g * stride_tg + i_t * stride_tt
    for s in range(topk):
        i_blk = tl.load(p_row + s * stride_ts)
        if (i_blk >= 0) & (i_blk * BLOCK <= q_pos):
            b_k, b_v, o_k, m_k = load_kv_block(
                k_ptr, v_ptr, p_r2t, i_g, i_blk, seq_len,
                stride_ks, stride_kh, stride_vs, stride_vh, BLOCK, HEAD_DIM, PAGED_BLOCK,
            )  # fmt: skip
            b_s = tl.dot(b_q, tl.trans(b_k)) * sm_scale_log2
            b_s = tl.where(((o_k <= q_pos) & m_k)[None, :], b_s, float("-inf"))
            b_m, b_l, b_acc = online_softmax_step(b_s, b_v, b_m, b_l, b_acc)
    b_o = b_acc / tl.maximum(b_l, 1.0e-30)[:, None]  # no valid block: b_acc == 0 -> zeros
    p_o = o_ptr + i_t * stride_on + head[:, None] * stride_oh + o_d[None, :]
    tl.store(p_o, b_o.to(o_ptr.dtype.element_ty), mask=m_h[:, None])


def launch_query_major(plan, q, k_cache, v_cache, req_to_token, topk_idx, out):
    grid = (plan.num_tokens, plan.num_kv_heads)
    query_major_fwd_kernel[grid](
        q, k_cache, v_cache, out, topk_idx, plan.token_pos, plan.token_req,
        req_to_token, plan.req_pool_indices, plan.seq_lens,
        plan.sm_scale_log2, plan.topk,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        out.stride(0), out.stride(1), topk_idx.stride(0), topk_idx.stride(1), topk_idx.stride(2),
        req_to_token.stride(0),
        GROUP=plan.group, BLOCK_H=max(16, plan.block_h), HEAD_DIM=plan.head_dim, BLOCK=plan.block_size,
        PAGED_BLOCK=plan.paged_block,
        num_warps=4, num_stages=2,
    )  # fmt: skip
