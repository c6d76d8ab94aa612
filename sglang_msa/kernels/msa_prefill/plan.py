"""Host API (FlashInfer style): ``plan`` once per batch, ``run`` per layer.

``plan`` does every host sync and allocation (batch metadata, per-block tables, the partial-output
workspace). The reverse map depends on the layer's ``topk_idx``; it is built by ``bind_topk`` with
device ops only (no sync; sizes are upper bounds fixed by ``plan``), and ``run`` calls it itself when
given a ``topk_idx`` other than the bound one. ``run`` then launches the kernels and accepts ``out=``.

Methods: ``block_major`` (reverse map + one program per selected block + LSE combine),
``query_major`` (one program per token, short extends), ``union_tile`` (one program per query tile
walking the union of its tokens' blocks; for coherent selections, see ``union_tile.py``) and
``auto`` (query-major for short extends, else block-major). With ``method="auto"`` the environment
variable ``SGLANG_MSA_PREFILL_METHOD`` (one of the methods, or ``auto``) overrides the choice, so a
server can be switched without code changes; an explicit method always wins.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import triton

from .block_major import launch_block_major
from .combine import launch_combine
from .query_major import launch_query_major
from .reverse_map import ReverseMap, build_reverse_map, max_work_items
from .reverse_map_counting import build_reverse_map_counting
from .union_tile import UnionMap, build_union_map, launch_union_tile, max_union_blocks

# "auto" picks query-major while num_tokens * num_kv_heads <= this. Measured on an H200 (64/4 heads,
# 16k prefix, extend n): query-major 0.06 ms (n <= 64), 0.23 ms (256), 0.87 ms (1024), 3.4 ms (4096);
# block-major ~0.55-0.9 ms up to n = 1024 (reverse map + launches dominate), 2.1 ms at 4096
# (first kernel version, before the Q prefetch; the small-n floor is the map, not the kernel).
# Query-major's cost grows with tokens x KV heads, block-major's floor is fixed: crossover ~1k x 4.
QUERY_MAJOR_MAX_TOKEN_HEADS = 4096
DEFAULT_SEG_TOKENS = 4096
DEFAULT_ITEM_TOKENS = 128  # entries per block-major work item
METHODS = ("block_major", "query_major", "union_tile")
METHOD_ENV = "SGLANG_MSA_PREFILL_METHOD"
REVERSE_MAPS = ("sort", "counting")
REVERSE_MAP_ENV = "SGLANG_MSA_REVERSE_MAP"  # counting (default) | sort
# counting: the same map, bit-identical layer output, 3.7x / 2.4x faster to build than the stable sort and
# the plan + map + main + combine 1.66x / 1.29x (H200, 8/1/1, 16k chunk at 128k / 512k,
# benchmarks/results/kernels-NVIDIA-H200-2026-12-06-regimes.json)
DEFAULT_REVERSE_MAP = "counting"


@dataclass
class SparsePrefillPlan:
    method: str  # "block_major" | "query_major" | "union_tile"
    num_tokens: int
    num_q_heads: int
    num_kv_heads: int
    group: int
    block_h: int
    head_dim: int
    topk: int
    block_size: int
    paged_block: bool
    sm_scale_log2: float
    dtype: torch.dtype
    token_pos: torch.Tensor  # [T] int32
    token_req: torch.Tensor  # [T] int32
    seq_lens: torch.Tensor  # [B] int32
    req_pool_indices: torch.Tensor  # [B] int64
    # block-major only
    num_blocks_total: int = 0
    bucket_stride_group: int = 0
    num_buckets: int = 0
    num_items: int = 0
    item_tokens: int = 0
    chunk_tokens: int = 0
    num_warps: int = 4
    num_stages: int = 1
    prefetch: bool = True
    reverse_map: str = DEFAULT_REVERSE_MAP  # "counting" (reverse_map_counting.py) | "sort" (reverse_map.py)
    block_req: torch.Tensor | None = None  # [NB] int32
    block_local: torch.Tensor | None = None  # [NB] int32
    token_key_base: torch.Tensor | None = None  # [T] int32
    ws_o: torch.Tensor | None = None  # [E * group, D]
    ws_lse: torch.Tensor | None = None  # [E * group] fp32
    rmap: ReverseMap | None = None
    # union-tile only
    tile_tokens: int = 0
    num_tiles: int = 0
    max_union: int = 0
    tile_start: torch.Tensor | None = None  # [NT] int32
    tile_len: torch.Tensor | None = None  # [NT] int32
    tile_req: torch.Tensor | None = None  # [NT] int32
    umap: UnionMap | None = None
    bound_topk: torch.Tensor | None = None


def plan(
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    prefix_lens: torch.Tensor,
    req_pool_indices: torch.Tensor,
    *,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    topk: int,
    block_size: int,
    page_size: int = 1,
    dtype: torch.dtype = torch.bfloat16,
    sm_scale: float | None = None,
    method: str = "auto",
    topk_idx: torch.Tensor | None = None,
    seg_tokens: int | None = None,
    chunk_tokens: int | None = None,
    item_tokens: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    prefetch: bool | int | None = None,  # hand-pipelined loads; None: block_major on, union_tile off
    workspace_dtype: torch.dtype | None = None,
    tile_tokens: int | None = None,
    reverse_map: str | None = None,
    host_lens: tuple | None = None,
) -> SparsePrefillPlan:
    """Batch metadata + workspaces.

    host_lens: ``(extend_lens, seq_lens, prefix_lens)`` as host integers (SGLang's
    ``extend_seq_lens_cpu``, ``seq_lens_cpu``, ``extend_prefix_lens_cpu``). With them the plan never
    waits for the GPU: the host tables go up as one pinned non-blocking copy. Without them the three
    small [B] device tensors are read back (one copy), a sync that stalls the overlap scheduler's CPU work."""
    device = cu_seqlens_q.device
    if num_q_heads % num_kv_heads:
        raise ValueError(f"num_q_heads={num_q_heads} not a multiple of num_kv_heads={num_kv_heads}")
    if head_dim & (head_dim - 1) or block_size & (block_size - 1) or block_size < 16:
        raise ValueError("head_dim and block_size must be powers of two, block_size >= 16")
    if host_lens is not None:
        extend, lens, prefixes = (np.asarray(v, dtype=np.int64) for v in host_lens)
        if not len(extend) == len(lens) == len(prefixes) == cu_seqlens_q.shape[0] - 1:
            raise ValueError(f"host_lens give {len(extend)}/{len(lens)}/{len(prefixes)} requests, "
                             f"cu_seqlens_q has {cu_seqlens_q.shape[0] - 1}")
        cu = np.concatenate(([0], np.cumsum(extend)))
    else:
        cu, lens, prefixes = _read_back_lens(cu_seqlens_q, seq_lens, prefix_lens)
        extend = np.diff(cu)
    bad = np.flatnonzero(prefixes + extend != lens)
    if bad.size:
        raise ValueError(f"request {bad[0]}: prefix_len + extend_len != seq_len")
    num_tokens = int(cu[-1])
    group = num_q_heads // num_kv_heads
    block_h = triton.next_power_of_2(group)
    if method == "auto":
        method = os.environ.get(METHOD_ENV, "").strip().lower() or "auto"
    if method == "auto":
        method = "query_major" if num_tokens * num_kv_heads <= QUERY_MAJOR_MAX_TOKEN_HEADS else "block_major"
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}")
    scale = head_dim**-0.5 if sm_scale is None else sm_scale

    p = SparsePrefillPlan(
        method=method,
        num_tokens=num_tokens,
        num_q_heads=num_q_heads,
        num_kv_heads=num_kv_heads,
        group=group,
        block_h=block_h,
        head_dim=head_dim,
        topk=topk,
        block_size=block_size,
        paged_block=page_size >= block_size and page_size % block_size == 0,
        sm_scale_log2=scale * math.log2(math.e),
        dtype=dtype,
        # the int32 tables are set below from one packed upload
        token_pos=None,
        token_req=None,
        seq_lens=None,
        req_pool_indices=req_pool_indices.to(device=device, dtype=torch.int64),
    )
    tables = _token_tables(cu, extend, lens, prefixes)
    if method == "block_major":
        p.prefetch = True if prefetch is None else prefetch
        p.reverse_map = reverse_map or os.environ.get(REVERSE_MAP_ENV, "").strip().lower() or DEFAULT_REVERSE_MAP
        if p.reverse_map not in REVERSE_MAPS:
            raise ValueError(f"unknown reverse map {p.reverse_map!r} (one of {REVERSE_MAPS}; {REVERSE_MAP_ENV})")
        tables |= _plan_block_major(p, device, extend, lens, seg_tokens, chunk_tokens, item_tokens, num_warps,
                                    num_stages, workspace_dtype)
    elif method == "union_tile":
        tables |= _plan_union_tile(p, cu, extend, lens, tile_tokens, num_warps, num_stages)
        # prefetch (union_tile.py): 0/False plain loop, 1/True K/V prefetched by hand, 2 block table in
        # registers + Triton's cp.async stages (3 by default); 1 and 2 read precomputed multiplicities.
        # Off until measured on GPU.
        p.prefetch = int(prefetch or 0)
        if p.prefetch not in (0, 1, 2):
            raise ValueError(f"union_tile prefetch={prefetch!r} (0/False, 1/True or 2)")
        if p.prefetch == 2 and not num_stages:
            p.num_stages = 3
    for name, view in _upload_tables(tables, device).items():
        setattr(p, name, view)
    if method != "query_major" and topk_idx is not None:
        bind_topk(p, topk_idx)
    return p


