"""Load and faults on a live server (issue #14): vanilla check, malformed-request corpus, concurrent
long requests, KV-leak check, mid-stream disconnects; writes ``reliability-<card>-<date>.json``.

    python3 benchmarks/reliability.py --out-dir OUT [--deadline-s 540] [--phases vanilla,vl,load,corpus]
        [--load 64x32768,8x262144] [--layers 4] [--mem-fraction 0.9]

Servers, one after the other on one GPU (each stopped before the next starts):

    vanilla  the tiny text checkpoint, plugin installed, no --attention-backend: must log no
             ``sglang-msa:`` model/backend lines, report SGLang's own backend in /server_info, and serve;
    vl       the tiny M3-VL checkpoint with --attention-backend msa (our processor) and
             SGLANG_MSA_SMG_LIMITS lowering max_input_bytes: the corpus' M3-VL cases;
    main     the ``rank8`` preset (``--layers``), --load-format dummy, --attention-backend msa,
             --mem-fraction-static 0.9, --context-length 263168: first the load groups
             (N concurrent requests of L token ids), each followed by a settle + /flush_cache + free-KV
             reading against the starting value; then mid-stream disconnects and another reading; then
             the corpus' text cases (out-of-vocabulary token ids last: they may take the server down).

After every corpus case a small valid request must still succeed (else a failed request); a server
process that exits counts as a crash (and the server is restarted once while time allows).
``--url`` / ``--vl-url`` run the phases against servers already running (no start/stop, no crash
count). ``--external FILE`` merges ``tp_sizes_equal_to_intree`` / ``logprob_gap_vs_fp32_ours_over_intree``
measured elsewhere; ``features`` comes from ``sglang_msa.backend.features`` when it exists.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.reliability import corpus as corpus_mod  # noqa: E402
from benchmarks.reliability import live, results  # noqa: E402

ALLOWED_PLUGIN_LINES = ("registered attention backend", "disabled by")  # what register() logs everywhere
SGLANG_M3_LINE = re.compile(r"MiniMax-M3 on (\w+): attention_backend=(\w+), page_size=(\w+)")
MAIN_CONTEXT = 262144 + 1024


def parse_load(spec: str) -> list[tuple[int, int]]:
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        n, length = part.lower().split("x")
        out.append((int(n), int(length)))
    return out


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.time() + seconds

    def left(self) -> float:
        return self.end - time.time()


# --------------------------------------------------------------------------------------- phases


def vanilla_verdict(log_text: str, server_info: dict | None, healthy: bool, probe_ok: bool) -> dict:
    """Whether a server started without ``msa`` ran as stock SGLang, from its log and /server_info."""
    plugin = [ln[ln.index("sglang-msa:"):].strip() for ln in log_text.splitlines() if "sglang-msa:" in ln]
    foreign = sorted({ln for ln in plugin if not any(a in ln for a in ALLOWED_PLUGIN_LINES)})
    backend = (server_info or {}).get("attention_backend")
    m = SGLANG_M3_LINE.search(log_text)
    unchanged = bool(healthy and probe_ok and server_info is not None and backend != "msa" and not foreign)
    return {"unchanged": unchanged, "healthy": healthy, "probe_ok": probe_ok, "attention_backend": backend,
            "sglang_m3_choice": m.group(0) if m else None, "plugin_lines": sorted(set(plugin))[:20],
            "unexpected_plugin_lines": foreign}


def run_corpus(url: str, cases, raw: dict, server=None, restart=None, deadline: Deadline | None = None) -> None:
    """Each case, then a probe; a dead server counts as a crash and is restarted via ``restart``."""
    for case in cases:
        if deadline is not None and deadline.left() < 20:
            raw["corpus"].append({**case.summary(), "skipped": "deadline"})
            continue
        entry = {**case.summary(), **live.send_case(url, case)}
        entry["probe_ok"] = live.probe(url)
        entry["crashed"] = bool(server is not None and server.proc is not None and server.proc.poll() is not None)
        raw["corpus"].append(entry)
        print(f"[corpus] {case.name}: {entry['status']} probe={'ok' if entry['probe_ok'] else 'FAIL'} "
              f"{(entry['message'] or '')[:100]!r}", flush=True)
        if entry["crashed"]:
            raw["server_exits"] += 1
            raw["notes"].append(f"server exited after corpus case {case.name}")
            if restart is None or (server := restart()) is None:
                for rest in cases[cases.index(case) + 1:]:
                    raw["corpus"].append({**rest.summary(), "skipped": "server down"})
                return


def run_load_and_leak(url: str, groups, vocab: int, raw: dict, deadline: Deadline, disconnects: int,
                      disconnect_len: int) -> None:
    first = live.settle_and_flush(url, timeout_s=min(60, max(5, deadline.left() - 10)))
    raw["kv"] = {"baseline_free": first["free"] if first else None, "baseline": first, "checks": []}
    for i, (n, length) in enumerate(groups):
        if deadline.left() < 60:
            raw["notes"].append(f"load {n}x{length}: skipped (deadline)")
            continue
        res = live.run_load(url, n, length, vocab, timeout_s=max(30, deadline.left() - 40), seed=i + 1)
        raw["load"].append(res)
        print(f"[load] {n}x{length}: ok {res['ok']} failed {res['failed']} in {res['wall_s']:.0f}s {res['errors'][:2]}",
              flush=True)
        state = live.settle_and_flush(url, timeout_s=min(60, max(5, deadline.left() - 10)))
        raw["kv"]["checks"].append({"after": f"load {n}x{length}", "free": state and state["free"], "state": state})
    if disconnects and deadline.left() > 40:
        res = live.disconnecting_clients(url, disconnects, disconnect_len, vocab, timeout_s=min(90, deadline.left() - 20))
        raw["disconnect"] = res
        time.sleep(3)  # SGLang aborts a disconnected stream's request on its next output
        state = live.settle_and_flush(url, timeout_s=min(60, max(5, deadline.left() - 10)))
        raw["kv"]["checks"].append({"after": f"{disconnects} mid-stream disconnects", "free": state and state["free"],
                                    "state": state})
        print(f"[disconnect] {res} -> {state}", flush=True)


# -------------------------------------------------------------------------------------- servers


def make_checkpoints(out_dir: Path, layers: int) -> dict[str, Path]:
    paths = {"tiny": out_dir / "tiny", "tiny_vl": out_dir / "tiny-vl", "rank8": out_dir / "rank8-model"}
    runs = {"tiny": [], "tiny_vl": ["--vision"], "rank8": ["--preset", "rank8", "--layers", str(layers)]}
    for name, extra in runs.items():
        if not (paths[name] / "config.json").exists():
            subprocess.run([sys.executable, "-m", "sglang_msa_tools.tiny_m3", str(paths[name]), *extra], check=True,
                           cwd=ROOT)  # sglang_msa_tools: the clone's, not in the wheel
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--phases", default="vanilla,vl,load,corpus")
    ap.add_argument("--load", default="64x32768,8x262144", help="concurrency x prompt tokens, comma list")
    ap.add_argument("--disconnects", type=int, default=8)
    ap.add_argument("--disconnect-len", type=int, default=16384)
    ap.add_argument("--layers", type=int, default=4, help="rank8 depth of the main server")
    ap.add_argument("--mem-fraction", type=float, default=0.9)
    ap.add_argument("--context-length", type=int, default=MAIN_CONTEXT)
    ap.add_argument("--cuda-graph", action="store_true", help="keep CUDA graphs on the main server (slower start)")
    ap.add_argument("--ckpt-dir", type=Path, default=None, help="where the checkpoints go (default: --out-dir)")
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--health-timeout", type=float, default=300)
    ap.add_argument("--deadline-s", type=float, default=540)
    ap.add_argument("--url", default="", help="main server already running (no start/stop)")
    ap.add_argument("--vl-url", default="", help="M3-VL server already running")
    ap.add_argument("--vocab", type=int, default=0, help="vocab size of --url's model (default: read /model_info)")
    ap.add_argument("--external", type=Path, default=None, help="JSON with tp_sizes_equal_to_intree, "
                    "logprob_gap_vs_fp32_ours_over_intree")
    ap.add_argument("--merge", type=Path, default=None, help="a previous results file of other phases (e.g. "
                    "vanilla,vl) whose records this run extends, for a run split over two device calls")
    ap.add_argument("--card", default="", help="card name (default: torch.cuda.get_device_name)")
    args = ap.parse_args(argv)
    deadline = Deadline(args.deadline_s)
    phases = set(filter(None, args.phases.split(",")))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    card = args.card or _card()
    raw = {"card": card, "command": " ".join(sys.argv), "phases": sorted(phases), "vanilla": {}, "corpus": [],
           "load": [], "disconnect": None, "kv": None, "server_exits": 0, "servers": {}, "notes": [],
           "features": results.load_features(), "external": _read_external(args.external)}
    if args.merge is not None:
        prev = json.loads(args.merge.read_text())
        for key in ("vanilla", "corpus", "load", "disconnect", "kv", "server_exits", "notes", "servers"):
            if prev.get(key):
                raw[key] = prev[key]
        raw["merged_from"] = str(args.merge)
    try:
        _run(args, phases, deadline, raw)
    finally:
        path = results.write(raw, args.out_dir)
        s = raw["summary"]
        print(json.dumps({k: s[k] for k in (*results.SUMMARY_KEYS, "targets")}, indent=1, default=str))
        print(f"wrote {path}")
    return 0


def _run(args, phases, deadline: Deadline, raw: dict) -> None:
    from benchmarks.servers import Server

    needs_servers = not args.url or ("vl" in phases and not args.vl_url) or "vanilla" in phases
    ckpt = make_checkpoints(args.ckpt_dir or args.out_dir, args.layers) if needs_servers else {}
    logs = args.out_dir / "logs"
    media = corpus_mod.load_media() if "vl" in phases else None

    def start(name, model, flags, env=None, tokenizer=True):
        s = Server(name, args.port, ["--model-path", str(model), *flags], env=env or {}, tokenizer=tokenizer)
        s.start(logs)
        ok = s.wait_healthy(min(args.health_timeout, max(5, deadline.left() - 30)))
        raw["servers"].setdefault(name, {"args": s.args, "env": s.env})["ready_s"] = s.ready_s
        if not ok:
            raw["notes"].append(f"{name}: not healthy\n{s.tail(40)}")
            if s.proc is not None and s.proc.poll() is not None:
                raw["server_exits"] += 1
            s.stop()
            return None
        return s

    def stop(s):
        died = s.proc is not None and s.proc.poll() is not None
        s.stop()
        raw["servers"][s.name]["sglang_msa_log"] = s.plugin_lines()
        raw["servers"][s.name]["log_tail"] = s.tail(30)
        return died

    # vanilla: plugin installed, no msa flag
    if "vanilla" in phases and deadline.left() > 120:
        s = start("vanilla", ckpt["tiny"], ["--mem-fraction-static", "0.5", "--disable-cuda-graph"],
                  env={"SGLANG_MSA_DISABLE": "0"})
        if s is not None:
            info, ok = live.get_json(s.url, "/server_info"), live.probe(s.url)
            stop(s)
            text = s.log_path.read_text(errors="replace") if s.log_path else ""
            raw["vanilla"] = vanilla_verdict(text, info, True, ok)
        else:
            raw["vanilla"] = {"unchanged": False, "healthy": False}
        print(f"[vanilla] {raw['vanilla']}", flush=True)

    # M3-VL cases on the tiny VL checkpoint with our processor
    if "vl" in phases and media is not None:
        vl_server = None
        if args.vl_url:
            url = args.vl_url
        elif deadline.left() > 150:
            vl_server = start("vl", ckpt["tiny_vl"], ["--attention-backend", "msa", "--mem-fraction-static", "0.3",
                                                      "--disable-cuda-graph"],
                              env={"SGLANG_MSA_SMG_LIMITS": corpus_mod.SMG_LIMITS_ENV})
            url = vl_server.url if vl_server else None
        else:
            url = None
        if url:
            info = live.get_json(url, "/model_info") or {}
            vocab = _vocab(url, 0)
            cases = [c for c in corpus_mod.build_corpus(corpus_mod.Context(vocab, _context(url) or 65536, media))
                     if c.target == "vl"]
            run_corpus(url, cases, raw, server=vl_server, deadline=deadline)
            raw["vl_model"] = info.get("model_path")
            if vl_server is not None and stop(vl_server):
                raw["server_exits"] += 1
        else:
            raw["notes"].append("vl: skipped (no server / deadline)")
    elif "vl" in phases:
        raw["notes"].append("vl: skipped (no media: no ffmpeg CLI and no media.tar.gz)")

    # main server: load, KV leak, disconnects, text corpus
    if not ({"load", "corpus"} & phases):
        return
    main_flags = ["--load-format", "dummy", "--attention-backend", "msa", "--context-length", str(args.context_length),
                  "--mem-fraction-static", str(args.mem_fraction), "--chunked-prefill-size", "16384",
                  "--max-running-requests", "64", *([] if args.cuda_graph else ["--disable-cuda-graph"])]
    server = None
    if args.url:
        url = args.url
    else:
        if deadline.left() < 150:
            raw["notes"].append("main: skipped (deadline)")
            return
        server = start("main", ckpt["rank8"], main_flags)
        if server is None:
            return
        url = server.url
    vocab = _vocab(url, args.vocab)
    context = _context(url) or args.context_length
    raw["main"] = {"vocab": vocab, "context_length": context, "url": url}
    try:
        if "load" in phases:
            run_load_and_leak(url, parse_load(args.load), vocab, raw, deadline, args.disconnects, args.disconnect_len)
            if server is not None and server.proc.poll() is not None:
                raw["server_exits"] += 1
                raw["notes"].append("main server exited during load")
                server = start("main-restart", ckpt["rank8"], main_flags) if deadline.left() > 150 else None
                url = server.url if server else None
        if "corpus" in phases and url:
            cases = [c for c in corpus_mod.build_corpus(corpus_mod.Context(vocab, context, None)) if c.target == "text"]
            cases.sort(key=lambda c: c.needs_model)  # the ones that may crash the server last

            def restart():
                nonlocal server
                if args.url or deadline.left() < 150:
                    return None
                server.stop()
                server = start("main-restart", ckpt["rank8"], main_flags)
                return server

            n_exits = raw["server_exits"]
            run_corpus(url, cases, raw, server=server, restart=restart, deadline=deadline)
            if raw.get("kv") and raw["server_exits"] == n_exits and deadline.left() > 15:
                # rejected requests must not hold KV either (same server, so same baseline)
                state = live.settle_and_flush(url, timeout_s=min(30, max(5, deadline.left() - 10)))
                raw["kv"]["checks"].append({"after": "corpus", "free": state and state["free"], "state": state})
    finally:
        if server is not None:
            stop(server)


def _vocab(url: str, given: int) -> int:
    if given:
        return given
    info = live.get_json(url, "/server_info") or {}
    for key in ("vocab_size",):
        if info.get(key):
            return int(info[key])
    tok = live.get_json(url, "/model_info") or {}
    path = tok.get("model_path")
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
        return int(cfg.get("vocab_size") or cfg["text_config"]["vocab_size"])
    except (OSError, KeyError, TypeError, ValueError):
        return 200064  # MiniMax-M3's


def _context(url: str) -> int | None:
    info = live.get_json(url, "/server_info") or {}
    v = info.get("context_length")
    return int(v) if v else None


def _read_external(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    data = data.get("summary", data)
    return {k: data.get(k) for k in ("tp_sizes_equal_to_intree", "logprob_gap_vs_fp32_ours_over_intree")}


def _card() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
