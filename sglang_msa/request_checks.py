"""Input-id range check for servers started with ``--attention-backend msa`` (issue #14).

Why: SGLang 0.5.17 never checks that client-supplied ``input_ids`` lie in ``[0, vocab_size)``
(``TokenizerManager._validate_input_ids_in_vocab`` exists but nothing calls it, and it misses
negative ids; the scheduler checks lengths only). An id past the embedding table reaches the model's
embedding gather: on a GPU an out-of-bounds index, a device-side assert that takes the scheduler
(the whole server) down. One bad ``/generate`` request must get a 400, not kill the server.

How: an AROUND hook (SGLang's ``HookRegistry``) on ``TokenizerManager._validate_one_request``, which
SGLang calls for every generate/embedding request (batch items one by one) before building the
tokenized request. Servers that did not pick ``msa`` go straight to SGLang's method, unchanged. With
``msa``, the ids the client sent (``obj.input_ids``; tokenizer output is SGLang's own) are checked
with ``min``/``max`` (C speed: ~1 ms per 100k ids) and a ``ValueError`` is raised, which SGLang's HTTP
layer answers with a 400 carrying the message, exactly like its other request checks.

When it can go: once SGLang validates input ids against the vocabulary itself (wiring up
``_validate_input_ids_in_vocab`` with a lower bound, or a check in the scheduler).
"""

from __future__ import annotations

VALIDATE_TARGET = "sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request"


def _flat_ids(ids):
    if ids and isinstance(ids[0], (list, tuple)):
        return [i for seq in ids for i in seq]
    return ids


def check_input_ids_in_vocab(original_fn, self, obj, *args, **kwargs):
    """AROUND hook body: reject client input ids outside ``[0, vocab_size)`` on ``msa`` servers."""
    from sglang_msa import BACKEND_NAME

    server_args = getattr(self, "server_args", None)
    if getattr(server_args, "attention_backend", None) == BACKEND_NAME:
        ids = getattr(obj, "input_ids", None)
        vocab_size = getattr(getattr(self, "model_config", None), "vocab_size", None)
        if ids and vocab_size:
            flat = _flat_ids(list(ids))
            ints = [i for i in flat if isinstance(i, int)]
            if ints:
                lo, hi = min(ints), max(ints)
                if lo < 0 or hi >= vocab_size:
                    bad = lo if lo < 0 else hi
                    raise ValueError(f"input_ids contains out-of-vocabulary token id {bad}; valid range is "
                                     f"[0, {vocab_size}).")
    return original_fn(self, obj, *args, **kwargs)


def register_request_hooks() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    already = any(h is check_input_ids_in_vocab for _, h, _ in HookRegistry._hooks.get(VALIDATE_TARGET, []))
    if not already:
        HookRegistry.register(VALIDATE_TARGET, check_input_ids_in_vocab, HookType.AROUND)
