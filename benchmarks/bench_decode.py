#!/usr/bin/env python3
"""MSA sparse decode micro-benchmark: ours vs upstream SGLang vs dense decode (GPU only).

Shapes: B in {1, 8, 32, 64} x context {32k, 128k}, heads 64/4 and 16/1, top-16 blocks of 128, bf16,
page size 128 with shuffled pages, every sequence at full context. Each timed call uses one of R
rotating top-k selections so consecutive calls read different KV (no L2 reuse at the shapes that
matter). Two timings, medians of CUDA-event repetitions:
  - ``eager``: back-to-back Python calls (includes launch overhead when the GPU starves);
  - ``graph``: the R calls captured in one CUDA graph and replayed (device time per call).
GB/s counts the selected K/V bytes read. Dense = SDPA over the whole context (same pool memory).
``cpu`` = host microseconds per call (launch overhead alone).

    python benchmarks/bench_decode.py [--quick] [--out DIR] [--budget-s 200] [--sweep 8:131072:4,...]
Upstream needs SGLang importable (installed, or an unpacked SGLang bundle on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.attention  # noqa: F401  (sdpa_kernel)
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sglang_msa.kernels.msa_decode import SparseDecodeWrapper  # noqa: E402

BLOCK, TOPK, HEAD_DIM, ROTATE = 128, 16, 128, 8


def load_upstream():
    try:
        from sglang.kernels.ops.attention.minimax_sparse.decode.topk_sparse import (
            flash_decode_with_gqa_share_sparse,
        )

        return flash_decode_with_gqa_share_sparse
    except Exception as err:  # noqa: BLE001
        print(f"[bench] upstream unavailable: {err!r}", flush=True)
        return None


def time_eager(fn, iters=20, reps=5):
    for i in range(3):
        fn(i)
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(iters):
            fn(i)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / iters)
    return statistics.median(samples)


def time_cpu(fn, iters=50):
    """Host time per call (launch overhead): no sync inside the loop."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(iters):
        fn(i)
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) * 1e6 / iters


def time_graph(fn, calls=ROTATE, reps=7):
    for i in range(calls):
        fn(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    graph.replay()
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / calls)
    del graph
    return statistics.median(samples)


def make_topk_sets(batch, num_kv_heads, ctx, gen_device):
    """ROTATE selections of 16 distinct sorted blocks (init + local forced, others random)."""
    n_blocks = ctx // BLOCK
    sets = torch.empty(ROTATE, num_kv_heads, batch, TOPK, dtype=torch.int32, device=gen_device)
    scores = torch.rand(ROTATE, num_kv_heads, batch, n_blocks, device=gen_device)
    scores[..., 0] = 2.0
    scores[..., -1] = 2.0
    sets.copy_(scores.topk(TOPK, dim=-1).indices.sort(dim=-1).values)
    return sets


