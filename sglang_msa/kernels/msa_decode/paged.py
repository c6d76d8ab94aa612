"""MSA sparse decode over a stride-paged KV pool, split-K over the selected blocks.

Each program takes one (request, KV group) and a contiguous slice of the group's top-k block list,
and attends the group's query heads (a GROUP_PAD x HEAD_DIM tile, so tl.dot runs on tensor cores)
to those blocks. When pages hold whole blocks, a selected block is one strided [BLOCK, HEAD_DIM]
tile of the pool at ``block_table[b, blk] * BLOCK`` (no per-token indirection); with any other page
size a per-token slot lookup through ``req_to_token`` is used instead. Splits write a normalised
partial output and its log2-sum-exp to a workspace that ``combine.py`` merges.

Host API (FlashInfer style): ``SparseDecodeWrapper.plan()`` does the host work once per batch
(tiling from shapes, workspace and block-table allocation) and launches the block-table build;
``run()`` only launches kernels, so both launches can be captured in a CUDA graph.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from .combine import combine_splits_kernel
from .launch import LaunchCache, int_spec, tensor_spec

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_LOG2E = 1.4426950408889634


def _split_configs():
    if _INTERPRET:  # the interpreter ignores warps/stages; one config keeps CPU tests fast
        return [triton.Config({}, num_warps=4, num_stages=1)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (1, 2, 3)]


def _prune_configs(configs, named_args, **kwargs):
    # Pipelining depth only matters when a program walks more than one tile.
    if kwargs["TILES_PER_SPLIT"] == 1:
        return [c for c in configs if c.num_stages == 1] or configs[:1]
    return configs


@triton.autotune(
    configs=_split_configs(),
    key=["NUM_KV_HEADS", "GROUP_PAD", "TILE_N", "TILES_PER_SPLIT", "NUM_SPLITS", "PAGED", "BATCH_BUCKET"],
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.jit
def sparse_decode_split_kernel(
    q_ptr,  # [B, NUM_KV_HEADS * GROUP, HEAD_DIM]
    k_ptr,  # KV pool, [slots, NUM_KV_HEADS, HEAD_DIM] with any slot/head strides
    v_ptr,
    topk_ptr,  # [NUM_KV_HEADS, B, TOPK] logical block ids, < 0 = padding (anywhere)
    block_table_ptr,  # [B, >= blocks] pool slot of each logical block / BLOCK (PAGED only)
    req_to_token_ptr,  # [max_reqs, max_context] (per-token path only)
    req_pool_ptr,  # [B]
    seq_lens_ptr,  # [B]
    out_ptr,  # [B, NUM_KV_HEADS * GROUP, HEAD_DIM] (NUM_SPLITS == 1)
    part_o_ptr,  # [B, NUM_KV_HEADS * GROUP, NUM_SPLITS, HEAD_DIM] fp32 (NUM_SPLITS > 1)
    part_lse_ptr,  # [B, NUM_KV_HEADS * GROUP, NUM_SPLITS] fp32
    scale_log2,  # sm_scale * log2(e): the softmax runs in base 2
    max_context,
    s_q_b,
    s_q_h,
    s_k_slot,
    s_k_head,
    s_v_slot,
    s_v_head,
    s_t_head,
    s_t_b,
    s_t_k,
    s_bt_b,
    s_r2t,
    s_out_b,
    s_out_h,
    TOPK: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK: tl.constexpr,
    TILE_N: tl.constexpr,
    TILES_PER_SPLIT: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    PAGED: tl.constexpr,
    BATCH_BUCKET: tl.constexpr,  # autotune key only
    DOT_PRECISION: tl.constexpr,
):
    i_bh = tl.program_id(0)
    i_s = tl.program_id(1)
    i_b = (i_bh // NUM_KV_HEADS).to(tl.int64)
    i_h = (i_bh % NUM_KV_HEADS).to(tl.int64)
    TILES_PER_BLOCK: tl.constexpr = BLOCK // TILE_N

    o_g = tl.arange(0, GROUP_PAD)
    o_d = tl.arange(0, HEAD_DIM)
    o_n = tl.arange(0, TILE_N)
    m_g = o_g < GROUP
    heads = i_h * GROUP + o_g

    p_q = q_ptr + i_b * s_q_b + heads[:, None] * s_q_h + o_d[None, :]
    b_q = tl.load(p_q, mask=m_g[:, None], other=0.0)
    seq_len = tl.minimum(tl.load(seq_lens_ptr + i_b), max_context)
    req = tl.load(req_pool_ptr + i_b).to(tl.int64)
    p_topk = topk_ptr + i_h * s_t_head + i_b * s_t_b

    b_m = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([GROUP_PAD], dtype=tl.float32)
    b_acc = tl.zeros([GROUP_PAD, HEAD_DIM], dtype=tl.float32)
    for i_t in range(TILES_PER_SPLIT):
        i_v = i_s * TILES_PER_SPLIT + i_t  # tile index in the virtual TOPK * BLOCK key sequence
        i_k = i_v // TILES_PER_BLOCK
        i_sub = i_v % TILES_PER_BLOCK
        blk = tl.load(p_topk + i_k * s_t_k, mask=i_k < TOPK, other=-1).to(tl.int32)
        tok0 = blk * BLOCK + i_sub * TILE_N
        # Keys of this tile that exist and precede the query; 0 for padding or blocks past the query.
        n_live = tl.where(blk >= 0, tl.minimum(seq_len - tok0, TILE_N), 0)
        m_n = o_n < n_live
        if PAGED:
            page = tl.load(block_table_ptr + i_b * s_bt_b + blk, mask=n_live > 0, other=0).to(tl.int64)
            slot0 = page * BLOCK + i_sub * TILE_N
            p_k = k_ptr + slot0 * s_k_slot + i_h * s_k_head + o_n[:, None] * s_k_slot + o_d[None, :]
            p_v = v_ptr + slot0 * s_v_slot + i_h * s_v_head + o_n[:, None] * s_v_slot + o_d[None, :]
        else:
            slots = tl.load(req_to_token_ptr + req * s_r2t + tok0 + o_n, mask=m_n, other=0).to(tl.int64)
            p_k = k_ptr + i_h * s_k_head + slots[:, None] * s_k_slot + o_d[None, :]
            p_v = v_ptr + i_h * s_v_head + slots[:, None] * s_v_slot + o_d[None, :]
        b_k = tl.load(p_k, mask=m_n[:, None], other=0.0)
        b_v = tl.load(p_v, mask=m_n[:, None], other=0.0)

        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION) * scale_log2
        b_s = tl.where(m_n[None, :], b_s, float("-inf"))
        b_m_new = tl.maximum(b_m, tl.max(b_s, axis=1))
        # Until a head has seen a live key its max is -inf; shift by 0 then so nothing becomes NaN.
        b_shift = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
        b_p = tl.exp2(b_s - b_shift[:, None])
        b_alpha = tl.exp2(b_m - b_shift)
        b_l = b_l * b_alpha + tl.sum(b_p, axis=1)
        b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v, input_precision=DOT_PRECISION)
        b_m = b_m_new

    b_o = b_acc / tl.where(b_l > 0, b_l, 1.0)[:, None]  # heads with no live key get exactly 0
    if NUM_SPLITS == 1:
        p_out = out_ptr + i_b * s_out_b + heads[:, None] * s_out_h + o_d[None, :]
        tl.store(p_out, b_o.to(out_ptr.dtype.element_ty), mask=m_g[:, None])
    else:
        rows = (i_b * (NUM_KV_HEADS * GROUP) + heads) * NUM_SPLITS + i_s
        tl.store(part_o_ptr + rows[:, None] * HEAD_DIM + o_d[None, :], b_o, mask=m_g[:, None])
        b_lse = tl.where(b_l > 0, b_m + tl.log2(tl.where(b_l > 0, b_l, 1.0)), float("-inf"))
        tl.store(part_lse_ptr + rows, b_lse, mask=m_g)


@triton.jit
def build_block_table_kernel(
    req_to_token_ptr,  # [max_reqs, max_context]
    req_pool_ptr,  # [B]
    seq_lens_ptr,  # [B]
    block_table_ptr,  # [>= B, num_blocks] int32 out
    s_r2t,
    s_bt_b,
    max_context,
    num_blocks,
    BLOCK: tl.constexpr,
    TILE: tl.constexpr,
):
    # Valid only when pages hold whole blocks: a block's slots are then contiguous and start at the
    # slot of its first position, which is a multiple of BLOCK.
    i_b = tl.program_id(0).to(tl.int64)
    o_j = tl.program_id(1) * TILE + tl.arange(0, TILE)
    req = tl.load(req_pool_ptr + i_b).to(tl.int64)
    seq_len = tl.minimum(tl.load(seq_lens_ptr + i_b), max_context)
    m_j = o_j < num_blocks
    m_live = m_j & (o_j * BLOCK < seq_len)
    slot = tl.load(req_to_token_ptr + req * s_r2t + o_j.to(tl.int64) * BLOCK, mask=m_live, other=0)
    tl.store(block_table_ptr + i_b * s_bt_b + o_j, tl.where(m_live, slot // BLOCK, -1).to(tl.int32), mask=m_j)


@dataclass(frozen=True)
class DecodeTiling:
    tile_n: int  # keys per inner tile (divides the block size)
    tiles_per_split: int  # inner tiles one program walks
    num_splits: int  # programs per (request, KV group)


def choose_tiling(
    batch: int,
    num_kv_heads: int,
    topk: int,
    block_size: int,
    num_sms: int,
    *,
    num_splits: Optional[int] = None,
    tile_n: Optional[int] = None,
) -> DecodeTiling:
    """Split the top-k list so that about 2 programs per SM are in flight; depends on shapes only.

    (H200 sweep, 64/4 heads: B=8 x 128k fastest at 8 splits, B=32 x 32k at 2, i.e. ~256 programs.)
    """
    pinned_tile = tile_n is not None
    tile_n = tile_n or min(block_size, 128)
    assert block_size % tile_n == 0 and tile_n >= 16
    groups = batch * num_kv_heads
    if num_splits is None:
        want = max(1, (2 * num_sms) // groups)
        # Too few (request, group) pairs to fill the GPU even with a block per program: halve tiles.
        if not pinned_tile and want > topk * (block_size // tile_n) and tile_n >= 128:
            tile_n //= 2
        total = topk * (block_size // tile_n)
        tiles_per_split = triton.cdiv(total, min(want, total))
    else:
        total = topk * (block_size // tile_n)
        tiles_per_split = triton.cdiv(total, max(1, min(num_splits, total)))
    return DecodeTiling(tile_n, tiles_per_split, triton.cdiv(total, tiles_per_split))


_NUM_SMS: dict = {}
_SPLIT_LAUNCH = LaunchCache(sparse_decode_split_kernel)
_COMBINE_LAUNCH = LaunchCache(combine_splits_kernel)


def split_workspace_numel(max_batch: int, num_q_heads: int, num_kv_heads: int, topk: int, head_dim: int,
                          block_size: int, num_sms: int, *, num_splits: Optional[int] = None,
                          tile_n: Optional[int] = None) -> int:
    """fp32 elements of the split workspace (partial outputs + LSE) for every batch up to max_batch."""
    need = 0
    for b in range(1, max_batch + 1):
        t = choose_tiling(b, num_kv_heads, topk, block_size, num_sms, num_splits=num_splits, tile_n=tile_n)
        if t.num_splits > 1:
            need = max(need, b * num_q_heads * t.num_splits * (head_dim + 1))
    return need


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 8  # small, so CPU tests exercise both the split and the single-pass path
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _NUM_SMS:
        _NUM_SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _NUM_SMS[idx]


class SparseDecodeWrapper:
    """Plan once per batch (host work, block-table build), run once per layer (launches only).

    CUDA graphs: call ``plan`` (and one ``run``, so autotuning is done) outside capture with the
    graph's static tensors, then capture ``build_block_table()`` + ``run(..., out=static_out)``;
    replays follow new values written into the static req_to_token / req_pool_indices / seq_lens /
    q / topk_idx tensors.
    """

    def __init__(self, device: Optional[torch.device] = None):
        self.device = device
        self._workspace: Optional[torch.Tensor] = None
        self._block_table: Optional[torch.Tensor] = None

    def plan(
        self,
        req_to_token: torch.Tensor,
        req_pool_indices: torch.Tensor,
        seq_lens: torch.Tensor,
        *,
        block_size: int,
        page_size: int,
        num_q_heads: int,
        num_kv_heads: int,
        topk: int,
        head_dim: int = 128,
        max_batch: Optional[int] = None,
        sm_scale: Optional[float] = None,
        num_splits: Optional[int] = None,
        tile_n: Optional[int] = None,
    ) -> "SparseDecodeWrapper":
        batch = req_pool_indices.shape[0]
        max_batch = max(max_batch or batch, batch)
        device = req_to_token.device
        assert seq_lens.shape[0] == batch
        assert num_q_heads % num_kv_heads == 0 and topk >= 1
        assert block_size & (block_size - 1) == 0 and head_dim & (head_dim - 1) == 0
        self.batch, self.block_size, self.topk = batch, block_size, topk
        self.num_q_heads, self.num_kv_heads, self.head_dim = num_q_heads, num_kv_heads, head_dim
        self.group = num_q_heads // num_kv_heads
        self.sm_scale = sm_scale if sm_scale is not None else head_dim**-0.5
        # Whole blocks inside one page: a block is one contiguous run of slots (the fast path).
        self.paged = page_size % block_size == 0
        self.req_to_token, self.req_pool_indices, self.seq_lens = req_to_token, req_pool_indices, seq_lens
        self.max_context = req_to_token.shape[1]
        sms = _num_sms(device)
        self.tiling = choose_tiling(
            batch, num_kv_heads, topk, block_size, sms, num_splits=num_splits, tile_n=tile_n
        )

        # Workspace sized for every batch up to max_batch, so later plans of smaller batches reuse it.
        need = split_workspace_numel(max_batch, num_q_heads, num_kv_heads, topk, head_dim, block_size, sms,
                                     num_splits=num_splits, tile_n=tile_n)
        if need and (self._workspace is None or self._workspace.numel() < need or self._workspace.device != device):
            self._workspace = torch.empty(need, dtype=torch.float32, device=device)
        n_part = batch * num_q_heads * self.tiling.num_splits
        if self.tiling.num_splits > 1:
            self._part_o = self._workspace[: n_part * head_dim]
            self._part_lse = self._workspace[n_part * head_dim : n_part * (head_dim + 1)]
        else:
            self._part_o = self._part_lse = torch.empty(0, dtype=torch.float32, device=device)  # unused

        self.num_blocks = triton.cdiv(self.max_context, block_size)
        if self.paged:
            bt = self._block_table
            if bt is None or bt.shape[0] < max_batch or bt.shape[1] < self.num_blocks or bt.device != device:
                self._block_table = torch.empty(max_batch, self.num_blocks, dtype=torch.int32, device=device)
            self.build_block_table()
        else:
            self._block_table = self._block_table if self._block_table is not None else torch.empty(
                1, 1, dtype=torch.int32, device=device
            )

        t = self.tiling
        self._split_consts = dict(
            TOPK=topk,
            NUM_KV_HEADS=num_kv_heads,
            GROUP=self.group,
            GROUP_PAD=max(16, triton.next_power_of_2(self.group)),
            HEAD_DIM=head_dim,
            BLOCK=block_size,
            TILE_N=t.tile_n,
            TILES_PER_SPLIT=t.tiles_per_split,
            NUM_SPLITS=t.num_splits,
            PAGED=self.paged,
            BATCH_BUCKET=triton.next_power_of_2(batch),
        )
        fixed = (self._block_table, req_to_token, req_pool_indices, seq_lens, self._part_o, self._part_lse)
        self._split_key = (
            *self._split_consts.values(),
            *[tensor_spec(a) for a in fixed],
            *[int_spec(a) for a in (self.max_context, self._block_table.stride(0), req_to_token.stride(0))],
        )
        self._combine_consts = dict(
            NUM_Q_HEADS=num_q_heads,
            NUM_SPLITS=t.num_splits,
            SPLITS_PAD=triton.next_power_of_2(t.num_splits),
            HEAD_DIM=head_dim,
        )
        return self

    def build_block_table(self) -> None:
        """Device-side rebuild of the block table from the planned tensors (launch only)."""
        if not self.paged:
            return
        tile = 256
        grid = (self.batch, triton.cdiv(self.num_blocks, tile))
        build_block_table_kernel[grid](
            self.req_to_token,
            self.req_pool_indices,
            self.seq_lens,
            self._block_table,
            self.req_to_token.stride(0),
            self._block_table.stride(0),
            self.max_context,
            self.num_blocks,
            BLOCK=self.block_size,
            TILE=tile,
        )

    @property
    def block_table(self) -> torch.Tensor:
        return self._block_table[: self.batch, : self.num_blocks]

    def run(
        self,
        q: torch.Tensor,  # [B, num_q_heads, head_dim]
        k_cache: torch.Tensor,  # [slots, num_kv_heads, head_dim], any slot/head strides
        v_cache: torch.Tensor,
        topk_idx: torch.Tensor,  # [num_kv_heads, B, topk]
        *,
        out: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        batch, hq, dim = self.batch, self.num_q_heads, self.head_dim
        assert q.shape == (batch, hq, dim) and q.stride(-1) == 1
        assert k_cache.shape[1:] == (self.num_kv_heads, dim) and k_cache.stride(-1) == 1
        assert v_cache.shape[1:] == (self.num_kv_heads, dim) and v_cache.stride(-1) == 1
        assert topk_idx.shape == (self.num_kv_heads, batch, self.topk)
        if out is None:  # convenience only; pass out= under CUDA graphs
            out = torch.empty_like(q)
        assert out.shape == q.shape and out.stride(-1) == 1
        t = self.tiling
        args = (
            q, k_cache, v_cache, topk_idx, self._block_table, self.req_to_token, self.req_pool_indices,
            self.seq_lens, out, self._part_o, self._part_lse, self.sm_scale * _LOG2E, self.max_context,
            q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
            topk_idx.stride(0), topk_idx.stride(1), topk_idx.stride(2), self._block_table.stride(0),
            self.req_to_token.stride(0), out.stride(0), out.stride(1),
        )
        consts = dict(self._split_consts, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
        # Everything Triton specialises on; the planned tensors' part was computed in plan().
        key = (
            q.device.index, self._split_key,
            *[tensor_spec(a) for a in (q, k_cache, v_cache, topk_idx, out)],
            *[int_spec(a) for a in args[13:22]], int_spec(args[24]), int_spec(args[25]),
        )
        _SPLIT_LAUNCH.launch((batch * self.num_kv_heads, t.num_splits), key, args, consts)
        self.last_config = _SPLIT_LAUNCH.configs.get(key)
        if t.num_splits > 1:
            args = (self._part_o, self._part_lse, out, out.stride(0), out.stride(1))
            consts = self._combine_consts
            key = (q.device.index, *consts.values(), tensor_spec(out), int_spec(args[3]), int_spec(args[4]))
            _COMBINE_LAUNCH.launch((batch, hq), key, args, consts, dict(num_warps=4))
        return out


def sparse_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    topk_idx: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    block_size: int,
    page_size: int,
    sm_scale: Optional[float] = None,
    out: Optional[torch.Tensor] = None,
    num_splits: Optional[int] = None,
    tile_n: Optional[int] = None,
) -> torch.Tensor:
    """One-shot plan + run (eager use and tests)."""
    wrapper = SparseDecodeWrapper().plan(
        req_to_token,
        req_pool_indices,
        seq_lens,
        block_size=block_size,
        page_size=page_size,
        num_q_heads=q.shape[1],
        num_kv_heads=k_cache.shape[1],
        topk=topk_idx.shape[2],
        head_dim=q.shape[2],
        sm_scale=sm_scale,
        num_splits=num_splits,
        tile_n=tile_n,
    )
    return wrapper.run(q, k_cache, v_cache, topk_idx, out=out)
