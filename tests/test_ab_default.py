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
    assert [(p.input_len, p.output_len, p.concurrency) for p in w["max-context"]] == [(524288, 128, 1),
                                                                                       (2**20 - 1024, 128, 1)]
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
    # Prompts depend on seed and length only: without SGLang's flush after warm-up, a point would hit
    # the prefix cache left by its warm-up or by another point of the same length.
    assert "--flush-cache" in args
    assert "--flush-cache" not in presets.WORKLOADS["agentic"][0].bench_args(seed=1)  # its prefix stays cached


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
    # Only A2 ran (A beside B in another call): A2's log says what SGLang chose.
    logs2 = {"card": "H", "A2": {"attention_backend": "fa3", "page_size": "128"}, "B": logs["B"]}
    s2 = ab_default.summarize(_rows(tp, ttft), _points(), logs2, {"layers": 20, "hidden": 6144})
    assert (s2["a_attention_backend"], s2["a_page_size"]) == ("fa3", "128")
    t = s["targets"]
    assert t["128k TTFT p50 >= 1.3x lower"]["met"] is True
    assert t["never_slower (min output throughput ratio >= 1.0)"]["met"] is True
    assert t["moonshot long output throughput >= 1.8x"]["met"] is False
    assert t["512k TTFT p50 >= 1.5x lower"]["met"] is None
    # a missed target says why, from the run: per point of its scope, TTFT and TPOT ratios
    why = t["moonshot long output throughput >= 1.8x"]["why"]
    assert "long/131072/c1: output 1.50x, TTFT p50 2.00x lower" in why and "long/131072/c4" in why
    assert "cookbook" not in why and "why" not in t["128k TTFT p50 >= 1.3x lower"]


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
    # where the shared expert runs: SGLang's M3 and ours each say so in the log
    assert ab_default.read_choices("x\nShared experts fusion optimization enabled.")["shared_expert_fused"] is True
    assert ab_default.read_choices("Needs CUDA. Shared experts fusion optimization is disabled.")[
        "shared_expert_fused"] is False
    ours = "sglang-msa: built MiniMaxM3SparseForCausalLM (sglang_msa.models), 8 layers, shared expert {}"
    assert ab_default.read_choices(ours.format("fused into FusedMoE"))["shared_expert_fused"] is True
    assert ab_default.read_choices(ours.format("as its own MLP (needs CUDA)"))["shared_expert_fused"] is False
    assert "shared_expert_fused" not in ab_default.read_choices(a)


def test_server_commands_differ_only_by_the_compared_flag(tmp_path):
    specs = ab_default.server_specs(tmp_path, 140000, 0.85, [1, 4], 64)
    (a, a_env), (a2, _), (b, b_env) = specs["A"], specs["A2"], specs["B"]
    assert "--attention-backend" not in a and "--page-size" not in a  # SGLang picks them
    assert a2 == a + ["--disable-shared-experts-fusion"] and b == a + ["--attention-backend", "msa"]
    assert a_env["SGLANG_MSA_DISABLE"] == "1" and b_env["SGLANG_MSA_DISABLE"] == "0"
    b1, b1_env = specs["B1"]  # the diagnostic: B with the split-K indexer off, by its env switch only
    assert b1 == b and b1_env == {**b_env, "SGLANG_MSA_INDEXER_SPLIT_K": "1"}
    assert "SGLANG_MSA_INDEXER_SPLIT_K" not in b_env  # B runs the default


def test_summary_reports_the_split_effect_where_b1_ran_and_never_uses_b1_as_a_baseline():
    ag = "agentic/64096/c8"
    tp = {("A2", ag): 1000, ("B", ag): 1100, ("B1", ag): 1000}
    ttft = {("A2", ag): 200.0, ("B", ag): 100.0, ("B1", ag): 150.0}
    points = [ab_default.point_record(p) for p in presets.select(["agentic"])]
    assert [p["key"] for p in points] == [ag]
    s = ab_default.summarize(_rows(tp, ttft), points, {}, {"layers": 12, "hidden": 6144})
    e = s["split_effect"]
    assert [x["point"] for x in e] == [ag]
    assert e[0]["output_throughput_ratio"] == pytest.approx(1.1) and e[0]["ttft_p50_ratio"] == pytest.approx(1.5)
    assert s["ratio_by_workload"]["agentic"]["baseline"] == "A2"
    assert s["min_output_throughput_ratio"] == pytest.approx(1.1)  # B against A2, not against B1
    without_b1 = {k: v for k, v in tp.items() if k[0] != "B1"}
    assert "split_effect" not in ab_default.summarize(_rows(without_b1, ttft), points, {}, {"layers": 12, "hidden": 6144})


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
        flushes = srv.flushes
    m = res["cookbook/64/c4"]
    assert m["completed"] == 8 and m["total_output_tokens"] == 8 * 12 and m["max_concurrency"] == 4
    assert m["median_ttft_ms"] >= 50
    # SGLang's per-request details give the wave split, then leave the record
    assert m["ttft_p50_first_wave_ms"] >= 50 and m["ttft_p50_later_ms"] >= 50
    assert not set(ab_default.DETAILS) & set(m)
    assert res["long/10000000/c1"] is None  # cannot finish before the deadline: skipped, not failed
    assert all(len(b["input_ids"]) == 64 for b in sent)
    assert len(sent) == 8  # no warm-up request: ab_default warms each server before measuring it
    # The measured prompts start from an empty prefix cache: our waiting flush, then SGLang's own (the
    # skipped point sends none).
    assert flushes == 2


