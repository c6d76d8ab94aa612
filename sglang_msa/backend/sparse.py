"""``MSASparseAttnBackend``: MiniMax sparse attention layers on the sglang-msa kernels.

It stands where SGLang's ``MiniMaxSparseAttnBackend`` stands inside SGLang's
``MiniMaxHybridAttnBackend`` (see :mod:`sglang_msa.backend.hooks`), takes the same calls from the
model (``forward(q, k, v, layer, forward_batch, idx_q=, idx_k=, idx_v=)`` returning
``(idx_out, out)``), and reads/writes SGLang's ``MiniMaxSparseKVPool`` in place.

Per forward batch (``init_forward_metadata_out_graph``): one prefill plan (extend batches) or one
decode plan (decode batches) shared by every sparse layer. Per layer: store K/V/index-K, run the
indexer, run the sparse attention. Decode launches never sync or allocate, so SGLang's CUDA-graph
runner can capture them.

With ``SGLANG_MSA_FP8_INDEX=1`` (:mod:`sglang_msa.backend.fp8_index`) the pool's index-K cache is
e4m3 with per-slot fp32 scales: ``_store`` writes main K/V through the pool and the index keys with
``quantize_index_k`` (one launch), and both indexers get ``idx_k_scale=``. Off: nothing changes.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from sglang.srt.configs.model_config import (
    get_minimax_sparse_attention_config,
    get_minimax_sparse_disable_value_layer_ids,
    get_minimax_sparse_layer_ids,
    get_minimax_sparse_score_type,
)
from sglang.srt.layers.attention.base_attn_backend import AttentionBackend

from sglang_msa.backend import memory
from sglang_msa.kernels import msa_prefill
from sglang_msa.kernels.msa_decode import SparseDecodeWrapper
from sglang_msa.kernels.msa_decode.paged import _num_sms
from sglang_msa.kernels.msa_indexer import IndexerDecode, indexer_prefill
from sglang_msa.kernels.msa_indexer.decode import choose_topk_part
from sglang_msa.kernels.msa_indexer.prefill import choose_split_k
from sglang_msa.kernels.msa_indexer.quant import quantize_index_k

logger = logging.getLogger("sglang_msa")


def _host_lens(forward_batch, num_reqs: int):
    """SGLang's host copies of the extend/prefix/sequence lengths, so the prefill plan needs no
    device->host sync; None (the plan then reads the device tensors back) where one is missing or
    does not describe the same requests."""
    ext = getattr(forward_batch, "extend_seq_lens_cpu", None)
    pre = getattr(forward_batch, "extend_prefix_lens_cpu", None)
    seq = getattr(forward_batch, "seq_lens_cpu", None)
    if ext is None or pre is None or seq is None:
        return None
    seq = seq.tolist() if isinstance(seq, torch.Tensor) else list(seq)
    if not len(ext) == len(pre) == len(seq) == num_reqs:
        return None
    if any(int(p) + int(e) != int(s) for e, p, s in zip(ext, pre, seq)):
        return None
    return ext, seq, pre


class MSAConfigError(ValueError):
    """The model/server configuration is outside what the msa backend serves."""


def _blocks_from_tokens(cfg: dict, blocks_key: str, tokens_key: str, block: int, extra: int) -> int:
    if blocks_key in cfg:
        return int(cfg[blocks_key])
    return (int(cfg[tokens_key]) + block - 1) // block + extra


def _attn_tp_size(runner) -> int:
    """Attention TP degree: SGLang's parallel context in a server, the runner's tp_size otherwise."""
    from sglang.srt.runtime_context import get_parallel

    try:
        return int(get_parallel().attn_tp_size)
    except AssertionError:  # groups not initialised (unit tests on CPU)
        return int(getattr(runner, "tp_size", 1) or 1)


class MSASparseAttnBackend(AttentionBackend):
    def __init__(self, runner):
        from sglang.srt.mem_cache.memory_pool import MiniMaxSparseKVPool

        pool = runner.token_to_kv_pool
        if not isinstance(pool, MiniMaxSparseKVPool):
            raise MSAConfigError(f"msa needs SGLang's MiniMaxSparseKVPool, got {type(pool).__name__}")
        self.kv_pool = pool
        self.req_to_token = runner.req_to_token_pool.req_to_token
        self.max_context_len = int(runner.model_config.context_len)
        self.device = self.req_to_token.device
        server_args = self._server_args = runner.server_args
        if getattr(server_args, "speculative_algorithm", None) is not None:
            raise MSAConfigError("msa does not support speculative decoding yet")
        if pool.main_pool.dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise MSAConfigError(f"msa serves bf16/fp16/fp32 KV caches (no fp8 yet), got {pool.main_pool.dtype}")
        try:  # SGLANG_MSA_INDEXER_SPLIT_K is read at every prefill: a bad value fails here, at start-up
            choose_split_k(None, 1, torch.device("cpu"))
        except ValueError as exc:
            raise MSAConfigError(str(exc)) from None
        # Second line of defence (the first: server-args resolution, sglang_msa.plugin.on_server_args).
        from sglang_msa.backend.features import check_server_args

        model = getattr(runner, "model", None)
        check_server_args(server_args, runner.model_config.hf_config,
                          our_model=None if model is None else type(model).__module__.startswith("sglang_msa."))

        cfg = get_minimax_sparse_attention_config(runner.model_config.hf_config)
        self.dense_layer_ids, self.sparse_layer_ids = get_minimax_sparse_layer_ids(cfg)
        self.disable_value_layer_ids = set(get_minimax_sparse_disable_value_layer_ids(cfg))
        self.score_type = get_minimax_sparse_score_type(cfg)
        self.block_size = int(cfg["sparse_block_size"])
        self.topk = int(cfg["sparse_topk_blocks"])
        self.init_blocks = _blocks_from_tokens(cfg, "sparse_init_block", "sparse_init_tokens", self.block_size, 0)
        self.local_blocks = _blocks_from_tokens(cfg, "sparse_local_block", "sparse_local_tokens", self.block_size, 1)
        self.idx_head_dim = int(cfg["sparse_index_dim"])
        try:  # SGLANG_MSA_DECODE_TOPK_PART: how the decode indexer's stage 2 runs (read once, here)
            self.decode_topk_part = choose_topk_part(self.topk)
        except ValueError as exc:
            raise MSAConfigError(str(exc)) from None
        self.page_size = pool.page_size
        self._idx_k_scales = self._fp8_index_scales(pool)  # layer id -> fp32 [slots]; {} on the bf16 path

        self.num_q_heads = runner.model_config.num_attention_heads // _attn_tp_size(runner)
        self.num_kv_heads = pool.main_pool.head_num
        self.head_dim = pool.main_pool.head_dim
        self.max_batch = int(runner.req_to_token_pool.size)

        self.decode_indexer: Optional[IndexerDecode] = None  # built at the first sparse layer call
        self._decode_wrappers: dict[int, SparseDecodeWrapper] = {}
        self._decode_wrapper: Optional[SparseDecodeWrapper] = None
        self._prefill_plan = None
        self._max_seqlen_k: Optional[int] = None
        self._topk_buf: Optional[torch.Tensor] = None
        self.dense_backend = None  # set by MiniMaxHybridAttnBackend
        if self.page_size % self.block_size:
            logger.warning(
                "sglang-msa: page_size=%d does not hold whole %d-token sparse blocks; decode falls back "
                "to per-token indirection. Pass --page-size %d for the stride-paged fast path.",
                self.page_size, self.block_size, self.block_size,
            )
        logger.info(
            "sglang-msa: sparse backend ready (q/kv heads %d/%d, block %d, top-%d, init %d, local %d, "
            "score %s, page %d)", self.num_q_heads, self.num_kv_heads, self.block_size, self.topk,
            self.init_blocks, self.local_blocks, self.score_type, self.page_size,
        )
        self._log_prefill_scratch(server_args)

    def _fp8_index_scales(self, pool) -> dict:
        """The fp8 index path (``SGLANG_MSA_FP8_INDEX=1``, :mod:`sglang_msa.backend.fp8_index`): the
        per-slot scale row of each sparse layer, fixed views made once (decode launches stay
        allocation-free). Empty, and nothing changes, when the flag is off."""
        from sglang_msa.backend.fp8_index import FP8_INDEX_ENV, INDEX_DTYPE, SCALE_ATTR, fp8_index_enabled

        scales = getattr(pool, SCALE_ATTR, None)
        if not fp8_index_enabled():
            if scales is not None:
                raise MSAConfigError(f"the KV pool carries fp8 index scales but {FP8_INDEX_ENV} is off")
            return {}
        k_pool = getattr(pool, "index_k_pool", None)
        if scales is None or k_pool is None or k_pool.dtype != INDEX_DTYPE:
            raise MSAConfigError(
                f"{FP8_INDEX_ENV}=1 but the KV pool was not built with an fp8 index-K cache and scales "
                "(the plugin's pool hook did not run in this process: was the flag set only after "
                "SGLang loaded its plugins?)")
        rows = {lid: scales[row] for lid, row in pool.index_k_layer_id_mapping.items()}
        logger.info("sglang-msa: %s=1: fp8 index-K cache (e4m3 + per-slot scales) for sparse layers %s",
                    FP8_INDEX_ENV, sorted(rows))
        return rows

    # --- per-batch metadata --------------------------------------------------------------------
    def _ensure_decode_buffers(self, max_bs: int) -> None:
        if self.decode_indexer is not None and self.decode_indexer.max_batch >= max_bs:
            return
        num_idx_heads = self.num_kv_heads  # one index head per KV group (checked per layer)
        self.decode_indexer = IndexerDecode(
            num_heads=num_idx_heads, head_dim=self.idx_head_dim, block_size=self.block_size,
            topk=self.topk, init_blocks=self.init_blocks, local_blocks=self.local_blocks,
            score_type=self.score_type, page_size=self.page_size, topk_part=self.decode_topk_part,
        ).plan(max_bs, self.max_context_len, self.device)
        self._topk_buf = torch.full((num_idx_heads, max_bs, self.topk), -1, dtype=torch.int32,
                                    device=self.device)

    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int):
        self.max_batch = max(self.max_batch, max_bs)
        self._ensure_decode_buffers(self.max_batch)
        self._log_decode_buffers(max_bs)

    # --- memory outside SGLang's KV pool (sglang_msa.backend.memory; README "Memory") -------------
    def _log_prefill_scratch(self, server_args) -> None:
        chunk = getattr(server_args, "chunked_prefill_size", None) or 0
        tokens = chunk if chunk > 0 else int(getattr(server_args, "max_prefill_tokens", 0) or 0)
        if tokens <= 0:
            return
        size = memory.prefill_scratch_bytes(
            tokens, num_q_heads=self.num_q_heads, num_kv_heads=self.num_kv_heads, num_idx_heads=self.num_kv_heads,
            head_dim=self.head_dim, topk=self.topk, block_size=self.block_size,
            max_blocks=-(-self.max_context_len // self.block_size), dtype_bytes=self.kv_pool.main_pool.dtype.itemsize)
        logger.info("sglang-msa: prefill scratch up to %s per sparse layer for a %d-token batch (block-major "
                    "partials %s), outside the KV pool, freed after each layer", memory.gib(size["total"]),
                    tokens, memory.gib(size["partials"]))
        free = memory.free_device_bytes(self.device)
        if free is not None and size["total"] > free // 2:
            logger.warning("sglang-msa: the prefill scratch of a %d-token batch (%s) is more than half of the "
                           "%s this GPU has free after the KV pool: long prefills may run out of memory. "
                           "Lower --chunked-prefill-size or --mem-fraction-static.", tokens,
                           memory.gib(size["total"]), memory.gib(free))

    def _log_decode_buffers(self, max_bs: int) -> None:
        sizes = getattr(self._server_args, "cuda_graph_bs_decode", None) or getattr(
            self._server_args, "cuda_graph_bs", None) or [max_bs]
        sizes = sorted({int(b) for b in sizes if 0 < int(b) <= max_bs}) or [max_bs]
        size = memory.decode_buffer_bytes(
            graph_batch_sizes=sizes, max_context_len=int(self.req_to_token.shape[1]), num_q_heads=self.num_q_heads,
            num_kv_heads=self.num_kv_heads, num_idx_heads=self.num_kv_heads, head_dim=self.head_dim,
            topk=self.topk, block_size=self.block_size, paged=self.page_size % self.block_size == 0,
            num_sms=_num_sms(self.device), topk_part=self.decode_topk_part)
        logger.info("sglang-msa: decode buffers %s for %d captured batch sizes up to %d (held for the "
                    "server's life, outside the KV pool)", memory.gib(size["total"]), len(sizes), max(sizes))

    def get_cuda_graph_seq_len_fill_value(self):
        return 1

    def init_forward_metadata_out_graph(self, forward_batch, in_capture: bool = False):
        mode = forward_batch.forward_mode
        self._prefill_plan = None
        self._decode_wrapper = None
        if mode.is_decode_or_idle():
            bs = int(forward_batch.req_pool_indices.shape[0])
            if bs == 0:
                return
            self.max_batch = max(self.max_batch, bs)
            self._ensure_decode_buffers(self.max_batch)
            wrapper = self._decode_wrappers.get(bs)
            if wrapper is None:
                wrapper = self._decode_wrappers[bs] = SparseDecodeWrapper(self.device)
            # Host work + a device-side block-table build from the batch's (static) tensors.
            wrapper.plan(
                self.req_to_token, forward_batch.req_pool_indices, forward_batch.seq_lens,
                block_size=self.block_size, page_size=self.page_size, num_q_heads=self.num_q_heads,
                num_kv_heads=self.num_kv_heads, topk=self.topk, head_dim=self.head_dim, max_batch=bs,
            )
            self._decode_wrapper = wrapper
        elif mode.is_extend():
            self._plan_extend(forward_batch)

    def init_forward_metadata_in_graph(self, forward_batch):
        # Replays rebuild the block table from the static req_pool_indices/seq_lens inside the graph.
        if self._decode_wrapper is not None:
            self._decode_wrapper.build_block_table()

    def _plan_extend(self, forward_batch):
        extend_lens = forward_batch.extend_seq_lens
        if extend_lens is None:
            return
        cu = torch.zeros(extend_lens.shape[0] + 1, dtype=torch.int32, device=extend_lens.device)
        torch.cumsum(extend_lens.to(torch.int32), 0, out=cu[1:])
        seq_lens = forward_batch.seq_lens.to(torch.int32)
        prefix = forward_batch.extend_prefix_lens
        prefix = torch.zeros_like(seq_lens) if prefix is None else prefix.to(torch.int32)
        lens_cpu = forward_batch.extend_seq_lens_cpu
        self._max_seqlen_q = int(max(lens_cpu)) if lens_cpu else int(extend_lens.max().item())
        host_lens = _host_lens(forward_batch, extend_lens.shape[0])
        # the longest request's keys caps the indexer's split-K ranges (None without host lengths: no sync)
        self._max_seqlen_k = max(int(n) for n in host_lens[1]) if host_lens and host_lens[1] else None
        self._prefill_cu = cu
        self._prefill_seq_lens = seq_lens
        self._prefill_prefix = prefix
        self._prefill_plan = msa_prefill.plan(
            cu, seq_lens, prefix, forward_batch.req_pool_indices,
            num_q_heads=self.num_q_heads, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
            topk=self.topk, block_size=self.block_size, page_size=self.page_size,
            dtype=self.kv_pool.main_pool.dtype, host_lens=host_lens,
        )

    # --- forward -------------------------------------------------------------------------------
    def forward(self, q, k, v, layer, forward_batch, save_kv_cache: bool = True, **kwargs):
        if forward_batch.forward_mode.is_idle():
            out = q.new_zeros(q.shape[0], layer.tp_q_head_num * layer.v_head_dim)
            return None, out
        return super().forward(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)

    def _store(self, layer, forward_batch, k, v, idx_k, idx_v):
        precached = getattr(forward_batch, "minimax_m3_precached_sparse_layers", None)
        if precached is not None and layer.layer_id in precached:
            if self._idx_k_scales:
                # SGLang's in-tree class (ROCm fused norm/rope/cache kernel) wrote bf16 index keys
                # into the fp8 cache; features.py refuses that setup at startup, this is the backstop.
                raise RuntimeError("sglang-msa: the fp8 index path cannot take index keys the model "
                                   "cached itself (unset SGLANG_MSA_FP8_INDEX)")
            return  # the model's fused kernel already wrote this layer's caches
        scales = self._idx_k_scales.get(layer.layer_id)
        if scales is not None:
            # fp8 index path: main K/V through the pool's own store, index keys quantized to e4m3 +
            # per-slot scale in one launch (no sync, no allocation: CUDA-graph safe).
            loc = forward_batch.out_cache_loc
            self.kv_pool.set_kv_buffer(layer, loc, k, v, layer.k_scale_float, layer.v_scale_float)
            quantize_index_k(idx_k, self.kv_pool.get_index_k_buffer(layer.layer_id), scales, loc)
            return
        # The pool's own store: main K/V + index K in one launch where SGLang can fuse it.
        self.kv_pool.set_fused_kv_index_buffer(
            layer, forward_batch.out_cache_loc, k, v, idx_k, None, layer.k_scale_float,
            layer.v_scale_float, layer.idx_k_scale_float, None,
        )

    def _check_layer(self, layer, idx_q):
        if layer.layer_id not in self.disable_value_layer_ids:
            raise MSAConfigError(
                f"layer {layer.layer_id}: sparse layers with an index value cache "
                "(sparse_disable_index_value=0) are not supported by msa")
        if idx_q.shape[1] != self.num_kv_heads:
            raise MSAConfigError(
                f"msa needs one index head per KV head, got {idx_q.shape[1]} for {self.num_kv_heads}")

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True, *, idx_q, idx_k,
                       idx_v=None, **kwargs):
        self._check_layer(layer, idx_q)
        self._store(layer, forward_batch, k, v, idx_k, idx_v)
        plan = self._prefill_plan
        if plan is None:
            raise RuntimeError("sglang-msa: extend metadata missing (init_forward_metadata not called)")
        original_tokens = q.shape[0]
        num_tokens = plan.num_tokens  # DP attention may pad q beyond the real tokens
        q = q[:num_tokens].view(num_tokens, self.num_q_heads, self.head_dim)
        idx_q = idx_q[:num_tokens].view(num_tokens, -1, self.idx_head_dim)
        k_cache, v_cache = self.kv_pool.get_kv_buffer(layer.layer_id)
        idx_k_cache = self.kv_pool.get_index_k_buffer(layer.layer_id)
        topk_idx = indexer_prefill(
            idx_q, idx_k_cache, self.req_to_token, forward_batch.req_pool_indices, self._prefill_cu,
            self._prefill_seq_lens, self._prefill_prefix, max_seqlen_q=self._max_seqlen_q,
            max_seqlen_k=self._max_seqlen_k,
            block_size=self.block_size, topk=self.topk, init_blocks=self.init_blocks,
            local_blocks=self.local_blocks, score_type=self.score_type, page_size=self.page_size,
            idx_k_scale=self._idx_k_scales.get(layer.layer_id),
        )
        out = q.new_empty(original_tokens, self.num_q_heads * self.head_dim)
        msa_prefill.run(plan, q, k_cache, v_cache, self.req_to_token, topk_idx,
                        out=out[:num_tokens].view(num_tokens, self.num_q_heads, self.head_dim))
        if num_tokens < original_tokens:
            out[num_tokens:].zero_()
        return None, out

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, *, idx_q, idx_k,
                       idx_v=None, **kwargs):
        self._check_layer(layer, idx_q)
        self._store(layer, forward_batch, k, v, idx_k, idx_v)
        wrapper = self._decode_wrapper
        if wrapper is None:
            raise RuntimeError("sglang-msa: decode metadata missing (init_forward_metadata not called)")
        bs = q.shape[0]
        q = q.view(bs, self.num_q_heads, self.head_dim)
        idx_q = idx_q.view(bs, -1, self.idx_head_dim)
        k_cache, v_cache = self.kv_pool.get_kv_buffer(layer.layer_id)
        idx_k_cache = self.kv_pool.get_index_k_buffer(layer.layer_id)
        topk_idx = self._topk_buf[:, :bs]
        self.decode_indexer.run(idx_q, idx_k_cache, self.req_to_token, forward_batch.req_pool_indices,
                                forward_batch.seq_lens, out=topk_idx,
                                idx_k_scale=self._idx_k_scales.get(layer.layer_id))
        out = q.new_empty(bs, self.num_q_heads * self.head_dim)
        wrapper.run(q, k_cache, v_cache, topk_idx, out=out.view(bs, self.num_q_heads, self.head_dim))
        return None, out
