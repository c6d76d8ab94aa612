"""Served A/B against SGLang's own default MiniMax-M3 deployment, per GPU at `--tp 8` (rank8 proxy).

    python3 benchmarks/ab_default.py --out-dir OUT [--workloads cookbook,agentic,long,max-context]
        [--repeats 2] [--deadline-s 540]

Servers, one after the other on one GPU (same card, same flags), in swapped order on each repeat:

    A   stock SGLang: the plugin off (SGLANG_MSA_DISABLE=1, so SGLang's in-tree M3 class), no
        --attention-backend and no --page-size, so SGLang picks them (fa3 + page 128 on Hopper);
    A2  A + --disable-shared-experts-fusion;
    B   A's command + --attention-backend msa (the plugin on).

The model is the ``rank8`` preset of ``sglang_msa_tools.tiny_m3`` (what one GPU computes in MiniMax-M3 at
``--tp 8``) served at TP1 with ``--load-format dummy``. Load comes from SGLang's own
``sglang.bench_serving`` (workload presets: ``benchmarks/serving/presets.py``); this script starts
and stops the servers, reads each server's chosen backend and page size from its log, and writes
``serving-<card>-<date>-rank8.json`` (+ a PNG) whose ``summary`` is computed by
:func:`summarize` (tested on CPU). Each workload's headline ratio is against the faster of A and A2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.serving.presets import (  # noqa: E402
    ONE_M_INPUT, Point, calibrated, capped, context_length_for, select, text_tokens_per_token)
from benchmarks.servers import Server, post_json  # noqa: E402

BASELINES = ("A", "A2")
METRICS = ("output_throughput", "request_throughput", "median_ttft_ms", "p99_ttft_ms", "mean_ttft_ms",
           "median_tpot_ms", "median_itl_ms", "duration", "completed", "total_input_tokens",
           "total_output_tokens", "ttft_p50_first_wave_ms", "ttft_p50_later_ms")
# Per-request lists of SGLang's --output-details: read for the wave split, then dropped from the record.
DETAILS = ("input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors")

# Two all-reduces per layer at --tp 8 (after attention and after the MoE), which the TP1 proxy omits.
# No multi-GPU machine was lent to measure them with NCCL, so these are stated assumptions: NCCL
# all-reduce bus bandwidth on 8 NVLink-4 H100/H200 GPUs for large (prefill) messages, and the latency
# of SGLang's custom all-reduce for small (decode) messages.
ALLREDUCE = {"busbw_gb_s": 400.0, "small_latency_us": 12.0, "ranks": 8, "per_layer": 2, "bytes_per_elem": 2}

CHUNK = 16384  # --chunked-prefill-size of every server
A_LOG = re.compile(r"MiniMax-M3 on (\w+): attention_backend=(\w+), page_size=(\w+)")
B_LOG = re.compile(r"sglang-msa: dense attention layers on (\w+) \((.*?)\), page size (\w+)")
# Where each server runs the MoE shared expert: SGLang's M3 logs "Shared experts fusion optimization
# enabled." (or "... is disabled."); our class logs "shared expert fused into FusedMoE" or "as its own MLP".
FUSION_LOG = re.compile(r"Shared experts fusion optimization (enabled|is disabled)|shared expert (fused into FusedMoE|as its own MLP)")
JIT_TRACE_DIR = ROOT / "benchmarks" / "jit_trace"
JIT_LINE = re.compile(r"\[jit-trace\] [\d.]+ pid=\d+ compile (\S+) (-?\d+) ms")
AUTOTUNE_LINE = re.compile(r"Triton autotuning for function ([^,\s]+),\s*with key as .{0,2000}?\s*finished after "
                           r"([\d.]+)s", re.S)


# ------------------------------------------------------------------------------------------ summary


def _geomean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def _median_by_point(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """{(server, point key): {metric: median over repeats, 'spread': ..., 'repeats': n}}."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r.get("metrics"):
            groups.setdefault((r["server"], r["point"]), []).append(r["metrics"])
    out = {}
    for key, ms in groups.items():
        agg = {m: statistics.median(x[m] for x in ms if x.get(m) is not None)
               for m in METRICS if any(x.get(m) is not None for x in ms)}
        tps = [x["output_throughput"] for x in ms if x.get("output_throughput")]
        agg["output_throughput_spread"] = (max(tps) - min(tps)) / statistics.median(tps) if len(tps) > 1 else None
        agg["repeats"] = len(ms)
        out[key] = agg
    return out


def allreduce_seconds(point: dict, layers: int, hidden: int, ar: dict = ALLREDUCE) -> float:
    """Estimated all-reduce time a --tp 8 rank adds to one run of ``point`` (prompt tokens of every
    request through every layer, plus one small all-reduce pair per layer per decode step)."""
    algbw = ar["busbw_gb_s"] * 1e9 * ar["ranks"] / (2 * (ar["ranks"] - 1))
    per_token = ar["per_layer"] * layers * hidden * ar["bytes_per_elem"] / algbw
    prefill = point["new_prompt_tokens"] * per_token
    steps = point["num_prompts"] * point["output_len"] / max(1, point["concurrency"])
    decode = steps * ar["per_layer"] * layers * ar["small_latency_us"] * 1e-6
    return prefill + decode


def _ratio(num: dict, den: dict, key: str) -> float | None:
    """``num[key] / den[key]`` where both sides measured it, else None (a latency ratio > 1: ``den`` is faster)."""
    return num[key] / den[key] if num.get(key) and den.get(key) else None


def _by_repeat(rows: list[dict], key: str, base: str) -> list[tuple[int, float, str]]:
    """Per repeat in which both ``base`` and B measured point ``key``: (repeat, B's output throughput over
    ``base``'s, the server measured first in that repeat). Rows are appended in measurement order, one
    server's points after the other's, the order swapped between repeats; with an odd number of repeats
    one order runs once more, which a per-repeat view shows where an order effect would hide in medians."""
    tput: dict[int, dict[str, float]] = {}
    first: dict[int, str] = {}
    for r in rows:
        if r["point"] == key and r["server"] in (base, "B") and (r.get("metrics") or {}).get("output_throughput"):
            first.setdefault(r["rep"], r["server"])
            tput.setdefault(r["rep"], {})[r["server"]] = r["metrics"]["output_throughput"]
    return [(rep, v["B"] / v[base], first[rep]) for rep, v in sorted(tput.items()) if base in v and "B" in v]