def test_wave_ttfts_splits_the_first_concurrent_requests_from_the_rest_and_skips_failures():
    rec = {"ttfts": [0.4, 0.5, 0.0, 0.3, 0.05, 0.07, 0.06, 9.0],
           "errors": ["", "", "timeout", "", "", "", "", "refused"]}
    w = ab_default.wave_ttfts(rec, concurrency=4)
    assert w["ttft_p50_first_wave_ms"] == pytest.approx(400.0)  # 0.3, 0.4, 0.5 (the failed one left out)
    assert w["ttft_p50_later_ms"] == pytest.approx(60.0)  # 0.05, 0.06, 0.07; the failed 9 s left out
    assert ab_default.wave_ttfts({"median_ttft_ms": 1.0}, 4) == {}
    assert ab_default.wave_ttfts({"ttfts": [0.1, 0.2]}, 8) == {"ttft_p50_first_wave_ms": pytest.approx(150.0),
                                                              "ttft_p50_later_ms": None}


def test_summary_gives_the_later_requests_ttft_ratio_where_the_details_were_kept():
    points = [{"key": "agentic/64096/c8", "workload": "agentic", "input_len": 64096, "concurrency": 8,
               "new_prompt_tokens": 200000, "output_len": 256, "num_prompts": 64}]

    def row(server, tp, ttft, later):
        return {"server": server, "rep": 1, "point": "agentic/64096/c8", "num_prompts": 64, "metrics": {
            "output_throughput": tp, "median_ttft_ms": ttft, "median_tpot_ms": 4.0, "ttft_p50_later_ms": later,
            "duration": 7.0, "total_output_tokens": 10000, "completed": 64}}

    s = ab_default.summarize([row("A2", 1000.0, 130.0, 120.0), row("B", 970.0, 260.0, 60.0)], points, {},
                             {"layers": 12, "hidden": 6144})
    e = s["per_point"][0]
    assert e["ttft_p50_ratio"] == pytest.approx(0.5) and e["ttft_p50_later_ratio"] == pytest.approx(2.0)
    assert "2.00x after the first wave" in s["targets"]["moonshot agentic output throughput >= 1.8x"]["why"]


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


def _rank8_cfg(layers=12):
    sys.path.insert(0, str(REPO))
    from sglang_msa_tools import tiny_m3

    cfg = {**tiny_m3.PRESETS["rank8"], "num_hidden_layers": layers, "n_shared_experts": 1,
           "shared_intermediate_size": tiny_m3.PRESETS["rank8"]["intermediate_size"],
           "moe_layer_freq": [0] + [1] * (layers - 1),
           "sparse_attention_config": {"sparse_attention_freq": [0] + [1] * (layers - 1),
                                       "sparse_num_index_heads": 1, "sparse_index_dim": 128}}
    return cfg


