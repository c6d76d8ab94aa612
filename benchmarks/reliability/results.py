"""The results file of ``benchmarks/reliability.py``: ``reliability-<card>-<date>.json`` and its
``summary`` (the keys issue #14 names), computed from the raw records by :func:`summarize`."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

SUMMARY_KEYS = ("card", "vanilla_unchanged", "concurrent_long_requests", "failed_requests", "kv_leak_tokens",
                "malformed_requests_tried", "malformed_requests_4xx", "server_crashes", "features",
                "tp_sizes_equal_to_intree", "logprob_gap_vs_fp32_ours_over_intree")

# Issue #14's targets: key -> (test, description).
TARGETS = {
    "vanilla_unchanged": (lambda v: v is True, "true"),
    "failed_requests": (lambda v: v == 0, "0"),
    "kv_leak_tokens": (lambda v: v == 0, "0"),
    "server_crashes": (lambda v: v == 0, "0"),
    "malformed_requests_tried": (lambda v: v >= 30, ">= 30"),
    "concurrent_long_requests": (lambda v: v >= 64, ">= 64"),
}


def answered_4xx(entry: dict) -> bool:
    """A corpus answer counts when its status is 4xx and it says why (a non-empty message)."""
    status = entry.get("status")
    return isinstance(status, int) and 400 <= status < 500 and bool((entry.get("message") or "").strip())


def summarize(raw: dict) -> dict:
    """``raw``: ``card``, ``vanilla`` ({unchanged: bool|None, ...}), ``corpus`` (list of {name, status,
    message, probe_ok, crashed}), ``load`` (list of {concurrency, input_len, sent, ok, failed}),
    ``disconnect`` ({opened, ...}), ``kv`` ({baseline_free, checks: [{after, free}]}),
    ``server_exits`` (int), ``features``, ``external`` (optional measurements of other scripts)."""
    corpus = [c for c in raw.get("corpus", []) if not c.get("skipped")]
    load = raw.get("load", [])
    kv = raw.get("kv") or {}
    base = kv.get("baseline_free")
    frees = [c["free"] for c in kv.get("checks", []) if c.get("free") is not None]
    leak = max(base - f for f in frees) if base is not None and frees else None
    complete = [g["concurrency"] for g in load if g.get("sent") == g.get("concurrency") and g.get("failed") == 0]
    failed = (sum(g.get("failed", 0) for g in load) + sum(1 for c in corpus if c.get("probe_ok") is False)
              + (raw.get("disconnect") or {}).get("failed", 0))
    external = raw.get("external") or {}
    s = {
        "card": raw.get("card"),
        "vanilla_unchanged": (raw.get("vanilla") or {}).get("unchanged"),
        "concurrent_long_requests": max(complete, default=0),
        "failed_requests": failed,
        "kv_leak_tokens": leak,
        "malformed_requests_tried": len(corpus),
        "malformed_requests_4xx": sum(1 for c in corpus if answered_4xx(c)),
        "server_crashes": int(raw.get("server_exits", 0)),
        "features": raw.get("features"),
        "tp_sizes_equal_to_intree": external.get("tp_sizes_equal_to_intree"),
        "logprob_gap_vs_fp32_ours_over_intree": external.get("logprob_gap_vs_fp32_ours_over_intree"),
    }
    s["malformed_not_4xx"] = [{"name": c["name"], "status": c.get("status"), "message": (c.get("message") or "")[:200],
                               "expected_status": c.get("expected_status"), "verdict": c.get("verdict", "")}
                              for c in corpus if not answered_4xx(c)]
    # Answers other than the corpus entry expects (a known SGLang non-4xx that changed, or a new one).
    s["malformed_unexpected"] = [e["name"] for e in s["malformed_not_4xx"]
                                 if e["expected_status"] in (None, "4xx") or e["status"] != e["expected_status"]]
    s["malformed_not_4xx_by_owner"] = {
        owner: sorted(e["name"] for e in s["malformed_not_4xx"] if (e["verdict"] or "").startswith(owner))
        for owner in ("sglang", "ours")}
    s["load_by_length"] = {f"{g['concurrency']}x{g['input_len']}": {"ok": g.get("ok"), "failed": g.get("failed")}
                           for g in load}
    met = {k: (None if s[k] is None else bool(test(s[k]))) for k, (test, _) in TARGETS.items()}
    met["all_malformed_4xx"] = s["malformed_requests_4xx"] == s["malformed_requests_tried"] if corpus else None
    s["targets"] = {k: {"target": TARGETS[k][1] if k in TARGETS else "all", "met": v} for k, v in met.items()}
    s["notes"] = list(raw.get("notes", []))
    for k in ("tp_sizes_equal_to_intree", "logprob_gap_vs_fp32_ours_over_intree"):
        if s[k] is None:
            s["notes"].append(f"{k}: not measured by this script (pass --external JSON from the TP / logprob runs)")
    if s["features"] is None:
        s["notes"].append("features: sglang_msa.backend.features not importable here")
    return s


def write(raw: dict, out_dir: Path) -> Path:
    """Write ``reliability-<card>-<date>.json`` (raw records + ``summary``, also set on ``raw``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    raw.setdefault("date", date.today().isoformat())
    raw["summary"] = summarize(raw)
    card = str(raw.get("card") or "unknown").replace(" ", "-").replace("/", "-")
    path = out_dir / f"reliability-{card}-{raw['date']}.json"
    path.write_text(json.dumps(raw, indent=1, default=str))
    return path


def load_features() -> dict | None:
    """Feature -> "supported" / "rejected" from ``sglang_msa.backend.features`` if that module exists
    (a ``FEATURES`` mapping, or a ``features()`` / ``feature_matrix()`` function); None otherwise."""
    try:
        import importlib

        mod = importlib.import_module("sglang_msa.backend.features")
    except Exception:  # noqa: BLE001 - optional module
        return None
    for name in ("FEATURES", "features", "feature_matrix", "FEATURE_MATRIX"):
        obj = getattr(mod, name, None)
        try:
            value = obj() if callable(obj) else obj
        except Exception:  # noqa: BLE001
            continue
        if isinstance(value, dict):
            return {str(k): (v if isinstance(v, str) else getattr(v, "status", str(v))) for k, v in value.items()}
    return None