def summarize(rows: list[dict], points: list[dict], logs: dict, model: dict, not_run: list[dict] = ()) -> dict:
    """The results file's ``summary``: B against the faster of A and A2 on each workload."""
    med = _median_by_point(rows)
    by_point = {p["key"]: p for p in points}
    per_point = []
    baseline_of: dict[str, str] = {}
    for workload in dict.fromkeys(p["workload"] for p in points):
        keys = [p["key"] for p in points if p["workload"] == workload]
        geo = {a: _geomean([med.get((a, k), {}).get("output_throughput") for k in keys]) for a in BASELINES}
        geo = {a: g for a, g in geo.items() if g}
        if geo:
            baseline_of[workload] = max(geo, key=geo.get)
    for key, p in by_point.items():
        base = baseline_of.get(p["workload"])
        a, b = med.get((base, key)), med.get(("B", key))
        if not (a and b):
            per_point.append({"point": key, "workload": p["workload"], "baseline": base, "measured": False})
            continue
        entry = {"point": key, "workload": p["workload"], "input_len": p["input_len"],
                 "concurrency": p["concurrency"], "baseline": base, "measured": True,
                 "output_throughput_ratio": b["output_throughput"] / a["output_throughput"],
                 "ttft_p50_ratio": _ratio(a, b, "median_ttft_ms"),
                 # decode: A's median time per output token over B's (> 1: B decodes faster)
                 "tpot_p50_ratio": _ratio(a, b, "median_tpot_ms"),
                 # TTFT of the requests after the first wave (each sent as one finishes), A over B
                 "ttft_p50_later_ratio": _ratio(a, b, "ttft_p50_later_ms"),
                 "spread": {"baseline": a.get("output_throughput_spread"), "B": b.get("output_throughput_spread")},
                 "repeats": {"baseline": a["repeats"], "B": b["repeats"]}}
        by_rep = _by_repeat(rows, key, base)
        if len(by_rep) > 1:
            entry["output_throughput_ratio_by_repeat"] = [round(x, 4) for _, x, _ in by_rep]
            entry["measured_first_by_repeat"] = [f for _, _, f in by_rep]
            # each repeat's ratio counted once, whichever server went first in it
            entry["output_throughput_ratio_repeat_geomean"] = _geomean([x for _, x, _ in by_rep])
        extra = allreduce_seconds(p, model["layers"], model["hidden"])
        adj = [m["total_output_tokens"] / (m["duration"] + extra) for m in (a, b)]
        entry["allreduce_s_estimate"] = extra
        entry["allreduce_adjusted_ratio"] = adj[1] / adj[0]
        per_point.append(entry)
    measured = [e for e in per_point if e["measured"]]

    def at(workload: str, n: int, field: str) -> dict:
        return {str(e["concurrency"]): e[field] for e in measured
                if e["workload"] == workload and e["input_len"] == n and e.get(field) is not None}

    ratio_by_workload = {}
    for workload, base in baseline_of.items():
        rs = [e["output_throughput_ratio"] for e in measured if e["workload"] == workload]
        if rs:
            ratio_by_workload[workload] = {"baseline": base, "geomean": _geomean(rs), "min": min(rs), "max": max(rs)}
    tp128, ttft128 = at("long", 131072, "output_throughput_ratio"), at("long", 131072, "ttft_p50_ratio")
    ttft512 = at("max-context", 524288, "ttft_p50_ratio")
    ttft1m = at("max-context", ONE_M_INPUT, "ttft_p50_ratio")
    adj128 = at("long", 131072, "allreduce_adjusted_ratio")
    failed = sum(max(0, r["num_prompts"] - int(r["metrics"].get("completed") or 0)) for r in rows if r.get("metrics"))
    summary = {
        "card": logs.get("card"),
        "baseline": "sglang-default",
        # A's choice, or A2's where only A2 ran (the same command but one MoE flag)
        "a_attention_backend": (logs.get("A") or logs.get("A2") or {}).get("attention_backend"),
        "a_page_size": (logs.get("A") or logs.get("A2") or {}).get("page_size"),
        "b_dense_backend": logs.get("B", {}).get("dense_backend"),
        "b_page_size": logs.get("B", {}).get("page_size"),
        "shared_expert_fused": {n: v.get("shared_expert_fused") for n, v in logs.items()
                                if isinstance(v, dict) and "shared_expert_fused" in v},
        "min_output_throughput_ratio": min((e["output_throughput_ratio"] for e in measured), default=None),
        "ratio_by_workload": ratio_by_workload,
        "output_throughput_ratio_128k": _geomean(list(tp128.values())),
        "output_throughput_ratio_128k_by_concurrency": tp128,
        "ttft_p50_ratio_128k": ttft128.get("1", _geomean(list(ttft128.values()))),
        "ttft_p50_ratio_128k_by_concurrency": ttft128,
        "ttft_p50_ratio_512k": ttft512.get("1"),
        "ttft_p50_ratio_1m": ttft1m.get("1"),
        # points left out before the servers started, each with why (e.g. a KV pool that does not fit)
        "points_not_run": list(not_run),
        "allreduce_adjusted_ratio_128k": _geomean(list(adj128.values())),
        "allreduce_assumptions": ALLREDUCE,
        "failed_requests": failed,
        "points_measured": len(measured),
        "points_planned": len(points),
        "points_not_measured": [e["point"] for e in per_point if not e["measured"]],
        "per_point": per_point,
    }
    # B over B1 (the same server with the split-K indexer off), where both ran: what the split does served
    split_effect = []
    for key in by_point:
        b, b1 = med.get(("B", key)), med.get(("B1", key))
        if b and b1:
            split_effect.append({
                "point": key, "output_throughput_ratio": b["output_throughput"] / b1["output_throughput"],
                "ttft_p50_ratio": _ratio(b1, b, "median_ttft_ms"),
                "repeats": {"B": b["repeats"], "B1": b1["repeats"]}})
    if split_effect:
        summary["split_effect"] = split_effect
    summary["targets"] = targets(summary)
    return summary


