"""A fake SGLang server for testing the benchmark client: deterministic tokens, known delays, and failures
on demand. Serves ``/generate`` (SGLang's native streaming format), ``/v1/completions`` and
``/v1/chat/completions`` (OpenAI streaming with continuous usage stats), plus ``/v1/models``,
``/health`` and ``/flush_cache``. Binds 127.0.0.1 only.

Timing of a streamed answer: the first token after ``ttft`` seconds, then the remaining tokens in
chunks of ``tokens_per_chunk``, each chunk ``itl * tokens_per_chunk`` seconds after the previous one,
so every token after the first arrives ``itl`` seconds (on average) after its predecessor.

Failures are keyed by the arrival ordinal of a streaming request (0, 1, 2, ... over all endpoints):
``http500``, ``drop`` (connection closed after the first token), ``malformed`` (a non-JSON data line
after the first token), ``error_chunk`` (an error event, then ``[DONE]``), ``no_done`` (all tokens but
no ``[DONE]``), ``stall`` (nothing for ``stall_s`` seconds).

Run alone for manual tests: ``python tests/fake_sglang_server.py --ttft 0.1 --itl 0.02``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

FAILURE_KINDS = ("http500", "drop", "malformed", "error_chunk", "no_done", "stall")


@dataclass
class Behavior:
    ttft: float = 0.1
    itl: float = 0.05
    tokens_per_chunk: int = 1
    max_output_tokens: int | None = None  # cap below what is asked (to test short outputs)
    failures: dict[int, str] = field(default_factory=dict)
    ttft_by_ordinal: dict[int, float] = field(default_factory=dict)  # override ttft for some arrivals
    generate_incremental: bool = False  # /generate: incremental output_ids (SGLang's incremental mode)
    generate_meta_tokens: bool = True  # /generate: include meta_info.completion_tokens
    stall_s: float = 5.0
    # Additions for the reliability checks (defaults keep the behaviour above unchanged):
    validator: object = None  # callable(path, raw body bytes) -> error message or None (then HTTP 400)
    generate_json_unless_stream: bool = False  # /generate without "stream": true answers one JSON body
    kv_total: int = 100_000  # KV pool reported by /v1/loads, /get_load and /server_info
    kv_leak_per_request: int = 0  # KV tokens each finished request leaves allocated (a simulated leak)
    vocab_size: int = 50_022
    context_length: int = 8192


def fake_token(prompt_key: int, i: int) -> int:
    """The i-th output token for a prompt: deterministic, so tests can recompute it."""
    return (prompt_key * 31 + i * 7) % 50021 + 1


@dataclass
class Received:
    ordinal: int
    path: str
    body: dict
    arrival: float  # time.monotonic()


class FakeServer:
    """Runs in a background thread with its own event loop; use as a context manager."""

    def __init__(self, behavior: Behavior | None = None):
        self.behavior = behavior or Behavior()
        self.received: list[Received] = []
        self.flushes = 0
        self.kv_used = 0
        self.rejected: list[tuple[str, str]] = []
        self._ordinal = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- lifecycle ----------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/generate", self._generate)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_post("/flush_cache", self._flush)
        app.router.add_get("/v1/loads", self._loads)
        app.router.add_get("/get_load", self._get_load)
        app.router.add_get("/server_info", self._server_info)
        app.router.add_get("/model_info", self._model_info)
        return app

    def start(self) -> "FakeServer":
        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._runner = web.AppRunner(self.app(), shutdown_timeout=1.0)
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(self._runner, "127.0.0.1", 0)
                loop.run_until_complete(site.start())
                self.port = self._runner.addresses[0][1]
            except BaseException as e:  # surfaced to the starting thread
                errors.append(e)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-sglang", daemon=True)
        self._thread.start()
        if not started.wait(10) or errors:
            raise RuntimeError(f"fake server did not start: {errors}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> "FakeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- handlers -----------------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _flush(self, request: web.Request) -> web.Response:
        self.flushes += 1
        return web.Response(text="Cache flushed.")

    async def _loads(self, request: web.Request) -> web.Response:
        return web.json_response({"loads": [{"dp_rank": 0, "num_running_reqs": 0, "num_waiting_reqs": 0,
                                             "num_used_tokens": self.kv_used,
                                             "num_total_tokens": self.kv_used,
                                             "max_total_num_tokens": self.behavior.kv_total}]})

    async def _get_load(self, request: web.Request) -> web.Response:
        return web.json_response([{"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0, "num_tokens": self.kv_used,
                                   "num_pending_tokens": 0}])

    async def _server_info(self, request: web.Request) -> web.Response:
        b = self.behavior
        return web.json_response({"attention_backend": None, "max_total_num_tokens": b.kv_total,
                                  "context_length": b.context_length, "vocab_size": b.vocab_size})

    async def _model_info(self, request: web.Request) -> web.Response:
        return web.json_response({"model_path": "fake-model", "is_generation": True})

    async def _body(self, request: web.Request, path: str):
        """The request's JSON body, or a 400 response when ``Behavior.validator`` rejects it."""
        if self.behavior.validator is None:
            return await request.json(), None
        raw = await request.read()
        message = self.behavior.validator(path, raw)
        if message:
            self.rejected.append((path, message))
            return None, web.json_response({"object": "error", "message": message, "type": "BadRequest",
                                            "code": 400}, status=400)
        return json.loads(raw), None

    def _admit(self, path: str, body: dict) -> int:
        with self._lock:
            ordinal = self._ordinal
            self._ordinal += 1
            self.received.append(Received(ordinal, path, body, time.monotonic()))
        return ordinal

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body, rejection = await self._body(request, "/generate")
        if rejection is not None:
            return rejection
        ordinal = self._admit("/generate", body)
        ids = body.get("input_ids")
        key = sum(ids) if ids else len(body.get("text") or "")
        n = body["sampling_params"]["max_new_tokens"]
        b = self.behavior
        emitted: list[int] = []

        def event(tokens: list[int], finished: bool) -> dict:
            emitted.extend(tokens)
            meta = {"id": f"req-{ordinal}", "prompt_tokens": len(ids) if ids else len(body["text"].split()),
                    "cached_tokens": 0,
                    "finish_reason": {"type": "length", "length": n} if finished else None}
            if b.generate_meta_tokens:
                meta["completion_tokens"] = len(emitted)
            out_ids = tokens if b.generate_incremental else list(emitted)
            return {"text": " ".join(map(str, out_ids)), "output_ids": out_ids, "meta_info": meta}

        if self.behavior.generate_json_unless_stream and not body.get("stream"):
            await asyncio.sleep(b.ttft)
            tokens = [fake_token(key, i) for i in range(n)]
            self.kv_used += b.kv_leak_per_request
            return web.json_response(event(tokens, True))
        return await self._stream(request, ordinal, key, n, event)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, "/v1/completions")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, "/v1/chat/completions")

    async def _openai(self, request: web.Request, path: str) -> web.StreamResponse:
        body, rejection = await self._body(request, path)
        if rejection is not None:
            return rejection
        ordinal = self._admit(path, body)
        chat = path.endswith("chat/completions")
        if chat:
            key = sum(len(json.dumps(m)) for m in body["messages"])
            prompt_tokens = key
        else:
            prompt = body["prompt"]
            key = sum(prompt) if isinstance(prompt, list) else len(prompt)
            prompt_tokens = len(prompt) if isinstance(prompt, list) else len(prompt.split())
        n = body.get("max_tokens") or body.get("max_completion_tokens") or 16
        opts = body.get("stream_options") or {}
        continuous = bool(opts.get("continuous_usage_stats"))
        count = 0
        sent_role = False

        def event(tokens: list[int], finished: bool) -> list[dict]:
            nonlocal count, sent_role
            count += len(tokens)
            text = "".join(f" t{t}" for t in tokens)
            base = {"id": f"cmpl-{ordinal}", "created": 0, "model": body.get("model")}
            events = []
            if chat:
                if not sent_role:  # SGLang sends the role first, with empty content
                    events.append({**base, "object": "chat.completion.chunk",
                                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                "finish_reason": None}]})
                    sent_role = True
                choice = {"index": 0, "delta": {"content": text}, "finish_reason": "length" if finished else None}
                ev = {**base, "object": "chat.completion.chunk", "choices": [choice]}
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length" if finished else None}
                if body.get("return_token_ids"):
                    choice["token_ids"] = tokens
                ev = {**base, "object": "text_completion", "choices": [choice]}
            if continuous:
                ev["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": count,
                               "total_tokens": prompt_tokens + count}
            events.append(ev)
            if finished and opts.get("include_usage"):
                events.append({**base, "choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                                                 "completion_tokens": count,
                                                                 "total_tokens": prompt_tokens + count}})
            return events

        return await self._stream(request, ordinal, key, n, event)

    async def _stream(self, request: web.Request, ordinal: int, key: int, n: int, event) -> web.StreamResponse:
        b = self.behavior
        failure = b.failures.get(ordinal)
        if b.max_output_tokens is not None:
            n = min(n, b.max_output_tokens)
        if failure == "http500":
            return web.json_response({"error": {"message": "injected failure", "code": 500}}, status=500)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(ev) -> None:
            for e in ev if isinstance(ev, list) else [ev]:
                await resp.write(b"data: " + json.dumps(e).encode() + b"\n\n")

        if failure == "stall":
            deadline = time.monotonic() + b.stall_s
            while time.monotonic() < deadline and not request.transport.is_closing():
                await asyncio.sleep(0.05)
            return resp
        await asyncio.sleep(b.ttft_by_ordinal.get(ordinal, b.ttft))
        tokens = [fake_token(key, i) for i in range(n)]
        await send(event(tokens[:1], n == 1))
        if failure == "drop":
            request.transport.close()
            return resp
        if failure == "malformed":
            await resp.write(b"data: {\"meta_info\": truncated\n\n")
            await resp.write_eof()
            return resp
        if failure == "error_chunk":
            await resp.write(b'data: {"error": {"message": "injected stream error", "code": 400}}\n\n')
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        step = max(1, b.tokens_per_chunk)
        for start in range(1, n, step):
            chunk = tokens[start:start + step]
            await asyncio.sleep(b.itl * len(chunk))
            await send(event(chunk, start + len(chunk) >= n))
        if failure != "no_done":
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        self.kv_used += b.kv_leak_per_request
        return resp


def main() -> None:
    p = argparse.ArgumentParser(description="fake SGLang server on 127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ttft", type=float, default=0.1)
    p.add_argument("--itl", type=float, default=0.02)
    p.add_argument("--tokens-per-chunk", type=int, default=1)
    p.add_argument("--seconds", type=float, default=600, help="exit after this long")
    args = p.parse_args()
    server = FakeServer(Behavior(ttft=args.ttft, itl=args.itl, tokens_per_chunk=args.tokens_per_chunk))
    if args.port:
        web.run_app(server.app(), host="127.0.0.1", port=args.port, shutdown_timeout=1.0)
        return
    with server:
        print(server.url, flush=True)
        time.sleep(args.seconds)


if __name__ == "__main__":
    main()
