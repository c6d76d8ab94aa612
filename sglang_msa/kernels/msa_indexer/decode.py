"""Decode indexer: split-K block scores over the paged index-K cache, then a small top-k kernel.

Stage 1 (grid: splits x requests): each program scores a contiguous range of one request's key
blocks for all index heads at once (one [H_PAD, BLOCK_SIZE] dot per block, K read once) and writes
the raw pooled scores to a workspace [H, max_batch, max_blocks]. The split count only depends on the
batch size, so the grid is static under a CUDA graph; programs past a short request's end exit.
Stage 2, by default in parts (grid: heads x requests x parts): forced blocks + the top-k order keys
of each part of `topk_part` scores in parallel, then a merge (grid: heads x requests) of the parts a
request covers. With `topk_part=None` (SGLANG_MSA_DECODE_TOPK_PART=0) one program per (head, request)
walks the whole row instead. Both pick by repeated "largest order key below the previous one" and
select the same blocks bit for bit.

Host API (FlashInfer style): `IndexerDecode(...).plan(max_batch, max_context_len, device)` does all
allocation once; `run(..., out=)` only launches (no sync, no allocation when `out` is given).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from .common import (
    INT64_MAX,
    INT64_MIN,
    LOG2E,
    check_common,
    check_fp8_cache,
    force_scores,
    key_block_id,
    order_key,
    quantize_rows_e4m3,
    score_block,
    store_sorted_ids,
)


@triton.jit
def _decode_block_scores_kernel(
    q_ptr, k_ptr, ks_ptr, r2t_ptr, pool_idx_ptr, seq_lens_ptr, ws_ptr,
    num_heads, sm_scale,
    stride_q_b, stride_q_h, stride_k_s, stride_r2t, stride_ws_h, stride_ws_b,
    HEAD_DIM: tl.constexpr, H_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    SCORE_TYPE: tl.constexpr, CONTIGUOUS_BLOCKS: tl.constexpr, IEEE_DOT: tl.constexpr,
    FP8: tl.constexpr,
):
    i_s, i_b = tl.program_id(0), tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + i_b).to(tl.int32)
    n_blocks = tl.cdiv(seq_len, BLOCK_SIZE)
    per_split = tl.cdiv(n_blocks, tl.num_programs(0))
    blk_lo = i_s * per_split
    blk_hi = tl.minimum(blk_lo + per_split, n_blocks)
    if blk_lo >= blk_hi:
        return
    pool_idx = tl.load(pool_idx_ptr + i_b).to(tl.int64)
    r2t_row_ptr = r2t_ptr + pool_idx * stride_r2t
    scale = sm_scale * LOG2E

    o_h = tl.arange(0, H_PAD)
    o_d = tl.arange(0, HEAD_DIM)
    m_h = o_h < num_heads
    p_q = q_ptr + i_b.to(tl.int64) * stride_q_b + o_h[:, None] * stride_q_h + o_d[None, :]
    b_q = tl.load(p_q, mask=m_h[:, None], other=0.0)
    if FP8:
        # per-head e4m3 query (H_PAD >= 16 rows: the fp8 MMA's smallest M)
        b_q, b_qs = quantize_rows_e4m3(b_q)
        scale = b_qs * scale
    q_pos = tl.full([H_PAD], 0, tl.int32) + (seq_len - 1)
    p_ws = ws_ptr + o_h.to(tl.int64) * stride_ws_h + i_b.to(tl.int64) * stride_ws_b
    # only the request's last block can be partial
    for i_blk in range(blk_lo, tl.minimum(blk_hi, n_blocks - 1)):
        b_pool = score_block(b_q, k_ptr, ks_ptr, r2t_row_ptr, i_blk, q_pos, seq_len, scale, stride_k_s,
                             HEAD_DIM, BLOCK_SIZE, SCORE_TYPE, CONTIGUOUS_BLOCKS, False, IEEE_DOT, FP8)
        tl.store(p_ws + i_blk, b_pool, mask=m_h)
    if blk_hi == n_blocks:
        i_blk = n_blocks - 1
        b_pool = score_block(b_q, k_ptr, ks_ptr, r2t_row_ptr, i_blk, q_pos, seq_len, scale, stride_k_s,
                             HEAD_DIM, BLOCK_SIZE, SCORE_TYPE, CONTIGUOUS_BLOCKS, True, IEEE_DOT, FP8)
        tl.store(p_ws + i_blk, b_pool, mask=m_h)


@triton.jit
def _score_keys(p_ws, o_c, n_blocks, init_blocks, local_blocks):
    """Order keys of the block scores at o_c of one (head, request) workspace row, forced blocks applied;
    INT64_MIN past the request's n_blocks (stage 2 and its parts variant read scores the same way)."""
    m_c = o_c < n_blocks
    b_s = tl.load(p_ws + o_c, mask=m_c, other=0.0)
    b_key = order_key(force_scores(b_s, o_c, n_blocks, init_blocks, local_blocks), o_c)
    return tl.where(m_c, b_key, INT64_MIN)