def test_server_memory_estimate_and_points_that_do_not_fit():
    cfg = _rank8_cfg(12)
    m = ab_default.server_memory_gb(cfg, 1_000_000)
    # 11 MoE layers x 128 experts x 3 x 6144 x 384 x 2 B = 19.9 GB + embedding and LM head 4.9 GB + attention
    assert 25 < m["weights_gb"] < 26.5
    # per token: 12 layers of K + V (1 head x 128, bf16) + 11 of index K (128, bf16) = 8960 B
    assert m["kv_gb"] == pytest.approx(8960 * 1_000_000 / 1e9)
    assert m["total_gb"] == pytest.approx(m["weights_gb"] + m["kv_gb"] + ab_default.ACTIVATIONS_GB)
    pts = presets.select(["long", "max-context"], lens=[32768, 524288, presets.ONE_M_INPUT], concurrency=[1, 4, 16])
    # two servers on an 80 GB card: 1M does not fit beside 512k and 32k c16, which do; it is said why
    kept, dropped = ab_default.fit_points(pts, cfg, 2, 80.0, None)
    assert {p.input_len for p in kept} == {32768, 524288}
    assert [d["point"] for d in dropped] == [f"max-context/{presets.ONE_M_INPUT}/c1"]
    assert "2 servers side by side need" in dropped[0]["why"] and "80 GB" in dropped[0]["why"]
    # a 141 GB card holds all of them; no GPU reading drops nothing
    assert ab_default.fit_points(pts, cfg, 2, 141.0, None) == (pts, [])
    assert ab_default.fit_points(pts, cfg, 2, None, None) == (pts, [])
    # a fixed --kv-tokens drops what one request of cannot fit in it, whatever the card
    kept, dropped = ab_default.fit_points(pts, cfg, 2, None, 600_000)
    assert max(p.input_len for p in kept) == 524288
    assert f"cannot hold one {presets.ONE_M_INPUT}-token" in dropped[0]["why"]


def test_summary_carries_points_not_run_and_the_1m_ratio():
    one_m = presets.ONE_M_INPUT
    key = f"max-context/{one_m}/c1"
    pts = [ab_default.point_record(Point("max-context", one_m, 128, 1, 1))]
    rows = _rows({("A", key): 10.0, ("B", key): 12.0}, {("A", key): 30000.0, ("B", key): 12000.0})
    s = ab_default.summarize(rows, pts, {}, {"layers": 12, "hidden": 6144},
                             [{"point": "long/262144/c16", "why": "x"}])
    assert s["ttft_p50_ratio_1m"] == pytest.approx(2.5)
    assert s["points_not_run"] == [{"point": "long/262144/c16", "why": "x"}]


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
    ports = {"B": 30000, "A": 30001, "A2": 30002, "broken": 30003}
    free = iter([80.0, 58.0, 58.0, 36.0, 36.0, 14.0])  # each server takes 22 GB
    _StubServer.log = []
    started = ab_default.start_staggered(["B", "A", "A2"], specs, ports, tmp_path, 10, free_gb=lambda: next(free))
    assert list(started) == ["B", "A", "A2"] and _StubServer.log == [("B", 30000), ("A", 30001), ("A2", 30002)]
    free = iter([80.0, 58.0, 58.0, 36.0, 20.0])  # 20 GB free < 22 + margin: A2 waits for the measuring loop
    started = ab_default.start_staggered(["B", "A", "A2"], specs, ports, tmp_path, 10, free_gb=lambda: next(free))
    assert list(started) == ["B", "A"]
    # A server that never allocates its pool (failed, or too slow) stops the staggering there.
    started = ab_default.start_staggered(["broken", "A"], specs, ports, tmp_path, 10, free_gb=lambda: 80.0)
    assert list(started) == ["broken"]
    # Without nvidia-smi every server is started, each after the previous one's pool.
    started = ab_default.start_staggered(["A", "B"], specs, ports, tmp_path, 10, free_gb=lambda: None)
    assert list(started) == ["A", "B"]


def test_measuring_plan_keeps_live_servers_for_every_repeat_in_swapped_order():
    plan = ab_default.measuring_plan(["A", "B"], 2, ["A", "B"], tried=["A", "B"])
    assert plan == [(0, "A", True), (0, "B", True), (1, "B", True), (1, "A", True)]
    # A2 did not fit beside the others: it runs alone afterwards, once per repeat; a server that was
    # started side by side but never became healthy ("B") is not tried again.
    plan = ab_default.measuring_plan(["A", "A2", "B"], 2, ["A"], tried=["A", "B"])
    assert plan == [(0, "A", True), (1, "A", True), (0, "A2", False), (1, "A2", False)]
    # Without --parallel-start every server is started per repeat.
    assert ab_default.measuring_plan(["A", "B"], 2, []) == [(0, "A", False), (0, "B", False), (1, "B", False),
                                                             (1, "A", False)]


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


class _PoolServer:
    """Stands in for benchmarks.servers.Server in start_all_or_exit: healthy at once, a log with a pool."""

    def __init__(self, name, pool, tmp_path):
        self.name, self.args, self.ready_s, self.stopped = name, [name], 1.0, False
        self.log_path = tmp_path / f"server-{name}.log"
        self.pool = pool

    def start(self, log_dir):
        self.log_path.write_text(f"max_total_num_tokens={self.pool}, chunked_prefill_size=8192\n")

    def wait_healthy(self, timeout_s):
        return True

    def tail(self, n=40):
        return ""

    def stop(self):
        self.stopped = True


