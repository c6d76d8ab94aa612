"""One MSA layer end to end on random data, ours vs the fp32 references (used by the demo).

A paged KV pool (page = sparse block, pages shuffled), two requests — one with a cached prefix
(chunked prefill) — run through: prefill indexer -> KV-block-major sparse prefill, then one decode
step: decode indexer -> stride-paged sparse decode. On a GPU: M3's per-rank shapes in bf16
(64/4 heads, block 128, top-16). Without one: a small fp32 configuration under the Triton
interpreter (which gets bf16 wrong), so the check still runs everywhere.
"""

from __future__ import annotations

import os
import time


def _setup_env() -> bool:
    import torch

    gpu = torch.cuda.is_available()
    if not gpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the kernels' import
    return gpu


def _paged_pool(total_tokens_per_req, page, heads, dim, dtype, device, gen):
    import torch

    pages_per_req = [(n + page - 1) // page for n in total_tokens_per_req]
    num_pages = sum(pages_per_req) + 3
    perm = torch.randperm(num_pages, generator=gen)[: sum(pages_per_req)]
    max_ctx = max(pages_per_req) * page
    req_to_token = torch.zeros(len(total_tokens_per_req), max_ctx, dtype=torch.int32)
    at = 0
    for r, n_pages in enumerate(pages_per_req):
        for j in range(n_pages):
            req_to_token[r, j * page:(j + 1) * page] = perm[at] * page + torch.arange(page)
            at += 1
    k = torch.randn(num_pages * page, heads, dim, generator=gen).to(dtype)
    v = torch.randn(num_pages * page, heads, dim, generator=gen).to(dtype)
    idx_k = torch.randn(num_pages * page, 1, dim, generator=gen).to(dtype)
    return req_to_token.to(device), k.to(device), v.to(device), idx_k.to(device)


def _rel_err(out, ref) -> float:
    out, ref = out.float().cpu(), ref.float().cpu()
    if not bool(out.isfinite().all()):
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-12))


def run_pipeline_check(tokens: int | None = None, seed: int = 0, progress=None) -> dict:
    """``progress``: called with each report line as soon as its stage finishes (the CPU run takes
    seconds per stage under the Triton interpreter)."""
    gpu = _setup_env()
    import torch

    from sglang_msa.kernels import msa_decode, msa_indexer, msa_prefill

    device = "cuda" if gpu else "cpu"
    if gpu:
        hq, hkv, dim, block, topk, dtype = 64, 4, 128, 128, 16, torch.bfloat16
        tokens = tokens or 8192
    else:
        hq, hkv, dim, block, topk, dtype = 16, 1, 64, 32, 4, torch.float32
        tokens = tokens or 300
    init_blocks, local_blocks = 0, 1
    gen = torch.Generator().manual_seed(seed)
    # Request 0: a fresh prompt. Request 1: a cached prefix of an odd length + a new chunk.
    prefix = [0, tokens // 3 + 7]
    extend = [tokens, tokens - prefix[1] // 2]
    seq = [p + e for p, e in zip(prefix, extend)]
    req_to_token, k_cache, v_cache, idx_k_cache = _paged_pool([s + 1 for s in seq], block, hkv, dim,
                                                              dtype, device, gen)
    total = sum(extend)
    q = torch.randn(total, hq, dim, generator=gen).to(dtype).to(device)
    idx_q = torch.randn(total, hkv, dim, generator=gen).to(dtype).to(device)
    cu = torch.tensor([0, extend[0], total], dtype=torch.int32, device=device)
    seq_lens = torch.tensor(seq, dtype=torch.int32, device=device)
    prefix_lens = torch.tensor(prefix, dtype=torch.int32, device=device)
    req_idx = torch.arange(2, dtype=torch.int32, device=device)
    sel = dict(block_size=block, topk=topk, init_blocks=init_blocks, local_blocks=local_blocks)
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if progress is not None:
            progress(line)

    say(f"device={device} dtype={str(dtype).replace('torch.', '')} heads={hq}/{hkv} dim={dim} "
        f"block={block} top-{topk} tokens={extend} prefixes={prefix}")

    def timed(fn):
        if gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = fn()
        if gpu:
            torch.cuda.synchronize()
        return res, (time.perf_counter() - t0) * 1e3

    topk_idx, t_idx = timed(lambda: msa_indexer.indexer_prefill(
        idx_q, idx_k_cache, req_to_token, req_idx, cu, seq_lens, prefix_lens, page_size=block, **sel))
    ref_idx = msa_indexer.naive_indexer_prefill(idx_q.float(), idx_k_cache.float(), req_to_token, req_idx, cu,
                                                seq_lens, prefix_lens, **sel)
    same = float((topk_idx.cpu() == ref_idx).all(-1).float().mean())
    say(f"prefill indexer: {same * 100:.2f}% of (token, head) rows select exactly the reference "
                 f"blocks ({t_idx:.1f} ms incl. compile)")

    out, t_pre = timed(lambda: msa_prefill.sparse_prefill(
        q, k_cache, v_cache, ref_idx.to(device), req_to_token, req_idx, cu, seq_lens, prefix_lens,
        block_size=block, page_size=block))
    ref = msa_prefill.naive_sparse_prefill(q.float(), k_cache.float(), v_cache.float(), ref_idx.to(device),
                                           req_to_token, req_idx, cu, seq_lens, prefix_lens, block_size=block)
    err_pre = _rel_err(out, ref)
    say(f"sparse prefill (KV-block-major): rel. error {err_pre:.2e} vs fp32 reference "
                 f"({t_pre:.1f} ms incl. compile)")

    # One decode step: each request's next token at position seq_len.
    dec_lens = seq_lens + 1
    dq = torch.randn(2, hq, dim, generator=gen).to(dtype).to(device)
    d_idx_q = torch.randn(2, hkv, dim, generator=gen).to(dtype).to(device)
    d_topk = msa_indexer.indexer_decode(d_idx_q, idx_k_cache, req_to_token, req_idx, dec_lens,
                                        page_size=block, **sel)
    d_ref_idx = msa_indexer.naive_indexer_decode(d_idx_q.float(), idx_k_cache.float(), req_to_token, req_idx,
                                                 dec_lens, **sel)
    same_d = float((d_topk.cpu() == d_ref_idx).all(-1).float().mean())
    d_out = msa_decode.sparse_decode(dq, k_cache, v_cache, d_ref_idx.to(device), req_to_token, req_idx,
                                     dec_lens, block_size=block, page_size=block)
    d_ref = msa_decode.naive_sparse_decode(dq.float(), k_cache.float(), v_cache.float(), d_ref_idx.to(device),
                                           req_to_token, req_idx, dec_lens, block_size=block)
    err_dec = _rel_err(d_out, d_ref)
    say(f"decode indexer: {same_d * 100:.2f}% rows exact; sparse decode (stride-paged): "
                 f"rel. error {err_dec:.2e}")
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-3
    ok = err_pre < tol and err_dec < tol and same > 0.97 and same_d > 0.97
    say(f"{'PASS' if ok else 'FAIL'} (tolerance {tol:g}; selections may differ only on exact score ties)")
    if not ok:
        raise RuntimeError("\n".join(lines))
    return {"lines": lines, "max_rel_err": max(err_pre, err_dec), "selection_match": min(same, same_d)}
