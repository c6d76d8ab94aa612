"""The end-to-end serving figure, in one device call: SGLang's in-tree MiniMax sparse path (A) vs
our ``--attention-backend msa`` (B) on an M3-shaped model, side by side on one GPU.

    python3 benchmarks/gpu_ab.py --out-dir $OUT            # after unpacking the GPU bundle

1. writes the ``slice`` config (real M3 widths, 1 dense + 3 sparse layers; ``--load-format dummy``
   so no weights are written) with ``python -m sglang_msa.tiny_m3 --preset slice``;
2. starts the baseline A (SGLang's in-tree M3 + its sparse backend, dense layers on ``triton``) and B
   (``--b-models``: our M3 classes or the in-tree ones, ``--attention-backend msa``, page 128). Both
   get the same CUDA-graph settings: decode graphs for batch 1-32, prefill graphs off (SGLang's
   piecewise prefill capture costs minutes of Triton compiling and does not change 16k-token chunks).
   With ``--a-gpu``/``--b-gpu`` on different GPUs of one machine the two servers run at the same time
   on identical cards and every point is measured on both at once; on one GPU they share the card
   and the points are interleaved (A, B, A, B). SGLang sizes its KV pool from the free memory it sees
   at start, so two servers on one card are started one after the other;
3. warms both up (every prompt length, then a burst at the largest concurrency: Triton JIT, fused-MoE
   kernels for every batch bucket) before anything is measured;
4. runs ``bench_serving.py`` (same seeded prompts on both; stops starting points at the deadline);
5. profiles one prefill and a window of decode steps on each server (``profile_step.py``: GPU time
   per step by kernel category) so the results say where the time goes;
6. writes ``serving-<card>-<date>.json``; with ``--baseline-page both`` A runs at the default page
   size and at 128 and B is compared against the faster A, saying which.
Request counts are small on purpose to fit one 10-minute call; they are recorded in the results.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.profile_step import profile_server  # noqa: E402
from benchmarks.servers import Server, generate  # noqa: E402


def card_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def write_slice_config(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "sglang_msa.tiny_m3", str(path), "--preset", "slice"], check=True)
    return path


# Decode graphs at the sweep's concurrencies only: each captured size costs both servers Triton compiles
# (seen on an H200: 20-40 s per size for SGLang's sparse path), and other sizes pad up to the next one.
GRAPH_FLAGS = ["--cuda-graph-backend-prefill", "disabled", "--cuda-graph-bs-decode", "1", "4", "16", "32"]


def server_flags(model: Path, page: int | None, mem_fraction: float, context: int) -> list[str]:
    flags = ["--model-path", str(model), "--load-format", "dummy", "--context-length", str(context),
             "--mem-fraction-static", str(mem_fraction), "--max-running-requests", "32",
             "--chunked-prefill-size", "16384", *GRAPH_FLAGS]
    if page is not None:
        flags += ["--page-size", str(page)]
    return flags


def warm_up(server: Server, lens: list[int], vocab: int, burst: int) -> float:
    """One request per prompt length, then ``burst`` short requests at once (decode batch buckets)."""
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.time()
    for n in lens:
        generate(server, [(7 * i + 11) % (vocab - 100) + 100 for i in range(n)], 8, logprobs=False)
    with ThreadPoolExecutor(burst) as pool:
        list(pool.map(lambda j: generate(server, [(13 * i + j) % (vocab - 100) + 100 for i in range(512)], 24,
                                         logprobs=False), range(burst)))
    return time.time() - t0


def bench_cmd(servers: list[Server], args, vocab: int, out: Path, tag: str) -> list[str]:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_serving.py"), "--backend", "sglang",
           "--vocab-size", str(vocab), "--min-token-id", "100", "--input-len", args.input_lens,
           "--output-len", str(args.output_len), "--concurrency", args.concurrency,
           "--num-requests", args.num_requests, "--min-requests", str(args.min_requests), "--warmup", "1",
           "--timeout", "900", "--deadline-s", str(max(1.0, args.sweep_deadline - time.time())),
           "--out", str(out), "--no-progress", "--meta", f"card={card_name()}", "--meta", f"tag={tag}",
           "--allow-failures"]
    for s in servers:
        cmd += ["--server", f"{s.name}={s.url}"]
    return cmd


def run_bench(a: Server, b: Server, args, vocab: int, out: Path, tag: str, parallel: bool) -> int:
    """A/B sweep into ``out``. ``parallel``: one client per server at the same time (separate GPUs),
    merged afterwards; else one client interleaving the servers point by point."""
    if not parallel:
        cmd = bench_cmd([a, b], args, vocab, out, tag) + ["--plot-dir", str(out.parent / f"plots-{tag}")]
        print("$", " ".join(cmd), flush=True)
        return subprocess.run(cmd).returncode
    from benchmarks.serving.report import format_table, summarize, write_json

    parts = [out.with_name(f"{out.stem}-{s.name}.json") for s in (a, b)]
    procs = []
    for s, part in zip((a, b), parts):
        cmd = bench_cmd([s], args, vocab, part, tag)
        print("$", " ".join(cmd), flush=True)
        procs.append(subprocess.Popen(cmd))
    rc = max(proc.wait() for proc in procs)
    docs = [json.loads(part.read_text()) for part in parts if part.exists()]
    if len(docs) != 2:
        return rc or 1
    points = docs[0]["points"] + docs[1]["points"]
    meta = {k: v for k, v in docs[0]["summary"].items() if k in ("card", "command", "date", "versions", "tag")}
    meta["clients"] = "parallel: one client per server, same seeded prompts, servers on separate GPUs"
    summary = summarize(points, [a.name, b.name], meta)
    summary["points_run"] = len(points)
    summary["points_planned"] = sum(d["summary"].get("points_planned", 0) for d in docs)
    write_json(out, docs[0]["config"], {a.name: a.url, b.name: b.url}, points, summary)
    print(format_table(points, [a.name, b.name], summary), flush=True)
    return rc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--input-lens", default="65536,32768")
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--concurrency", default="1,4,16,32")
    ap.add_argument("--num-requests", default="1x")
    ap.add_argument("--min-requests", type=int, default=4)
    ap.add_argument("--baseline-page", choices=["default", "128", "both"], default="both",
                    help="both: A at page 128 first, then (time permitting) A at SGLang's default page size")
    ap.add_argument("--a-cuda-graph", choices=["on", "off"], default="on")
    ap.add_argument("--b-models", choices=["ours", "intree"], default="ours",
                    help="MiniMax-M3 classes for B (ours = SGLANG_MSA_MODELS=1); A always runs the in-tree ones")
    ap.add_argument("--b-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for B (repeatable), e.g. SGLANG_MSA_FUSED_QK_NORM_ROPE=0")
    ap.add_argument("--a-gpu", default=None, help="CUDA_VISIBLE_DEVICES for A (default: inherited)")
    ap.add_argument("--b-gpu", default=None, help="CUDA_VISIBLE_DEVICES for B (default: inherited)")
    ap.add_argument("--mem-fraction", type=float, default=0.45)
    ap.add_argument("--a-mem-fraction", type=float, default=None, help="default --mem-fraction")
    ap.add_argument("--b-mem-fraction", type=float, default=None, help="default --mem-fraction")
    ap.add_argument("--a-start-delay", type=float, default=0.0, help="seconds to wait before starting A (lets a "
                    "co-located job allocate its memory first)")
    ap.add_argument("--a-wait-for", default="", help="comma-separated URLs whose /health must answer before A "
                    "starts (another job sharing A's GPU: SGLang sizes its KV pool from the memory free at start)")
    ap.add_argument("--context", type=int, default=70000)
    ap.add_argument("--health-timeout", type=float, default=400)
    ap.add_argument("--port-base", type=int, default=30000)
    ap.add_argument("--deadline-s", type=float, default=540, help="whole run; later phases and points are "
                    "skipped so that the profiles and the results still fit")
    ap.add_argument("--profile", choices=["on", "off"], default="on")
    ap.add_argument("--profile-len", type=int, default=32768)
    ap.add_argument("--profile-concurrency", type=int, default=16)
    ap.add_argument("--merge", type=Path, nargs="+", help="only merge these per-run files into one results file")
    args = ap.parse_args(argv)
    if args.merge:
        merge(args.merge, args.out_dir)
        return 0
    t_end = time.time() + args.deadline_s
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model = write_slice_config(Path(f"/tmp/m3-slice-{args.port_base}"))
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    lens = [int(x) for x in args.input_lens.split(",")]
    burst = max(int(x) for x in args.concurrency.split(","))
    pages = {"default": [None], "128": [128], "both": [128, None]}[args.baseline_page]
    split = args.a_gpu is not None and args.b_gpu is not None and args.a_gpu != args.b_gpu
    log_dir = args.out_dir / "logs"
    results = {"card": card_name(), "date": date.today().isoformat(), "command": " ".join(sys.argv),
               "versions": {m: getattr(__import__(m), "__version__", "?") for m in ("sglang", "torch", "triton")},
               "b_models": args.b_models, "a_cuda_graph": args.a_cuda_graph == "on",
               "server_flags_common": server_flags(model, None, args.mem_fraction, args.context),
               "placement": "A and B on separate identical GPUs, measured at once" if split else
                            "A and B on one GPU, interleaved", "runs": {}}
    gpu = lambda g: {} if g is None else {"CUDA_VISIBLE_DEVICES": str(g)}  # noqa: E731
    b_env = dict(kv.split("=", 1) for kv in args.b_env)
    results["b_env"] = b_env
    b = Server("B", args.port_base + 1,
               server_flags(model, 128, args.b_mem_fraction or args.mem_fraction, args.context)
               + ["--attention-backend", "msa"],
               env={"SGLANG_MSA_MODELS": "1" if args.b_models == "ours" else "0", **gpu(args.b_gpu), **b_env})
    profile_reserve = 70.0 if args.profile == "on" else 10.0
    try:
        for i, page in enumerate(pages):
            tag = f"A-page{page or 'default'}"
            if i > 0 and t_end - time.time() < 200:
                results["runs"][tag] = {"skipped": f"{t_end - time.time():.0f} s left of the deadline"}
                break
            a_flags = server_flags(model, page, args.a_mem_fraction or args.mem_fraction, args.context) + [
                "--attention-backend", "triton"]
            if args.a_cuda_graph == "off":
                a_flags.append("--disable-cuda-graph")
            a = Server(tag, args.port_base, a_flags, env={"SGLANG_MSA_DISABLE": "1", **gpu(args.a_gpu)})
            run = results["runs"][tag] = {"page_size": page}
            starts = [s for s in (b, a) if s.proc is None or s.proc.poll() is not None]
            for s in starts:
                if s is a and args.a_start_delay:
                    time.sleep(args.a_start_delay)
                if s is a and args.a_wait_for:
                    run["a_waited_s"] = wait_for_health(args.a_wait_for.split(","), min(180.0, t_end - time.time()))
                s.start(log_dir)
                if not split and s is not starts[-1]:  # one card: the next one sizes its pool after this one
                    s.wait_healthy(min(args.health_timeout, t_end - time.time()))
            for s in starts:
                if not s.wait_healthy(min(args.health_timeout, max(1.0, t_end - time.time()))):
                    run["error"] = f"{s.name} not healthy"
                    run["log_tail"] = s.tail(80)
                    print(f"{s.name} not healthy:\n{s.tail()}", flush=True)
                    a.stop()
                    raise SystemExit(2)
            run["ready_s"] = {s.name: s.ready_s for s in (a, b)}
            run["warmup_s"] = _parallel({s.name: (lambda s=s: warm_up(s, lens, vocab, burst)) for s in starts},
                                        split)
            reserve = profile_reserve if i == 0 else 10.0
            args.sweep_deadline = t_end - reserve - (0 if i == len(pages) - 1 else 200)
            out = args.out_dir / f"serving-{tag}.json"
            run["bench_rc"] = run_bench(a, b, args, vocab, out, tag, parallel=split)
            run["result"] = json.loads(out.read_text()) if out.exists() else None
            if i == 0:
                run["greedy_spot_check"] = spot_check(a, b, vocab, args.b_models == "intree")
            if args.profile == "on" and i == 0:
                run["profile"] = _parallel({s.name: (lambda s=s: _profile(s, args, vocab)) for s in (a, b)}, split)
            a.stop()
            run["log_tail"] = {s.name: s.tail(30) for s in (a, b)}
    finally:
        b.stop()
        write_results(args, results)
    return 0


def wait_for_health(urls: list[str], timeout_s: float) -> float:
    """Seconds until every URL's /health answered 200 (or the timeout passed)."""
    import urllib.request

    t0 = time.time()
    pending = [u.rstrip("/") for u in urls if u]
    while pending and time.time() - t0 < timeout_s:
        still = []
        for u in pending:
            try:
                with urllib.request.urlopen(u + "/health", timeout=5) as r:
                    if r.status != 200:
                        still.append(u)
            except OSError:
                still.append(u)
        pending = still
        if pending:
            time.sleep(2)
    return time.time() - t0


