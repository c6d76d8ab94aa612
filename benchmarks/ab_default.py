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
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.serving.presets import Point, capped, context_length_for, select  # noqa: E402
from benchmarks.servers import Server, post_json  # noqa: E402

BASELINES = ("A", "A2")
METRICS = ("output_throughput", "request_throughput", "median_ttft_ms", "p99_ttft_ms", "mean_ttft_ms",
           "median_tpot_ms", "median_itl_ms", "duration", "completed", "total_input_tokens",
           "total_output_tokens")

# Two all-reduces per layer at --tp 8 (after attention and after the MoE), which the TP1 proxy omits.
# No multi-GPU machine was lent to measure them with NCCL, so these are stated assumptions: NCCL
# all-reduce bus bandwidth on 8 NVLink-4 H100/H200 GPUs for large (prefill) messages, and the latency
# of SGLang's custom all-reduce for small (decode) messages.
ALLREDUCE = {"busbw_gb_s": 400.0, "small_latency_us": 12.0, "ranks": 8, "per_layer": 2, "bytes_per_elem": 2}

CHUNK = 16384  # --chunked-prefill-size of every server
A_LOG = re.compile(r"MiniMax-M3 on (\w+): attention_backend=(\w+), page_size=(\w+)")
B_LOG = re.compile(r"sglang-msa: dense attention layers on (\w+) \((.*?)\), page size (\w+)")


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


def summarize(rows: list[dict], points: list[dict], logs: dict, model: dict) -> dict:
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
                 "ttft_p50_ratio": (a["median_ttft_ms"] / b["median_ttft_ms"]) if b.get("median_ttft_ms") else None,
                 "spread": {"baseline": a.get("output_throughput_spread"), "B": b.get("output_throughput_spread")},
                 "repeats": {"baseline": a["repeats"], "B": b["repeats"]}}
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
    adj128 = at("long", 131072, "allreduce_adjusted_ratio")
    failed = sum(max(0, r["num_prompts"] - int(r["metrics"].get("completed") or 0)) for r in rows if r.get("metrics"))
    summary = {
        "card": logs.get("card"),
        "baseline": "sglang-default",
        "a_attention_backend": logs.get("A", {}).get("attention_backend"),
        "a_page_size": logs.get("A", {}).get("page_size"),
        "b_dense_backend": logs.get("B", {}).get("dense_backend"),
        "b_page_size": logs.get("B", {}).get("page_size"),
        "min_output_throughput_ratio": min((e["output_throughput_ratio"] for e in measured), default=None),
        "ratio_by_workload": ratio_by_workload,
        "output_throughput_ratio_128k": _geomean(list(tp128.values())),
        "output_throughput_ratio_128k_by_concurrency": tp128,
        "ttft_p50_ratio_128k": ttft128.get("1", _geomean(list(ttft128.values()))),
        "ttft_p50_ratio_128k_by_concurrency": ttft128,
        "ttft_p50_ratio_512k": ttft512.get("1"),
        "allreduce_adjusted_ratio_128k": _geomean(list(adj128.values())),
        "allreduce_assumptions": ALLREDUCE,
        "failed_requests": failed,
        "points_measured": len(measured),
        "points_planned": len(points),
        "points_not_measured": [e["point"] for e in per_point if not e["measured"]],
        "per_point": per_point,
    }
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
    return {name: {"measured": v, "target": t, "met": None if v is None else v >= t,
                   "missed_by": None if v is None or v >= t else t - v} for name, (v, t) in spec.items()}


# ------------------------------------------------------------------------------------------ servers


def read_choices(log_text: str) -> dict:
    """Backend and page size each server logged: SGLang's M3 override line, or our dense-backend line."""
    out = {}
    if m := A_LOG.search(log_text):
        out.update(gpu_family=m.group(1), attention_backend=m.group(2), page_size=m.group(3))
    if m := B_LOG.search(log_text):
        out.update(dense_backend=m.group(1), dense_reason=m.group(2), page_size=m.group(3))
    return out


def kv_tokens_for(points: list[Point]) -> int:
    """A KV pool that holds every point at once with 10% to spare: the largest of the context length and
    concurrency x (prompt + output), rounded up to 1k. Servers sharing a GPU are capped at it
    (``--max-total-tokens``) so that each gets the same pool and all fit."""
    need = max([context_length_for(points)] + [p.concurrency * (p.input_len + p.output_len) for p in points])
    return -(-int(need * 1.1) // 1024) * 1024


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
            "B": (common + ["--attention-backend", "msa"], {"SGLANG_MSA_DISABLE": "0"})}