def _read_back_lens(cu_seqlens_q, seq_lens, prefix_lens):
    """(cu, seq_lens, prefix_lens) as int64 numpy arrays, in one device->host copy (one sync)."""
    device = cu_seqlens_q.device
    num_reqs = cu_seqlens_q.shape[0] - 1
    host = torch.cat([t.to(device=device, dtype=torch.int64) for t in (cu_seqlens_q, seq_lens, prefix_lens)]).cpu().numpy()
    return host[: num_reqs + 1], host[num_reqs + 1 : 2 * num_reqs + 1], host[2 * num_reqs + 1 :]


def _token_tables(cu, extend, lens, prefixes):
    """Per-token position and request, and the sequence lengths (int64 numpy; packed as int32)."""
    num_tokens = int(cu[-1])
    token_req = np.repeat(np.arange(len(lens)), extend)
    token_pos = np.arange(num_tokens) + np.repeat(prefixes - cu[:-1], extend)
    return {"token_pos": token_pos, "token_req": token_req, "seq_lens": lens}


# Views into the packed buffer start on 16 int32s (64 bytes), as separate allocations did: Triton
# specialises pointer arguments on 16-byte alignment, so a misaligned table would compile another variant.
TABLE_ALIGN = 16


def _upload_tables(tables: dict, device: torch.device) -> dict:
    """Every host table in one int32 buffer, one upload, and a contiguous device view per table.

    plan() is host-bound: with a torch op or an ``_upload`` per table it took 0.68 ms for one 16k-token
    chunk over a 112k prefix on an H200, more than the block-major kernel (0.52 ms;
    benchmarks/results/kernels-NVIDIA-H200-2026-12-06-regimes.json). With numpy tables and one copy it
    took 0.41 ms on an H100 (kernels-NVIDIA-H100-80GB-HBM3-2026-12-07-regimes.json)."""
    starts, total = [], 0
    for a in tables.values():
        starts.append(total)
        total += -(-a.size // TABLE_ALIGN) * TABLE_ALIGN
    packed = np.zeros(total, dtype=np.int32)
    for start, a in zip(starts, tables.values()):
        packed[start : start + a.size] = a
    on_device = _upload(torch.from_numpy(packed), device)
    return {name: on_device[start : start + a.size] for start, (name, a) in zip(starts, tables.items())}


def _upload(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host table -> device without waiting for the GPU: a copy from pageable memory first syncs the
    stream, one from pinned memory is queued (the caching host allocator keeps the buffer alive until
    the copy is done, so no pinned buffer is kept here across calls)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _plan_union_tile(p, cu, extend, lens, tile_tokens, num_warps, num_stages):
    """Query tiles of ``tile_tokens`` consecutive tokens of one request, and the union buffer width."""
    # default: 128 MMA rows (8 tokens x 16 heads for M3, 16 x 8 at TP8), at most 64 tokens; unmeasured on GPU
    tt = tile_tokens or min(64, max(1, 128 // p.block_h))
    if tt & (tt - 1) or tt * p.block_h < 16:
        raise ValueError(f"tile_tokens={tt} must be a power of two with tile_tokens * {p.block_h} heads >= 16")
    p.tile_tokens = tt
    tiles_per_req = -(-extend // tt)
    first_tile = np.cumsum(tiles_per_req) - tiles_per_req
    p.num_tiles = int(tiles_per_req.sum())
    tile_req = np.repeat(np.arange(len(lens)), tiles_per_req)
    # tile k of request r starts at cu[r] + (k - first_tile[r]) * tt
    tile_start = np.arange(p.num_tiles) * tt + np.repeat(cu[:-1] - first_tile * tt, tiles_per_req)
    tile_len = np.minimum(tt, np.repeat(cu[1:], tiles_per_req) - tile_start)
    p.max_union = max_union_blocks(tt, p.topk, lens.tolist(), p.block_size)
    p.num_warps = num_warps or (8 if tt * p.block_h >= 128 else 4)
    p.num_stages = num_stages or 2
    return {"tile_start": tile_start, "tile_len": tile_len, "tile_req": tile_req}


def _plan_block_major(p, device, extend, lens, seg_tokens, chunk_tokens, item_tokens, num_warps, num_stages,
                      workspace_dtype):
    blocks_per_req = -(-lens // p.block_size)
    first_block = np.cumsum(blocks_per_req) - blocks_per_req
    num_blocks = int(blocks_per_req.sum())
    p.num_blocks_total = max(num_blocks, 1)
    seg = seg_tokens or DEFAULT_SEG_TOKENS
    num_seg = max(triton.cdiv(p.num_tokens, seg), 1)
    p.bucket_stride_group = num_seg * p.num_blocks_total
    p.num_buckets = p.num_kv_heads * p.bucket_stride_group
    # Defaults from the H200 sweep at 64k tokens, 64/4 heads (benchmarks/bench_prefill.py --sweep):
    # 64-row MMA tiles (4 tokens x 16 heads) on 4 warps, two programs per SM, hand-pipelined Q loads
    # and 128-token items: 13.8 ms block-major kernel vs 17.5 ms for 128-row tiles on 8 warps and
    # 24-26 ms without the Q prefetch.
    p.chunk_tokens = chunk_tokens or max(1, 64 // p.block_h)
    p.item_tokens = item_tokens or DEFAULT_ITEM_TOKENS
    p.num_warps = num_warps or 4
    p.num_stages = num_stages or 1
    num_entries = p.num_kv_heads * p.num_tokens * p.topk
    p.num_items = max_work_items(num_entries, p.num_buckets, p.item_tokens)

    ws_dtype = workspace_dtype or p.dtype
    p.ws_o = torch.empty(num_entries * p.group, p.head_dim, dtype=ws_dtype, device=device)
    p.ws_lse = torch.empty(num_entries * p.group, dtype=torch.float32, device=device)
    # (t // seg) * num_blocks_total, repeated per segment rather than divided per token (4x cheaper)
    segment_base = np.repeat(np.arange(num_seg) * p.num_blocks_total, seg)[: p.num_tokens]
    return {
        "block_req": np.repeat(np.arange(len(lens)), blocks_per_req),
        "block_local": np.arange(num_blocks) - np.repeat(first_block, blocks_per_req),
        # < bucket_stride_group, as the reverse map's int32 keys already require
        "token_key_base": segment_base + np.repeat(first_block, extend),
    }


def bind_topk(p: SparsePrefillPlan, topk_idx: torch.Tensor) -> None:
    """Build the reverse map (block-major) or the tile unions (union-tile) of this layer's topk_idx.

    Device ops only, no host sync."""
    _check_topk(p, topk_idx)
    if p.method == "block_major":
        build = build_reverse_map_counting if p.reverse_map == "counting" else build_reverse_map
        p.rmap = build(
            topk_idx,
            p.token_pos,
            p.token_key_base,
            block_size=p.block_size,
            bucket_stride_group=p.bucket_stride_group,
            num_buckets=p.num_buckets,
            num_items=p.num_items,
            item_tokens=p.item_tokens,
        )
    elif p.method == "union_tile":
        p.umap = build_union_map(
            topk_idx,
            p.token_pos,
            p.tile_start,
            p.tile_len,
            block_size=p.block_size,
            tile_tokens=p.tile_tokens,
            max_union=p.max_union,
            multiplicity=p.prefetch > 0,
        )
    p.bound_topk = topk_idx


def run(
    p: SparsePrefillPlan,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    topk_idx: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch only (plus the device-side reverse map when ``topk_idx`` is not the bound one)."""
    if topk_idx is not None and topk_idx is not p.bound_topk:
        bind_topk(p, topk_idx)
    topk_idx = p.bound_topk
    if topk_idx is None:
        raise ValueError("run needs topk_idx (pass it, or bind it with bind_topk / plan(topk_idx=...))")
    _check_inputs(p, q, k_cache, v_cache)
    if out is None:
        out = torch.empty(p.num_tokens, p.num_q_heads, p.head_dim, dtype=q.dtype, device=q.device)
    if p.num_tokens == 0:
        return out
    if p.method == "query_major":
        launch_query_major(p, q, k_cache, v_cache, req_to_token, topk_idx, out)
    elif p.method == "union_tile":
        launch_union_tile(p, q, k_cache, v_cache, req_to_token, topk_idx, out)
    else:
        launch_block_major(p, q, k_cache, v_cache, req_to_token)
        launch_combine(p, out, topk_idx)
    return out


def sparse_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    topk_idx: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    prefix_lens: torch.Tensor,
    *,
    block_size: int,
    page_size: int = 1,
    sm_scale: float | None = None,
    sink: torch.Tensor | None = None,
    method: str = "auto",
    out: torch.Tensor | None = None,
    **plan_kwargs,
) -> torch.Tensor:
    """plan + run in one call (argument meanings as SGLang's ``minimax_sparse_prefill``)."""
    if sink is not None:
        raise NotImplementedError("MSA sparse prefill has no attention sink (MiniMax-M3 passes None)")
    p = plan(
        cu_seqlens_q, seq_lens, prefix_lens, req_pool_indices,
        num_q_heads=q.shape[1], num_kv_heads=k_cache.shape[1], head_dim=q.shape[2], topk=topk_idx.shape[-1],
        block_size=block_size, page_size=page_size, dtype=q.dtype, sm_scale=sm_scale, method=method,
        topk_idx=topk_idx, **plan_kwargs,
    )  # fmt: skip
    return run(p, q, k_cache, v_cache, req_to_token, topk_idx, out=out)


def _check_topk(p: SparsePrefillPlan, topk_idx: torch.Tensor) -> None:
    expected = (p.num_kv_heads, p.num_tokens, p.topk)
    if tuple(topk_idx.shape) != expected:
        raise ValueError(f"topk_idx shape {tuple(topk_idx.shape)} != {expected}")
    if topk_idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"topk_idx must be int32/int64, got {topk_idx.dtype}")


def _check_inputs(p: SparsePrefillPlan, q, k_cache, v_cache) -> None:
    if tuple(q.shape) != (p.num_tokens, p.num_q_heads, p.head_dim):
        raise ValueError(f"q shape {tuple(q.shape)} does not match the plan")
    if k_cache.shape[1] != p.num_kv_heads or k_cache.shape[2] != p.head_dim or v_cache.shape[1:] != k_cache.shape[1:]:
        raise ValueError("k_cache/v_cache must be [slots, num_kv_heads, head_dim]")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} needs a unit stride on head_dim")
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError("q, k_cache and v_cache must share a dtype (fp8 caches are not supported)")