def spot_check(a: Server, b: Server, vocab: int, same_weights: bool, lens=(4096, 20000), new_tokens: int = 16) -> dict:
    """Greedy tokens of A and B on the same prompts. ``--load-format dummy`` draws the weights in the
    order of the model's parameters, so the two servers hold the same weights only when they run the
    same M3 classes (``--b-models intree``); otherwise the comparison lives in e2e_correctness.py."""
    rows = []
    for n in lens:
        ids = [(31 * i + 7) % (vocab - 100) + 100 for i in range(n)]
        try:
            ra, rb = generate(a, ids, new_tokens), generate(b, ids, new_tokens)
        except Exception as exc:  # noqa: BLE001 - reported
            rows.append({"len": n, "error": repr(exc)})
            continue
        same = ra["output_ids"] == rb["output_ids"]
        rows.append({"len": n, "identical": same, "a": ra["output_ids"], "b": rb["output_ids"],
                     "max_logprob_abs_diff": max((abs(x - y) for x, y in zip(ra["logprobs"], rb["logprobs"])),
                                                 default=None)})
    return {"same_weights": same_weights, "prompts": rows,
            "identical_fraction": sum(r.get("identical", False) for r in rows) / len(rows)}


def _parallel(jobs: dict, parallel: bool) -> dict:
    if not parallel:
        return {name: fn() for name, fn in jobs.items()}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(fn) for name, fn in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def _profile(server: Server, args, vocab: int) -> dict:
    try:
        return profile_server(server.url, Path(f"/tmp/prof-{args.port_base}-{server.name}"), vocab_size=vocab,
                              input_len=args.profile_len, concurrency=args.profile_concurrency,
                              prefill_steps=2, decode_steps=10, decode_tokens=600)
    except Exception as exc:  # noqa: BLE001 - reported, never fatal
        return {"error": repr(exc)}