def targets(s: dict) -> dict:
    """Each target of the issue with the measured value and whether it is met (None: not measured)."""
    spec = {"never_slower (min output throughput ratio >= 1.0)": (s["min_output_throughput_ratio"], 1.0),
            "128k output throughput >= 1.2x": (s["output_throughput_ratio_128k"], 1.2),
            "128k TTFT p50 >= 1.3x lower": (s["ttft_p50_ratio_128k"], 1.3),
            "512k TTFT p50 >= 1.5x lower": (s["ttft_p50_ratio_512k"], 1.5)}
    for w in ("agentic", "long"):
        spec[f"moonshot {w} output throughput >= 1.8x"] = ((s["ratio_by_workload"].get(w) or {}).get("geomean"), 1.8)
    out = {name: {"measured": v, "target": t, "met": None if v is None else v >= t,
                  "missed_by": None if v is None or v >= t else t - v} for name, (v, t) in spec.items()}
    measured = [e for e in s.get("per_point", []) if e.get("measured")]
    scope = {"never_slower (min output throughput ratio >= 1.0)": None,
             "128k output throughput >= 1.2x": ("long", 131072), "128k TTFT p50 >= 1.3x lower": ("long", 131072),
             "512k TTFT p50 >= 1.5x lower": ("max-context", 524288),
             "moonshot agentic output throughput >= 1.8x": ("agentic", None),
             "moonshot long output throughput >= 1.8x": ("long", None)}
    for name, t in out.items():
        if t["met"] is False:
            t["why"] = _why_missed(measured, scope[name])
    return out


def _why_missed(measured: list[dict], scope: tuple | None) -> str:
    """What the run itself says about a missed target: for never-slower the slowest point against the
    spread between repeats; otherwise, per point in scope, where B gained (TTFT: prefill) and where it did
    not (TPOT: decode, which output throughput follows once prompts are cached or short)."""
    def pct(x):
        return "n/a" if x is None else f"{x:.0%}"

    def fmt(x):
        return "n/a" if x is None else f"{x:.2f}x"

    if scope is None:
        e = min(measured, key=lambda e: e["output_throughput_ratio"])
        short = 1.0 - e["output_throughput_ratio"]
        spreads = [x for x in e["spread"].values() if x is not None]
        inside = spreads and short <= max(spreads)
        return (f"slowest point {e['point']}: {e['output_throughput_ratio']:.3f}x, {short:.1%} short; spread between "
                f"repeats {pct(e['spread']['baseline'])} (baseline {e['baseline']}) / {pct(e['spread']['B'])} (B)"
                + (": the shortfall is inside the spread" if inside else ""))
    workload, n = scope
    parts = [f"{e['point']}: output {fmt(e['output_throughput_ratio'])}, TTFT p50 {fmt(e['ttft_p50_ratio'])} lower"
             + (f" ({fmt(e['ttft_p50_later_ratio'])} after the first wave)" if e.get("ttft_p50_later_ratio") else "")
             + f", TPOT p50 {fmt(e.get('tpot_p50_ratio'))}" for e in measured
             if e["workload"] == workload and (n is None or e["input_len"] == n)]
    return "; ".join(parts) or "no point of this target was measured"


# ------------------------------------------------------------------------------------------ servers


def read_choices(log_text: str) -> dict:
    """Backend and page size each server logged: SGLang's M3 override line, or our dense-backend line."""
    out = {}
    if m := A_LOG.search(log_text):
        out.update(gpu_family=m.group(1), attention_backend=m.group(2), page_size=m.group(3))
    if m := B_LOG.search(log_text):
        out.update(dense_backend=m.group(1), dense_reason=m.group(2), page_size=m.group(3))
    if m := FUSION_LOG.search(log_text):
        out["shared_expert_fused"] = m.group(1) == "enabled" or m.group(2) == "fused into FusedMoE"
    return out


def jit_events(log_text: str) -> list[dict]:
    """Triton compiles (``benchmarks/jit_trace``) and autotuning runs found in a stretch of a server's log."""
    events = [{"kernel": m.group(1), "ms": int(m.group(2))} for m in JIT_LINE.finditer(log_text)]
    events += [{"kernel": m.group(1), "ms": round(float(m.group(2)) * 1e3), "autotune": True}
               for m in AUTOTUNE_LINE.finditer(log_text)]
    return events


def trace_jit_env(env: dict) -> dict:
    """A server's env with the compile trace on (also for SGLang's own kernels, so A and B alike)."""
    path = os.pathsep.join(x for x in (str(JIT_TRACE_DIR), os.environ.get("PYTHONPATH", "")) if x)
    return {**env, "PYTHONPATH": path, "SGLANG_MSA_TRACE_JIT": "1", "TRITON_PRINT_AUTOTUNING": "1"}