def test_pool_tokens_and_a_server_too_small_for_the_longest_prompt_stops_the_run(tmp_path):
    from benchmarks.servers import pool_tokens, start_all_or_exit

    assert pool_tokens("x\nmax_total_num_tokens=8960, chunked_prefill_size=8192\n") == 8960
    assert pool_tokens("no pool line") is None
    record = {}
    ok = [_PoolServer("A", 131072, tmp_path), _PoolServer("B", 131072, tmp_path)]
    start_all_or_exit(ok, tmp_path, 5, record, min_pool_tokens=65528)
    assert record["A"]["pool_tokens"] == 131072 and not any(s.stopped for s in ok)
    # the second server got what the first left (H100, 2026-12-07): stop both, say why, exit 2
    short = [_PoolServer("A", 131072, tmp_path), _PoolServer("B", 8960, tmp_path)]
    with pytest.raises(SystemExit) as exc:
        start_all_or_exit(short, tmp_path, 5, {}, min_pool_tokens=65528)
    assert exc.value.code == 2 and all(s.stopped for s in short)


def test_e2e_correctness_gives_both_servers_one_pool_that_holds_the_longest_prompt(monkeypatch, tmp_path):
    from benchmarks import e2e_correctness

    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 1000}))
    seen = {}

    def fake_start(servers, log_dir, timeout_s, record, min_pool_tokens=0):
        seen["servers"], seen["min_pool"] = servers, min_pool_tokens
        raise SystemExit(2)

    monkeypatch.setattr(e2e_correctness, "start_all_or_exit", fake_start)
    monkeypatch.setattr(e2e_correctness, "stop_and_record", lambda servers, record: None)
    with pytest.raises(SystemExit):
        e2e_correctness.main(["--model-path", str(tmp_path), "--out-dir", str(tmp_path), "--num-prompts", "4",
                              "--max-len", "65536", "--context-length", "65536", "--new-tokens", "16"])
    pools = [s.args[s.args.index("--max-total-tokens") + 1] for s in seen["servers"]]
    assert pools == ["131072", "131072"]
    assert seen["min_pool"] == 65512 + 16  # the longest prompt (24 short of the context) + its new tokens


@pytest.mark.sglang
def test_shared_prefix_prompts_reach_their_token_lengths_with_the_proxy_tokenizer(tmp_path):
    """SGLang's generated-shared-prefix generator writes text from random vocabulary ids; the proxy
    checkpoints' tokenizer makes ~13-16 tokens of each (the first GPU run sent 788k-token 'agentic'
    prompts). The calibrated point's generator lengths give prompts of the intended token count."""
    pytest.importorskip("sglang")
    import random

    from sglang.benchmark.datasets.common import gen_prompt
    from transformers import AutoTokenizer

    from sglang_msa_tools import tiny_m3

    model = tmp_path / "m"
    tiny_m3.write_checkpoint(str(model))
    ratio = presets.text_tokens_per_token(str(model), sample=4000)
    assert ratio > 2, ratio  # this is the case that needs calibrating
    (p,) = presets.calibrated(presets.select(["agentic"]), ratio)
    args = dict(zip(p.extra[::2], p.extra[1::2]))
    prefix = int(args["--gsp-system-prompt-len"])
    assert prefix == round(presets.AGENTIC_PREFIX / ratio) and "generator lengths" in p.note
    tok = AutoTokenizer.from_pretrained(str(model))
    random.seed(1)
    n = len(tok.encode(gen_prompt(tok, prefix), add_special_tokens=False))
    assert abs(n - presets.AGENTIC_PREFIX) < 0.1 * presets.AGENTIC_PREFIX, n
    # random-ids points send token ids: untouched; a tokenizer that round-trips changes nothing
    (c,) = presets.calibrated(presets.select(["cookbook"]), ratio)
    assert c == presets.select(["cookbook"])[0]
    assert presets.calibrated(presets.select(["agentic"]), 1.02) == presets.select(["agentic"])


class _LiveStub:
    """A server that is always healthy and records its life (start, measured repeats, stop)."""
    events = []

    def __init__(self, name, port, flags, env=None, tokenizer=False):
        self.name, self.port, self.log_path, self.ready_s, self.started_at = name, port, None, 1.0, 0.0
        self.url = f"http://stub:{port}"
        self.proc = None

    def start(self, log_dir):
        _LiveStub.events.append(("start", self.name))
        self.proc = type("P", (), {"pid": 1000 + self.port % 100, "poll": lambda _: None})()
        return self

    def adopt(self, pid, log_path, started_at):
        _LiveStub.events.append(("adopt", self.name, pid))
        self.proc = type("P", (), {"pid": pid, "poll": lambda _: None})()
        return self

    def wait_log(self, marker, timeout_s):
        return True

    def wait_healthy(self, timeout_s):
        return True

    def stop(self):
        if ("stop", self.name, self.port) not in _LiveStub.events:
            _LiveStub.events.append(("stop", self.name, self.port))

    def tail(self, n=40):
        return ""

    def plugin_lines(self, limit=20):
        return []


