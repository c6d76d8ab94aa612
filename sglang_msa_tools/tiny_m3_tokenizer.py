"""A small byte-level BPE tokenizer in the MiniMax-M3 style, built locally (no download).

Layout: the special tokens sit at fixed ids (the real M3 ids for the ``slice`` preset), the 256 byte
symbols and a few learned merges fill the lowest free ids, and unreachable ``<|reserved_N|>`` fillers
pad the vocabulary to exactly ``vocab_size`` so that ``len(tokenizer) == config.vocab_size``.
Everything is deterministic: the merges come from a fixed corpus with a fixed tie-break.
"""

from __future__ import annotations

import json
import os
from collections import Counter

# Token strings follow the MiniMax conventions that SGLang's parsers and processors look for.
PAD = "]!p~["
BOS = "]~!b["
EOS = "[e~["
ROLE = "]~b]"
THINK_START = "<mm:think>"
THINK_END = "</mm:think>"
NAMESPACE = "]<]minimax[>["
IMAGE = "]<]image[>["
VIDEO = "]<]video[>["
IMAGE_START = "]<]start of image[>["
IMAGE_END = "]<]end of image[>["

# Tokens that must never be split or produced by BPE; "special" ones are dropped by
# skip_special_tokens, the others (thinking / tool-call markers) stay visible to SGLang's parsers.
SPECIAL_TOKENS = (PAD, BOS, EOS, ROLE, IMAGE, VIDEO, IMAGE_START, IMAGE_END)
VISIBLE_MARKERS = (THINK_START, THINK_END, NAMESPACE)

# Real M3 ids (transformers' MiniMaxM3VL defaults: bos 200034, eos 200020, image 200025,
# video 200026); the other positions are this tool's choice inside the same reserved range.
REAL_M3_IDS = {
    PAD: 200000,
    ROLE: 200019,
    EOS: 200020,
    IMAGE: 200025,
    VIDEO: 200026,
    IMAGE_START: 200027,
    IMAGE_END: 200028,
    BOS: 200034,
    THINK_START: 200050,
    THINK_END: 200051,
    NAMESPACE: 200052,
}
# Small vocabularies put the special tokens first, in this order.
SMALL_IDS = {tok: i for i, tok in enumerate((PAD, BOS, EOS, ROLE, IMAGE, VIDEO, IMAGE_START, IMAGE_END,
                                             THINK_START, THINK_END, NAMESPACE))}

CHAT_TEMPLATE = (
    "{{- ']~!b[' -}}"
    "{%- for message in messages -%}"
    "{%- set role = 'ai' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- ']~b]' + role + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- elif part['type'] in ('image', 'image_url') -%}{{- ']<]image[>[' -}}"
    "{%- elif part['type'] in ('video', 'video_url') -%}{{- ']<]video[>[' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '[e~[\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- ']~b]ai\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking -%}{{- '<mm:think>\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)

# Merges are learned from this text; it only has to make common English/code pieces multi-byte.
_CORPUS = (
    "The quick brown fox jumps over the lazy dog. A small model is written for tests, and the tests "
    "check that the weights load and that the logits are finite. Sparse attention picks the top "
    "blocks for every query; the index heads score the blocks and the local block is always kept. "
    "def forward(self, hidden_states, positions):\n    return self.model(hidden_states, positions)\n"
    "for i in range(10):\n    print(i, i * i)\n"
    "Hello, world! What is the capital of France? The capital of France is Paris. "
    "User: describe the image. Assistant: the image shows a red square on a white background. "
)


def byte_symbols() -> list[str]:
    """The printable stand-in for each byte value (index = byte), as byte-level BPE uses them.

    Printable Latin-1 bytes map to themselves; the rest are shifted past 255 so that every symbol
    is a visible character and whitespace never appears inside a token.
    """
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    symbols, shifted = [], 0
    for b in range(256):
        if b in keep:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def _learn_merges(num_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE on the fixed corpus; ties go to the lexicographically smallest pair."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    words = Counter(piece for piece, _ in pre.pre_tokenize_str(_CORPUS))
    splits = {word: list(word) for word in words}
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: Counter = Counter()
        for word, count in words.items():
            parts = splits[word]
            for a, b in zip(parts, parts[1:]):
                pairs[(a, b)] += count
        if not pairs:
            break
        best_count = max(pairs.values())
        if best_count < 2:
            break
        best = min(p for p, c in pairs.items() if c == best_count)
        merges.append(best)
        for word, parts in splits.items():
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            splits[word] = merged
    return merges


def special_token_ids(vocab_size: int) -> dict[str, int]:
    """Where each special token lives: the real M3 ids when they fit, else the first ids."""
    if vocab_size > max(REAL_M3_IDS.values()):
        return dict(REAL_M3_IDS)
    return dict(SMALL_IDS)


def build_tokenizer(vocab_size: int, num_merges: int = 200):
    """Return a ``tokenizers.Tokenizer`` with exactly ``vocab_size`` ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    specials = special_token_ids(vocab_size)
    if vocab_size < len(specials) + 256:
        raise ValueError(f"vocab_size {vocab_size} is too small for {len(specials)} special tokens + 256 bytes")
    merges = _learn_merges(min(num_merges, vocab_size - len(specials) - 256))

    by_id: dict[int, str] = {i: tok for tok, i in specials.items()}
    regular = byte_symbols() + [a + b for a, b in merges]
    free_ids = (i for i in range(vocab_size) if i not in by_id)
    for token in regular:
        by_id[next(free_ids)] = token
    for i in free_ids:  # unreachable fillers: no merge produces them
        by_id[i] = f"<|reserved_{i}|>"
    vocab = {tok: i for i, tok in sorted(by_id.items())}
    assert len(vocab) == vocab_size, "token strings must be unique"

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    added = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    added += [AddedToken(t, special=False, normalized=False) for t in VISIBLE_MARKERS]
    tokenizer.add_tokens(added)  # already in the vocab, so they keep their ids
    for tok, i in specials.items():
        assert tokenizer.token_to_id(tok) == i, (tok, tokenizer.token_to_id(tok), i)
    return tokenizer


def write_tokenizer(out_dir: str, vocab_size: int, model_max_length: int) -> dict[str, int]:
    """Write tokenizer.json + tokenizer_config.json (with the chat template); return the special ids."""
    tokenizer = build_tokenizer(vocab_size)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    ids = special_token_ids(vocab_size)
    added_decoder = {
        str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": t in SPECIAL_TOKENS}
        for t in sorted(ids, key=ids.get)
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "added_tokens_decoder": added_decoder,
        "extra_special_tokens": {"image_token": IMAGE, "video_token": VIDEO},
        "chat_template": CHAT_TEMPLATE,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return ids
