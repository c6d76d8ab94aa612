"""MSA sparse prefill: block-major and query-major Triton kernels vs the fp32 reference (and upstream on GPU).

CPU: fp16/fp32 under the Triton interpreter with small blocks; GPU: bf16, block 128, M3 head shapes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sglang_msa.kernels.msa_prefill import naive_sparse_prefill, plan, run, sparse_prefill
from sglang_msa.kernels.msa_prefill.reverse_map import build_reverse_map
from sglang_msa.kernels.msa_prefill.reverse_map_counting import build_reverse_map_counting

HEAD_DIM = 128


# ----------------------------------------------------------------------------- inputs
def make_topk_idx(rng, q_pos, req_of_token, seq_lens, num_kv_heads, topk, block_size, *, layout, empty_frac=0.0, future=False):
    """Random valid selections: unique causal blocks, always the token's own block, -1 padded.

    layout "right": sorted ascending and right-padded (the indexer's format, upstream needs it);
    "scattered": entries and -1 at random positions. Some rows get fewer blocks than topk.
    future: drop in a block after the token (inside its request) where a -1 was, which must count nothing.
    """
    num_tokens = len(q_pos)
    out = np.full((num_kv_heads, num_tokens, topk), -1, dtype=np.int32)
    for g in range(num_kv_heads):
        for t in range(num_tokens):
            if rng.random() < empty_frac:
                continue
            own = q_pos[t] // block_size
            most = min(topk, own + 1)
            count = most if rng.random() < 0.5 else int(rng.integers(1, most + 1))
            others = rng.choice(own, size=count - 1, replace=False) if count > 1 else np.zeros(0, dtype=np.int64)
            row = np.sort(np.concatenate([others, [own]])).astype(np.int32)
            if future:
                last_block = (seq_lens[req_of_token[t]] - 1) // block_size
                if own < last_block and count < topk:
                    row = np.concatenate([row, [int(rng.integers(own + 1, last_block + 1))]]).astype(np.int32)
            if layout == "right":
                out[g, t, : len(row)] = row
            else:
                pos = rng.choice(topk, size=len(row), replace=False)
                out[g, t, pos] = rng.permutation(row)
    return torch.from_numpy(out)


def make_case(
    seed,
    *,
    num_q_heads,
    num_kv_heads,
    extends,
    prefixes,
    block_size,
    topk,
    page_size,
    dtype,
    device,
    layout="scattered",
    empty_frac=0.0,
    future=False,
    strided=False,
):
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [p + e for p, e in zip(prefixes, extends)]
    num_reqs = len(extends)
    max_context = max(seq_lens) + 2 * page_size
    # pages of every request scattered over a pool larger than needed, in shuffled order
    pages_needed = [math.ceil(n / page_size) for n in seq_lens]
    num_pages = sum(pages_needed) + 3
    page_order = rng.permutation(num_pages)
    max_reqs = num_reqs + 2
    req_to_token = torch.from_numpy(rng.integers(0, num_pages * page_size, size=(max_reqs, max_context)).astype(np.int32))
    pool_rows = rng.permutation(max_reqs)[:num_reqs]
    used = 0
    for r in range(num_reqs):
        pages = page_order[used : used + pages_needed[r]]
        used += pages_needed[r]
        j = np.arange(pages_needed[r] * page_size)
        req_to_token[pool_rows[r], : len(j)] = torch.from_numpy((pages[j // page_size] * page_size + j % page_size).astype(np.int32))
    max_slots = num_pages * page_size
    if strided:  # k and v as head slices of one wider pool, as a fused KV buffer would give
        pool = torch.randn(max_slots, 2 * num_kv_heads + 1, HEAD_DIM, generator=gen).to(dtype)
        k_cache, v_cache = pool[:, 1 : 1 + num_kv_heads], pool[:, 1 + num_kv_heads :]
    else:
        k_cache = torch.randn(max_slots, num_kv_heads, HEAD_DIM, generator=gen).to(dtype)
        v_cache = torch.randn(max_slots, num_kv_heads, HEAD_DIM, generator=gen).to(dtype)
    num_tokens = sum(extends)
    q = torch.randn(num_tokens, num_q_heads, HEAD_DIM, generator=gen).to(dtype)
    cu = np.concatenate([[0], np.cumsum(extends)]).astype(np.int32)
    q_pos = np.concatenate([np.arange(p, p + e) for p, e in zip(prefixes, extends)])
    req_of_token = np.repeat(np.arange(num_reqs), extends)
    topk_idx = make_topk_idx(
        rng, q_pos, req_of_token, seq_lens, num_kv_heads, topk, block_size, layout=layout, empty_frac=empty_frac, future=future
    )
    tensors = dict(
        q=q,
        k_cache=k_cache,
        v_cache=v_cache,
        topk_idx=topk_idx,
        req_to_token=req_to_token,
        req_pool_indices=torch.from_numpy(pool_rows.astype(np.int64)),
        cu_seqlens_q=torch.from_numpy(cu),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        prefix_lens=torch.tensor(prefixes, dtype=torch.int32),
    )
    return {k: v.to(device) for k, v in tensors.items()}


def reference(case, block_size):
    return naive_sparse_prefill(**case, block_size=block_size)


def ours(case, block_size, page_size, method, out, **kw):
    p = plan(
        case["cu_seqlens_q"], case["seq_lens"], case["prefix_lens"], case["req_pool_indices"],
        num_q_heads=case["q"].shape[1], num_kv_heads=case["k_cache"].shape[1], head_dim=HEAD_DIM,
        topk=case["topk_idx"].shape[-1], block_size=block_size, page_size=page_size, dtype=case["q"].dtype,
        method=method, **kw,
    )  # fmt: skip
    return run(p, case["q"], case["k_cache"], case["v_cache"], case["req_to_token"], case["topk_idx"], out=out)


def assert_close(got, want, dtype):
    assert not torch.isnan(got).any(), "unwritten (NaN) or NaN output"
    tol = {torch.float32: 2e-4, torch.float16: 4e-3, torch.bfloat16: 2.5e-2}[dtype]
    err = (got.float() - want).abs().max().item()
    assert err <= tol * max(1.0, want.abs().max().item()), f"max abs err {err}"


# ----------------------------------------------------------------------------- CPU (interpreter)
BLOCK = 16


@pytest.mark.parametrize("method,seed", [("block_major", 0), ("block_major", 1), ("query_major", 2)])
@pytest.mark.parametrize("heads", [(16, 1), (8, 2)])
@pytest.mark.parametrize("page_size", [1, BLOCK])
def test_matches_naive_ragged_prefix(method, heads, page_size, seed, device, nan_like):
    # three requests: odd extend lengths, prefixes off the block grid, one without prefix
    case = make_case(
        seed, num_q_heads=heads[0], num_kv_heads=heads[1], extends=[19, 6, 25], prefixes=[37, 0, 18],
        block_size=BLOCK, topk=5, page_size=page_size, dtype=torch.float16, device=device,
    )  # fmt: skip
    out = nan_like(case["q"])
    got = ours(case, BLOCK, page_size, method, out)
    assert got.data_ptr() == out.data_ptr()
    assert_close(got, reference(case, BLOCK), torch.float16)


@pytest.mark.parametrize("method", ["block_major", "query_major"])
def test_strided_kv_empty_rows_future_blocks(method, device, nan_like):
    # k/v are non-contiguous head slices of one pool; 15% of rows select nothing (-> zeros); some
    # rows list a block after the token, which must contribute nothing
    case = make_case(
        7, num_q_heads=8, num_kv_heads=2, extends=[19, 26], prefixes=[45, 3], block_size=BLOCK, topk=6,
        page_size=BLOCK, dtype=torch.float16, device=device, empty_frac=0.15, future=True, strided=True,
    )  # fmt: skip
    assert not case["k_cache"].is_contiguous()
    want = reference(case, BLOCK)
    empty = (case["topk_idx"] < 0).all(-1)  # [G, T]
    assert empty.any()
    got = ours(case, BLOCK, BLOCK, method, nan_like(case["q"]))
    assert_close(got, want, torch.float16)
    rows = got.view(got.shape[0], 2, 4, HEAD_DIM).permute(1, 0, 2, 3)[empty]
    assert (rows == 0).all()


@pytest.mark.parametrize("prefetch", [True, False])
def test_fp32_block32_small_items(prefetch, device, nan_like):
    # fp32 everywhere, block 32, one token per MMA tile and 3 tokens per work item so buckets split
    # into many items with ragged tails; with and without the hand-pipelined Q loads
    case = make_case(
        3, num_q_heads=16, num_kv_heads=1, extends=[41, 12], prefixes=[33, 70], block_size=32, topk=4,
        page_size=1, dtype=torch.float32, device=device,
    )  # fmt: skip
    got = ours(
        case, 32, 1, "block_major", nan_like(case["q"]), chunk_tokens=1, item_tokens=3, seg_tokens=16, prefetch=prefetch
    )
    assert_close(got, reference(case, 32), torch.float32)


def test_block_and_query_major_agree_fp32(device, nan_like):
    case = make_case(
        5, num_q_heads=8, num_kv_heads=2, extends=[21], prefixes=[50], block_size=BLOCK, topk=5,
        page_size=1, dtype=torch.float32, device=device, layout="right",
    )  # fmt: skip
    a = ours(case, BLOCK, 1, "block_major", nan_like(case["q"]))
    b = ours(case, BLOCK, 1, "query_major", nan_like(case["q"]))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert_close(a, reference(case, BLOCK), torch.float32)


def test_duplicate_block_counts_twice(device):
    # a block listed in two slots is two softmax partials (upstream loops over slots); naive agrees
    case = make_case(
        11, num_q_heads=16, num_kv_heads=1, extends=[9], prefixes=[40], block_size=BLOCK, topk=3,
        page_size=1, dtype=torch.float32, device=device, layout="right",
    )  # fmt: skip
    topk = case["topk_idx"].clone()
    topk[..., 0] = 0
    topk[..., 1] = 0
    topk[..., 2] = 1
    case["topk_idx"] = topk
    want = reference(case, BLOCK)
    once = case | {"topk_idx": topk[..., 1:].contiguous()}
    assert (want - reference(once, BLOCK)).abs().max() > 1e-3  # multiplicity matters
    for method in ("block_major", "query_major"):
        assert_close(ours(case, BLOCK, 1, method, None), want, torch.float32)


def test_reverse_map_is_csr_and_deterministic():
    rng = np.random.default_rng(0)
    num_kv_heads, topk, block = 2, 5, 16
    q_pos = np.concatenate([np.arange(10, 60), np.arange(0, 33)])
    req = np.repeat([0, 1], [50, 33])
    seq_lens = [60, 33]
    topk_idx = make_topk_idx(rng, q_pos, req, seq_lens, num_kv_heads, topk, block, layout="scattered", future=True)
    nb = [4, 3]
    first_block = torch.tensor([0, 4], dtype=torch.int32)
    seg = 32
    num_tokens = len(q_pos)
    num_seg = math.ceil(num_tokens / seg)
    token_req = torch.from_numpy(req.astype(np.int32))
    key_base = (torch.arange(num_tokens, dtype=torch.int32) // seg) * sum(nb) + first_block[token_req.long()]
    kw = dict(block_size=block, bucket_stride_group=num_seg * sum(nb), num_buckets=num_kv_heads * num_seg * sum(nb), num_items=200, item_tokens=4)
    token_pos = torch.from_numpy(q_pos.astype(np.int32))
    a = build_reverse_map(topk_idx, token_pos, key_base, **kw)
    b = build_reverse_map(topk_idx, token_pos, key_base, **kw)
    for x, y in zip(vars(a).values(), vars(b).values()):
        assert torch.equal(x, y)
    flat = topk_idx.reshape(-1).long()
    ent = torch.arange(flat.numel())
    t_of = (ent // topk) % num_tokens
    valid = (flat >= 0) & (flat * block <= token_pos[t_of].long())
    seen = []
    for w in range(kw["num_items"]):
        n = int(a.item_count[w])
        assert 0 <= n <= kw["item_tokens"]
        e = a.sorted_entry[int(a.item_start[w]) : int(a.item_start[w]) + n].long()
        if n == 0:
            continue
        g = e // (num_tokens * topk)
        t = t_of[e]
        assert (g == g[0]).all() and (flat[e] == flat[e[0]]).all() and (token_req[t] == token_req[t[0]]).all()
        assert (t[1:] > t[:-1]).all()  # token order inside a bucket
        seen.append(e)
    seen = torch.cat(seen)
    assert seen.numel() == int(valid.sum()) and torch.equal(seen.sort().values, ent[valid])


def _live_items(m, num_items):
    return [(int(m.item_bucket[w]), int(m.item_start[w]), int(m.item_count[w]))
            for w in range(num_items) if int(m.item_count[w])]


@pytest.mark.parametrize("strided", [False, True])
def test_reverse_map_counting_matches_the_sorted_map(device, strided):
    """Same work items (bucket, start, count) as the sorted map and, per item, the same entries in
    some order; entries of the sorted map's idle tail and -1 / future blocks never appear."""
    rng = np.random.default_rng(1)
    num_kv_heads, topk, block = 3, 6, 16
    q_pos = np.concatenate([np.arange(30, 101), np.arange(0, 37), np.arange(5, 6)])
    req = np.repeat([0, 1, 2], [71, 37, 1])
    seq_lens = [101, 37, 6]
    topk_idx = make_topk_idx(rng, q_pos, req, seq_lens, num_kv_heads, topk, block, layout="scattered",
                             empty_frac=0.1, future=True)
    if strided:  # a [T, G, topk] buffer seen as [G, T, topk], as an indexer output view could be
        topk_idx = topk_idx.permute(1, 0, 2).contiguous().permute(1, 0, 2)
    nb = [7, 3, 1]
    first_block = torch.tensor([0, 7, 10], dtype=torch.int32)
    seg, num_tokens = 32, len(q_pos)
    num_seg = math.ceil(num_tokens / seg)
    token_req = torch.from_numpy(req.astype(np.int32))
    key_base = (torch.arange(num_tokens, dtype=torch.int32) // seg) * sum(nb) + first_block[token_req.long()]
    kw = dict(block_size=block, bucket_stride_group=num_seg * sum(nb),
              num_buckets=num_kv_heads * num_seg * sum(nb), num_items=400, item_tokens=3)
    args = [t.to(device) for t in (topk_idx, torch.from_numpy(q_pos.astype(np.int32)), key_base)]
    want = build_reverse_map(*args, **kw)
    got = build_reverse_map_counting(*args, **kw)
    assert _live_items(got, kw["num_items"]) == _live_items(want, kw["num_items"])
    for b, start, n in _live_items(want, kw["num_items"]):
        a = want.sorted_entry[start:start + n].sort().values
        c = got.sorted_entry[start:start + n].sort().values
        assert torch.equal(a, c), (b, start)


def test_reverse_map_counting_gives_the_same_output(device, nan_like):
    case = make_case(5, num_q_heads=8, num_kv_heads=2, extends=[45, 20], prefixes=[30, 0], block_size=BLOCK,
                     topk=4, page_size=1, dtype=torch.float32, device=device, future=True, empty_frac=0.1)
    outs = {}
    for rm in ("sort", "counting"):
        outs[rm] = nan_like(tuple(case["q"].shape), dtype=torch.float32, device=device)
        ours(case, BLOCK, 1, "block_major", outs[rm], reverse_map=rm)
    assert torch.equal(outs["sort"], outs["counting"])
    assert_close(outs["counting"], reference(case, BLOCK), torch.float32)


def test_reverse_map_choice_from_the_environment(monkeypatch):
    args = (torch.tensor([0, 3], dtype=torch.int32), torch.tensor([3], dtype=torch.int32),
            torch.tensor([0], dtype=torch.int32), torch.tensor([0]))
    kw = dict(num_q_heads=2, num_kv_heads=1, head_dim=HEAD_DIM, topk=2, block_size=BLOCK, method="block_major")
    monkeypatch.delenv("SGLANG_MSA_REVERSE_MAP", raising=False)
    assert plan(*args, **kw).reverse_map == "counting"  # the default
    monkeypatch.setenv("SGLANG_MSA_REVERSE_MAP", "sort")
    assert plan(*args, **kw).reverse_map == "sort"
    assert plan(*args, **kw, reverse_map="counting").reverse_map == "counting"  # the argument wins
    monkeypatch.setenv("SGLANG_MSA_REVERSE_MAP", "radix")
    with pytest.raises(ValueError, match="reverse map"):
        plan(*args, **kw)


@pytest.mark.parametrize("method", ["block_major", "union_tile", "query_major"])
def test_plan_from_host_lens_reads_nothing_back(method, device, monkeypatch, nan_like):
    """host_lens (SGLang's *_cpu fields) give the same plan and output without reading the device
    length tensors back (each read is a sync with the GPU)."""
    case = make_case(6, num_q_heads=8, num_kv_heads=2, extends=[37, 1, 20], prefixes=[30, 64, 0],
                     block_size=BLOCK, topk=4, page_size=1, dtype=torch.float32, device=device)
    want = nan_like(tuple(case["q"].shape), dtype=torch.float32, device=device)
    ours(case, BLOCK, 1, method, want)
    host = ([37, 1, 20], [67, 65, 20], [30, 64, 0])
    banned = {id(case[k]) for k in ("cu_seqlens_q", "seq_lens", "prefix_lens")}
    real_tolist = torch.Tensor.tolist

    def guarded(t):
        assert id(t) not in banned, "plan read a device length tensor back despite host_lens"
        return real_tolist(t)

    monkeypatch.setattr(torch.Tensor, "tolist", guarded)
    got = nan_like(tuple(case["q"].shape), dtype=torch.float32, device=device)
    ours(case, BLOCK, 1, method, got, host_lens=host)
    monkeypatch.undo()
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="host_lens"):
        ours(case, BLOCK, 1, method, got, host_lens=(host[0][:2], host[1][:2], host[2][:2]))
    with pytest.raises(ValueError, match="prefix_len"):  # inconsistent lengths are still refused
        ours(case, BLOCK, 1, method, got, host_lens=(host[0], [68, 65, 20], host[2]))


def test_sink_and_bad_shapes_raise(device):
    case = make_case(
        2, num_q_heads=8, num_kv_heads=2, extends=[5], prefixes=[3], block_size=BLOCK, topk=2,
        page_size=1, dtype=torch.float16, device=device,
    )  # fmt: skip
    with pytest.raises(NotImplementedError, match="sink"):
        sparse_prefill(**case, block_size=BLOCK, sink=torch.zeros(8, HEAD_DIM))
    with pytest.raises(NotImplementedError, match="sink"):
        naive_sparse_prefill(**case, block_size=BLOCK, sink=torch.zeros(8, HEAD_DIM))
    bad = case | {"topk_idx": case["topk_idx"][:, :, :1].transpose(0, 1)}
    with pytest.raises(ValueError, match="topk_idx shape"):
        sparse_prefill(**bad, block_size=BLOCK)


# ----------------------------------------------------------------------------- GPU
def _upstream(case, block_size):
    from sglang.kernels.ops.attention.minimax_sparse.prefill.topk_sparse import flash_prefill_with_gqa_share_sparse

    cu = case["cu_seqlens_q"]
    return flash_prefill_with_gqa_share_sparse(
        q=case["q"], k_cache=case["k_cache"], v_cache=case["v_cache"], sink=None,
        req_to_token=case["req_to_token"], slot_ids=case["req_pool_indices"], topk_idx=case["topk_idx"],
        block_size_q=1, block_size_k=block_size, cu_seqlens=cu, seq_lens=case["seq_lens"],
        prefix_lens=case["prefix_lens"], max_seqlen_q=int((cu[1:] - cu[:-1]).max()),
    )  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("heads", [(64, 4), (16, 1)])
@pytest.mark.parametrize("page_size", [1, 128])
@pytest.mark.parametrize("method", ["block_major", "query_major"])
def test_gpu_bf16_block128_vs_naive_and_upstream(heads, page_size, method, nan_like):
    case = make_case(
        0, num_q_heads=heads[0], num_kv_heads=heads[1], extends=[700, 333, 1500], prefixes=[900, 0, 131],
        block_size=128, topk=16, page_size=page_size, dtype=torch.bfloat16, device="cuda", layout="right",
    )  # fmt: skip
    got = ours(case, 128, page_size, method, nan_like(case["q"]))
    want = reference(case, 128)
    assert_close(got, want, torch.bfloat16)
    rel = ((got.float() - want).norm() / want.norm()).item()
    assert rel < 1e-2, rel
    try:
        up = _upstream(case, 128)
    except ImportError:
        pytest.skip("upstream SGLang not importable here")
    up_rel = ((up.float() - want).norm() / want.norm()).item()
    assert rel < 2 * up_rel + 1e-3, (rel, up_rel)
    assert (got.float() - up.float()).abs().max().item() < 3e-2
