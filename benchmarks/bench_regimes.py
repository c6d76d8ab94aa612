"""MSA kernels where serving is: per-GPU head layouts, chunked prefill over long prefixes, 128k-1M decode.

Ours (sglang_msa) and upstream SGLang's in-tree MSA kernels (``minimax_sparse_prefill`` /
``minimax_sparse_decode``, the functions its MiniMax-M3 backend calls) run in the same process, on the
same inputs, one after the other; every ratio is one measurement of each, never the best of a sweep.

Matrix (issue #13):
- head layouts q/KV/index heads per GPU: 8/1/1 (TP8), 16/1/1 (TP4), 64/4/4 (TP1, continuity);
- prefill: chunks of 16k and 8k new tokens at contexts 128k, 512k, 1M (prefix = context - chunk) and
  with no prefix; selections ``realistic`` (smooth index keys/queries, benchmarks/selections.py: the
  indexer's own top-k is coherent between neighbouring rows, Jaccard ~0.9) and ``random`` (i.i.d.
  index keys/queries). The layer = indexer + plan + reverse map + main kernel + combine (ours) and
  indexer + top-k + main (upstream), timed together (``layer_ms``, plan() from scratch every call) and
  by part. Upstream's main is also timed on our indexer's selection (same blocks for both mains).
  At 1 index head our indexer is also timed unsplit (``indexer_unsplit_ms``, split_k=1) and split-K
  (``indexer_split_ms`` at ``indexer_split_k`` ranges, the grid rule without its key-length cap; 2 on
  CPU; ``indexer_split_k_default``: the S the backend runs, which ``ours_*`` timings use), with
  ``indexer_split_speedup`` and ``indexer_split_matches_unsplit`` (the selections are equal), and
  with a top-2 list instead of top-k (``indexer_small_topk_ms``; ``indexer_topk_upkeep_share`` = the
  share of the unsplit time that the per-block top-k upkeep costs at most; ``indexer_tuned_config``);
  the opt-in fp8 index path (e4m3 index keys + per-slot scales, ``idx_k_scale=``) is timed beside the
  bf16 one on the same inputs (``ours_fp8_indexer_ms``, ``ours_fp8_layer_ms``; the store of the chunk's
  keys apart, ``ours_fp8_index_k_store_ms``), with the share of the bf16 selection's blocks it keeps
  (``fp8_topk_blocks_in_common``) and the layer-output change that causes (``fp8_out_max_abs_diff``);
  Mean union of the blocks selected per 64/128-row query tile and the neighbour Jaccard are reported
  from the selection actually used Ours' main is also timed with plan(method="union_tile") on the same inputs
  (``ours_union_ms``, plan included; ``union_speedup_vs_block_major`` when the default is block-major),
  and its kernel variants (``union_variants``: prefetch 0/1/2 at 64/128 MMA rows, 4/8 warps) as union
  map + kernel and kernel alone, against block-major's map + main + combine and its main kernel;
- decode: one sparse layer's step (indexer + sparse attention) at 128k, 512k, 1M, B = 1, 8, 32,
  under CUDA-graph replay (and eager), next to the bandwidth floor: bytes that must move (index-K
  scan + selected K/V + q/out) / device copy bandwidth measured in the same run; the same step with
  the fp8 index path (``ours_fp8_graph_us``, against the bf16 step's graph timed just before it);
- references measured in the same run: copy bandwidth, dense bf16 matmul TFLOP/s.

The model's own MSA settings come from sglang_msa_tools.tiny_m3.SPARSE_COMMON (block 128, top-16, init 0,
local 1, index dim 128). Points run in priority order (the summary's points first) and are skipped past
the deadline or when their estimated memory exceeds ``--mem-gib``, with the reason recorded. The results
file (``kernels-<card>-<date>-regimes.json``; ``--name`` changes the last part) is rewritten after every point.

    python benchmarks/bench_regimes.py --out-dir DIR [--budget-s 540] [--layouts 8/1/1,16/1/1,64/4/4]
        [--chunks 16k,8k] [--tiers 128k,512k,1m,0] [--selections realistic,random]
        [--decode-layouts ...] [--decode-tiers 128k,512k,1m] [--batches 1,8,32] [--mem-gib 70]
    python benchmarks/bench_regimes.py --smoke --out-dir DIR   # tiny sizes; CPU under TRITON_INTERPRET=1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import traceback
import zlib
from datetime import date
from pathlib import Path

import torch

if not torch.cuda.is_available():  # Triton reads this when kernels are decorated: before their import
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("SGLANG_OPT_USE_MINIMAX_DECODE_TOPK_RADIX", "0")  # the radix top-k is CUDA-only

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import triton  # noqa: E402

from selections import random_index_qk, selection_stats, smooth_index_qk  # noqa: E402
from sglang_msa.kernels.msa_decode import SparseDecodeWrapper  # noqa: E402
from sglang_msa.kernels.msa_indexer import (  # noqa: E402
    IndexerDecode,
    indexer_prefill,
    quantize_index_k,
    quantize_index_k_cache,
)
from sglang_msa.kernels.msa_indexer import prefill as indexer_prefill_module  # noqa: E402
from sglang_msa.kernels.msa_indexer.decode import choose_topk_part  # noqa: E402
from sglang_msa.kernels.msa_indexer.prefill import PREFILL_CONFIGS, auto_split_k  # noqa: E402
from sglang_msa.kernels.msa_prefill import bind_topk, plan, run  # noqa: E402
from sglang_msa.kernels.msa_prefill.block_major import launch_block_major  # noqa: E402
from sglang_msa.kernels.msa_prefill.combine import launch_combine  # noqa: E402
from sglang_msa.kernels.msa_prefill.union_tile import launch_union_tile, mean_tile_union  # noqa: E402
from sglang_msa_tools.tiny_m3 import SPARSE_COMMON  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
K, M = 1024, 1024 * 1024

FULL = dict(
    block=SPARSE_COMMON["sparse_block_size"], topk=SPARSE_COMMON["sparse_topk_blocks"],
    init=SPARSE_COMMON["sparse_init_block"], local=SPARSE_COMMON["sparse_local_block"],
    idx_dim=SPARSE_COMMON["sparse_index_dim"], head_dim=128, page=128, dtype="bfloat16",
    chunks={"16k": 16 * K, "8k": 8 * K, "2k": 2 * K},
    tiers={"128k": 128 * K, "512k": 512 * K, "1m": M, "64k": 64 * K, "0": 0},
)
# Smoke: the same matrix with every size divided down (block 16, top-4, 32-dim heads).
SMOKE = dict(
    block=16, topk=4, init=SPARSE_COMMON["sparse_init_block"], local=SPARSE_COMMON["sparse_local_block"],
    idx_dim=32, head_dim=32, page=16, dtype="float16",
    chunks={"16k": 64, "8k": 32, "2k": 16}, tiers={"128k": 128, "512k": 256, "1m": 512, "64k": 64, "0": 0},
)
LAYOUTS = {"8/1/1": (8, 1, 1), "16/1/1": (16, 1, 1), "64/4/4": (64, 4, 4)}
SELECTIONS = ("realistic", "random")


class Deadline(Exception):
    pass


def _alarm(signum, frame):
    raise Deadline()


# ----------------------------------------------------------------------------------------- timing


def bench_ms(fn, *, warmup=3, rep=30) -> float:
    """Median ms. GPU: triton do_bench (CUDA events, L2 flushed between calls). CPU: one wall-clock call."""
    if CUDA:
        return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def eager_us(steps, iters=10, reps=5) -> float:
    """Median device time per step of back-to-back Python calls (steps: list of callables, rotated)."""
    n = len(steps)
    if not CUDA:
        t0 = time.perf_counter()
        steps[0]()
        return (time.perf_counter() - t0) * 1e6
    for s in steps:
        s()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for i in range(iters * n):
            steps[i % n]()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) * 1e3 / (iters * n))
    return statistics.median(out)


def graph_us(steps, reps=7, warm_ms=25.0, sample_ms=2.0):
    """Median device time per step under CUDA-graph replay (all rotated steps in one graph).

    Replays for ~warm_ms first, and each of the reps samples spans ~sample_ms of replays: with one
    replay per sample after an idle GPU, the first timing of the 2026-12-06 H200 run's decode steps
    read 10-13% above the same graph timed again later (323 vs 290 us at 512k, B=8), every point alike."""
    if not CUDA:
        return None
    for s in steps:
        s()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as torch recommends before capture
        for s in steps:
            s()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for s in steps:
            s()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    g.replay()
    b.record()
    b.synchronize()
    once_ms = max(a.elapsed_time(b), 1e-3)
    for _ in range(max(1, int(warm_ms / once_ms))):
        g.replay()
    inner = max(1, int(sample_ms / once_ms))
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(inner):
            g.replay()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) * 1e3 / (inner * len(steps)))
    del g
    return statistics.median(out)


def peak_extra_gib(fn):
    """Peak device memory allocated by fn above what was allocated before it (GPU only)."""
    if not CUDA:
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


# ----------------------------------------------------------------------------------------- upstream


def load_upstream(smoke: bool, full_autotune: bool):
    try:
        import sglang
        from sglang.kernels.ops.attention.minimax_sparse.prefill.flash_with_topk_idx import (
            flash_prefill_with_topk_index,
        )
        from sglang.kernels.ops.attention.minimax_sparse.prefill.topk_sparse import (
            flash_prefill_with_gqa_share_sparse,
        )
        from sglang.srt.layers.attention.minimax_sparse_ops.minimax_sparse import (
            minimax_sparse_decode,
            minimax_sparse_prefill,
        )
    except Exception as err:  # noqa: BLE001
        print(f"upstream unavailable: {err!r}", flush=True)
        return None, {"error": repr(err)[:300]}
    notes = {"version": getattr(sglang, "__version__", None),
             "decode_topk_radix": os.environ.get("SGLANG_OPT_USE_MINIMAX_DECODE_TOPK_RADIX", "default (1)")}
    from triton.runtime.autotuner import Autotuner, Heuristics

    base = "sglang.kernels.ops.attention.minimax_sparse."
    mods = [base + m for m in ("prefill.flash_with_topk_idx", "prefill.topk_sparse", "decode.flash_with_topk_idx",
                               "decode.topk_sparse")]
    for name in mods:
        mod = sys.modules.get(name) or __import__(name, fromlist=["x"])
        for obj in list(vars(mod).values()):
            while isinstance(obj, (Autotuner, Heuristics)):
                if isinstance(obj, Autotuner):
                    fn_name = obj.base_fn.__name__
                    if smoke and not CUDA:
                        # the interpreter cannot benchmark: one config, the smallest tiles (fast to interpret)
                        obj.configs = [min(obj.configs, key=lambda c: (sum(v for v in c.kwargs.values()
                                                                           if isinstance(v, int)), c.num_warps))]
                        notes.setdefault("interpreter_single_config", []).append(fn_name)
                    elif fn_name == "_decode_score_kernel" and not full_autotune:
                        # 36 configs cost minutes of compiling; keep those plausible for 128-key blocks
                        # (as bench_indexer.py does); --full-upstream-autotune keeps all
                        kept = [c for c in obj.configs if c.kwargs.get("BLOCK_SIZE_N") in (128, 256)
                                and c.num_stages in (2, 3) and c.num_warps in (4, 8)]
                        if kept:
                            obj.configs = kept
                            notes["decode_score_configs_kept"] = len(kept)
                obj = obj.fn
    fns = dict(prefill=minimax_sparse_prefill, decode=minimax_sparse_decode, indexer=flash_prefill_with_topk_index,
               main=flash_prefill_with_gqa_share_sparse)
    return fns, notes


# ----------------------------------------------------------------------------------------- inputs


def paged_r2t(num_reqs: int, ctx: int, page: int, seed: int):
    """req_to_token [num_reqs, ctx] over shuffled pages of one pool; returns (r2t, num_slots)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    per = triton.cdiv(ctx, page)
    perm = torch.randperm(num_reqs * per + 1, generator=g)[: num_reqs * per].view(num_reqs, per).to(DEV)
    pos = torch.arange(ctx, device=DEV)
    r2t = (perm[:, pos // page] * page + pos % page).to(torch.int32).contiguous()
    return r2t, (num_reqs * per + 1) * page


def make_caches(slots, hk, cfg, dtype, seed):
    g = torch.Generator(device=DEV).manual_seed(seed)
    k = torch.randn(slots, hk, cfg["head_dim"], device=DEV, generator=g).to(dtype)
    v = torch.randn(slots, hk, cfg["head_dim"], device=DEV, generator=g).to(dtype)
    return k, v


def index_qk(selection, L, prefix, T, h_idx, cfg, dtype, seed):
    gen = smooth_index_qk if selection == "realistic" else random_index_qk
    return gen(L, prefix, T, h_idx, cfg["idx_dim"], seed=seed, device=DEV, dtype=dtype)


def useful_main_flops(topk_idx, prefix, T, hq, hk, cfg):
    """4 * D * sum over (token, q head) of the keys it attends (selected blocks, causally clipped)."""
    B = cfg["block"]
    total = 0
    for t0 in range(0, T, 4096):  # bounded temporaries
        idx = topk_idx[:, t0:t0 + 4096].long()
        pos = prefix + t0 + torch.arange(idx.shape[1], device=idx.device)
        valid = (idx >= 0) & (idx * B <= pos[None, :, None])
        keys = (pos[None, :, None] - idx * B + 1).clamp(0, B) * valid
        total += int(keys.sum())
    return 4 * cfg["head_dim"] * total * (hq // hk)


def blocks_in_common(sel, ref):
    """Share of ref's selected blocks (ids >= 0) that sel also selected, over all rows; and the share of
    rows whose selections are identical. sel, ref: int32 [H, T, topk], ids ascending, -1 padded."""
    common = total = same = rows = 0
    for t0 in range(0, sel.shape[1], 4096):  # bounded temporaries
        a, b = sel[:, t0:t0 + 4096], ref[:, t0:t0 + 4096]
        hit = ((a[..., :, None] == b[..., None, :]) & (b[..., None, :] >= 0)).any(-2)
        common += int(hit.sum())
        total += int((b >= 0).sum())
        same += int((a == b).all(-1).sum())
        rows += a.shape[0] * a.shape[1]
    return common / max(total, 1), same / max(rows, 1)


# (BLOCK_M, num_warps, num_stages, maxnreg) tried by the indexer config sweep at one index head: the
# autotuner's own list (msa_indexer.prefill.PREFILL_CONFIGS) and larger tiles / deeper pipelines.
INDEXER_SWEEP = [*PREFILL_CONFIGS, (128, 4, 2, None), (128, 8, 4, 128), (128, 8, 2, None), (256, 8, 3, None),
                 (256, 16, 2, None), (256, 16, 3, None), (256, 8, 2, 255)]
# The same configs with split-K (S from the automatic rule for that BLOCK_M): 128-row tiles halve the K
# stream per FLOP but leave one program per SM at a 16k chunk, and with 2 stages (~96 KB) and <= 128
# registers per thread two CTAs fit, which only split-K can fill. (Written when the tuned kernel was
# thought to be 128/8/3/128; it is 64/4/3, see tuned_config below. On the 2026-12-07 H100 split-K took
# 128/8/2/128 from 1.61 to 1.37 ms, still 1.07x the tuned kernel.)
INDEXER_SWEEP_SPLIT = [(128, 8, 2, 128), (128, 8, 2, None), (128, 4, 2, None), (64, 4, 2, None), (64, 4, 3, None)]
# The same with pipeline_dots (block j + 1's dots issued before block j is pooled), the other way to let
# the pooling overlap the tensor cores; it holds two blocks' dots in registers.
INDEXER_SWEEP_PIPELINE = [(128, 8, 3, 128), (128, 8, 3, None), (128, 8, 2, None), (64, 4, 3, None)]
INDEXER_SWEEP_SMOKE = [(32, 4, 2, None), (64, 4, 2, None)]
INDEXER_SWEEP_SPLIT_SMOKE = [(32, 4, 2, None)]
INDEXER_SWEEP_PIPELINE_SMOKE = [(32, 4, 2, None)]


def sweep_name(bm: int, nw: int, ns: int, mr, split: int = 1, pipeline: bool = False) -> str:
    """A sweep entry's key: BLOCK_M/warps/stages/maxnreg, then /S<n> when split-K runs, /P with
    pipeline_dots."""
    return f"{bm}/{nw}/{ns}/{mr or '-'}" + (f"/S{split}" if split > 1 else "") + ("/P" if pipeline else "")


def tuned_config(run) -> str | None:
    """Call ``run`` (one autotuned indexer call) and return the config that call used. Triton's
    ``Autotuner.best_config`` is the config of its last call, whatever the key: read after the split-K
    runs, it named their config as the unsplit kernel's (H100, 2026-12-07: "128/8/3/128" reported, while
    the unsplit kernel ran at the forced 64/4/3's time, 1.28 ms, and the forced 128/8/3/128 took 1.82)."""
    run()
    best = getattr(indexer_prefill_module._indexer_prefill_tuned, "best_config", None)
    return str(best) if best is not None else None


def indexer_flops(prefix, T, h_idx, cfg):
    """2 * D_idx * index heads * sum over tokens of their causal keys (prefix + own position + 1)."""
    keys = T * prefix + T * (T + 1) // 2
    return 2 * cfg["idx_dim"] * h_idx * keys


# ----------------------------------------------------------------------------------------- memory


def prefill_mem_gib(layout, L, T, cfg, esize):
    hq, hk, hi = layout
    D, Di, B = cfg["head_dim"], cfg["idx_dim"], cfg["block"]
    caches = L * (2 * hk * D + Di) * esize + 4 * L + L * (Di + 4)  # + the fp8 index-K copy
    acts = T * (hq * D * 3 + hi * Di) * esize
    ours_ws = T * hq * cfg["topk"] * (D * esize + 4) + 32 * hk * T * cfg["topk"]
    up_score = hi * T * triton.cdiv(L, B) * 4
    return (caches + acts + ours_ws + up_score) * 1.15 / 2**30


def decode_mem_gib(layout, ctx, batch, rot, cfg, esize):
    hq, hk, hi = layout
    tokens = rot * batch * ctx
    fp8_index = cfg["idx_dim"] + 4  # the e4m3 copy of the index keys + scales
    return (tokens * ((2 * hk * cfg["head_dim"] + cfg["idx_dim"]) * esize + 4 + fp8_index)) * 1.1 / 2**30


# ----------------------------------------------------------------------------------------- prefill


def prefill_point(args, cfg, up, layout_name, chunk_name, tier, selection):
    hq, hk, hi = LAYOUTS[layout_name]
    T = cfg["chunks"][chunk_name]
    L = cfg["tiers"][tier] or T
    prefix = L - T
    dtype = getattr(torch, cfg["dtype"])
    esize = torch.tensor([], dtype=dtype).element_size()
    pt = dict(kind="prefill", layout=layout_name, heads=dict(q=hq, kv=hk, index=hi), chunk=T, chunk_name=chunk_name,
              tier=tier, context=L, prefix=prefix, selection=selection)
    need = prefill_mem_gib((hq, hk, hi), L, T, cfg, esize)
    pt["mem_estimate_gib"] = need
    if need > args.mem_gib:
        pt["skipped"] = f"needs ~{need:.1f} GiB > --mem-gib {args.mem_gib}"
        return pt
    B, TOPK, PAGE, D = cfg["block"], cfg["topk"], cfg["page"], cfg["head_dim"]
    seed = zlib.crc32(f"{layout_name}-{chunk_name}-{tier}-{selection}".encode()) % 10_000
    r2t1, slots = paged_r2t(1, L, PAGE, seed)
    r2t = torch.zeros(2, L + PAGE, dtype=torch.int32, device=DEV)
    r2t[1, :L] = r2t1[0]  # request 1 of a pool of 2, as SGLang's req_to_token rows
    k_cache, v_cache = make_caches(slots, hk, cfg, dtype, seed)
    iq, ik_seq = index_qk(selection, L, prefix, T, hi, cfg, dtype, seed)
    idx_k = torch.zeros(slots, 1, cfg["idx_dim"], device=DEV, dtype=dtype)
    idx_k[r2t1[0].long(), 0] = ik_seq
    del ik_seq
    g = torch.Generator(device=DEV).manual_seed(seed + 7)
    q = torch.randn(T, hq, D, device=DEV, generator=g).to(dtype)
    pool = torch.tensor([1], device=DEV, dtype=torch.int64)
    cu = torch.tensor([0, T], device=DEV, dtype=torch.int32)
    seq = torch.tensor([L], device=DEV, dtype=torch.int32)
    pre = torch.tensor([prefix], device=DEV, dtype=torch.int32)
    out = torch.empty_like(q)
    # as the backend calls it: host max lengths (max_seqlen_k caps the automatic split-K's ranges)
    ikw = dict(max_seqlen_q=T, max_seqlen_k=L, block_size=B, topk=TOPK, init_blocks=cfg["init"],
               local_blocks=cfg["local"], page_size=PAGE)
    # the plan as the backend calls it: with SGLang's host copies of the lengths (no device->host sync)
    pkw = dict(num_q_heads=hq, num_kv_heads=hk, head_dim=D, topk=TOPK, block_size=B, page_size=PAGE, dtype=dtype,
               method=args.method, host_lens=([T], [L], [prefix]))

    def ours_indexer():
        return indexer_prefill(iq, idx_k, r2t, pool, cu, seq, pre, **ikw)

    def ours_main(topk):  # what the backend runs per batch (plan) and per layer (run binds the map)
        p = plan(cu, seq, pre, pool, **pkw)
        return run(p, q, k_cache, v_cache, r2t, topk, out=out)

    def ours_layer():
        return ours_main(ours_indexer())

    if hi != hk:
        pt["ours_error"] = f"ours needs one index head per KV head (index {hi}, kv {hk})"
        return pt
    topk = ours_indexer()
    ours_main(topk)
    pt["ours_out_finite"] = bool(torch.isfinite(out).all())
    ours_out = out.clone()
    pt["selection_stats"] = selection_stats(topk)
    pt["useful_main_tflop"] = useful_main_flops(topk, prefix, T, hq, hk, cfg) / 1e12
    pt["indexer_tflop"] = indexer_flops(prefix, T, hi, cfg) / 1e12
    p0 = plan(cu, seq, pre, pool, **pkw)
    pt["method"] = p0.method
    ws = [t for t in (p0.ws_o, p0.ws_lse) if t is not None]
    pt["ours_workspace_gib_analytic"] = sum(t.numel() * t.element_size() for t in ws) / 2**30
    del p0
    pt["ours_layer_peak_extra_gib"] = peak_extra_gib(ours_layer)
    pt["ours_layer_ms"] = bench_ms(ours_layer)
    pt["ours_indexer_ms"] = bench_ms(ours_indexer)
    if hi == 1:  # split-K indexer (#13) beside the unsplit one: same inputs, one measurement each
        sms = torch.cuda.get_device_properties(0).multi_processor_count if DEV == "cuda" else 1
        # the grid rule's S without the key-length cap (>= 2: CPU smoke), so a short context shows what a
        # split there would cost; indexer_split_k_default: the S the backend runs (capped)
        sk = max(2, auto_split_k(triton.cdiv(T, 128), sms))
        held = {}
        pt["indexer_split_k"] = sk
        pt["indexer_split_k_default"] = auto_split_k(triton.cdiv(T, 128), sms, triton.cdiv(L, B)) if CUDA else 1
        pt["indexer_unsplit_ms"] = bench_ms(lambda: held.__setitem__(1, indexer_prefill(
            iq, idx_k, r2t, pool, cu, seq, pre, split_k=1, **ikw)))
        pt["indexer_split_ms"] = bench_ms(lambda: held.__setitem__(sk, indexer_prefill(
            iq, idx_k, r2t, pool, cu, seq, pre, split_k=sk, **ikw)))
        if DEV == "cuda":  # the autotuner's pick for each, read right after a call of its own key
            pt["indexer_tuned_config"] = tuned_config(lambda: indexer_prefill(
                iq, idx_k, r2t, pool, cu, seq, pre, split_k=1, **ikw))
            pt["indexer_split_tuned_config"] = tuned_config(lambda: indexer_prefill(
                iq, idx_k, r2t, pool, cu, seq, pre, split_k=sk, **ikw))
        else:
            pt["indexer_tuned_config"] = pt["indexer_split_tuned_config"] = None
        pt["indexer_split_speedup"] = pt["indexer_unsplit_ms"] / pt["indexer_split_ms"]
        pt["indexer_split_matches_unsplit"] = bool(torch.equal(held[1], held[sk]))
        ref_sel = held[1]  # the unsplit selection: what every config of the sweep below must reproduce
        del held
        # Where the indexer's time goes (it is 0.50 of the matmul rate): the same kernel keeping a top-2
        # list instead of a top-16 one does the same K stream and dots with ~1/8 of the list upkeep, so
        # the difference bounds what the per-block top-k offer costs.
        small = max(2, cfg["init"] + cfg["local"])
        if small < TOPK:
            ikw_small = {**ikw, "topk": small}
            indexer_prefill(iq, idx_k, r2t, pool, cu, seq, pre, split_k=1, **ikw_small)  # autotune outside timing
            pt["indexer_small_topk"] = small
            pt["indexer_small_topk_ms"] = bench_ms(lambda: indexer_prefill(
                iq, idx_k, r2t, pool, cu, seq, pre, split_k=1, **ikw_small))
            pt["indexer_topk_upkeep_share"] = 1.0 - pt["indexer_small_topk_ms"] / pt["indexer_unsplit_ms"]
        # The same K stream, dots and pooling without the top-k list at all (pool_only): with the top-2 run
        # above it splits the kernel's time into stream + dot + pool and list upkeep.
        indexer_prefill(iq, idx_k, r2t, pool, cu, seq, pre, split_k=1, pool_only=True, **ikw)
        pt["indexer_pool_only_ms"] = bench_ms(lambda: indexer_prefill(
            iq, idx_k, r2t, pool, cu, seq, pre, split_k=1, pool_only=True, **ikw))
        pt["indexer_pool_only_share"] = pt["indexer_pool_only_ms"] / pt["indexer_unsplit_ms"]
        # Config sweep: each candidate forced (no autotuner), one measurement each, same inputs. At one
        # index head a tile of BLOCK_M rows reads each 32 KB key block for BLOCK_M x 128 x 128 MACs. On the
        # 2026-12-07 H100 neither the dot nor the K stream limited it: fp8 (half the dot time and bytes) ran
        # no faster than bf16, and 64-row tiles (twice the K traffic per FLOP) as fast as 128-row ones.
        sweep = {}
        entries = [(*c, 1, False) for c in (INDEXER_SWEEP_SMOKE if args.smoke else INDEXER_SWEEP)]
        entries += [(bm, nw, ns, mr, max(2, auto_split_k(triton.cdiv(T, bm), sms)), False)
                    for bm, nw, ns, mr in (INDEXER_SWEEP_SPLIT_SMOKE if args.smoke else INDEXER_SWEEP_SPLIT)]
        entries += [(*c, 1, True) for c in (INDEXER_SWEEP_PIPELINE_SMOKE if args.smoke else INDEXER_SWEEP_PIPELINE)]
        for bm, nw, ns, mr, split, pipe in entries:
            kw = dict(split_k=split, block_m=bm, num_warps=nw, num_stages=ns, maxnreg=mr, pipeline_dots=pipe, **ikw)
            name = sweep_name(bm, nw, ns, mr, split, pipe)
            try:
                got = indexer_prefill(iq, idx_k, r2t, pool, cu, seq, pre, **kw)
                sweep[name] = dict(same_selection=bool(torch.equal(got, ref_sel)),
                                   ms=bench_ms(lambda: indexer_prefill(iq, idx_k, r2t, pool, cu, seq, pre, **kw)))
            except Exception as e:  # a config that does not compile or runs out of resources on this card
                sweep[name] = dict(error=f"{type(e).__name__}: {str(e)[:160]}")
        pt["indexer_config_sweep"] = sweep
        timed = {k: v["ms"] for k, v in sweep.items() if "ms" in v and v["same_selection"]}
        if timed:
            pt["indexer_sweep_best"] = min(timed, key=timed.get)
            pt["indexer_sweep_best_ms"] = timed[pt["indexer_sweep_best"]]
        del ref_sel
    # fp8 index path (#13): the cache as the server would hold it (e4m3 + per-slot scales); the store of
    # this chunk's keys is timed apart (a server stores every forward's keys, bf16 or fp8 alike)
    ik8, iks = quantize_index_k_cache(idx_k)
    chunk_loc = r2t1[0, prefix:L].contiguous()
    chunk_k = idx_k[chunk_loc.long()]
    pt["ours_fp8_index_k_store_ms"] = bench_ms(lambda: quantize_index_k(chunk_k, ik8, iks, chunk_loc))
    del chunk_k

    def ours_fp8_indexer():
        return indexer_prefill(iq, ik8, r2t, pool, cu, seq, pre, idx_k_scale=iks, **ikw)

    topk8 = ours_fp8_indexer()
    pt["fp8_topk_blocks_in_common"], pt["fp8_topk_rows_identical_frac"] = blocks_in_common(topk8, topk)
    out8 = torch.empty_like(q)
    run(plan(cu, seq, pre, pool, **pkw), q, k_cache, v_cache, r2t, topk8, out=out8)
    pt["fp8_out_max_abs_diff"] = float((out8.float() - ours_out.float()).abs().max())
    pt["fp8_out_mean_abs_diff"] = float((out8.float() - ours_out.float()).abs().mean())
    pt["ours_fp8_indexer_ms"] = bench_ms(ours_fp8_indexer)
    pt["ours_fp8_layer_ms"] = bench_ms(lambda: run(plan(cu, seq, pre, pool, **pkw), q, k_cache, v_cache, r2t,
                                                   ours_fp8_indexer(), out=out8))
    pt["fp8_indexer_speedup_vs_bf16"] = pt["ours_indexer_ms"] / pt["ours_fp8_indexer_ms"]
    pt["fp8_layer_speedup_vs_bf16"] = pt["ours_layer_ms"] / pt["ours_fp8_layer_ms"]
    del out8, topk8, ik8, iks
    pt["ours_main_ms"] = bench_ms(lambda: ours_main(topk))  # plan + reverse map + main + combine
    pt["ours_plan_ms"] = bench_ms(lambda: plan(cu, seq, pre, pool, **pkw))
    # the same plan reading the lengths back from the device (three syncs; the runs before 2026-12-07)
    pt["ours_plan_device_lens_ms"] = bench_ms(lambda: plan(cu, seq, pre, pool, **{**pkw, "host_lens": None}))
    pbm = plan(cu, seq, pre, pool, **{**pkw, "method": "block_major"})  # the parts, on a block-major plan
    bind_topk(pbm, topk)
    # both reverse maps on the same plan, whichever is the default (SGLANG_MSA_REVERSE_MAP): the counting
    # sort (default since the 2026-12-06 H200 run) and the stable sort
    pt["reverse_map_default"] = pbm.reverse_map
    for rm in ("counting", "sort"):
        pbm.reverse_map = rm
        pt[f"ours_reverse_map_{rm}_ms"] = bench_ms(lambda: bind_topk(pbm, topk))
    pt["ours_reverse_map_ms"] = pt[f"ours_reverse_map_{pt['reverse_map_default']}_ms"]
    if pt.get("method") == "block_major":
        outs = {}
        for rm in ("counting", "sort"):
            outs[rm] = torch.empty_like(q)
            pt[f"ours_main_{rm}_ms"] = bench_ms(lambda: run(plan(cu, seq, pre, pool, **pkw, reverse_map=rm),
                                                            q, k_cache, v_cache, r2t, topk, out=outs[rm]))
        pt["counting_map_output_identical"] = bool(torch.equal(outs["counting"], outs["sort"]))
        pt["counting_map_main_speedup"] = pt["ours_main_sort_ms"] / pt["ours_main_counting_ms"]
        del outs
    pbm.reverse_map = pt["reverse_map_default"]
    pt["ours_main_kernel_ms"] = bench_ms(lambda: launch_block_major(pbm, q, k_cache, v_cache, r2t))
    pt["ours_combine_ms"] = bench_ms(lambda: launch_combine(pbm, out, topk))
    del pbm
    # union-tile variant of ours' main (plan included, same inputs), recorded beside the block-major figures
    ukw = {**pkw, "method": "union_tile"}
    try:
        pu = plan(cu, seq, pre, pool, **ukw)
        pt["ours_union_tile_tokens"] = pu.tile_tokens
        pt["ours_union_mean_blocks_per_tile"] = float(mean_tile_union(
            topk, pu.token_pos, pu.token_req, block_size=B, tile_tokens=pu.tile_tokens))
        del pu
        out_u = torch.empty_like(q)
        pt["ours_union_ms"] = bench_ms(lambda: run(plan(cu, seq, pre, pool, **ukw), q, k_cache, v_cache, r2t, topk,
                                                   out=out_u))
        pt["ours_union_max_abs_diff_vs_ours"] = float((out_u.float() - ours_out.float()).abs().max())
        del out_u
        if pt.get("method") == "block_major" and pt["ours_union_ms"]:
            pt["union_speedup_vs_block_major"] = pt["ours_main_ms"] / pt["ours_union_ms"]
    except Exception as err:  # noqa: BLE001
        pt["ours_union_error"] = f"{type(err).__name__}: {str(err)[:400]}"
        traceback.print_exc()
    union_variants(pt, cu, seq, pre, pool, ukw, q, k_cache, v_cache, r2t, topk, ours_out)
    if CUDA:
        torch.cuda.empty_cache()
    if up is not None:
        hold = {}

        def up_layer():
            hold["layer"] = up["prefill"](q, k_cache, v_cache, None, iq, idx_k, None, None, r2t, pool, cu, seq, pre, T, L, 1,
                                 B, TOPK, cfg["init"], cfg["local"], score_type="max", disable_index_value=True,
                                 seqlens_cpu=[T])[1]

        def up_indexer():
            hold["sel"] = up["indexer"](q=iq, k_cache=idx_k, v_cache=None, sink=None, req_to_token=r2t, slot_ids=pool,
                                 cu_seqlens=cu, seq_lens=seq, prefix_lens=pre, max_seqlen_q=T, max_seqlen_k=L,
                                 block_size_q=1, block_size_k=B, topk=TOPK, init_blocks=cfg["init"],
                                 local_blocks=cfg["local"], disable_index_value=True)[1]

        def up_main(sel):
            return up["main"](q=q, k_cache=k_cache, v_cache=v_cache, sink=None, req_to_token=r2t, slot_ids=pool,
                              topk_idx=sel, block_size_q=1, block_size_k=B, cu_seqlens=cu, seq_lens=seq,
                              prefix_lens=pre, max_seqlen_q=T, cu_seqblocks_q=cu, max_seqblock_q=T)

        try:
            # outputs kept from the timed calls (the interpreter runs each once: no extra calls there)
            if CUDA:
                up_layer()  # compile + autotune before the memory peak is taken
            pt["upstream_layer_peak_extra_gib"] = peak_extra_gib(up_layer)
            pt["upstream_layer_ms"] = bench_ms(up_layer)
            pt["max_abs_diff_vs_upstream"] = float((hold.pop("layer").float() - ours_out.float()).abs().max())
            pt["upstream_indexer_ms"] = bench_ms(up_indexer)
            pt["topk_rows_differing_frac"] = float((hold.pop("sel") != topk).any(-1).float().mean())
            pt["upstream_main_ms"] = bench_ms(lambda: up_main(topk))  # on our indexer's selection
        except Exception as err:  # noqa: BLE001
            pt["upstream_error"] = f"{type(err).__name__}: {str(err)[:400]}"
            traceback.print_exc()
    for side in ("ours", "upstream"):
        if pt.get(f"{side}_main_ms"):
            pt[f"{side}_main_tflops"] = pt["useful_main_tflop"] / pt[f"{side}_main_ms"] * 1e3
        if pt.get(f"{side}_indexer_ms"):
            pt[f"{side}_indexer_tflops"] = pt["indexer_tflop"] / pt[f"{side}_indexer_ms"] * 1e3
    if pt.get("ours_fp8_indexer_ms"):
        pt["ours_fp8_indexer_tflops"] = pt["indexer_tflop"] / pt["ours_fp8_indexer_ms"] * 1e3
    if pt.get("upstream_layer_ms"):
        pt["layer_speedup_vs_upstream"] = pt["upstream_layer_ms"] / pt["ours_layer_ms"]
        pt["indexer_speedup_vs_upstream"] = pt["upstream_indexer_ms"] / pt["ours_indexer_ms"]
        pt["main_speedup_vs_upstream"] = pt["upstream_main_ms"] / pt["ours_main_ms"]
        if pt.get("ours_fp8_layer_ms"):
            pt["fp8_layer_speedup_vs_upstream"] = pt["upstream_layer_ms"] / pt["ours_fp8_layer_ms"]
    return pt


# Union-tile kernel variants (union_tile.py; plan(prefetch=, tile_tokens=, num_warps=, num_stages=)), each
# timed as the union map build + kernel (bind_topk + launch; the plan is outside, as block-major's parts
# are) and as the kernel alone. MMA rows = tile tokens x the group's padded q heads, so the same variant
# means 16 / 8 tokens at 8 q heads per KV head (TP8) and 8 / 4 at 16. First: today's default kernel.
# The sm_90 builds (offline) spill ~280 B/thread for prefetch 1 at 128 rows and ~56 B at 64 rows on 8
# warps; prefetch 2 keeps K/V in shared memory (num_stages 3: 224 / 208 KB) and spills < 64 B.
UNION_VARIANTS = [  # (name, prefetch, MMA rows, num_warps, num_stages)
    ("p0_r128_w8_s2", 0, 128, 8, 2),
    ("p1_r128_w8_s2", 1, 128, 8, 2),
    ("p1_r64_w8_s2", 1, 64, 8, 2),
    ("p2_r128_w8_s3", 2, 128, 8, 3),
    ("p2_r64_w8_s3", 2, 64, 8, 3),
    ("p2_r64_w4_s3", 2, 64, 4, 3),
]


def union_variants(pt, cu, seq, pre, pool, ukw, q, k_cache, v_cache, r2t, topk, ours_out):
    """pt["union_variants"]: per variant map+kernel ms, kernel ms, output max abs diff vs block-major, and
    speedups over block-major's map + main + combine (no plan either side) and over its main kernel."""
    bm = pt.get("method") == "block_major"
    bm_parts = [pt.get(k) for k in ("ours_reverse_map_ms", "ours_main_kernel_ms", "ours_combine_ms")]
    bm_ms = sum(bm_parts) if all(bm_parts) else None
    rows = []
    for name, prefetch, mma_rows, warps, stages in UNION_VARIANTS:
        row = dict(name=name, prefetch=prefetch, mma_rows=mma_rows, num_warps=warps, num_stages=stages)
        try:
            block_h = triton.next_power_of_2(pt["heads"]["q"] // pt["heads"]["kv"])
            pv = plan(cu, seq, pre, pool, **ukw, prefetch=prefetch, tile_tokens=max(1, mma_rows // block_h),
                      num_warps=warps, num_stages=stages)
            row["tile_tokens"] = pv.tile_tokens
            out_v = torch.empty_like(q)

            def map_and_kernel(pv=pv, out_v=out_v):
                bind_topk(pv, topk)
                launch_union_tile(pv, q, k_cache, v_cache, r2t, topk, out_v)

            row["map_kernel_ms"] = bench_ms(map_and_kernel)
            row["kernel_ms"] = bench_ms(lambda pv=pv, out_v=out_v: launch_union_tile(pv, q, k_cache, v_cache, r2t, topk,
                                                                                      out_v))
            row["max_abs_diff_vs_block_major"] = float((out_v.float() - ours_out.float()).abs().max()) if bm else None
            row["out_finite"] = bool(torch.isfinite(out_v).all())
            if bm and bm_ms:
                row["speedup_vs_block_major"] = bm_ms / row["map_kernel_ms"]
                row["kernel_speedup_vs_block_major_kernel"] = pt["ours_main_kernel_ms"] / row["kernel_ms"]
            del pv, out_v
        except Exception as err:  # noqa: BLE001 - a variant that does not compile or fit is a finding
            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
            traceback.print_exc()
        rows.append(row)
    pt["union_variants"] = rows
    pt["block_major_map_main_combine_ms"] = bm_ms
    timed = [r for r in rows if r.get("map_kernel_ms") and r.get("out_finite")]
    if timed:
        best = min(timed, key=lambda r: r["map_kernel_ms"])
        pt["union_best_variant"] = best["name"]
        pt["union_best_map_kernel_ms"] = best["map_kernel_ms"]
        pt["union_best_speedup_vs_block_major"] = best.get("speedup_vs_block_major")


# ----------------------------------------------------------------------------------------- decode


def decode_point(args, cfg, up, layout_name, tier, batch, l2_bytes):
    hq, hk, hi = LAYOUTS[layout_name]
    ctx = cfg["tiers"][tier]
    dtype = getattr(torch, cfg["dtype"])
    esize = torch.tensor([], dtype=dtype).element_size()
    B, TOPK, PAGE, D, Di = cfg["block"], cfg["topk"], cfg["page"], cfg["head_dim"], cfg["idx_dim"]
    nsel = min(TOPK, triton.cdiv(ctx, B))
    bytes_step = batch * (ctx * Di * esize + hk * nsel * B * D * 2 * esize
                          + (2 * hq * D + hi * Di) * esize + triton.cdiv(ctx, B) * 4)
    bytes_step_fp8 = bytes_step - batch * ctx * (Di * esize - Di - 4)  # e4m3 index keys + fp32 scales
    # rotate over request sets so that one step's data is not in L2 for the next (2x L2 per graph)
    rot = max(1, min(8, math.ceil(2 * l2_bytes / bytes_step))) if CUDA else 1
    pt = dict(kind="decode", layout=layout_name, heads=dict(q=hq, kv=hk, index=hi), tier=tier, context=ctx,
              batch=batch, selection="random", rotations=rot, bytes_per_step=bytes_step,
              bytes_per_step_fp8_index=bytes_step_fp8)
    need = decode_mem_gib((hq, hk, hi), ctx, batch, rot, cfg, esize)
    while need > args.mem_gib and rot > 1:
        rot //= 2
        need = decode_mem_gib((hq, hk, hi), ctx, batch, rot, cfg, esize)
    pt["rotations"], pt["mem_estimate_gib"] = rot, need
    if need > args.mem_gib:
        pt["skipped"] = f"needs ~{need:.1f} GiB > --mem-gib {args.mem_gib}"
        return pt
    seed = zlib.crc32(f"{layout_name}-{tier}-{batch}".encode()) % 10_000
    r2t, slots = paged_r2t(rot * batch, ctx, PAGE, seed)
    k_cache, v_cache = make_caches(slots, hk, cfg, dtype, seed)
    g = torch.Generator(device=DEV).manual_seed(seed + 3)
    idx_k = torch.randn(slots, 1, Di, device=DEV, generator=g).to(dtype)
    qs = [torch.randn(batch, hq, D, device=DEV, generator=g).to(dtype) for _ in range(rot)]
    iqs = [torch.randn(batch, hi, Di, device=DEV, generator=g).to(dtype) for _ in range(rot)]
    pools = [torch.arange(r * batch, (r + 1) * batch, device=DEV, dtype=torch.int64) for r in range(rot)]
    seq = torch.full((batch,), ctx, device=DEV, dtype=torch.int32)
    out = torch.empty(batch, hq, D, device=DEV, dtype=dtype)
    topk_buf = torch.full((hi, batch, TOPK), -1, device=DEV, dtype=torch.int32)
    # the backend's decode indexer: stage 2 in parts (choose_topk_part; smoke: parts of the smallest size)
    part = max(2 * triton.next_power_of_2(TOPK), 16) if args.smoke else choose_topk_part(TOPK)
    indexer = IndexerDecode(num_heads=hi, head_dim=Di, block_size=B, topk=TOPK, init_blocks=cfg["init"],
                            local_blocks=cfg["local"], page_size=PAGE, topk_part=part).plan(batch, ctx, DEV)
    wrappers = [SparseDecodeWrapper(torch.device(DEV)).plan(
        r2t, pools[r], seq, block_size=B, page_size=PAGE, num_q_heads=hq, num_kv_heads=hk, topk=TOPK, head_dim=D,
        max_batch=batch) for r in range(rot)]

    def ours_step(r):
        indexer.run(iqs[r], idx_k, r2t, pools[r], seq, out=topk_buf)
        wrappers[r].run(qs[r], k_cache, v_cache, topk_buf, out=out)

    steps = [lambda r=r: ours_step(r) for r in range(rot)]
    steps[0]()
    ours_out = out.clone()
    pt["ours_graph_us"] = graph_us(steps)
    pt["ours_eager_us"] = eager_us(steps)
    ind_steps = [lambda r=r: indexer.run(iqs[r], idx_k, r2t, pools[r], seq, out=topk_buf) for r in range(rot)]
    pt["ours_indexer_graph_us"] = graph_us(ind_steps)
    # the indexer's two stages apart: at B = 1 it read 81 us at 512k against a ~41 us bytes floor (H100,
    # 2026-12-06, stage 2 then one program per (head, request): 25 us of it; in parts: 11 us)
    pt["ours_indexer_scores_graph_us"] = graph_us(
        [lambda r=r: indexer.score(iqs[r], idx_k, r2t, pools[r], seq) for r in range(rot)])
    pt["ours_indexer_topk_graph_us"] = graph_us([lambda: indexer.select(seq, topk_buf)])
    # stage 2 as one program per (head, request) (SGLANG_MSA_DECODE_TOPK_PART=0) on the same scores: the
    # same selection, and its time
    single = IndexerDecode(num_heads=hi, head_dim=Di, block_size=B, topk=TOPK, init_blocks=cfg["init"],
                           local_blocks=cfg["local"], page_size=PAGE).plan(batch, ctx, DEV)
    single.workspace = indexer.workspace  # the scores stage 1 left
    indexer.run(iqs[0], idx_k, r2t, pools[0], seq, out=topk_buf)
    topk_single = torch.full_like(topk_buf, -1)
    single.select(seq, topk_single)
    pt["decode_topk_part"] = part
    pt["topk_parts_same_selection"] = bool(torch.equal(topk_single, topk_buf))
    pt["ours_indexer_topk_single_graph_us"] = graph_us([lambda: single.select(seq, topk_single)])
    del single, topk_single
    pt["ours_block_table_us"] = graph_us([wrappers[0].build_block_table])  # once per forward, not per layer
    # Where the graph-vs-eager gap of the step lives (512k, B=8: 461 vs 400 us on H100): each half in
    # both modes, and the whole step's graph again after the eager timings (drift between the two).
    att_steps = [lambda r=r: wrappers[r].run(qs[r], k_cache, v_cache, topk_buf, out=out) for r in range(rot)]
    pt["ours_indexer_eager_us"] = eager_us(ind_steps)
    pt["ours_attention_graph_us"] = graph_us(att_steps)
    pt["ours_attention_eager_us"] = eager_us(att_steps)
    pt["ours_graph_us_again"] = graph_us(steps)
    # fp8 index path (#13): the same step on the e4m3 copy of the index keys, timed right after the bf16
    # step's second graph (its baseline: adjacent in time); stores excluded on both sides, the fp8 store
    # of the step's B keys timed apart
    ik8, iks = quantize_index_k_cache(idx_k)
    topk8 = torch.full_like(topk_buf, -1)

    def ours_fp8_step(r):
        indexer.run(iqs[r], ik8, r2t, pools[r], seq, out=topk8, idx_k_scale=iks)
        wrappers[r].run(qs[r], k_cache, v_cache, topk8, out=out)

    fp8_steps = [lambda r=r: ours_fp8_step(r) for r in range(rot)]
    fp8_steps[0]()
    indexer.run(iqs[0], idx_k, r2t, pools[0], seq, out=topk_buf)
    pt["fp8_topk_blocks_in_common"], pt["fp8_topk_rows_identical_frac"] = blocks_in_common(topk8, topk_buf)
    pt["fp8_out_max_abs_diff"] = float((out.float() - ours_out.float()).abs().max())
    pt["ours_fp8_graph_us"] = graph_us(fp8_steps)
    pt["ours_fp8_eager_us"] = eager_us(fp8_steps)
    pt["ours_fp8_indexer_graph_us"] = graph_us(
        [lambda r=r: indexer.run(iqs[r], ik8, r2t, pools[r], seq, out=topk8, idx_k_scale=iks) for r in range(rot)])
    step_loc = r2t[torch.arange(batch, device=DEV), seq.long() - 1].contiguous()
    step_k = idx_k[step_loc.long()]
    pt["ours_fp8_store_graph_us"] = graph_us([lambda: quantize_index_k(step_k, ik8, iks, step_loc)])
    if CUDA:
        pt["indexer_decode_sweep"] = indexer_decode_sweep(hi, Di, cfg, batch, ctx, ind_steps, iqs, idx_k, ik8, iks,
                                                          r2t, pools, seq, topk_buf, rot, part)
    for mode, base in (("graph", "ours_graph_us_again"), ("eager", "ours_eager_us")):
        if pt.get(base) and pt.get(f"ours_fp8_{mode}_us"):
            pt[f"fp8_step_speedup_{mode}"] = pt[base] / pt[f"ours_fp8_{mode}_us"]
    del ik8, iks, topk8
    if up is not None:
        up_out = [None]

        def up_step(r):
            up_out[0] = up["decode"](qs[r], None, k_cache, v_cache, iqs[r], None, idx_k, None, r2t, pools[r], seq, ctx,
                                     1, B, TOPK, cfg["init"], cfg["local"], score_type="max",
                                     disable_index_value=True, page_size=PAGE)[1]

        try:
            usteps = [lambda r=r: up_step(r) for r in range(rot)]
            pt["upstream_eager_us"] = eager_us(usteps)  # on the CPU: its one call is the step below
            if CUDA:
                up_step(0)
            pt["max_abs_diff_vs_upstream"] = float((up_out[0].float().view_as(ours_out) - ours_out.float()).abs().max())
            pt["upstream_graph_us"] = graph_us(usteps)
        except Exception as err:  # noqa: BLE001
            pt["upstream_error"] = f"{type(err).__name__}: {str(err)[:400]}"
            traceback.print_exc()
    for mode in ("graph", "eager"):
        o, u = pt.get(f"ours_{mode}_us"), pt.get(f"upstream_{mode}_us")
        if o and u:
            pt[f"speedup_{mode}_vs_upstream"] = u / o
    return pt


# Decode indexer launch configs (programs per SM, warps, pipeline stages) timed under graph replay for the
# bf16 and the fp8 index-K cache: fp8 moves half the bytes per block, so it may want more in flight than
# the default (8, 4, 3) tuned on bf16. Recorded for choosing defaults; the step figures use the default.
DECODE_SWEEP = [(8, 4, 3), (8, 4, 4), (8, 4, 6), (16, 4, 3), (16, 4, 4), (4, 8, 4), (8, 8, 3)]


def indexer_decode_sweep(hi, di, cfg, batch, ctx, ind_steps, iqs, idx_k, ik8, iks, r2t, pools, seq, ref_topk, rot,
                         topk_part):
    ind_steps[0]()  # the default config's selection for the first inputs, into ref_topk
    want = ref_topk.clone()
    out = []
    for pps, warps, stages in DECODE_SWEEP:
        row = {"programs_per_sm": pps, "num_warps": warps, "num_stages": stages}
        try:
            ix = IndexerDecode(num_heads=hi, head_dim=di, block_size=cfg["block"], topk=cfg["topk"],
                               init_blocks=cfg["init"], local_blocks=cfg["local"], page_size=cfg["page"],
                               programs_per_sm=pps, num_warps=warps, num_stages=stages,
                               topk_part=topk_part).plan(batch, ctx, DEV)
            got = torch.full_like(ref_topk, -1)
            ix.run(iqs[0], idx_k, r2t, pools[0], seq, out=got)
            row["same_selection_as_default"] = bool(torch.equal(got, want))
            row["bf16_graph_us"] = graph_us([lambda r=r: ix.run(iqs[r], idx_k, r2t, pools[r], seq, out=got)
                                             for r in range(rot)])
            row["fp8_graph_us"] = graph_us([lambda r=r: ix.run(iqs[r], ik8, r2t, pools[r], seq, out=got,
                                                               idx_k_scale=iks) for r in range(rot)])
        except Exception as err:  # noqa: BLE001 - a config that does not compile or fit is a finding
            row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
        out.append(row)
    return out


# ----------------------------------------------------------------------------------------- references


def copy_bandwidth(smoke):
    n = (4 * M if smoke else 1 << 30)
    x = torch.empty(n, dtype=torch.uint8, device=DEV)
    y = torch.empty_like(x)
    ms = bench_ms(lambda: y.copy_(x), warmup=5, rep=50)
    return dict(bytes=2 * n, ms=ms, gbps=2 * n / ms / 1e6)


def matmul_tflops(cfg, smoke):
    dtype = getattr(torch, cfg["dtype"]) if CUDA else torch.float32
    out = {}
    shapes = {"square": (8192, 8192, 8192), "indexer_shape": (16384, 128, 16384)}
    if smoke:
        shapes = {"square": (256, 256, 256), "indexer_shape": (256, 32, 256)}
    for name, (m, k, n) in shapes.items():
        a = torch.randn(m, k, device=DEV).to(dtype)
        b = torch.randn(k, n, device=DEV).to(dtype)
        ms = bench_ms(lambda: a @ b, warmup=5, rep=50)
        out[name] = dict(m=m, k=k, n=n, ms=ms, tflops=2 * m * k * n / ms / 1e9)
    return out


# ----------------------------------------------------------------------------------------- summary

TARGETS = {
    "prefill_layer_rank8_128k_speedup_vs_upstream": (">=", 2.5),
    "prefill_layer_rank8_512k_speedup_vs_upstream": (">=", 2.5),
    "prefill_layer_rank8_128k_fp8_index_speedup_vs_upstream": (">=", 3.5),
    "prefill_layer_rank8_512k_fp8_index_speedup_vs_upstream": (">=", 3.5),
    "main_prefill_rank8_128k_tflops": (">=", 400.0),
    "indexer_fraction_of_matmul": (">=", 0.8),
    "decode_step_512k_b8_fraction_of_floor": (">=", 0.85),
    "decode_step_512k_b8_fp8_index_speedup": (">=", 1.7),
    "workspace_gib_per_16k_chunk": ("<=", 1.0),
    "plan_included": ("==", True),
}
NO_FP8 = "the point ran but the fp8 index path was not measured in it (see the point's fp8 keys / errors)"


def find(points, **kw):
    for p in points:
        if all(p.get(k) == v for k, v in kw.items()) and "skipped" not in p and "error" not in p:
            return p
    return None


def nan_if_none(x):
    return float("nan") if x is None else x


def ratio(a, b):
    return a / b if a and b else None


def breakdown(p):
    if not p:
        return "point not measured (skipped or failed)"
    f = lambda k: p.get(k) or float("nan")  # noqa: E731
    st = p.get("selection_stats") or {}
    return (f"ours {f('ours_layer_ms'):.2f} ms = indexer {f('ours_indexer_ms'):.2f} + plan/map/main/combine "
            f"{f('ours_main_ms'):.2f} (plan {f('ours_plan_ms'):.2f}, map {f('ours_reverse_map_ms'):.2f}, kernel "
            f"{f('ours_main_kernel_ms'):.2f}, combine {f('ours_combine_ms'):.2f}); upstream "
            f"{f('upstream_layer_ms'):.2f} ms = indexer {f('upstream_indexer_ms'):.2f} + main "
            f"{f('upstream_main_ms'):.2f}; union/64-row tile {st.get('union_per_tile_64') or float('nan'):.1f}, "
            f"neighbour Jaccard {st.get('neighbour_jaccard') or float('nan'):.2f}")


def summarize(res) -> tuple[dict, dict]:
    pts = res["points"]
    s: dict = {"card": res["card"], "plan_included": True}
    why: dict = {}
    for tier in ("128k", "512k", "1m"):
        for sel, suffix in (("realistic", ""), ("random", "_random")):
            for lay, tag in (("8/1/1", "rank8"), ("16/1/1", "rank4"), ("64/4/4", "tp1")):
                p = find(pts, kind="prefill", layout=lay, chunk_name="16k", tier=tier, selection=sel)
                key = f"prefill_layer_{tag}_{tier}_speedup_vs_upstream{suffix}"
                s[key] = p.get("layer_speedup_vs_upstream") if p else None
                if lay == "8/1/1" and not suffix and tier in ("128k", "512k"):
                    why[key] = breakdown(p)
    for tier in ("128k", "512k"):
        key = f"prefill_layer_rank8_{tier}_fp8_index_speedup_vs_upstream"
        p = find(pts, kind="prefill", layout="8/1/1", chunk_name="16k", tier=tier, selection="realistic")
        s[key] = p.get("fp8_layer_speedup_vs_upstream") if p else None
        if p and p.get("ours_fp8_layer_ms"):
            f = lambda k: nan_if_none(p.get(k))  # noqa: E731
            why[key] = (f"fp8 index path: ours {f('ours_fp8_layer_ms'):.2f} ms = fp8 indexer "
                        f"{f('ours_fp8_indexer_ms'):.2f} (bf16 {f('ours_indexer_ms'):.2f}) + plan/map/main/combine; "
                        f"upstream {f('upstream_layer_ms'):.2f} ms (bf16 index); store of the chunk's keys "
                        f"{f('ours_fp8_index_k_store_ms'):.3f} ms not in the layer; fp8 keeps "
                        f"{f('fp8_topk_blocks_in_common'):.3f} of the bf16 selection's blocks, layer output max "
                        f"abs diff {f('fp8_out_max_abs_diff'):.3g}")
            s[f"fp8_topk_blocks_in_common_rank8_{tier}_realistic"] = p.get("fp8_topk_blocks_in_common")
            s[f"fp8_indexer_speedup_vs_bf16_rank8_{tier}"] = p.get("fp8_indexer_speedup_vs_bf16")
        else:
            why[key] = "point not measured (skipped or failed)" if not p else NO_FP8
    p = find(pts, kind="prefill", layout="8/1/1", chunk_name="16k", tier="128k", selection="realistic")
    s["main_prefill_rank8_128k_tflops"] = p.get("ours_main_tflops") if p else None
    s["main_prefill_rank8_128k_tflops_upstream"] = p.get("upstream_main_tflops") if p else None
    s["main_prefill_rank8_128k_speedup_vs_upstream"] = p.get("main_speedup_vs_upstream") if p else None
    why["main_prefill_rank8_128k_tflops"] = breakdown(p)
    pr = find(pts, kind="prefill", layout="8/1/1", chunk_name="16k", tier="128k", selection="random")
    s["main_prefill_rank8_128k_tflops_random"] = pr.get("ours_main_tflops") if pr else None
    mm = (res.get("references") or {}).get("matmul", {}).get("square", {}).get("tflops")
    s["matmul_tflops"] = mm
    s["indexer_rank8_128k_tflops"] = p.get("ours_indexer_tflops") if p else None
    s["indexer_fraction_of_matmul"] = ratio(s["indexer_rank8_128k_tflops"], mm)
    s["indexer_rank8_128k_speedup_vs_upstream"] = p.get("indexer_speedup_vs_upstream") if p else None
    s["indexer_topk_upkeep_share_rank8_128k"] = p.get("indexer_topk_upkeep_share") if p else None
    # a short extend over a long prefix (an agentic turn: `--chunks 2k --tiers 64k`), where the unsplit
    # indexer grid leaves most SMs idle and the split (on by default) should pay most
    p2 = find(pts, kind="prefill", layout="8/1/1", chunk_name="2k", tier="64k", selection="realistic")
    s["indexer_split_k_rank8_2k_over_64k"] = p2.get("indexer_split_k") if p2 else None
    s["indexer_split_speedup_rank8_2k_over_64k"] = p2.get("indexer_split_speedup") if p2 else None
    s["prefill_layer_rank8_2k_over_64k_speedup_vs_upstream"] = p2.get("layer_speedup_vs_upstream") if p2 else None
    # a 2k-token prompt without a prefix (`--tiers 0`): what the uncapped split would cost there, and the
    # S the backend runs (the key-length cap: 1)
    p0 = find(pts, kind="prefill", layout="8/1/1", chunk_name="2k", tier="0", selection="realistic")
    s["indexer_split_k_default_rank8_2k_no_prefix"] = p0.get("indexer_split_k_default") if p0 else None
    s["indexer_split_speedup_rank8_2k_no_prefix"] = p0.get("indexer_split_speedup") if p0 else None
    # decode at one request (c1 serving): the indexer's two stages against the step's bytes floor
    d1 = find(pts, kind="decode", layout="8/1/1", tier="512k", batch=1)
    s["decode_step_512k_b1_us"] = d1.get("ours_graph_us") if d1 else None
    s["decode_512k_b1_indexer_scores_us"] = d1.get("ours_indexer_scores_graph_us") if d1 else None
    s["decode_512k_b1_indexer_topk_us"] = d1.get("ours_indexer_topk_graph_us") if d1 else None
    s["decode_512k_b1_indexer_topk_single_us"] = d1.get("ours_indexer_topk_single_graph_us") if d1 else None
    s["decode_step_512k_b1_speedup_vs_upstream"] = d1.get("speedup_graph_vs_upstream") if d1 else None
    s["indexer_tuned_config_rank8_128k"] = p.get("indexer_tuned_config") if p else None
    s["indexer_split_tuned_config_rank8_128k"] = p.get("indexer_split_tuned_config") if p else None
    s["indexer_pool_only_share_rank8_128k"] = p.get("indexer_pool_only_share") if p else None
    s["indexer_pool_only_fraction_of_matmul_rank8_128k"] = (
        ratio(p["indexer_tflop"] / p["indexer_pool_only_ms"] * 1e3, mm) if p and p.get("indexer_pool_only_ms") else None)
    for tier in ("128k", "512k"):  # the config sweep's best (same selection as the autotuned kernel)
        ps = find(pts, kind="prefill", layout="8/1/1", chunk_name="16k", tier=tier, selection="realistic")
        best_ms = ps.get("indexer_sweep_best_ms") if ps else None
        s[f"indexer_sweep_best_rank8_{tier}"] = ps.get("indexer_sweep_best") if ps else None
        s[f"indexer_sweep_best_speedup_vs_tuned_rank8_{tier}"] = (
            ps["indexer_unsplit_ms"] / best_ms if best_ms and ps.get("indexer_unsplit_ms") else None)
        s[f"indexer_sweep_best_fraction_of_matmul_rank8_{tier}"] = (
            ratio(ps["indexer_tflop"] / best_ms * 1e3, mm) if best_ms and ps.get("indexer_tflop") else None)
    why["indexer_fraction_of_matmul"] = (
        f"1 index head, 16k chunk over a 112k prefix: ours {s['indexer_rank8_128k_tflops'] or float('nan'):.0f} "
        f"TFLOP/s of q.k vs dense matmul {mm or float('nan'):.0f} TFLOP/s (square GEMM, same run); the prefill "
        f"indexer's grid is one program per BLOCK_M-row tile (tokens x index heads) of one request, so a 16k "
        f"chunk at 1 index head launches only 16384/BLOCK_M programs, each streaming the whole prefix")
    d = find(pts, kind="decode", layout="8/1/1", tier="512k", batch=8)
    copy = (res.get("references") or {}).get("copy", {}).get("gbps")
    if d and copy:
        d_floor = d["bytes_per_step"] / (copy * 1e3)  # us
        s["decode_step_512k_b8_floor_us"] = d_floor
        s["decode_step_512k_b8_us"] = d.get("ours_graph_us") or d.get("ours_eager_us")
        s["decode_step_512k_b8_fraction_of_floor"] = ratio(d_floor, s["decode_step_512k_b8_us"])
        s["decode_step_512k_b8_upstream_fraction_of_floor"] = ratio(d_floor, d.get("upstream_graph_us")
                                                                    or d.get("upstream_eager_us"))
        s["decode_step_512k_b8_speedup_vs_upstream"] = d.get("speedup_graph_vs_upstream") or d.get(
            "speedup_eager_vs_upstream")
        why["decode_step_512k_b8_fraction_of_floor"] = (
            f"8/1/1, B=8, 512k: {d['bytes_per_step'] / 1e9:.3f} GB per step (the index-K scan, "
            f"B x context x index dim x 2 B, dominates) at {copy:.0f} GB/s copy = "
            f"{d_floor:.1f} us; ours {s['decode_step_512k_b8_us'] or float('nan'):.1f} us "
            f"(indexer alone {d.get('ours_indexer_graph_us') or float('nan'):.1f} us graph / "
            f"{d.get('ours_indexer_eager_us') or float('nan'):.1f} eager, attention alone "
            f"{d.get('ours_attention_graph_us') or float('nan'):.1f} graph / "
            f"{d.get('ours_attention_eager_us') or float('nan'):.1f} eager)")
    else:
        s["decode_step_512k_b8_fraction_of_floor"] = None
        why["decode_step_512k_b8_fraction_of_floor"] = "point not measured (skipped or failed)"
    s["decode_step_512k_b8_fp8_index_speedup"] = None
    why["decode_step_512k_b8_fp8_index_speedup"] = "point not measured (skipped or failed)" if not d else NO_FP8
    if d and (d.get("fp8_step_speedup_graph") or d.get("fp8_step_speedup_eager")):
        mode = "graph" if d.get("fp8_step_speedup_graph") else "eager"
        s["decode_step_512k_b8_fp8_index_speedup"] = d[f"fp8_step_speedup_{mode}"]
        s["decode_step_512k_b8_fp8_us"] = d.get(f"ours_fp8_{mode}_us")
        s["fp8_topk_blocks_in_common_decode_512k_b8_random"] = d.get("fp8_topk_blocks_in_common")
        f = lambda k: nan_if_none(d.get(k))  # noqa: E731
        base = "ours_graph_us_again" if mode == "graph" else "ours_eager_us"
        why["decode_step_512k_b8_fp8_index_speedup"] = (
            f"8/1/1, B=8, 512k, {mode}: bf16 step {f(base):.1f} us "
            f"{'(its graph timed just before)' if mode == 'graph' else '(eager)'} / fp8-index step {f(f'ours_fp8_{mode}_us'):.1f} us (indexer alone "
            f"{f('ours_fp8_indexer_graph_us'):.1f} us graph vs bf16 {f('ours_indexer_graph_us'):.1f}); bytes per "
            f"step {d['bytes_per_step_fp8_index'] / 1e9:.4g} GB vs {d['bytes_per_step'] / 1e9:.4g}; index-K stores "
            f"excluded on both sides (fp8 store of the step's keys {f('ours_fp8_store_graph_us'):.1f} us graph); "
            f"fp8 keeps {f('fp8_topk_blocks_in_common'):.3f} of the bf16 selection's blocks (random keys)")
    for dt in ("bf16", "fp8"):  # the decode indexer's launch-config sweep: the fastest config of each cache
        rows = [r for r in (d or {}).get("indexer_decode_sweep", []) if r.get(f"{dt}_graph_us")]
        if rows:
            best = min(rows, key=lambda r: r[f"{dt}_graph_us"])
            s[f"decode_512k_b8_{dt}_indexer_sweep_best"] = {
                k: best.get(k) for k in ("programs_per_sm", "num_warps", "num_stages", f"{dt}_graph_us",
                                         "same_selection_as_default")}
    ws = [p.get("ours_layer_peak_extra_gib") if p.get("ours_layer_peak_extra_gib") is not None
          else p.get("ours_workspace_gib_analytic") for p in pts
          if p.get("kind") == "prefill" and p.get("layout") == "8/1/1" and p.get("chunk_name") == "16k"
          and "skipped" not in p and "error" not in p]
    ws = [w for w in ws if w is not None]
    s["workspace_gib_per_16k_chunk"] = max(ws) if ws else None
    s["workspace_measure"] = "peak device memory of our layer above its inputs" if CUDA else "plan workspace (analytic)"
    why["workspace_gib_per_16k_chunk"] = ("8/1/1: partials T x 8 heads x 16 slots x (128 x 2 B + 4 B) = 0.51 GiB at "
                                          "16k + the indexer's output and the reverse map")
    for sel in SELECTIONS:
        pp = find(pts, kind="prefill", layout="8/1/1", chunk_name="16k", tier="128k", selection=sel)
        if pp:
            s[f"union_per_tile_64_rank8_128k_{sel}"] = pp["selection_stats"]["union_per_tile_64"]
            s[f"neighbour_jaccard_rank8_128k_{sel}"] = pp["selection_stats"]["neighbour_jaccard"]
    # union-tile kernel variants (union map + kernel) against block-major's map + main + combine, no plan
    pu = find(pts, kind="prefill", layout="8/1/1", chunk_name="16k", tier="128k", selection="realistic")
    s["union_tile_best_speedup_vs_block_major_rank8_128k_realistic"] = (
        pu.get("union_best_speedup_vs_block_major") if pu else None)
    s["union_tile_best_variant_rank8_128k_realistic"] = pu.get("union_best_variant") if pu else None
    rows = [r for r in (pu or {}).get("union_variants", []) if r.get("kernel_speedup_vs_block_major_kernel")]
    s["union_tile_best_kernel_speedup_vs_block_major_kernel_rank8_128k_realistic"] = (
        max(r["kernel_speedup_vs_block_major_kernel"] for r in rows) if rows else None)
    # every variant's union map + kernel ms (kernel alone), beside block-major's map + main + combine (main)
    s["union_tile_variants_ms_rank8_128k_realistic"] = {
        "block_major": [pu.get("block_major_map_main_combine_ms"), pu.get("ours_main_kernel_ms")],
        **{r["name"]: [r.get("map_kernel_ms"), r.get("kernel_ms")] for r in pu["union_variants"]},
    } if pu and pu.get("union_variants") else None
    for tier in ("128k", "512k"):  # the counting-sort reverse map (the default) against the sorted one
        pp = find(pts, kind="prefill", layout="8/1/1", chunk_name="16k", tier=tier, selection="realistic")
        if pp and pp.get("ours_reverse_map_counting_ms"):
            s[f"reverse_map_counting_speedup_rank8_{tier}"] = (pp["ours_reverse_map_sort_ms"]
                                                               / pp["ours_reverse_map_counting_ms"])
            s[f"main_counting_speedup_rank8_{tier}"] = pp.get("counting_map_main_speedup")
    return s, why


def targets(summary, why) -> dict:
    out = {}
    for key, (op, goal) in TARGETS.items():
        val = summary.get(key)
        rec = dict(target=f"{op} {goal}", value=val)
        if val is None:
            rec["met"] = None
        elif op == ">=":
            rec["met"] = val >= goal
            if not rec["met"]:
                rec["missed_by"] = f"{(1 - val / goal) * 100:.0f}% below ({val:.3g} vs {goal})"
        elif op == "<=":
            rec["met"] = val <= goal
            if not rec["met"]:
                rec["missed_by"] = f"{(val / goal - 1) * 100:.0f}% above ({val:.3g} vs {goal})"
        else:
            rec["met"] = val == goal
        if key in why:
            rec["why"] = why[key]
        out[key] = rec
    return out


# ----------------------------------------------------------------------------------------- main


def _clean(obj):
    """JSON-safe copy: NaN/inf become None (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def versions():
    v = {"torch": torch.__version__, "triton": triton.__version__}
    try:
        import sglang

        v["sglang"] = sglang.__version__
    except Exception:  # noqa: BLE001
        v["sglang"] = None
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "sglang_msa"], cwd=ROOT, capture_output=True,
                               text=True)
        v["sglang_msa_git"] = rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") or None
    except Exception:  # noqa: BLE001
        v["sglang_msa_git"] = None
    return v


def point_list(args, cfg):
    """Every point, in priority order: the summary's points first, then the rest of the matrix."""
    pre, dec = [], []
    for lay in args.layouts:
        for ch in args.chunks:
            for tier in args.tiers:
                for sel in args.selections:
                    if cfg["tiers"][tier] and cfg["tiers"][tier] < cfg["chunks"][ch]:
                        continue
                    pre.append(("prefill", lay, ch, tier, sel))
    for lay in args.decode_layouts:
        for tier in args.decode_tiers:
            for b in args.batches:
                dec.append(("decode", lay, tier, b))

    def prio(p):
        if p[0] == "prefill":
            _, lay, ch, tier, sel = p
            key = (lay == "8/1/1" and ch == "16k" and tier in ("128k", "512k") and sel == "realistic")
            return (0 if key else 2, ["8/1/1", "16/1/1", "64/4/4"].index(lay) if lay in LAYOUTS else 9,
                    args.chunks.index(ch), args.tiers.index(tier), args.selections.index(sel))
        _, lay, tier, b = p
        key = lay == "8/1/1" and tier == "512k" and b == 8
        return (1 if key else 3, ["8/1/1", "16/1/1", "64/4/4"].index(lay), args.decode_tiers.index(tier),
                args.batches.index(b), 0)

    return sorted(pre + dec, key=prio)


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--budget-s", type=float, default=540.0, help="stop starting points after this; summary still written")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (block 16, top-4, 32-dim heads); CPU-able")
    # defaults: the full matrix; with --smoke a small one (each smoke point takes ~10-40 s interpreted)
    ap.add_argument("--layouts", default=None, help="8/1/1,16/1/1,64/4/4 (smoke: 8/1/1,64/4/4)")
    ap.add_argument("--chunks", default=None, help="16k,8k (smoke: 16k)")
    ap.add_argument("--tiers", default=None, help="prefill contexts 128k,512k,1m,0; 0 = no prefix, context = "
                    "chunk (smoke: 128k,512k)")
    ap.add_argument("--selections", default="realistic,random")
    ap.add_argument("--decode-layouts", default=None, help="default: --layouts")
    ap.add_argument("--decode-tiers", default=None, help="128k,512k,1m (smoke: 512k)")
    ap.add_argument("--batches", default=None, help="1,8,32 (smoke: 1,8)")
    ap.add_argument("--method", default=None, choices=["auto", "block_major", "query_major"],
                    help="our prefill plan's method: auto as the backend (default); smoke default block_major, "
                    "the path auto takes at every full-size point (chunk x KV heads > 4096)")
    ap.add_argument("--shared-gpu", default="", help="what else ran on the GPU during this run (written into "
                    "the results: its timings are then noisier than those of a run alone)")
    ap.add_argument("--name", default="regimes", help="suffix of the results file, kernels-<card>-<date>-NAME.json "
                    "(another name keeps a second run of one day beside the first in benchmarks/results)")
    ap.add_argument("--no-prefill", action="store_true")
    ap.add_argument("--no-decode", action="store_true")
    ap.add_argument("--mem-gib", type=float, default=None, help="skip points estimated above this (default: "
                    "min(70, 0.85 x device memory))")
    ap.add_argument("--full-upstream-autotune", action="store_true")
    args = ap.parse_args(argv)
    defaults = dict(layouts=("8/1/1,16/1/1,64/4/4", "8/1/1,64/4/4"), chunks=("16k,8k", "16k"),
                    tiers=("128k,512k,1m,0", "128k,512k"), decode_tiers=("128k,512k,1m", "512k"),
                    batches=("1,8,32", "1,8"), method=("auto", "block_major"))
    for name, (full, smoke) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    args.layouts = split(args.layouts)
    args.decode_layouts = split(args.decode_layouts) if args.decode_layouts is not None else list(args.layouts)
    args.chunks, args.tiers, args.selections = split(args.chunks), split(args.tiers), split(args.selections)
    args.decode_tiers = split(args.decode_tiers)
    args.batches = [int(b) for b in split(args.batches)]
    for lay in args.layouts + args.decode_layouts:
        if lay not in LAYOUTS:
            ap.error(f"unknown layout {lay} (known: {', '.join(LAYOUTS)})")
    for sel in args.selections:
        if sel not in SELECTIONS:
            ap.error(f"unknown selection {sel}")
    if args.no_prefill:
        args.layouts = []
    if args.no_decode:
        args.decode_layouts = []
    if args.mem_gib is None:
        total = torch.cuda.get_device_properties(0).total_memory / 2**30 if CUDA else 8.0
        args.mem_gib = min(70.0, 0.85 * total)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    cfg = SMOKE if args.smoke else FULL
    for ch in args.chunks:
        assert ch in cfg["chunks"], f"unknown chunk {ch}"
    for tier in args.tiers + args.decode_tiers:
        assert tier in cfg["tiers"], f"unknown tier {tier}"
    assert "0" not in args.decode_tiers, "decode needs a context"
    t0 = time.time()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name(0) if CUDA else "cpu-interpreter"
    today = date.today().isoformat()
    path = args.out_dir / f"kernels-{card.replace(' ', '-')}-{today}-{args.name}.json"
    up, up_notes = load_upstream(args.smoke, args.full_upstream_autotune)
    res = {
        "card": card, "date": today, "command": " ".join([sys.executable, *sys.argv]) if argv is None
        else " ".join(["bench_regimes.py", *argv]), "versions": versions(), "upstream": up_notes,
        "smoke": args.smoke, "device": DEV, "interpreter": os.environ.get("TRITON_INTERPRET") == "1",
        "config": {k: v for k, v in cfg.items()}, "layouts": {k: LAYOUTS[k] for k in LAYOUTS},
        "budget_s": args.budget_s, "mem_gib_limit": args.mem_gib, "prefill_method": args.method,
        "notes": [
            "ratios: upstream time / our time, one measurement each in this run (medians of do_bench, CUDA events)",
            "prefill layer = indexer + plan() from scratch + reverse map + main + combine (ours); upstream's "
            "minimax_sparse_prefill (indexer + top-k + main) with the backend's arguments (block_size_q 1)",
            "plan() is called as the backend calls it, with SGLang's host copies of the lengths (host_lens, no "
            "device->host sync); ours_plan_device_lens_ms is the same plan reading them back (three syncs), as "
            "runs before 2026-12-07 timed it; the plan is once per batch in a server, once per layer here",
            "upstream_main_ms runs upstream's main kernel on our indexer's selection (same blocks as ours_main_ms)",
            "decode step = one sparse layer: indexer + sparse attention (ours: IndexerDecode.run + "
            "SparseDecodeWrapper.run; upstream: minimax_sparse_decode with max_seqlen = the context); the "
            "per-forward block-table build (ours_block_table_us) is outside the step",
            "decode floor = bytes_per_step / copy bandwidth (read + write bytes of a 1 GiB device copy)",
            *([f"shared GPU: {args.shared_gpu}"] if args.shared_gpu else []),
        ],
        "shared_gpu": args.shared_gpu or None,
        "references": {}, "points": [], "skipped": [],
    }

    def save():
        res["seconds"] = time.time() - t0
        res["summary"], why = summarize(res)
        res["targets"] = targets(res["summary"], why)
        path.write_text(json.dumps(_clean(res), indent=1, default=str, allow_nan=False))

    plist = point_list(args, cfg)
    res["planned_points"] = [list(p) for p in plist]
    current = len(plist)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(max(1, int(args.budget_s)))
    try:
        res["references"]["copy"] = copy_bandwidth(args.smoke)
        res["references"]["matmul"] = matmul_tflops(cfg, args.smoke)
        l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 * M) if CUDA else 0
        res["references"]["l2_bytes"] = l2
        print(json.dumps(res["references"]), flush=True)
        save()
        for i, p in enumerate(plist):
            current = i
            tp = time.time()
            try:
                if p[0] == "prefill":
                    pt = prefill_point(args, cfg, up, *p[1:])
                else:
                    pt = decode_point(args, cfg, up, *p[1:], l2)
            except Deadline:
                raise
            except Exception as err:  # noqa: BLE001
                traceback.print_exc()
                pt = dict(kind=p[0], point=list(p), error=f"{type(err).__name__}: {str(err)[:400]}")
            pt["point"] = list(p)
            pt["seconds"] = time.time() - tp
            res["points"].append(pt)
            if CUDA:
                torch.cuda.empty_cache()
            print(json.dumps(pt, default=str), flush=True)
            save()
    except Deadline:
        res["deadline_reached"] = True
        print("deadline reached: remaining points skipped", flush=True)
        res["skipped"] = [dict(point=list(p), reason="deadline" + (" (during measurement)" if j == 0 else ""))
                          for j, p in enumerate(plist[current:])]
    finally:
        signal.alarm(0)
    save()
    print(json.dumps(res["summary"], indent=1, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
