"""Sends one streaming request and times it token by token.

Output tokens are counted from what the server reports in the stream (SGLang's cumulative
``meta_info.completion_tokens``, OpenAI ``usage.completion_tokens`` with continuous usage stats, or
per-chunk ``token_ids``), never by re-tokenizing text. Only when a server reports none of these does
a content chunk count as one token (``token_source == "chunks"``, flagged in the results).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp

from .sse import MalformedStream, SSEDecoder
from .workload import BenchRequest, words_for_ids

try:
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - orjson ships with SGLang
    import json

    _loads = json.loads

ENDPOINTS = {"sglang": "/generate", "openai": "/v1/completions", "openai-chat": "/v1/chat/completions"}


class StreamError(Exception):
    """The server reported an error inside an otherwise well-formed stream."""


class _HTTPStatus(Exception):
    """A non-200 answer."""


class _Incomplete(Exception):
    """The body ended before ``[DONE]``."""


@dataclass
class RequestOptions:
    backend: str = "sglang"
    model: str = "default"
    temperature: float = 0.0
    ignore_eos: bool = True
    timeout: float = 600.0
    return_token_ids: bool = False  # /v1/completions: ask SGLang for per-chunk token ids
    extra_body: dict[str, Any] = field(default_factory=dict)
    video_urls: tuple[str, ...] = ()  # chat: added to every request (after the request's own)
    text_for_ids: Callable[[tuple[int, ...]], str] = words_for_ids  # chat prompts from token ids


@dataclass
class RequestResult:
    ok: bool = False
    error: str | None = None
    error_kind: str | None = None  # connect | http_status | timeout | malformed | stream_error | incomplete | client
    status: int | None = None
    prompt_len: int = 0  # nominal, from the workload
    prompt_tokens: int | None = None  # as reported by the server
    cached_tokens: int | None = None
    expected_output_tokens: int = 0
    output_tokens: int = 0
    token_source: str | None = None  # meta_info | usage | token_ids | output_ids | chunks
    ttft: float | None = None  # seconds from send to the first output token
    last_token_time: float | None = None  # seconds from send to the last output token
    latency: float | None = None  # seconds from send to the end of the stream
    itl: list[float] = field(default_factory=list)  # one gap per output token after the first
    start: float = 0.0  # perf_counter at send

    @property
    def tpot(self) -> float | None:
        if not self.ok or self.output_tokens < 2 or self.ttft is None or self.last_token_time is None:
            return None
        return (self.last_token_time - self.ttft) / (self.output_tokens - 1)


# ---- request bodies ---------------------------------------------------------------------------------


def _chat_messages(req: BenchRequest, opts: RequestOptions) -> list[dict[str, Any]]:
    videos = req.video_urls + opts.video_urls
    if req.messages is not None:
        messages = [dict(m) for m in req.messages]
        if videos:  # attach to the last user turn
            for m in reversed(messages):
                if m.get("role") == "user":
                    content = m.get("content")
                    parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
                    m["content"] = _video_parts(videos) + parts
                    break
        return messages
    text = req.text if req.text is not None else opts.text_for_ids(req.input_ids)
    if videos:
        return [{"role": "user", "content": _video_parts(videos) + [{"type": "text", "text": text}]}]
    return [{"role": "user", "content": text}]


def _video_parts(urls: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{"type": "video_url", "video_url": {"url": u}} for u in urls]


def build_payload(req: BenchRequest, opts: RequestOptions) -> dict[str, Any]:
    if opts.backend == "sglang":
        if req.messages is not None:
            raise ValueError("/generate takes input_ids or text, not chat messages")
        body: dict[str, Any] = {"input_ids": list(req.input_ids)} if req.input_ids is not None else {"text": req.text}
        body["sampling_params"] = {
            "max_new_tokens": req.output_len,
            "temperature": opts.temperature,
            "ignore_eos": opts.ignore_eos,
        }
        if req.video_urls:
            body["video_data"] = list(req.video_urls)
        body["stream"] = True
    else:
        body = {"model": opts.model}
        if opts.backend == "openai":
            if req.messages is not None:
                raise ValueError("/v1/completions takes a prompt, not chat messages")
            body["prompt"] = list(req.input_ids) if req.input_ids is not None else req.text
            if opts.return_token_ids:
                body["return_token_ids"] = True
        else:
            body["messages"] = _chat_messages(req, opts)
        body.update(
            max_tokens=req.output_len,
            temperature=opts.temperature,
            ignore_eos=opts.ignore_eos,  # SGLang and vLLM extension
            stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
        )
    body.update(opts.extra_body)
    body.update(req.extra)
    return body


# ---- stream interpretation ----------------------------------------------------------------------------


class _TokenTracker:
    """Turns stream events into "n new tokens arrived now" and a final count."""

    def __init__(self, backend: str):
        self.backend = backend
        self.count = 0  # tokens attributed to timed events
        self.reported_total: int | None = None  # a total reported without new content (final usage chunk)
        self.source: str | None = None
        self.prompt_tokens: int | None = None
        self.cached_tokens: int | None = None

    def _cumulative(self, total: Any, source: str) -> int:
        if not isinstance(total, int) or total < self.count:
            raise MalformedStream(f"token count {total!r} after {self.count}")
        self.source = self.source or source
        new, self.count = total - self.count, total
        return new

    def new_tokens(self, event: dict[str, Any]) -> int:
        if not isinstance(event, dict):
            raise MalformedStream(f"event is not an object: {str(event)[:80]}")
        err = event.get("error")
        if err is not None or event.get("object") == "error":
            msg = err.get("message", err) if isinstance(err, dict) else (err or event.get("message"))
            raise StreamError(f"server error in stream: {msg}")
        return self._generate(event) if self.backend == "sglang" else self._openai(event)

    def _generate(self, event: dict[str, Any]) -> int:
        meta = event.get("meta_info") or {}
        finish = meta.get("finish_reason")
        if isinstance(finish, dict) and finish.get("type") == "abort":
            raise StreamError(f"request aborted: {finish.get('message', finish)}")
        self.prompt_tokens = meta.get("prompt_tokens", self.prompt_tokens)
        self.cached_tokens = meta.get("cached_tokens", self.cached_tokens)
        if "completion_tokens" in meta:
            return self._cumulative(meta["completion_tokens"], "meta_info")
        ids = event.get("output_ids")
        if isinstance(ids, list):  # SGLang's default: cumulative ids
            return self._cumulative(len(ids), "output_ids")
        raise MalformedStream("/generate event has neither meta_info.completion_tokens nor output_ids")

    def _openai(self, event: dict[str, Any]) -> int:
        usage = event.get("usage") or {}
        choices = event.get("choices") or []
        if usage.get("prompt_tokens") is not None:
            self.prompt_tokens = usage["prompt_tokens"]
        details = usage.get("prompt_tokens_details") or {}
        if isinstance(details, dict) and details.get("cached_tokens") is not None:
            self.cached_tokens = details["cached_tokens"]
        if not choices:  # a usage-only chunk (the final one): corrects the total, carries no timing
            if "completion_tokens" in usage:
                self.reported_total = usage["completion_tokens"]
            return 0
        if isinstance(usage.get("completion_tokens"), int):  # continuous usage stats: cumulative
            total = usage["completion_tokens"]
            self.source = "usage"
            new, self.count = max(0, total - self.count), max(total, self.count)
            return new
        choice = choices[0]
        ids = choice.get("token_ids")
        if isinstance(ids, list):
            self.source = self.source or "token_ids"
            self.count += len(ids)
            return len(ids)
        delta = choice.get("delta") or {}
        content = choice.get("text") or delta.get("content") or delta.get("reasoning_content")
        if content:
            self.source = self.source or "chunks"
            self.count += 1
            return 1
        return 0

    @property
    def total(self) -> int:
        return self.reported_total if self.reported_total is not None else self.count


async def send_request(session: aiohttp.ClientSession, base_url: str, req: BenchRequest,
                       opts: RequestOptions) -> RequestResult:
    """Never raises for server or network trouble: the result carries ``ok`` and an error."""
    res = RequestResult(prompt_len=req.prompt_len, expected_output_tokens=req.output_len)
    try:
        payload = build_payload(req, opts)
    except ValueError as e:
        res.error, res.error_kind = str(e), "bad_request"
        return res
    tracker = _TokenTracker(opts.backend)
    res.start = time.perf_counter()
    try:
        await asyncio.wait_for(_stream(session, base_url + ENDPOINTS[opts.backend], payload, res, tracker),
                               timeout=opts.timeout)
        res.ok = True
    except asyncio.TimeoutError:
        res.error, res.error_kind = f"no complete answer within {opts.timeout:g} s", "timeout"
    except StreamError as e:
        res.error, res.error_kind = str(e), "stream_error"
    except _HTTPStatus as e:
        res.error, res.error_kind = str(e), "http_status"
    except _Incomplete as e:
        res.error, res.error_kind = str(e), "incomplete"
    except aiohttp.ClientConnectorError as e:
        res.error, res.error_kind = f"cannot connect: {e}", "connect"
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as e:
        res.error, res.error_kind = f"connection dropped mid-stream: {type(e).__name__}: {e}", "incomplete"
    except aiohttp.ClientError as e:
        res.error, res.error_kind = f"{type(e).__name__}: {e}", "client"
    except (MalformedStream, UnicodeDecodeError, ValueError) as e:
        res.error, res.error_kind = f"malformed stream: {e}", "malformed"
    res.output_tokens = tracker.total
    res.token_source = tracker.source
    res.prompt_tokens = tracker.prompt_tokens
    res.cached_tokens = tracker.cached_tokens
    if res.ok and res.output_tokens == 0:
        res.ok, res.error, res.error_kind = False, "stream finished without any output token", "incomplete"
    return res


async def _stream(session: aiohttp.ClientSession, url: str, payload: dict[str, Any], res: RequestResult,
                  tracker: _TokenTracker) -> None:
    async with session.post(url, json=payload) as resp:
        res.status = resp.status
        if resp.status != 200:
            body = (await resp.content.read(2000)).decode("utf-8", "replace")
            raise _HTTPStatus(f"HTTP {resp.status}: {body.strip()[:500]}")
        decoder = SSEDecoder()
        last = None
        async for chunk in resp.content.iter_any():
            now = time.perf_counter() - res.start
            for data in decoder.feed(chunk):
                if _handle_event(data, now, res, tracker):
                    res.latency = time.perf_counter() - res.start
                    return
            last = now
        for data in decoder.close():
            if _handle_event(data, time.perf_counter() - res.start, res, tracker):
                res.latency = time.perf_counter() - res.start
                return
        raise _Incomplete(f"stream ended without [DONE] after {tracker.count} tokens"
                          + ("" if last is not None else " (empty body)"))


def _handle_event(data: bytes, now: float, res: RequestResult, tracker: _TokenTracker) -> bool:
    """Records one event's tokens; True at ``[DONE]``."""
    if data.strip() == b"[DONE]":
        return True
    try:
        event = _loads(data)
    except Exception as e:  # orjson.JSONDecodeError / json.JSONDecodeError
        raise MalformedStream(f"bad JSON {data[:80]!r}: {e}") from None
    new = tracker.new_tokens(event)
    if new > 0:
        if res.ttft is None:  # extra tokens in the first chunk have no measurable gap: no ITL sample
            res.ttft = now
        else:
            gap = (now - res.last_token_time) / new
            res.itl.extend([gap] * new)
        res.last_token_time = now
    return False
