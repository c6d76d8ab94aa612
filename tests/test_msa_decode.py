"""MSA sparse decode: Triton kernels (stride-paged and per-token paths) vs the fp32 reference.

CPU: fp16/fp32 under the Triton interpreter, small blocks (16/32). GPU: bf16, block 128, top-16,
against the reference and against upstream SGLang's flash_decode_with_gqa_share_sparse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from sglang_msa.kernels.msa_decode import SparseDecodeWrapper, choose_tiling, naive_sparse_decode, sparse_decode


@dataclass
class DecodeCase:
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    topk_idx: torch.Tensor
    req_to_token: torch.Tensor
    req_pool_indices: torch.Tensor
    seq_lens: torch.Tensor
    block_size: int
    page_size: int

    def naive(self, **kw):
        return naive_sparse_decode(
            self.q, self.k_cache, self.v_cache, self.topk_idx, self.req_to_token,
            self.req_pool_indices, self.seq_lens, block_size=self.block_size, **kw,
        )

    def ours(self, **kw):
        return sparse_decode(
            self.q, self.k_cache, self.v_cache, self.topk_idx, self.req_to_token,
            self.req_pool_indices, self.seq_lens, block_size=self.block_size, page_size=self.page_size, **kw,
        )


def random_topk(gen, seq_lens, num_kv_heads, topk, block_size, *, trailing_pad, past_query_blocks=True):
    """Ragged selections: sometimes fewer than topk blocks, -1 padding (anywhere unless trailing_pad),
    the query's own partial block usually included, occasionally a block past the query."""
    batch = len(seq_lens)
    idx = torch.full((num_kv_heads, batch, topk), -1, dtype=torch.int32)
    for h in range(num_kv_heads):
        for b, seq_len in enumerate(seq_lens):
            n_blocks = math.ceil(seq_len / block_size)
            count = int(torch.randint(1, min(topk, n_blocks) + 1, (1,), generator=gen))
            chosen = torch.randperm(n_blocks, generator=gen)[:count]
            if torch.rand(1, generator=gen) < 0.7:  # the local block, like the indexer's forced one
                chosen[0] = n_blocks - 1
                chosen = chosen.unique()
            chosen = chosen.sort().values
            if past_query_blocks and not trailing_pad and len(chosen) < topk and torch.rand(1, generator=gen) < 0.3:
                chosen = torch.cat([chosen, torch.tensor([n_blocks + 1])])
            row = torch.full((topk,), -1, dtype=torch.int32)
            if trailing_pad:
                row[: len(chosen)] = chosen
            else:
                where = torch.randperm(topk, generator=gen)[: len(chosen)].sort().values
                row[where] = chosen.to(torch.int32)
            idx[h, b] = row
    return idx


