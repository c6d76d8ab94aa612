"""The opt-in fp8 index-K cache (``SGLANG_MSA_FP8_INDEX=1``, off by default).

What it does: for servers started with ``--attention-backend msa`` on a MiniMax sparse model, the
index keys of the sparse layers are stored as float8 e4m3 (one value byte per element) plus one
fp32 scale per slot, instead of bf16 (kernels and numerics:
``sglang_msa/kernels/msa_indexer/README.md``, "fp8 index path"). Main K/V stay in the KV dtype.

Pieces:

* values: SGLang's ``MiniMaxSparseKVPool`` keeps owning the index-K buffer; it is built with
  ``index_dtype=torch.float8_e4m3fn`` (its own, documented constructor parameter) by the hook below;
* scales: one fp32 tensor ``[K-only sparse layers, size + page_size]`` (the pool's slot count, so
  every ``out_cache_loc``, padding slot included, is in range), allocated right after the pool, in
  the pool's memory-saver region, and attached to the pool as :data:`SCALE_ATTR`. The sparse backend
  (:mod:`sglang_msa.backend.sparse`) finds it there, writes both with ``quantize_index_k`` and passes
  ``idx_k_scale=`` to its indexers;
* memory: SGLang sizes the pool from a per-token cell size
  (``DefaultPoolConfigurator._compute_cell_size``) that charges the index cache at the *model*
  dtype (bf16: 2 B × 128 per token per sparse layer), whatever ``index_dtype`` the pool is then built
  with. The fp8 cache uses 128 B of values + 4 B of scale = 132 B of those 256 B, so the scales are
  allocated inside memory SGLang already counted: bounded by the budget, never assumed free. The
  other 124 B per token per sparse layer stay unused (the token budget is the bf16 one: the flag
  does not yet buy more tokens, only a smaller index scan). ``pool.mem_usage`` (SGLang's log line)
  adds the scale bytes. :func:`index_bytes_per_token` states the arithmetic (tested).

The hook. Why: ``KVCacheConfigurator._build_minimax_sparse_kv_pool`` picks ``index_dtype`` itself
(the KV dtype in SGLang's fp8 attention-GEMM mode, else the model dtype) and nothing lets a backend
ask for another one. How: an AROUND hook on that method (SGLang's ``HookRegistry``). It calls the
original untouched unless the flag is on *and* the server picked ``msa``; then it runs the original
with the configurator's ``model_dtype`` (which that method reads only to pick ``index_dtype``) set to
``float8_e4m3fn`` for the duration of the call, checks the result (fp8 index, main K/V in the KV
dtype: a changed upstream method fails loudly at startup, not silently), and attaches the scales.
When it can go: once SGLang lets a backend choose the MiniMax index-K dtype (or own an extra
per-slot buffer the pool sizes and counts).

Refused while the flag is on (:mod:`sglang_msa.backend.features`): anything that copies index-K
bytes between slots, tiers or hosts without the scales (hierarchical cache and its storage
backends, LMCache, PD disaggregation). Prefix caching and radix eviction move slot numbers, not
bytes, so the scales follow their slots.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext

import torch

logger = logging.getLogger("sglang_msa")

FP8_INDEX_ENV = "SGLANG_MSA_FP8_INDEX"
INDEX_DTYPE = torch.float8_e4m3fn
SCALE_ATTR = "msa_index_k_scale"  # pool attribute: fp32 [K-only sparse layers, size + page_size]
BUILD_POOL_TARGET = (
    "sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator._build_minimax_sparse_kv_pool"
)


def fp8_index_enabled() -> bool:
    """``SGLANG_MSA_FP8_INDEX``: on for 1/true/yes/on, off when unset, empty or anything else."""
    return os.environ.get(FP8_INDEX_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def serves_msa(server_args) -> bool:
    from sglang_msa import BACKEND_NAME
    from sglang_msa.backend.dense import BACKEND_FIELDS

    return any(getattr(server_args, f, None) == BACKEND_NAME for f in BACKEND_FIELDS)


def index_bytes_per_token(num_sparse_layers: int, idx_head_dim: int,
                          model_dtype: torch.dtype = torch.bfloat16) -> tuple[int, int]:
    """(bytes SGLang's cell size charges for the index cache, bytes the fp8 cache uses) per token."""
    charged = num_sparse_layers * idx_head_dim * torch.finfo(model_dtype).bits // 8
    used = num_sparse_layers * (idx_head_dim * torch.finfo(INDEX_DTYPE).bits // 8 + 4)
    return charged, used


def attach_index_k_scales(pool) -> torch.Tensor:
    """Allocate the per-slot fp32 scales of an fp8 index-K pool and attach them (:data:`SCALE_ATTR`).

    Rows follow the pool's K-only sparse layers (``index_k_layer_id_mapping``); msa serves no
    sparse layer with an index value cache (features: "sparse layout")."""
    if getattr(pool, "index_kv_pool", None) is not None:
        raise ValueError("sglang-msa: the fp8 index path serves K-only sparse layers only")
    k_pool = pool.index_k_pool
    rows = len(pool.index_k_layer_id_mapping)
    slots = int(pool.size) + int(pool.page_size)
    adapter = getattr(pool.main_pool, "memory_saver_adapter", None)
    if adapter is not None:
        from sglang.srt.constants import GPU_MEMORY_TYPE_KV_CACHE

        region = adapter.region(GPU_MEMORY_TYPE_KV_CACHE)
    else:
        region = nullcontext()
    with region:
        scales = torch.ones((rows, slots), dtype=torch.float32, device=k_pool.device)
    setattr(pool, SCALE_ATTR, scales)
    pool.mem_usage += scales.numel() * scales.element_size() / (1 << 30)
    return scales


def build_pool_with_fp8_index(original_fn, kvc, *args, **kwargs):
    """AROUND hook body on :data:`BUILD_POOL_TARGET` (see the module docstring)."""
    if not (fp8_index_enabled() and serves_msa(kvc.server_args)):
        return original_fn(kvc, *args, **kwargs)
    model_dtype = kvc.model_dtype
    kvc.model_dtype = INDEX_DTYPE  # read by the original only to pick index_dtype
    try:
        pool = original_fn(kvc, *args, **kwargs)
    finally:
        kvc.model_dtype = model_dtype
    k_pool = getattr(pool, "index_k_pool", None)
    if k_pool is None or k_pool.dtype != INDEX_DTYPE or pool.main_pool.dtype != kvc.kv_cache_dtype:
        raise RuntimeError(
            f"sglang-msa: {FP8_INDEX_ENV}=1 could not get an fp8 index-K cache from this SGLang "
            f"(index {getattr(k_pool, 'dtype', None)}, main {pool.main_pool.dtype}); unset it")
    scales = attach_index_k_scales(pool)
    charged, used = index_bytes_per_token(len(pool.index_k_layer_id_mapping), k_pool.head_dim, model_dtype)
    logger.info(
        "sglang-msa: %s=1: index-K cache float8_e4m3fn + fp32 per-slot scales (%.3f GB) for %d sparse "
        "layers; %d of the %d index bytes per token SGLang budgeted are used", FP8_INDEX_ENV,
        scales.numel() * 4 / (1 << 30), scales.shape[0], used, charged,
    )
    return pool


def register_pool_hook() -> None:
    """Registered only when the flag is on: a server that did not opt in gets no wrapper at all."""
    if not fp8_index_enabled():
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    already = any(h is build_pool_with_fp8_index for _, h, _ in HookRegistry._hooks.get(BUILD_POOL_TARGET, []))
    if not already:
        HookRegistry.register(BUILD_POOL_TARGET, build_pool_with_fp8_index, HookType.AROUND)
