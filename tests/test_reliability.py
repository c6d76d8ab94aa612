"""The malformed-request corpus against SGLang's REAL HTTP app on CPU, and the reliability results
writer on a fake run (issue #14).

The corpus tests send every case through ``sglang.srt.entrypoints.http_server.app`` in-process
(httpx's ASGI transport) with SGLang's own TokenizerManager request path, tokenizer, templates and,
for M3-VL, the multimodal processor the plugin installs (smg_rs decoding); only the scheduler is a
stand-in (:mod:`benchmarks.reliability.inprocess`). ``NOT_4XX`` pins what SGLang's layers answer
with something other than a 4xx today: each is a finding (see the comments), so a change in SGLang
or in our processor shows up here.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.reliability import corpus as C  # noqa: E402
from benchmarks.reliability import results  # noqa: E402

# Findings: what SGLang 0.5.17's HTTP layer + request validation answer with other than a 4xx.
NOT_4XX = {
    # Unknown fields are ignored (pydantic's default extra="ignore"), OpenAI rejects them with a 400.
    "gen_unknown_top_field": 200,
    "cmp_unknown_field": 200,
    "chat_unknown_field": 200,
    # SamplingParams(**sampling_params) raises TypeError (unexpected keyword), /generate catches only
    # ValueError -> 500.
    "gen_unknown_sampling_param": 500,
    # SamplingParams.verify compares the string with 0 -> TypeError -> 500.
    "gen_max_new_tokens_string": 500,
    # No input-id range check before the model: TokenizerManager._validate_input_ids_in_vocab exists
    # but nothing calls it. On a GPU these reach the embedding (out-of-bounds gather).
    "gen_token_id_eq_vocab": 200,
    "gen_token_id_negative": 200,
    "gen_token_id_2e40": 200,
    "cmp_prompt_id_over_vocab": 200,
    "gen_batch_with_bad_ids": 200,
    # A PNG posing as video/mp4: smg_rs refuses it (UnsupportedFormatError), our processor then falls
    # back to SGLang's TorchCodec decoder, which reads the PNG as a one-frame video -> 200.
    "vl_video_png_as_video": 200,
}


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def media():
    m = C.load_media()
    if m is None:
        pytest.skip("no ffmpeg CLI and no media.tar.gz")
    return m


# ---------------------------------------------------------------------------------------- corpus


def test_corpus_covers_every_fault_class(media):
    cases = C.build_corpus(C.Context(vocab_size=1024, context_len=4096, media=media))
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    assert len(cases) >= 36
    assert {c.exercises for c in cases} == set(C.CLASSES)
    assert {c.path for c in cases} == {C.GENERATE, C.COMPLETIONS, C.CHAT}
    assert all(isinstance(c.body, bytes) and c.method == "POST" for c in cases)
    vl = [c for c in cases if c.target == "vl"]
    assert len(vl) >= 10 and all(c.path == C.CHAT and "mm_processor" in c.needs for c in vl)
    # the over-context cases really are over the context
    over = next(c for c in cases if c.name == "gen_ids_over_context")
    assert len(json.loads(over.body)["input_ids"]) > 4096
    # non-UTF-8 cases really carry bytes that do not decode
    for c in cases:
        if c.exercises == "non_utf8":
            with pytest.raises(UnicodeDecodeError):
                c.body.decode("utf-8")
    assert C.build_corpus(C.Context(1024, 4096, None)) == [c for c in cases if c.target == "text"]


def test_vl_media_exceed_the_documented_limits(media):
    smg_rs = pytest.importorskip("smg_rs")
    assert smg_rs.preprocess_video(media["clip.mp4"]).grid_thw[0] >= 1  # the base clip is valid
    with pytest.raises(smg_rs.LimitExceededError, match="max_frame_pixels"):
        smg_rs.preprocess_video(media["huge_frames.mp4"])
    with pytest.raises(smg_rs.LimitExceededError, match="max_duration_s"):
        smg_rs.preprocess_video(media["too_long.mp4"])
    with pytest.raises(smg_rs.VideoDecodeError):
        smg_rs.preprocess_video(C._corrupt(media["clip.mp4"]))
    with pytest.raises(smg_rs.LimitExceededError, match="max_input_bytes"):
        smg_rs.preprocess_video(media["clip.mp4"] + bytes(C.TEST_MAX_INPUT_BYTES), max_input_bytes=C.TEST_MAX_INPUT_BYTES)


# ------------------------------------------------------------------- SGLang's real layers on CPU


@pytest.fixture(scope="module")
def cpu_outcomes(tmp_path_factory, media):
    """{case name: Answer} for the whole corpus through SGLang's app (text on the tiny checkpoint,
    VL on the tiny --vision checkpoint with the plugin's processor)."""
    pytest.importorskip("sglang")
    pytest.importorskip("httpx")
    import os

    from benchmarks.reliability.inprocess import answer_corpus, cpu_media_shims, sglang_app
    from sglang_msa_tools.tiny_m3 import write_checkpoint

    d = tmp_path_factory.mktemp("rel")
    text_ckpt, vl_ckpt = str(d / "tiny"), str(d / "tiny-vl")
    write_checkpoint(text_ckpt, "tiny", config_only=True)
    write_checkpoint(vl_ckpt, "tiny", vision=True, config_only=True)
    out, dispatched = {}, {}
    with sglang_app(text_ckpt, 4096) as (app, tm):
        cases = [c for c in C.build_corpus(C.Context(tm.model_config.vocab_size, tm.context_len, None))]
        out.update(answer_corpus(app, cases))
        dispatched["text"] = [t.rid for t in tm.dispatched]
    old = os.environ.get("SGLANG_MSA_SMG_LIMITS")
    os.environ["SGLANG_MSA_SMG_LIMITS"] = C.SMG_LIMITS_ENV
    try:
        with cpu_media_shims(), sglang_app(vl_ckpt, 4096, mm_processor_package="sglang_msa.multimodal") as (app, tm):
            assert type(tm.mm_processor).__module__ == "sglang_msa.multimodal.minimax_m3_vl"
            vl = [c for c in C.build_corpus(C.Context(tm.model_config.vocab_size, tm.context_len, media))
                  if c.target == "vl"]
            good = C.Case("vl_valid_clip", C.CHAT, C._chat_video(C._uri("video/mp4", media["clip.mp4"]), "default"),
                          "vl_video", "a valid clip (control)", target="vl")
            out.update(answer_corpus(app, [good, *vl]))
    finally:
        if old is None:
            os.environ.pop("SGLANG_MSA_SMG_LIMITS", None)
        else:
            os.environ["SGLANG_MSA_SMG_LIMITS"] = old
    return out


