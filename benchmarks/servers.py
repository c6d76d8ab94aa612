"""Start, health-check and stop SGLang servers for the GPU scripts (loopback only, bounded waits)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"

# Flags that fit the GPU bundle: no FA3/FlashInfer sampling, no grammar backend. Token-id clients also
# skip the tokenizer (``Server(tokenizer=False)``); chat and multimodal requests need it.
BASE_FLAGS = ["--sampling-backend", "pytorch", "--grammar-backend", "none", "--log-level", "info"]


@dataclass
class Server:
    name: str
    port: int
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    tokenizer: bool = False
    log_path: Path | None = None
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    ready_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, log_dir: Path) -> "Server":
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"server-{self.name}.log"
        env = {**os.environ, **self.env}
        cmd = [sys.executable, "-m", "sglang.launch_server", "--host", HOST, "--port", str(self.port),
               *BASE_FLAGS, *([] if self.tokenizer else ["--skip-tokenizer-init"]), *self.args]
        self.log_path.write_text("$ " + " ".join(cmd) + "\n")
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self.started_at = time.time()
        return self

    def adopt(self, pid: int, log_path: Path, started_at: float) -> "Server":
        """Take over a server that an earlier command on this machine started and left running (its own
        process session outlives that command): health, logs and stop() work as if started here."""
        self.proc, self.log_path, self.started_at = _Adopted(pid), Path(log_path), started_at
        return self

    def wait_healthy(self, timeout_s: float) -> bool:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        self.ready_s = time.time() - self.started_at
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(2)
        return False

    def wait_log(self, marker: str, timeout_s: float) -> bool:
        """Wait until ``marker`` appears in the server's log; False if it exits or the time runs out."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.log_path is not None and self.log_path.exists() and \
                    marker in self.log_path.read_text(errors="replace"):
                return True
            if self.proc is not None and self.proc.poll() is not None:
                return False
            time.sleep(1)
        return False

    def tail(self, n: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def plugin_lines(self, limit: int = 20) -> list[str]:
        """The log's ``sglang-msa:`` lines: which classes were built, the backend, smg_rs's status."""
        if self.log_path is None or not self.log_path.exists():
            return []
        text = self.log_path.read_text(errors="replace")
        lines = [ln[ln.index("sglang-msa:"):].strip() for ln in text.splitlines() if "sglang-msa:" in ln]
        return list(dict.fromkeys(lines))[:limit]  # one of each (every TP rank logs the same)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class _Adopted:
    """The part of ``subprocess.Popen`` that Server uses, for a process this one did not start."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self) -> int | None:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return -1
        except PermissionError:
            return None
        try:  # a zombie (exited, not yet reaped by its parent) still answers kill(0) but holds nothing
            if Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return -1
        except (OSError, IndexError):
            pass
        return None

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.time() + timeout
        while self.poll() is None:
            if deadline is not None and time.time() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.2)
        return -1


def pool_tokens(log_text: str) -> int | None:
    """The KV pool size a server's log reports (``max_total_num_tokens=N``, SGLang's scheduler line)."""
    m = re.findall(r"max_total_num_tokens=(\d+)", log_text)
    return int(m[-1]) if m else None


def start_all_or_exit(servers, log_dir: Path, timeout_s: float, record: dict, min_pool_tokens: int = 0) -> None:
    """Start every server, wait for each to be healthy (recording args, health, start-up time and KV pool
    size in ``record[name]``); print the log tail and exit with status 2 if one is not, or if its pool
    holds fewer than ``min_pool_tokens`` tokens (servers sharing a GPU size their pools from the memory
    free when each starts: a second server once got 8,960 tokens and refused 22 of 65 prompts, H100,
    2026-12-07)."""
    for s in servers:
        s.start(log_dir)
    for s in servers:
        ok = s.wait_healthy(timeout_s)
        log_text = s.log_path.read_text(errors="replace") if s.log_path and s.log_path.exists() else ""
        pool = pool_tokens(log_text)
        record[s.name] = {"args": s.args, "healthy": ok, "ready_s": s.ready_s, "pool_tokens": pool}
        if not ok:
            print(f"server {s.name} did not become healthy:\n{s.tail()}", flush=True)
            raise SystemExit(2)
        if min_pool_tokens and (pool is None or pool < min_pool_tokens):
            print(f"server {s.name}'s KV pool holds {pool} tokens, fewer than the {min_pool_tokens} the longest "
                  "request needs (give it --max-total-tokens and the memory for it)", flush=True)
            for t in servers:
                t.stop()
            raise SystemExit(2)


def stop_and_record(servers, record: dict, tail_lines: int = 60) -> None:
    """Stop every server, then keep each one's log tail and ``sglang-msa:`` lines in ``record[name]``."""
    for s in servers:
        s.stop()
    for s in servers:
        entry = record.setdefault(s.name, {})
        entry["log_tail"], entry["sglang_msa_log"] = s.tail(tail_lines), s.plugin_lines()


def post_json(url: str, payload: dict, timeout: float = 600.0) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def generate(server: Server, input_ids: list[int], max_new_tokens: int, *, logprobs: bool = True,
             timeout: float = 600.0) -> dict:
    """Greedy /generate with token ids; returns output ids, per-token logprobs, latency."""
    t0 = time.time()
    body = post_json(server.url + "/generate", {
        "input_ids": input_ids,
        "sampling_params": {"temperature": 0.0, "max_new_tokens": max_new_tokens, "ignore_eos": True},
        "return_logprob": logprobs,
    }, timeout=timeout)
    meta = body.get("meta_info", {})
    lps = meta.get("output_token_logprobs") or []
    return {
        "output_ids": body.get("output_ids") or [t[1] for t in lps],
        "logprobs": [t[0] for t in lps],
        "latency_s": time.time() - t0,
        "cached_tokens": meta.get("cached_tokens"),
    }
