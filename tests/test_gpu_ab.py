"""benchmarks/gpu_ab.py's orchestration on the CPU: fake SGLang servers stand in for A and B (no GPU, no
sglang processes); the real bench_serving sweep runs against them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("aiohttp")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import benchmarks.gpu_ab as gpu_ab  # noqa: E402
from fake_sglang_server import Behavior, FakeServer  # noqa: E402


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    a = FakeServer(Behavior(ttft=0.04, itl=0.01))
    b = FakeServer(Behavior(ttft=0.02, itl=0.005))  # B twice as fast
    started: list[tuple[str, dict]] = []

    class FakeProc:
        def poll(self):
            return None

    class FakeLaunch(gpu_ab.Server):
        @property
        def url(self) -> str:
            return (b if self.name == "B" else a).url

        def start(self, log_dir):
            started.append((self.name, dict(self.env)))
            self.proc = FakeProc()
            return self

        def wait_healthy(self, timeout_s):
            self.ready_s = 0.0
            return True

        def stop(self):
            self.proc = None

    def slice_config(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"vocab_size": 700}))
        return path

    monkeypatch.setattr(gpu_ab, "Server", FakeLaunch)
    monkeypatch.setattr(gpu_ab, "card_name", lambda: "Fake GPU")
    monkeypatch.setattr(gpu_ab, "write_slice_config", lambda p: slice_config(tmp_path / "slice"))
    monkeypatch.setattr(gpu_ab, "warm_up", lambda *a, **k: 0.0)
    monkeypatch.setattr(gpu_ab, "_profile", lambda s, args, vocab: {"server": s.name})
    monkeypatch.setattr(gpu_ab, "generate", lambda s, ids, n, **k: {
        "output_ids": [len(ids) % 97] * n, "logprobs": [-1.0 if s.name == "B" else -1.25] * n})
    with a, b:
        yield a, b, started


@pytest.mark.parametrize("split", [True, False])
def test_gpu_ab_measures_both_servers_and_summarizes_b_over_a(fakes, tmp_path, split):
    a, b, started = fakes
    gpus = ["--a-gpu", "0", "--b-gpu", "1"] if split else []
    rc = gpu_ab.main(["--out-dir", str(tmp_path / "out"), "--input-lens", "16,8", "--concurrency", "1,2",
                      "--output-len", "4", "--num-requests", "2", "--baseline-page", "128", *gpus])
    assert rc == 0
    doc = json.loads(next((tmp_path / "out").glob("serving-Fake-GPU-*-30000.json")).read_text())
    assert doc["placement"].startswith("A and B on separate" if split else "A and B on one GPU")
    run = doc["runs"]["A-page128"]
    points = run["result"]["points"]
    assert sorted({p["server"] for p in points}) == ["A-page128", "B"] and len(points) == 8
    # Same prompts on both servers (B's client and A's client draw the same seeded workload).
    assert sorted(r.body["input_ids"] for r in a.received) == sorted(r.body["input_ids"] for r in b.received)
    s = doc["summary"]
    assert s["baseline"] == "A-page128" and s["failed_requests"] == 0
    assert 1.3 < s["min_output_throughput_ratio"] <= s["max_output_throughput_ratio"] < 3.0
    assert s["ttft_p50_ratio_by_prompt"].keys() == {"16", "8"} and s["ttft_p50_ratio_64k"] is None
    assert run["profile"] == {"A-page128": {"server": "A-page128"}, "B": {"server": "B"}}
    spot = run["greedy_spot_check"]
    assert spot["same_weights"] is False and spot["identical_fraction"] == 1.0
    assert [r["len"] for r in spot["prompts"]] == [4096, 20000] and spot["prompts"][0]["max_logprob_abs_diff"] == 0.25
    env = dict(started)
    assert env["A-page128"]["SGLANG_MSA_DISABLE"] == "1" and env["B"]["SGLANG_MSA_MODELS"] == "1"
    if split:
        assert env["A-page128"]["CUDA_VISIBLE_DEVICES"] == "0" and env["B"]["CUDA_VISIBLE_DEVICES"] == "1"
    assert [name for name, _ in started] == ["B", "A-page128"]  # B first: on one card A sizes its pool after B


def test_gpu_ab_skips_the_second_baseline_when_time_is_short(fakes, tmp_path):
    rc = gpu_ab.main(["--out-dir", str(tmp_path / "out"), "--input-lens", "8", "--concurrency", "1",
                      "--output-len", "2", "--num-requests", "1", "--baseline-page", "both", "--deadline-s", "150",
                      "--profile", "off", "--a-gpu", "0", "--b-gpu", "1"])
    assert rc == 0
    doc = json.loads(next((tmp_path / "out").glob("serving-Fake-GPU-*-30000.json")).read_text())
    assert doc["runs"]["A-page128"]["result"]["summary"]["points_run"] == 2
    assert "skipped" in doc["runs"]["A-pagedefault"]
    assert doc["summary"]["runs_without_result"] == ["A-pagedefault"]


def _run(a_tok_s: float, b_tok_s: float, tag: str) -> dict:
    """One gpu_ab run doc with two points; A's and B's output throughput as given."""
    points = [{"server": server, "workload": w, "concurrency": c, "output_throughput": tok_s * (1 + 0.1 * c)}
              for server, tok_s in ((tag, a_tok_s), ("B", b_tok_s)) for w in ("32768",) for c in (1, 4)]
    ratio = b_tok_s / a_tok_s
    return {"result": {"points": points, "summary": {
        "min_output_throughput_ratio": ratio, "max_output_throughput_ratio": ratio,
        "geomean_output_throughput_ratio": ratio, "ttft_p50_ratio": {"65536": 2.0}, "failed_requests": 1}}}


def test_gpu_ab_merge_compares_b_with_the_faster_a_not_the_smaller_ratio(tmp_path):
    # A at the default page size is the faster baseline here, though B's ratio over it is the larger one.
    docs = {"page128": {"A-page128": _run(100.0, 110.0, "A-page128")},
            "default": {"A-pagedefault": _run(105.0, 130.0, "A-pagedefault")}}
    paths = []
    for name, runs in docs.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"card": "Fake GPU", "date": "2026-01-01", "command": name, "runs": runs}))
        paths.append(path)
    out = gpu_ab.merge(paths, tmp_path)
    doc = json.loads(out.read_text())
    s = doc["summary"]
    assert s["baseline"] == "A-pagedefault"
    assert s["min_output_throughput_ratio"] == pytest.approx(130 / 105)
    assert s["baseline_choice"]["common_points"] == 2
    assert s["baseline_choice"]["a_output_throughput_geomean"]["A-page128"] < \
        s["baseline_choice"]["a_output_throughput_geomean"]["A-pagedefault"]
    assert s["failed_requests"] == 2 and sorted(doc["runs"]) == ["A-page128", "A-pagedefault"]
    assert doc["commands"] == ["page128", "default"]
