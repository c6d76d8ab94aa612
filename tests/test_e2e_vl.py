"""benchmarks/e2e_vl.py on the CPU: request building and parsing, and a whole run against two fake
OpenAI chat servers standing in for SGLang (no GPU, no sglang processes)."""

from __future__ import annotations

import base64
import io
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import benchmarks.e2e_vl as e2e_vl  # noqa: E402


def test_sample_image_is_a_deterministic_odd_sized_png():
    from PIL import Image

    png = e2e_vl.sample_image_png()
    assert png == e2e_vl.sample_image_png() != e2e_vl.sample_image_png(seed=1)
    img = Image.open(io.BytesIO(png))
    assert img.size == (97, 61) and img.mode == "RGB"


def test_requests_hold_the_media_and_a_prompt_longer_than_the_sparse_budget():
    url = e2e_vl.data_url(b"\x89PNG-bytes", "image/png")
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == b"\x89PNG-bytes"
    reqs = dict(e2e_vl.chat_requests(url, None, long_words=3000))
    assert list(reqs) == ["image", "long-text-then-image"]
    assert [p["type"] for p in reqs["long-text-then-image"]] == ["text", "image_url", "text"]
    assert len(reqs["long-text-then-image"][0]["text"].split()) == 3000
    with_video = dict(e2e_vl.chat_requests(url, "data:video/mp4;base64,AAAA", 10))
    assert with_video["video"][0] == {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}
    body = e2e_vl.chat_body(reqs["image"], 5)
    assert body["temperature"] == 0.0 and body["logprobs"] is True and body["max_tokens"] == 5


def _completion(tokens, logprobs, prompt_tokens=100):
    return {"choices": [{"message": {"content": "".join(tokens)},
                         "logprobs": {"content": [{"token": t, "logprob": lp} for t, lp in zip(tokens, logprobs)]}}],
            "usage": {"prompt_tokens": prompt_tokens}}


def test_compare_reports_the_first_divergence_and_logprob_gap():
    a = e2e_vl.parse_chat(_completion(["x", "y", "z"], [-1.0, -2.0, -3.0]))
    same = e2e_vl.compare(a, e2e_vl.parse_chat(_completion(["x", "y", "z"], [-1.0, -2.5, -3.0])))
    assert same["exact_match"] and same["first_divergence"] is None and same["max_logprob_abs_diff"] == 0.5
    diff = e2e_vl.compare(a, e2e_vl.parse_chat(_completion(["x", "q", "z"], [-1.0, -2.25, -9.0])))
    assert not diff["exact_match"] and diff["first_divergence"] == 1 and diff["max_logprob_abs_diff"] == 0.25
    empty = e2e_vl.parse_chat({"choices": [{"message": {"content": ""}}]})
    assert not e2e_vl.compare(empty, empty)["exact_match"]  # no tokens is not a match


class _ChatHandler(BaseHTTPRequestHandler):
    behaviour: dict = {}

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append(body)
        parts = body["messages"][0]["content"]
        if self.server.fail_video and any(p["type"] == "video_url" for p in parts):
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b'{"error": "no video decoder"}')
            return
        n = body["max_tokens"]
        tokens = [f"t{len(parts)}_{i}" for i in range(n)]
        payload = json.dumps(_completion(tokens, [-0.5 - self.server.shift] * n)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)


def _fake(shift: float, fail_video: bool):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    srv.seen, srv.shift, srv.fail_video = [], shift, fail_video
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.mark.parametrize("fail_video", [False, True])
def test_main_compares_both_servers_and_counts_failures(monkeypatch, tmp_path, fail_video):
    a, b = _fake(0.0, False), _fake(0.125, fail_video)
    started = []

    class FakeLaunch(e2e_vl.Server):
        @property
        def url(self):
            srv = a if self.name.startswith("A") else b
            return f"http://127.0.0.1:{srv.server_address[1]}"

        def start(self, log_dir):
            started.append((self.name, dict(self.env), self.tokenizer, list(self.args)))
            return self

        def wait_healthy(self, timeout_s):
            self.ready_s = 0.0
            return True

        def stop(self):
            pass

    monkeypatch.setattr(e2e_vl, "Server", FakeLaunch)
    monkeypatch.setattr(e2e_vl, "card_name", lambda: "Fake GPU")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not really a video")
    try:
        rc = e2e_vl.main(["--model-path", "/nowhere", "--out-dir", str(tmp_path), "--video", str(clip),
                          "--long-words", "50", "--new-tokens", "4"])
    finally:
        a.shutdown()
        b.shutdown()
    doc = json.loads(next(tmp_path.glob("e2e-vl-Fake-GPU-*.json")).read_text())
    s = doc["summary"]
    assert s["prompts"] == ["image", "long-text-then-image", "video"]
    assert rc == (1 if fail_video else 0) and s["failed_requests"] == (1 if fail_video else 0)
    assert s["greedy_exact_match_fraction"] == 1.0 and s["max_logprob_abs_diff"] == 0.125
    assert [r.get("error") is not None for r in doc["prompts"]] == [False, False, fail_video]
    assert [body["messages"] for body in a.seen] == [body["messages"] for body in b.seen]
    (name_a, env_a, tok_a, args_a), (name_b, env_b, tok_b, args_b) = started
    assert env_a == {"SGLANG_MSA_DISABLE": "1"} and env_b == {"SGLANG_MSA_MODELS": "1"}
    assert tok_a and tok_b  # chat requests need the tokenizer
    assert "msa" in args_b and "--disable-cuda-graph" in args_a and "--disable-cuda-graph" not in args_b
