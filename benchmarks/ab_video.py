#!/usr/bin/env python3
"""Served video A/B for MiniMax-M3-VL (issue #15): SGLang's own M3-VL video path against ours, one GPU.

    python3 -m sglang_msa_tools.tiny_m3 /tmp/m3vl --preset rank8 --vision --layers 8
    python3 benchmarks/ab_video.py --model-path /tmp/m3vl --clip 10s-720p=/data/a.mp4 \\
        --clip 60s-1080p=/data/b.mp4 --concurrency 1,8 --num-requests 16 --out-dir OUT

  A: stock SGLang (``SGLANG_MSA_DISABLE=1``): its M3-VL class, its processor (TorchCodec, decord
     without it) and its default attention backend for the model;
  B: the same command plus ``--attention-backend msa``: our model class, our processor (smg_rs).

Every other flag is the same (``--load-format dummy`` where the checkpoint has no weights). Requests
are video chats through ``/v1/chat/completions`` (``benchmarks/serving``'s openai-chat client): one clip
and a short text per request, A and B in turn at every point. Each request gets its own copy of the
clip, made distinct by a trailing MP4 ``free`` box (decoders skip it), so neither server's prefix or
embedding cache can reuse an earlier request's video: every request pays decoding, the vision tower
and its prefill, as distinct videos from users do.

Both servers run with ``benchmarks/mm_trace`` on PYTHONPATH: each preprocessing call's wall time goes
to the server log, and every point reports its p50 and its share of the mean TTFT. Writes
``serving-video-<card>-<date>[-NAME].json`` (every point, a ``summary``) and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import struct
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.serving.client import RequestOptions  # noqa: E402
from benchmarks.ab_default import read_choices  # noqa: E402
from benchmarks.serving.metrics import compare, percentile  # noqa: E402
from benchmarks.serving.runner import SweepConfig, resolve_model, run_sweep  # noqa: E402
from benchmarks.serving.workload import BenchRequest, words_for_ids  # noqa: E402

MM_TRACE_DIR = ROOT / "benchmarks" / "mm_trace"
MM_LINE = re.compile(r"\[mm-trace\] ([\d.]+) ([\d.]+) pid=\d+ (\w+) ([\d.]+) (ok|error)")


# ------------------------------------------------------------------------------------------ clips


# The clip classes of issue #15, made locally with the ffmpeg CLI (H.264, yuv420p, 30 fps, x264's default
# GOP). The GPU machine has no FFmpeg to make them and a call carries at most 64 MiB, so the bitrates are
# low: a synthetic, heavily quantised picture decodes faster per frame than camera footage, for both paths
# alike. label -> (seconds, size, kbit/s)
CLIP_CLASSES = {"10s-720p": (10, "1280x720", 250), "60s-720p": (60, "1280x720", 110),
                "60s-1080p": (60, "1920x1080", 150), "5m-720p": (300, "1280x720", 55)}


def make_clips(out_dir: Path, classes: dict = CLIP_CLASSES) -> dict[str, Path]:
    """Write the clip classes into ``out_dir`` (needs the ffmpeg CLI with libx264); existing files are kept."""
    import subprocess

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("making clips needs the ffmpeg CLI")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for label, (seconds, size, kbps) in classes.items():
        path = out_dir / f"{label}.mp4"
        if not path.exists():
            tmp = path.with_suffix(".part.mp4")
            subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                            f"testsrc2=size={size}:rate=30:duration={seconds}", "-c:v", "libx264",
                            "-preset", "veryfast", "-b:v", f"{kbps}k", "-maxrate", f"{2 * kbps}k",
                            "-bufsize", f"{4 * kbps}k", "-pix_fmt", "yuv420p", "-movflags", "+faststart",
                            str(tmp)], check=True, timeout=1800)
            tmp.rename(path)
        paths[label] = path
    return paths


def free_box(tag: str) -> bytes:
    """An MP4 ``free`` box carrying ``tag``: appended after the last top-level box it changes the file's
    bytes (and so every content hash) without changing what a demuxer reads."""
    payload = tag.encode()
    return struct.pack(">I4s", 8 + len(payload), b"free") + payload


def distinct_copies(clip: Path, out_dir: Path, tags: list[str]) -> list[Path]:
    """One copy of ``clip`` per tag, each ending in its own free box."""
    if clip.suffix.lower() not in (".mp4", ".mov", ".m4v"):
        raise ValueError(f"{clip}: distinct copies need an MP4/MOV file (a trailing free box), got {clip.suffix}")
    out_dir.mkdir(parents=True, exist_ok=True)
    data = clip.read_bytes()
    paths = []
    for tag in tags:
        path = out_dir / f"{clip.stem}-{re.sub(r'[^A-Za-z0-9_.-]', '_', tag)}{clip.suffix}"
        path.write_bytes(data + free_box(tag))
        paths.append(path)
    return paths


@dataclass(frozen=True)
class VideoWorkload:
    """Video chat requests: a distinct copy of one clip per request, ``text_words`` random words after it.
    The same stream name gives the same files and words, so A and B get identical requests."""

    label: str
    clip: Path
    copies_dir: Path
    output_len: int
    text_words: int = 32
    seed: int = 0

    @property
    def input_len(self) -> int:  # nominal; the server reports the real prompt size
        return self.text_words

    def requests(self, n: int, stream: str) -> list[BenchRequest]:
        import random

        rng = random.Random(f"{self.seed}/{self.label}/{stream}")
        tags = [f"{self.label}/{stream}/{i}" for i in range(n)]
        paths = distinct_copies(self.clip, self.copies_dir / self.label, tags)
        out = []
        for path in paths:
            text = "Describe the video. " + words_for_ids(tuple(rng.randrange(1000) for _ in range(self.text_words)))
            out.append(BenchRequest(output_len=self.output_len, prompt_len=self.text_words, text=text,
                                    video_urls=(str(path.resolve()),)))
        return out


def parse_clips(specs: list[str]) -> list[tuple[str, Path]]:
    clips = []
    for spec in specs:
        label, eq, path = spec.partition("=")
        if not eq or not label or not path:
            raise ValueError(f"--clip {spec!r}: expected LABEL=PATH")
        if not Path(path).is_file():
            raise ValueError(f"--clip {spec!r}: no such file")
        clips.append((label, Path(path)))
    if len({c[0] for c in clips}) != len(clips):
        raise ValueError("--clip labels must be distinct")
    return clips


# ------------------------------------------------------------------------------------------ traces


def mm_events(log_text: str) -> list[dict]:
    """The ``[mm-trace]`` lines of a server log."""
    return [{"t0": float(m.group(1)), "t1": float(m.group(2)), "processor": m.group(3), "ms": float(m.group(4)),
             "ok": m.group(5) == "ok"} for m in MM_LINE.finditer(log_text)]


def preprocess_stats(events: list[dict], start: float, end: float, ttft_mean_ms: float | None) -> dict:
    """Preprocessing calls that started inside a point's measured window, and their share of its TTFT."""
    inside = [e for e in events if start - 0.05 <= e["t0"] <= end]
    ms = [e["ms"] for e in inside]
    mean = sum(ms) / len(ms) if ms else None
    return {
        "calls": len(inside),
        "processors": sorted({e["processor"] for e in inside}),
        "preprocess_ms_p50": percentile(ms, 50),
        "preprocess_ms_p99": percentile(ms, 99),
        "preprocess_ms_mean": mean,
        "preprocess_share_of_ttft": (mean / ttft_mean_ms) if mean is not None and ttft_mean_ms else None,
    }


