"""benchmarks/ab_video.py (the served video A/B of issue #15) on CPU: distinct clip copies, the trace
lines, and a whole run against two fake servers standing in for SGLang (their logs get the lines that
benchmarks/mm_trace would write)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import ab_video  # noqa: E402
from fake_sglang_server import Behavior, FakeServer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def fake_mp4(path: Path) -> Path:
    path.write_bytes(struct.pack(">I4s", 16, b"ftyp") + b"isom\0\0\0\0" + struct.pack(">I4s", 8, b"mdat"))
    return path


def test_distinct_copies_differ_only_by_a_trailing_free_box(tmp_path):
    clip = fake_mp4(tmp_path / "c.mp4")
    a, b = ab_video.distinct_copies(clip, tmp_path / "out", ["x/1", "x/2"])
    data = clip.read_bytes()
    for path, tag in ((a, b"x/1"), (b, b"x/2")):
        raw = path.read_bytes()
        assert raw.startswith(data)
        size, kind = struct.unpack(">I4s", raw[len(data):len(data) + 8])
        assert kind == b"free" and size == len(raw) - len(data) and raw.endswith(tag)
    assert a.read_bytes() != b.read_bytes() and a.name != b.name
    with pytest.raises(ValueError, match="MP4"):
        ab_video.distinct_copies(fake_mp4(tmp_path / "c.webm"), tmp_path / "out", ["t"])


def test_video_workload_is_the_same_for_both_servers_and_distinct_per_request(tmp_path):
    w = ab_video.VideoWorkload("10s", fake_mp4(tmp_path / "c.mp4"), tmp_path / "copies", output_len=4, text_words=5)
    first, again = w.requests(3, "c1/p0/measure"), w.requests(3, "c1/p0/measure")
    assert [r.video_urls for r in first] == [r.video_urls for r in again]
    assert [r.text for r in first] == [r.text for r in again]
    urls = [r.video_urls[0] for r in first + w.requests(2, "c8/p1/measure")]
    assert len(set(urls)) == 5 and all(Path(u).is_absolute() and Path(u).is_file() for u in urls)
    assert len({Path(u).read_bytes() for u in urls}) == 5


def test_preprocess_stats_keeps_the_calls_inside_a_point():
    log = "\n".join([
        "[mm-trace] 100.000000 100.500000 pid=1 MiniMaxM3VLProcessor 500.00 ok",  # warm-up, before the point
        "[mm-trace] 110.000000 110.200000 pid=1 MiniMaxM3VLProcessor 200.00 ok",
        "INFO something else",
        "[mm-trace] 111.000000 111.400000 pid=1 MiniMaxM3VLProcessor 400.00 error",
        "[mm-trace] 130.000000 130.100000 pid=1 MiniMaxM3VLProcessor 100.00 ok",  # the next point
    ])
    events = ab_video.mm_events(log)
    assert len(events) == 4 and events[2]["ok"] is False
    st = ab_video.preprocess_stats(events, 110.0, 120.0, ttft_mean_ms=600.0)
    assert st["calls"] == 2 and st["processors"] == ["MiniMaxM3VLProcessor"]
    assert st["preprocess_ms_p50"] == pytest.approx(300.0) and st["preprocess_ms_mean"] == pytest.approx(300.0)
    assert st["preprocess_share_of_ttft"] == pytest.approx(0.5)
    empty = ab_video.preprocess_stats(events, 200.0, 210.0, ttft_mean_ms=600.0)
    assert empty["calls"] == 0 and empty["preprocess_share_of_ttft"] is None


def test_server_specs_differ_only_by_the_backend_flag(tmp_path):
    specs = ab_video.server_specs(tmp_path, True, 0.4, 65536, 16, 200000, ["--disable-cuda-graph"])
    (a_flags, a_env), (b_flags, b_env) = specs["A"], specs["B"]
    assert b_flags == a_flags + ["--attention-backend", "msa"]
    assert "--load-format" in a_flags and "--disable-cuda-graph" in a_flags
    assert a_env["SGLANG_MSA_DISABLE"] == "1" and b_env["SGLANG_MSA_DISABLE"] == "0"
    for env in (a_env, b_env):
        assert env["SGLANG_MSA_TRACE_MM"] == "1" and env["PYTHONPATH"].split(os.pathsep)[0].endswith("mm_trace")


def test_mm_trace_wraps_the_processor_sglang_builds(tmp_path):
    """The sitecustomize wraps get_mm_processor's result; each call writes one line (in a subprocess, as
    in a server: the hook must be in place before SGLang's modules import the name)."""
    code = """
import asyncio, sys, types
mod = types.ModuleType("sglang.srt.managers.multimodal_processor")
class P:
    async def process_mm_data_async(self, *a, **k):
        await asyncio.sleep(0.01)
        return "features"
mod.get_mm_processor = lambda *a, **k: P()
# stand in for SGLang's module: a finder placed after ours serves it
import importlib.abc, importlib.util
class Src(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        return importlib.util.spec_from_loader(name, self) if name == mod.__name__ else None
    def create_module(self, spec): return None
    def exec_module(self, m): m.__dict__.update(get_mm_processor=mod.get_mm_processor)
sys.meta_path.append(Src())
for name in ("sglang", "sglang.srt", "sglang.srt.managers"):
    sys.modules.setdefault(name, types.ModuleType(name)).__path__ = []
import importlib
m = importlib.import_module("sglang.srt.managers.multimodal_processor")
print(asyncio.run(m.get_mm_processor().process_mm_data_async()))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "benchmarks" / "mm_trace"), "SGLANG_MSA_TRACE_MM": "1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "features"
    (event,) = ab_video.mm_events(res.stderr)
    assert event["processor"] == "P" and event["ok"] and event["ms"] >= 10
    off = subprocess.run([sys.executable, "-c", code], env={**env, "SGLANG_MSA_TRACE_MM": "0"},
                         capture_output=True, text=True, timeout=60)
    assert off.returncode == 0 and "[mm-trace]" not in off.stderr


class _TracingFake:
    """A fake server that logs one [mm-trace] line per chat request it gets, as the real hook would."""

    def __init__(self, name: str, ttft: float, pre_ms: float, log_dir: Path):
        self.name, self.pre_ms = name, pre_ms
        self.log_path = log_dir / f"server-{name}.log"
        self.fake = FakeServer(Behavior(ttft=ttft, itl=0.005, validator=self._trace))
        self.args: list[str] = []

    def _trace(self, path: str, raw: bytes) -> None:
        if path.endswith("chat/completions"):
            t0 = time.time()
            with open(self.log_path, "a") as f:
                f.write(f"[mm-trace] {t0:.6f} {t0 + self.pre_ms / 1e3:.6f} pid=1 Proc{self.name} {self.pre_ms:.2f} ok\n")
        return None

    @property
    def url(self) -> str:
        return self.fake.url


def test_a_whole_run_against_two_fake_servers(monkeypatch, tmp_path):
    clip = fake_mp4(tmp_path / "clip.mp4")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    fakes: dict[str, _TracingFake] = {}

    class FakeServerCls:
        def __new__(cls, name, port, args, env=None, tokenizer=False):
            f = _TracingFake(name, ttft=0.08 if name == "A" else 0.03, pre_ms=60 if name == "A" else 15,
                             log_dir=tmp_path)
            f.args, f.env = args, env
            fakes[name] = f
            return f

    def start_all(servers, log_dir, timeout_s, record):
        for s in servers:
            s.fake.__enter__()
            s.log_path.write_text("MiniMax-M3 on Hopper: attention_backend=fa3, page_size=128\n" if s.name == "A" else "")
            record[s.name] = {"args": s.args, "healthy": True}

    def stop_all(servers, record):
        for s in servers:
            s.fake.__exit__(None, None, None)

    import benchmarks.servers as servers_mod

    monkeypatch.setattr(servers_mod, "Server", FakeServerCls)
    monkeypatch.setattr(servers_mod, "start_all_or_exit", start_all)
    monkeypatch.setattr(servers_mod, "stop_and_record", stop_all)
    monkeypatch.setattr(ab_video, "card_and_versions", lambda: ("Fake GPU", {"sglang": "0.5.17"}))
    rc = ab_video.main(["--model-path", str(model), "--clip", f"short={clip}", "--concurrency", "1,2",
                        "--num-requests", "3", "--warmup", "1", "--output-len", "4", "--work-dir",
                        str(tmp_path / "work"), "--out-dir", str(tmp_path / "out"), "--name", "t"])
    assert rc == 0
    doc = json.loads((tmp_path / "out" / f"serving-video-Fake-GPU-{time.strftime('%Y-%m-%d')}-t.json").read_text())
    s = doc["summary"]
    assert set(s["points"]) == {"short/c1", "short/c2"} and s["failed_requests"] == 0
    assert s["points_not_run"] == []
    c1 = s["points"]["short/c1"]
    assert c1["ttft_p50_ratio"] > 1.5  # the fakes: A answers after 80 ms, B after 30
    assert c1["preprocess_ms_p50"] == {"A": pytest.approx(60.0), "B": pytest.approx(15.0)}
    assert 0 < c1["preprocess_share_of_ttft"]["B"] < 1
    assert s["preprocess_traced"] is True
    assert s["server_choices"]["A"] == {"gpu_family": "Hopper", "attention_backend": "fa3", "page_size": "128"}
    # every measured request sent its own copy of the clip, and the copies are gone afterwards
    bodies = [r.body for f in fakes.values() for r in f.fake.received if r.path.endswith("chat/completions")]
    urls = [b["messages"][0]["content"][0]["video_url"]["url"] for b in bodies]
    assert len(urls) == 2 * (2 * (3 + 1)) and len(set(urls)) == 2 * (3 + 1)
    assert not (tmp_path / "work" / "copies").exists()
