"""Where a serving step's GPU time goes: profile a live SGLang server, sum kernel time by category.

    python3 benchmarks/profile_step.py --url http://127.0.0.1:30000 --out-dir /tmp/prof \\
        --vocab-size 200064 --input-len 32768 --concurrency 8

Two windows, each through SGLang's ``/start_profile`` (``num_steps``, GPU activity only, so the trace
stays small): *prefill* — the steps that prefill one ``--input-len`` prompt (chunked prefill splits it
into several steps); *decode* — ``--decode-steps`` steps once ``--concurrency`` requests are all
decoding. Kernels are sorted into categories by name (``CATEGORIES``: indexer, sparse attention,
dense attention, MoE, norms/RoPE, GEMM, communication, other); the report gives ms per step and the
share of each. ``summarize_trace`` works on any Chrome trace that torch's profiler writes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

# First match wins. Ours and SGLang 0.5.17's kernel names (Triton function names show up as-is).
CATEGORIES: list[tuple[str, re.Pattern]] = [
    ("indexer", re.compile(r"_indexer_prefill_kernel|_indexer_merge_kernel|_decode_block_scores_kernel"
                           r"|_decode_topk_kernel|_decode_topk_part_kernel|_decode_topk_merge_kernel"
                           r"|_flash_attn_fwd_with_block_score|_decode_score|_topk_index")),
    ("sparse_attention", re.compile(r"block_major_fwd|query_major_fwd|combine_kernel|combine_splits"
                                    r"|sparse_decode_split|build_block_table|_gqa_share_sparse"
                                    r"|_merge_attn_out|_merge_topk_attn_out")),
    ("dense_attention", re.compile(r"^_fwd_kernel|_fwd_grouped_kernel_stage|_copy_unified_indices"
                                   r"|flash_fwd|FlashAttnFwd|flash::|fmha|attention", re.IGNORECASE)),
    ("moe", re.compile(r"moe|expert|topk_softmax|grouped_topk|count_and_sort", re.IGNORECASE)),
    ("norm_rope", re.compile(r"norm|rope|rotary", re.IGNORECASE)),
    ("gemm", re.compile(r"gemm(?!a)|gemv|cutlass|xmma|nvjet|cublas|splitk|sm90_|wgmma", re.IGNORECASE)),
    ("communication", re.compile(r"nccl|all_reduce|allreduce|all_gather", re.IGNORECASE)),
]
OTHER = "other"


def categorize(kernel_name: str) -> str:
    for category, pattern in CATEGORIES:
        if pattern.search(kernel_name):
            return category
    return OTHER


def load_trace(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return json.loads(raw)


def summarize_trace(trace: dict[str, Any], steps: int = 1, top: int = 12) -> dict[str, Any]:
    """GPU kernel time per category (ms per step) and the heaviest kernels of a torch profiler trace."""
    by_cat: dict[str, float] = {}
    by_kernel: dict[str, list[float]] = {}
    memcpy_us = 0.0
    for ev in trace.get("traceEvents", []):
        if ev.get("ph") != "X":
            continue
        cat = str(ev.get("cat", "")).lower()
        dur = float(ev.get("dur", 0.0))
        if cat == "kernel":
            name = str(ev.get("name", "?"))
            c = categorize(name)
            by_cat[c] = by_cat.get(c, 0.0) + dur
            entry = by_kernel.setdefault(name, [0.0, 0])
            entry[0] += dur
            entry[1] += 1
        elif cat in ("gpu_memcpy", "gpu_memset"):
            memcpy_us += dur
    steps = max(1, steps)
    total_us = sum(by_cat.values())
    heaviest = sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "steps": steps,
        "kernel_ms_per_step": total_us / 1e3 / steps,
        "memcpy_ms_per_step": memcpy_us / 1e3 / steps,
        "ms_per_step": {c: v / 1e3 / steps for c, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
        "share": {c: (v / total_us if total_us else 0.0) for c, v in by_cat.items()},
        "top_kernels": [{"name": n[:160], "category": categorize(n), "ms_per_step": v[0] / 1e3 / steps,
                         "calls_per_step": v[1] / steps} for n, v in heaviest],
    }


# ----------------------------------------------------------------------------------------- live server


def _post(url: str, payload: dict | None = None, timeout: float = 600.0) -> str:
    import urllib.request

    data = json.dumps(payload or {}).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode(errors="replace")


def _generate(url: str, ids: list[int], new_tokens: int) -> None:
    _post(url + "/generate", {"input_ids": ids, "sampling_params": {
        "temperature": 0.0, "max_new_tokens": new_tokens, "ignore_eos": True}})


def _wait_trace(out_dir: Path, before: set[Path], timeout_s: float) -> Path | None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        new = [p for p in out_dir.rglob("*.json*") if p not in before and p.stat().st_size > 0]
        if new:
            time.sleep(2.0)  # let the writer finish
            return max(new, key=lambda p: p.stat().st_mtime)
        time.sleep(1.0)
    return None


def profile_window(url: str, out_dir: Path, steps: int, load, settle_s: float = 0.0,
                   trace_timeout_s: float = 120.0) -> dict[str, Any]:
    """Start ``load`` (a callable sending requests) in a thread, profile ``steps`` steps, summarize."""
    out_dir.mkdir(parents=True, exist_ok=True)
    before = set(out_dir.rglob("*.json*"))
    worker = threading.Thread(target=load, daemon=True)
    if settle_s:
        worker.start()
        time.sleep(settle_s)
    _post(url + "/start_profile", {"output_dir": str(out_dir), "num_steps": steps, "activities": ["GPU"],
                                   "with_stack": False, "record_shapes": False})
    if not settle_s:
        worker.start()
    worker.join()
    path = _wait_trace(out_dir, before, trace_timeout_s)
    if path is None:
        return {"error": f"no trace written under {out_dir} within {trace_timeout_s:.0f} s"}
    summary = summarize_trace(load_trace(path), steps)
    summary["trace"] = str(path)
    return summary


def profile_server(url: str, out_dir: Path, *, vocab_size: int, input_len: int, concurrency: int,
                   prefill_steps: int, decode_steps: int, decode_tokens: int, seed: int = 0) -> dict[str, Any]:
    import random

    rng = random.Random(seed)

    def prompt() -> list[int]:
        return [rng.randrange(100, vocab_size) for _ in range(input_len)]

    prefill_ids = prompt()
    decode_ids = [prompt() for _ in range(concurrency)]

    def prefill_load():
        _generate(url, prefill_ids, 1)

    def decode_load():
        threads = [threading.Thread(target=_generate, args=(url, ids, decode_tokens)) for ids in decode_ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    # Decode: wait until every request has been prefilled (rough: prefill time measured just before).
    t0 = time.time()
    _generate(url, prompt(), 1)
    one_prefill_s = time.time() - t0
    result = {"input_len": input_len, "concurrency": concurrency, "one_prefill_s": one_prefill_s}
    result["prefill"] = profile_window(url, out_dir / "prefill", prefill_steps, prefill_load)
    # The window must open after the last prefill and before the first request ends: --decode-tokens
    # should give several seconds of decoding past the settle time.
    result["decode"] = profile_window(url, out_dir / "decode", decode_steps, decode_load,
                                      settle_s=one_prefill_s * concurrency * 1.15 + 1.0)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running SGLang server")
    ap.add_argument("--trace", type=Path, help="summarize this trace file instead of profiling a server")
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/sglang-msa-profile"))
    ap.add_argument("--vocab-size", type=int, default=1000)
    ap.add_argument("--input-len", type=int, default=32768)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--prefill-steps", type=int, default=2)
    ap.add_argument("--decode-steps", type=int, default=10)
    ap.add_argument("--decode-tokens", type=int, default=800)
    ap.add_argument("--steps", type=int, default=1, help="with --trace: steps the trace holds")
    args = ap.parse_args(argv)
    if args.trace:
        result = summarize_trace(load_trace(args.trace), args.steps)
    elif args.url:
        result = profile_server(args.url.rstrip("/"), args.out_dir, vocab_size=args.vocab_size,
                                input_len=args.input_len, concurrency=args.concurrency,
                                prefill_steps=args.prefill_steps, decode_steps=args.decode_steps,
                                decode_tokens=args.decode_tokens)
    else:
        ap.error("give --url or --trace")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
