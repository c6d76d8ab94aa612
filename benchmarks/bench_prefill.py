"""Benchmark MSA sparse prefill: ours (block-major / query-major) vs upstream Triton, FlexAttention, dense SDPA.

One request of T tokens (no prefix), bf16, head_dim 128, top-16 blocks of 128, page size 128 with
shuffled pages. Selections are synthetic: block 0 (init) + the token's own block (local) + random
other causal blocks, sorted ascending and -1 padded like the indexer's output. Random selections are
the hard case for block-major (tokens sharing a block are scattered) and for FlexAttention (a 128-row
query block's union covers most causal blocks); a real indexer's selections are more local.

Useful FLOPs = 4 * head_dim * sum over (token, q head) of the keys it attends (selected blocks,
causally clipped): the same numerator for every method, so TFLOP/s compare directly.
Times are medians of triton.testing.do_bench (CUDA events).

Usage: python benchmarks/bench_prefill.py [--seqlens 8192,16384,32768,65536] [--heads 64/4,16/1]
       [--out results.json] [--deadline 250] [--sweep] [--crossover] [--no-flex]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from sglang_msa.kernels.msa_prefill import bind_topk, plan, run  # noqa: E402
from sglang_msa.kernels.msa_prefill.block_major import launch_block_major  # noqa: E402
from sglang_msa.kernels.msa_prefill.combine import launch_combine  # noqa: E402

BLOCK = 128
HEAD_DIM = 128
TOPK = 16
START = time.time()


def elapsed():
    return time.time() - START


def bench(fn):
    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")


def make_inputs(T, hq, hk, *, prefix=0, page_size=BLOCK, seed=0, device="cuda"):
    g = torch.Generator(device=device).manual_seed(seed)
    L = prefix + T
    num_pages = triton.cdiv(L, page_size) + 1
    perm = torch.randperm(num_pages, device=device, generator=g)
    j = torch.arange(L, device=device)
    req_to_token = torch.zeros(2, L + page_size, dtype=torch.int32, device=device)
    req_to_token[1, :L] = (perm[j // page_size] * page_size + j % page_size).to(torch.int32)
    slots = num_pages * page_size
    k = torch.randn(slots, hk, HEAD_DIM, device=device, dtype=torch.bfloat16, generator=g)
    v = torch.randn(slots, hk, HEAD_DIM, device=device, dtype=torch.bfloat16, generator=g)
    q = torch.randn(T, hq, HEAD_DIM, device=device, dtype=torch.bfloat16, generator=g)
    pos = prefix + torch.arange(T, device=device)
    own = pos // BLOCK
    nb = triton.cdiv(L, BLOCK)
    # random scores over causal blocks, init block 0 and the own block forced in
    score = torch.rand(hk, T, nb, device=device, generator=g)
    b = torch.arange(nb, device=device)
    score = score.masked_fill(b[None, None, :] > own[None, :, None], -1.0)
    score[:, :, 0] = 2.0
    score.scatter_(2, own.view(1, T, 1).expand(hk, T, 1), 2.0)
    top = score.topk(min(TOPK, nb), dim=-1)
    idx = torch.where(top.values >= 0, top.indices, torch.full_like(top.indices, nb + 1))
    idx = idx.sort(-1).values
    idx = torch.where(idx > nb, -1, idx).to(torch.int32)
    if idx.shape[-1] < TOPK:
        idx = torch.cat([idx, idx.new_full((hk, T, TOPK - idx.shape[-1]), -1)], -1)
    del score
    meta = dict(
        req_pool_indices=torch.tensor([1], device=device, dtype=torch.int64),
        cu_seqlens_q=torch.tensor([0, T], device=device, dtype=torch.int32),
        seq_lens=torch.tensor([L], device=device, dtype=torch.int32),
        prefix_lens=torch.tensor([prefix], device=device, dtype=torch.int32),
    )
    return q, k, v, idx.contiguous(), req_to_token, meta


def useful_flops(idx, T, hq, hk, prefix=0):
    pos = prefix + torch.arange(T, device=idx.device)
    valid = (idx >= 0) & (idx.long() * BLOCK <= pos[None, :, None])
    keys = (pos[None, :, None] - idx.long() * BLOCK + 1).clamp(0, BLOCK) * valid
    return 4 * HEAD_DIM * keys.sum().item() * (hq // hk)


def make_plan(q, idx, meta, hq, hk, **kw):
    kw.setdefault("page_size", BLOCK)
    return plan(
        meta["cu_seqlens_q"], meta["seq_lens"], meta["prefix_lens"], meta["req_pool_indices"],
        num_q_heads=hq, num_kv_heads=hk, head_dim=HEAD_DIM, topk=TOPK, block_size=BLOCK,
        dtype=q.dtype, topk_idx=idx, **kw,
    )  # fmt: skip


def upstream_fn(q, k, v, idx, r2t, meta, T):
    try:
        from sglang.kernels.ops.attention.minimax_sparse.prefill.topk_sparse import flash_prefill_with_gqa_share_sparse
    except Exception as err:  # noqa: BLE001
        print(f"upstream unavailable: {err!r}")
        return None
    cu_blocks = meta["cu_seqlens_q"].clone()  # block_size_q = 1: query blocks are tokens

    def fn():
        return flash_prefill_with_gqa_share_sparse(
            q=q, k_cache=k, v_cache=v, sink=None, req_to_token=r2t, slot_ids=meta["req_pool_indices"],
            topk_idx=idx, block_size_q=1, block_size_k=BLOCK, cu_seqlens=meta["cu_seqlens_q"],
            seq_lens=meta["seq_lens"], prefix_lens=meta["prefix_lens"], max_seqlen_q=T,
            cu_seqblocks_q=cu_blocks, max_seqblock_q=T,
        )  # fmt: skip

    return fn


_flex_compiled = None


def flex_fn(q, k, v, idx, hq, hk, T):
    global _flex_compiled
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    if _flex_compiled is None:
        _flex_compiled = torch.compile(flex_attention, dynamic=False)
    group = hq // hk
    nb = triton.cdiv(T, BLOCK)
    sel = torch.zeros(hk, T, nb + 1, dtype=torch.bool, device=q.device)
    sel.scatter_(2, torch.where(idx >= 0, idx.long(), nb), True)
    sel = sel[..., :nb].contiguous()

    def mask_mod(b, h, q_idx, kv_idx):
        return sel[h // group, q_idx, kv_idx // BLOCK] & (kv_idx <= q_idx)

    # a query block visits the union of its tokens' blocks; mask_mod makes it exact per token
    union = sel.view(hk, nb, BLOCK, nb).any(2)  # [hk, q_blocks, kv_blocks] (T % BLOCK == 0 here)
    union = union.repeat_interleave(group, 0)[None]  # [1, hq, qb, kb]
    kv_num = union.sum(-1).to(torch.int32)
    kv_idx = torch.sort(union.to(torch.int8), dim=-1, descending=True, stable=True).indices.to(torch.int32)
    bm = BlockMask.from_kv_blocks(kv_num, kv_idx, BLOCK_SIZE=BLOCK, mask_mod=mask_mod, seq_lengths=(T, T))
    qt = q.transpose(0, 1)[None]
    kt = k[:T].transpose(0, 1)[None]  # timing only: which slots feed flex does not matter
    vt = v[:T].transpose(0, 1)[None]
    kt, vt = kt.contiguous(), vt.contiguous()
    visited = kv_num.float().mean().item() / nb
    return (lambda: _flex_compiled(qt, kt, vt, block_mask=bm, enable_gqa=True)), visited


def sdpa_fn(q, k, v, hq, hk, T):
    group = hq // hk
    qt = q.transpose(0, 1)[None].contiguous()
    kt = k[:T].transpose(0, 1).repeat_interleave(group, 0)[None].contiguous()
    vt = v[:T].transpose(0, 1).repeat_interleave(group, 0)[None].contiguous()
    return lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True)


def run_size(T, hq, hk, args, rows, cfg):
    q, k, v, idx, r2t, meta = make_inputs(T, hq, hk)
    flops = useful_flops(idx, T, hq, hk)
    row = dict(T=T, heads=f"{hq}/{hk}", useful_tflop=flops / 1e12, config=cfg)
    p = make_plan(q, idx, meta, hq, hk, method="block_major", **cfg)
    out = torch.empty_like(q)
    run(p, q, k, v, r2t, idx, out=out)
    row["ours_ms"] = bench(lambda: run(p, q, k, v, r2t, idx, out=out))
    row["ours_bind_ms"] = bench(lambda: (bind_topk(p, idx), run(p, q, k, v, r2t, idx, out=out)))
    row["bm_kernel_ms"] = bench(lambda: launch_block_major(p, q, k, v, r2t))
    row["combine_ms"] = bench(lambda: launch_combine(p, out, idx))
    row["reverse_map_ms"] = bench(lambda: bind_topk(p, idx))
    del p
    torch.cuda.empty_cache()
    # plan() from scratch each call: host syncs + workspace allocation (cached by torch) + map + kernels
    row["ours_full_plan_ms"] = bench(lambda: run(make_plan(q, idx, meta, hq, hk, method="block_major", **cfg), q, k, v, r2t, idx, out=out))
    torch.cuda.empty_cache()
    ref = None
    up = upstream_fn(q, k, v, idx, r2t, meta, T)
    if up is not None:
        try:
            ref = up()
            row["upstream_ms"] = bench(up)
            row["max_abs_diff_vs_upstream"] = (ref.float() - out.float()).abs().max().item()
            del ref
        except Exception as err:  # noqa: BLE001
            print(f"upstream failed at T={T}: {type(err).__name__}: {str(err)[:300]}")
    if not args.no_flex and elapsed() < args.deadline - 60 and T in args.flex_seqlens and (hq, hk) == args.flex_heads:
        try:
            f, visited = flex_fn(q, k, v, idx, hq, hk, T)
            f()
            row["flex_ms"] = bench(f)
            row["flex_visited_frac"] = visited
        except Exception as err:  # noqa: BLE001
            print(f"flex failed at T={T}: {type(err).__name__}: {str(err)[:300]}")
            row["flex_error"] = f"{type(err).__name__}: {str(err)[:300]}"
        torch.cuda.empty_cache()
    s = sdpa_fn(q, k, v, hq, hk, T)
    row["sdpa_ms"] = bench(s)
    del s
    torch.cuda.empty_cache()
    for key in [c for c in row if c.endswith("_ms")]:
        row[key.replace("_ms", "_tflops")] = flops / row[key] / 1e9
    rows.append(row)
    print(json.dumps(row), flush=True)


def sweep(args, results):
    T, hq, hk = max(args.seqlens), 64, 4
    q, k, v, idx, r2t, meta = make_inputs(T, hq, hk)
    flops = useful_flops(idx, T, hq, hk)
    out = torch.empty_like(q)
    first_out = None
    configs = []
    for pf, chunk, warps, stages, item in [
        (True, 8, 8, 1, 128), (True, 8, 8, 1, 64), (True, 8, 8, 2, 128), (True, 4, 4, 1, 64), (True, 4, 4, 1, 128),
        (True, 4, 4, 2, 64), (True, 4, 4, 1, 32), (False, 4, 4, 2, 64), (False, 8, 8, 2, 128),
    ]:  # fmt: skip
        configs.append(dict(prefetch=pf, chunk_tokens=chunk, num_warps=warps, num_stages=stages, item_tokens=item))
    configs.append("best_page1")  # the best config with per-token slot indirection instead of one tile per page
    # Query segment length: a 4096-token segment of 64 heads is 64 MiB of Q, above the H200's 60 MB L2;
    # shorter segments keep a segment's gathered queries in L2 at the cost of more (smaller) buckets.
    configs += [f"best_seg{n}" for n in (1024, 2048, 8192)]
    for cfg in configs:
        p = None
        if elapsed() > args.deadline - 40:
            print("sweep: deadline reached")
            break
        if cfg == "best_page1":
            cfg = dict(best_config(results), page_size=1)
        elif isinstance(cfg, str) and cfg.startswith("best_seg"):
            cfg = dict(best_config(results), seg_tokens=int(cfg[len("best_seg"):]))
        try:
            r2t_cfg = r2t
            if cfg.get("page_size") == 1:
                pages = r2t[1, :T].long()
                r2t_cfg = r2t.clone()  # same slots, shuffled token order inside the pool
                perm = torch.randperm(T, device=r2t.device)
                r2t_cfg[1, :T] = pages[perm].to(torch.int32)
            p = make_plan(q, idx, meta, hq, hk, method="block_major", **cfg)
            out.fill_(float("nan"))
            run(p, q, k, v, r2t_cfg, idx, out=out)
            if first_out is None:
                first_out = out.clone()
            diff = (out.float() - first_out.float()).abs().max().item()  # NaN if anything is unwritten
            ms = bench(lambda: launch_block_major(p, q, k, v, r2t_cfg))
            total = bench(lambda: run(p, q, k, v, r2t_cfg, idx, out=out))
            rec = dict(cfg, bm_kernel_ms=ms, run_ms=total, run_tflops=flops / total / 1e9, max_diff_vs_first=diff)
        except Exception as err:  # noqa: BLE001
            rec = dict(cfg, error=f"{type(err).__name__}: {str(err)[:200]}")
        del p
        torch.cuda.empty_cache()
        results["sweep"].append(rec)
        print("sweep", json.dumps(rec), flush=True)


def best_config(results):
    done = [r for r in results["sweep"] if "run_ms" in r and r.get("page_size", BLOCK) == BLOCK
            and "seg_tokens" not in r and r["max_diff_vs_first"] < 0.05]
    if not done:
        return {}
    best = min(done, key=lambda r: r["run_ms"])
    return {k: v for k, v in best.items() if k not in ("bm_kernel_ms", "run_ms", "run_tflops", "max_diff_vs_first")}


def crossover(args, results):
    prefix, hq, hk = 16384, 64, 4
    for n in (1, 4, 16, 64, 256, 1024, 4096):
        q, k, v, idx, r2t, meta = make_inputs(n, hq, hk, prefix=prefix)
        rec = dict(extend=n, prefix=prefix)
        for method in ("query_major", "block_major"):
            p = make_plan(q, idx, meta, hq, hk, method=method)
            out = torch.empty_like(q)
            run(p, q, k, v, r2t, idx, out=out)
            rec[method + "_ms"] = bench(lambda: (bind_topk(p, idx), run(p, q, k, v, r2t, idx, out=out)))
        results["crossover"].append(rec)
        print("crossover", json.dumps(rec), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqlens", default="8192,16384,32768,65536")
    ap.add_argument("--flex-seqlens", default="65536", help="each new length recompiles flex (~30 s)")
    ap.add_argument("--flex-heads", default="64/4")
    ap.add_argument("--heads", default="64/4,16/1")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "bench_prefill.json"))
    ap.add_argument("--deadline", type=float, default=250.0, help="seconds; optional parts are skipped past it")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--crossover", action="store_true")
    ap.add_argument("--no-flex", action="store_true")
    args = ap.parse_args()
    args.seqlens = [int(x) for x in args.seqlens.split(",")]
    args.flex_seqlens = [int(x) for x in args.flex_seqlens.split(",")]
    args.flex_heads = tuple(int(x) for x in args.flex_heads.split("/"))
    heads = [tuple(int(x) for x in h.split("/")) for h in args.heads.split(",")]
    results = dict(device=torch.cuda.get_device_name(), rows=[], sweep=[], crossover=[])

    def save():
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)

    # order: the tuning sweep (64k, 64/4) first, then every size with its best config, then the crossover
    if args.sweep:
        sweep(args, results)
        save()
    cfg = best_config(results)
    print("config for the table:", cfg or "plan() defaults")
    for hq, hk in heads:
        for T in args.seqlens:
            if elapsed() > args.deadline - 30:
                print(f"deadline: skipping T={T} heads={hq}/{hk}")
                continue
            run_size(T, hq, hk, args, results["rows"], cfg)
            save()
    if args.crossover and elapsed() < args.deadline - 30:
        crossover(args, results)
        save()
    print_table(results)


def print_table(results):
    print(f"\ndevice: {results['device']}  (ms = median; TF = useful TFLOP/s; x = upstream_ms / ours_ms)")
    hdr = f"{'heads':>5} {'T':>6} | {'ours':>7} {'TF':>4} | {'+bind':>7} | {'bm':>6} {'comb':>6} {'map':>5} | {'upstrm':>7} {'TF':>4} {'x':>5} | {'flex':>7} {'x':>5} | {'sdpa':>7} {'x':>5}"
    print(hdr)
    for r in results["rows"]:
        def g(k):
            return r.get(k, math.nan)

        print(
            f"{r['heads']:>5} {r['T']:>6} | {g('ours_ms'):7.2f} {g('ours_tflops'):4.0f} | {g('ours_bind_ms'):7.2f} | "
            f"{g('bm_kernel_ms'):6.2f} {g('combine_ms'):6.2f} {g('reverse_map_ms'):5.2f} | {g('upstream_ms'):7.2f} "
            f"{g('upstream_tflops'):4.0f} {g('upstream_ms') / g('ours_bind_ms'):5.2f} | {g('flex_ms'):7.2f} "
            f"{g('flex_ms') / g('ours_bind_ms'):5.2f} | {g('sdpa_ms'):7.2f} {g('sdpa_ms') / g('ours_bind_ms'):5.2f}"
        )
    for c in results["crossover"]:
        print(f"crossover extend={c['extend']:>5}: query_major {c['query_major_ms']:.3f} ms, block_major {c['block_major_ms']:.3f} ms")
    best = sorted([s for s in results["sweep"] if "run_ms" in s], key=lambda s: s["run_ms"])[:3]
    for s in best:
        print("best sweep:", s)


if __name__ == "__main__":
    main()