@pytest.mark.sglang
def test_sglang_keeps_serving_after_every_case(cpu_outcomes):
    assert all(a.probe_status == 200 for a in cpu_outcomes.values()), \
        {k: a.probe_status for k, a in cpu_outcomes.items() if a.probe_status != 200}
    assert cpu_outcomes["vl_valid_clip"].status == 200  # the VL path works when the input is fine


@pytest.mark.sglang
def test_sglang_answers_the_corpus_with_4xx_except_the_findings(cpu_outcomes):
    got = {name: a.status for name, a in cpu_outcomes.items() if name != "vl_valid_clip"}
    measured_not_4xx = {n: s for n, s in got.items() if not 400 <= s < 500}
    assert measured_not_4xx == NOT_4XX
    for name, a in cpu_outcomes.items():
        if 400 <= a.status < 500:
            assert a.message.strip(), name  # a clear message, never an empty 4xx
    # the limits the VL cases go past are named in the answers
    assert "max_frame_pixels" in cpu_outcomes["vl_video_frames_too_large"].message
    assert "max_duration_s" in cpu_outcomes["vl_video_too_long"].message
    assert "max_input_bytes" in cpu_outcomes["vl_video_payload_over_cap"].message
    assert "context length" in cpu_outcomes["gen_ids_over_context"].message


# -------------------------------------------------------------------------- results on a fake run