def kv_tokens_for(points: list[Point]) -> int:
    """A KV pool that holds every point at once with 10% to spare: the largest of the context length and
    concurrency x (prompt + output), rounded up to 1k. Servers sharing a GPU are capped at it
    (``--max-total-tokens``) so that each gets the same pool and all fit."""
    need = max([context_length_for(points)] + [p.concurrency * (p.input_len + p.output_len) for p in points])
    return -(-int(need * 1.1) // 1024) * 1024


ACTIVATIONS_GB = 6.0  # per server beyond weights + KV pool: activations of a 16k chunk, CUDA graphs, slack
USABLE_GPU_FRACTION = 0.92  # of the card's memory: CUDA contexts and the allocators' fragmentation take the rest


def server_memory_gb(cfg: dict, kv_tokens: int) -> dict:
    """Rough GPU memory of one server of a rank8 checkpoint (bf16, --load-format dummy) with a KV pool of
    ``kv_tokens``: weights from the config's shapes, the pool (K and V per layer, index K per sparse
    layer) and ACTIVATIONS_GB."""
    h, d, e = cfg["hidden_size"], cfg["head_dim"], cfg["num_local_experts"]
    hq, hk = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    sparse = cfg.get("sparse_attention_config") or {}
    di = sparse.get("sparse_index_dim", 0)
    hi = sparse.get("sparse_num_index_heads", 0)
    moe = cfg.get("moe_layer_freq") or [1] * cfg["num_hidden_layers"]
    freq = sparse.get("sparse_attention_freq") or [0] * len(moe)
    attn = h * (hq + 2 * hk) * d + hq * d * h
    weights = 2 * cfg["vocab_size"] * h  # embedding + LM head
    kv_per_token = 0
    for is_moe, is_sparse in zip(moe, freq):
        weights += attn + (h * (hi + 1) * di if is_sparse else 0)
        if is_moe:
            weights += 3 * h * (e * cfg["intermediate_size"] + cfg.get("shared_intermediate_size", 0)) + e * h
        else:
            weights += 3 * h * cfg.get("dense_intermediate_size", cfg["intermediate_size"])
        kv_per_token += 2 * hk * d + (di if is_sparse else 0)
    out = {"weights_gb": 2 * weights / 1e9, "kv_gb": 2 * kv_per_token * kv_tokens / 1e9,
           "activations_gb": ACTIVATIONS_GB}
    out["total_gb"] = sum(out.values())
    return out


def fit_points(points: list[Point], cfg: dict, servers: int, gpu_gb: float | None, fixed_kv: int | None
               ) -> tuple[list[Point], list[dict]]:
    """The points whose KV pool lets ``servers`` servers share one GPU of ``gpu_gb`` (parallel start: one
    --max-total-tokens for all), dropping the longest first; ``(kept, [{point, why}])``. A fixed pool
    (--kv-tokens) drops the points it cannot hold one request of."""
    kept, dropped = list(points), []
    while kept:
        kv = fixed_kv or kv_tokens_for(kept)
        need = server_memory_gb(cfg, kv)
        longest = max(kept, key=lambda p: p.input_len + p.output_len)
        too_long = fixed_kv is not None and longest.input_len + longest.output_len > fixed_kv
        if not too_long and (gpu_gb is None or servers * need["total_gb"] <= gpu_gb):
            break
        why = (f"--kv-tokens {fixed_kv} cannot hold one {longest.input_len}-token request" if too_long else
               f"{servers} servers side by side need ~{servers * need['total_gb']:.0f} GB > {gpu_gb:.0f} GB usable "
               f"on this GPU (each: weights {need['weights_gb']:.1f} + KV pool of {kv} tokens {need['kv_gb']:.1f} "
               f"+ {ACTIVATIONS_GB:.0f} GB activations/graphs)")
        drop = [p for p in kept if p.input_len == longest.input_len]
        kept = [p for p in kept if p.input_len != longest.input_len]
        dropped += [{"point": p.key, "why": why} for p in drop]
    return kept, dropped


def server_specs(model: Path, context: int, mem_fraction: float, graph_bs: list[int], max_running: int,
                 kv_tokens: int | None = None) -> dict:
    common = ["--model-path", str(model), "--load-format", "dummy", "--context-length", str(context),
              "--mem-fraction-static", str(mem_fraction), "--chunked-prefill-size", str(CHUNK),
              "--max-running-requests", str(max_running), "--cuda-graph-backend-prefill", "disabled",
              "--cuda-graph-bs-decode", *map(str, graph_bs)]
    if kv_tokens:
        common += ["--max-total-tokens", str(kv_tokens)]
    return {"A": (common, {"SGLANG_MSA_DISABLE": "1"}),
            "A2": (common + ["--disable-shared-experts-fusion"], {"SGLANG_MSA_DISABLE": "1"}),
            "B": (common + ["--attention-backend", "msa"], {"SGLANG_MSA_DISABLE": "0"}),
            # B with the prefill indexer's split-K off (its default is on): a diagnostic server, measured
            # against B in the summary's split_effect, never a baseline
            "B1": (common + ["--attention-backend", "msa"],
                   {"SGLANG_MSA_DISABLE": "0", "SGLANG_MSA_INDEXER_SPLIT_K": "1"})}


def wave_ttfts(record: dict, concurrency: int) -> dict:
    """TTFT p50 (ms) of a point's first wave (its first ``concurrency`` requests, sent at once and queued
    behind each other's prefill and tokenization) and of the later requests (each sent as one finishes,
    so its TTFT is one prefill among running decodes), from SGLang's ``--output-details`` lists (in
    request order, seconds; failed requests left out). Empty where the record has no details."""
    ttfts, errors = record.get("ttfts"), record.get("errors") or []
    if not ttfts:
        return {}
    ok = [i for i, t in enumerate(ttfts) if t and t > 0 and not (i < len(errors) and errors[i])]
    first = [ttfts[i] * 1000.0 for i in ok if i < concurrency]
    later = [ttfts[i] * 1000.0 for i in ok if i >= concurrency]
    return {"ttft_p50_first_wave_ms": statistics.median(first) if first else None,
            "ttft_p50_later_ms": statistics.median(later) if later else None}


def run_points(server, points: list[Point], out_dir: Path, seed: int, deadline: float, tokenizer: Path) -> dict:
    """Every point against ``server`` with SGLang's ``sglang.benchmark.serving``, in one client process
    (``benchmarks/serving/sglang_client.py``); ``{point key: last JSONL record or None}``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs, outs = [], {}
    for p in points:
        out = outs[p.key] = out_dir / f"{server.name}-{p.key.replace('/', '_')}-{seed}.jsonl"
        out.unlink(missing_ok=True)
        # A warm-up request only before agentic (it fills the shared prefix's cache). The server was warmed
        # (warm_up, warm_points) before it is measured, and a random-ids warm-up is the point's own first
        # prompt: a long one costs as much as a measured request, and it is flushed right after anyway.
        warmup = 0 if p.dataset == "random-ids" else 1
        jobs.append({"key": p.key, "estimate_s": estimate_s(p), "argv": [
            "--host", "127.0.0.1", "--port", str(server.port), *p.bench_args(seed, warmup), "--tokenizer", str(tokenizer),
            "--output-file", str(out), "--output-details", "--ready-check-timeout-sec", "30", "--disable-tqdm"]})
    spec = out_dir / f"{server.name}-jobs-{seed}.json"
    spec.write_text(json.dumps({"deadline": deadline, "jobs": jobs}))
    log = out_dir / f"{server.name}-client-{seed}.log"
    with open(log, "w") as f:
        try:
            # Offline: SGLang's client otherwise asks the Hugging Face hub about the model (tens of seconds).
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
            subprocess.run([sys.executable, "-m", "benchmarks.serving.sglang_client", str(spec)], cwd=ROOT, env=env,
                           stdout=f, stderr=subprocess.STDOUT, timeout=max(30.0, deadline - time.time() + 30))
        except subprocess.TimeoutExpired:
            f.write("\n[ab_default] client timed out\n")
    results = {}
    for p in points:
        out = outs[p.key]
        lines = [ln for ln in out.read_text().splitlines() if ln.strip()] if out.exists() else []
        record = json.loads(lines[-1]) if lines else None
        if record is not None:
            record.update(wave_ttfts(record, p.concurrency))
            for k in DETAILS:  # the JSONL keeps them; the results file holds the point's metrics only
                record.pop(k, None)
        results[p.key] = record
    return results


def _smi_gb(field: str) -> float | None:
    """A memory field of GPU 0 from nvidia-smi, in GB of 2^30 bytes (this process holds no CUDA context)."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=30).stdout
        return float(out.split()[0]) / 1024
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def gpu_memory_gb() -> float | None:
    """Total memory of GPU 0 in GB (1e9 bytes, as server_memory_gb counts); None without nvidia-smi."""
    gib = _smi_gb("memory.total")
    return gib * 2**30 / 1e9 if gib else None


def free_gpu_gb() -> float | None:
    """Free memory of GPU 0 from nvidia-smi; None without it."""
    return _smi_gb("memory.free")


def start_staggered(order: list[str], specs: dict, ports: dict, log_dir: Path, timeout_s: float,
                    free_gb=free_gpu_gb, margin_gb: float = 6.0) -> dict:
    """Start the servers one after another on one GPU (at ``ports[name]``), each once the previous one has
    allocated its KV pool ("Memory pool end" in its log). SGLang sizes a pool from the memory free
    when it profiles, so servers started at the same instant race for it (the first GPU run: A found
    none left). Their minutes of JIT compiles and CUDA-graph captures still overlap. A server is not
    started while less is free than the previous one took plus ``margin_gb`` (activations); the loop
    in :func:`main` starts it once the GPU is free. ``{name: Server}`` of those started."""
    started: dict[str, Server] = {}
    took = None
    for name in order:
        before = free_gb()
        if started and took is not None and before is not None and before < took + margin_gb:
            break
        flags, env = specs[name]
        server = started[name] = Server(name, ports[name], flags, env=env, tokenizer=True).start(log_dir)
        if not server.wait_log("Memory pool end", timeout_s):
            break  # it failed or is slow: the measuring loop reports it
        after = free_gb()
        took = before - after if before is not None and after is not None else None
    return started


def warm_up(server: Server, vocab_size: int, tokens: int = CHUNK + 4096) -> float | None:
    """Before the measured points: one request of two prefill chunks (the second over a prefix), then
    8 concurrent requests that extend a shared cached prefix by 1-4k tokens while others decode (the
    agentic mix). Triton's JIT compiles of these paths happen here, not in a measured request (the
    first H100 run: the first agentic point of each server ran at a third of its later speed).
    Returns its seconds, None if it failed."""
    import random

    rng = random.Random(0)

    def ids(n: int) -> list[int]:
        return [rng.randrange(100, vocab_size - 100) for _ in range(n)]

    def gen(input_ids: list[int], new: int) -> None:
        post_json(server.url + "/generate", {"input_ids": input_ids,
                                            "sampling_params": {"max_new_tokens": new, "ignore_eos": True}},
                  timeout=600)

    t0 = time.time()
    try:
        gen(ids(tokens), 8)
        prefix = ids(8192)
        gen(prefix, 1)  # caches the prefix
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: gen(prefix + ids(n), 32), [1024, 1536, 2048, 2560, 3072, 3584, 4096, 1280]))
    except Exception:  # noqa: BLE001 - the measured points then report what is wrong
        return None
    return time.time() - t0


