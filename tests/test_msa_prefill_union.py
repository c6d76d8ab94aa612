"""Union-tile sparse prefill (``plan(..., method="union_tile")``) vs the fp32 reference, and its union builder.

CPU: fp16/fp32 under the Triton interpreter, small blocks; GPU: bf16, block 128, M3 head shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_msa_prefill import BLOCK, HEAD_DIM, assert_close, make_case, ours, reference

from sglang_msa.kernels.msa_prefill import bind_topk, plan, run
from sglang_msa.kernels.msa_prefill.union_tile import U_CHUNK, build_union_map, mean_tile_union, prefer_union_tile


def coherent_topk(case, block_size, topk, *, seed, change=0.1, empty_frac=0.0, layout="right"):
    """Selections shared by neighbouring tokens: each row keeps its predecessor's older blocks and
    swaps each for a random earlier block with probability ``change``; its own block is always in."""
    rng = np.random.default_rng(seed)
    cu = case["cu_seqlens_q"].tolist()
    prefixes = case["prefix_lens"].tolist()
    num_kv_heads, num_tokens, _ = case["topk_idx"].shape
    out = np.full((num_kv_heads, num_tokens, topk), -1, dtype=np.int32)
    for g in range(num_kv_heads):
        for r in range(len(cu) - 1):
            older: list[int] = []
            for t in range(cu[r], cu[r + 1]):
                own = (prefixes[r] + t - cu[r]) // block_size
                older = [b for b in older if b < own]
                want = min(topk - 1, own)
                older = [b if rng.random() >= change else -1 for b in older]
                pool = [b for b in range(own) if b not in older]
                rng.shuffle(pool)
                older = [b if b >= 0 else pool.pop() for b in older]
                while len(older) < want:
                    older.append(pool.pop())
                if rng.random() < empty_frac:
                    continue
                row = np.array(sorted(older + [own]), dtype=np.int32)
                if layout == "right":
                    out[g, t, : len(row)] = row
                else:
                    out[g, t, rng.choice(topk, size=len(row), replace=False)] = rng.permutation(row)
    return torch.from_numpy(out).to(case["topk_idx"].device)


def union_of(case, tile_starts, tile_lens, block_size):
    """Python-set union per (group, tile) of the valid blocks (id >= 0, block starts at or before the token)."""
    topk_idx = case["topk_idx"].cpu()
    cu = case["cu_seqlens_q"].tolist()
    prefixes = case["prefix_lens"].tolist()
    pos = []
    for r in range(len(cu) - 1):
        pos += [prefixes[r] + i for i in range(cu[r + 1] - cu[r])]
    sets = []
    for g in range(topk_idx.shape[0]):
        row = []
        for s, n in zip(tile_starts, tile_lens):
            u = set()
            for t in range(s, s + n):
                u |= {int(b) for b in topk_idx[g, t].tolist() if b >= 0 and b * block_size <= pos[t]}
            row.append(u)
        sets.append(row)
    return sets


# ----------------------------------------------------------------------------- CPU (interpreter)
# prefetch: 0 the plain loop, 1 K/V prefetched by hand, 2 block table in registers (cp.async stages on
# GPU); 1 and 2 also take the membership from the union map's precomputed multiplicities
PREFETCH = [0, 1, 2]


@pytest.mark.parametrize("prefetch", PREFETCH)
@pytest.mark.parametrize(
    "heads,page_size,dtype,selection,tile_tokens",
    [
        ((8, 2), 1, torch.float16, "random", None),
        ((8, 2), 128, torch.float32, "coherent", None),
        ((16, 1), 1, torch.float32, "coherent", 4),
        ((16, 1), 128, torch.float16, "random", 2),
        ((4, 2), 1, torch.float16, "coherent", 8),
        ((2, 2), 128, torch.float32, "random", 16),
    ],
)
def test_union_tile_matches_naive(heads, page_size, dtype, selection, tile_tokens, prefetch, device, nan_like):
    # ragged batch: odd extends, prefixes off the block grid, one request without prefix; -1 padding at
    # random slots and some empty rows
    case = make_case(
        sum(heads) + page_size, num_q_heads=heads[0], num_kv_heads=heads[1], extends=[23, 5, 31],
        prefixes=[37, 0, 130], block_size=BLOCK, topk=5, page_size=page_size, dtype=dtype, device=device,
        empty_frac=0.1,
    )  # fmt: skip
    if selection == "coherent":
        case["topk_idx"] = coherent_topk(case, BLOCK, 5, seed=3, empty_frac=0.1, layout="scattered")
    assert (case["topk_idx"] < 0).any()
    got = ours(case, BLOCK, page_size, "union_tile", nan_like(case["q"]), tile_tokens=tile_tokens, prefetch=prefetch)
    assert_close(got, reference(case, BLOCK), dtype)


@pytest.mark.parametrize("prefetch,mult", [(0, False), (0, True), (1, False), (1, True), (2, False), (2, True)])
def test_union_tile_future_blocks_duplicates_strided(prefetch, mult, device, nan_like):
    # blocks after the token count nothing, a block listed twice counts twice, k/v are head slices of
    # one pool, empty rows give zeros; block 32 so a token's own block is cut by the causal mask
    case = make_case(
        5, num_q_heads=8, num_kv_heads=2, extends=[19, 26], prefixes=[45, 3], block_size=32, topk=4,
        page_size=32, dtype=torch.float32, device=device, empty_frac=0.15, future=True, strided=True,
    )  # fmt: skip
    topk = case["topk_idx"].clone()
    topk[1, 3:9, 0] = 0
    topk[1, 3:9, 1] = 0
    case["topk_idx"] = topk
    want = reference(case, 32)
    p = plan(
        case["cu_seqlens_q"], case["seq_lens"], case["prefix_lens"], case["req_pool_indices"],
        num_q_heads=8, num_kv_heads=2, head_dim=HEAD_DIM, topk=4, block_size=32, page_size=32,
        dtype=torch.float32, method="union_tile", tile_tokens=8, prefetch=prefetch,
    )  # fmt: skip
    # the loop (prefetch) and the membership source (multiplicities or the selection tile) independently
    bind_topk(p, topk)
    p.umap = build_union_map(topk, p.token_pos, p.tile_start, p.tile_len, block_size=32, tile_tokens=8,
                             max_union=p.max_union, multiplicity=mult)
    got = run(p, case["q"], case["k_cache"], case["v_cache"], case["req_to_token"], topk, out=nan_like(case["q"]))
    assert_close(got, want, torch.float32)
    empty = (topk < 0).all(-1)
    rows = got.view(got.shape[0], 2, 4, HEAD_DIM).permute(1, 0, 2, 3)[empty]
    assert empty.any() and (rows == 0).all()


@pytest.mark.parametrize("prefetch", PREFETCH)
def test_union_tile_agrees_with_block_major_fp32(prefetch, device, nan_like):
    case = make_case(
        9, num_q_heads=16, num_kv_heads=1, extends=[40], prefixes=[70], block_size=BLOCK, topk=6,
        page_size=1, dtype=torch.float32, device=device, layout="right",
    )  # fmt: skip
    case["topk_idx"] = coherent_topk(case, BLOCK, 6, seed=1)
    a = ours(case, BLOCK, 1, "union_tile", nan_like(case["q"]), prefetch=prefetch)
    b = ours(case, BLOCK, 1, "block_major", nan_like(case["q"]))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_union_builder_is_set_union_without_sync(monkeypatch):
    case = make_case(
        4, num_q_heads=16, num_kv_heads=2, extends=[13, 1, 22], prefixes=[50, 9, 0], block_size=BLOCK, topk=4,
        page_size=1, dtype=torch.float16, device="cpu", future=True, empty_frac=0.1,
    )  # fmt: skip
    tile_tokens = 4
    p = plan(
        case["cu_seqlens_q"], case["seq_lens"], case["prefix_lens"], case["req_pool_indices"],
        num_q_heads=16, num_kv_heads=2, head_dim=HEAD_DIM, topk=4, block_size=BLOCK, dtype=torch.float16,
        method="union_tile", tile_tokens=tile_tokens,
    )  # fmt: skip
    starts, lens = p.tile_start.tolist(), p.tile_len.tolist()
    assert starts == [0, 4, 8, 12, 13, 14, 18, 22, 26, 30, 34] and lens == [4, 4, 4, 1, 1, 4, 4, 4, 4, 4, 2]
    assert p.max_union == 4  # min(4 tokens x top-4, 4 causal blocks of the longest request: 63 keys)
    kw = dict(block_size=BLOCK, tile_tokens=tile_tokens, max_union=p.max_union)

    def no_sync(*a, **k):
        raise AssertionError("host sync in the union builder")

    shapes = set()
    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy"):
            m.setattr(torch.Tensor, name, no_sync)
        m.setattr(torch, "nonzero", no_sync)
        umap = build_union_map(case["topk_idx"], p.token_pos, p.tile_start, p.tile_len, **kw)
        other = build_union_map(torch.full_like(case["topk_idx"], -1), p.token_pos, p.tile_start, p.tile_len, **kw)
        mean = mean_tile_union(case["topk_idx"], p.token_pos, p.token_req, block_size=BLOCK, tile_tokens=tile_tokens)
        choice = prefer_union_tile(mean, 4)
        for u in (umap, other):
            shapes.add((tuple(u.blocks.shape), tuple(u.count.shape)))
    assert shapes == {((2, 11, p.max_union), (2, 11))}  # data-independent
    assert (other.count == 0).all() and (other.blocks == -1).all()
    want = union_of(case, starts, lens, BLOCK)
    for g in range(2):
        for i in range(len(starts)):
            n = int(umap.count[g, i])
            got = umap.blocks[g, i].tolist()
            assert got[:n] == sorted(want[g][i]) and all(b == -1 for b in got[n:]), (g, i)
    expect_mean = sum(len(u) for row in want for u in row) / (2 * len(starts))
    assert abs(float(mean) - expect_mean) < 1e-5
    assert bool(choice) == (expect_mean <= 2.5 * 4)


def test_union_multiplicities_without_sync(monkeypatch):
    # the prefetch kernels' membership: per (group, tile, union position, token) how many times the token
    # selected that block, from the same device-only build (duplicates, future blocks, -1, empty rows)
    case = make_case(
        8, num_q_heads=8, num_kv_heads=2, extends=[13, 1, 22], prefixes=[50, 9, 0], block_size=BLOCK, topk=4,
        page_size=1, dtype=torch.float16, device="cpu", future=True, empty_frac=0.1,
    )  # fmt: skip
    topk = case["topk_idx"].clone()
    topk[0, 2:7, 3] = topk[0, 2:7, 0]  # listed twice (or -1 twice)
    topk[1, 20:24, :] = topk[1, 20:24, 1:2]  # one block four times
    tile_tokens = 4
    p = plan(
        case["cu_seqlens_q"], case["seq_lens"], case["prefix_lens"], case["req_pool_indices"],
        num_q_heads=8, num_kv_heads=2, head_dim=HEAD_DIM, topk=4, block_size=BLOCK, dtype=torch.float16,
        method="union_tile", tile_tokens=tile_tokens, prefetch=2,
    )  # fmt: skip
    kw = dict(block_size=BLOCK, tile_tokens=tile_tokens, max_union=p.max_union)

    def no_sync(*a, **k):
        raise AssertionError("host sync in the union builder")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy"):
            m.setattr(torch.Tensor, name, no_sync)
        m.setattr(torch, "nonzero", no_sync)
        plain = build_union_map(topk, p.token_pos, p.tile_start, p.tile_len, **kw)
        umap = build_union_map(topk, p.token_pos, p.tile_start, p.tile_len, multiplicity=True, **kw)
        none = torch.full_like(topk, -1)
        empty = build_union_map(none, p.token_pos, p.tile_start, p.tile_len, multiplicity=True, **kw)
    assert plain.mult is None
    assert torch.equal(umap.blocks, plain.blocks) and torch.equal(umap.count, plain.count)
    assert umap.mult.shape == empty.mult.shape == (2, p.num_tiles, p.max_union + 1, tile_tokens)
    assert umap.mult.dtype == torch.uint8 and (empty.count == 0).all() and (empty.mult[:, :, :-1] == 0).all()
    pos = p.token_pos.tolist()
    starts, lens = p.tile_start.tolist(), p.tile_len.tolist()
    seen_dup = False
    for g in range(2):
        for i, (s0, n) in enumerate(zip(starts, lens)):
            blocks = umap.blocks[g, i, : int(umap.count[g, i])].tolist()
            for u, b in enumerate(blocks):
                for t in range(tile_tokens):
                    row = topk[g, s0 + t].tolist() if t < n else []
                    want = sum(1 for x in row if x == b and b * BLOCK <= pos[s0 + t])
                    assert int(umap.mult[g, i, u, t]) == want, (g, i, u, t)
                    seen_dup |= want > 1
            assert (umap.mult[g, i, len(blocks) : p.max_union] == 0).all()
    assert seen_dup


@pytest.mark.parametrize("prefetch", PREFETCH)
def test_union_tile_wider_than_a_block_table_chunk(prefetch, device, nan_like):
    # random selections over a long prefix: tile unions wider than the U_CHUNK block ids that
    # prefetch 2 loads at once, and more blocks than the two prefetch 1 keeps in flight
    case = make_case(
        12, num_q_heads=2, num_kv_heads=1, extends=[20], prefixes=[1000], block_size=BLOCK, topk=8,
        page_size=BLOCK, dtype=torch.float32, device=device,
    )  # fmt: skip
    p = plan(
        case["cu_seqlens_q"], case["seq_lens"], case["prefix_lens"], case["req_pool_indices"],
        num_q_heads=2, num_kv_heads=1, head_dim=HEAD_DIM, topk=8, block_size=BLOCK, page_size=BLOCK,
        dtype=torch.float32, method="union_tile", tile_tokens=16, prefetch=prefetch, topk_idx=case["topk_idx"],
    )  # fmt: skip
    assert int(p.umap.count.max()) > U_CHUNK
    got = run(p, case["q"], case["k_cache"], case["v_cache"], case["req_to_token"], case["topk_idx"],
              out=nan_like(case["q"]))
    assert_close(got, reference(case, BLOCK), torch.float32)


def test_mean_union_tells_coherent_from_random(device):
    case = make_case(
        6, num_q_heads=2, num_kv_heads=2, extends=[64, 48], prefixes=[900, 700], block_size=BLOCK, topk=8,
        page_size=1, dtype=torch.float16, device=device, layout="right",
    )  # fmt: skip
    kw = dict(block_size=BLOCK, tile_tokens=16)
    p = plan(
        case["cu_seqlens_q"], case["seq_lens"], case["prefix_lens"], case["req_pool_indices"],
        num_q_heads=2, num_kv_heads=2, head_dim=HEAD_DIM, topk=8, block_size=BLOCK, dtype=torch.float16,
        method="block_major",
    )  # fmt: skip
    rand = mean_tile_union(case["topk_idx"], p.token_pos, p.token_req, **kw)
    coh = mean_tile_union(coherent_topk(case, BLOCK, 8, seed=0, change=0.05), p.token_pos, p.token_req, **kw)
    assert float(coh) < 2.5 * 8 < float(rand), (float(coh), float(rand))
    assert bool(prefer_union_tile(coh, 8)) and not bool(prefer_union_tile(rand, 8))


def test_method_env_and_validation(monkeypatch):
    args = (torch.tensor([0, 40], dtype=torch.int32), torch.tensor([40], dtype=torch.int32),
            torch.tensor([0], dtype=torch.int32), torch.tensor([0]))  # fmt: skip
    kw = dict(num_q_heads=8, num_kv_heads=1, head_dim=HEAD_DIM, topk=4, block_size=BLOCK, dtype=torch.float16)
    monkeypatch.delenv("SGLANG_MSA_PREFILL_METHOD", raising=False)
    assert plan(*args, **kw).method == "query_major"  # auto unchanged
    monkeypatch.setenv("SGLANG_MSA_PREFILL_METHOD", "union_tile")
    p = plan(*args, **kw)
    assert p.method == "union_tile" and p.tile_tokens == 16 and p.num_tiles == 3
    assert plan(*args, **kw, method="block_major").method == "block_major"  # explicit wins
    monkeypatch.setenv("SGLANG_MSA_PREFILL_METHOD", "bogus")
    with pytest.raises(ValueError, match="unknown method"):
        plan(*args, **kw)
    monkeypatch.delenv("SGLANG_MSA_PREFILL_METHOD")
    with pytest.raises(ValueError, match="tile_tokens"):
        plan(*args, **kw, method="union_tile", tile_tokens=1)  # 1 token x 8 heads < 16 MMA rows
    # prefetch: off for union_tile unless asked (block_major keeps its default on)
    assert plan(*args, **kw, method="union_tile").prefetch == 0
    assert plan(*args, **kw, method="block_major").prefetch is True
    p = plan(*args, **kw, method="union_tile", prefetch=2)
    assert p.prefetch == 2 and p.num_stages == 3
    assert plan(*args, **kw, method="union_tile", prefetch=True, num_stages=4).num_stages == 4
    with pytest.raises(ValueError, match="prefetch"):
        plan(*args, **kw, method="union_tile", prefetch=3)


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("heads", [(64, 4), (16, 1), (8, 1)])
@pytest.mark.parametrize("page_size", [1, 128])
@pytest.mark.parametrize("selection", ["random", "coherent"])
@pytest.mark.parametrize("prefetch", PREFETCH)
def test_gpu_bf16_block128_union_tile(heads, page_size, selection, prefetch, nan_like):
    case = make_case(
        0, num_q_heads=heads[0], num_kv_heads=heads[1], extends=[700, 333, 1500], prefixes=[900, 0, 131],
        block_size=128, topk=16, page_size=page_size, dtype=torch.bfloat16, device="cuda", layout="right",
    )  # fmt: skip
    if selection == "coherent":
        case["topk_idx"] = coherent_topk(case, 128, 16, seed=0)
    got = ours(case, 128, page_size, "union_tile", nan_like(case["q"]), prefetch=prefetch)
    want = reference(case, 128)
    assert_close(got, want, torch.bfloat16)
    assert ((got.float() - want).norm() / want.norm()).item() < 1e-2
