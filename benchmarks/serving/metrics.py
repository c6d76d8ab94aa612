"""Aggregates request results into per-point metrics and A/B summaries (plain Python, no numpy)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Sequence

from .client import RequestResult

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no samples."""
    if not values:
        return None
    xs = sorted(values)
    rank = (len(xs) - 1) * p / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def distribution_ms(values_s: Iterable[float]) -> dict[str, float | None]:
    """mean/p50/p90/p99 in milliseconds of samples given in seconds."""
    ms = [v * 1000.0 for v in values_s]
    out: dict[str, float | None] = {"mean": (sum(ms) / len(ms)) if ms else None}
    for p in PERCENTILES:
        out[f"p{p}"] = percentile(ms, p)
    out["count"] = len(ms)
    return out


def point_metrics(results: list[RequestResult], duration_s: float) -> dict[str, Any]:
    """Metrics of the measured requests of one (server, workload, concurrency) point."""
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens if r.prompt_tokens is not None else r.prompt_len for r in ok)
    dur = max(duration_s, 1e-9)
    errors = Counter(r.error_kind for r in failed)
    sources = Counter(r.token_source for r in ok)
    return {
        "completed": len(ok),
        "failed": len(failed),
        "duration_s": duration_s,
        "input_tokens": in_tokens,
        "output_tokens": out_tokens,
        "request_throughput": len(ok) / dur,
        "output_throughput": out_tokens / dur,
        "total_token_throughput": (in_tokens + out_tokens) / dur,
        "ttft_ms": distribution_ms(r.ttft for r in ok if r.ttft is not None),
        "tpot_ms": distribution_ms(t for t in (r.tpot for r in ok) if t is not None),
        "itl_ms": distribution_ms(g for r in ok for g in r.itl),
        "e2e_latency_ms": distribution_ms(r.latency for r in ok if r.latency is not None),
        # ok requests that did not produce the requested number of tokens (ignore_eos was not honoured)
        "short_outputs": sum(1 for r in ok if r.output_tokens != r.expected_output_tokens),
        "cached_tokens": sum(r.cached_tokens or 0 for r in ok),
        "token_sources": dict(sources),
        "errors": dict(errors),
        "error_samples": [r.error for r in failed[:5]],
    }


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0 or num < 0:
        return None
    return num / den


def compare(points: list[dict[str, Any]], baseline: str, candidate: str) -> dict[str, Any]:
    """Candidate-vs-baseline ratios; every ratio is oriented so that > 1 means the candidate is better.

    ``output_throughput_ratio`` = candidate / baseline per point; ``ttft_p50_ratio`` = baseline /
    candidate TTFT p50 per workload at its lowest concurrency (a pure prefill-latency comparison, where
    queueing does not blur it), with every point's value in ``ttft_p50_ratio_by_point``.
    """
    by_key: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for pt in points:
        by_key.setdefault((pt["workload"], pt["concurrency"]), {})[pt["server"]] = pt
    per_point = []
    for (workload, conc), servers in by_key.items():
        a, b = servers.get(baseline), servers.get(candidate)
        if a is None or b is None:
            continue
        per_point.append({
            "workload": workload,
            "concurrency": conc,
            "output_throughput_ratio": _ratio(b["output_throughput"], a["output_throughput"]),
            "request_throughput_ratio": _ratio(b["request_throughput"], a["request_throughput"]),
            "ttft_p50_ratio": _ratio(a["ttft_ms"]["p50"], b["ttft_ms"]["p50"]),
            "itl_p50_ratio": _ratio(a["itl_ms"]["p50"], b["itl_ms"]["p50"]),
            "tpot_mean_ratio": _ratio(a["tpot_ms"]["mean"], b["tpot_ms"]["mean"]),
        })
    tput = [p["output_throughput_ratio"] for p in per_point if p["output_throughput_ratio"] is not None]
    ttft_by_workload: dict[str, float | None] = {}
    for workload in dict.fromkeys(p["workload"] for p in per_point):
        lowest = min((p for p in per_point if p["workload"] == workload), key=lambda p: p["concurrency"])
        ttft_by_workload[workload] = lowest["ttft_p50_ratio"]
    return {
        "baseline": baseline,
        "candidate": candidate,
        "min_output_throughput_ratio": min(tput) if tput else None,
        "max_output_throughput_ratio": max(tput) if tput else None,
        "geomean_output_throughput_ratio": math.exp(sum(map(math.log, tput)) / len(tput)) if tput else None,
        "ttft_p50_ratio": ttft_by_workload,
        "points": per_point,
    }