@triton.jit
def _top_keys(b_key, b_best, TOPK: tl.constexpr):
    """The TOPK largest order keys of (b_key [N] + b_best [TOPK_PAD]), descending, INT64_MIN-padded:
    TOPK picks of the largest key below the previous pick (keys are distinct)."""
    o_j = tl.arange(0, b_best.shape[0])
    b_new = tl.full(b_best.shape, INT64_MIN, tl.int64)
    prev = tl.full([], INT64_MAX, tl.int64)
    for t in tl.static_range(TOPK):
        pick = tl.maximum(tl.max(tl.where(b_key < prev, b_key, INT64_MIN), axis=0),
                          tl.max(tl.where(b_best < prev, b_best, INT64_MIN), axis=0))
        b_new = tl.where(o_j == t, pick, b_new)
        prev = pick
    return b_new


@triton.jit
def _store_top(out_ptr, i_h, i_b, stride_o_h, stride_o_b, b_best, TOPK: tl.constexpr):
    """The block ids of the order keys b_best into out[i_h, i_b, :], ascending, -1 padded."""
    p_out = out_ptr + i_h.to(tl.int64) * stride_o_h + i_b.to(tl.int64) * stride_o_b
    store_sorted_ids(p_out + tl.zeros([1], tl.int64), key_block_id(b_best)[None, :],
                     (b_best != INT64_MIN)[None, :], tl.full([1], 1, tl.int1), TOPK)


@triton.jit
def _decode_topk_kernel(
    ws_ptr, seq_lens_ptr, out_ptr, init_blocks, local_blocks,
    stride_ws_h, stride_ws_b, stride_o_h, stride_o_b,
    BLOCK_SIZE: tl.constexpr, TOPK: tl.constexpr, TOPK_PAD: tl.constexpr, CHUNK: tl.constexpr,
):
    i_h, i_b = tl.program_id(0), tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + i_b).to(tl.int32)
    n_blocks = tl.cdiv(seq_len, BLOCK_SIZE)
    p_ws = ws_ptr + i_h.to(tl.int64) * stride_ws_h + i_b.to(tl.int64) * stride_ws_b
    b_best = tl.full([TOPK_PAD], INT64_MIN, tl.int64)
    for c0 in range(0, n_blocks, CHUNK):
        b_key = _score_keys(p_ws, c0 + tl.arange(0, CHUNK), n_blocks, init_blocks, local_blocks)
        b_best = _top_keys(b_key, b_best, TOPK)  # top-k of (this chunk + the best so far)
    _store_top(out_ptr, i_h, i_b, stride_o_h, stride_o_b, b_best, TOPK)


@triton.jit
def _decode_topk_part_kernel(
    ws_ptr, seq_lens_ptr, parts_ptr, init_blocks, local_blocks,
    stride_ws_h, stride_ws_b, stride_p_h, stride_p_b,
    BLOCK_SIZE: tl.constexpr, TOPK: tl.constexpr, TOPK_PAD: tl.constexpr, PART: tl.constexpr,
):
    """Stage 2a (``IndexerDecode(topk_part=)``): the top-k order keys of one part of PART block scores
    of one (head, request), INT64_MIN for empty slots. Parts past the request's end exit unwritten: the
    merge reads only the parts the request covers."""
    i_h, i_b, i_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + i_b).to(tl.int32)
    n_blocks = tl.cdiv(seq_len, BLOCK_SIZE)
    if i_p * PART >= n_blocks:
        return
    p_ws = ws_ptr + i_h.to(tl.int64) * stride_ws_h + i_b.to(tl.int64) * stride_ws_b
    b_key = _score_keys(p_ws, i_p * PART + tl.arange(0, PART), n_blocks, init_blocks, local_blocks)
    o_j = tl.arange(0, TOPK_PAD)
    b_top = _top_keys(b_key, tl.full([TOPK_PAD], INT64_MIN, tl.int64), TOPK)
    p_part = parts_ptr + i_h.to(tl.int64) * stride_p_h + i_b.to(tl.int64) * stride_p_b + i_p * TOPK_PAD
    tl.store(p_part + o_j, b_top)