def run_points(server, points: list[Point], out_dir: Path, seed: int, deadline: float, tokenizer: Path) -> dict:
    """Every point against ``server`` with SGLang's ``sglang.benchmark.serving``, in one client process
    (``benchmarks/serving/sglang_client.py``); ``{point key: last JSONL record or None}``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs, outs = [], {}
    for i, p in enumerate(points):
        out = outs[p.key] = out_dir / f"{server.name}-{p.key.replace('/', '_')}-{seed}.jsonl"
        out.unlink(missing_ok=True)
        # A warm-up request before the server's first point (JIT, graphs) and before agentic (fills the
        # prefix cache); a long prompt's warm-up would cost as much as a measured request.
        warmup = 1 if i == 0 or p.dataset != "random-ids" else 0
        jobs.append({"key": p.key, "estimate_s": estimate_s(p), "argv": [
            "--host", "127.0.0.1", "--port", str(server.port), *p.bench_args(seed, warmup), "--tokenizer", str(tokenizer),
            "--output-file", str(out), "--ready-check-timeout-sec", "30", "--disable-tqdm"]})
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
    for key, out in outs.items():
        lines = [ln for ln in out.read_text().splitlines() if ln.strip()] if out.exists() else []
        results[key] = json.loads(lines[-1]) if lines else None
    return results


def free_gpu_gb() -> float | None:
    """Free memory of GPU 0 from nvidia-smi (this process holds no CUDA context); None without it."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=30).stdout
        return float(out.split()[0]) / 1024
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def start_staggered(order: list[str], specs: dict, port: int, log_dir: Path, timeout_s: float,
                    free_gb=free_gpu_gb, margin_gb: float = 6.0) -> dict:
    """Start the servers of a repeat one after another on one GPU, each once the previous one has
    allocated its KV pool ("Memory pool end" in its log). SGLang sizes a pool from the memory free
    when it profiles, so servers started at the same instant race for it (the first GPU run: A found
    none left). Their minutes of JIT compiles and CUDA-graph captures still overlap. A server is not
    started while less is free than the previous one took plus ``margin_gb`` (activations); the loop
    in :func:`main` starts it once the GPU is free. ``{name: Server}`` of those started."""
    started: dict[str, Server] = {}
    took = None
    for i, name in enumerate(order):
        before = free_gb()
        if started and took is not None and before is not None and before < took + margin_gb:
            break
        flags, env = specs[name]
        server = started[name] = Server(name, port + i, flags, env=env, tokenizer=True).start(log_dir)
        if not server.wait_log("Memory pool end", timeout_s):
            break  # it failed or is slow: the measuring loop reports it
        after = free_gb()
        took = before - after if before is not None and after is not None else None
    return started


def warm_up(server: Server, vocab_size: int, tokens: int = CHUNK + 4096) -> float | None:
    """One request of two prefill chunks (the second over a prefix) and a few decode steps, before the
    measured points: Triton's JIT compiles of the prefix paths happen here, not in a measured request.
    Returns its seconds, None if it failed."""
    import random

    rng = random.Random(0)
    t0 = time.time()
    try:
        post_json(server.url + "/generate", {"input_ids": [rng.randrange(100, vocab_size - 100) for _ in range(tokens)],
                                            "sampling_params": {"max_new_tokens": 8, "ignore_eos": True}},
                  timeout=600)
    except Exception:  # noqa: BLE001 - the measured points then report what is wrong
        return None
    return time.time() - t0


def estimate_s(point: Point) -> float:
    """Rough seconds one server needs for ``point`` (to skip what cannot finish before the deadline)."""
    prefill_tok_s = 60000.0 if point.input_len <= 65536 else 25000.0 if point.input_len <= 262144 else 12000.0
    new_tokens = point.num_prompts * point.max_new_tokens
    steps = point.num_prompts * point.output_len / point.concurrency
    return 8 + new_tokens / prefill_tok_s + steps * 0.025


def point_record(p: Point) -> dict:
    return {"key": p.key, "workload": p.workload, "input_len": p.input_len, "output_len": p.output_len,
            "concurrency": p.concurrency, "num_prompts": p.num_prompts, "dataset": p.dataset,
            "new_prompt_tokens": p.new_prompt_tokens, "note": p.note}