# ------------------------------------------------------------------------------------------ summary


def summarize(points: list[dict], meta: dict) -> dict:
    cmp = compare(points, "A", "B")
    by_point = {}
    for row in cmp["points"]:
        key = f"{row['workload']}/c{row['concurrency']}"
        pa = next(p for p in points if p["server"] == "A" and p["workload"] == row["workload"]
                  and p["concurrency"] == row["concurrency"])
        pb = next(p for p in points if p["server"] == "B" and p["workload"] == row["workload"]
                  and p["concurrency"] == row["concurrency"])
        by_point[key] = {
            "ttft_p50_ratio": row["ttft_p50_ratio"],  # A / B: > 1 means B answers sooner
            "ttft_p99_ratio": (pa["ttft_ms"]["p99"] / pb["ttft_ms"]["p99"]) if pa["ttft_ms"].get("p99") and
            pb["ttft_ms"].get("p99") else None,
            "request_throughput_ratio": row["request_throughput_ratio"],
            "ttft_p50_ms": {"A": pa["ttft_ms"]["p50"], "B": pb["ttft_ms"]["p50"]},
            "preprocess_ms_p50": {"A": pa["mm"]["preprocess_ms_p50"], "B": pb["mm"]["preprocess_ms_p50"]},
            "preprocess_share_of_ttft": {"A": pa["mm"]["preprocess_share_of_ttft"],
                                         "B": pb["mm"]["preprocess_share_of_ttft"]},
        }
    ttft = [v["ttft_p50_ratio"] for v in by_point.values() if v["ttft_p50_ratio"]]
    rps = [v["request_throughput_ratio"] for v in by_point.values() if v["request_throughput_ratio"]]
    return {
        **meta,
        "baseline": "sglang-default (plugin off: SGLang's M3-VL class and processor)",
        "candidate": "B (--attention-backend msa: our M3-VL class and smg_rs processor)",
        "points": by_point,
        "min_ttft_p50_ratio": min(ttft) if ttft else None,
        "min_request_throughput_ratio": min(rps) if rps else None,
        "failed_requests": sum(p["failed"] + p["warmup_failed"] for p in points),
        "preprocess_traced": all(p["mm"]["calls"] >= p["completed"] for p in points) if points else False,
    }


