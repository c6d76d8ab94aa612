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

# Findings: what SGLang 0.5.17's HTTP layer + request validation answer with other than a 4xx. The
# reasons and who owns each live in the corpus (corpus.KNOWN): all are SGLang's own behaviour.
NOT_4XX = {
    "gen_unknown_top_field": 200, "cmp_unknown_field": 200, "chat_unknown_field": 200,  # ignored fields
    "gen_unknown_sampling_param": 500, "gen_max_new_tokens_string": 500,  # TypeError -> 500
    # no input-id range check before the model (the vocab helper is never called)
    "gen_token_id_eq_vocab": 200, "gen_token_id_negative": 200, "gen_token_id_2e40": 200,
    "cmp_prompt_id_over_vocab": 200, "gen_batch_with_bad_ids": 200,
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
    from sglang.srt.plugins.hook_registry import HookRegistry

    from sglang_msa.request_checks import register_request_hooks

    register_request_hooks()  # what the plugin's register() does in every server process
    HookRegistry.apply_hooks()  # what SGLang's load_plugins() does next
    out, dispatched = {}, {}
    with sglang_app(text_ckpt, 4096) as (app, tm):
        cases = [c for c in C.build_corpus(C.Context(tm.model_config.vocab_size, tm.context_len, None))]
        out.update(answer_corpus(app, cases))  # a server without msa: SGLang's answers, hook installed
        dispatched["text"] = [t.rid for t in tm.dispatched]
        # the same server opted in (the hook reads server_args per request): ours for the token ids
        real_args = tm.server_args  # resolved server args are read-only: a view with msa picked

        class _MsaArgs:
            attention_backend = "msa"

            def __getattr__(self, name):
                return getattr(real_args, name)

        tm.server_args = _MsaArgs()
        try:
            msa = [c for c in cases if c.exercises in ("token_ids", "context_length")]
            out.update({f"msa:{k}": v for k, v in answer_corpus(app, msa).items()})
        finally:
            tm.server_args = real_args
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
    got = {name: a.status for name, a in cpu_outcomes.items() if name != "vl_valid_clip" and ":" not in name}
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
    # ours: non-video bytes are refused by smg_rs, never decoded by SGLang's fallback decoder
    assert cpu_outcomes["vl_video_png_as_video"].status == 400
    assert "unsupported video" in cpu_outcomes["vl_video_png_as_video"].message
    assert "no video stream" in cpu_outcomes["vl_video_truncated_head"].message
    missing = cpu_outcomes["vl_video_missing_file"].message
    assert "not found" in missing and "/nonexistent/dir/clip.mp4" in missing and "base64" not in missing


@pytest.mark.sglang
def test_msa_servers_reject_out_of_vocab_input_ids(cpu_outcomes):
    """The plugin's opted-in hook: every token-id case is a 4xx on an msa server (SGLang's 200 above
    is for the same server without msa), with the offending id and the range; valid ids still 200."""
    msa = {k[4:]: a for k, a in cpu_outcomes.items() if k.startswith("msa:")}
    for name in ("gen_token_id_eq_vocab", "gen_token_id_negative", "gen_token_id_2e40", "cmp_prompt_id_over_vocab",
                 "gen_batch_with_bad_ids"):
        assert msa[name].status == 400, (name, msa[name])
        assert "out-of-vocabulary token id" in msa[name].message and "valid range is [0, " in msa[name].message
        assert msa[name].probe_status == 200
    assert "token id -1;" in msa["gen_token_id_negative"].message
    # everything else in those classes answers as without the hook
    for name, a in msa.items():
        assert 400 <= a.status < 500, (name, a)
        if "token_id" not in name and "over_vocab" not in name and "bad_ids" not in name:
            assert a.message == cpu_outcomes[name].message


def test_input_id_hook_leaves_other_servers_alone():
    from types import SimpleNamespace

    from sglang_msa.request_checks import check_input_ids_in_vocab

    calls = []

    def original(self, obj, ids):
        calls.append(ids)

    def tm(backend):
        return SimpleNamespace(server_args=SimpleNamespace(attention_backend=backend),
                               model_config=SimpleNamespace(vocab_size=10))

    for backend in (None, "fa3", "triton"):
        check_input_ids_in_vocab(original, tm(backend), SimpleNamespace(input_ids=[-1, 99]), [-1, 99])
    assert len(calls) == 3
    check_input_ids_in_vocab(original, tm("msa"), SimpleNamespace(input_ids=[0, 9]), [0, 9])
    check_input_ids_in_vocab(original, tm("msa"), SimpleNamespace(input_ids=None), [5, 6])  # text prompt
    assert len(calls) == 5
    for bad in ([0, 10], [-1], [[1, 2], [3, 2**40]]):
        with pytest.raises(ValueError, match="out-of-vocabulary"):
            check_input_ids_in_vocab(original, tm("msa"), SimpleNamespace(input_ids=bad), bad)
    assert len(calls) == 5


def test_corpus_records_expected_status_and_owner(media):
    cases = {c.name: c for c in C.build_corpus(C.Context(1024, 4096, media))}
    assert {n: c.known_status for n, c in cases.items() if c.known_status is not None} == NOT_4XX
    for name in NOT_4XX:
        assert cases[name].verdict.startswith("sglang"), name
    assert cases["vl_video_png_as_video"].known_status is None  # a 4xx now (ours, fixed)
    assert cases["vl_video_png_as_video"].verdict.startswith("ours")
    s = cases["gen_token_id_negative"].summary()
    assert s["expected_status"] == 200 and "never" not in s["verdict"] and s["verdict"]
    summary = results.summarize({"corpus": [{**cases["gen_token_id_negative"].summary(), "status": 200, "message": ""},
                                            {**cases["cmp_n_zero"].summary(), "status": 500, "message": "x"}]})
    assert summary["malformed_unexpected"] == ["cmp_n_zero"]
    assert summary["malformed_not_4xx_by_owner"]["sglang"] == ["cmp_n_zero", "gen_token_id_negative"]


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
