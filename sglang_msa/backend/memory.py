"""What the msa backend allocates on the GPU beyond SGLang's KV pool, as functions of the shapes.

SGLang sizes its KV pool from ``--mem-fraction-static`` and leaves the rest of the card for weights
already loaded, activations and CUDA graphs. The msa backend's own buffers come out of that rest:

* per prefill forward (freed after it; the caching allocator keeps the blocks): the block-major
  partial outputs of every (token, q head, selected block), the reverse map that orders them, the
  indexer's selection and its split-K workspace. The partials dominate and grow with the chunk, not
  with the prefix: ``--chunked-prefill-size`` bounds them;
* held for the server's life, sized at CUDA-graph capture: the decode indexer's score workspace (one
  fp32 per key block of the model's context per request), its top-k parts and output, and one block
  table and split workspace per captured decode batch size.

:func:`prefill_scratch_bytes` and :func:`decode_buffer_bytes` state those sizes (tested against what
the kernels allocate); the backend logs both at startup for the server's shapes.
"""

from __future__ import annotations

import torch
import triton

from sglang_msa.kernels.msa_decode.paged import split_workspace_numel
from sglang_msa.kernels.msa_indexer.prefill import MAX_SPLIT_K, split_workspace_bytes
from sglang_msa.kernels.msa_prefill.plan import DEFAULT_ITEM_TOKENS, DEFAULT_SEG_TOKENS
from sglang_msa.kernels.msa_prefill.reverse_map import max_work_items


def prefill_scratch_bytes(num_tokens: int, *, num_q_heads: int, num_kv_heads: int, num_idx_heads: int,
                          head_dim: int, topk: int, block_size: int, max_blocks: int, dtype_bytes: int,
                          split_k: int = MAX_SPLIT_K) -> dict:
    """Peak bytes of one sparse layer's prefill scratch for ``num_tokens`` extend tokens of a batch
    whose requests hold ``max_blocks`` key blocks in all (an upper bound is fine), block-major path
    (the query-major one, for small batches, allocates no partials). ``split_k``: the indexer's range
    count (MAX_SPLIT_K bounds it)."""
    entries = num_kv_heads * num_tokens * topk
    group = num_q_heads // num_kv_heads
    buckets = num_kv_heads * max(triton.cdiv(num_tokens, DEFAULT_SEG_TOKENS), 1) * max(max_blocks, 1)
    items = max_work_items(entries, buckets, DEFAULT_ITEM_TOKENS)
    sizes = {
        "partials": entries * group * (head_dim * dtype_bytes + 4),  # ws_o (KV dtype) + ws_lse (fp32)
        "reverse_map": 4 * (2 * max(entries, 1) + (buckets + 1) + 3 * items),
        "indexer_out": num_idx_heads * num_tokens * topk * 4,
        "indexer_split": split_workspace_bytes(num_tokens, num_idx_heads, topk, split_k),
    }
    sizes["total"] = sum(sizes.values())
    return sizes


def decode_buffer_bytes(*, graph_batch_sizes, max_context_len: int, num_q_heads: int, num_kv_heads: int,
                        num_idx_heads: int, head_dim: int, topk: int, block_size: int, paged: bool,
                        num_sms: int, topk_part=None) -> dict:
    """Bytes the decode path holds for the server's life: the indexer's buffers for the largest
    captured batch, and a block table (paged KV) and split workspace per captured batch size."""
    max_bs = max(graph_batch_sizes)
    max_blocks = max(1, triton.cdiv(max_context_len, block_size))
    topk_pad = triton.next_power_of_2(topk)
    sizes = {
        "indexer_scores": num_idx_heads * max_bs * max_blocks * 4,
        "indexer_parts": (num_idx_heads * max_bs * triton.cdiv(max_blocks, topk_part) * topk_pad * 8
                          if topk_part else 0),
        "indexer_out": num_idx_heads * max_bs * topk * 4,
        "block_tables": sum(bs * max_blocks * 4 for bs in graph_batch_sizes) if paged else 0,
        "split_workspaces": sum(4 * split_workspace_numel(bs, num_q_heads, num_kv_heads, topk, head_dim, block_size,
                                                          num_sms) for bs in graph_batch_sizes),
    }
    sizes["total"] = sum(sizes.values())
    return sizes


def free_device_bytes(device) -> "int | None":
    """Free bytes on a CUDA device now (None elsewhere)."""
    if getattr(device, "type", None) != "cuda":
        return None
    return int(torch.cuda.mem_get_info(device)[0])


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
