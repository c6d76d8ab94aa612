"""GPU end-to-end check of MiniMax-M3-VL: SGLang's own VL path vs ours, on a tiny ``--vision`` checkpoint.

    python3 -m sglang_msa_tools.tiny_m3 /tmp/tiny-vl --vision
    python3 benchmarks/e2e_vl.py --model-path /tmp/tiny-vl --out-dir OUT [--video clip.mp4]

  A: the plugin off (``SGLANG_MSA_DISABLE=1``): SGLang's in-tree M3-VL class, its Python multimodal
     processor and its MiniMax sparse backend (dense layers on ``triton``), no CUDA graphs;
  B: ``SGLANG_MSA_MODELS=1``: our ``MiniMaxM3SparseForConditionalGeneration``, our processor (smg_rs
     when it imports, SGLang's decoders otherwise) and ``--attention-backend msa`` with CUDA graphs.

Both get the same chat requests through ``/v1/chat/completions`` (greedy, logprobs): an image alone, an
image after a long text (so the prompt is longer than top-k x block and the sparse selection matters),
and the video when ``--video`` is given. Tokens and logprobs are compared as in
``e2e_correctness.py``. Writes ``e2e-vl-<card>-<date>.json``; exits non-zero if any request failed.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.e2e_correctness import agreement, card_name, greedy_divergence, versions  # noqa: E402
from benchmarks.servers import Server, start_all_or_exit, stop_and_record  # noqa: E402

FILLER_WORDS = ("sparse", "block", "index", "query", "token", "cache", "page", "layer", "video", "frame")


def sample_image_png(width: int = 97, height: int = 61, seed: int = 0) -> bytes:
    """A deterministic RGB gradient with noise (odd sizes, so resizing and padding both happen)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.int16)
    img = np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def data_url(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode()}"


def filler(words: int, seed: int) -> str:
    return " ".join(FILLER_WORDS[(i * 7 + seed) % len(FILLER_WORDS)] for i in range(words))


def chat_requests(image_url: str, video_url: str | None, long_words: int) -> list[tuple[str, list[dict]]]:
    """(name, content parts) for each prompt."""
    image = {"type": "image_url", "image_url": {"url": image_url}}
    reqs = [
        ("image", [image, {"type": "text", "text": "Describe the picture."}]),
        ("long-text-then-image", [{"type": "text", "text": filler(long_words, 1)}, image,
                                  {"type": "text", "text": "What changed?"}]),
    ]
    if video_url:
        reqs.append(("video", [{"type": "video_url", "video_url": {"url": video_url}},
                               {"type": "text", "text": "Summarize the clip."}]))
    return reqs


def chat_body(content: list[dict], max_tokens: int) -> dict:
    return {"model": "default", "messages": [{"role": "user", "content": content}], "temperature": 0.0,
            "max_tokens": max_tokens, "logprobs": True, "ignore_eos": True}


def parse_chat(body: dict) -> dict:
    """Tokens (as strings) and logprobs of a non-streaming chat completion."""
    choice = body["choices"][0]
    content = (choice.get("logprobs") or {}).get("content") or []
    return {"tokens": [c["token"] for c in content], "logprobs": [c["logprob"] for c in content],
            "text": (choice.get("message") or {}).get("content"), "usage": body.get("usage")}


def compare(a: dict, b: dict) -> dict:
    row = greedy_divergence(a["tokens"], b["tokens"], a["logprobs"], b["logprobs"])
    row["exact_match"] = row["exact_match"] and len(a["tokens"]) > 0  # no tokens is not a match
    row["prompt_tokens_a"] = (a.get("usage") or {}).get("prompt_tokens")
    row["prompt_tokens_b"] = (b.get("usage") or {}).get("prompt_tokens")
    return row


def post_chat(server: Server, body: dict, timeout: float = 600.0) -> dict:
    req = urllib.request.Request(server.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return parse_chat(json.loads(r.read()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--video", type=Path, default=None, help="also send this clip (needs a video decoder there)")
    ap.add_argument("--long-words", type=int, default=3000, help="filler words before the image in the long prompt")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--mem-fraction", type=float, default=0.08)
    ap.add_argument("--health-timeout", type=float, default=420)
    ap.add_argument("--port-base", type=int, default=33000)
    ap.add_argument("--log-dir", default="/tmp/e2e-vl-logs")
    args = ap.parse_args(argv)

    common = ["--model-path", args.model_path, "--context-length", "32768", "--mem-fraction-static",
              str(args.mem_fraction), "--page-size", "128", "--max-running-requests", "4",
              "--chunked-prefill-size", "8192", "--mm-attention-backend", "triton_attn"]
    a = Server("A-sglang-vl", args.port_base, [*common, "--attention-backend", "triton", "--disable-cuda-graph"],
               env={"SGLANG_MSA_DISABLE": "1"}, tokenizer=True)
    b = Server("B-msa-vl", args.port_base + 1,
               [*common, "--attention-backend", "msa", "--cuda-graph-max-bs", "4",
                "--cuda-graph-backend-prefill", "disabled"], env={"SGLANG_MSA_MODELS": "1"}, tokenizer=True)
    video_url = data_url(args.video.read_bytes(), "video/mp4") if args.video else None
    results = {"card": card_name(), "date": date.today().isoformat(), "command": " ".join(sys.argv),
               "versions": versions(), "servers": {}, "prompts": []}
    failed = 0
    try:
        start_all_or_exit((a, b), Path(args.log_dir), args.health_timeout, results["servers"])
        for name, content in chat_requests(data_url(sample_image_png(), "image/png"), video_url, args.long_words):
            body = chat_body(content, args.new_tokens)
            with ThreadPoolExecutor(2) as pool:
                fa, fb = pool.submit(post_chat, a, body), pool.submit(post_chat, b, body)
                try:
                    ra, rb = fa.result(), fb.result()
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    failed += 1
                    results["prompts"].append({"name": name, "error": repr(exc)})
                    print(f"{name}: request failed: {exc!r}", flush=True)
                    continue
            row = {"name": name, **compare(ra, rb)}
            results["prompts"].append(row)
            print(f"{name:>22} prompt={row['prompt_tokens_a']}/{row['prompt_tokens_b']} exact={row['exact_match']} "
                  f"first_div={row['first_divergence']} max|dlogp|={row['max_logprob_abs_diff']}", flush=True)
    finally:
        stop_and_record((a, b), results["servers"])
    results["summary"] = {
        "card": results["card"],
        **agreement(results["prompts"]),
        "failed_requests": failed,
        "prompts": [r["name"] for r in results["prompts"]],
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"e2e-vl-{results['card'].replace(' ', '-')}-{results['date']}.json"
    path.write_text(json.dumps(results, indent=1))
    print(json.dumps(results["summary"], indent=1))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