def dense_decode(q, k_dense, v_dense):
    """q [B, Hq, D]; k/v [B, Hk, ctx, D] views; SDPA with GQA, falling back to plain torch."""
    b, hq, d = q.shape
    try:
        with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q.view(b, hq, 1, d), k_dense, v_dense, enable_gqa=True)
    except RuntimeError:  # one request at a time keeps the temporaries small
        hk = k_dense.shape[1]
        outs = []
        for r in range(b):
            qg = q[r].view(hk, hq // hk, d)
            s = torch.matmul(qg, k_dense[r].transpose(-1, -2)).float() * d**-0.5
            outs.append(torch.matmul(s.softmax(-1).to(q.dtype), v_dense[r]))
        return torch.stack(outs).view(b, hq, 1, d)


def bench_heads(hq, hk, batches, contexts, upstream, budget_end, results, sweep, save):
    max_tokens = max(batches) * max(contexts)
    gen = torch.Generator(device="cuda").manual_seed(0)
    k_pool = torch.randn(max_tokens + BLOCK, hk, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
    v_pool = torch.randn(max_tokens + BLOCK, hk, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
    for ctx in contexts:
        for batch in batches:
            if time.time() > budget_end:
                print(f"[bench] budget exhausted, skipping {hq}/{hk} B={batch} ctx={ctx}", flush=True)
                continue
            pages = batch * ctx // BLOCK
            page_of = torch.randperm(pages, device="cuda", generator=gen).view(batch, ctx // BLOCK)
            pos = torch.arange(ctx, device="cuda")
            req_to_token = (page_of[:, pos // BLOCK] * BLOCK + pos % BLOCK).to(torch.int32).contiguous()
            req_pool = torch.arange(batch, device="cuda", dtype=torch.int64)
            seq_lens = torch.full((batch,), ctx, device="cuda", dtype=torch.int32)
            q = torch.randn(batch, hq, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
            topk_sets = make_topk_sets(batch, hk, ctx, "cuda")
            out = torch.empty_like(q)
            kv_bytes = batch * hk * TOPK * BLOCK * HEAD_DIM * 2 * 2

            wrapper = SparseDecodeWrapper().plan(
                req_to_token, req_pool, seq_lens, block_size=BLOCK, page_size=BLOCK,
                num_q_heads=hq, num_kv_heads=hk, topk=TOPK,
            )
            ours = lambda i: wrapper.run(q, k_pool, v_pool, topk_sets[i % ROTATE], out=out)  # noqa: E731
            row = dict(heads=f"{hq}/{hk}", batch=batch, context=ctx, kv_bytes=kv_bytes,
                       tiling=vars(wrapper.tiling))
            row["ours_eager_us"] = time_eager(ours)
            row["ours_graph_us"] = time_graph(ours)
            row["ours_cpu_us"] = time_cpu(ours)
            cfg = wrapper.last_config
            row["ours_config"] = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages) if cfg else None
            ref_out = ours(0).clone()
            if upstream is not None:
                theirs = lambda i: upstream(  # noqa: E731
                    q=q, sink=None, k_cache=k_pool, v_cache=v_pool, req_to_token=req_to_token,
                    seq_lens=seq_lens, slot_ids=req_pool, block_size=BLOCK, topk_idx=topk_sets[i % ROTATE],
                )
                row["upstream_eager_us"] = time_eager(theirs)
                row["upstream_graph_us"] = time_graph(theirs)
                row["upstream_cpu_us"] = time_cpu(theirs)
                row["max_abs_diff_vs_upstream"] = (theirs(0).float() - ref_out.float()).abs().max().item()
            k_dense = k_pool[: batch * ctx].view(batch, ctx, hk, HEAD_DIM).transpose(1, 2)
            v_dense = v_pool[: batch * ctx].view(batch, ctx, hk, HEAD_DIM).transpose(1, 2)
            row["dense_eager_us"] = time_eager(lambda i: dense_decode(q, k_dense, v_dense), iters=5, reps=3)
            for mode in ("eager", "graph"):
                row[f"ours_{mode}_GBps"] = kv_bytes / row[f"ours_{mode}_us"] / 1e3
                if f"upstream_{mode}_us" in row:
                    row[f"speedup_{mode}"] = row[f"upstream_{mode}_us"] / row[f"ours_{mode}_us"]
            results.append(row)
            save()
            print(json.dumps(row), flush=True)

            if (batch, ctx, hk) in sweep and time.time() < budget_end:
                for splits, tile in ((1, None), (2, None), (4, None), (8, None), (16, None), (32, 64)):
                    w = SparseDecodeWrapper().plan(
                        req_to_token, req_pool, seq_lens, block_size=BLOCK, page_size=BLOCK,
                        num_q_heads=hq, num_kv_heads=hk, topk=TOPK, num_splits=splits, tile_n=tile,
                    )
                    fn = lambda i: w.run(q, k_pool, v_pool, topk_sets[i % ROTATE], out=out)  # noqa: E731
                    us = time_graph(fn)
                    c = w.last_config
                    sweep_row = dict(heads=f"{hq}/{hk}", batch=batch, context=ctx, tiling=vars(w.tiling),
                                     graph_us=us, config=dict(num_warps=c.num_warps, num_stages=c.num_stages) if c else None)
                    results.append(dict(sweep=sweep_row))
                    print("[sweep]", json.dumps(sweep_row), flush=True)
            del wrapper, req_to_token, page_of
    del k_pool, v_pool
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="B in {1, 8}, 32k only")
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--budget-s", type=float, default=220.0, help="skip remaining shapes after this")
    ap.add_argument("--sweep", default="", help="also sweep split counts at B:ctx:kv_heads,... e.g. 8:131072:4")
    args = ap.parse_args()
    budget_end = time.time() + args.budget_s
    batches = [1, 8] if args.quick else [1, 8, 32, 64]
    contexts = [32768] if args.quick else [32768, 131072]
    upstream = load_upstream()
    results = []
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                triton=__import__("triton").__version__, block=BLOCK, topk=TOPK, rotate=ROTATE)
    Path(args.out).mkdir(parents=True, exist_ok=True)

    def save():  # after every shape, so a run cut short still leaves its numbers
        (Path(args.out) / "bench_decode.json").write_text(json.dumps(dict(meta=meta, results=results), indent=1))

    sweep = {tuple(int(x) for x in item.split(":")) for item in args.sweep.split(",") if item}
    for hq, hk in ((64, 4), (16, 1)):
        bench_heads(hq, hk, batches, contexts, upstream, budget_end, results, sweep, save)
    save()

    print(f"\n{meta['device']}  (us per call; graph = CUDA-graph replay, eager = Python loop)")
    hdr = (f"{'heads':>6} {'B':>3} {'ctx':>6} | {'ours g':>7} {'ups g':>7} {'x g':>5} | {'ours e':>7} "
           f"{'ups e':>7} {'x e':>5} | {'GB/s g':>7} | {'dense':>8} | {'cpu o/u':>11} | splits")
    print(hdr)
    for r in results:
        if "sweep" in r:
            continue
        g = lambda k: r.get(k, float("nan"))  # noqa: E731
        print(f"{r['heads']:>6} {r['batch']:>3} {r['context'] // 1024:>5}k | {g('ours_graph_us'):7.1f} "
              f"{g('upstream_graph_us'):7.1f} {g('speedup_graph'):5.2f} | {g('ours_eager_us'):7.1f} "
              f"{g('upstream_eager_us'):7.1f} {g('speedup_eager'):5.2f} | {g('ours_graph_GBps'):7.0f} | "
              f"{g('dense_eager_us'):8.1f} | {g('ours_cpu_us'):5.0f}/{g('upstream_cpu_us'):5.0f} | "
              f"{r['tiling']['num_splits']}x{r['tiling']['tiles_per_split']}"
              f"x{r['tiling']['tile_n']}")


if __name__ == "__main__":
    main()