@triton.jit
def _decode_topk_merge_kernel(
    parts_ptr, seq_lens_ptr, out_ptr, stride_p_h, stride_p_b, stride_o_h, stride_o_b,
    BLOCK_SIZE: tl.constexpr, TOPK: tl.constexpr, TOPK_PAD: tl.constexpr, PART: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """Stage 2b: the top-k of the order keys of the parts one (head, request) covers, stored like the
    single-program stage 2 (ascending ids, -1 padded). Keys are distinct, so the selection is the same."""
    i_h, i_b = tl.program_id(0), tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + i_b).to(tl.int32)
    n_keys = tl.cdiv(tl.cdiv(seq_len, BLOCK_SIZE), PART) * TOPK_PAD
    p_part = parts_ptr + i_h.to(tl.int64) * stride_p_h + i_b.to(tl.int64) * stride_p_b
    b_best = tl.full([TOPK_PAD], INT64_MIN, tl.int64)
    for c0 in range(0, n_keys, CHUNK):
        o_c = c0 + tl.arange(0, CHUNK)
        b_key = tl.load(p_part + o_c, mask=o_c < n_keys, other=INT64_MIN)
        b_best = _top_keys(b_key, b_best, TOPK)
    _store_top(out_ptr, i_h, i_b, stride_o_h, stride_o_b, b_best, TOPK)


# Software-pipeline depth of the block-score scan. An e4m3 key block is half a bf16 one, so the fp8 scan
# needs more blocks in flight to keep the same bytes moving: on an H100 (512k, B = 8, 8/1/1, graph replay)
# 6 stages took the fp8 indexer from 268 to 234 us while bf16 stayed at 384-389 us over 3-6 stages and
# 4-16 programs per SM (indexer_decode_sweep in benchmarks/results/kernels-NVIDIA-H100-80GB-HBM3-2026-12-07-regimes.json).
DECODE_STAGES = {"bf16": 3, "fp8": 6}

# Stage 2 in parts of this many scores by default: on an H100 (512k, 8/1/1, graph replay) it took stage 2
# from 25.5 to 11.1 us at B = 1 and to 11.9 us at B = 8, the same selection (kernels-NVIDIA-H100-80GB-
# HBM3-2026-12-07-regimes-short.json), where one program per (head, request) walks 4096 scores in
# dependent picks. Its workspace: heads x max_batch x cdiv(max_blocks, part) x topk's power of two x 8 B.
DEFAULT_TOPK_PART = 256
TOPK_PART_ENV = "SGLANG_MSA_DECODE_TOPK_PART"


def check_topk_part(topk_part: int, topk: int) -> int:
    if topk_part < 2 * triton.next_power_of_2(topk) or topk_part != triton.next_power_of_2(topk_part):
        raise ValueError(f"topk_part must be a power of two >= 2 x topk's ({2 * triton.next_power_of_2(topk)} "
                         f"for topk {topk}), got {topk_part}")
    return topk_part


def choose_topk_part(topk: int) -> Optional[int]:
    """Scores per part of stage 2 from SGLANG_MSA_DECODE_TOPK_PART: unset or ``auto`` = DEFAULT_TOPK_PART
    (at least 2 x topk's power of two); ``0`` = None, one program per (head, request) walks every score;
    a power of two >= 2 x topk's forces it. Anything else raises ValueError."""
    env = os.environ.get(TOPK_PART_ENV, "").strip().lower()
    if env in ("", "auto"):
        return max(DEFAULT_TOPK_PART, 2 * triton.next_power_of_2(topk))
    if env == "0":
        return None
    if not env.isdigit():
        raise ValueError(f"{TOPK_PART_ENV}={env!r}: expected auto, 0 or a power of two >= 2 x topk's")
    try:
        return check_topk_part(int(env), topk)
    except ValueError as exc:
        raise ValueError(f"{TOPK_PART_ENV}={env!r}: {exc}") from None