def estimate_s(point: Point) -> float:
    """Rough seconds one server needs for ``point`` (to skip what cannot finish before the deadline)."""
    # From the H100 runs of the rank8 proxy (12 layers): 2M prompt tokens of 128k in 14 s with their
    # decode; decode steps 3.5-4.4 ms at c8 over 64k, 7.4-9.1 ms at c4 over 128k, 9.5 ms at c64 over 2k.
    # Kept ~1.5-2x pessimistic (a 0.015 s step skipped agentic points that took 4 s).
    prefill_tok_s = 150000.0 if point.input_len <= 65536 else 80000.0 if point.input_len <= 262144 else 40000.0
    new_tokens = point.num_prompts * point.max_new_tokens
    steps = point.num_prompts * point.output_len / point.concurrency
    step_s = 1.5 * (0.004 + 0.0001 * point.concurrency + 0.00002 * point.input_len / 1024)
    return 8 + new_tokens / prefill_tok_s + steps * step_s


def client_deadline(now: float, t_end: float, plan_left: list[tuple], points: list[Point], first_rep: int,
                    overhead_s: float = 30.0) -> float:
    """When the client measuring ``plan_left[0]`` must stop starting points. The first repeat of every
    server comes first: it gets the time its points are estimated to need while the first repeats
    still to come can get theirs too; later repeats split what is left equally. (An equal split of
    three servers x three repeats left every point of a call unmeasured: its shares were shorter than
    one agentic point.) When the first repeats do not all fit, they split what is left equally, so that
    every server measures the same leading points: taking what the later first repeats would need from
    the current one gave A nothing and B everything (H100, 2026-12-07, servers ready after 270 s)."""
    left = t_end - now
    need = sum(estimate_s(p) for p in points) + overhead_s
    equal = left / max(1, len(plan_left))
    share = equal
    if plan_left and plan_left[0][0] == first_rep:
        firsts = 1 + sum(1 for r, _, _ in plan_left[1:] if r == first_rep)
        share = max(equal, need if left >= firsts * need else left / firsts)
    return now + share - overhead_s


def warm_points(points: list[Point]) -> list[Point]:
    """The points cheap enough to run once, unmeasured, on each server before its first measurement
    (short prompts and the shared-prefix mix): SGLang's fused MoE kernel compiles a variant per new
    batch shape (~0.2-0.5 s each, in the measured requests of the first H100 runs); long prompts'
    shapes are covered by :func:`warm_up`'s two-chunk request."""
    return [p for p in points if p.dataset != "random-ids" or p.input_len <= 8192]


def point_record(p: Point) -> dict:
    return {"key": p.key, "workload": p.workload, "input_len": p.input_len, "output_len": p.output_len,
            "concurrency": p.concurrency, "num_prompts": p.num_prompts, "dataset": p.dataset,
            "new_prompt_tokens": p.new_prompt_tokens, "note": p.note}


def kept_servers(state: Path) -> dict[str, tuple[dict, Server]]:
    """The servers an earlier ``--keep-running`` call noted in ``state`` (OUT/live-servers.json), each
    taken over by its pid, alive or not: {name: (its saved entry, Server)}; {} without a readable file."""
    try:
        saved = json.loads(state.read_text())
    except (OSError, ValueError):
        return {}
    return {name: (e, Server(name, e["port"], e.get("args", []), env=e.get("env", {}), tokenizer=True)
                   .adopt(e["pid"], Path(e["log"]), e["started_at"])) for name, e in saved.items()}


def adopt_servers(state: Path, names: list[str], specs: dict, ports: dict) -> tuple[dict, list[str]]:
    """Servers that an earlier ``--keep-running`` call on this machine left running: those alive, healthy
    and started with exactly the flags and environment this call would use ({name: Server}). The
    others it left are stopped (their names returned): they would hold GPU memory this call's new
    servers need (e.g. A2 left by the call before, when this one measures A beside the same B)."""
    adopted, released = {}, []
    for name, (e, server) in kept_servers(state).items():
        keep = (name in names and e.get("args") == specs[name][0] and e.get("env") == specs[name][1]
                and e.get("port") == ports[name])
        if keep and server.proc.poll() is None and server.wait_healthy(10):
            adopted[name] = server
        elif server.proc.poll() is None:
            server.stop()
            released.append(name)
    return adopted, released


