"""benchmarks/ab_default.py: workload presets, the results summary, log parsing, and SGLang's own load
generator (``sglang.benchmark.serving``) driven against the fake server."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from benchmarks import ab_default  # noqa: E402
from benchmarks.serving import presets  # noqa: E402
from benchmarks.serving.presets import Point  # noqa: E402


def test_presets_cover_the_issue_workloads():
    w = presets.WORKLOADS
    assert [(p.input_len, p.output_len, p.concurrency) for p in w["cookbook"]] == [(2048, 256, 64)]
    assert {(p.input_len, p.concurrency) for p in w["long"]} == {
        (n, c) for n in (32768, 131072, 262144) for c in (1, 4, 16)}
    assert [(p.input_len, p.output_len, p.concurrency) for p in w["max-context"]] == [(524288, 128, 1)]
    (agentic,) = w["agentic"]
    assert agentic.dataset == "generated-shared-prefix" and agentic.concurrency == 8
    args = agentic.bench_args(seed=3)
    assert args[args.index("--gsp-system-prompt-len") + 1] == "60000"
    assert args[args.index("--gsp-num-groups") + 1] == "1"  # one shared prefix, cached after the first request
    for p in [p for ps in w.values() for p in ps]:
        # At least 16 measured requests, or a note saying why not.
        assert p.num_prompts >= presets.MIN_REQUESTS or p.note, p.key
        assert p.num_prompts >= min(presets.MIN_REQUESTS, 2 * p.concurrency) or p.note, p.key


def test_random_ids_points_send_token_ids_of_exact_length():
    args = Point("long", 131072, 256, 4, 16).bench_args(seed=1)
    assert args[args.index("--dataset-name") + 1] == "random-ids" and "--tokenize-prompt" in args
    assert args[args.index("--random-range-ratio") + 1] == "1.0"
    assert args[args.index("--max-concurrency") + 1] == "4"


def test_select_and_context_length():
    pts = presets.select(["long", "cookbook"], lens=[131072], concurrency=[4])
    assert [p.key for p in pts] == ["long/131072/c4", "cookbook/2048/c64"]
    assert presets.context_length_for(presets.WORKLOADS["max-context"]) >= 524288 + 128
    with pytest.raises(ValueError, match="unknown workload"):
        presets.select(["nope"])


def _rows(tp: dict, ttft: dict, reps=2, completed=None):
    rows = []
    for (server, key), v in tp.items():
        for r in range(reps):
            tput = v * (1 + 0.02 * r)
            rows.append({"server": server, "rep": r, "point": key, "num_prompts": 16, "metrics": {
                "output_throughput": tput, "median_ttft_ms": ttft[(server, key)],
                "completed": 16 if completed is None else completed, "duration": 4096 / tput,
                "total_output_tokens": 4096}})
    return rows


def _points():
    return [ab_default.point_record(p) for p in (Point("cookbook", 2048, 256, 64, 128),
                                                  Point("long", 131072, 256, 1, 16),
                                                  Point("long", 131072, 256, 4, 16))]


def test_summary_uses_the_faster_baseline_per_workload():
    ck, l1, l4 = "cookbook/2048/c64", "long/131072/c1", "long/131072/c4"
    tp = {("A", ck): 1000, ("A2", ck): 1100, ("B", ck): 1210,  # A2 is faster on cookbook
          ("A", l1): 50, ("A2", l1): 40, ("B", l1): 75, ("A", l4): 100, ("A2", l4): 90, ("B", l4): 130}
    ttft = {k: 1000.0 for k in tp} | {("B", l1): 500.0}
    logs = {"card": "H", "A": {"attention_backend": "fa3", "page_size": "128"},
            "B": {"dense_backend": "fa3", "page_size": "128"}}
    s = ab_default.summarize(_rows(tp, ttft), _points(), logs, {"layers": 20, "hidden": 6144})
    assert s["ratio_by_workload"]["cookbook"]["baseline"] == "A2"
    assert s["ratio_by_workload"]["long"]["baseline"] == "A"
    assert s["ratio_by_workload"]["cookbook"]["geomean"] == pytest.approx(1.1)
    assert s["min_output_throughput_ratio"] == pytest.approx(1.1)
    assert s["output_throughput_ratio_128k_by_concurrency"] == pytest.approx({"1": 1.5, "4": 1.3})
    assert s["ttft_p50_ratio_128k"] == pytest.approx(2.0)
    assert (s["a_attention_backend"], s["a_page_size"], s["baseline"]) == ("fa3", "128", "sglang-default")
    assert s["failed_requests"] == 0 and s["points_measured"] == 3 and s["ttft_p50_ratio_512k"] is None
    # All-reduce time added to both sides pulls the ratio towards 1.
    assert 1.0 < s["allreduce_adjusted_ratio_128k"] < s["output_throughput_ratio_128k"]
    spread = s["per_point"][0]["spread"]
    assert spread["B"] == pytest.approx(0.02, rel=0.05)
    t = s["targets"]
    assert t["128k TTFT p50 >= 1.3x lower"]["met"] is True
    assert t["never_slower (min output throughput ratio >= 1.0)"]["met"] is True
    assert t["moonshot long output throughput >= 1.8x"]["met"] is False
    assert t["512k TTFT p50 >= 1.5x lower"]["met"] is None


def test_summary_counts_failures_and_unmeasured_points():
    ck = "cookbook/2048/c64"
    rows = _rows({("A", ck): 100, ("B", ck): 90}, {("A", ck): 1.0, ("B", ck): 1.0}, reps=1, completed=14)
    rows.append({"server": "B", "rep": 0, "point": "long/131072/c1", "num_prompts": 16, "metrics": None})
    s = ab_default.summarize(rows, _points(), {}, {"layers": 20, "hidden": 6144})
    assert s["failed_requests"] == 4  # two short on each server; the unmeasured point is not a failure
    assert s["points_not_measured"] == ["long/131072/c1", "long/131072/c4"]
    assert s["targets"]["never_slower (min output throughput ratio >= 1.0)"]["missed_by"] == pytest.approx(0.1)


def test_read_choices_from_server_logs():
    a = "INFO overrides: MiniMax-M3 on Hopper: attention_backend=fa3, page_size=128 (MSA is SM100-only; ...)"
    b = ("[2026] sglang-msa: dense attention layers on fa3 (SGLang's default for this model on this GPU), "
         "page size 128")
    assert ab_default.read_choices(a) == {"gpu_family": "Hopper", "attention_backend": "fa3", "page_size": "128"}
    assert ab_default.read_choices(b)["dense_backend"] == "fa3" and ab_default.read_choices(b)["page_size"] == "128"


def test_server_commands_differ_only_by_the_compared_flag(tmp_path):
    specs = ab_default.server_specs(tmp_path, 140000, 0.85, [1, 4], 64)
    (a, a_env), (a2, _), (b, b_env) = specs["A"], specs["A2"], specs["B"]
    assert "--attention-backend" not in a and "--page-size" not in a  # SGLang picks them
    assert a2 == a + ["--disable-shared-experts-fusion"] and b == a + ["--attention-backend", "msa"]
    assert a_env["SGLANG_MSA_DISABLE"] == "1" and b_env["SGLANG_MSA_DISABLE"] == "0"


@pytest.mark.sglang
def test_sglang_load_generator_against_fake_server(tmp_path):
    pytest.importorskip("sglang")
    from fake_sglang_server import Behavior, FakeServer

    from sglang_msa_tools import tiny_m3

    model = tmp_path / "m"
    tiny_m3.write_checkpoint(str(model))  # its tokenizer, for SGLang's client
    pts = [Point("cookbook", 64, 12, 4, 8), Point("long", 10 ** 7, 8, 1, 2)]
    with FakeServer(Behavior(ttft=0.05, itl=0.01)) as srv:
        server = type("S", (), {"name": "B", "port": srv.port})()
        res = ab_default.run_points(server, pts, tmp_path / "out", seed=1, deadline=time.time() + 200,
                                    tokenizer=model)
        sent = [r.body for r in srv.received if r.path == "/generate"]
    m = res["cookbook/64/c4"]
    assert m["completed"] == 8 and m["total_output_tokens"] == 8 * 12 and m["max_concurrency"] == 4
    assert m["median_ttft_ms"] >= 50
    assert res["long/10000000/c1"] is None  # cannot finish before the deadline: skipped, not failed
    assert all(len(b["input_ids"]) == 64 for b in sent)  # the warm-up request included
    assert len(sent) == 9


def test_request_cap_keeps_each_point_at_its_concurrency():
    from benchmarks.serving.presets import capped, select

    points = capped(select(["cookbook", "long"], lens=[131072]), 8)
    by_key = {p.key: p for p in points}
    assert by_key["cookbook/2048/c64"].num_prompts == 64  # capped to its concurrency, not to 8
    assert by_key["long/131072/c16"].num_prompts == 16
    assert by_key["long/131072/c1"].num_prompts == 8 and "device-time budget" in by_key["long/131072/c1"].note


def test_kv_pool_holds_every_point_at_once():
    pts = [Point("cookbook", 2048, 256, 64, 128), Point("long", 131072, 256, 1, 4)]
    n = ab_default.kv_tokens_for(pts)
    assert n % 1024 == 0 and n >= 1.1 * 64 * (2048 + 256) and n >= ab_default.context_length_for(pts)
    assert ab_default.kv_tokens_for([Point("long", 524288, 256, 1, 2)]) >= 1.1 * (524288 + 256)
    specs = ab_default.server_specs(Path("/m"), 140000, 0.85, [1], 64, kv_tokens=n)
    assert all(flags[flags.index("--max-total-tokens") + 1] == str(n) for flags, _ in specs.values())


class _StubServer:
    """Stands in for benchmarks.servers.Server: records start order; its KV pool 'appears' at once."""
    log = []

    def __init__(self, name, port, flags, env=None, tokenizer=False):
        self.name, self.port = name, port

    def start(self, log_dir):
        _StubServer.log.append((self.name, self.port))
        return self

    def wait_log(self, marker, timeout_s):
        assert marker == "Memory pool end"
        return self.name != "broken"


def test_staggered_start_waits_for_each_pool_and_stops_when_memory_runs_short(monkeypatch, tmp_path):
    monkeypatch.setattr(ab_default, "Server", _StubServer)
    specs = {n: ([], {}) for n in ("A", "A2", "B", "broken")}
    free = iter([80.0, 58.0, 58.0, 36.0, 36.0, 14.0])  # each server takes 22 GB
    _StubServer.log = []
    started = ab_default.start_staggered(["B", "A", "A2"], specs, 30000, tmp_path, 10, free_gb=lambda: next(free))
    assert list(started) == ["B", "A", "A2"] and _StubServer.log == [("B", 30000), ("A", 30001), ("A2", 30002)]
    free = iter([80.0, 58.0, 58.0, 36.0, 20.0])  # 20 GB free < 22 + margin: A2 waits for the measuring loop
    started = ab_default.start_staggered(["B", "A", "A2"], specs, 30000, tmp_path, 10, free_gb=lambda: next(free))
    assert list(started) == ["B", "A"]
    # A server that never allocates its pool (failed, or too slow) stops the staggering there.
    started = ab_default.start_staggered(["broken", "A"], specs, 30000, tmp_path, 10, free_gb=lambda: 80.0)
    assert list(started) == ["broken"]
    # Without nvidia-smi every server is started, each after the previous one's pool.
    started = ab_default.start_staggered(["A", "B"], specs, 30000, tmp_path, 10, free_gb=lambda: None)
    assert list(started) == ["A", "B"]


def test_server_wait_log_sees_the_marker_and_a_dead_process(tmp_path):
    import subprocess

    from benchmarks.servers import Server

    s = Server("A", 1, [])
    s.log_path = tmp_path / "server-A.log"
    s.log_path.write_text("Load weight end\nMemory pool end. avail mem=44 GB\n")
    assert s.wait_log("Memory pool end", 5)
    s.log_path.write_text("Load weight end\n")
    s.proc = subprocess.Popen([sys.executable, "-c", "pass"])
    s.proc.wait()
    assert not s.wait_log("Memory pool end", 5)  # exited without it: no waiting out the timeout
