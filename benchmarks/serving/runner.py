"""Runs the sweep: for every workload and concurrency, each server in turn (A, B, A, B, ...), so slow
drift of the machine (clocks, thermals, other tenants) hits all servers alike."""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import aiohttp

from .client import ENDPOINTS, RequestOptions, RequestResult, send_request
from .metrics import point_metrics
from .workload import BenchRequest


@dataclass
class SweepConfig:
    servers: dict[str, str]  # name -> base URL, in order (first is the baseline)
    workloads: Sequence[Any]  # RandomWorkload / JsonlWorkload
    concurrencies: Sequence[int]
    num_requests: Callable[[int], int]  # concurrency -> measured requests per point
    warmup: int = 0  # requests per point and server, run before and excluded from the metrics
    options: RequestOptions = field(default_factory=RequestOptions)
    flush_cache: bool = False  # POST /flush_cache before every point (SGLang)
    progress: bool = True
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)
    deadline: float | None = None  # time.time() after which no new point starts (the rest are skipped)
    on_point: Callable[[list[dict[str, Any]]], None] | None = None  # called after every point (partial saves)


class _Progress:
    """tqdm when importable, else a line per point."""

    def __init__(self, total: int, enabled: bool, log: Callable[[str], None]):
        self._bar = None
        self._log = log
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, unit="req", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description(text)

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            self._log(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


async def run_batch(base_url: str, requests: list[BenchRequest], concurrency: int, opts: RequestOptions,
                    on_done: Callable[[], None] = lambda: None) -> tuple[list[RequestResult], float]:
    """Sends ``requests`` with at most ``concurrency`` in flight; returns results (in request order)
    and the wall time from the first send to the last completion."""
    results: list[RequestResult | None] = [None] * len(requests)
    next_index = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while next_index < len(requests):  # each request is taken once, so this ends
            i = next_index
            next_index += 1
            results[i] = await send_request(session, base_url, requests[i], opts)
            on_done()

    if not requests:
        return [], 0.0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(min(concurrency, len(requests)))))
        duration = time.perf_counter() - t0
    return results, duration  # type: ignore[return-value]


async def _post_quietly(url: str, timeout: float) -> str | None:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.post(url) as r:
                return None if r.status == 200 else f"HTTP {r.status}"
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        return f"{type(e).__name__}: {e}"


async def resolve_model(base_url: str, timeout: float = 10.0) -> str | None:
    """The first model id that ``/v1/models`` lists, or None."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.get(base_url + "/v1/models") as r:
                if r.status != 200:
                    return None
                data = (await r.json(content_type=None)).get("data") or []
                return data[0].get("id") if data else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, AttributeError):
        return None


async def wait_ready(base_url: str, seconds: float) -> bool:
    """Polls ``/health`` until it answers 200 or ``seconds`` pass (bounded by the deadline)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
                async with s.get(base_url + "/health") as r:
                    if r.status == 200:
                        return True
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def _outcome(results: list[RequestResult]) -> tuple[int, dict[str, int]]:
    failed: dict[str, int] = {}
    for r in results:
        if not r.ok:
            failed[r.error_kind or "?"] = failed.get(r.error_kind or "?", 0) + 1
    return sum(failed.values()), failed


async def run_sweep(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Returns one record per (workload, concurrency, server), in the order they ran."""
    plan = [(w, c) for w in cfg.workloads for c in cfg.concurrencies]
    total = sum((cfg.num_requests(c) + cfg.warmup) * len(cfg.servers) for _, c in plan)
    progress = _Progress(total, cfg.progress, cfg.log)
    points: list[dict[str, Any]] = []
    opts = cfg.options
    try:
        for index, (workload, conc) in enumerate(plan):
            if cfg.deadline is not None and time.time() > cfg.deadline:
                skipped = [f"{w.label} c={c}" for w, c in plan[index:]]
                cfg.log(f"deadline reached: {len(skipped)} point(s) not run: {', '.join(skipped)}")
                break
            n = cfg.num_requests(conc)
            # Same prompts for every server at this point; distinct prompts across points.
            warm = workload.requests(cfg.warmup, f"c{conc}/p{index}/warmup") if cfg.warmup else []
            measured = workload.requests(n, f"c{conc}/p{index}/measure")
            for name, url in cfg.servers.items():
                progress.describe(f"{name} {workload.label} c={conc}")
                if cfg.flush_cache:
                    err = await _post_quietly(url + "/flush_cache", 30.0)
                    if err:
                        progress.write(f"warning: {name}: /flush_cache failed: {err}")
                warm_results, _ = await run_batch(url, warm, min(conc, max(1, len(warm))), opts, progress.update)
                results, duration = await run_batch(url, measured, conc, opts, progress.update)
                metrics = point_metrics(results, duration)
                warm_failed, warm_kinds = _outcome(warm_results)
                points.append({
                    "server": name,
                    "url": url,
                    "endpoint": ENDPOINTS[opts.backend],
                    "workload": workload.label,
                    "input_len": workload.input_len,
                    "output_len": getattr(workload, "output_len", None),
                    "concurrency": conc,
                    "num_requests": n,
                    "warmup_requests": len(warm),
                    "warmup_failed": warm_failed,
                    "warmup_errors": warm_kinds,
                    "warmup_error_samples": [r.error for r in warm_results if not r.ok][:5],
                    "started_at": time.time() - duration,
                    **metrics,
                })
                progress.write(
                    f"{name:>6} {workload.label:>8} c={conc:<4} {metrics['completed']}/{n} ok"
                    f"  out {metrics['output_throughput']:9.1f} tok/s"
                    f"  ttft p50 {_fmt(metrics['ttft_ms']['p50'])} ms  itl p50 {_fmt(metrics['itl_ms']['p50'])} ms"
                    + (f"  FAILED {metrics['failed']} {metrics['errors']}" if metrics["failed"] else "")
                    + (f"  warm-up FAILED {warm_failed}" if warm_failed else "")
                )
                if cfg.on_point is not None:
                    cfg.on_point(points)
    finally:
        progress.close()
    return points


def _fmt(x: float | None) -> str:
    return "   -" if x is None else f"{x:7.1f}"
