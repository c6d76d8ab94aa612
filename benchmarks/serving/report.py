"""Side-by-side table, the JSON document and PNG plots of a sweep."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .metrics import compare

SCHEMA = "sglang-msa.bench_serving/1"


def summarize(points: list[dict[str, Any]], servers: list[str], meta: dict[str, Any]) -> dict[str, Any]:
    """The ``summary`` object: first server = baseline A, second = candidate B (ratios are B vs A;
    ``comparisons`` holds every other server against A as well)."""
    comparisons = [compare(points, servers[0], other) for other in servers[1:]]
    head = comparisons[0] if comparisons else compare([], servers[0], servers[0])
    failed = sum(p["failed"] + p["warmup_failed"] for p in points)
    summary: dict[str, Any] = {
        "card": None,
        "command": None,
        "date": None,
        "versions": {},
        "baseline": servers[0],
        "candidate": servers[1] if len(servers) > 1 else None,
        "min_output_throughput_ratio": head["min_output_throughput_ratio"],
        "max_output_throughput_ratio": head["max_output_throughput_ratio"],
        "geomean_output_throughput_ratio": head["geomean_output_throughput_ratio"],
        "ttft_p50_ratio": head["ttft_p50_ratio"],
        "failed_requests": failed,
        "failed_measured_requests": sum(p["failed"] for p in points),
        "failed_warmup_requests": sum(p["warmup_failed"] for p in points),
        "failed_requests_by_server": {s: sum(p["failed"] + p["warmup_failed"] for p in points if p["server"] == s)
                                      for s in servers},
        "short_outputs": sum(p["short_outputs"] for p in points),
        "comparisons": comparisons,
    }
    for key, value in meta.items():  # --meta key=value; "versions.x=y" nests
        if key.startswith("versions."):
            summary["versions"][key.split(".", 1)[1]] = value
        else:
            summary[key] = value
    return summary


def write_json(path: str | Path, config: dict[str, Any], servers: dict[str, str], points: list[dict[str, Any]],
               summary: dict[str, Any]) -> None:
    doc = {"schema": SCHEMA, "config": config, "servers": servers, "points": points, "summary": summary}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")


def _f(x: float | None, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def format_table(points: list[dict[str, Any]], servers: list[str], summary: dict[str, Any]) -> str:
    """One row per (workload, concurrency): each server's numbers, then ratios vs the first server."""
    cols = [("out tok/s", 10), ("req/s", 7), ("TTFT p50", 9), ("TTFT p99", 9), ("ITL p50", 8), ("ITL p99", 8),
            ("fail", 5)]
    head1 = f"{'prompt':>8} {'conc':>5} |"
    head2 = f"{'':>8} {'':>5} |"
    for s in servers:
        width = sum(w + 1 for _, w in cols) - 1
        head1 += f" {s[:width]:^{width}} |"
        head2 += " " + " ".join(f"{c:>{w}}" for c, w in cols) + " |"
    a = servers[0]
    for other in servers[1:]:
        head1 += f" {other + '/' + a:^21} |"
        head2 += f" {'out tok/s':>10} {'TTFT p50':>10} |"
    lines = [head1, head2, "-" * len(head2)]
    by_key: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for p in points:
        by_key.setdefault((p["workload"], p["concurrency"]), {})[p["server"]] = p
    ratios = {(c["candidate"], r["workload"], r["concurrency"]): r
              for c in summary["comparisons"] for r in c["points"]}
    for (workload, conc), row in by_key.items():
        line = f"{workload:>8} {conc:>5} |"
        for s in servers:
            p = row.get(s)
            if p is None:
                line += " " + " ".join(f"{'-':>{w}}" for _, w in cols) + " |"
                continue
            line += (f" {_f(p['output_throughput'], 10)} {_f(p['request_throughput'], 7, 2)}"
                     f" {_f(p['ttft_ms']['p50'], 9)} {_f(p['ttft_ms']['p99'], 9)}"
                     f" {_f(p['itl_ms']['p50'], 8, 2)} {_f(p['itl_ms']['p99'], 8, 2)}"
                     f" {p['failed'] + p['warmup_failed']:>5} |")
        for other in servers[1:]:
            r = ratios.get((other, workload, conc), {})
            line += f" {_f(r.get('output_throughput_ratio'), 9, 3)}x {_f(r.get('ttft_p50_ratio'), 9, 3)}x |"
        lines.append(line)
    lines.append("(ms for TTFT/ITL; ratios > 1 mean the second server is better: out tok/s = B/A, TTFT = A/B)")
    if len(servers) > 1:
        lines.append(
            f"{servers[1]}/{a} output throughput: min {_f(summary['min_output_throughput_ratio'], 0, 3)}x"
            f"  max {_f(summary['max_output_throughput_ratio'], 0, 3)}x"
            f"  geomean {_f(summary['geomean_output_throughput_ratio'], 0, 3)}x")
    lines.append(f"failed requests: {summary['failed_requests']}"
                 + (f" {summary['failed_requests_by_server']}" if summary["failed_requests"] else ""))
    return "\n".join(lines)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def save_plots(points: list[dict[str, Any]], servers: list[str], plot_dir: str | Path) -> list[Path]:
    """Throughput, TTFT and ITL percentiles vs concurrency, one PNG each per workload.
    Raises ImportError when matplotlib is missing (the caller warns and goes on)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    workloads = list(dict.fromkeys(p["workload"] for p in points))
    styles = {"p50": "-", "p90": "--", "p99": ":"}
    for workload in workloads:
        pts = [p for p in points if p["workload"] == workload]

        def series(server: str, getter):
            rows = sorted((p for p in pts if p["server"] == server), key=lambda p: p["concurrency"])
            return [p["concurrency"] for p in rows], [getter(p) for p in rows]

        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        for ax, key, title in ((axes[0], "output_throughput", "output"), (axes[1], "total_token_throughput", "total")):
            for i, s in enumerate(servers):
                x, y = series(s, lambda p: p[key])
                ax.plot(x, y, marker="o", color=f"C{i}", label=s)
            ax.set(xlabel="concurrency", ylabel="tokens / s", title=f"{title} throughput, prompt {workload}")
            ax.set_ylim(bottom=0)
            _concurrency_axis(ax, pts)
            ax.legend()
        written.append(_save(fig, plot_dir / f"throughput_{_safe(workload)}.png", plt))

        for metric, title in (("ttft_ms", "TTFT"), ("itl_ms", "ITL")):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for i, s in enumerate(servers):
                for q, ls in styles.items():
                    x, y = series(s, lambda p: p[metric][q])
                    ax.plot(x, [float("nan") if v is None else v for v in y], marker="o", linestyle=ls,
                            color=f"C{i}", label=f"{s} {q}")
            ax.set(xlabel="concurrency", ylabel="ms", title=f"{title} percentiles, prompt {workload}")
            _concurrency_axis(ax, pts)
            ax.legend(ncol=len(servers))
            written.append(_save(fig, plot_dir / f"{metric.split('_')[0]}_{_safe(workload)}.png", plt))
    return written


def _concurrency_axis(ax, pts: list[dict[str, Any]]) -> None:
    concs = sorted({p["concurrency"] for p in pts})
    ax.set_xscale("log", base=2)
    ax.set_xticks(concs, [str(c) for c in concs])
    ax.minorticks_off()
    ax.grid(True, alpha=0.3)


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