def stub_gpu(monkeypatch) -> None:
    """ab_default.main without a GPU: stub servers, no nvidia-smi, no warm-up, a named card."""
    pytest.importorskip("sglang")
    import torch

    monkeypatch.setattr(ab_default, "Server", _LiveStub)
    monkeypatch.setattr(ab_default, "free_gpu_gb", lambda: None)
    monkeypatch.setattr(ab_default, "gpu_memory_gb", lambda: None)
    monkeypatch.setattr(ab_default, "warm_up", lambda server, vocab: 0.5)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Stub GPU")


@pytest.mark.sglang
def test_main_keeps_side_by_side_servers_for_every_repeat(monkeypatch, tmp_path):
    """ab_default.main with --parallel-start, servers and the load generator stubbed: each server is
    started once, measured on every repeat in swapped order, stopped once, and the results file holds
    a row per (server, repeat, point) with the summary's ratio."""
    stub_gpu(monkeypatch)
    measured = []

    def fake_points(server, points, out_dir, seed, deadline, tokenizer):
        measured.append((server.name, seed))
        tput = 200.0 if server.name == "B" else 100.0
        return {p.key: {"output_throughput": tput, "median_ttft_ms": 50.0, "completed": p.num_prompts,
                         "duration": 10.0, "total_output_tokens": tput * 10.0,
                         "total_input_tokens": p.num_prompts * p.input_len} for p in points}

    monkeypatch.setattr(ab_default, "run_points", fake_points)
    _LiveStub.events = []
    rc = ab_default.main(["--out-dir", str(tmp_path), "--workloads", "cookbook", "--servers", "A,B",
                          "--repeats", "2", "--layers", "2", "--parallel-start", "--deadline-s", "600"])
    assert rc == 0
    # every server process gets one unmeasured pass (seed 0) of the cheap points before any is measured
    assert measured == [("A", 0), ("B", 0), ("A", 1), ("B", 1), ("B", 2), ("A", 2)]
    starts = [e for e in _LiveStub.events if e[0] == "start"]
    stops = [e for e in _LiveStub.events if e[0] == "stop"]
    assert starts == [("start", "A"), ("start", "B")] and len(stops) == 2
    (out,) = tmp_path.glob("serving-Stub-GPU-*-rank8.json")
    res = json.loads(out.read_text())
    assert len(res["rows"]) == 4 and res["measuring_plan"][0] == "rep 0 A (live)"
    assert res["summary"]["min_output_throughput_ratio"] == pytest.approx(2.0)


@pytest.mark.sglang
def test_later_server_of_a_repeat_runs_only_the_points_the_earlier_ones_measured(monkeypatch, tmp_path):
    """A point that the first server of a repeat did not measure (its deadline) is not run on the
    others of that repeat: a ratio needs both sides. The next repeat starts from every point again."""
    stub_gpu(monkeypatch)
    asked = []

    def fake_points(server, points, out_dir, seed, deadline, tokenizer):
        asked.append((server.name, seed, sorted(p.key for p in points)))
        out = {p.key: {"output_throughput": 100.0, "median_ttft_ms": 50.0, "completed": p.num_prompts,
                       "duration": 10.0, "total_output_tokens": 1000.0,
                       "total_input_tokens": p.num_prompts * p.input_len} for p in points}
        if server.name == "A" and seed == 1:
            out["agentic/64096/c8"] = None  # skipped by A's deadline on the first repeat
        return out

    monkeypatch.setattr(ab_default, "run_points", fake_points)
    _LiveStub.events = []
    rc = ab_default.main(["--out-dir", str(tmp_path), "--workloads", "cookbook,agentic", "--servers", "A,B",
                          "--repeats", "2", "--layers", "2", "--parallel-start", "--deadline-s", "600"])
    assert rc == 0
    both = ["agentic/64096/c8", "cookbook/2048/c64"]
    measured = [a for a in asked if a[1] > 0]  # seed 0 is the unmeasured warm pass
    assert measured == [("A", 1, both), ("B", 1, ["cookbook/2048/c64"]), ("B", 2, both), ("A", 2, both)]
    (out,) = tmp_path.glob("serving-Stub-GPU-*-rank8.json")
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 8  # a row per (server, repeat, point), the unpaired one without metrics
    assert [r["metrics"] for r in rows if r["server"] == "B" and r["rep"] == 0 and "agentic" in r["point"]] == [None]


