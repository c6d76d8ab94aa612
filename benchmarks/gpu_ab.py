"""The end-to-end serving figure, in one device call: SGLang's in-tree MiniMax sparse path (A) vs
our ``--attention-backend msa`` (B) on an M3-shaped model, side by side on one GPU.

    python3 benchmarks/gpu_ab.py --out-dir $OUT            # after unpacking the GPU bundle

1. writes the ``slice`` config (real M3 widths, 1 dense + 3 sparse layers; ``--load-format dummy``
   so no weights are written) with ``python -m sglang_msa.tiny_m3 --preset slice``;
2. starts the baseline A (``--attention-backend triton`` + SGLang's sparse backend; ``--page-size``
   from ``--baseline-page``) and B (``msa``, page 128, CUDA graphs), both on the card at once (two
   ~50 GB dummy-weight servers fit an H200; on an H100 use a slice with fewer layers);
3. warms both up at every prompt length (Triton JIT, MoE configs, CUDA graphs) before measuring;
4. runs ``bench_serving.py`` (interleaved A/B points) and writes
   ``serving-<card>-<date>.json`` + plots; with ``--baseline-page both`` it runs A at the default
   page size and at 128 and compares B against the faster A, saying which.
Request counts are small on purpose to fit one 10-minute call; they are recorded in the results.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.servers import Server, generate  # noqa: E402


def card_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def write_slice_config(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "sglang_msa.tiny_m3", str(path), "--preset", "slice"], check=True)
    return path


def server_flags(model: Path, page: int | None, mem_fraction: float, context: int) -> list[str]:
    flags = ["--model-path", str(model), "--load-format", "dummy", "--context-length", str(context),
             "--mem-fraction-static", str(mem_fraction), "--max-running-requests", "32",
             "--chunked-prefill-size", "16384", "--cuda-graph-max-bs", "32"]
    if page is not None:
        flags += ["--page-size", str(page)]
    return flags


def warm_up(server: Server, lens: list[int], vocab: int) -> float:
    t0 = time.time()
    for n in lens:
        generate(server, [(7 * i + 11) % (vocab - 100) + 100 for i in range(n)], 8, logprobs=False)
    return time.time() - t0


def run_bench(servers: list[Server], args, vocab: int, out: Path, tag: str) -> int:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_serving.py"), "--backend", "sglang",
           "--vocab-size", str(vocab), "--min-token-id", "100", "--input-len", args.input_lens,
           "--output-len", str(args.output_len), "--concurrency", args.concurrency,
           "--num-requests", args.num_requests, "--warmup", "1", "--timeout", "900",
           "--out", str(out), "--plot-dir", str(out.parent / f"plots-{tag}"), "--no-progress",
           "--meta", f"card={card_name()}", "--meta", f"tag={tag}", "--allow-failures"]
    for s in servers:
        cmd += ["--server", f"{s.name}={s.url}"]
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--input-lens", default="32768,65536")
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--concurrency", default="1,4,16,32")
    ap.add_argument("--num-requests", default="1x")
    ap.add_argument("--baseline-page", choices=["default", "128", "both"], default="both")
    ap.add_argument("--mem-fraction", type=float, default=0.45)
    ap.add_argument("--context", type=int, default=70000)
    ap.add_argument("--health-timeout", type=float, default=300)
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model = write_slice_config(Path("/tmp/m3-slice"))
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    lens = [int(x) for x in args.input_lens.split(",")]
    pages = {"default": [None], "128": [128], "both": [None, 128]}[args.baseline_page]
    log_dir = args.out_dir / "logs"
    results = {"card": card_name(), "date": date.today().isoformat(), "command": " ".join(sys.argv),
               "runs": {}}
    b = Server("B", 30001, server_flags(model, 128, args.mem_fraction, args.context) + ["--attention-backend", "msa"])
    try:
        for page in pages:
            tag = f"A-page{page or 'default'}"
            a = Server(tag, 30000, server_flags(model, page, args.mem_fraction, args.context)
                       + ["--attention-backend", "triton", "--disable-cuda-graph"])
            starts = [a, b] if (b.proc is None or b.proc.poll() is not None) else [a]
            for s in starts:
                s.start(log_dir)
            for s in starts:
                if not s.wait_healthy(args.health_timeout):
                    print(f"{s.name} not healthy:\n{s.tail()}", flush=True)
                    return 2
            results["runs"][tag] = {"ready_s": {s.name: s.ready_s for s in (a, b)},
                                    "warmup_s": {s.name: warm_up(s, lens, vocab) for s in (a, b)}}
            out = args.out_dir / f"serving-{tag}.json"
            rc = run_bench([a, b], args, vocab, out, tag)
            results["runs"][tag]["bench_rc"] = rc
            results["runs"][tag]["result"] = json.loads(out.read_text()) if out.exists() else None
            a.stop()
    finally:
        b.stop()
    best = None
    for tag, run in results["runs"].items():
        summary = (run.get("result") or {}).get("summary") or {}
        if summary and (best is None or summary.get("min_output_throughput_ratio", 0) <
                        best[1].get("min_output_throughput_ratio", 0)):
            best = (tag, summary)  # the faster baseline gives the smaller B/A ratio
    results["summary"] = {"card": results["card"], "baseline": best[0] if best else None,
                          **({k: best[1].get(k) for k in ("min_output_throughput_ratio",
                             "max_output_throughput_ratio", "ttft_p50_ratio", "failed_requests")} if best else {})}
    path = args.out_dir / f"serving-{results['card'].replace(' ', '-')}-{results['date']}.json"
    path.write_text(json.dumps(results, indent=1))
    print(json.dumps(results["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
