"""sglang_msa.backend.memory states what the msa backend allocates beyond SGLang's KV pool: checked
here against what the kernels' plans really allocate (CPU, small shapes)."""

from __future__ import annotations

import pytest
import torch

from sglang_msa.backend import memory
from sglang_msa.kernels import msa_prefill
from sglang_msa.kernels.msa_decode import SparseDecodeWrapper
from sglang_msa.kernels.msa_decode.paged import _num_sms
from sglang_msa.kernels.msa_indexer import IndexerDecode
from sglang_msa.kernels.msa_indexer.prefill import split_workspace_bytes


def test_prefill_partials_and_reverse_map_match_the_plan():
    extend, prefix, block, topk, hq, hk, dim = [300, 70], [129, 0], 16, 5, 8, 2, 64
    seq = [e + p for e, p in zip(extend, prefix)]
    cu = torch.tensor([0, extend[0], sum(extend)], dtype=torch.int32)
    topk_idx = torch.zeros(hk, sum(extend), topk, dtype=torch.int32)
    plan = msa_prefill.plan(cu, torch.tensor(seq, dtype=torch.int32), torch.tensor(prefix, dtype=torch.int32),
                            torch.arange(2), num_q_heads=hq, num_kv_heads=hk, head_dim=dim, topk=topk,
                            block_size=block, page_size=block, dtype=torch.float16, method="block_major",
                            topk_idx=topk_idx)
    blocks = sum(-(-s // block) for s in seq)
    got = memory.prefill_scratch_bytes(sum(extend), num_q_heads=hq, num_kv_heads=hk, num_idx_heads=hk,
                                       head_dim=dim, topk=topk, block_size=block, max_blocks=blocks,
                                       dtype_bytes=2, split_k=3)
    assert got["partials"] == plan.ws_o.nbytes + plan.ws_lse.nbytes
    # the map the plan built (sorted entries + 3 item tables) plus what its build drops (keys, counts)
    rm, entries = plan.rmap, hk * sum(extend) * topk
    kept = rm.sorted_entry.nbytes + rm.item_bucket.nbytes + rm.item_start.nbytes + rm.item_count.nbytes
    assert got["reverse_map"] == kept + 4 * entries + 4 * (plan.num_buckets + 1)
    assert got["indexer_split"] == split_workspace_bytes(sum(extend), hk, topk, 3)
    assert got["total"] == sum(v for k, v in got.items() if k != "total")


def test_prefill_scratch_at_the_deployed_shape():
    """A 16k chunk at --tp 8 head counts (8 q / 1 kv / 1 index head, bf16, top-16): the partials are
    16384 x 8 x 16 x (128 x 2 + 4) B = 0.51 GiB, the rest small."""
    got = memory.prefill_scratch_bytes(16384, num_q_heads=8, num_kv_heads=1, num_idx_heads=1, head_dim=128,
                                       topk=16, block_size=128, max_blocks=8192, dtype_bytes=2)
    assert got["partials"] == 16384 * 8 * 16 * 260
    assert got["partials"] / got["total"] > 0.9
    assert memory.gib(got["partials"]) == "0.51 GiB"


@pytest.mark.parametrize("topk_part", [None, 32])
def test_decode_buffers_match_what_the_indexer_and_wrappers_hold(topk_part):
    ctx, block, topk, hq, hk, dim, sizes = 4000, 16, 6, 8, 2, 64, [1, 3, 8]
    dev = torch.device("cpu")
    ix = IndexerDecode(num_heads=hk, head_dim=32, block_size=block, topk=topk, init_blocks=1, local_blocks=1,
                       topk_part=topk_part).plan(max(sizes), ctx, dev)
    held = ix.workspace.nbytes + (ix.parts.nbytes if ix.parts is not None else 0) + hk * max(sizes) * topk * 4
    r2t = torch.zeros(max(sizes), ctx, dtype=torch.int32)
    for bs in sizes:
        w = SparseDecodeWrapper(dev).plan(r2t, torch.arange(bs), torch.full((bs,), 100, dtype=torch.int32),
                                          block_size=block, page_size=block, num_q_heads=hq, num_kv_heads=hk,
                                          topk=topk, head_dim=dim, max_batch=bs)
        held += w._block_table.nbytes + (w._workspace.nbytes if w._workspace is not None else 0)
    got = memory.decode_buffer_bytes(graph_batch_sizes=sizes, max_context_len=ctx, num_q_heads=hq, num_kv_heads=hk,
                                     num_idx_heads=hk, head_dim=dim, topk=topk, block_size=block, paged=True,
                                     num_sms=_num_sms(dev), topk_part=topk_part)
    assert got["total"] == held
