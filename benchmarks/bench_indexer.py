"""Time the MSA indexer against upstream SGLang's indexer kernels (GPU only).

Prefill: one request of 16k / 64k extend tokens, 4 index heads (64/4 sparse layer) and 1 (TP4 rank),
top-16 of 128-key blocks. Decode: B=8 x 128k and B=32 x 32k contexts; reports achieved GB/s of
index-K bytes read (B * seq * 128 * 2) next to a device copy's bandwidth (read + write bytes).
Medians from triton.testing.do_bench (decode also under a CUDA graph). Writes JSON to --out.

    python benchmarks/bench_indexer.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch
import triton
from triton.testing import do_bench, do_bench_cudagraph

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from sglang_msa.kernels.msa_indexer import IndexerDecode, indexer_prefill  # noqa: E402
from sglang_msa.kernels.msa_indexer.prefill import PREFILL_CONFIGS  # noqa: E402

BLOCK, TOPK, INIT, LOCAL, D = 128, 16, 1, 2, 128
RESULTS: dict = {"device": None, "rows": []}


def log(**row):
    RESULTS["rows"].append(row)
    print(json.dumps(row), flush=True)


def paged(seq_lens, page, device, seed=0):
    """Shuffled page order; returns req_to_token [B, ctx], pool indices, idx_k_cache [slots, 1, D]."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    batch, ctx = len(seq_lens), triton.cdiv(max(seq_lens), page) * page
    per_req = ctx // page
    perm = torch.randperm(batch * per_req, generator=g).view(batch, per_req)
    pos = torch.arange(ctx)
    r2t = (perm[:, pos // page] * page + pos % page).int().to(device)
    k = torch.randn(batch * ctx, 1, D, generator=g).to(device, torch.bfloat16)
    pool = torch.arange(batch, device=device)
    return r2t, pool, k


def upstream():
    from sglang.kernels.ops.attention.minimax_sparse.decode import flash_with_topk_idx as dec
    from sglang.kernels.ops.attention.minimax_sparse.prefill import flash_with_topk_idx as pre

    # 36 decode-score configs would cost minutes of compiling: keep the plausible ones for 128-key blocks
    tuner = dec._decode_score_kernel.fn  # @triton.heuristics wraps the Autotuner
    tuner.configs = [c for c in tuner.configs
                     if c.kwargs["BLOCK_SIZE_N"] in (128, 256) and c.num_stages in (2, 3) and c.num_warps in (4, 8)]
    return pre.flash_prefill_with_topk_index, dec.flash_decode_with_topk_idx


def bench_prefill(n_tok, heads, up_prefill, sweep, page1=False):
    dev = "cuda"
    r2t, pool, k = paged([n_tok], BLOCK, dev)
    q = torch.randn(n_tok, heads, D, device=dev, dtype=torch.bfloat16)
    cu = torch.tensor([0, n_tok], dtype=torch.int32, device=dev)
    seq = torch.tensor([n_tok], dtype=torch.int32, device=dev)
    pre = torch.zeros(1, dtype=torch.int32, device=dev)
    out = torch.empty(heads, n_tok, TOPK, dtype=torch.int32, device=dev)
    kw = dict(max_seqlen_q=n_tok, block_size=BLOCK, topk=TOPK, init_blocks=INIT, local_blocks=LOCAL,
              page_size=BLOCK, out=out)
    best = None
    for bm, nw, ns, mr in sweep:
        try:
            fn = lambda: indexer_prefill(q, k, r2t, pool, cu, seq, pre, block_m=bm, num_warps=nw,
                                         num_stages=ns, maxnreg=mr, **kw)
            ms = do_bench(fn, warmup=5, rep=30, return_mode="median")
            log(kind="prefill", impl="ours", tokens=n_tok, heads=heads, cfg=[bm, nw, ns, mr], ms=ms)
            best = ms if best is None else min(best, ms)
        except Exception as exc:
            log(kind="prefill", impl="ours", tokens=n_tok, heads=heads, cfg=[bm, nw, ns, mr],
                error=repr(exc)[:300])
    ours = out.clone()
    try:
        ms = do_bench(lambda: indexer_prefill(q, k, r2t, pool, cu, seq, pre, **kw), warmup=5, rep=30,
                      return_mode="median")
        log(kind="prefill", impl="ours-autotuned", tokens=n_tok, heads=heads, ms=ms)
        if page1:
            ms = do_bench(lambda: indexer_prefill(q, k, r2t, pool, cu, seq, pre, **{**kw, "page_size": 1}),
                          warmup=5, rep=30, return_mode="median")
            log(kind="prefill", impl="ours-page1-path", tokens=n_tok, heads=heads, ms=ms)
    except Exception as exc:
        log(kind="prefill", impl="ours-autotuned", error=repr(exc)[:300])
    if up_prefill is None:
        return
    try:
        fn = lambda: up_prefill(
            q=q, k_cache=k, v_cache=None, sink=None, req_to_token=r2t, slot_ids=pool, cu_seqlens=cu,
            seq_lens=seq, prefix_lens=pre, max_seqlen_q=n_tok, max_seqlen_k=n_tok, block_size_q=1,
            block_size_k=BLOCK, topk=TOPK, init_blocks=INIT, local_blocks=LOCAL, disable_index_value=True)
        _, up = fn()
        ms = do_bench(fn, warmup=5, rep=30, return_mode="median")
        differ = int((up != ours).any(-1).sum())
        log(kind="prefill", impl="upstream", tokens=n_tok, heads=heads, ms=ms, ours_best_ms=best,
            speedup=ms / best if best else None, rows_differing=differ, rows=heads * n_tok)
    except Exception as exc:
        log(kind="prefill", impl="upstream", tokens=n_tok, heads=heads, error=repr(exc)[:500])
        traceback.print_exc()


def tie_check(n_tok, heads, up_prefill):
    """Rows where ours and upstream pick different blocks: compare the picked blocks' fp32 scores."""
    dev = "cuda"
    r2t, pool, k = paged([n_tok], BLOCK, dev)
    q = torch.randn(n_tok, heads, D, device=dev, dtype=torch.bfloat16)
    cu = torch.tensor([0, n_tok], dtype=torch.int32, device=dev)
    seq = torch.tensor([n_tok], dtype=torch.int32, device=dev)
    pre = torch.zeros(1, dtype=torch.int32, device=dev)
    ours = indexer_prefill(q, k, r2t, pool, cu, seq, pre, max_seqlen_q=n_tok, block_size=BLOCK, topk=TOPK,
                           init_blocks=INIT, local_blocks=LOCAL, page_size=BLOCK, block_m=128,
                           num_warps=8, maxnreg=128)
    _, up = up_prefill(q=q, k_cache=k, v_cache=None, sink=None, req_to_token=r2t, slot_ids=pool,
                       cu_seqlens=cu, seq_lens=seq, prefix_lens=pre, max_seqlen_q=n_tok, max_seqlen_k=n_tok,
                       block_size_q=1, block_size_k=BLOCK, topk=TOPK, init_blocks=INIT,
                       local_blocks=LOCAL, disable_index_value=True)
    h_idx, t_idx = (ours != up).any(-1).nonzero(as_tuple=True)
    keys = k[r2t[0, :n_tok].long(), 0].float()  # positions in order
    scale = D**-0.5 * 1.4426950409
    gaps = []
    for h, t in zip(h_idx.tolist(), t_idx.tolist()):
        logits = (keys[: t + 1] @ q[t, h].float()) * scale
        n_blk = t // BLOCK + 1
        padded = torch.full((n_blk * BLOCK,), float("-inf"), device=dev)
        padded[: t + 1] = logits
        blk = padded.view(n_blk, BLOCK).amax(-1)
        a, b = ours[h, t], up[h, t]
        only_ours, only_up = sorted(set(a.tolist()) - set(b.tolist())), sorted(set(b.tolist()) - set(a.tolist()))
        s_o = [float(blk[i]) for i in only_ours]
        s_u = [float(blk[i]) for i in only_up]
        gaps.append(dict(head=h, token=t, only_ours=only_ours, only_upstream=only_up, scores_ours=s_o,
                         scores_upstream=s_u))
    log(kind="tie_check", tokens=n_tok, heads=heads, rows=heads * n_tok, rows_differing=len(gaps),
        detail=gaps[:20])


def timed(fn, graph):
    if graph:
        return do_bench_cudagraph(fn, rep=50, return_mode="median")
    return do_bench(fn, warmup=5, rep=50, return_mode="median")


def bench_decode(batch, ctx, heads, up_decode, sweep, page):
    dev = "cuda"
    r2t, pool, k = paged([ctx] * batch, page, dev, seed=1)
    q = torch.randn(batch, heads, D, device=dev, dtype=torch.bfloat16)
    seq = torch.full((batch,), ctx, dtype=torch.int32, device=dev)
    out = torch.empty(heads, batch, TOPK, dtype=torch.int32, device=dev)
    nbytes = batch * ctx * D * 2
    best = None
    for pps, nw, ns in sweep:
        dec = IndexerDecode(num_heads=heads, head_dim=D, block_size=BLOCK, topk=TOPK, init_blocks=INIT,
                            local_blocks=LOCAL, page_size=page, programs_per_sm=pps, num_warps=nw,
                            num_stages=ns).plan(batch, ctx, dev)
        fn = lambda: dec.run(q, k, r2t, pool, seq, out=out)
        for graph in (False, True):
            try:
                fn()
                us = timed(fn, graph) * 1e3
                log(kind="decode", impl="ours", batch=batch, ctx=ctx, heads=heads, page=page,
                    cfg=[pps, nw, ns], graph=graph, us=us, gbps=nbytes / us / 1e3)
                if graph:
                    best = us if best is None else min(best, us)
            except Exception as exc:
                log(kind="decode", impl="ours", cfg=[pps, nw, ns], graph=graph, error=repr(exc)[:300])
    ours = out.clone()
    if up_decode is None:
        return
    for radix in ("1", "0"):
        os.environ["SGLANG_OPT_USE_MINIMAX_DECODE_TOPK_RADIX"] = radix
        fn = lambda: up_decode(q=q, sink=None, k_cache=k, v_cache=None, req_to_token=r2t, seq_lens=seq,
                               max_seqlen=ctx, slot_ids=pool, block_size=BLOCK, topk=TOPK,
                               init_blocks=INIT, local_blocks=LOCAL, disable_index_value=True)
        for graph in (False, True):
            try:
                _, up, _ = fn()
                us = timed(fn, graph) * 1e3
                log(kind="decode", impl=f"upstream-radix{radix}", batch=batch, ctx=ctx, heads=heads,
                    page=page, graph=graph, us=us, gbps=nbytes / us / 1e3,
                    rows_differing=int((up != ours).any(-1).sum()), ours_best_graph_us=best)
            except Exception as exc:
                log(kind="decode", impl=f"upstream-radix{radix}", graph=graph, error=repr(exc)[:500])


def bench_copy():
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=5, rep=50, return_mode="median")
    log(kind="copy", bytes=2 * x.numel(), gbps=2 * x.numel() / ms / 1e6)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--quick", action="store_true", help="fewer configs")
    ap.add_argument("--tie-check", action="store_true", help="only explain ours/upstream differences at 64k")
    ap.add_argument("--budget", type=float, default=1e9, help="seconds; skip the remaining steps after")
    args = ap.parse_args()
    RESULTS["device"] = torch.cuda.get_device_name()
    t0 = time.time()
    try:
        up_prefill, up_decode = upstream()
    except Exception as exc:
        print("upstream unavailable:", exc)
        up_prefill = up_decode = None
    pre_sweep = PREFILL_CONFIGS
    dec_sweep = [(8, 4, 3), (16, 4, 3), (4, 4, 4), (8, 8, 3), (8, 4, 2)]
    if args.quick:
        pre_sweep, dec_sweep = pre_sweep[:2], dec_sweep[:2]
    if args.tie_check:
        tie_check(65536, 4, up_prefill)
        save(args.out)
        return
    steps = [
        lambda: bench_copy(),
        lambda: bench_decode(8, 131072, 4, up_decode, dec_sweep, page=BLOCK),
        lambda: bench_decode(32, 32768, 4, up_decode, dec_sweep, page=BLOCK),
        lambda: bench_prefill(65536, 4, up_prefill, pre_sweep),
        lambda: bench_prefill(16384, 4, up_prefill, pre_sweep),
        lambda: bench_decode(8, 131072, 4, None, dec_sweep[:1], page=1),
        lambda: bench_decode(8, 131072, 1, None, dec_sweep[:1], page=BLOCK),
        lambda: bench_prefill(65536, 1, up_prefill, pre_sweep[:2]),
        lambda: bench_prefill(65536, 4, None, [], page1=True),
    ]
    for step in steps:
        if time.time() - t0 > args.budget:
            print("budget spent, skipping the rest", flush=True)
            break
        try:
            step()
        except Exception:
            traceback.print_exc()
        save(args.out)
    RESULTS["seconds"] = time.time() - t0
    save(args.out)
    print_table()


def save(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench_indexer.json"), "w") as f:
        json.dump(RESULTS, f, indent=1)


def print_table():
    print(f"\n{RESULTS['device']}")
    for r in RESULTS["rows"]:
        if "error" in r:
            print("ERR", r.get("kind"), r.get("impl"), r.get("cfg"), r["error"][:120])
        elif r["kind"] == "prefill":
            print(f"prefill {r['impl']:16s} T={r['tokens']:6d} H={r['heads']} cfg={r.get('cfg')} "
                  f"{r['ms']:.3f} ms" + (f"  speedup={r['speedup']:.2f} differ={r['rows_differing']}/{r['rows']}"
                                         if "speedup" in r and r["speedup"] else ""))
        elif r["kind"] == "decode":
            print(f"decode {r['impl']:16s} B={r['batch']} ctx={r['ctx']} H={r['heads']} page={r['page']} "
                  f"cfg={r.get('cfg')} graph={r['graph']} {r['us']:.1f} us {r['gbps']:.0f} GB/s"
                  + (f" differ={r['rows_differing']}" if "rows_differing" in r else ""))
        elif r["kind"] == "copy":
            print(f"copy {r['gbps']:.0f} GB/s (read+write)")
        else:
            print(json.dumps(r)[:400])


if __name__ == "__main__":
    main()