# ------------------------------------------------------------------------------------------ main


def server_specs(model: Path, dummy: bool, mem_fraction: float, context: int, max_running: int,
                 kv_tokens: int | None, extra: list[str]) -> dict:
    common = ["--model-path", str(model), "--context-length", str(context), "--mem-fraction-static",
              str(mem_fraction), "--max-running-requests", str(max_running),
              "--cuda-graph-backend-prefill", "disabled", *(["--load-format", "dummy"] if dummy else []),
              *(["--max-total-tokens", str(kv_tokens)] if kv_tokens else []), *extra]
    trace = {"PYTHONPATH": os.pathsep.join(x for x in (str(MM_TRACE_DIR), os.environ.get("PYTHONPATH", "")) if x),
             "SGLANG_MSA_TRACE_MM": "1"}
    return {"A": (common, {**trace, "SGLANG_MSA_DISABLE": "1"}),
            "B": (common + ["--attention-backend", "msa"], {**trace, "SGLANG_MSA_DISABLE": "0"})}


def has_weights(model: Path) -> bool:
    return any(model.glob("*.safetensors"))


def card_and_versions() -> tuple[str, dict]:
    from benchmarks.e2e_correctness import card_name, versions

    vers = versions()
    for mod in ("smg_rs", "torchcodec"):
        try:
            vers[mod] = getattr(__import__(mod), "__version__", "installed")
        except Exception as exc:  # noqa: BLE001 - reporting only
            vers[mod] = f"unavailable: {exc!r}"
    try:
        from sglang.srt.utils.video_decoder import _BACKEND

        vers["sglang_video_decoder"] = _BACKEND
    except Exception as exc:  # noqa: BLE001
        vers["sglang_video_decoder"] = f"unavailable: {exc!r}"
    return card_name(), vers


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(summary["points"])
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(keys)), 4))
    for i, server in enumerate("AB"):
        vals = [summary["points"][k]["ttft_p50_ms"][server] or 0 for k in keys]
        pre = [summary["points"][k]["preprocess_ms_p50"][server] or 0 for k in keys]
        xs = [j + (i - 0.5) * 0.38 for j in range(len(keys))]
        ax.bar(xs, vals, 0.38, label=f"{server} TTFT p50", alpha=0.5)
        ax.bar(xs, pre, 0.38, label=f"{server} preprocessing p50", alpha=0.9)
    ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right")
    ax.set_ylabel("ms")
    ax.set_title(f"M3-VL video chat, {summary.get('card')}: A = SGLang default, B = msa + smg_rs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make-clips", type=Path, default=None, metavar="DIR",
                    help="only write the standard clip classes into DIR (ffmpeg CLI) and print --clip flags")
    ap.add_argument("--model-path", type=Path, help="an M3-VL checkpoint (config-only: dummy weights)")
    ap.add_argument("--clip", action="append", default=[], metavar="LABEL=PATH", help="a clip class; repeat")
    ap.add_argument("--concurrency", default="1,8", help="comma-separated, e.g. 1,8,32")
    ap.add_argument("--num-requests", type=int, default=16, help="measured requests per point and server")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--text-words", type=int, default=32)
    ap.add_argument("--context-length", type=int, default=65536)
    ap.add_argument("--kv-tokens", type=int, default=None, help="--max-total-tokens of both servers")
    ap.add_argument("--mem-fraction", type=float, default=0.4)
    ap.add_argument("--max-running", type=int, default=32)
    ap.add_argument("--server-arg", action="append", default=[], help="one more flag for both servers (repeat)")
    ap.add_argument("--deadline-s", type=float, default=None, help="start no point after this many seconds")
    ap.add_argument("--health-timeout", type=float, default=420)
    ap.add_argument("--port-base", type=int, default=34000)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/ab-video"), help="clip copies (removed after)")
    ap.add_argument("--log-dir", type=Path, default=None, help="server logs (default: WORK_DIR/logs)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--name", default="", help="results file suffix")
    args = ap.parse_args(argv)
    if args.make_clips is not None:
        paths = make_clips(args.make_clips)
        print(" ".join(f"--clip {k}={v}" for k, v in paths.items()))
        return 0
    try:
        if args.model_path is None or not args.clip:
            raise ValueError("--model-path and at least one --clip are required")
        clips = parse_clips(args.clip)
        concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
        if not concurrency or min(concurrency) < 1 or args.num_requests < 1 or args.warmup < 0:
            raise ValueError("concurrency values and --num-requests must be >= 1, --warmup >= 0")
        if not (args.model_path / "config.json").is_file():
            raise ValueError(f"{args.model_path}: no config.json")
    except ValueError as e:
        ap.error(str(e))
    t_start = time.time()
    deadline = None if args.deadline_s is None else t_start + args.deadline_s

    from benchmarks.servers import Server, start_all_or_exit, stop_and_record

    specs = server_specs(args.model_path, not has_weights(args.model_path), args.mem_fraction, args.context_length,
                         args.max_running, args.kv_tokens, args.server_arg)
    servers = [Server(name, args.port_base + i, flags, env=env, tokenizer=True)
               for i, (name, (flags, env)) in enumerate(specs.items())]
    record: dict = {}
    log_dir = args.log_dir or args.work_dir / "logs"
    card, vers = card_and_versions()
    meta = {"card": card, "date": date.today().isoformat(), "versions": vers,
            "command": " ".join(["python3", "benchmarks/ab_video.py", *(argv if argv is not None else sys.argv[1:])]),
            "clips": {label: {"path": str(p), "bytes": p.stat().st_size} for label, p in clips},
            "requests_per_point": args.num_requests, "warmup_per_point": args.warmup,
            "cache_note": "each request's clip is a distinct copy (trailing MP4 free box): no prefix or "
                          "embedding cache hit across requests"}
    points: list[dict] = []
    out_name = f"serving-video-{card.replace(' ', '-')}-{meta['date']}{'-' + args.name if args.name else ''}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out_path = args.out_dir / f"{out_name}.json"
    try:
        start_all_or_exit(servers, log_dir, args.health_timeout, record)
        urls = {s.name: s.url for s in servers}
        model = asyncio.run(resolve_model(urls["A"])) or "default"
        opts = RequestOptions(backend="openai-chat", model=model, temperature=0.0, ignore_eos=True, timeout=600.0)
        workloads = [VideoWorkload(label, path, args.work_dir / "copies", args.output_len, args.text_words)
                     for label, path in clips]

        def save(pts: list[dict]) -> None:
            choices = {}
            for s in servers:
                log_text = s.log_path.read_text(errors="replace")
                choices[s.name] = read_choices(log_text)
                events = mm_events(log_text)
                for p in pts:
                    if p["server"] == s.name:
                        p["mm"] = preprocess_stats(events, p["started_at"], p["started_at"] + p["duration_s"],
                                                   p["ttft_ms"].get("mean"))
            summary = summarize(pts, meta)
            summary["server_choices"] = choices
            out_path.write_text(json.dumps({"config": vars(args) | {"model_path": str(args.model_path)},
                                            "servers": record, "points": pts, "summary": summary},
                                           indent=1, default=str))

        cfg = SweepConfig(servers=urls, workloads=workloads, concurrencies=concurrency,
                          num_requests=lambda c: args.num_requests, warmup=args.warmup, options=opts,
                          progress=False, deadline=deadline, on_point=save)
        points = asyncio.run(run_sweep(cfg))
        planned = [f"{w.label}/c{c}" for w in workloads for c in concurrency]
        run = {f"{p['workload']}/c{p['concurrency']}" for p in points}
        meta["points_not_run"] = [k for k in planned if k not in run]
        save(points)
    finally:
        stop_and_record(servers, record)
        if out_path.exists():
            doc = json.loads(out_path.read_text())
            doc["servers"] = record
            out_path.write_text(json.dumps(doc, indent=1, default=str))
        shutil.rmtree(args.work_dir / "copies", ignore_errors=True)
    doc = json.loads(out_path.read_text())
    summary = doc["summary"]
    try:
        _plot(summary, out_path.with_suffix(".png"))
    except Exception as e:  # noqa: BLE001 - the JSON is the result; the plot is a convenience
        print(f"no plot: {e!r}", file=sys.stderr)
    print(f"{'point':<18}{'TTFT p50 A':>11}{'B':>9}{'A/B':>7}{'pre A':>9}{'pre B':>9}{'share A':>9}{'share B':>9}")
    for key, v in summary["points"].items():
        def f(x, d=1):
            return "-" if x is None else f"{x:.{d}f}"
        print(f"{key:<18}{f(v['ttft_p50_ms']['A']):>11}{f(v['ttft_p50_ms']['B']):>9}{f(v['ttft_p50_ratio'], 2):>7}"
              f"{f(v['preprocess_ms_p50']['A']):>9}{f(v['preprocess_ms_p50']['B']):>9}"
              f"{f(v['preprocess_share_of_ttft']['A'], 2):>9}{f(v['preprocess_share_of_ttft']['B'], 2):>9}")
    print(f"failed requests: {summary['failed_requests']}; not run: {summary.get('points_not_run')}; wrote {out_path}")
    return 1 if summary["failed_requests"] else 0


if __name__ == "__main__":
    sys.exit(main())
