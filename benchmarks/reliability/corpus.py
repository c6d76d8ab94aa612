"""The malformed-request corpus: requests a server must answer with a 4xx and a clear message, and
then keep serving (issue #14, "Load and faults on a live server").

Each :class:`Case` is data: a name, the HTTP method and path, headers, the raw body bytes, the class
of fault it exercises and what it checks. :func:`build_corpus` makes the cases for one server (its
vocabulary size and context length decide the out-of-range values); the M3-VL cases carry media
made by :func:`load_media` (the ffmpeg CLI when present, else ``media.tar.gz`` next to this file,
which ``python -m benchmarks.reliability.corpus --write-media-archive`` regenerates).

``target`` says which server a case is for: ``text`` (any MiniMax-M3 server with a tokenizer) or
``vl`` (an M3-VL server). ``needs`` names what must be there for the case to mean anything:
``tokenizer`` (text prompts, chat templates) or ``mm_processor`` (media decoding). ``needs_model``
marks cases whose failure mode is only visible with a model behind the scheduler (a bad token id
reaches the embedding); the CPU harness answers them, but a 200 there is a finding, not a pass.

Run ``python -m benchmarks.reliability.corpus --list`` for the table.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

GENERATE, COMPLETIONS, CHAT = "/generate", "/v1/completions", "/v1/chat/completions"
JSON_HEADERS = {"Content-Type": "application/json"}
MEDIA_ARCHIVE = Path(__file__).with_name("media.tar.gz")

# Documented limits the VL cases go past. smg_rs (our video decoder) refuses frames above
# 7680*4320 pixels and streams longer than 4 h by default; its input-size cap (2 GiB by default) is
# set lower for the test server through the plugin's documented SGLANG_MSA_SMG_LIMITS variable.
SMG_MAX_FRAME_PIXELS = 7680 * 4320
SMG_MAX_DURATION_S = 4 * 3600
TEST_MAX_INPUT_BYTES = 4 << 20  # SGLANG_MSA_SMG_LIMITS='{"max_input_bytes": 4194304}' on the VL server
SMG_LIMITS_ENV = json.dumps({"max_input_bytes": TEST_MAX_INPUT_BYTES})

CLASSES = ("invalid_json", "non_utf8", "unknown_field", "max_tokens", "context_length", "token_ids",
           "sampling_params", "request_shape", "content_type", "vl_video", "vl_image")


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: bytes
    exercises: str  # one of CLASSES
    what: str  # the fault, in words
    method: str = "POST"
    headers: dict = field(default_factory=lambda: dict(JSON_HEADERS))
    target: str = "text"  # "text" | "vl"
    needs: tuple[str, ...] = ()  # "tokenizer", "mm_processor"
    needs_model: bool = False  # only a model behind the scheduler shows what this does
    # What SGLang 0.5.17 (+ the plugin) answers when that is not a 4xx, and whose behaviour it is:
    # ``known_status`` None means a 4xx is expected; ``verdict`` says why (see KNOWN below).
    known_status: int | None = None
    verdict: str = ""

    def summary(self) -> dict:
        return {"name": self.name, "method": self.method, "path": self.path, "exercises": self.exercises,
                "what": self.what, "target": self.target, "needs": list(self.needs),
                "needs_model": self.needs_model, "body_bytes": len(self.body),
                "content_type": self.headers.get("Content-Type"),
                "expected_status": self.known_status if self.known_status is not None else "4xx",
                "verdict": self.verdict}


@dataclass(frozen=True)
class Context:
    vocab_size: int
    context_len: int
    media: dict | None = None  # name -> bytes (load_media); None: no VL cases
    model: str = "default"


def _j(obj) -> bytes:
    return json.dumps(obj).encode()


def _gen(input_ids=None, text=None, **sampling) -> dict:
    body: dict = {"sampling_params": {"max_new_tokens": 4, "temperature": 0.0, **sampling}}
    if input_ids is not None:
        body["input_ids"] = input_ids
    if text is not None:
        body["text"] = text
    return body


def _chat_video(data_uri: str, model: str) -> bytes:
    return _j({"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": data_uri}},
        {"type": "text", "text": "What happens in this video?"}]}]})


def _chat_image(data_uri: str, model: str) -> bytes:
    return _j({"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_uri}},
        {"type": "text", "text": "Describe the image."}]}]})


def _uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


# Cases SGLang 0.5.17 answers with other than a 4xx, classified against the live server's code path
# (the in-process tier runs the same TokenizerManager.generate_request -> _validate_one_request ->
# _create_tokenized_object -> SamplingParams.verify code; only the scheduler is a stand-in, and the
# live scheduler has no input-id check either). All are SGLang's behaviour, none the plugin's; the
# statuses are those of a server without msa (the live ``main`` phase runs msa: token ids get a 400).
_UNKNOWN_FIELD = ("sglang: unknown top-level fields are ignored (pydantic extra='ignore'), as SGLang "
                  "intends for OpenAI-compatible clients; not patched")
_TYPE_ERROR_500 = ("sglang: SamplingParams(**sampling_params) / verify() raise TypeError, /generate maps "
                   "only ValueError to 400 -> 500; the server keeps serving; SGLang's to fix (catch "
                   "TypeError in _create_tokenized_object), not patched")
_OOV_IDS = ("sglang (real, live too): no input-id range check before the model; the helper "
            "TokenizerManager._validate_input_ids_in_vocab exists but nothing calls it (and it misses "
            "negative ids); the scheduler only checks lengths. With a model, ids past the embedding "
            "table index out of bounds (CUDA device assert: the scheduler dies). SGLang's to fix; "
            "until then the plugin rejects them with a 400 on msa servers only (sglang_msa/request_checks.py), "
            "so the 200 is what a server without msa answers")
KNOWN = {
    "gen_unknown_top_field": (200, _UNKNOWN_FIELD),
    "cmp_unknown_field": (200, _UNKNOWN_FIELD),
    "chat_unknown_field": (200, _UNKNOWN_FIELD),
    "gen_unknown_sampling_param": (500, _TYPE_ERROR_500),
    "gen_max_new_tokens_string": (500, _TYPE_ERROR_500),
    "gen_token_id_eq_vocab": (200, _OOV_IDS),
    "gen_token_id_negative": (200, _OOV_IDS),
    "gen_token_id_2e40": (200, _OOV_IDS),
    "cmp_prompt_id_over_vocab": (200, _OOV_IDS),
    "gen_batch_with_bad_ids": (200, _OOV_IDS),
}
# 4xx, but SGLang's message is poor (noted in the results file).
POOR_MESSAGE = {
    "cmp_n_zero": "sglang: 400 'range() arg 3 must not be zero' (a ValueError from range(), not a check "
                  "of n); SGLang's to fix",
}


def _annotate(case: Case) -> Case:
    from dataclasses import replace

    if case.name in KNOWN:
        status, why = KNOWN[case.name]
        return replace(case, known_status=status, verdict=why)
    if case.name in POOR_MESSAGE:
        return replace(case, verdict=POOR_MESSAGE[case.name])
    return case


def build_corpus(ctx: Context) -> list[Case]:
    return [_annotate(c) for c in _build_corpus(ctx)]


def _build_corpus(ctx: Context) -> list[Case]:
    V, C, m = ctx.vocab_size, ctx.context_len, ctx.model
    ok_ids = [1, 2, 3]
    cases = [
        # ---- invalid JSON and bodies that are not a request object
        Case("gen_truncated_json", GENERATE, b'{"input_ids": [1, 2, 3], "sampling_params": {"max_new_',
             "invalid_json", "JSON cut off mid-key"),
        Case("gen_empty_body", GENERATE, b"", "invalid_json", "empty body"),
        Case("gen_json_array", GENERATE, b"[1, 2, 3]", "invalid_json", "a JSON array, not an object"),
        Case("gen_json_string", GENERATE, b'"generate something"', "invalid_json", "a JSON string, not an object"),
        Case("gen_nan_literal", GENERATE, b'{"input_ids": [1, 2], "sampling_params": {"temperature": NaN}}',
             "invalid_json", "bare NaN (not JSON)"),
        Case("cmp_trailing_garbage", COMPLETIONS, b'{"prompt": [1, 2], "max_tokens": 4} trailing',
             "invalid_json", "valid object followed by garbage"),
        Case("chat_single_quotes", CHAT, b"{'messages': [{'role': 'user', 'content': 'hi'}]}",
             "invalid_json", "single-quoted pseudo-JSON"),
        # ---- bytes that are not UTF-8
        Case("gen_non_utf8_text", GENERATE, b'{"text": "caf\xe9 \xff\xfe", "sampling_params": {"max_new_tokens": 4}}',
             "non_utf8", "Latin-1 and 0xFF 0xFE bytes inside a JSON string", needs=("tokenizer",)),
        Case("cmp_non_utf8_prompt", COMPLETIONS, b'{"prompt": "\xc3\x28 bad", "max_tokens": 4}',
             "non_utf8", "invalid two-byte UTF-8 sequence in the prompt", needs=("tokenizer",)),
        Case("chat_non_utf8_content", CHAT,
             b'{"messages": [{"role": "user", "content": "\xed\xa0\x80 lone surrogate"}], "max_tokens": 4}',
             "non_utf8", "UTF-8-encoded lone surrogate (CESU) in message content", needs=("tokenizer",)),
        Case("gen_utf16_body", GENERATE, _j(_gen(ok_ids)).decode().encode("utf-16"),
             "non_utf8", "the whole body UTF-16 encoded (with BOM)"),
        # ---- unknown fields
        Case("gen_unknown_top_field", GENERATE, _j({**_gen(ok_ids), "temprature": 0.5}),
             "unknown_field", "misspelt top-level field 'temprature'"),
        Case("gen_unknown_sampling_param", GENERATE, _j(_gen(ok_ids, max_tokens_typo=8)),
             "unknown_field", "unknown key inside sampling_params"),
        Case("cmp_unknown_field", COMPLETIONS, _j({"model": m, "prompt": ok_ids, "max_tokens": 4, "maxtokens": 99}),
             "unknown_field", "unknown field 'maxtokens' (OpenAI rejects unrecognized arguments)"),
        Case("chat_unknown_field", CHAT, _j({"model": m, "max_tokens": 4, "frobnicate": True,
                                             "messages": [{"role": "user", "content": "hi"}]}),
             "unknown_field", "unknown field 'frobnicate'", needs=("tokenizer",)),
        # ---- max_tokens: negative, zero, huge, wrong type
        Case("gen_negative_max_new_tokens", GENERATE, _j(_gen(ok_ids, max_new_tokens=-1)),
             "max_tokens", "max_new_tokens = -1"),
        Case("gen_huge_max_new_tokens", GENERATE, _j(_gen(ok_ids, max_new_tokens=10**12)),
             "max_tokens", "max_new_tokens = 1e12 (past the context length)"),
        Case("gen_max_new_tokens_over_int64", GENERATE,
             b'{"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 99999999999999999999999}}',
             "max_tokens", "max_new_tokens beyond 64 bits"),
        Case("gen_max_new_tokens_string", GENERATE, _j(_gen(ok_ids, max_new_tokens="many")),
             "max_tokens", "max_new_tokens is a string"),
        Case("cmp_negative_max_tokens", COMPLETIONS, _j({"model": m, "prompt": ok_ids, "max_tokens": -5}),
             "max_tokens", "max_tokens = -5"),
        Case("cmp_zero_max_tokens", COMPLETIONS, _j({"model": m, "prompt": ok_ids, "max_tokens": 0}),
             "max_tokens", "max_tokens = 0"),
        Case("cmp_huge_max_tokens", COMPLETIONS, _j({"model": m, "prompt": ok_ids, "max_tokens": 2**62}),
             "max_tokens", "max_tokens = 2^62"),
        Case("chat_negative_max_tokens", CHAT, _j({"model": m, "max_tokens": -1,
                                                   "messages": [{"role": "user", "content": "hi"}]}),
             "max_tokens", "max_tokens = -1", needs=("tokenizer",)),
        Case("chat_huge_max_completion_tokens", CHAT, _j({"model": m, "max_completion_tokens": 10**12,
                                                          "messages": [{"role": "user", "content": "hi"}]}),
             "max_tokens", "max_completion_tokens = 1e12", needs=("tokenizer",)),
        # ---- prompts over the context length
        Case("gen_ids_over_context", GENERATE, _j(_gen([7] * (C + 8))), "context_length",
             f"{C + 8} input ids, context {C}"),
        Case("gen_ids_plus_new_over_context", GENERATE, _j(_gen([7] * (C - 8), max_new_tokens=64)),
             "context_length", "prompt fits, prompt + max_new_tokens does not"),
        Case("cmp_ids_over_context", COMPLETIONS, _j({"model": m, "prompt": [7] * (C + 8), "max_tokens": 4}),
             "context_length", f"{C + 8}-token prompt as token ids"),
        Case("chat_text_over_context", CHAT, _j({"model": m, "max_tokens": 4, "messages": [
            {"role": "user", "content": "a b " * (C + 8)}]}), "context_length",
             "chat message of more tokens than the context", needs=("tokenizer",)),
        # ---- bad token ids
        Case("gen_token_id_eq_vocab", GENERATE, _j(_gen([1, V, 2])), "token_ids",
             f"input id == vocab size ({V})", needs_model=True),
        Case("gen_token_id_negative", GENERATE, _j(_gen([1, -1, 2])), "token_ids", "input id -1", needs_model=True),
        Case("gen_token_id_2e40", GENERATE, _j(_gen([1, 2**40])), "token_ids", "input id 2^40", needs_model=True),
        Case("gen_token_id_float", GENERATE, _j(_gen([1, 2.5, 3])), "token_ids", "a float token id"),
        Case("gen_token_id_string", GENERATE, _j(_gen(["1", "two"])), "token_ids", "string token ids"),
        Case("gen_empty_input_ids", GENERATE, _j(_gen([])), "token_ids", "empty input_ids"),
        Case("cmp_prompt_id_over_vocab", COMPLETIONS, _j({"model": m, "prompt": [1, V + 100], "max_tokens": 4}),
             "token_ids", f"prompt token id {V + 100} >= vocab", needs_model=True),
        Case("gen_logprob_token_id_over_vocab", GENERATE,
             _j({**_gen(ok_ids), "return_logprob": True, "token_ids_logprob": [V + 5]}),
             "token_ids", "token_ids_logprob past the vocab"),
        Case("gen_batch_with_bad_ids", GENERATE, _j(_gen([[1, 2], [3, V + 1]])), "token_ids",
             "a batch whose second prompt has an id past the vocab", needs_model=True),
        # ---- sampling parameters out of range
        Case("gen_negative_temperature", GENERATE, _j(_gen(ok_ids, temperature=-0.5)),
             "sampling_params", "temperature = -0.5"),
        Case("gen_top_p_above_one", GENERATE, _j(_gen(ok_ids, top_p=1.5)), "sampling_params", "top_p = 1.5"),
        Case("gen_top_k_zero", GENERATE, _j(_gen(ok_ids, top_k=0, temperature=0.7)), "sampling_params",
             "top_k = 0 (sampling, not greedy)"),
        Case("cmp_n_zero", COMPLETIONS, _j({"model": m, "prompt": ok_ids, "max_tokens": 4, "n": 0}),
             "sampling_params", "n = 0"),
        # ---- request shape
        Case("gen_no_prompt", GENERATE, _j(_gen()), "request_shape", "neither text nor input_ids"),
        Case("gen_text_not_string", GENERATE, _j(_gen(text=12345)), "request_shape", "text is a number"),
        Case("cmp_missing_prompt", COMPLETIONS, _j({"model": m, "max_tokens": 4}), "request_shape", "no prompt"),
        Case("chat_messages_not_list", CHAT, _j({"model": m, "messages": "hello", "max_tokens": 4}),
             "request_shape", "messages is a string"),
        Case("chat_bad_role", CHAT, _j({"model": m, "max_tokens": 4, "messages": [{"role": "wizard", "content": "hi"}]}),
             "request_shape", "unknown message role"),
        # ---- content type
        Case("cmp_text_plain", COMPLETIONS, _j({"model": m, "prompt": ok_ids, "max_tokens": 4}), "content_type",
             "JSON body sent as text/plain", headers={"Content-Type": "text/plain"}),
        Case("chat_form_encoded", CHAT, b"messages=hi&max_tokens=4", "content_type",
             "form-encoded body", headers={"Content-Type": "application/x-www-form-urlencoded"}),
    ]
    if ctx.media is not None:
        cases += vl_cases(ctx.media, m)
    return cases


def vl_cases(media: dict, model: str) -> list[Case]:
    """M3-VL chat requests with corrupt, truncated, huge or non-video payloads (target ``vl``)."""
    clip = media["clip.mp4"]
    vl = dict(target="vl", needs=("tokenizer", "mm_processor"))
    oversize = clip + bytes(TEST_MAX_INPUT_BYTES + 4096 - len(clip))  # a valid MP4 padded past the cap
    return [
        Case("vl_video_random_bytes", CHAT, _chat_video(_uri("video/mp4", bytes(range(256)) * 16), model),
             "vl_video", "4 KiB of non-media bytes as video/mp4", **vl),
        Case("vl_video_corrupt_mp4", CHAT, _chat_video(_uri("video/mp4", _corrupt(clip)), model),
             "vl_video", "MP4 whose sample data is overwritten with garbage", **vl),
        Case("vl_video_truncated_mp4", CHAT, _chat_video(_uri("video/mp4", clip[: len(clip) // 2]), model),
             "vl_video", "first half of a faststart MP4 (packets cut off)", **vl),
        Case("vl_video_truncated_head", CHAT, _chat_video(_uri("video/mp4", clip[:64]), model),
             "vl_video", "first 64 bytes of an MP4 (no moov)", **vl,
             verdict="ours (fixed): was a 400 from SGLang's TorchCodec after our fallback; now smg_rs' "
             "'unsupported video: input has no video stream'"),
        Case("vl_video_empty_data_uri", CHAT, _chat_video("data:video/mp4;base64,", model),
             "vl_video", "empty data: URI", **vl),
        Case("vl_video_png_as_video", CHAT, _chat_video(_uri("video/mp4", media["still.png"]), model),
             "vl_video", "a PNG image posing as video/mp4", **vl,
             verdict="ours (fixed): was 200, our processor fell back to SGLang's TorchCodec decoder on "
             "smg_rs' UnsupportedFormatError, which reads a PNG as a one-frame video; now 400"),
        Case("vl_video_text_as_video", CHAT, _chat_video(_uri("video/mp4", b"this is a text file, not a video\n" * 8),
                                                          model),
             "vl_video", "a text file posing as video/mp4", **vl),
        Case("vl_video_not_base64", CHAT, _chat_video("data:video/mp4;base64,@@not*base64!!", model),
             "vl_video", "data: URI whose payload is not base64", **vl),
        Case("vl_video_frames_too_large", CHAT, _chat_video(_uri("video/mp4", media["huge_frames.mp4"]), model),
             "vl_video", f"8192x4352 frames, above smg_rs max_frame_pixels={SMG_MAX_FRAME_PIXELS}", **vl),
        Case("vl_video_too_long", CHAT, _chat_video(_uri("video/mp4", media["too_long.mp4"]), model),
             "vl_video", f"14600 s stream, above smg_rs max_duration_s={SMG_MAX_DURATION_S}", **vl),
        Case("vl_video_payload_over_cap", CHAT, _chat_video(_uri("video/mp4", oversize), model),
             "vl_video", f"{len(oversize)} bytes, above max_input_bytes={TEST_MAX_INPUT_BYTES} "
             f"(SGLANG_MSA_SMG_LIMITS on the test server)", **vl),
        Case("vl_video_missing_file", CHAT, _chat_video("/nonexistent/dir/clip.mp4", model),
             "vl_video", "a server-side path that does not exist", **vl,
             verdict="ours (fixed): was 400 'Non-base64 digit found' (SGLang read the path as base64); "
             "now names the missing path"),
        Case("vl_image_corrupt_png", CHAT, _chat_image(_uri("image/png", media["still.png"][:40]), model),
             "vl_image", "a PNG cut after its header", **vl),
        Case("vl_image_text_as_image", CHAT, _chat_image(_uri("image/png", b"not an image at all"), model),
             "vl_image", "text posing as image/png", **vl),
    ]


def _corrupt(mp4: bytes) -> bytes:
    """Garbage over the ``mdat`` payload (every coded picture), keeping the container intact."""
    i = mp4.find(b"mdat")
    if i < 0:
        raise ValueError("no mdat box")
    size = int.from_bytes(mp4[i - 4:i], "big")
    start, end = i + 4 + 8, i - 4 + size  # leave the first bytes of the first NAL length intact
    junk = bytes((x * 197 + 61) % 256 for x in range(end - start))
    return mp4[:start] + junk + mp4[end:]


# ------------------------------------------------------------------------------------------ media


def _ffmpeg(args: list[str]) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True,
                   capture_output=True, timeout=120)


def make_media(out: Path) -> dict[str, bytes]:
    """The VL cases' media, made with the ffmpeg CLI: a short valid clip, a PNG, 8192x4352 frames
    and a 14600 s stream (both tiny files: black frames at CRF 51)."""
    out.mkdir(parents=True, exist_ok=True)
    x264 = ["-c:v", "libx264", "-preset", "veryslow", "-crf", "40", "-pix_fmt", "yuv420p"]
    _ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=96x64:rate=8:duration=1.5", *x264, "-movflags", "+faststart",
             str(out / "clip.mp4")])
    _ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=1:duration=1", "-frames:v", "1", str(out / "still.png")])
    _ffmpeg(["-f", "lavfi", "-i", "color=c=black:size=8192x4352:rate=1:duration=1", *x264[:-4], "-crf", "51",
             "-pix_fmt", "yuv420p", str(out / "huge_frames.mp4")])
    _ffmpeg(["-f", "lavfi", "-i", "color=c=black:size=32x32:rate=0.1:duration=14600", *x264[:-4], "-crf", "51",
             "-g", "100000", "-pix_fmt", "yuv420p", str(out / "too_long.mp4")])
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def load_media(prefer_ffmpeg: bool = True) -> dict[str, bytes] | None:
    """Media for the VL cases: fresh from the ffmpeg CLI, else the bundled archive, else None."""
    if prefer_ffmpeg and shutil.which("ffmpeg"):
        with tempfile.TemporaryDirectory() as d:
            try:
                return make_media(Path(d))
            except (subprocess.SubprocessError, OSError):
                pass
    if MEDIA_ARCHIVE.exists():
        with tarfile.open(MEDIA_ARCHIVE) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    return None


def write_media_archive(path: Path = MEDIA_ARCHIVE) -> Path:
    with tempfile.TemporaryDirectory() as d:
        media = make_media(Path(d))
    with tarfile.open(path, "w:gz") as tar:
        for name, data in sorted(media.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print the cases (vocab 200064, context 270336)")
    ap.add_argument("--write-media-archive", action="store_true", help=f"regenerate {MEDIA_ARCHIVE.name}")
    args = ap.parse_args(argv)
    if args.write_media_archive:
        print(write_media_archive())
    if args.list or not args.write_media_archive:
        for c in build_corpus(Context(200064, 270336, load_media())):
            print(f"{c.name:34s} {c.path:22s} {c.exercises:16s} {c.target:4s} {c.what}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
