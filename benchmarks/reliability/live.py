"""Client side of the live-server checks (stdlib only, bounded timeouts everywhere): send corpus
cases, probe, read free KV tokens, flush the cache, run concurrent long requests, and open
streaming requests that disconnect after their first chunk."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from benchmarks.reliability.inprocess import PROBE, error_message


def _split(url: str) -> tuple[str, int]:
    u = urllib.parse.urlparse(url)
    return u.hostname or "127.0.0.1", u.port or 80


def request(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 60.0) -> tuple[int | None, bytes, str | None]:
    """(status, body, transport error): one HTTP exchange on a fresh connection."""
    host, port = _split(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), None
    except (OSError, http.client.HTTPException) as exc:
        return None, b"", f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def get_json(url: str, path: str, timeout: float = 20.0):
    status, raw, err = request(url, "GET", path, timeout=timeout)
    if status != 200:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def probe(url: str, timeout: float = 60.0) -> bool:
    """A small valid request: True when it is answered 200 with output."""
    status, raw, _ = request(url, "POST", "/generate", json.dumps(PROBE).encode(),
                             {"Content-Type": "application/json"}, timeout)
    if status != 200:
        return False
    try:
        body = json.loads(raw)
    except ValueError:
        return False
    body = body[0] if isinstance(body, list) and body else body
    return isinstance(body, dict) and (body.get("meta_info") or {}).get("finish_reason", {}).get("type") != "abort"


def send_case(url: str, case, timeout: float = 120.0) -> dict:
    status, raw, err = request(url, case.method, case.path, case.body, case.headers, timeout)
    return {"name": case.name, "status": status, "message": error_message(status or 0, raw) if status else err,
            "transport_error": err}


def kv_state(url: str) -> dict | None:
    """Free KV tokens from SGLang's own load report. ``/v1/loads`` gives ``max_total_num_tokens`` and
    ``num_used_tokens`` (pool size minus free minus evictable radix-cache tokens, per the scheduler's
    pool-stats observer); after ``/flush_cache`` the radix cache holds nothing, so ``free = max_total -
    used`` is what the allocator has. Falls back to the legacy ``/get_load`` (``num_tokens -
    num_pending_tokens`` = used) with ``max_total_num_tokens`` from ``/server_info``."""
    loads = get_json(url, "/v1/loads?include=core")
    if isinstance(loads, dict) and loads.get("loads"):
        ranks = loads["loads"]
        total = sum(int(r.get("max_total_num_tokens", 0)) for r in ranks)
        used = sum(int(r.get("num_used_tokens", 0)) for r in ranks)
        return {"source": "/v1/loads", "max_total": total, "used": used, "free": total - used,
                "running": sum(int(r.get("num_running_reqs", 0)) for r in ranks),
                "waiting": sum(int(r.get("num_waiting_reqs", 0)) for r in ranks)}
    legacy = get_json(url, "/get_load")
    info = get_json(url, "/server_info") or {}
    if isinstance(legacy, list) and legacy and info.get("max_total_num_tokens") is not None:
        used = sum(int(r["num_tokens"]) - int(r["num_pending_tokens"]) for r in legacy)
        total = int(info["max_total_num_tokens"])
        return {"source": "/get_load", "max_total": total, "used": used, "free": total - used,
                "running": sum(int(r.get("num_reqs", 0)) for r in legacy), "waiting": 0}
    return None


def settle_and_flush(url: str, timeout_s: float = 60.0) -> dict | None:
    """Wait until nothing runs or waits, flush the radix cache (SGLang refuses while busy), and
    return :func:`kv_state` afterwards. Bounded by ``timeout_s``."""
    deadline = time.time() + timeout_s
    state = None
    while time.time() < deadline:
        state = kv_state(url)
        if state is not None and state["running"] == 0 and state["waiting"] == 0:
            status, _, _ = request(url, "POST", "/flush_cache", b"", timeout=20)
            if status == 200:
                time.sleep(0.5)
                return kv_state(url)
        time.sleep(1.0)
    return state


def random_ids(n: int, vocab: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    hi = max(20, vocab - 10)
    return [rng.randrange(10, hi) for _ in range(n)]


def _generate_ok(url: str, ids: list[int], max_new_tokens: int, timeout: float) -> tuple[bool, str]:
    body = json.dumps({"input_ids": ids, "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0.0,
                                                             "ignore_eos": True}}).encode()
    status, raw, err = request(url, "POST", "/generate", body, {"Content-Type": "application/json"}, timeout)
    if status != 200:
        return False, err or f"HTTP {status}: {error_message(status or 0, raw)[:300]}"
    try:
        out = json.loads(raw)
    except ValueError:
        return False, "non-JSON 200"
    finish = (out.get("meta_info") or {}).get("finish_reason") or {}
    if finish.get("type") == "abort":
        return False, f"aborted: {finish.get('message')}"
    got = len(out.get("output_ids") or []) or (out.get("meta_info") or {}).get("completion_tokens", 0)
    if got != max_new_tokens:
        return False, f"{got} of {max_new_tokens} tokens"
    return True, ""


def run_load(url: str, concurrency: int, input_len: int, vocab: int, *, max_new_tokens: int = 8,
             timeout_s: float = 300.0, seed: int = 0) -> dict:
    """``concurrency`` requests of ``input_len`` random token ids, all sent at once."""
    prompts = [random_ids(input_len, vocab, seed * 100003 + i) for i in range(concurrency)]
    t0 = time.time()
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda ids: _generate_ok(url, ids, max_new_tokens, timeout_s), prompts))
    ok = sum(1 for r, _ in results if r)
    errors = [e for r, e in results if not r]
    return {"concurrency": concurrency, "input_len": input_len, "max_new_tokens": max_new_tokens, "sent": concurrency,
            "ok": ok, "failed": concurrency - ok, "errors": sorted(set(errors))[:10], "wall_s": time.time() - t0}


def disconnecting_clients(url: str, count: int, input_len: int, vocab: int, *, max_new_tokens: int = 4000,
                          timeout_s: float = 120.0, seed: int = 7) -> dict:
    """``count`` streaming requests that each read one chunk and then close their socket."""
    host, port = _split(url)
    got_chunk = [False] * count
    errors: list[str] = []

    def one(i: int) -> None:
        body = json.dumps({"input_ids": random_ids(input_len, vocab, seed * 7919 + i), "stream": True,
                           "sampling_params": {"max_new_tokens": max_new_tokens, "ignore_eos": True,
                                               "temperature": 0.0}}).encode()
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
        try:
            conn.request("POST", "/generate", body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            if r.status != 200:
                errors.append(f"HTTP {r.status}")
                return
            got_chunk[i] = bool(r.fp.readline())  # the first "data: ..." line
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()  # mid-stream: the server must abort the request and free its KV

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + 5)
    return {"opened": count, "first_chunk": sum(got_chunk), "failed": count - sum(got_chunk),
            "errors": sorted(set(errors))[:10]}