def stop_kept(state: Path, timeout_s: float = 60.0) -> list[str]:
    """Stop every server that a ``--keep-running`` call left in ``state`` and wait for them to exit, so that
    the next job on this GPU gets its memory back; the file is removed. A benchmark started 3 s after a
    ``pkill`` of a serving call's two servers, which still held 63 GB then (H100, 2026-12-07). Returns the
    names of those that were still running."""
    stopped = []
    for name, (_, server) in kept_servers(state).items():
        if server.proc.poll() is None:
            server.stop()
            try:
                server.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
            stopped.append(name)
    state.unlink(missing_ok=True)
    return stopped


def merge_results(files: list[Path], out_dir: Path, name: str) -> Path:
    """One results file from several of one card (e.g. the repeats of two calls on one warm machine):
    every row, the union of points, each call's command and placement, and a summary computed anew."""
    parts = [json.loads(Path(f).read_text()) for f in files]
    cards = {p["card"] for p in parts}
    if len(cards) != 1:
        raise SystemExit(f"--merge: results of different cards {sorted(cards)}")
    merged = {k: v for k, v in parts[0].items() if k not in ("rows", "summary", "points", "servers", "logs")}
    merged["merged_from"] = [{"file": Path(f).name, "command": p.get("command"), "date": p.get("date"),
                              "placement": p.get("placement"), "measuring_plan": p.get("measuring_plan"),
                              "adopted_servers": p.get("adopted_servers"), "skipped": p.get("skipped")}
                             for f, p in zip(files, parts)]
    merged["rows"], renumbered = [], []
    for f, p in zip(files, parts):
        # Two calls may number their repeats alike (each started with the same --first-rep): the merged
        # file keeps them apart, later ones numbered on, so the per-repeat view counts each once.
        used = {r["rep"] for r in merged["rows"]}
        reps = sorted({r["rep"] for r in p["rows"]})
        shift = (max(used) + 1 - reps[0]) if used and reps and used & set(reps) else 0
        if shift:
            renumbered.append({"file": Path(f).name, "repeats": reps, "as": [x + shift for x in reps]})
        merged["rows"] += [{**r, "rep": r["rep"] + shift} for r in p["rows"]]
    if renumbered:
        merged["repeats_renumbered"] = renumbered
    merged["points"] = list({pt["key"]: pt for p in parts for pt in p["points"]}.values())
    run_keys = {pt["key"] for pt in merged["points"]}
    merged["points_not_run"] = list({d["point"]: d for p in parts for d in p.get("points_not_run") or []
                                     if d["point"] not in run_keys}.values())
    merged["servers"], merged["logs"] = {}, {"card": parts[0]["card"]}
    for p in parts:
        for n, info in p.get("servers", {}).items():
            dst = merged["servers"].setdefault(n, {})
            for k, v in info.items():
                if isinstance(v, list) and k not in ("args", "sglang_msa_log"):
                    dst.setdefault(k, []).extend(v)
                else:
                    dst[k] = v
        for n, info in p.get("logs", {}).items():
            if isinstance(info, dict):
                merged["logs"].setdefault(n, {}).update(info)
    return write_results(merged, out_dir, name)


def write_results(results: dict, out_dir: Path, name: str) -> Path:
    """``results`` with its summary computed from its rows, as OUT/serving-<card>-<date>-NAME.json + PNG.
    Every measured row reaches the file even if the summary or the plot breaks on something unforeseen."""
    results["summary"] = _safe(lambda: summarize(results["rows"], results["points"], results["logs"],
                                                 results["model"], results.get("points_not_run") or ()))
    path = out_dir / f"serving-{results['card'].replace(' ', '-')}-{results['date']}-{name}.json"
    path.write_text(json.dumps(results, indent=1))
    _safe(lambda: _plot(results, path.with_suffix(".png")))
    return path


def measuring_plan(names: list[str], repeats: int, live: list[str], tried: list[str] = (),
                   first_rep: int = 0) -> list[tuple]:
    """``[(repeat, server, kept_alive)]`` in measuring order. Servers started side by side (``live``)
    serve every repeat, in swapped order on each one; the others are started, measured and stopped one
    at a time afterwards (each repeat), once the live ones no longer hold the GPU. A server that was
    started side by side but never became healthy (``tried`` and not ``live``) is not tried again."""
    reps = range(first_rep, first_rep + repeats)
    plan = [(rep, n, True) for rep in reps for n in (live if rep % 2 == 0 else live[::-1])]
    rest = [n for n in names if n not in live and n not in tried]
    plan += [(rep, n, False) for rep in reps for n in (rest if rep % 2 == 0 else rest[::-1])]
    return plan


