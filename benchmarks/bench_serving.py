#!/usr/bin/env python3
"""A/B serving benchmark: the same seeded workload against one or more running servers, interleaved.

Example (two SGLang servers, random 1k/8k-token prompts, 128 output tokens):

    python benchmarks/bench_serving.py \
        --server A=http://127.0.0.1:30000 --server B=http://127.0.0.1:30001 \
        --backend sglang --vocab-size 200000 --input-len 1024,8192 --output-len 128 \
        --concurrency 1,2,4,8,16,32,64 --warmup 2 \
        --out benchmarks/results/ab.json --plot-dir benchmarks/results/ab_plots \
        --meta card=H100 --meta versions.sglang=0.5.17

Backends: ``sglang`` (native ``/generate`` with token ids), ``openai`` (``/v1/completions``, token-id
prompts) and ``openai-chat`` (``/v1/chat/completions``; ``--video-url`` adds a video content part).
Ratios are oriented so that > 1 means the second server (B) is better than the first (A).

Text-only serving A/Bs use SGLang's own load generator instead (``benchmarks/ab_default.py`` runs
``sglang.benchmark.serving``), so their figures share its request generator and metric definitions.
This client is kept for what SGLang's lacks: M3-VL video chat requests (``openai-chat`` with
``--video-url``, one clip per request, seeded interleaving of two servers) and A/Bs of servers that are
already running elsewhere (``--server NAME=URL``).
Exit status: 0 when every request succeeded (or ``--allow-failures``), 1 when any failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.serving.client import ENDPOINTS, RequestOptions  # noqa: E402
from benchmarks.serving.report import SCHEMA, format_table, save_plots, summarize, write_json  # noqa: E402
from benchmarks.serving.runner import SweepConfig, resolve_model, run_sweep, wait_ready  # noqa: E402
from benchmarks.serving.workload import JsonlWorkload, RandomWorkload, words_for_ids  # noqa: E402


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _key_value(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def _num_requests(text: str) -> Callable[[int], int]:
    """``N`` requests per point, or ``Kx``: K x concurrency (at least ``fn.min_requests``, 8 unless
    ``--min-requests`` says otherwise)."""
    try:
        if text.endswith("x"):
            k = float(text[:-1])
            if k <= 0:
                raise ValueError
            fn = lambda c: max(fn.min_requests, int(round(k * c)))  # noqa: E731
        else:
            n = int(text)
            if n < 1:
                raise ValueError
            fn = lambda c: n  # noqa: E731
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or Kx (e.g. 64 or 4x), got {text!r}") from None
    fn.spec = text  # type: ignore[attr-defined]
    fn.min_requests = 8  # type: ignore[attr-defined]
    return fn


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("servers")
    g.add_argument("--server", action="append", required=True, metavar="NAME=URL",
                   help="base URL of a server; repeat for A/B (first = baseline); bare URLs are named A, B, ...")
    g.add_argument("--backend", choices=sorted(ENDPOINTS), default="sglang",
                   help="sglang: /generate; openai: /v1/completions; openai-chat: /v1/chat/completions")
    g.add_argument("--model", default=None, help="model name for the OpenAI APIs (default: first of /v1/models)")
    g.add_argument("--wait-ready", type=float, default=0.0, metavar="S",
                   help="poll /health up to S seconds per server before starting")
    g.add_argument("--flush-cache", action="store_true", help="POST /flush_cache before every point (SGLang)")

    g = p.add_argument_group("workload")
    g.add_argument("--dataset", type=Path, default=None,
                   help="JSONL requests (input_ids | prompt | messages, optional output_len, video_url, extra_body)")
    g.add_argument("--input-len", type=_int_list, default=[1024], help="prompt lengths in tokens, e.g. 1024,8192")
    g.add_argument("--output-len", type=int, default=128, help="output tokens per request")
    g.add_argument("--vocab-size", type=int, default=None, help="random token ids are drawn below this")
    g.add_argument("--min-token-id", type=int, default=0,
                   help="random token ids are drawn at or above this (keep clear of special tokens)")
    g.add_argument("--shared-prefix-len", type=int, default=0,
                   help="leading tokens common to all prompts (of --input-len total; the rest is unique)")
    g.add_argument("--num-prefix-groups", type=int, default=1, help="distinct shared prefixes, used round-robin")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--video-url", action="append", default=[], help="chat only: add this video to every prompt")
    g.add_argument("--tokenizer", default=None,
                   help="local tokenizer path to turn random ids into chat text (default: one word per id)")

    g = p.add_argument_group("sweep")
    g.add_argument("--concurrency", type=_int_list, default=[1, 2, 4, 8, 16, 32, 64])
    g.add_argument("--num-requests", type=_num_requests, default=_num_requests("4x"),
                   help="measured requests per point: N, or Kx = K x concurrency (at least --min-requests); default 4x")
    g.add_argument("--min-requests", type=int, default=8, help="lower bound of Kx per point (default 8)")
    g.add_argument("--warmup", type=int, default=2, help="unmeasured requests per point and server, sent first")
    g.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    g.add_argument("--deadline-s", type=float, default=None, metavar="S",
                   help="start no new point after S seconds (the points not run are listed; the JSON is "
                        "rewritten after every point, so a killed run keeps what it measured)")

    g = p.add_argument_group("request")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                   help="let requests stop at EOS (default: always generate --output-len tokens)")
    g.add_argument("--return-token-ids", action="store_true", help="/v1/completions: ask for per-chunk token ids")
    g.add_argument("--extra-body", type=json.loads, default={}, help="JSON object merged into every request body")

    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=None, help="write every point and a summary as JSON")
    g.add_argument("--plot-dir", type=Path, default=None, help="save PNG plots here (needs matplotlib)")
    g.add_argument("--meta", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="recorded in the summary (card=..., command=..., versions.sglang=...)")
    g.add_argument("--allow-failures", action="store_true", help="exit 0 even if requests failed")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar or per-point lines")
    return p


def _servers(specs: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    servers: dict[str, str] = {}
    for i, spec in enumerate(specs):
        name, eq, url = spec.partition("=")
        if not eq or "://" in name:
            name, url = chr(ord("A") + i), spec
        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            parser.error(f"--server {spec!r}: URL must start with http:// or https://")
        if name in servers:
            parser.error(f"--server name {name!r} given twice")
        servers[name] = url
    return servers


def _text_for_ids(tokenizer_path: str | None) -> Callable[[Any], str]:
    if not tokenizer_path:
        return words_for_ids
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
    return lambda ids: tok.decode(list(ids))


def _default_meta(argv: list[str]) -> dict[str, Any]:
    import aiohttp

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "benchmarks/bench_serving.py", *argv]),
        "versions.bench_serving": SCHEMA,
        "versions.python": platform.python_version(),
        "versions.aiohttp": aiohttp.__version__,
    }


def _config_for_json(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for k, v in vars(args).items():
        if k == "num_requests":
            v = v.spec
        elif isinstance(v, Path):
            v = str(v)
        elif k == "meta":
            v = dict(v)
        out[k] = v
    return out


async def _prepare(servers: dict[str, str], args: argparse.Namespace) -> str:
    if args.wait_ready > 0:
        ready = await asyncio.gather(*(wait_ready(u, args.wait_ready) for u in servers.values()))
        for name, ok in zip(servers, ready):
            if not ok:
                print(f"warning: {name} ({servers[name]}) not healthy after {args.wait_ready:g} s", file=sys.stderr)
    if args.model or args.backend == "sglang":
        return args.model or "default"
    models = await asyncio.gather(*(resolve_model(u) for u in servers.values()))
    found = [m for m in models if m]
    if len(set(found)) > 1:
        print(f"warning: servers serve different models {found}; using {found[0]!r} (set --model)", file=sys.stderr)
    return found[0] if found else "default"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    servers = _servers(args.server, parser)
    if args.output_len < 1 or args.warmup < 0 or args.timeout <= 0 or args.min_requests < 1:
        parser.error("--output-len must be >= 1, --warmup >= 0, --timeout > 0, --min-requests >= 1")
    args.num_requests.min_requests = args.min_requests
    if args.video_url and args.backend != "openai-chat":
        parser.error("--video-url needs --backend openai-chat")
    try:
        if args.dataset is not None:
            workloads: list[Any] = [JsonlWorkload(args.dataset, args.output_len)]
        else:
            if args.vocab_size is None:
                parser.error("random prompts need --vocab-size (or pass --dataset)")
            workloads = [RandomWorkload(n, args.output_len, args.vocab_size, args.seed, args.min_token_id,
                                        args.shared_prefix_len, args.num_prefix_groups) for n in args.input_len]
    except (OSError, ValueError) as e:
        parser.error(str(e))
    model = asyncio.run(_prepare(servers, args))
    opts = RequestOptions(backend=args.backend, model=model, temperature=args.temperature,
                          ignore_eos=args.ignore_eos, timeout=args.timeout, return_token_ids=args.return_token_ids,
                          extra_body=args.extra_body, video_urls=tuple(args.video_url),
                          text_for_ids=_text_for_ids(args.tokenizer))
    meta = _default_meta(argv)
    meta.update(dict(args.meta))
    config = _config_for_json(args)
    config["model"] = model

    planned = len(workloads) * len(args.concurrency) * len(servers)

    def save(points: list[dict[str, Any]]) -> dict[str, Any]:
        summary = summarize(points, list(servers), meta)
        summary["points_run"], summary["points_planned"] = len(points), planned
        if args.out is not None:
            write_json(args.out, config, servers, points, summary)
        return summary

    deadline = None if args.deadline_s is None else time.time() + args.deadline_s
    cfg = SweepConfig(servers=servers, workloads=workloads, concurrencies=args.concurrency,
                      num_requests=args.num_requests, warmup=args.warmup, options=opts,
                      flush_cache=args.flush_cache, progress=args.progress, deadline=deadline,
                      on_point=save if args.out is not None else None)
    points = asyncio.run(run_sweep(cfg))

    summary = save(points)
    print(format_table(points, list(servers), summary))
    if args.out is not None:
        print(f"wrote {args.out}", file=sys.stderr)
    if args.plot_dir is not None:
        try:
            for path in save_plots(points, list(servers), args.plot_dir):
                print(f"wrote {path}", file=sys.stderr)
        except ImportError:
            print("warning: matplotlib is not installed; no plots (pip install matplotlib)", file=sys.stderr)
    if summary["failed_requests"]:
        print(f"{summary['failed_requests']} request(s) failed: {summary['failed_requests_by_server']}",
              file=sys.stderr)
        return 0 if args.allow_failures else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