@pytest.mark.sglang
def test_two_calls_share_live_servers_and_merge(monkeypatch, tmp_path):
    """A call that keeps its servers running and a second call that attaches to them (the next device
    call on a warm machine): no server is started twice, the second call's repeat is numbered on and
    runs in swapped order, and --merge writes one file whose summary has both repeats."""
    stub_gpu(monkeypatch)
    measured = []

    def fake_points(server, points, out_dir, seed, deadline, tokenizer):
        measured.append((server.name, seed))
        tput = 150.0 + 10 * seed if server.name == "B" else 100.0
        return {p.key: {"output_throughput": tput, "median_ttft_ms": 50.0, "completed": p.num_prompts,
                        "duration": 10.0, "total_output_tokens": tput * 10.0} for p in points}

    monkeypatch.setattr(ab_default, "run_points", fake_points)
    _LiveStub.events = []
    common = ["--out-dir", str(tmp_path), "--workloads", "cookbook", "--servers", "A,B", "--repeats", "1",
              "--layers", "2", "--parallel-start", "--deadline-s", "600", "--context-length", "8192",
              "--kv-tokens", "300000"]
    assert ab_default.main(common + ["--keep-running", "--name", "call1"]) == 0
    assert not any(e[0] == "stop" for e in _LiveStub.events)
    state = json.loads((tmp_path / "live-servers.json").read_text())
    assert sorted(state) == ["A", "B"] and state["A"]["port"] == 30000
    assert ab_default.main(common + ["--attach", "--first-rep", "1", "--name", "call2"]) == 0
    assert [e for e in _LiveStub.events if e[0] == "start"] == [("start", "A"), ("start", "B")]
    assert [e[1] for e in _LiveStub.events if e[0] == "adopt"] == ["A", "B"]
    # the unmeasured warm pass (seed 0) once per server process: by the call that started it
    assert measured == [("A", 0), ("B", 0), ("A", 1), ("B", 1), ("B", 2), ("A", 2)]
    _LiveStub.events = []
    (tmp_path / "live-servers.json").write_text(json.dumps(state))
    assert ab_default.main(common[:-1] + ["400000", "--attach", "--name", "call3"]) == 0
    # Other flags than the running servers': not adopted but stopped (their GPU memory), started anew.
    assert [e[1] for e in _LiveStub.events if e[0] == "stop"][:2] == ["A", "B"]
    assert [e for e in _LiveStub.events if e[0] == "start"] == [("start", "A"), ("start", "B")]
    # A call for other servers (A2 beside the same B): B is adopted, A (left running) is stopped.
    _LiveStub.events = []
    (tmp_path / "live-servers.json").write_text(json.dumps(state))
    assert ab_default.main(common + ["--servers", "A2,B", "--attach", "--name", "call4"]) == 0
    assert ("stop", "A", 30000) == next(e for e in _LiveStub.events if e[0] == "stop")
    assert [e[1] for e in _LiveStub.events if e[0] == "start"] == ["A2"]

    files = sorted(tmp_path.glob("serving-Stub-GPU-*-call[12].json"))
    assert ab_default.main(["--out-dir", str(tmp_path), "--merge", *map(str, files), "--name", "rank8"]) == 0
    (out,) = tmp_path.glob("serving-Stub-GPU-*-rank8.json")
    res = json.loads(out.read_text())
    assert sorted((r["server"], r["rep"]) for r in res["rows"]) == [("A", 0), ("A", 1), ("B", 0), ("B", 1)]
    (pp,) = res["summary"]["per_point"]
    assert pp["repeats"] == {"baseline": 2, "B": 2}
    assert res["summary"]["min_output_throughput_ratio"] == pytest.approx(1.65)  # median of 160 and 170
    assert len(res["merged_from"]) == 2
    assert "repeats_renumbered" not in res

    # Two calls that numbered their repeats alike (both --first-rep 1, as on 2026-12-08): the merge keeps
    # both, the later one numbered on, so the per-repeat view has one entry per call.
    call2 = next(f for f in files if f.name.endswith("call2.json"))
    twin = tmp_path / call2.name.replace("call2", "call2b")
    twin.write_text(call2.read_text())
    assert ab_default.main(["--out-dir", str(tmp_path), "--merge", str(call2), str(twin), "--name", "same-rep"]) == 0
    res = json.loads(next(tmp_path.glob("serving-Stub-GPU-*-same-rep.json")).read_text())
    assert sorted({r["rep"] for r in res["rows"]}) == [1, 2]
    assert res["repeats_renumbered"] == [{"file": twin.name, "repeats": [1], "as": [2]}]
    (pp,) = res["summary"]["per_point"]
    assert pp["output_throughput_ratio_by_repeat"] == [pytest.approx(1.7), pytest.approx(1.7)]
    assert pp["measured_first_by_repeat"] == ["B", "B"]


