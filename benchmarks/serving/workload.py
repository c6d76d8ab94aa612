"""Fixed, seeded request workloads: random token-id prompts (optionally sharing prefixes) or a JSONL file.

Every point of a sweep gets its own prompts (so a server's prefix cache never turns a later point into
a cache hit of an earlier one), while all servers get exactly the same prompts at the same point.
Randomness comes from ``random.Random`` seeded with strings, which hashes them with SHA-512, so a
workload is identical across processes, machines and Python versions.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A fixed list of common words; most are one token in BPE vocabularies, so ``n`` words make a text
# prompt of roughly ``n`` tokens. Only used for chat requests when no tokenizer is given.
_WORDS = (
    "time year people way day man thing woman life child world school state family student group "
    "country problem hand part place case week company system program question work government "
    "number night point home water room mother area money story fact month lot right study book "
    "eye job word business issue side kind head house service friend father power hour game line "
    "end member law car city community name president team minute idea kid body information back "
    "parent face others level office door health person art war history party result change morning"
).split()


@dataclass(frozen=True)
class BenchRequest:
    """One request, independent of the API it is sent through."""

    output_len: int
    prompt_len: int  # tokens the prompt is meant to have (exact for token ids, nominal for text)
    input_ids: tuple[int, ...] | None = None
    text: str | None = None
    messages: tuple[dict[str, Any], ...] | None = None
    video_urls: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # per-request body fields from a JSONL line


@dataclass(frozen=True)
class RandomWorkload:
    """Random token-id prompts of one length; ``shared_prefix_len`` leading tokens are common."""

    input_len: int
    output_len: int
    vocab_size: int
    seed: int = 0
    min_token_id: int = 0
    shared_prefix_len: int = 0
    num_prefix_groups: int = 1

    def __post_init__(self):
        if self.input_len < 1 or self.output_len < 1:
            raise ValueError("input and output lengths must be >= 1")
        if not 0 <= self.min_token_id < self.vocab_size:
            raise ValueError(f"need 0 <= min_token_id ({self.min_token_id}) < vocab_size ({self.vocab_size})")
        if self.shared_prefix_len < 0 or self.shared_prefix_len >= self.input_len:
            raise ValueError(
                f"shared prefix ({self.shared_prefix_len}) must leave at least one unique token "
                f"in prompts of {self.input_len}"
            )
        if self.num_prefix_groups < 1:
            raise ValueError("num_prefix_groups must be >= 1")

    @property
    def label(self) -> str:
        return str(self.input_len)

    def _random_ids(self, rng: random.Random, n: int) -> list[int]:
        return [rng.randrange(self.min_token_id, self.vocab_size) for _ in range(n)]

    def prefix(self, group: int) -> list[int]:
        """The common prefix of a group: depends on the seed and group only, never on the point."""
        rng = random.Random(f"prefix/{self.seed}/{group}/{self.vocab_size}/{self.min_token_id}")
        return self._random_ids(rng, self.shared_prefix_len)

    def requests(self, n: int, stream: str) -> list[BenchRequest]:
        """``n`` requests of the named stream (e.g. ``"c8/measure"``); the same name gives the same prompts."""
        rng = random.Random(f"suffix/{self.seed}/{self.input_len}/{self.vocab_size}/{self.min_token_id}/{stream}")
        prefixes = [self.prefix(g) for g in range(self.num_prefix_groups)] if self.shared_prefix_len else [[]]
        out = []
        for i in range(n):
            head = prefixes[i % len(prefixes)]
            ids = head + self._random_ids(rng, self.input_len - len(head))
            out.append(BenchRequest(output_len=self.output_len, prompt_len=self.input_len, input_ids=tuple(ids)))
        return out


def _as_urls(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"video_url must be a string or a list of strings, got {value!r}")


_KNOWN_KEYS = {"input_ids", "prompt", "text", "messages", "output_len", "max_new_tokens", "max_tokens",
               "video_url", "video_urls", "extra_body"}


def parse_jsonl_line(obj: dict[str, Any], default_output_len: int) -> BenchRequest:
    """One JSONL record: a prompt (``input_ids``, ``prompt``/``text`` or chat ``messages``), optionally
    ``output_len`` (or ``max_new_tokens``/``max_tokens``), ``video_url`` (string or list) and
    ``extra_body`` (fields merged into the request body)."""
    if not isinstance(obj, dict):
        raise ValueError("each line must be a JSON object")
    unknown = set(obj) - _KNOWN_KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    output_len = obj.get("output_len", obj.get("max_new_tokens", obj.get("max_tokens", default_output_len)))
    if not isinstance(output_len, int) or output_len < 1:
        raise ValueError(f"bad output length {output_len!r}")
    input_ids = obj.get("input_ids")
    text = obj.get("prompt", obj.get("text"))
    messages = obj.get("messages")
    if sum(x is not None for x in (input_ids, text, messages)) != 1:
        raise ValueError("exactly one of input_ids, prompt/text, messages is required")
    if input_ids is not None:
        if not input_ids or not all(isinstance(t, int) and t >= 0 for t in input_ids):
            raise ValueError("input_ids must be a non-empty list of non-negative ints")
        prompt_len = len(input_ids)
        input_ids = tuple(input_ids)
    elif text is not None:
        if not isinstance(text, str):
            raise ValueError("prompt must be a string")
        prompt_len = len(text.split())
    else:
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list")
        messages = tuple(messages)
        prompt_len = sum(len(str(m.get("content", "")).split()) for m in messages)
    extra = obj.get("extra_body") or {}
    if not isinstance(extra, dict):
        raise ValueError("extra_body must be an object")
    urls = _as_urls(obj.get("video_url")) + _as_urls(obj.get("video_urls"))
    return BenchRequest(output_len=output_len, prompt_len=prompt_len, input_ids=input_ids, text=text,
                        messages=messages, video_urls=urls, extra=extra)


@dataclass
class JsonlWorkload:
    """Requests from a JSONL file, handed out in order (wrapping around) so points rarely repeat prompts."""

    path: Path
    default_output_len: int
    items: list[BenchRequest] = field(init=False)
    _cursor: int = field(default=0, init=False)

    def __post_init__(self):
        self.path = Path(self.path)
        self.items = []
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    self.items.append(parse_jsonl_line(json.loads(line), self.default_output_len))
                except (ValueError, json.JSONDecodeError) as e:
                    raise ValueError(f"{self.path}:{lineno}: {e}") from None
        if not self.items:
            raise ValueError(f"{self.path}: no requests")

    @property
    def label(self) -> str:
        return self.path.stem

    input_len = None  # mixed lengths

    def requests(self, n: int, stream: str) -> list[BenchRequest]:
        # ``stream`` is unused: the cursor alone makes successive points take successive slices.
        out = [self.items[(self._cursor + i) % len(self.items)] for i in range(n)]
        self._cursor = (self._cursor + n) % len(self.items)
        return out


def words_for_ids(ids: tuple[int, ...] | list[int]) -> str:
    """A deterministic text stand-in for token ids (about one token per word) when no tokenizer is given."""
    return " ".join(_WORDS[t % len(_WORDS)] for t in ids)