def make_case(
    seed, seq_lens, *, num_q_heads, num_kv_heads, block_size, page_size, topk, dtype, device,
    head_dim=128, trailing_pad=False, strided=True,
) -> DecodeCase:
    gen = torch.Generator().manual_seed(seed)
    batch = len(seq_lens)
    max_reqs = batch + 3
    # Odd width: room for every sequence, not a multiple of the block size.
    max_context = max(seq_lens) + block_size + 3
    pages_per_req = math.ceil(max_context / page_size)
    num_pages = max_reqs * pages_per_req + 5
    page_order = torch.randperm(num_pages, generator=gen)  # shuffled page order
    req_to_token = torch.empty(max_reqs, max_context, dtype=torch.int32)
    pos = torch.arange(max_context)
    for r in range(max_reqs):
        pages = page_order[r * pages_per_req : (r + 1) * pages_per_req]
        req_to_token[r] = (pages[pos // page_size] * page_size + pos % page_size).to(torch.int32)
    num_slots = num_pages * page_size
    if strided:  # K and V as views of one bigger pool with a spare head: neither is contiguous
        pool = torch.randn(num_slots, 2, num_kv_heads + 1, head_dim, generator=gen).to(dtype)
        k_cache, v_cache = pool[:, 0, 1:], pool[:, 1, :num_kv_heads]
    else:
        k_cache = torch.randn(num_slots, num_kv_heads, head_dim, generator=gen).to(dtype)
        v_cache = torch.randn(num_slots, num_kv_heads, head_dim, generator=gen).to(dtype)
    q = torch.randn(batch, num_q_heads, head_dim, generator=gen).to(dtype)
    topk_idx = random_topk(gen, seq_lens, num_kv_heads, topk, block_size, trailing_pad=trailing_pad)
    req_pool_indices = torch.randperm(max_reqs, generator=gen)[:batch].to(torch.int32)
    seq = torch.tensor(seq_lens, dtype=torch.int32)
    to = lambda t: t.to(device)  # noqa: E731
    return DecodeCase(
        to(q), to(k_cache), to(v_cache), to(topk_idx), to(req_to_token), to(req_pool_indices), to(seq),
        block_size, page_size,
    )


TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=4e-3, rtol=1e-2),
       torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


# (seq_lens, q heads, kv heads, block, page, topk, dtype): ragged, odd batch; 1-token last blocks,
# exact multiples of the block, a 1-token sequence.
CPU_CASES = [
    ([33, 64, 1, 97, 48], 16, 1, 16, 16, 4, torch.float16),
    ([129, 32, 70], 8, 2, 32, 32, 3, torch.float16),
    ([33, 64, 1, 97, 48], 8, 2, 16, 64, 5, torch.float32),  # page holds 4 blocks: still the fast path
    ([65, 17, 96], 16, 1, 16, 1, 4, torch.float16),  # page size 1: per-token fallback
    ([65, 17, 96], 8, 2, 32, 8, 3, torch.float32),  # page smaller than a block: per-token fallback
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: f"{c[1]}x{c[2]}-blk{c[3]}-page{c[4]}-{str(c[6])[6:]}")
def test_matches_naive(case, seed, device, nan_like):
    seq_lens, hq, hk, block, page, topk, dtype = case
    c = make_case(seed, seq_lens, num_q_heads=hq, num_kv_heads=hk, block_size=block, page_size=page,
                  topk=topk, dtype=dtype, device=device, strided=seed == 0)
    out = c.ours(out=nan_like(c.q))
    ref = c.naive()
    assert not out.isnan().any()
    torch.testing.assert_close(out.float(), ref.float(), **TOL[dtype])


@pytest.mark.parametrize("num_splits,tile_n", [(1, None), (2, None), (7, 16), (None, 16), (64, 16)])
def test_split_and_tile_choices_agree(num_splits, tile_n, device, nan_like):
    c = make_case(3, [95, 32, 1, 70, 31], num_q_heads=8, num_kv_heads=2, block_size=32, page_size=32,
                  topk=4, dtype=torch.float32, device=device)
    out = c.ours(out=nan_like(c.q), num_splits=num_splits, tile_n=tile_n)
    torch.testing.assert_close(out, c.naive(), **TOL[torch.float32])


def test_choose_tiling_covers_topk():
    for batch in (1, 3, 8, 32, 64, 200):
        for heads in (1, 4):
            for topk in (1, 5, 16):
                t = choose_tiling(batch, heads, topk, 128, 132)
                tiles = topk * (128 // t.tile_n)
                assert t.num_splits * t.tiles_per_split >= tiles > (t.num_splits - 1) * t.tiles_per_split


def test_empty_rows_are_zero(device, nan_like):
    c = make_case(5, [40, 17, 64], num_q_heads=16, num_kv_heads=1, block_size=16, page_size=16,
                  topk=3, dtype=torch.float16, device=device)
    c.topk_idx[0, 0] = -1  # all padding
    c.topk_idx[0, 1] = torch.tensor([5, -1, 2], dtype=torch.int32)  # only blocks past the query (17 keys)
    for splits in (1, 3):
        out = c.ours(out=nan_like(c.q), num_splits=splits)
        assert not out.isnan().any()
        assert (out[:2] == 0).all()
        torch.testing.assert_close(out.float(), c.naive().float(), **TOL[torch.float16])


def test_padding_position_does_not_matter(device):
    c = make_case(6, [90, 50, 33], num_q_heads=8, num_kv_heads=2, block_size=16, page_size=16,
                  topk=6, dtype=torch.float32, device=device, trailing_pad=True)
    base = c.ours()
    gen = torch.Generator().manual_seed(1)
    perm = torch.randperm(6, generator=gen).to(device)
    c.topk_idx = c.topk_idx[:, :, perm].contiguous()  # -1 moves anywhere in the row
    torch.testing.assert_close(c.ours(), base, atol=1e-5, rtol=1e-5)


def test_block_table_and_plan_reuse(device, nan_like):
    c = make_case(7, [48, 16, 1, 80, 33], num_q_heads=16, num_kv_heads=1, block_size=16, page_size=32,
                  topk=4, dtype=torch.float16, device=device)
    wrapper = SparseDecodeWrapper()
    kw = dict(block_size=16, page_size=32, num_q_heads=16, num_kv_heads=1, topk=4, max_batch=5)
    wrapper.plan(c.req_to_token, c.req_pool_indices, c.seq_lens, **kw)
    table = wrapper.block_table.cpu()
    r2t, reqs, seqs = c.req_to_token.cpu(), c.req_pool_indices.cpu(), c.seq_lens.cpu()
    for b in range(5):
        n = math.ceil(int(seqs[b]) / 16)
        expect = r2t[reqs[b], torch.arange(n) * 16] // 16
        assert torch.equal(table[b, :n], expect)
        assert (table[b, n:] == -1).all()
    workspace = wrapper._workspace
    workspace.fill_(float("nan"))  # partials must be fully rewritten by every run
    out = wrapper.run(c.q, c.k_cache, c.v_cache, c.topk_idx, out=nan_like(c.q))
    torch.testing.assert_close(out.float(), c.naive().float(), **TOL[torch.float16])

    # A smaller batch reuses the buffers planned for max_batch.
    sub = slice(1, 4)
    wrapper.plan(c.req_to_token, c.req_pool_indices[sub], c.seq_lens[sub], **kw)
    assert wrapper._workspace is workspace
    out = wrapper.run(c.q[sub], c.k_cache, c.v_cache, c.topk_idx[:, sub].contiguous(), out=nan_like(c.q[sub]))
    torch.testing.assert_close(out.float(), c.naive().float()[sub], **TOL[torch.float16])


# ----------------------------------------------------------------------------------------------
# GPU: bf16, block 128, top-16; vs naive, vs upstream, CUDA graph replay.

def _upstream_decode():
    try:
        from sglang.kernels.ops.attention.minimax_sparse.decode.topk_sparse import (
            flash_decode_with_gqa_share_sparse,
        )
    except Exception as err:  # pragma: no cover - depends on the GPU bundle
        pytest.skip(f"upstream SGLang kernels not importable: {err}")
    return flash_decode_with_gqa_share_sparse


GPU_SEQS = [4097, 128, 1, 9000, 300, 2049, 16384]


@pytest.mark.gpu
@pytest.mark.parametrize("heads", [(64, 4), (16, 1)], ids=["64x4", "16x1"])
@pytest.mark.parametrize("page_size", [128, 1])
def test_gpu_bf16_vs_naive(heads, page_size, nan_like):
    c = make_case(11, GPU_SEQS, num_q_heads=heads[0], num_kv_heads=heads[1], block_size=128,
                  page_size=page_size, topk=16, dtype=torch.bfloat16, device="cuda")
    out = c.ours(out=nan_like(c.q))
    torch.testing.assert_close(out.float(), c.naive().float(), **TOL[torch.bfloat16])


@pytest.mark.gpu
@pytest.mark.parametrize("heads", [(64, 4), (16, 1)], ids=["64x4", "16x1"])
def test_gpu_bf16_vs_upstream(heads, nan_like):
    upstream = _upstream_decode()
    # Upstream expects sorted ids with trailing -1 and at least one live block per row.
    c = make_case(12, GPU_SEQS, num_q_heads=heads[0], num_kv_heads=heads[1], block_size=128,
                  page_size=128, topk=16, dtype=torch.bfloat16, device="cuda", trailing_pad=True)
    ours = c.ours(out=nan_like(c.q))
    theirs = upstream(
        q=c.q, sink=None, k_cache=c.k_cache, v_cache=c.v_cache, req_to_token=c.req_to_token,
        seq_lens=c.seq_lens, slot_ids=c.req_pool_indices, block_size=128, topk_idx=c.topk_idx,
    )
    torch.testing.assert_close(ours.float(), theirs.float(), **TOL[torch.bfloat16])
    torch.testing.assert_close(ours.float(), c.naive().float(), **TOL[torch.bfloat16])


@pytest.mark.gpu
def test_gpu_cached_launch_matches_first_launch(nan_like):
    from sglang_msa.kernels.msa_decode import paged

    c = make_case(14, [5000, 77, 640], num_q_heads=16, num_kv_heads=1, block_size=128, page_size=128,
                  topk=16, dtype=torch.bfloat16, device="cuda")
    wrapper = SparseDecodeWrapper().plan(c.req_to_token, c.req_pool_indices, c.seq_lens, block_size=128,
                                         page_size=128, num_q_heads=16, num_kv_heads=1, topk=16, num_splits=5)
    first = wrapper.run(c.q, c.k_cache, c.v_cache, c.topk_idx, out=nan_like(c.q))
    assert paged._SPLIT_LAUNCH.compiled and paged._COMBINE_LAUNCH.compiled  # later runs take the cached handle
    again = wrapper.run(c.q, c.k_cache, c.v_cache, c.topk_idx, out=nan_like(c.q))
    # A differently strided q (a view of a wider tensor) must not reuse a mismatched specialisation.
    wide = torch.randn(3, 16, 256, device="cuda").to(torch.bfloat16)
    wide[..., :128] = c.q
    strided = wrapper.run(wide[..., :128], c.k_cache, c.v_cache, c.topk_idx, out=nan_like(c.q))
    torch.cuda.synchronize()
    assert torch.equal(first, again) and torch.equal(first, strided)
    torch.testing.assert_close(first.float(), c.naive().float(), **TOL[torch.bfloat16])


@pytest.mark.gpu
@pytest.mark.parametrize("page_size", [128, 1])
def test_gpu_cuda_graph_replay_is_bit_exact(page_size):
    hq, hk, batch = 64, 4, 6
    seqs = [3000, 129, 1, 5000, 256, 700]
    c = make_case(13, seqs, num_q_heads=hq, num_kv_heads=hk, block_size=128, page_size=page_size,
                  topk=16, dtype=torch.bfloat16, device="cuda")
    kw = dict(block_size=128, page_size=page_size, num_q_heads=hq, num_kv_heads=hk, topk=16)
    static_q, static_topk, static_seq = c.q.clone(), c.topk_idx.clone(), c.seq_lens.clone()
    static_out = torch.empty_like(static_q)
    wrapper = SparseDecodeWrapper().plan(c.req_to_token, c.req_pool_indices, static_seq, **kw)
    wrapper.run(static_q, c.k_cache, c.v_cache, static_topk, out=static_out)  # autotune outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        wrapper.build_block_table()
        wrapper.run(static_q, c.k_cache, c.v_cache, static_topk, out=static_out)

    gen = torch.Generator().manual_seed(99)
    for step in range(3):
        new_seqs = [s + 37 * (step + 1) + b for b, s in enumerate(seqs)]
        new_q = torch.randn(c.q.shape, generator=gen).to(torch.bfloat16).cuda()
        new_topk = random_topk(gen, new_seqs, hk, 16, 128, trailing_pad=False).cuda()
        static_q.copy_(new_q)
        static_topk.copy_(new_topk)
        static_seq.copy_(torch.tensor(new_seqs, dtype=torch.int32))
        static_out.fill_(float("nan"))
        graph.replay()
        eager = sparse_decode(new_q, c.k_cache, c.v_cache, new_topk, c.req_to_token, c.req_pool_indices,
                              static_seq.clone(), block_size=128, page_size=page_size)
        torch.cuda.synchronize()
        assert torch.equal(static_out, eager)
        ref = naive_sparse_decode(new_q, c.k_cache, c.v_cache, new_topk, c.req_to_token, c.req_pool_indices,
                                  static_seq, block_size=128)
        torch.testing.assert_close(static_out.float(), ref.float(), **TOL[torch.bfloat16])