class IndexerDecode:
    """Decode indexer with a plan/run split (CUDA-graph capturable run).

    Fixed per layer config goes to the constructor; `plan` sizes the workspace for the largest
    batch and context it will see; `run` writes int32 [H_idx, B, topk] block ids (ascending,
    -1 padded) into `out`. Every seq_len passed to `run` must be <= the planned max_context_len.
    """

    def __init__(self, *, num_heads: int, head_dim: int, block_size: int, topk: int,
                 init_blocks: int, local_blocks: int, score_type: str = "max",
                 sm_scale: Optional[float] = None, page_size: int = 1,
                 programs_per_sm: int = 8, num_warps: int = 4, num_stages: Optional[int] = None,
                 topk_part: Optional[int] = None):
        self.num_heads, self.head_dim = num_heads, head_dim
        self.block_size, self.topk = block_size, topk
        self.init_blocks, self.local_blocks = init_blocks, local_blocks
        self.score_type = score_type
        self.sm_scale = head_dim**-0.5 if sm_scale is None else sm_scale
        self.contiguous_blocks = page_size % block_size == 0
        self.programs_per_sm = programs_per_sm
        self.num_warps, self.num_stages = num_warps, num_stages  # num_stages None: DECODE_STAGES by cache
        # topk_part: stage 2 as top-k per part of topk_part scores in parallel + a merge (the backend's
        # default, choose_topk_part); None: one program per (head, request) walks every score.
        self.topk_part = None if topk_part is None else check_topk_part(topk_part, topk)
        self.workspace: Optional[torch.Tensor] = None
        self.parts: Optional[torch.Tensor] = None

    def stages(self, fp8: bool) -> int:
        """Pipeline depth of the scan for this cache (the constructor's num_stages wins)."""
        return self.num_stages or DECODE_STAGES["fp8" if fp8 else "bf16"]

    def plan(self, max_batch: int, max_context_len: int, device, num_splits: Optional[int] = None):
        """Allocate the block-score workspace and fix the launch shapes (host work, once)."""
        device = torch.device(device)
        self.max_batch = max_batch
        self.max_blocks = max(1, triton.cdiv(max_context_len, self.block_size))
        self.workspace = torch.empty((self.num_heads, max_batch, self.max_blocks), dtype=torch.float32,
                                     device=device)
        if device.type == "cuda":
            self.sm_count = torch.cuda.get_device_properties(device).multi_processor_count
        else:
            self.sm_count = 2
        self.fixed_splits = num_splits
        if self.topk_part is not None:
            self.n_parts = triton.cdiv(self.max_blocks, self.topk_part)
            self.parts = torch.empty((self.num_heads, max_batch, self.n_parts, triton.next_power_of_2(self.topk)),
                                     dtype=torch.int64, device=device)
            self.merge_chunk = min(triton.next_power_of_2(self.parts[0, 0].numel()), 1024)
        self.chunk = min(triton.next_power_of_2(self.max_blocks), 1024)
        self.chunk = max(self.chunk, 2 * triton.next_power_of_2(self.topk))
        return self

    def num_splits(self, batch: int) -> int:
        if self.fixed_splits is not None:
            return self.fixed_splits
        return max(1, min(self.max_blocks, triton.cdiv(self.programs_per_sm * self.sm_count, batch)))

    def run(self, idx_q: torch.Tensor, idx_k_cache: torch.Tensor, req_to_token: torch.Tensor,
            req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
            out: Optional[torch.Tensor] = None, idx_k_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """idx_q [B, H_idx, D]; idx_k_cache [max_slots, 1, D]; req_to_token [max_reqs, ctx] int32;
        req_pool_indices, seq_lens [B] (query position = seq_len - 1). Launches only.
        idx_k_scale [max_slots] fp32: the fp8 index path (idx_k_cache float8 e4m3, see quant.py)."""
        if self.workspace is None:
            raise RuntimeError("call plan() before run()")
        batch, num_heads, head_dim = idx_q.shape
        assert num_heads == self.num_heads and head_dim == self.head_dim and batch <= self.max_batch
        if out is None:
            out = torch.empty((num_heads, batch, self.topk), dtype=torch.int32, device=idx_q.device)
        if batch == 0:
            return out
        self.score(idx_q, idx_k_cache, req_to_token, req_pool_indices, seq_lens, idx_k_scale)
        return self.select(seq_lens, out)

    def score(self, idx_q, idx_k_cache, req_to_token, req_pool_indices, seq_lens, idx_k_scale=None) -> None:
        """Stage 1 of :meth:`run` alone (block scores into the workspace): benchmarks time the stages apart."""
        batch, num_heads, head_dim = idx_q.shape
        ws = self.workspace
        check_fp8_cache(idx_k_cache, idx_k_scale)  # host-side only: nothing reaches a captured graph
        fp8 = idx_k_scale is not None
        _decode_block_scores_kernel[(self.num_splits(batch), batch)](
            idx_q, idx_k_cache, idx_k_scale if fp8 else idx_k_cache, req_to_token, req_pool_indices, seq_lens, ws,
            num_heads, self.sm_scale,
            idx_q.stride(0), idx_q.stride(1), idx_k_cache.stride(0), req_to_token.stride(0),
            ws.stride(0), ws.stride(1),
            HEAD_DIM=head_dim, H_PAD=max(16, triton.next_power_of_2(num_heads)),
            BLOCK_SIZE=self.block_size, SCORE_TYPE=self.score_type,
            CONTIGUOUS_BLOCKS=self.contiguous_blocks, IEEE_DOT=idx_q.dtype == torch.float32 and not fp8,
            FP8=fp8, num_warps=self.num_warps, num_stages=self.stages(fp8),
        )

    def select(self, seq_lens: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Stage 2 of :meth:`run` alone (forced blocks + top-k of the workspace's scores into ``out``)."""
        num_heads, batch = self.num_heads, seq_lens.shape[0]  # ``out`` may be a larger buffer
        ws = self.workspace
        topk_pad = triton.next_power_of_2(self.topk)
        if self.topk_part is not None and self.n_parts > 1:  # one part: the single program, one launch
            parts = self.parts
            _decode_topk_part_kernel[(num_heads, batch, self.n_parts)](
                ws, seq_lens, parts, self.init_blocks, self.local_blocks,
                ws.stride(0), ws.stride(1), parts.stride(0), parts.stride(1),
                BLOCK_SIZE=self.block_size, TOPK=self.topk, TOPK_PAD=topk_pad, PART=self.topk_part, num_warps=4,
            )
            _decode_topk_merge_kernel[(num_heads, batch)](
                parts, seq_lens, out, parts.stride(0), parts.stride(1), out.stride(0), out.stride(1),
                BLOCK_SIZE=self.block_size, TOPK=self.topk, TOPK_PAD=topk_pad, PART=self.topk_part,
                CHUNK=self.merge_chunk, num_warps=4,
            )
            return out
        _decode_topk_kernel[(num_heads, batch)](
            ws, seq_lens, out, self.init_blocks, self.local_blocks,
            ws.stride(0), ws.stride(1), out.stride(0), out.stride(1),
            BLOCK_SIZE=self.block_size, TOPK=self.topk, TOPK_PAD=triton.next_power_of_2(self.topk),
            CHUNK=self.chunk, num_warps=4,
        )
        return out


def indexer_decode(
    idx_q: torch.Tensor,
    idx_k_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    block_size: int,
    topk: int,
    init_blocks: int,
    local_blocks: int,
    score_type: str = "max",
    sm_scale: Optional[float] = None,
    page_size: int = 1,
    max_context_len: Optional[int] = None,
    num_splits: Optional[int] = None,
    out: Optional[torch.Tensor] = None,
    idx_k_scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One-shot plan + run (convenience for tests and eager callers; syncs if max_context_len is None)."""
    check_common(idx_q, idx_k_cache, topk, init_blocks, local_blocks, score_type, idx_k_scale)
    if max_context_len is None:
        max_context_len = int(seq_lens.max()) if seq_lens.numel() else 1
    indexer = IndexerDecode(num_heads=idx_q.shape[1], head_dim=idx_q.shape[2], block_size=block_size,
                            topk=topk, init_blocks=init_blocks, local_blocks=local_blocks,
                            score_type=score_type, sm_scale=sm_scale, page_size=page_size)
    indexer.plan(idx_q.shape[0], max_context_len, idx_q.device, num_splits=num_splits)
    return indexer.run(idx_q, idx_k_cache, req_to_token, req_pool_indices, seq_lens, out=out,
                       idx_k_scale=idx_k_scale)
