"""Named serving workloads, each a list of points run with SGLang's own load generator.

A point is one ``python -m sglang.bench_serving`` run against one server: SGLang's request generator
(``random-ids`` token prompts or ``generated-shared-prefix``), its ``--max-concurrency`` and its metric
definitions (TTFT, output throughput, ...), so our figures mean what SGLang's published ones mean.

    cookbook     2048 in / 256 out at concurrency 64 (SGLang's published H200 MiniMax-M3 point)
    agentic      a 60k-token shared prefix (prefix cache after the first request) + 1-4k new tokens,
                 up to 256 out, concurrency 8
    long         32k, 128k and 256k in / 256 out at concurrency 1, 4 and 16
    max-context  512k and 1M in / 128 out at concurrency 1

Requests per point: at least 16 measured (``MIN_REQUESTS``) and twice the concurrency; fewer where
one request takes minutes (``Point.note`` says so). Random-ids points start from an empty prefix cache
(``--flush-cache``), so every measured prompt is prefilled in full; agentic keeps its cached prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_REQUESTS = 16


@dataclass(frozen=True)
class Point:
    workload: str
    input_len: int  # prompt tokens (agentic: shared prefix + the longest question)
    output_len: int
    concurrency: int
    num_prompts: int
    dataset: str = "random-ids"
    extra: tuple[str, ...] = ()  # dataset flags beyond the lengths
    note: str = ""
    shared_prefix: int = 0  # tokens every request shares (prefilled once, then cached)
    range_ratio: float = 1.0  # new tokens per request uniform in [ratio, 1] x (input_len - shared_prefix)

    @property
    def max_new_tokens(self) -> int:
        return self.input_len - self.shared_prefix

    @property
    def new_prompt_tokens(self) -> int:
        """Prompt tokens the server prefills over the whole point (on average)."""
        mean_new = self.max_new_tokens * (1 + self.range_ratio) / 2
        return int(self.num_prompts * mean_new) + self.shared_prefix

    @property
    def key(self) -> str:
        return f"{self.workload}/{self.input_len}/c{self.concurrency}"

    def bench_args(self, seed: int, warmup: int = 1) -> list[str]:
        """Arguments of ``sglang.bench_serving`` for this point (server, output file added by the caller).
        ``warmup``: unmeasured requests first (the shared prefix of ``agentic`` is cached by them)."""
        args = ["--backend", "sglang", "--dataset-name", self.dataset, "--num-prompts", str(self.num_prompts),
                "--max-concurrency", str(self.concurrency), "--request-rate", "inf", "--seed", str(seed),
                "--warmup-requests", str(warmup)]
        if self.dataset == "random-ids":
            # SGLang's random-ids prompts depend on the seed and the lengths only: two points of one length
            # share their first prompts, and its warm-up request is the first measured prompt. Without
            # the flush (SGLang's own, after warm-up) those requests are prefix-cache hits that prefill
            # nothing, e.g. one of max-context's two 512k requests (2026-12-07).
            args += ["--random-input-len", str(self.input_len), "--random-output-len", str(self.output_len),
                     "--random-range-ratio", "1.0", "--tokenize-prompt", "--flush-cache"]
        return args + list(self.extra)


def _requests(concurrency: int, cap: int | None = None) -> int:
    n = max(MIN_REQUESTS, 2 * concurrency)
    return n if cap is None else min(n, cap)


def _long(lens=(32768, 131072, 262144), concurrency=(1, 4, 16)) -> list[Point]:
    points = []
    for n in lens:
        for c in concurrency:
            # 16 requests of 256k at concurrency 16 are 4M prompt tokens per server: capped, and said.
            cap = 8 if n >= 262144 else None
            k = _requests(c, cap)
            note = f"{k} requests (one takes tens of seconds at this length)" if cap and k < MIN_REQUESTS else ""
            points.append(Point("long", n, 256, c, k, note=note))
    return points


# The 1M point fills a 1M context (2^20 positions, the proxy's max_position_embeddings) up to 1k short,
# so that prompt + output + SGLang's own slack stay inside it.
ONE_M_INPUT = 2**20 - 1024
AGENTIC_PREFIX = 60000
AGENTIC_QUESTION = 4096
AGENTIC_RANGE = 0.25  # 1k-4k new tokens (and 64-256 out: SGLang applies one ratio to both)


def _gsp_extra(n: int, prefix: int, question: int) -> tuple[str, ...]:
    return ("--gsp-num-groups", "1", "--gsp-prompts-per-group", str(n), "--gsp-system-prompt-len", str(prefix),
            "--gsp-question-len", str(question), "--gsp-output-len", "256", "--gsp-range-ratio", str(AGENTIC_RANGE))


def _agentic(concurrency: int = 8) -> list[Point]:
    # Eight waves of requests: with two, one slow prefill moved a point's throughput by 2x (H100, 16
    # requests, ~2 s per point); with four (32 requests, 3-4.5 s per point on an H200) one server's
    # repeats still spread 1183-1821 tok/s. Each request costs well under a second.
    n = max(MIN_REQUESTS, 8 * concurrency)
    return [Point("agentic", AGENTIC_PREFIX + AGENTIC_QUESTION, 256, concurrency, n,
                  dataset="generated-shared-prefix", extra=_gsp_extra(n, AGENTIC_PREFIX, AGENTIC_QUESTION),
                  shared_prefix=AGENTIC_PREFIX, range_ratio=AGENTIC_RANGE)]


def text_tokens_per_token(tokenizer_path: str, sample: int = 20000, seed: int = 0) -> float:
    """How many tokens ``tokenizer`` makes of the text SGLang's ``generated-shared-prefix`` generator
    writes for one token: it decodes random vocabulary ids to text, and the server re-tokenizes that
    text. About 1 for a real BPE tokenizer; ~13-16 for the proxy checkpoints' tokenizer, whose
    vocabulary is mostly ``<|reserved_N|>`` fillers that re-tokenize byte by byte."""
    import random

    from benchmarks.serving.sglang_client import without_hf_datasets

    without_hf_datasets()  # SGLang's benchmark package imports Hugging Face datasets at module level
    from sglang.benchmark.datasets.common import gen_prompt
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    state = random.getstate()
    random.seed(seed)
    try:
        text = gen_prompt(tok, sample)
    finally:
        random.setstate(state)
    return len(tok.encode(text, add_special_tokens=False)) / sample


def calibrated(points: list[Point], tokens_per_token: float) -> list[Point]:
    """``generated-shared-prefix`` points with the generator's lengths divided by ``tokens_per_token``,
    so that the server sees prompts of the intended token lengths (said in the note)."""
    from dataclasses import replace

    if abs(tokens_per_token - 1.0) < 0.05:
        return points
    out = []
    for p in points:
        if p.dataset == "generated-shared-prefix":
            prefix = max(1, round(p.shared_prefix / tokens_per_token))
            question = max(1, round(p.max_new_tokens / tokens_per_token))
            note = (f"generator lengths {prefix} + {question} (= {p.shared_prefix} + {p.max_new_tokens} tokens / "
                    f"{tokens_per_token:.2f}, the tokens this tokenizer makes of one generated token's text)")
            p = replace(p, extra=_gsp_extra(p.num_prompts, prefix, question),
                        note="; ".join(x for x in (p.note, note) if x))
        out.append(p)
    return out


WORKLOADS: dict[str, list[Point]] = {
    "cookbook": [Point("cookbook", 2048, 256, 64, 128)],
    "agentic": _agentic(),
    "long": _long(),
    # 1M: the released model reaches it with YaRN; the rank8 proxy's RoPE covers 1M outright (the same
    # RoPE work per token). ab_default drops it, saying why, where the servers' KV pools cannot hold it.
    "max-context": [Point("max-context", 524288, 128, 1, 2,
                          note="2 requests: one 512k prefill takes tens of seconds per server"),
                    Point("max-context", ONE_M_INPUT, 128, 1, 1,
                          note="1 request: one 1M prefill takes tens of seconds per server")],
}


def select(names: list[str], *, lens: list[int] | None = None, concurrency: list[int] | None = None) -> list[Point]:
    """The points of the named workloads, optionally only some prompt lengths / concurrencies."""
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; choose from {sorted(WORKLOADS)}")
    points = [p for n in names for p in WORKLOADS[n]]
    if lens:
        points = [p for p in points if p.workload in ("cookbook", "agentic") or p.input_len in lens]
    if concurrency:
        points = [p for p in points if p.concurrency in concurrency or p.workload in ("cookbook", "agentic")]
    return points


def capped(points: list[Point], cap: int | None) -> list[Point]:
    """At most ``cap`` requests per point (a device-time budget), said in each capped point's note; never
    fewer than the point's concurrency, so the concurrency it is named for is still reached."""
    if not cap:
        return points
    from dataclasses import replace

    out = []
    for p in points:
        n = max(cap, p.concurrency)
        if p.num_prompts > n and p.dataset == "random-ids":
            p = replace(p, num_prompts=n, note=f"{n} of {p.num_prompts} planned requests (device-time budget)")
        out.append(p)
    return out


def context_length_for(points: list[Point]) -> int:
    """A context length that fits every point's prompt + output (rounded up to 1k)."""
    need = max(p.input_len + p.output_len for p in points)
    return -(-need // 1024) * 1024 + 1024