def _strict_generate_only(path: str, raw: bytes):
    """The fake server's validator: only well-formed /generate token-id requests get through."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "invalid JSON"
    if path != "/generate" or not isinstance(body, dict) or set(body) - {"input_ids", "sampling_params", "stream"}:
        return f"unsupported request on {path}"
    ids, sp = body.get("input_ids"), body.get("sampling_params") or {}
    if not (isinstance(ids, list) and ids and all(isinstance(i, int) and 0 <= i < 50022 for i in ids)):
        return "bad input_ids"
    if not isinstance(sp.get("max_new_tokens"), int) or not 0 < sp["max_new_tokens"] <= 8192 - len(ids):
        return "bad max_new_tokens / context"
    if set(sp) - {"max_new_tokens", "temperature", "ignore_eos"} or sp.get("temperature", 0) < 0:
        return "bad sampling params"
    return None


def _fake_run(tmp_path, leak: int, media_ok: bool = True):
    from fake_sglang_server import Behavior, FakeServer

    rel = _module(ROOT / "benchmarks" / "reliability.py", "reliability_driver")
    behavior = Behavior(ttft=0.01, itl=0.001, validator=_strict_generate_only, generate_json_unless_stream=True,
                        kv_leak_per_request=leak, kv_total=100_000)
    with FakeServer(behavior) as fake:
        rc = rel.main(["--out-dir", str(tmp_path), "--url", fake.url, "--vl-url", fake.url, "--card", "Fake GPU",
                       "--phases", "vl,load,corpus" if media_ok else "load,corpus", "--load", "8x64,2x512",
                       "--disconnects", "2", "--disconnect-len", "64", "--deadline-s", "300"])
        assert rc == 0
        assert fake.flushes >= 3
    files = list(tmp_path.glob("reliability-Fake-GPU-*.json"))
    assert len(files) == 1
    return json.loads(files[0].read_text())


def test_results_file_summary_from_a_fake_run(tmp_path, media):
    data = _fake_run(tmp_path, leak=0)
    s = data["summary"]
    assert set(results.SUMMARY_KEYS) <= set(s)
    n_cases = len(C.build_corpus(C.Context(50022, 8192, media)))
    assert s["card"] == "Fake GPU"
    assert s["malformed_requests_tried"] == n_cases >= 36
    assert s["malformed_requests_4xx"] == n_cases  # the fake server rejects every case with a message
    assert s["failed_requests"] == 0 and s["server_crashes"] == 0
    assert s["kv_leak_tokens"] == 0
    assert s["concurrent_long_requests"] == 8
    assert s["vanilla_unchanged"] is None  # not run here
    assert s["targets"]["kv_leak_tokens"]["met"] is True
    assert s["targets"]["concurrent_long_requests"]["met"] is False  # 8 < 64
    assert data["disconnect"]["first_chunk"] == 2
    assert s["tp_sizes_equal_to_intree"] is None and any("tp_sizes" in n for n in s["notes"])
    assert all(c["probe_ok"] for c in data["corpus"])
    # a second call (other phases) extends the first call's records
    rel = _module(ROOT / "benchmarks" / "reliability.py", "reliability_driver")
    first = next(tmp_path.glob("reliability-*.json"))
    second = tmp_path / "second"
    from fake_sglang_server import Behavior, FakeServer

    with FakeServer(Behavior(ttft=0.01, validator=_strict_generate_only, generate_json_unless_stream=True)) as fake:
        rel.main(["--out-dir", str(second), "--url", fake.url, "--card", "Fake GPU", "--phases", "load",
                  "--load", "2x64", "--disconnects", "0", "--merge", str(first), "--deadline-s", "120"])
    merged = json.loads(next(second.glob("reliability-*.json")).read_text())
    assert merged["summary"]["malformed_requests_tried"] == n_cases
    assert [g["concurrency"] for g in merged["load"]] == [8, 2, 2]


def test_a_leak_and_non_4xx_answers_are_counted(tmp_path):
    data = _fake_run(tmp_path, leak=3, media_ok=False)
    s = data["summary"]
    # the fake leaks 3 tokens per finished request: 10 load requests, then (the last reading, after
    # the corpus) one probe per case; the disconnected streams never finish
    assert s["kv_leak_tokens"] == 3 * (8 + 2 + len(data["corpus"]))
    assert [c["after"] for c in data["kv"]["checks"]] == ["load 8x64", "load 2x512", "2 mid-stream disconnects",
                                                          "corpus"]
    assert s["targets"]["kv_leak_tokens"]["met"] is False
    raw = {"card": "x", "corpus": [{"name": "a", "status": 400, "message": "bad"},
                                   {"name": "b", "status": 400, "message": "  "},
                                   {"name": "c", "status": 500, "message": "boom"},
                                   {"name": "d", "status": 200, "message": ""},
                                   {"name": "e", "status": None, "message": "ConnectionResetError"},
                                   {"name": "f", "skipped": "deadline"}],
           "load": [{"concurrency": 64, "input_len": 32768, "sent": 64, "ok": 63, "failed": 1}]}
    s = results.summarize(raw)
    assert s["malformed_requests_tried"] == 5 and s["malformed_requests_4xx"] == 1
    assert [e["name"] for e in s["malformed_not_4xx"]] == ["b", "c", "d", "e"]
    assert s["failed_requests"] == 1 and s["concurrent_long_requests"] == 0  # a group with a failure
    assert s["kv_leak_tokens"] is None


def test_vanilla_verdict_reads_log_and_server_info():
    rel = _module(ROOT / "benchmarks" / "reliability.py", "reliability_driver")
    stock = ("[2026] sglang-msa: registered attention backend 'msa'\n"
             "[2026] MiniMax-M3 on hopper: attention_backend=fa3, page_size=128\n")
    v = rel.vanilla_verdict(stock, {"attention_backend": None}, True, True)
    assert v["unchanged"] is True and v["sglang_m3_choice"].endswith("page_size=128")
    ours = stock + "[2026] sglang-msa: built MiniMaxM3SparseForCausalLM (sglang_msa.models), 4 layers\n"
    v = rel.vanilla_verdict(ours, {"attention_backend": None}, True, True)
    assert v["unchanged"] is False and v["unexpected_plugin_lines"]
    assert rel.vanilla_verdict(stock, {"attention_backend": "msa"}, True, True)["unchanged"] is False
    assert rel.vanilla_verdict(stock, {"attention_backend": "fa3"}, True, False)["unchanged"] is False
    assert rel.parse_load("64x32768, 8x262144") == [(64, 32768), (8, 262144)]