# ------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--workloads", default="cookbook,agentic,long,max-context")
    ap.add_argument("--lens", default="", help="only these prompt lengths of long/max-context (comma list)")
    ap.add_argument("--concurrency", default="", help="only these concurrencies of long (comma list)")
    ap.add_argument("--servers", default="A,A2,B")
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
    ap.add_argument("--parallel-start", action="store_true", help="start the servers of a repeat side by side on "
                    "one GPU (ports --port, --port+1, ...), each once the previous one has its KV pool, every one "
                    "with the same --max-total-tokens (--kv-tokens), and measure them one after the other: a "
                    "fresh machine's minutes of JIT compiles overlap instead of adding up")
    ap.add_argument("--kv-tokens", type=int, default=None, help="--max-total-tokens of every server (default "
                    "with --parallel-start: every point's tokens at once + 10%%; else SGLang sizes the pool)")
    args = ap.parse_args(argv)
    t_end = time.time() + args.deadline_s
    args.out_dir.mkdir(parents=True, exist_ok=True)
    lens = [int(x) for x in args.lens.split(",") if x]
    conc = [int(x) for x in args.concurrency.split(",") if x]
    points = capped(select(args.workloads.split(","), lens=lens or None, concurrency=conc or None),
                    args.max_requests)
    model = args.out_dir / "rank8-model"
    subprocess.run([sys.executable, "-m", "sglang_msa_tools.tiny_m3", str(model), "--preset", "rank8",
                    "--layers", str(args.layers)], check=True, cwd=ROOT)  # the tools package is the clone's
    cfg = json.loads((model / "config.json").read_text())
    context = context_length_for(points)
    graph_bs = sorted({int(x) for x in args.graph_bs.split(",") if x} or {p.concurrency for p in points})
    names = [n for n in args.servers.split(",") if n]
    kv_tokens = args.kv_tokens or (kv_tokens_for(points) if args.parallel_start else None)
    specs = server_specs(model, context, args.mem_fraction, graph_bs, max(64, max(p.concurrency for p in points)),
                         kv_tokens)
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
               "placement": ("one GPU; the servers of a repeat started side by side (each once the previous one "
                             "had its KV pool, all with the same --max-total-tokens), measured one after the "
                             "other (only the measured server gets requests)" if args.parallel_start else
                             "one GPU; servers one after the other") + ", order swapped on each repeat",
               "load_generator": "python -m sglang.bench_serving (SGLang's own)",
               "points": [point_record(p) for p in points], "rows": [], "logs": {"card": card}}
    try:
        for rep in range(args.repeats):
            order = names if rep % 2 == 0 else names[::-1]
            started = {}
            if args.parallel_start:
                started = start_staggered(order, specs, args.port, args.out_dir / "logs" / f"rep{rep}",
                                          min(args.health_timeout, max(1.0, t_end - time.time())))
            for i, name in enumerate(order):
                if time.time() > t_end - 60:
                    results.setdefault("skipped", []).append(f"rep {rep} {name}: deadline")
                    continue
                flags, env = specs[name]
                server = started.get(name)
                if server is None:
                    server = Server(name, args.port + i, flags, env=env, tokenizer=True)
                    server.start(args.out_dir / "logs" / f"rep{rep}")
                ok = server.wait_healthy(min(args.health_timeout, max(1.0, t_end - time.time())))
                results["servers"][name].setdefault("ready_s", []).append(server.ready_s)
                if not ok:
                    results["servers"][name].setdefault("errors", []).append(f"rep {rep}: not healthy\n{server.tail(60)}")
                    server.stop()
                    continue
                # Each server of the remaining ones gets an equal share of the time left once it is up, so
                # a long point cannot leave the other servers of a repeat unmeasured.
                results["servers"][name].setdefault("warm_up_s", []).append(warm_up(server, cfg["vocab_size"]))
                runs_left = len(order) - i + (args.repeats - rep - 1) * len(order)
                share_end = time.time() + (t_end - time.time()) / runs_left
                measured = run_points(server, points, args.out_dir / "bench", seed=1 + rep,
                                      deadline=share_end - 30 - (90 if name in profile else 0), tokenizer=model)
                for p in points:
                    m = measured.get(p.key)
                    results["rows"].append({"server": name, "rep": rep, "point": p.key, "num_prompts": p.num_prompts,
                                            "metrics": {k: m.get(k) for k in METRICS} if m else None})
                    print(f"[rep {rep}] {name} {p.key}: " + (f"{m['output_throughput']:.1f} tok/s, TTFT p50 "
                          f"{m['median_ttft_ms']:.0f} ms" if m else "not measured"), flush=True)
                if rep == 0 and name in profile and time.time() < t_end - 100:
                    from benchmarks.profile_step import profile_server

                    results["servers"][name]["profile"] = _safe(lambda: profile_server(
                        server.url, args.out_dir / f"prof-{name}", vocab_size=cfg["vocab_size"], input_len=131072,
                        concurrency=8, prefill_steps=8, decode_steps=10, decode_tokens=600))
                server.stop()
                text = server.log_path.read_text(errors="replace") if server.log_path else ""
                results["logs"].setdefault(name, {}).update(read_choices(text))
                results["servers"][name]["sglang_msa_log"] = server.plugin_lines()
                results["servers"][name]["log_tail"] = server.tail(25)
            for server in started.values():
                server.stop()
    finally:
        results["summary"] = summarize(results["rows"], results["points"], results["logs"], results["model"])
        path = args.out_dir / f"serving-{card.replace(' ', '-')}-{results['date']}-{args.name}.json"
        path.write_text(json.dumps(results, indent=1))
        _plot(results, path.with_suffix(".png"))
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
