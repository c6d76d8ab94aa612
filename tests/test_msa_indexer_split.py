"""indexer_prefill's split-K path (issue #13): split_k ranges of key blocks per query tile + a merge.

The selection must be identical to the unsplit kernel's (ties included) and match the fp32
reference. CPU: fp16/fp32 under the Triton interpreter, block 16, small shapes.
"""

from __future__ import annotations

import pytest
import torch

from sglang_msa.kernels.msa_indexer import indexer_prefill, naive_indexer_prefill
from sglang_msa.kernels.msa_indexer import prefill as prefill_mod
from test_msa_indexer import (
    POISON,
    adjusted_scores,
    check_structure,
    compare_selections,
    make_batch,
    n_causal_rows,
)

SPLIT_CASES = [
    # (ext_lens, prefix_lens, num_heads, page, topk, init, local, dtype): block 16
    ([37, 5, 90], [20, 70, 0], 1, 1, 4, 1, 1, torch.float16),    # ragged, 5-token request: 5 blocks
    ([61, 3], [0, 130], 4, 16, 5, 2, 1, torch.float32),          # H_idx 4, page = block
    ([33, 1], [200, 9], 1, 128, 6, 0, 2, torch.float16),          # page 128, 1-token extend (1 block)
]


@pytest.fixture
def poisoned_workspace(monkeypatch):
    """Split workspace pre-filled with NaN scores and out-of-range ids: an unwritten slot would show."""
    real = prefill_mod._alloc_split_workspace
    seen = []

    def alloc(*a):
        score, ids = real(*a)
        score.fill_(float("nan"))
        ids.fill_(2**30)
        seen.append(score.shape)
        return score, ids

    monkeypatch.setattr(prefill_mod, "_alloc_split_workspace", alloc)
    return seen


@pytest.mark.parametrize("case", SPLIT_CASES)
@pytest.mark.parametrize("split_k", [2, 3, 5])
@pytest.mark.parametrize("score_type", ["max", "lse"])
def test_split_matches_unsplit_and_naive(case, split_k, score_type, device, poisoned_workspace):
    ext, pre, heads, page, topk, init, local, dtype = case
    b = make_batch(ext, pre, num_heads=heads, page_size=page, dtype=dtype, seed=split_k, device=device)
    kw = dict(block_size=16, topk=topk, init_blocks=init, local_blocks=local, score_type=score_type,
              page_size=page)
    unsplit = indexer_prefill(**b, split_k=1, **kw)
    assert not poisoned_workspace
    out = torch.full((heads, sum(ext), topk), POISON, dtype=torch.int32, device=device)
    ours = indexer_prefill(**b, split_k=split_k, out=out, **kw)
    assert ours.data_ptr() == out.data_ptr()
    assert poisoned_workspace == [(split_k, sum(ext), heads, topk)]
    assert torch.equal(ours.cpu(), unsplit.cpu())  # bit-identical selection
    kw.pop("page_size")
    ref = naive_indexer_prefill(**b, **kw)
    check_structure(ours, n_causal_rows(b, 16), topk)
    scores = adjusted_scores(b, block_size=16, init_blocks=init, local_blocks=local, score_type=score_type)
    assert compare_selections(ours, ref, scores, tol=1e-5) <= 2


@pytest.mark.parametrize("heads,page", [(1, 1), (4, 16)])
@pytest.mark.parametrize("split_k", [2, 5])
def test_split_tie_rule_exact(heads, page, split_k, device):
    """Integer inputs and repeated keys: many exact score ties, the lower block id must win."""
    b = make_batch([50, 29], [44, 3], num_heads=heads, page_size=page, dtype=torch.float16, seed=7,
                   device=device, integer=True)
    # identical keys across whole blocks: every block scores the same
    k = b["idx_k_cache"]
    k[:] = k[:1]
    kw = dict(block_size=16, topk=4, init_blocks=1, local_blocks=1, score_type="max", page_size=page)
    unsplit = indexer_prefill(**b, split_k=1, **kw)
    split = indexer_prefill(**b, split_k=split_k, **kw)
    kw.pop("page_size")
    ref = naive_indexer_prefill(**b, **kw)
    assert torch.equal(split.cpu(), unsplit.cpu())
    assert torch.equal(split.cpu(), ref)


def test_split_integer_ties_without_forcing(device):
    b = make_batch([70], [90], num_heads=2, page_size=1, dtype=torch.float16, seed=3, device=device,
                   integer=True)
    kw = dict(block_size=16, topk=5, init_blocks=0, local_blocks=0, score_type="max")
    ref = naive_indexer_prefill(**b, **kw)
    for s in (2, 3):
        assert torch.equal(indexer_prefill(**b, split_k=s, **kw).cpu(), ref)


def test_split_short_rows_pad_with_minus_one(device):
    """Fewer causal blocks than topk (and more ranges than blocks): all causal blocks, then -1."""
    b = make_batch([40, 7], [0, 9], num_heads=1, page_size=1, dtype=torch.float16, seed=3, device=device)
    out = torch.full((1, 47, 8), POISON, dtype=torch.int32, device=device)
    ours = indexer_prefill(**b, block_size=16, topk=8, init_blocks=1, local_blocks=1, split_k=5, out=out).cpu()
    n_causal = n_causal_rows(b, 16)
    expect = torch.arange(8)[None, :].expand(len(n_causal), 8)
    expect = torch.where(expect < n_causal[:, None], expect, -1).int()
    assert torch.equal(ours, expect[None])


