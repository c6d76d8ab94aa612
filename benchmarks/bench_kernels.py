"""All MSA kernel benchmarks in one device call, and the issue's results file.

Runs ``bench_indexer.py``, ``bench_prefill.py`` and ``bench_decode.py`` one after the other on the
same GPU (so every ratio below is measured in the same run), then writes
``kernels-<card>-<date>.json`` (every measurement + a ``summary``) and a PNG plot.

    python3 benchmarks/bench_kernels.py --out-dir $OUT [--budget-s 540]

Summary ratios are baseline time / our time (64/4 heads, top-16 x 128, bf16):
``prefill_64k_speedup_vs_upstream``, ``prefill_16k_speedup_vs_dense``, ``prefill_64k_speedup_vs_flex``,
``indexer_prefill_64k_speedup_vs_upstream``, ``decode_main_b8_128k_speedup_vs_upstream`` (CUDA-graph
replay = device time; the eager ratio is kept beside it), ``decode_step_b8_128k_speedup_vs_upstream``
(indexer + sparse attention, device time; ``..._eager`` beside it, the issue's baseline being eager).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def run(script: str, args: list[str], budget_s: float) -> int:
    cmd = [sys.executable, str(ROOT / script), *args]
    print("$", " ".join(cmd), flush=True)
    try:
        return subprocess.run(cmd, timeout=budget_s).returncode
    except subprocess.TimeoutExpired:
        print(f"{script}: stopped after {budget_s:.0f} s", flush=True)
        return 124


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def summarize(indexer, prefill, decode) -> dict:
    s: dict = {}

    def ratio(num, den):
        return None if not num or not den else num / den

    if prefill:
        rows = {(r["T"], r["heads"]): r for r in prefill.get("rows", [])}
        r64, r16 = rows.get((65536, "64/4")), rows.get((16384, "64/4"))
        if r64:
            ours = r64.get("ours_bind_ms") or r64.get("ours_ms")
            s["prefill_64k_speedup_vs_upstream"] = ratio(r64.get("upstream_ms"), ours)
            s["prefill_64k_speedup_vs_flex"] = ratio(r64.get("flex_ms"), ours)
            s["prefill_64k_ms"] = ours
        if r16:
            s["prefill_16k_speedup_vs_dense"] = ratio(r16.get("sdpa_ms"), r16.get("ours_bind_ms") or r16.get("ours_ms"))
    idx_dec = {}
    if indexer:
        for r in indexer.get("rows", []):
            if r.get("kind") == "prefill" and r.get("tokens") == 65536 and r.get("heads") == 4 \
                    and r.get("impl") == "upstream":
                s["indexer_prefill_64k_speedup_vs_upstream"] = r.get("speedup")
            if r.get("kind") == "decode" and r.get("batch") == 8 and r.get("ctx") == 131072 \
                    and r.get("heads") == 4 and r.get("page") == 128:
                key = (r["impl"].split("-")[0], bool(r.get("graph")))
                idx_dec[key] = min(idx_dec.get(key, float("inf")), r["us"])
    if decode:
        for r in decode.get("results", []):
            if r.get("heads") == "64/4" and r.get("batch") == 8 and r.get("context") == 131072 and "sweep" not in r:
                s["decode_main_b8_128k_speedup_vs_upstream"] = r.get("speedup_graph")
                s["decode_main_b8_128k_speedup_vs_upstream_eager"] = r.get("speedup_eager")
                for graph, suffix, mode in ((True, "", "graph"), (False, "_eager", "eager")):
                    ours_idx = idx_dec.get(("ours", graph))
                    up_idx = idx_dec.get(("upstream", graph))  # same timing mode on both sides, never mixed
                    ours_main, up_main = r.get(f"ours_{mode}_us"), r.get(f"upstream_{mode}_us")
                    if ours_idx and up_idx and ours_main and up_main:
                        s[f"decode_step_b8_128k_speedup_vs_upstream{suffix}"] = ratio(up_idx + up_main,
                                                                                      ours_idx + ours_main)
    return s


def plot(prefill, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    rows = [r for r in (prefill or {}).get("rows", []) if r["heads"] == "64/4"]
    if not rows:
        return
    xs = [r["T"] // 1024 for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("ours_bind_ms", "sglang-msa (block-major)"), ("upstream_ms", "SGLang 0.5.17 Triton"),
                       ("sdpa_ms", "dense SDPA")):
        ax.plot(xs, [r.get(key) for r in rows], marker="o", label=label)
    ax.set_xlabel("prefill tokens (k)")
    ax.set_ylabel("ms (median)")
    ax.set_yscale("log")
    ax.set_title("MSA sparse prefill, 64/4 heads, top-16 x 128, bf16")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--budget-s", type=float, default=540)
    args = ap.parse_args(argv)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # Shares of the budget; the shapes in order of importance, later ones skipped past the deadline.
    b_idx, b_pre, b_dec = 0.25 * args.budget_s, 0.45 * args.budget_s, 0.30 * args.budget_s
    run("bench_indexer.py", ["--out", str(out), "--quick", "--budget", str(b_idx - 20)], b_idx)
    run("bench_prefill.py", ["--out", str(out / "bench_prefill.json"), "--deadline", str(b_pre - 10),
                             "--heads", "64/4,16/1", "--seqlens", "8192,16384,65536,32768,131072"], b_pre)
    run("bench_decode.py", ["--out", str(out), "--quick" if args.budget_s < 300 else "--budget-s",
                            *([] if args.budget_s < 300 else [str(b_dec - 20)])], b_dec)
    import torch

    card = torch.cuda.get_device_name(0)
    indexer = _load(out / "bench_indexer.json") or next(
        (_load(p) for p in sorted(out.glob("bench_indexer*.json"))), None)
    prefill, decode = _load(out / "bench_prefill.json"), _load(out / "bench_decode.json")
    result = {
        "card": card, "date": date.today().isoformat(), "command": " ".join(sys.argv),
        "versions": {"torch": torch.__version__, "triton": __import__("triton").__version__},
        "seconds": time.time() - t0, "indexer": indexer, "prefill": prefill, "decode": decode,
    }
    result["summary"] = {"card": card, **summarize(indexer, prefill, decode)}
    path = out / f"kernels-{card.replace(' ', '-')}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=1))
    plot(prefill, out / f"kernels-prefill-{card.replace(' ', '-')}-{result['date']}.png")
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