def test_jit_events_reads_compiles_and_autotuning():
    log = ("[2026-12-06 00:15:29] Decode batch, #running-req: 8\n"
           "[jit-trace] 1765000000.123 pid=42 compile sglang_msa.kernels.msa_prefill.block_major:block_major_fwd_kernel "
           "812 ms block_major_fwd_kernel[num_warps=4](q_ptr: *bf16, num_tokens: i32)\n"
           "Triton autotuning for function _indexer_prefill_kernel,\nwith key as (1, 128, 128, 16, 'max', True, 1, "
           "'torch.bfloat16'),\nfinished after 2.35s,\nbest config selected: BLOCK_M: 128;\n")
    events = ab_default.jit_events(log)
    assert events == [
        {"kernel": "sglang_msa.kernels.msa_prefill.block_major:block_major_fwd_kernel", "ms": 812},
        {"kernel": "_indexer_prefill_kernel", "ms": 2350, "autotune": True},
    ]
    assert ab_default.jit_events("Prefill batch, #new-seq: 1\n") == []


def test_trace_jit_env_puts_the_hook_first_on_pythonpath(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/tmp/site")
    env = ab_default.trace_jit_env({"SGLANG_MSA_DISABLE": "1"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ab_default.JIT_TRACE_DIR), "/tmp/site"]
    assert env["SGLANG_MSA_DISABLE"] == "1" and env["SGLANG_MSA_TRACE_JIT"] == "1"
    assert (ab_default.JIT_TRACE_DIR / "sitecustomize.py").exists()


def test_jit_trace_hook_writes_the_line_jit_events_reads():
    import subprocess
    from types import SimpleNamespace  # noqa: F401 - used in the child

    child = ("import time, types, triton.knobs as k\n"
             "fn = types.SimpleNamespace(module='m', name='kern', jit_function=object())\n"
             "kw = dict(key=('k',), repr='kern[num_warps=4](n: i32)', fn=fn, compile={}, is_manual_warmup=False, "
             "already_compiled=False)\n"
             "assert k.runtime.jit_cache_hook(**kw) is False\n"
             "time.sleep(0.02)\n"
             "k.runtime.jit_post_compile_hook(**kw)\n")
    env = {**ab_default.trace_jit_env({}), "PATH": os.environ.get("PATH", "")}
    res = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    events = ab_default.jit_events(res.stderr)
    assert len(events) == 1 and events[0]["kernel"] == "m:kern" and events[0]["ms"] >= 20


def test_client_deadline_measures_every_first_repeat_before_later_ones():
    points = [Point("cookbook", 2048, 256, 64, 64)]
    need = ab_default.estimate_s(points[0]) + 30
    plan = [(r, n, True) for r in range(3) for n in ("A", "A2", "B")]
    # 250 s left for 9 measurements: an equal split (28 s each) is shorter than one client's overhead;
    # the first repeats get what they need, as long as the first repeats after them still can.
    now = 1000.0
    d0 = ab_default.client_deadline(now, now + 250, plan, points, first_rep=0)
    assert d0 - now == pytest.approx(need - 30)
    # The last first repeat takes what it needs; a later repeat splits the rest equally.
    d2 = ab_default.client_deadline(now, now + 2 * need, plan[2:], points, first_rep=0)
    assert d2 - now == pytest.approx(max(2 * need / 7, need) - 30)
    d3 = ab_default.client_deadline(now, now + 300, plan[3:], points, first_rep=0)
    assert d3 - now == pytest.approx(300 / 6 - 30)
    # Too little time for every first repeat: the first repeats split it equally (never more than is
    # left), so no server's first repeat is starved for the next one's.
    d_short = ab_default.client_deadline(now, now + 60, plan, points, first_rep=0)
    assert d_short - now == pytest.approx(60 / 3 - 30)
    left = 1.5 * need  # two first repeats (A then B) but time for one and a half
    two = [(0, "A", True), (0, "B", True), (1, "B", True), (1, "A", True)]
    d_a = ab_default.client_deadline(now, now + left, two, points, first_rep=0)
    assert d_a - now == pytest.approx(left / 2 - 30)
    d_b = ab_default.client_deadline(d_a + 30, now + left, two[1:], points, first_rep=0)
    assert d_b - (d_a + 30) == pytest.approx(d_a - now)  # B, starting when A's client ends, gets what A got


def test_stop_kept_stops_every_left_server_and_removes_the_state(tmp_path, capsys):
    """--stop-kept: the servers a --keep-running call left (own process sessions) are stopped and waited
    for, so a benchmark after a serving call gets the GPU's memory back."""
    import subprocess

    procs = {n: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
             for n in ("A", "B")}
    state = tmp_path / "live-servers.json"
    state.write_text(json.dumps({n: {"pid": p.pid, "port": 30000 + i, "log": str(tmp_path / f"{n}.log"),
                                     "started_at": time.time(), "args": [], "env": {}}
                                 for i, (n, p) in enumerate(procs.items())}))
    try:
        assert ab_default.main(["--out-dir", str(tmp_path), "--stop-kept"]) == 0
        assert "stopped kept servers: A,B" in capsys.readouterr().out
        # exited (a zombie until reaped: this test is their parent, a later call's is not)
        assert all(p.wait(timeout=5) is not None for p in procs.values())
        assert not state.exists()
        assert ab_default.stop_kept(state) == []  # nothing left: a no-op
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()


def test_adopted_server_that_exited_unreaped_counts_as_stopped():
    """A zombie still answers kill(pid, 0); waiting on it as if alive would take stop()'s 30 s
    SIGKILL fallback for every server."""
    import signal
    import subprocess

    from benchmarks.servers import _Adopted

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        adopted = _Adopted(p.pid)
        assert adopted.poll() is None
        os.kill(p.pid, signal.SIGTERM)
        deadline = time.time() + 10
        while Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z" and time.time() < deadline:
            time.sleep(0.05)
        assert adopted.poll() == -1
    finally:
        p.kill()
        p.wait()


def test_missed_never_slower_names_the_slowest_point_against_the_spread():
    ck, l1, l4 = "cookbook/2048/c64", "long/131072/c1", "long/131072/c4"
    tp = {("A", ck): 1000, ("B", ck): 990, ("A", l1): 50, ("B", l1): 75, ("A", l4): 100, ("B", l4): 130}
    rows = _rows(tp, {k: 1000.0 for k in tp})
    for r in rows:  # decode: B's time per output token 4 ms, A's 5 ms
        r["metrics"]["median_tpot_ms"] = 4.0 if r["server"] == "B" else 5.0
    s = ab_default.summarize(rows, _points(), {}, {"layers": 20, "hidden": 6144})
    assert s["per_point"][0]["tpot_p50_ratio"] == pytest.approx(1.25)
    t = s["targets"]["never_slower (min output throughput ratio >= 1.0)"]
    assert t["met"] is False and t["missed_by"] == pytest.approx(0.01)
    # 1% short against 2% between repeats (the rows' own spread)
    assert t["why"].startswith("slowest point cookbook/2048/c64: 0.990x, 1.0% short")
    assert t["why"].endswith("inside the spread")


def test_summary_gives_each_repeats_ratio_and_which_server_went_first():
    """Medians hide an order effect when one order runs once more: the per-repeat view shows it."""
    points = [{"key": "agentic/64096/c8", "workload": "agentic", "input_len": 64096, "concurrency": 8,
               "new_prompt_tokens": 200000, "output_len": 256, "num_prompts": 64}]

    def row(server, rep, tp):
        return {"server": server, "rep": rep, "point": "agentic/64096/c8", "num_prompts": 64, "metrics": {
            "output_throughput": tp, "median_ttft_ms": 100.0, "duration": 7.0, "total_output_tokens": 10000,
            "completed": 64}}

    # measurement order: A2 first in repeats 0 and 2, B first in repeat 1; repeat 3 has no B
    rows = [row("A2", 0, 1000.0), row("B", 0, 1100.0), row("B", 1, 950.0), row("A2", 1, 1000.0),
            row("A2", 2, 1000.0), row("B", 2, 1100.0), row("A2", 3, 1000.0),
            {"server": "B", "rep": 3, "point": "agentic/64096/c8", "num_prompts": 64, "metrics": None}]
    e = ab_default.summarize(rows, points, {}, {"layers": 12, "hidden": 6144})["per_point"][0]
    assert e["output_throughput_ratio"] == pytest.approx(1.1)  # medians
    assert e["output_throughput_ratio_by_repeat"] == [1.1, 0.95, 1.1]
    assert e["measured_first_by_repeat"] == ["A2", "B", "A2"]
    assert e["output_throughput_ratio_repeat_geomean"] == pytest.approx((1.1 * 0.95 * 1.1) ** (1 / 3))