def test_split_k_env_and_rule(monkeypatch, device):
    b = make_batch([20], [40], num_heads=1, page_size=1, dtype=torch.float16, seed=1, device=device)
    kw = dict(block_size=16, topk=3, init_blocks=1, local_blocks=1)
    seen = []
    real = prefill_mod._alloc_split_workspace
    monkeypatch.setattr(prefill_mod, "_alloc_split_workspace", lambda *a: seen.append(a[0]) or real(*a))
    monkeypatch.setenv(prefill_mod.SPLIT_K_ENV, "3")
    forced = indexer_prefill(**b, **kw)
    assert seen == [3]
    assert torch.equal(indexer_prefill(**b, split_k=1, **kw), forced)  # the argument beats the env
    assert seen == [3]
    monkeypatch.setenv(prefill_mod.SPLIT_K_ENV, "auto")
    indexer_prefill(**b, **kw)
    assert seen == [3] if device == "cpu" else True  # the automatic rule gives 1 off CUDA
    monkeypatch.setattr(prefill_mod, "_sm_count", lambda dev: 132)  # an H100, without one
    cuda = torch.device("cuda")
    monkeypatch.delenv(prefill_mod.SPLIT_K_ENV)  # unset: the automatic rule (the default)
    assert prefill_mod.choose_split_k(None, 20, cuda) == 16  # a ~2.5k-token extend: 20 programs
    assert prefill_mod.choose_split_k(None, 128, cuda) == 5
    assert prefill_mod.choose_split_k(None, 128, torch.device("cpu")) == 1
    for off in ("0", "1"):  # the off switch
        monkeypatch.setenv(prefill_mod.SPLIT_K_ENV, off)
        assert prefill_mod.choose_split_k(None, 20, cuda) == 1
    monkeypatch.setenv(prefill_mod.SPLIT_K_ENV, "four")
    with pytest.raises(ValueError, match="SGLANG_MSA_INDEXER_SPLIT_K='four'"):
        prefill_mod.choose_split_k(None, 20, cuda)
    monkeypatch.setenv(prefill_mod.SPLIT_K_ENV, "auto")
    assert prefill_mod.choose_split_k(None, 20, cuda) == 16
    assert prefill_mod.choose_split_k(None, 128, torch.device("cpu")) == 1
    # the rule: 1 when the grid already has >= 3 programs per SM, else >= 4 per SM, capped
    assert prefill_mod.auto_split_k(128, 132) == 5  # 16k tokens, 1 index head, 128-row tiles
    assert prefill_mod.auto_split_k(64, 132) == 9   # 8k chunk
    assert prefill_mod.auto_split_k(512, 132) == 1  # 16k tokens, 4 index heads
    assert prefill_mod.auto_split_k(1, 132) == prefill_mod.MAX_SPLIT_K
    # >= MIN_SPLIT_RANGE_BLOCKS key blocks per range where the longest request's keys are known
    assert prefill_mod.auto_split_k(16, 132, key_blocks=16) == 1   # a 2k-token prompt, no prefix
    assert prefill_mod.auto_split_k(16, 132, key_blocks=64) == 4
    assert prefill_mod.auto_split_k(16, 132, key_blocks=512) == 16  # 2k over 64k: as measured
    assert prefill_mod.auto_split_k(128, 132, key_blocks=128) == 5  # a first 16k chunk: unchanged
    assert prefill_mod.choose_split_k(None, 20, cuda, key_blocks=40) == 2
    assert prefill_mod.choose_split_k(3, 20, cuda, key_blocks=1) == 3  # a forced S is not capped
    # indexer_prefill hands the rule the key blocks of max_seqlen_k (block 16: 100 keys = 7 blocks)
    got, real_choose = [], prefill_mod.choose_split_k
    monkeypatch.setattr(prefill_mod, "choose_split_k", lambda *a: got.append(a[3]) or real_choose(*a))
    indexer_prefill(**b, max_seqlen_k=100, **kw)
    indexer_prefill(**b, **kw)
    assert got == [7, None]
    assert prefill_mod.split_workspace_bytes(16384, 1, 16, 5) == 16384 * 5 * 16 * 8
    assert prefill_mod.split_workspace_bytes(16384, 1, 16, 1) == 0


@pytest.mark.gpu
@pytest.mark.parametrize("heads,page", [(1, 128), (1, 1), (4, 128)])
def test_gpu_split_bf16_equals_unsplit(heads, page):
    """bf16, block 128, top-16 over a long prefix: the automatic split (and S = 7) select exactly the
    unsplit kernel's blocks (same tile config, so the same per-row dot products)."""
    ext, pre = [4000, 300], [60000, 9000]
    b = make_batch(ext, pre, num_heads=heads, page_size=page, dtype=torch.bfloat16, seed=0, device="cuda")
    kw = dict(block_size=128, topk=16, init_blocks=0, local_blocks=1, page_size=page, max_seqlen_q=max(ext),
              block_m=128, num_warps=8, maxnreg=128)
    unsplit = indexer_prefill(**b, split_k=1, **kw)
    for s in (None, 7):
        assert torch.equal(indexer_prefill(**b, split_k=s, **kw), unsplit), s