def a_throughput(run: dict) -> dict:
    """{(workload, concurrency): A's output tok/s} of one run (A is every server but B)."""
    points = ((run.get("result") or {}).get("points")) or []
    return {(p["workload"], p["concurrency"]): p["output_throughput"] for p in points
            if p.get("server") != "B" and p.get("output_throughput")}


def faster_baseline(runs: dict) -> tuple[str | None, dict]:
    """The issue compares B with the faster A: the run whose A has the higher geometric-mean output
    throughput over the points every run measured (A servers on identical GPUs in one device call)."""
    measured = {tag: a_throughput(run) for tag, run in runs.items()}
    measured = {tag: m for tag, m in measured.items() if m}
    if not measured:
        return None, {}
    common = set.intersection(*(set(m) for m in measured.values()))
    if not common:  # nothing comparable: the first run with points
        return next(iter(measured)), {"rule": "no common points; first run with results"}
    geo = {tag: math.exp(sum(math.log(m[k]) for k in common) / len(common)) for tag, m in measured.items()}
    best = max(geo, key=geo.get)
    return best, {"rule": "higher geometric-mean A output throughput over the common points",
                  "a_output_throughput_geomean": geo, "common_points": len(common)}


def summarize_runs(card: str, runs: dict) -> dict:
    """The issue's summary: B against the faster baseline A."""
    tag, choice = faster_baseline(runs)
    best = ((runs[tag].get("result") or {}).get("summary") or {}) if tag else {}
    out = {"card": card, "baseline": tag, "baseline_choice": choice}
    if best:
        ttft = best.get("ttft_p50_ratio") or {}
        out.update({k: best.get(k) for k in ("min_output_throughput_ratio", "max_output_throughput_ratio",
                                             "geomean_output_throughput_ratio")})
        out["ttft_p50_ratio_64k"] = ttft.get("65536")
        out["ttft_p50_ratio_by_prompt"] = ttft
    out["failed_requests"] = sum(((r.get("result") or {}).get("summary") or {}).get("failed_requests", 0)
                                 for r in runs.values())
    out["runs_without_result"] = [t for t, r in runs.items() if not r.get("result")]
    return out


def write_results(args, results: dict) -> None:
    results["summary"] = summarize_runs(results["card"], results["runs"])
    path = args.out_dir / f"serving-{results['card'].replace(' ', '-')}-{results['date']}-{args.port_base}.json"
    path.write_text(json.dumps(results, indent=1))
    print(json.dumps(results["summary"], indent=1), flush=True)


def merge(paths: list[Path], out_dir: Path) -> Path:
    """Several gpu_ab runs (e.g. one per GPU of a two-GPU machine, one baseline page size each) -> one file."""
    docs = [json.loads(p.read_text()) for p in paths]
    runs = {}
    for d in docs:
        for tag, run in d["runs"].items():
            runs[tag if tag not in runs else f"{tag}-{len(runs)}"] = run
    merged = {k: docs[0][k] for k in ("card", "date", "versions", "b_models", "a_cuda_graph") if k in docs[0]}
    merged["commands"] = [d["command"] for d in docs]
    merged["runs"] = runs
    merged["summary"] = summarize_runs(merged["card"], runs)
    path = out_dir / f"serving-{merged['card'].replace(' ', '-')}-{merged['date']}.json"
    path.write_text(json.dumps(merged, indent=1))
    print(json.dumps(merged["summary"], indent=1), flush=True)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