# ------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--workloads", default="cookbook,agentic,long,max-context")
    ap.add_argument("--lens", default="", help="only these prompt lengths of long/max-context (comma list)")
    ap.add_argument("--concurrency", default="", help="only these concurrencies of long (comma list)")
    ap.add_argument("--servers", default="A,A2,B", help="A = SGLang's default, A2 = A + "
                    "--disable-shared-experts-fusion, B = A + --attention-backend msa, B1 = B with the split-K "
                    "prefill indexer off (a diagnostic: the summary's split_effect)")
    ap.add_argument("--max-requests", type=int, default=None, help="cap on requests per random-ids point "
                    "(device-time budget; recorded in each point's note)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--layers", type=int, default=20, help="rank8 depth (60 = the released model)")
    ap.add_argument("--mem-fraction", type=float, default=0.85)
    ap.add_argument("--graph-bs", default="", help="decode CUDA-graph batch sizes (default: the points' "
                    "concurrencies; each captured size costs both servers Triton compiles)")
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--health-timeout", type=float, default=420)
    ap.add_argument("--deadline-s", type=float, default=540)
    ap.add_argument("--profile", default="", help="servers to profile on the first repeat (e.g. A,B): a 128k "
                    "prefill and agentic-like decode (benchmarks/profile_step.py)")
    ap.add_argument("--name", default="rank8", help="suffix of the results file")
    ap.add_argument("--parallel-start", action="store_true", help="start the servers side by side on one GPU "
                    "(ports --port, --port+1, ...), each once the previous one has its KV pool, every one with the "
                    "same --max-total-tokens (--kv-tokens), and keep them for every repeat, measured one after the "
                    "other once all are healthy: a fresh machine's minutes of JIT compiles and graph captures are "
                    "paid once and overlap")
    ap.add_argument("--context-length", type=int, default=None, help="--context-length of every server "
                    "(default: what the points need); give the same sizing on calls that --attach")
    ap.add_argument("--first-rep", type=int, default=0, help="number of the first repeat (its seed and order), "
                    "for a call that continues an earlier one's repeats")
    ap.add_argument("--keep-running", action="store_true", help="leave the side-by-side servers running at the "
                    "end (their own process sessions outlive this command) and note them in OUT/live-servers.json")
    ap.add_argument("--attach", action="store_true", help="take over the servers that an earlier --keep-running "
                    "call on this machine left in OUT/live-servers.json, where each is alive, healthy and was "
                    "started with exactly this call's flags; start the others")
    ap.add_argument("--stop-kept", action="store_true", help="no measurement: stop the servers an earlier "
                    "--keep-running call left in OUT/live-servers.json, wait for them to exit, and remove the file")
    ap.add_argument("--merge", nargs="+", type=Path, default=None, help="no GPU: merge these results files of "
                    "one card (e.g. two calls' repeats) into OUT/serving-<card>-<date>-NAME.json with a new summary")
    ap.add_argument("--trace-jit", action="store_true", help="log every Triton compile and autotuning run of "
                    "every server (benchmarks/jit_trace) and record those that happen during measured points")
    ap.add_argument("--kv-tokens", type=int, default=None, help="--max-total-tokens of every server (default "
                    "with --parallel-start: every point's tokens at once + 10%%; else SGLang sizes the pool)")
    args = ap.parse_args(argv)
    t_end = time.time() + args.deadline_s
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.merge:
        print(merge_results(args.merge, args.out_dir, args.name))
        return 0
    if args.stop_kept:
        print("stopped kept servers:", ",".join(stop_kept(args.out_dir / "live-servers.json")) or "none")
        return 0
    lens = [int(x) for x in args.lens.split(",") if x]
    conc = [int(x) for x in args.concurrency.split(",") if x]
    points = capped(select(args.workloads.split(","), lens=lens or None, concurrency=conc or None),
                    args.max_requests)
    model = args.out_dir / "rank8-model"
    subprocess.run([sys.executable, "-m", "sglang_msa_tools.tiny_m3", str(model), "--preset", "rank8",
                    "--layers", str(args.layers)], check=True, cwd=ROOT)  # the tools package is the clone's
    cfg = json.loads((model / "config.json").read_text())
    text_ratio = text_tokens_per_token(str(model)) if any(p.dataset != "random-ids" for p in points) else 1.0
    points = calibrated(points, text_ratio)
    not_run = []
    if args.parallel_start:
        gpu_gb = gpu_memory_gb()
        gpu_gb = gpu_gb * USABLE_GPU_FRACTION if gpu_gb else None
        n_servers = len([n for n in args.servers.split(",") if n])
        points, not_run = fit_points(points, cfg, n_servers, gpu_gb, args.kv_tokens)
        for d in not_run:
            print(f"[ab_default] not run: {d['point']}: {d['why']}", flush=True)
        if not points:
            raise SystemExit("no point fits: " + "; ".join(d["why"] for d in not_run))
    # the +1k slack of context_length_for, but never past the model's positions (SGLang refuses that)
    context = args.context_length or max(min(context_length_for(points), cfg["max_position_embeddings"]),
                                         max(p.input_len + p.output_len for p in points))
    graph_bs = sorted({int(x) for x in args.graph_bs.split(",") if x} or {p.concurrency for p in points})
    names = [n for n in args.servers.split(",") if n]
    kv_tokens = args.kv_tokens or (kv_tokens_for(points) if args.parallel_start else None)
    specs = server_specs(model, context, args.mem_fraction, graph_bs, max(64, max(p.concurrency for p in points)),
                         kv_tokens)
    if args.trace_jit:
        specs = {n: (flags, trace_jit_env(env)) for n, (flags, env) in specs.items()}
    profile = [n for n in args.profile.split(",") if n]
    import torch

    card = torch.cuda.get_device_name(0)
    results = {"card": card, "date": date.today().isoformat(), "command": " ".join(sys.argv),
               "versions": {m: getattr(__import__(m), "__version__", "?") for m in ("sglang", "torch", "triton")},
               "model": {"preset": "rank8", "layers": cfg["num_hidden_layers"], "hidden": cfg["hidden_size"],
                         "dense_layers": cfg["moe_layer_freq"].count(0), "q_heads": cfg["num_attention_heads"],
                         "kv_heads": cfg["num_key_value_heads"],
                         "index_heads": cfg["sparse_attention_config"]["sparse_num_index_heads"],
                         "experts": cfg["num_local_experts"], "expert_intermediate": cfg["intermediate_size"],
                         "vocab": cfg["vocab_size"]},
               "servers": {n: {"args": specs[n][0], "env": specs[n][1]} for n in names},
               "placement": ("one GPU; the servers started side by side once (each once the previous one had "
                             "its KV pool, all with the same --max-total-tokens), all healthy before the first "
                             "measurement, kept for every repeat and measured one after the other (only the "
                             "measured server gets requests)" if args.parallel_start else
                             "one GPU; servers one after the other") + ", order swapped on each repeat",
               "load_generator": "python -m sglang.bench_serving (SGLang's own)",
               "text_tokens_per_generated_token": text_ratio,
               "points": [point_record(p) for p in points], "points_not_run": not_run, "rows": [],
               "logs": {"card": card}}
    log_root = args.out_dir / "logs"

    def record_stop(name: str, server: Server) -> None:
        server.stop()
        record_logs(name, server)

    def record_logs(name: str, server: Server) -> None:
        text = server.log_path.read_text(errors="replace") if server.log_path else ""
        results["logs"].setdefault(name, {}).update(read_choices(text))
        results["servers"][name]["sglang_msa_log"] = server.plugin_lines()
        results["servers"][name]["log_tail"] = server.tail(25)

    def healthy(name: str, server: Server, label: str) -> bool:
        ok = server.wait_healthy(min(args.health_timeout, max(1.0, t_end - time.time())))
        results["servers"][name].setdefault("ready_s", []).append(server.ready_s)
        if not ok:
            results["servers"][name].setdefault("errors", []).append(f"{label}: not healthy\n{server.tail(60)}")
            server.stop()
        return ok

    def warm(name: str, server: Server) -> None:
        """warm_up, then one unmeasured pass of the cheap points (warm_points), once per server process."""
        results["servers"][name].setdefault("warm_up_s", []).append(warm_up(server, cfg["vocab_size"]))
        t_warm = time.time()
        run_points(server, warm_points(points), args.out_dir / "warm", seed=0, deadline=time.time() + 150,
                   tokenizer=model)
        results["servers"][name].setdefault("warm_pass_s", []).append(round(time.time() - t_warm, 1))

    live: dict[str, Server] = {}
    started: dict[str, Server] = {}
    results["adopted_servers"] = []
    state = args.out_dir / "live-servers.json"
    ports = {n: args.port + i for i, n in enumerate(names)}
    try:
        if args.parallel_start:
            adopted, released = adopt_servers(state, names, specs, ports) if args.attach else ({}, [])
            results["adopted_servers"], results["released_servers"] = list(adopted), released
            started = dict(adopted)
            started.update(start_staggered([n for n in names if n not in adopted], specs, ports, log_root / "live",
                                           min(args.health_timeout, max(1.0, t_end - time.time()))))
            started = {n: started[n] for n in names if n in started}
            # Every live server is healthy before any is measured: another one's JIT compiles and graph
            # captures would otherwise run on the GPU during the measured requests.
            live = {n: s for n, s in started.items() if healthy(n, s, "start")}
            results["live_servers"] = list(live)
        plan = measuring_plan(names, args.repeats, list(live), tried=list(started), first_rep=args.first_rep)
        # Every live server is warmed before any is measured (an adopted one was warmed by the call
        # that started it), so no warm-up runs between measurements or eats a measurement's time.
        # The servers are warmed side by side: nothing is measured yet, and one after the other the
        # warm passes of three servers took 4.5 of a call's 9 minutes (H100, 2026-12-06).
        to_warm = [(n, s) for n, s in live.items() if n not in results["adopted_servers"]]
        if to_warm:
            with ThreadPoolExecutor(len(to_warm)) as pool:
                list(pool.map(lambda ns: warm(*ns), to_warm))
        results["measuring_plan"] = [f"rep {r} {n}" + (" (live)" if kept else "") for r, n, kept in plan]
        measured_in_rep: dict[int, set] = {}  # repeat -> the point keys every server so far measured in it
        for k, (rep, name, kept) in enumerate(plan):
            if time.time() > t_end - 60:
                results.setdefault("skipped", []).append(f"rep {rep} {name}: deadline")
                continue
            if not kept:
                server = Server(name, args.port + len(names) + k, specs[name][0], env=specs[name][1],
                                tokenizer=True).start(log_root / f"rep{rep}")
                if not healthy(name, server, f"rep {rep}"):
                    continue
            else:
                server = live[name]
            if not kept:
                warm(name, server)
            profiles_left = sum(1 for r, n, _ in plan[k:] if n in profile and r == args.first_rep)
            deadline = client_deadline(time.time(), t_end - 90 * profiles_left, plan[k:], points, args.first_rep)
            log_start = server.log_path.stat().st_size if server.log_path and server.log_path.exists() else 0
            # A ratio needs both sides: a later server of a repeat measures only the points every earlier
            # one of that repeat measured. (A2's agentic point was skipped by its deadline while B then
            # measured it for nothing, and the second repeat ran out of time: H100, 2026-12-07.)
            paired = measured_in_rep.get(rep)
            to_run = [p for p in points if paired is None or p.key in paired]
            measured = run_points(server, to_run, args.out_dir / "bench", seed=1 + rep, deadline=deadline,
                                  tokenizer=model) if to_run else {}
            measured_in_rep[rep] = {key for key, m in measured.items() if m}  # a subset of ``paired``
            if args.trace_jit and server.log_path:
                with open(server.log_path, errors="replace") as f:
                    f.seek(log_start)
                    results["servers"][name].setdefault("jit_during_points", {})[str(rep)] = jit_events(f.read())
            for p in points:
                m = measured.get(p.key)
                results["rows"].append({"server": name, "rep": rep, "point": p.key, "num_prompts": p.num_prompts,
                                        "metrics": {k2: m.get(k2) for k2 in METRICS} if m else None})
                why = "not measured" if p in to_run else "not run: an earlier server of this repeat did not measure it"
                print(f"[rep {rep}] {name} {p.key}: " + (f"{m['output_throughput']:.1f} tok/s, TTFT p50 "
                      f"{m['median_ttft_ms']:.0f} ms" if m else why), flush=True)
            if rep == args.first_rep and name in profile and time.time() < t_end - 100:
                from benchmarks.profile_step import profile_server

                results["servers"][name]["profile"] = _safe(lambda: profile_server(
                    server.url, args.out_dir / f"prof-{name}", vocab_size=cfg["vocab_size"], input_len=131072,
                    concurrency=8, prefill_steps=8, decode_steps=10, decode_tokens=600))
            if not kept:
                record_stop(name, server)
            elif all(r != name for _, r, _ in plan[k + 1:]) and not args.keep_running:
                record_stop(name, server)
                live.pop(name)
    finally:
        for name, server in live.items():
            if args.keep_running:
                record_logs(name, server)
            else:
                record_stop(name, server)
        if args.keep_running and live:
            state.write_text(json.dumps({n: {"pid": s.proc.pid, "port": s.port, "log": str(s.log_path),
                                             "started_at": s.started_at, "args": specs[n][0], "env": specs[n][1]}
                                         for n, s in live.items()}))
            results["left_running"] = list(live)
        if args.trace_jit:
            results["jit_compiles_during_points"] = {
                n: sum(len(ev) for ev in v.get("jit_during_points", {}).values())
                for n, v in results["servers"].items() if "jit_during_points" in v}
        write_results(results, args.out_dir, args.name)
        print(json.dumps({k: v for k, v in results["summary"].items() if k != "per_point"}, indent=1))
    return 0


def _safe(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - recorded, never fatal
        return {"error": repr(exc)}


def _plot(results: dict, path: Path) -> None:
    """Output throughput and TTFT p50 ratio per point (B over the workload's faster baseline)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    pts = [e for e in results["summary"]["per_point"] if e["measured"]]
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(pts)), 4))
    xs = range(len(pts))
    ax.bar([x - 0.2 for x in xs], [e["output_throughput_ratio"] for e in pts], 0.4, label="output throughput B/A")
    ax.bar([x + 0.2 for x in xs], [e["ttft_p50_ratio"] or 0 for e in pts], 0.4, label="TTFT p50 A/B")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(list(xs), [e["point"] for e in pts], rotation=45, ha="right", fontsize=7)
    ax.set_title(f"msa vs SGLang default (rank8 proxy of --tp 8), {results['card']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
