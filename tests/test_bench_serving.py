"""The serving benchmark client against a fake server whose delays, tokens and failures are known.

Timing tolerances are derived from the injected sleeps (50-200 ms) and are ±30 ms; everything else
(token counts, failure counts, ratios, prompts) is asserted exactly. Servers bind 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import sys
from pathlib import Path

import pytest

pytest.importorskip("aiohttp")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_serving import main  # noqa: E402
from benchmarks.serving.client import ENDPOINTS, RequestOptions, build_payload  # noqa: E402
from benchmarks.serving.metrics import compare, percentile, point_metrics  # noqa: E402
from benchmarks.serving.runner import run_batch  # noqa: E402
from benchmarks.serving.sse import MalformedStream, SSEDecoder  # noqa: E402
from benchmarks.serving.workload import BenchRequest, JsonlWorkload, RandomWorkload  # noqa: E402
from fake_sglang_server import Behavior, FakeServer, fake_token  # noqa: E402

TOL = 0.030  # seconds


def _batch(url, requests, concurrency, **opts):
    return asyncio.run(run_batch(url, requests, concurrency, RequestOptions(**opts)))


# ---- SSE decoding -------------------------------------------------------------------------------------


def test_sse_decoder_any_split():
    body = (b": keep-alive\n\ndata: {\"a\": 1}\n\n"
            b"data: {\"b\":\r\ndata: 2}\r\n\r\n"
            b"event: x\nid: 7\ndata:{\"c\": 3}\n\n"
            b"data: [DONE]")  # no trailing blank line: close() must still deliver it
    expected = [b'{"a": 1}', b'{"b":\n2}', b'{"c": 3}', b"[DONE]"]
    rng = random.Random(3)
    for trial in range(40):
        dec = SSEDecoder()
        got, pos = [], 0
        while pos < len(body):
            step = 1 if trial == 0 else rng.randint(1, 9)
            got += dec.feed(body[pos:pos + step])
            pos += step
        got += dec.close()
        assert got == expected, trial


@pytest.mark.parametrize("line", [b"garbage without colon\n", b"foo: bar\n"])
def test_sse_decoder_rejects_unknown_lines(line):
    with pytest.raises(MalformedStream):
        SSEDecoder().feed(b"data: {}\n\n" + line)


def test_percentile_matches_numpy():
    np = pytest.importorskip("numpy")
    rng = random.Random(0)
    for n in (1, 2, 7, 100):
        xs = [rng.uniform(0, 10) for _ in range(n)]
        for p in (0, 50, 90, 99, 100):
            assert percentile(xs, p) == pytest.approx(float(np.percentile(xs, p)))
    assert percentile([], 50) is None


# ---- workloads ----------------------------------------------------------------------------------------


def test_random_workload_seeded_and_in_range():
    w = RandomWorkload(input_len=37, output_len=5, vocab_size=500, seed=11, min_token_id=100)
    a = w.requests(6, "c4/p0/measure")
    assert a == RandomWorkload(37, 5, 500, 11, 100).requests(6, "c4/p0/measure")  # reproducible
    assert a != RandomWorkload(37, 5, 500, 12, 100).requests(6, "c4/p0/measure")  # seed matters
    assert a != w.requests(6, "c4/p1/measure")  # every point gets its own prompts
    assert all(len(r.input_ids) == 37 and r.prompt_len == 37 and r.output_len == 5 for r in a)
    assert all(100 <= t < 500 for r in a for t in r.input_ids)
    assert len({r.input_ids for r in a}) == 6
    with pytest.raises(ValueError):
        RandomWorkload(16, 4, 1000, shared_prefix_len=16)  # no room for a unique suffix


def test_shared_prefix_prompts_share_the_prefix():
    w = RandomWorkload(input_len=40, output_len=4, vocab_size=30000, seed=5, shared_prefix_len=32, num_prefix_groups=2)
    reqs = w.requests(6, "c2/p0/measure") + w.requests(4, "c8/p3/measure")
    groups = [reqs[i].input_ids[:32] for i in range(len(reqs))]
    g0, g1 = w.prefix(0), w.prefix(1)
    assert g0 != g1
    for i, r in enumerate(reqs[:6]):
        assert list(r.input_ids[:32]) == (g0 if i % 2 == 0 else g1)
    for i, r in enumerate(reqs[6:]):  # same prefixes at another point
        assert list(r.input_ids[:32]) == (g0 if i % 2 == 0 else g1)
    assert len({r.input_ids[32:] for r in reqs}) == len(reqs)  # unique suffixes
    assert len(set(groups)) == 2
    # The prefix depends on the seed, not on the prompt length.
    assert RandomWorkload(64, 4, 30000, seed=5, shared_prefix_len=32, num_prefix_groups=2).prefix(1) == g1


def test_jsonl_workload(tmp_path):
    path = tmp_path / "reqs.jsonl"
    lines = [
        {"input_ids": [5, 6, 7], "output_len": 3},
        {"prompt": "hello there world", "max_tokens": 4, "extra_body": {"top_k": 1}},
        {"messages": [{"role": "user", "content": "describe"}], "video_url": "file:///tmp/v.mp4"},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    w = JsonlWorkload(path, default_output_len=9)
    first = w.requests(2, "x")
    assert first[0].input_ids == (5, 6, 7) and first[0].output_len == 3
    assert first[1].text == "hello there world" and first[1].output_len == 4 and first[1].extra == {"top_k": 1}
    nxt = w.requests(2, "y")  # successive points take successive slices (wrapping)
    assert nxt[0].video_urls == ("file:///tmp/v.mp4",) and nxt[0].output_len == 9
    assert nxt[1] == first[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input_ids": [1]}\n{"prompt": "x", "input_ids": [1]}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        JsonlWorkload(bad, 4)


# ---- request bodies -----------------------------------------------------------------------------------


def test_payloads():
    req = BenchRequest(output_len=7, prompt_len=3, input_ids=(1, 2, 3))
    gen = build_payload(req, RequestOptions(backend="sglang"))
    assert gen == {"input_ids": [1, 2, 3], "stream": True,
                   "sampling_params": {"max_new_tokens": 7, "temperature": 0.0, "ignore_eos": True}}
    comp = build_payload(req, RequestOptions(backend="openai", model="m", extra_body={"top_k": 1}))
    assert comp["prompt"] == [1, 2, 3] and comp["max_tokens"] == 7 and comp["model"] == "m"
    assert comp["stream"] is True and comp["stream_options"]["continuous_usage_stats"] is True
    assert comp["top_k"] == 1
    chat = build_payload(BenchRequest(output_len=2, prompt_len=2, text="a b"),
                         RequestOptions(backend="openai-chat", video_urls=("http://127.0.0.1/v.mp4",)))
    assert chat["messages"] == [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "http://127.0.0.1/v.mp4"}}, {"type": "text", "text": "a b"}]}]
    msgs = (
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
    )
    chat2 = build_payload(BenchRequest(output_len=2, prompt_len=2, messages=msgs, video_urls=("u",)),
                          RequestOptions(backend="openai-chat"))
    assert chat2["messages"][0] == {"role": "system", "content": "s"}
    assert chat2["messages"][1]["content"] == [{"type": "video_url", "video_url": {"url": "u"}},
                                               {"type": "text", "text": "q"}]
    assert msgs[1]["content"] == "q"  # the workload is not mutated
    with pytest.raises(ValueError):
        build_payload(BenchRequest(output_len=2, prompt_len=1, messages=msgs), RequestOptions(backend="sglang"))


# ---- measurements against the fake server -------------------------------------------------------------


def _check_timing(results, ttft, itl, n_out):
    m = point_metrics(results, 1.0)
    assert m["failed"] == 0, m["error_samples"]
    assert [r.output_tokens for r in results] == [n_out] * len(results)
    assert m["output_tokens"] == n_out * len(results) and m["short_outputs"] == 0
    for r in results:
        assert abs(r.ttft - ttft) < TOL, r.ttft
        assert len(r.itl) == n_out - 1
        assert r.latency >= r.last_token_time >= r.ttft
    assert abs(m["ttft_ms"]["p50"] / 1e3 - ttft) < TOL
    assert abs(m["itl_ms"]["p50"] / 1e3 - itl) < TOL and abs(m["itl_ms"]["mean"] / 1e3 - itl) < TOL
    assert abs(m["tpot_ms"]["mean"] / 1e3 - itl) < TOL
    assert m["itl_ms"]["count"] == len(results) * (n_out - 1)
    return m


@pytest.mark.parametrize("backend", ["sglang", "openai", "openai-chat"])
def test_metrics_match_injected_delays(backend):
    w = RandomWorkload(input_len=12, output_len=5, vocab_size=1000, seed=1)
    reqs = w.requests(4, "t")
    with FakeServer(Behavior(ttft=0.12, itl=0.06)) as srv:
        results, duration = _batch(srv.url, reqs, 2, backend=backend, model="fake-model",
                                   video_urls=("http://127.0.0.1:1/clip.mp4",) if backend == "openai-chat" else ())
    m = _check_timing(results, 0.12, 0.06, 5)
    assert m["token_sources"] == {"sglang": {"meta_info": 4}, "openai": {"usage": 4},
                                  "openai-chat": {"usage": 4}}[backend]
    # 4 requests of ~0.36 s at concurrency 2: about 0.72 s
    assert abs(duration - 0.72) < 4 * TOL
    assert m["request_throughput"] == pytest.approx(4 / 1.0)
    got = sorted(srv.received, key=lambda r: r.ordinal)
    assert {r.path for r in got} == {ENDPOINTS[backend]}
    sent = sorted(tuple(r.body.get("input_ids") or r.body.get("prompt") or ()) for r in got)
    if backend != "openai-chat":
        assert sent == sorted(r.input_ids for r in reqs)
    else:
        content = got[0].body["messages"][0]["content"]
        assert content[0] == {"type": "video_url", "video_url": {"url": "http://127.0.0.1:1/clip.mp4"}}
        assert content[1]["type"] == "text" and len(content[1]["text"].split()) == 12
        assert got[0].body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    if backend == "sglang":
        assert got[0].body["sampling_params"] == {"max_new_tokens": 5, "temperature": 0.0, "ignore_eos": True}
        assert m["input_tokens"] == 4 * 12


def test_generate_multi_token_chunks_and_id_streams():
    reqs = RandomWorkload(input_len=8, output_len=7, vocab_size=1000, seed=2).requests(3, "t")
    # Two tokens per chunk 0.1 s apart: each token's ITL is 0.05 s; the stream is read from output_ids
    # only (no meta_info.completion_tokens), cumulative as SGLang sends by default.
    with FakeServer(Behavior(ttft=0.1, itl=0.05, tokens_per_chunk=2, generate_meta_tokens=False)) as srv:
        results, _ = _batch(srv.url, reqs, 3, backend="sglang")
    m = _check_timing(results, 0.1, 0.05, 7)
    assert m["token_sources"] == {"output_ids": 3}
    # SGLang's incremental streaming mode: output_ids are deltas, completion_tokens stays cumulative.
    with FakeServer(Behavior(ttft=0.05, itl=0.05, generate_incremental=True)) as srv:
        results, _ = _batch(srv.url, reqs, 1, backend="sglang")
    _check_timing(results, 0.05, 0.05, 7)


def test_openai_token_ids_and_chunk_counting():
    reqs = RandomWorkload(input_len=8, output_len=6, vocab_size=1000, seed=2).requests(2, "t")
    no_continuous = {"stream_options": {"include_usage": True}}
    with FakeServer(Behavior(ttft=0.05, itl=0.05, tokens_per_chunk=2)) as srv:
        by_ids, _ = _batch(srv.url, reqs, 2, backend="openai", return_token_ids=True, extra_body=no_continuous)
        by_chunks, _ = _batch(srv.url, reqs, 2, backend="openai-chat", extra_body=no_continuous)
    _check_timing(by_ids, 0.05, 0.05, 6)
    assert {r.token_source for r in by_ids} == {"token_ids"}
    # Without token counts each content chunk counts once, and the final usage chunk fixes the total.
    assert {r.token_source for r in by_chunks} == {"chunks"}
    assert [r.output_tokens for r in by_chunks] == [6, 6]
    assert all(len(r.itl) == 3 for r in by_chunks)  # 4 content chunks (1 + 2 + 2 + 1 tokens): 3 gaps


def test_failures_are_counted_not_hidden():
    kinds = {0: "http500", 1: "drop", 2: "malformed", 3: "error_chunk", 4: "no_done", 6: "stall"}
    reqs = RandomWorkload(input_len=8, output_len=4, vocab_size=1000, seed=3).requests(8, "t")
    with FakeServer(Behavior(ttft=0.05, itl=0.05, failures=kinds, stall_s=3.0)) as srv:
        results, _ = _batch(srv.url, reqs, 1, backend="sglang", timeout=0.6)
    assert [r.error_kind for r in results] == [
        "http_status", "incomplete", "malformed", "stream_error", "incomplete", None, "timeout", None]
    assert results[0].status == 500 and "injected failure" in results[0].error
    assert "[DONE]" in results[4].error
    m = point_metrics(results, 1.0)
    assert (m["completed"], m["failed"]) == (2, 6)
    assert m["errors"] == {"http_status": 1, "incomplete": 2, "malformed": 1, "stream_error": 1, "timeout": 1}
    assert m["output_tokens"] == 8  # only successful requests count
    assert [r.output_tokens for r in results if r.ok] == [4, 4]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_down():
    reqs = RandomWorkload(input_len=4, output_len=2, vocab_size=100, seed=0).requests(3, "t")
    results, _ = _batch(f"http://127.0.0.1:{_free_port()}", reqs, 2, backend="sglang", timeout=5)
    assert [r.error_kind for r in results] == ["connect"] * 3


def test_short_outputs_reported():
    reqs = RandomWorkload(input_len=4, output_len=6, vocab_size=100, seed=0).requests(2, "t")
    with FakeServer(Behavior(ttft=0.05, itl=0.05, max_output_tokens=3)) as srv:
        results, _ = _batch(srv.url, reqs, 2, backend="openai", model="x")
    m = point_metrics(results, 1.0)
    assert m["failed"] == 0 and m["short_outputs"] == 2 and m["output_tokens"] == 6


def test_fake_tokens_are_deterministic():
    assert [fake_token(10, i) for i in range(3)] == [fake_token(10, i) for i in range(3)]
    assert fake_token(10, 0) != fake_token(11, 0)


# ---- ratios --------------------------------------------------------------------------------------------


def _pt(server, workload, conc, out_tput, ttft_p50):
    dist = {"mean": 1.0, "p50": 1.0, "p90": 1.0, "p99": 1.0, "count": 1}
    return {"server": server, "workload": workload, "concurrency": conc, "output_throughput": out_tput,
            "request_throughput": out_tput / 10, "ttft_ms": {**dist, "p50": ttft_p50}, "itl_ms": dist,
            "tpot_ms": dist}


def test_ab_ratios():
    pts = [_pt("A", "1024", 1, 100.0, 50.0), _pt("B", "1024", 1, 150.0, 25.0),
           _pt("A", "1024", 8, 400.0, 80.0), _pt("B", "1024", 8, 300.0, 100.0),
           _pt("A", "8192", 4, 200.0, 400.0), _pt("B", "8192", 4, 250.0, 100.0),
           _pt("A", "8192", 2, 100.0, 300.0), _pt("B", "8192", 2, 130.0, 200.0),
           _pt("A", "8192", 16, 0.0, 300.0), _pt("B", "8192", 16, 10.0, 200.0)]  # A failed all: no ratio
    c = compare(pts, "A", "B")
    assert c["min_output_throughput_ratio"] == pytest.approx(0.75)
    assert c["max_output_throughput_ratio"] == pytest.approx(1.5)
    assert c["ttft_p50_ratio"] == {"1024": pytest.approx(2.0), "8192": pytest.approx(1.5)}  # lowest concurrency
    ratios = {(p["workload"], p["concurrency"]): p["output_throughput_ratio"] for p in c["points"]}
    assert ratios[("8192", 16)] is None and ratios[("8192", 4)] == pytest.approx(1.25)
    assert c["geomean_output_throughput_ratio"] == pytest.approx((1.5 * 0.75 * 1.25 * 1.3) ** 0.25)


# ---- the command line -----------------------------------------------------------------------------------


def _runs(servers: dict[str, FakeServer]) -> list[str]:
    """Server names in arrival order, with consecutive repeats collapsed."""
    arrivals = sorted((r.arrival, name) for name, s in servers.items() for r in s.received)
    out: list[str] = []
    for _, name in arrivals:
        if not out or out[-1] != name:
            out.append(name)
    return out


def test_cli_ab_sweep(tmp_path, capsys):
    # A's very first request (a warm-up) is slow: it must not show in A's measured TTFT.
    a = FakeServer(Behavior(ttft=0.1, itl=0.05, ttft_by_ordinal={0: 0.4}))
    b = FakeServer(Behavior(ttft=0.05, itl=0.025))
    out = tmp_path / "ab.json"
    with a, b:
        rc = main(["--server", f"A={a.url}", "--server", f"B={b.url}", "--vocab-size", "5000",
                   "--input-len", "8,16", "--output-len", "4", "--concurrency", "1,2", "--num-requests", "2",
                   "--warmup", "1", "--seed", "7", "--no-progress", "--out", str(out),
                   "--plot-dir", str(tmp_path / "plots"), "--meta", "card=fake", "--meta", "versions.sglang=0.5.17"])
    assert rc == 0
    assert _runs({"A": a, "B": b}) == ["A", "B"] * 4  # interleaved point by point
    assert len(a.received) == len(b.received) == 4 * (1 + 2)
    # Both servers got exactly the same prompts, in the same order.
    assert [r.body["input_ids"] for r in a.received] == [r.body["input_ids"] for r in b.received]

    doc = json.loads(out.read_text())
    assert set(doc) >= {"schema", "config", "servers", "points", "summary"}
    s = doc["summary"]
    for key in ("min_output_throughput_ratio", "max_output_throughput_ratio", "ttft_p50_ratio", "failed_requests",
                "card", "command", "date", "versions"):
        assert key in s
    assert s["card"] == "fake" and s["versions"]["sglang"] == "0.5.17" and "--concurrency 1,2" in s["command"]
    assert s["failed_requests"] == 0
    # B is twice as fast everywhere (0.125 s vs 0.25 s per request).
    assert 1.5 < s["min_output_throughput_ratio"] <= s["max_output_throughput_ratio"] < 2.6
    assert set(s["ttft_p50_ratio"]) == {"8", "16"} and all(1.5 < v < 2.6 for v in s["ttft_p50_ratio"].values())
    assert len(doc["points"]) == 8
    point_keys = {"server", "workload", "input_len", "concurrency", "num_requests", "completed", "failed",
                  "request_throughput", "output_throughput", "total_token_throughput", "ttft_ms", "tpot_ms",
                  "itl_ms", "e2e_latency_ms", "errors", "warmup_requests", "warmup_failed"}
    for p in doc["points"]:
        assert point_keys <= set(p)
        assert set(p["ttft_ms"]) >= {"mean", "p50", "p90", "p99"}
        assert p["output_tokens"] == 2 * 4 and p["completed"] == 2
    first_a = doc["points"][0]
    assert first_a["server"] == "A" and first_a["concurrency"] == 1 and first_a["workload"] == "8"
    assert abs(first_a["ttft_ms"]["p50"] - 100) < TOL * 1e3 and first_a["ttft_ms"]["p99"] < 200
    table = capsys.readouterr().out
    assert "B/A" in table and "failed requests: 0" in table
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == sorted(f"{k}_{w}.png" for k in ("throughput", "ttft", "itl") for w in ("8", "16"))
    assert all((tmp_path / "plots" / n).read_bytes()[:4] == b"\x89PNG" for n in pngs)


def test_cli_exit_code_on_failures(tmp_path):
    args = ["--vocab-size", "100", "--input-len", "4", "--output-len", "3", "--concurrency", "2",
            "--num-requests", "3", "--warmup", "0", "--no-progress", "--timeout", "5"]
    with FakeServer(Behavior(ttft=0.05, itl=0.05, failures={1: "http500", 4: "http500"})) as srv:
        out = tmp_path / "f.json"
        assert main(["--server", srv.url, *args, "--out", str(out)]) == 1
        doc = json.loads(out.read_text())
        assert doc["summary"]["failed_requests"] == 1 and doc["points"][0]["errors"] == {"http_status": 1}
        assert doc["servers"] == {"A": srv.url}
        assert main(["--server", srv.url, *args, "--allow-failures"]) == 0  # fails ordinal 4, allowed
    # A server that is down fails every request, including the warm-up.
    down = f"http://127.0.0.1:{_free_port()}"
    assert main(["--server", f"X={down}", *args, "--warmup", "1", "--out", str(out)]) == 1  # last --warmup wins
    assert json.loads(out.read_text())["summary"]["failed_requests"] == 4


def test_cli_usage_errors():
    with pytest.raises(SystemExit) as e:
        main(["--server", "A=http://127.0.0.1:1", "--input-len", "8"])  # no --vocab-size
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["--server", "A=127.0.0.1:1", "--vocab-size", "10"])  # no scheme
    with pytest.raises(SystemExit):
        main(["--server", "http://127.0.0.1:1", "--vocab-size", "10", "--video-url", "x"])  # not chat


def test_cli_chat_dataset_with_video(tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps(x) for x in [
        {"messages": [{"role": "user", "content": "what happens"}], "video_url": "http://127.0.0.1:1/a.mp4"},
        {"prompt": "count the birds", "output_len": 2},
    ]) + "\n")
    with FakeServer(Behavior(ttft=0.05, itl=0.05)) as srv:
        rc = main(["--server", srv.url, "--backend", "openai-chat", "--dataset", str(data), "--output-len", "3",
                   "--video-url", "http://127.0.0.1:1/b.mp4", "--concurrency", "1", "--num-requests", "2",
                   "--warmup", "0", "--no-progress", "--out", str(tmp_path / "c.json")])
    assert rc == 0
    first, second = (r.body for r in sorted(srv.received, key=lambda r: r.ordinal))
    assert first["model"] == "fake-model"  # from /v1/models
    assert [p.get("video_url", {}).get("url") for p in first["messages"][0]["content"]] == [
        "http://127.0.0.1:1/a.mp4", "http://127.0.0.1:1/b.mp4", None]
    assert second["messages"][0]["content"][-1] == {"type": "text", "text": "count the birds"}
    assert (first["max_tokens"], second["max_tokens"]) == (3, 2)
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["points"][0]["workload"] == "chat" and doc["points"][0]["output_tokens"] == 5


def test_cli_deadline_stops_starting_points_and_keeps_what_ran(tmp_path, capsys):
    # Each request takes ~0.15 s; a 0.2 s deadline lets the first point (A and B) run, then stops.
    a, b = FakeServer(Behavior(ttft=0.1, itl=0.025)), FakeServer(Behavior(ttft=0.1, itl=0.025))
    out = tmp_path / "ab.json"
    with a, b:
        rc = main(["--server", f"A={a.url}", "--server", f"B={b.url}", "--vocab-size", "500",
                   "--input-len", "8,16", "--output-len", "3", "--concurrency", "1,2", "--num-requests", "1",
                   "--warmup", "0", "--no-progress", "--out", str(out), "--deadline-s", "0.2"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert [(p["server"], p["workload"], p["concurrency"]) for p in doc["points"]] == [("A", "8", 1), ("B", "8", 1)]
    assert len(a.received) == len(b.received) == 1
    assert "deadline reached: 3 point(s) not run" in capsys.readouterr().err


def test_cli_writes_results_after_every_point(tmp_path):
    a, b = FakeServer(Behavior(ttft=0.01, itl=0.01)), FakeServer(Behavior(ttft=0.01, itl=0.01))
    out = tmp_path / "ab.json"
    seen = []
    import benchmarks.serving.report as report

    real = report.write_json

    def spy(path, config, servers, points, summary):
        seen.append(len(points))
        real(path, config, servers, points, summary)

    import benchmarks.bench_serving as bs

    bs.write_json, saved = spy, bs.write_json
    try:
        with a, b:
            assert main(["--server", f"A={a.url}", "--server", f"B={b.url}", "--vocab-size", "500",
                         "--input-len", "8", "--output-len", "2", "--concurrency", "1,2", "--warmup", "0",
                         "--num-requests", "1", "--no-progress", "--out", str(out)]) == 0
    finally:
        bs.write_json = saved
    assert seen[:4] == [1, 2, 3, 4] and seen[-1] == 4  # partial saves, then the final one
    assert len(json.loads(out.read_text())["points"]) == 4


def test_num_requests_kx_has_a_configurable_floor(tmp_path):
    a = FakeServer(Behavior(ttft=0.005, itl=0.005))
    out = tmp_path / "one.json"
    with a:
        assert main(["--server", f"A={a.url}", "--vocab-size", "500", "--input-len", "8", "--output-len", "2",
                     "--concurrency", "1,3", "--num-requests", "1x", "--min-requests", "2", "--warmup", "0",
                     "--no-progress", "--out", str(out)]) == 0
    assert [p["num_requests"] for p in json.loads(out.read_text())["points"]] == [2, 3]
    assert len(a.received) == 5
