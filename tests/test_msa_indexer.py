"""MSA indexer kernels (prefill fused top-k, decode split-K + top-k) against the fp32 reference.

CPU: fp16/fp32 under the Triton interpreter, small shapes, block 16/32. GPU (`-m gpu`): bf16, block
128, top-16 against the reference and against upstream SGLang's indexer kernels.
"""

from __future__ import annotations

import math

import pytest
import triton
import torch

from sglang_msa.kernels.msa_indexer import (
    IndexerDecode,
    indexer_decode,
    indexer_prefill,
    naive_indexer_decode,
    naive_indexer_prefill,
)
from sglang_msa.kernels.msa_indexer.decode import TOPK_PART_ENV, choose_topk_part
from sglang_msa.kernels.msa_indexer.naive import (
    INIT_SCORE,
    LOCAL_SCORE,
    naive_block_scores_prefill,
)

POISON = -777  # int32 outputs cannot hold NaN: pre-fill with a value no kernel writes


def make_batch(ext_lens, prefix_lens, *, num_heads, page_size, dtype, seed, device, head_dim=128,
               integer=False, strided_k=True):
    """A paged batch: shuffled pages (page_size 1 = every token its own slot), shuffled pool rows."""
    g = torch.Generator().manual_seed(seed)
    batch = len(ext_lens)
    seq_lens = [e + p for e, p in zip(ext_lens, prefix_lens)]
    pages_per_req = math.ceil((max(seq_lens) + page_size) / page_size)
    max_ctx = pages_per_req * page_size
    n_pages = batch * pages_per_req + 3
    page_order = torch.randperm(n_pages, generator=g)
    n_rows = batch + 2
    req_to_token = torch.randint(0, n_pages * page_size, (n_rows, max_ctx), generator=g, dtype=torch.int32)
    pool = torch.randperm(n_rows, generator=g)[:batch]
    pos = torch.arange(max_ctx)
    for r in range(batch):
        pages = page_order[r * pages_per_req:(r + 1) * pages_per_req]
        req_to_token[pool[r]] = (pages[pos // page_size] * page_size + pos % page_size).int()
    max_slots = n_pages * page_size
    total_q = sum(ext_lens)

    def rand(*shape):
        if integer:  # small integers: exact dot products, so block scores tie a lot
            return torch.randint(-1, 2, shape, generator=g).to(dtype)
        return torch.randn(*shape, generator=g).to(dtype)

    idx_q = rand(total_q, num_heads, head_dim)
    k_store = rand(max_slots, 2, head_dim)
    idx_k = k_store[:, 1:2] if strided_k else k_store[:, :1].contiguous()
    cu = torch.tensor([0] + list(torch.tensor(ext_lens).cumsum(0)), dtype=torch.int32)
    t = dict(idx_q=idx_q, idx_k_cache=idx_k, req_to_token=req_to_token, req_pool_indices=pool,
             cu_seqlens_q=cu, seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
             prefix_lens=torch.tensor(prefix_lens, dtype=torch.int32))
    return {k: v.to(device) for k, v in t.items()}


def adjusted_scores(batch, *, block_size, init_blocks, local_blocks, score_type):
    """[H, T, N] reference block scores after forcing, -inf outside each row's causal blocks."""
    per_req = naive_block_scores_prefill(*[batch[k].cpu() for k in (
        "idx_q", "idx_k_cache", "req_to_token", "req_pool_indices", "cu_seqlens_q", "seq_lens",
        "prefix_lens")], block_size=block_size, score_type=score_type)
    n_max = max(s.shape[-1] for s in per_req)
    rows = []
    for r, s in enumerate(per_req):
        n_q, n = s.shape[1], s.shape[2]
        pos = int(batch["prefix_lens"][r]) + torch.arange(n_q)
        n_causal = (pos // block_size + 1)[:, None]
        blk = torch.arange(n)[None, :]
        s = torch.where(blk < init_blocks, INIT_SCORE, s)
        s = torch.where((blk >= n_causal - local_blocks) & (blk < n_causal), LOCAL_SCORE, s)
        s = torch.where(blk < n_causal, s, float("-inf"))
        rows.append(torch.nn.functional.pad(s, (0, n_max - n), value=float("-inf")))
    return torch.cat(rows, dim=1)


def check_structure(out, n_causal, topk):
    """Every row: min(topk, n_causal) distinct ascending causal ids, then -1."""
    out = out.cpu().long()
    count = torch.clamp(n_causal, max=topk).to(out.device)
    slot = torch.arange(topk)
    valid = slot[None, None, :] < count[None, :, None]
    assert torch.all(torch.where(valid, out >= 0, out == -1)), "wrong -1 padding"
    assert torch.all(torch.where(valid, out < n_causal[None, :, None], True)), "non-causal block"
    inc = out[..., 1:] > out[..., :-1]
    assert torch.all(torch.where(valid[..., 1:], inc, True)), "ids not strictly ascending"


def compare_selections(ours, ref, scores, *, tol):
    """Rows whose ids differ must select the same multiset of scores up to tol (a near tie at the
    top-k boundary). Returns the number of such rows."""
    ours, ref = ours.cpu().long(), ref.cpu().long()
    differ = (ours != ref).any(-1)
    if not differ.any():
        return 0
    h, t = differ.nonzero(as_tuple=True)
    s = scores[h, t]
    pick = lambda ids: torch.where(ids >= 0, s.gather(1, ids.clamp(min=0)), float("-inf"))
    so = pick(ours[h, t]).sort(dim=-1, descending=True).values
    sr = pick(ref[h, t]).sort(dim=-1, descending=True).values
    finite = torch.isfinite(sr)
    assert torch.equal(finite, torch.isfinite(so))
    gap = (so - sr).abs().where(finite, torch.zeros_like(so))
    allowed = tol * (1 + sr.abs().where(finite, torch.zeros_like(sr)))
    assert torch.all(gap <= allowed), f"{len(h)} rows differ beyond a tie (max gap {gap.max():.3g})"
    return len(h)


def n_causal_rows(batch, block_size):
    cu, pre = batch["cu_seqlens_q"].cpu(), batch["prefix_lens"].cpu()
    n = []
    for r in range(len(pre)):
        n.append(int(pre[r]) + torch.arange(int(cu[r + 1] - cu[r])))
    return torch.cat(n) // block_size + 1


PREFILL_CASES = [
    # (ext_lens, prefix_lens, num_heads, block, page, topk, init, local)
    ([37, 5, 90], [20, 70, 0], 1, 16, 1, 4, 1, 1),
    ([37, 5, 90], [20, 70, 0], 2, 16, 16, 4, 1, 2),
    ([61, 3], [0, 100], 4, 16, 1, 5, 2, 1),
    ([45], [33], 2, 32, 32, 3, 0, 1),
    ([70, 1], [0, 130], 1, 16, 32, 6, 1, 0),
]


@pytest.mark.parametrize("case", PREFILL_CASES)
@pytest.mark.parametrize("score_type", ["max", "lse"])
def test_prefill_matches_naive(case, score_type, device):
    ext, pre, heads, block, page, topk, init, local = case
    for seed, dtype in [(0, torch.float16), (1, torch.float32)]:
        b = make_batch(ext, pre, num_heads=heads, page_size=page, dtype=dtype, seed=seed, device=device)
        kw = dict(block_size=block, topk=topk, init_blocks=init, local_blocks=local, score_type=score_type)
        out = torch.full((heads, sum(ext), topk), POISON, dtype=torch.int32, device=device)
        ours = indexer_prefill(**b, page_size=page, out=out, **kw)
        assert ours.data_ptr() == out.data_ptr()
        ref = naive_indexer_prefill(**b, **kw)
        check_structure(ours, n_causal_rows(b, block), topk)
        scores = adjusted_scores(b, block_size=block, init_blocks=init, local_blocks=local,
                                 score_type=score_type)
        assert compare_selections(ours, ref, scores, tol=1e-5) <= 2


@pytest.mark.parametrize("heads,page", [(1, 1), (2, 16)])
@pytest.mark.parametrize("topk,init,local", [(4, 1, 1), (6, 0, 2), (5, 2, 0)])
def test_prefill_tie_rule_exact(heads, page, topk, init, local, device):
    """Integer inputs make most block scores tie: the lower block id must win, exactly like naive."""
    b = make_batch([50, 29], [44, 3], num_heads=heads, page_size=page, dtype=torch.float16, seed=7,
                   device=device, integer=True)
    kw = dict(block_size=16, topk=topk, init_blocks=init, local_blocks=local, score_type="max")
    ours = indexer_prefill(**b, page_size=page, **kw)
    ref = naive_indexer_prefill(**b, **kw)
    assert torch.equal(ours.cpu(), ref)


def test_prefill_short_sequences_take_all_blocks(device):
    """Fewer causal blocks than topk: every causal block, ascending, then -1."""
    b = make_batch([40, 7], [0, 9], num_heads=2, page_size=1, dtype=torch.float16, seed=3, device=device)
    ours = indexer_prefill(**b, block_size=16, topk=8, init_blocks=1, local_blocks=1).cpu()
    n_causal = n_causal_rows(b, 16)
    expect = torch.arange(8)[None, :].expand(len(n_causal), 8)
    expect = torch.where(expect < n_causal[:, None], expect, -1).int()
    assert torch.equal(ours, expect[None].expand(2, -1, -1))


@pytest.mark.parametrize("page", [1, 16])
def test_prefill_pool_only_diagnostic(page, device):
    """indexer_prefill(pool_only=True) (a benchmark diagnostic): the same dots and pooling without the
    top-k list; slot 0 of each row holds the sum of its pooled causal block scores (naive's units), the
    other slots are left alone."""
    b = make_batch([37, 5, 30], [20, 70, 0], num_heads=2, page_size=page, dtype=torch.float32, seed=4,
                   device=device, head_dim=32)
    out = torch.full((2, 72, 4), POISON, dtype=torch.int32, device=device)
    kw = dict(block_size=16, topk=4, init_blocks=1, local_blocks=1)
    indexer_prefill(**b, page_size=page, out=out, pool_only=True, **kw)
    per_req = naive_block_scores_prefill(*[b[k].cpu() for k in (
        "idx_q", "idx_k_cache", "req_to_token", "req_pool_indices", "cu_seqlens_q", "seq_lens",
        "prefix_lens")], block_size=16)
    expect = torch.cat([torch.where(torch.isfinite(s), s, 0.0).sum(-1) for s in per_req], dim=1)
    got = out[..., 0].cpu().view(torch.float32)
    assert torch.allclose(got, expect, rtol=1e-4, atol=1e-3)
    assert torch.all(out[..., 1:].cpu() == POISON)
    with pytest.raises(ValueError, match="split_k=1"):
        indexer_prefill(**b, page_size=page, pool_only=True, split_k=2, **kw)


@pytest.mark.parametrize("case", PREFILL_CASES)
@pytest.mark.parametrize("score_type", ["max", "lse"])
def test_prefill_pipelined_dots_select_the_same_blocks(case, score_type, device):
    """indexer_prefill(pipeline_dots=True) (block j + 1's dots issued before block j is pooled) gives
    the plain loop's selection bit for bit: unsplit and split-K, and its pool-only checksum too."""
    ext, pre, heads, block, page, topk, init, local = case
    b = make_batch(ext, pre, num_heads=heads, page_size=page, dtype=torch.float32, seed=11, device=device)
    kw = dict(page_size=page, block_size=block, topk=topk, init_blocks=init, local_blocks=local,
              score_type=score_type)
    for split in (1, 2):
        out = torch.full((heads, sum(ext), topk), POISON, dtype=torch.int32, device=device)
        plain = indexer_prefill(**b, split_k=split, **kw)
        piped = indexer_prefill(**b, split_k=split, pipeline_dots=True, out=out, **kw)
        assert torch.equal(piped.cpu(), plain.cpu()), split
    sums = [torch.full((heads, sum(ext), topk), POISON, dtype=torch.int32, device=device) for _ in range(2)]
    indexer_prefill(**b, pool_only=True, out=sums[0], **kw)
    indexer_prefill(**b, pool_only=True, pipeline_dots=True, out=sums[1], **kw)
    assert torch.equal(sums[0].cpu(), sums[1].cpu())


def test_prefill_forced_blocks_present(device):
    b = make_batch([80], [200], num_heads=1, page_size=1, dtype=torch.float16, seed=5, device=device)
    ours = indexer_prefill(**b, block_size=16, topk=6, init_blocks=2, local_blocks=2).cpu().long()
    n_causal = n_causal_rows(b, 16)
    for need in (torch.zeros_like(n_causal), torch.ones_like(n_causal), n_causal - 1, n_causal - 2):
        assert (ours[0] == need[:, None]).any(-1).all()


DECODE_CASES = [
    # (seq_lens, num_heads, block, page, topk, init, local, num_splits)
    ([37, 5, 200, 64], 1, 16, 1, 4, 1, 1, None),
    ([37, 5, 200, 64], 4, 16, 16, 4, 1, 2, 3),
    ([257, 1, 95], 2, 32, 1, 3, 0, 1, 64),
    ([300, 33], 2, 16, 32, 6, 2, 0, 1),
]


@pytest.mark.parametrize("case", DECODE_CASES)
@pytest.mark.parametrize("score_type", ["max", "lse"])
def test_decode_matches_naive(case, score_type, device):
    seqs, heads, block, page, topk, init, local, splits = case
    for seed, dtype in [(0, torch.float16), (1, torch.float32)]:
        b = make_batch([1] * len(seqs), [s - 1 for s in seqs], num_heads=heads, page_size=page,
                       dtype=dtype, seed=seed, device=device)
        kw = dict(block_size=block, topk=topk, init_blocks=init, local_blocks=local, score_type=score_type)
        dec = IndexerDecode(num_heads=heads, head_dim=128, page_size=page, **kw)
        dec.plan(len(seqs) + 1, max(seqs) + 5, device, num_splits=splits)
        dec.workspace.fill_(float("inf"))  # an unwritten block score would win every selection
        out = torch.full((heads, len(seqs), topk), POISON, dtype=torch.int32, device=device)
        args = [b[k] for k in ("idx_q", "idx_k_cache", "req_to_token", "req_pool_indices", "seq_lens")]
        ours = dec.run(*args, out=out)
        ref = naive_indexer_decode(*args, **kw)
        check_structure(ours, n_causal_rows(b, block), topk)
        scores = adjusted_scores(b, block_size=block, init_blocks=init, local_blocks=local,
                                 score_type=score_type)
        assert compare_selections(ours, ref, scores, tol=1e-5) <= 1


@pytest.mark.parametrize("splits", [1, 5])
def test_decode_tie_rule_exact(splits, device):
    seqs = [150, 90, 17]
    b = make_batch([1] * 3, [s - 1 for s in seqs], num_heads=2, page_size=1, dtype=torch.float16,
                   seed=11, device=device, integer=True)
    args = [b[k] for k in ("idx_q", "idx_k_cache", "req_to_token", "req_pool_indices", "seq_lens")]
    kw = dict(block_size=16, topk=5, init_blocks=1, local_blocks=1, score_type="max")
    ours = indexer_decode(*args, num_splits=splits, **kw)
    assert torch.equal(ours.cpu(), naive_indexer_decode(*args, **kw))


def test_decode_matches_prefill_last_token(device):
    """A decode step equals the prefill row of the same (last) token."""
    b = make_batch([1, 1], [120, 45], num_heads=2, page_size=16, dtype=torch.float16, seed=2, device=device)
    kw = dict(block_size=16, topk=4, init_blocks=1, local_blocks=1)
    pre = indexer_prefill(**b, page_size=16, **kw)
    dec = indexer_decode(*[b[k] for k in ("idx_q", "idx_k_cache", "req_to_token", "req_pool_indices",
                                          "seq_lens")], page_size=16, **kw)
    assert torch.equal(pre.cpu(), dec.cpu())


def test_decode_chunked_topk(device):
    """Rows longer than the top-k chunk exercise the merge across chunks."""
    seqs = [16 * 150 + 3]
    b = make_batch([1], [seqs[0] - 1], num_heads=1, page_size=16, dtype=torch.float16, seed=4,
                   device=device, head_dim=16)
    args = [b[k] for k in ("idx_q", "idx_k_cache", "req_to_token", "req_pool_indices", "seq_lens")]
    kw = dict(block_size=16, topk=6, init_blocks=1, local_blocks=1, score_type="max")
    dec = IndexerDecode(num_heads=1, head_dim=16, page_size=16, **kw).plan(1, seqs[0], device, num_splits=4)
    dec.chunk = 32  # force 5 chunks
    ours = dec.run(*args)
    ref = naive_indexer_decode(*args, **kw)
    scores = adjusted_scores(b, block_size=16, init_blocks=1, local_blocks=1, score_type="max")
    assert compare_selections(ours, ref, scores, tol=1e-5) == 0


# ----------------------------------------------------------------------------------------------
# GPU: bf16, block 128, top-16, against the reference and upstream SGLang

GPU_HEADS = [4, 1]  # index heads of 64/4 and of 16/1 (TP4) sparse layers


def _upstream():
    import os

    # upstream's default decode top-k is a JIT-compiled CUDA radix select (nvcc at first use); its
    # Triton fallback has the same selection rule and costs no nvcc time here
    os.environ["SGLANG_OPT_USE_MINIMAX_DECODE_TOPK_RADIX"] = "0"
    try:
        from sglang.kernels.ops.attention.minimax_sparse.decode.flash_with_topk_idx import (
            flash_decode_with_topk_idx,
        )
        from sglang.kernels.ops.attention.minimax_sparse.prefill.flash_with_topk_idx import (
            flash_prefill_with_topk_index,
        )
    except Exception as exc:  # pragma: no cover - depends on the GPU image
        pytest.skip(f"upstream SGLang kernels unavailable: {exc}")
    single_upstream_configs()
    return flash_prefill_with_topk_index, flash_decode_with_topk_idx


def single_upstream_configs():
    """Selections do not depend on upstream's tile config: keep one per autotuner (compile time)."""
    import sys

    import triton

    for name in ("sglang.kernels.ops.attention.minimax_sparse.prefill.flash_with_topk_idx",
                 "sglang.kernels.ops.attention.minimax_sparse.decode.flash_with_topk_idx"):
        mod = sys.modules[name]
        for attr in dir(mod):
            obj = getattr(mod, attr)
            while hasattr(obj, "fn") and not isinstance(obj, (triton.runtime.Autotuner, triton.runtime.JITFunction)):
                obj = obj.fn  # through @triton.heuristics
            if isinstance(obj, triton.runtime.Autotuner) and len(obj.configs) > 1:
                # tiles must cover a 128-key block (upstream static_asserts it)
                fit = [c for c in obj.configs
                       if min(c.kwargs.get("BLOCK_SIZE_K", 128), c.kwargs.get("BLOCK_SIZE_N", 128)) >= 128]
                obj.configs = fit[:1]


@pytest.mark.gpu
@pytest.mark.parametrize("heads", GPU_HEADS)
@pytest.mark.parametrize("page", [1, 128])
@pytest.mark.parametrize("score_type", ["max", "lse"])
def test_gpu_prefill_bf16(heads, page, score_type, capsys):
    if score_type == "lse" and page == 1:
        pytest.skip("lse covered with page 128")
    up_prefill, _ = _upstream()
    ext, pre = [1500, 700, 333], [0, 2100, 517]
    b = make_batch(ext, pre, num_heads=heads, page_size=page, dtype=torch.bfloat16, seed=0, device="cuda")
    kw = dict(block_size=128, topk=16, init_blocks=1, local_blocks=2, score_type=score_type)
    ours = indexer_prefill(**b, page_size=page, max_seqlen_q=max(ext), block_m=128, num_warps=8,
                           maxnreg=128, **kw)
    ref = naive_indexer_prefill(**b, **kw)
    scores = adjusted_scores(b, block_size=128, init_blocks=1, local_blocks=2, score_type=score_type)
    check_structure(ours, n_causal_rows(b, 128), 16)
    n_ref = compare_selections(ours, ref, scores, tol=2e-3)
    _, up = up_prefill(
        q=b["idx_q"], k_cache=b["idx_k_cache"], v_cache=None, sink=None, req_to_token=b["req_to_token"],
        slot_ids=b["req_pool_indices"], cu_seqlens=b["cu_seqlens_q"], seq_lens=b["seq_lens"],
        prefix_lens=b["prefix_lens"], max_seqlen_q=max(ext), max_seqlen_k=int(b["seq_lens"].max()),
        block_size_q=1, block_size_k=128, topk=16, init_blocks=1, local_blocks=2,
        score_type=score_type, disable_index_value=True)
    n_up = compare_selections(ours, up, scores, tol=2e-3)
    rows = heads * sum(ext)
    with capsys.disabled():
        print(f"\n[prefill h={heads} page={page} {score_type}] rows={rows} tie-mismatch vs naive={n_ref} "
              f"vs upstream={n_up}")
    assert n_ref <= rows // 100 and n_up <= rows // 100


@pytest.mark.gpu
@pytest.mark.parametrize("heads", GPU_HEADS)
@pytest.mark.parametrize("page", [1, 128])
def test_gpu_decode_bf16(heads, page, capsys):
    _, up_decode = _upstream()
    seqs = [5000, 129, 128, 1, 20000, 777]
    b = make_batch([1] * len(seqs), [s - 1 for s in seqs], num_heads=heads, page_size=page,
                   dtype=torch.bfloat16, seed=1, device="cuda")
    args = [b[k] for k in ("idx_q", "idx_k_cache", "req_to_token", "req_pool_indices", "seq_lens")]
    kw = dict(block_size=128, topk=16, init_blocks=1, local_blocks=2, score_type="max")
    ours = indexer_decode(*args, page_size=page, **kw)
    ref = naive_indexer_decode(*args, **kw)
    scores = adjusted_scores(b, block_size=128, init_blocks=1, local_blocks=2, score_type="max")
    check_structure(ours, n_causal_rows(b, 128), 16)
    n_ref = compare_selections(ours, ref, scores, tol=2e-3)
    _, up, _ = up_decode(
        q=b["idx_q"], sink=None, k_cache=b["idx_k_cache"], v_cache=None, req_to_token=b["req_to_token"],
        seq_lens=b["seq_lens"], max_seqlen=max(seqs), slot_ids=b["req_pool_indices"], block_size=128,
        topk=16, init_blocks=1, local_blocks=2, score_type="max", disable_index_value=True)
    n_up = compare_selections(ours, up, scores, tol=2e-3)
    with capsys.disabled():
        print(f"\n[decode h={heads} page={page}] rows={heads * len(seqs)} tie-mismatch vs naive={n_ref} "
              f"vs upstream={n_up}")
    assert n_ref <= 1 and n_up <= 1


@pytest.mark.gpu
@pytest.mark.parametrize("topk_part", [None, 32])
def test_gpu_decode_cuda_graph(topk_part):
    """run() with out= captures into a CUDA graph and replays on new inputs of the same shapes (stage 2 in
    one program per (head, request) and in parts, the backend's default)."""
    seqs = [3000, 900, 17]
    b = make_batch([1] * 3, [s - 1 for s in seqs], num_heads=4, page_size=128, dtype=torch.bfloat16,
                   seed=2, device="cuda")
    args = [b[k] for k in ("idx_q", "idx_k_cache", "req_to_token", "req_pool_indices", "seq_lens")]
    kw = dict(block_size=128, topk=16, init_blocks=1, local_blocks=2, score_type="max")
    dec = IndexerDecode(num_heads=4, head_dim=128, page_size=128, topk_part=topk_part, **kw).plan(4, 4096, "cuda")
    out = torch.full((4, 3, 16), POISON, dtype=torch.int32, device="cuda")
    dec.run(*args, out=out)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dec.run(*args, out=out)
    b["seq_lens"].copy_(torch.tensor([3100, 1200, 300], dtype=torch.int32))
    b["idx_q"].copy_(torch.randn_like(b["idx_q"]))
    out.fill_(POISON)
    graph.replay()
    torch.cuda.synchronize()
    expect = indexer_decode(*args, page_size=128, **kw)
    assert torch.equal(out, expect)


def test_decode_stages_apart_equal_run_into_a_larger_buffer(device):
    """score() then select() (benchmarks time them apart) write what run() writes, here into an out buffer
    sized for more requests than the batch: its rows past the batch stay as they were."""
    seqs = [150, 90, 17]
    b = make_batch([1] * 3, [s - 1 for s in seqs], num_heads=2, page_size=16, dtype=torch.float16, seed=7,
                   device=device)
    args = [b[k] for k in ("idx_q", "idx_k_cache", "req_to_token", "req_pool_indices", "seq_lens")]
    kw = dict(block_size=16, topk=5, init_blocks=1, local_blocks=1, score_type="max")
    dec = IndexerDecode(num_heads=2, head_dim=128, page_size=16, **kw).plan(5, max(seqs), device)
    whole = dec.run(*args)
    buf = torch.full((2, 5, 5), POISON, dtype=torch.int32, device=device)
    dec.workspace.fill_(float("inf"))
    dec.score(*args)
    dec.select(b["seq_lens"], buf)
    assert torch.equal(buf[:, :3].cpu(), whole.cpu())
    assert (buf[:, 3:] == POISON).all()


@pytest.mark.parametrize("case", DECODE_CASES)
def test_decode_topk_in_parts_selects_the_same_blocks(case, device):
    """Stage 2 in parts (top-k per part of the scores in parallel, then a merge: the backend's default)
    against one program per (head, request), bit for bit, with the part workspace poisoned: parts past a
    short request's end are never written, so a merge that read them would pick a poisoned key."""
    seqs, heads, block, page, topk, init, local, splits = case
    b = make_batch([1] * len(seqs), [s - 1 for s in seqs], num_heads=heads, page_size=page,
                   dtype=torch.float16, seed=3, device=device)
    kw = dict(block_size=block, topk=topk, init_blocks=init, local_blocks=local, score_type="max")
    args = [b[k] for k in ("idx_q", "idx_k_cache", "req_to_token", "req_pool_indices", "seq_lens")]
    plain = IndexerDecode(num_heads=heads, head_dim=128, page_size=page, **kw).plan(
        len(seqs), max(seqs) + 40, device, num_splits=splits).run(*args)
    part = 2 * triton.next_power_of_2(topk)  # the smallest allowed: the most parts
    parts = IndexerDecode(num_heads=heads, head_dim=128, page_size=page, topk_part=part, **kw).plan(
        len(seqs), max(seqs) + 40, device, num_splits=splits)
    assert parts.n_parts >= 2
    assert min(triton.cdiv(triton.cdiv(s, block), part) for s in seqs) < parts.n_parts  # unwritten parts
    parts.parts.fill_(2**62)  # a stale slot would win every merge
    out = torch.full((heads, len(seqs), topk), POISON, dtype=torch.int32, device=device)
    assert torch.equal(parts.run(*args, out=out).cpu(), plain.cpu())
    parts.merge_chunk = 8  # the merge over several chunks of part keys
    out.fill_(POISON)
    assert torch.equal(parts.run(*args, out=out).cpu(), plain.cpu())


def test_decode_topk_part_must_be_a_power_of_two_above_twice_topk():
    for bad in (8, 24):
        with pytest.raises(ValueError, match="topk_part"):
            IndexerDecode(num_heads=1, head_dim=16, block_size=16, topk=6, init_blocks=0, local_blocks=1,
                          topk_part=bad)


def test_choose_topk_part_reads_the_env(monkeypatch):
    monkeypatch.delenv(TOPK_PART_ENV, raising=False)
    assert choose_topk_part(16) == 256 and choose_topk_part(200) == 512  # the default, >= 2 x topk's
    for env, want in (("auto", 256), ("0", None), ("64", 64)):
        monkeypatch.setenv(TOPK_PART_ENV, env)
        assert choose_topk_part(16) == want
    for bad in ("16", "48", "-1", "yes"):
        monkeypatch.setenv(TOPK_PART_ENV, bad)
        with pytest.raises(ValueError, match=TOPK_PART_ENV):
            choose_topk_part(16)


def test_prefill_autotune_key_has_the_batch_size_class():
    """The autotuner keys on the batch's size class (rows_bucket), so SGLang's 128-token warm-up no
    longer picks the config that a 16k chunk then runs."""
    from sglang_msa.kernels.msa_indexer import prefill as prefill_mod

    sizes = (1, 128, 256, 257, 1024, 1025, 4096, 4097, 16384, 10**6)
    assert [prefill_mod.rows_bucket(n) for n in sizes] == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]
    assert "rows_bucket" in prefill_mod._indexer_prefill_tuned.keys  # (no compile per class:
    # test_jit_specialization runs the indexer on batches of two size classes)


@pytest.mark.gpu
def test_gpu_prefill_tunes_once_per_size_class():
    """A 128-token batch and a 5k-token batch of the same key tune apart; a second 5k batch reuses."""
    from sglang_msa.kernels.msa_indexer import prefill as prefill_mod

    tuned = prefill_mod._indexer_prefill_tuned
    kw = dict(block_size=128, topk=16, init_blocks=1, local_blocks=2, page_size=128, split_k=1)
    before = len(tuned.cache)
    for ext, seed in ((128, 0), (5000, 1), (6000, 2)):
        b = make_batch([ext], [9000], num_heads=1, page_size=128, dtype=torch.bfloat16, seed=seed, device="cuda")
        indexer_prefill(**b, max_seqlen_q=ext, **kw)
    assert len(tuned.cache) - before <= 2
    assert {0, 3} <= {k[tuned.keys.index("rows_bucket")] for k in tuned.cache}


def test_decode_topk_in_one_part_runs_the_single_program(monkeypatch, device):
    """A context that fits one part (the default 256 scores: 32k tokens at block 128) gains nothing from
    the merge: stage 2 is the single program's one launch, the same selection."""
    from sglang_msa.kernels.msa_indexer import decode as decode_mod

    seqs = [150, 90, 17]
    b = make_batch([1] * 3, [s - 1 for s in seqs], num_heads=2, page_size=16, dtype=torch.float16, seed=5,
                   device=device)
    args = [b[k] for k in ("idx_q", "idx_k_cache", "req_to_token", "req_pool_indices", "seq_lens")]
    kw = dict(block_size=16, topk=5, init_blocks=1, local_blocks=1, score_type="max")
    want = IndexerDecode(num_heads=2, head_dim=128, page_size=16, **kw).plan(3, max(seqs), device).run(*args)
    one = IndexerDecode(num_heads=2, head_dim=128, page_size=16, topk_part=256, **kw).plan(3, max(seqs), device)
    assert one.n_parts == 1

    class NotLaunched:
        def __getitem__(self, grid):
            raise AssertionError("the parts kernels ran for a single part")

    monkeypatch.setattr(decode_mod, "_decode_topk_part_kernel", NotLaunched())
    monkeypatch.setattr(decode_mod, "_decode_topk_merge_kernel", NotLaunched())
    assert torch.equal(one.run(*args).cpu(), want.cpu())
