"""The dense half of ``--attention-backend msa``: the backend SGLang itself would pick.

``msa`` only replaces MiniMax *sparse* layers. Everything else (M3's dense layers, every layer of
other models) runs on the attention backend SGLang chooses for this model on this GPU when no
``--attention-backend`` is given: for MiniMax-M3 that is ``fa3`` with page size 128 on Hopper,
``fa4``/``trtllm_mha`` with page size 128 on Blackwell, ``triton`` elsewhere (SGLang's
``_minimax_m3_overrides``); for other models SGLang's generic default (``_get_default_attn_backend``).
We do not restate those rules: :func:`sglang_default_choice` asks SGLang's own resolution on a copy
of the server arguments with the attention backend and page size unset.

Two moments use it:

* server-args resolution (:func:`msa_page_size_override`, called by the plugin's model-override
  provider, ``sglang_msa.plugin.on_server_args``): with ``--attention-backend msa`` and no
  ``--page-size``, the page size becomes the one SGLang's default deployment uses (128 for M3 on
  Hopper/Blackwell, which is also one MSA block per page). Inert for every server that did not pick
  ``msa``;
* model-runner start (:func:`create_dense_backend`): builds that backend, or falls back to ``triton``
  with a warning when it cannot be imported (e.g. no FlashAttention-3 library).

``SGLANG_MSA_DENSE_BACKEND=<name>`` (any registered backend, e.g. ``triton``, ``fa3``, ``flashinfer``)
overrides the choice; ``auto`` or unset means SGLang's default.
"""

from __future__ import annotations

import copy
import logging
import os
from contextlib import contextmanager

from sglang_msa import BACKEND_NAME

logger = logging.getLogger("sglang_msa")

DENSE_ENV = "SGLANG_MSA_DENSE_BACKEND"
FALLBACK_BACKEND = "triton"
# the server-args fields that name an attention backend (msa may be picked in any of them)
BACKEND_FIELDS = ("attention_backend", "prefill_attention_backend", "decode_attention_backend")


class DenseBackendError(ValueError):
    """``SGLANG_MSA_DENSE_BACKEND`` names no usable attention backend."""


@contextmanager
def _quiet_sglang_overrides():
    """SGLang's providers log their decisions; our probe must not read as the server's own choice."""
    log = logging.getLogger("sglang.srt.arg_groups.overrides")
    was = log.disabled
    log.disabled = True
    try:
        yield
    finally:
        log.disabled = was


def sglang_default_choice(server_args, hf_config=None) -> tuple[str, int | None]:
    """``(attention_backend, page_size)`` SGLang resolves for this model and GPU when the user gives
    neither ``--attention-backend`` nor ``--page-size`` (``page_size`` None: SGLang's generic default).
    Every other flag is the user's (quantization, KV-cache dtype, speculative settings, ...)."""
    from sglang.srt.arg_groups.overrides import collect_model_override_declarations

    # A private copy with the user's backend and page size removed. SGLang freezes resolved server
    # args against assignment; the copy is ours alone, so its fields are written past that guard.
    pristine = copy.copy(server_args)
    for name in (*BACKEND_FIELDS, "page_size"):
        object.__setattr__(pristine, name, None)
    if hf_config is None:
        hf_config = pristine.get_model_config().hf_config
    arch = (getattr(hf_config, "architectures", None) or ["?"])[0]
    declared: dict = {}
    # The plugin's own provider sees the copy's unset backend and declares nothing (no recursion).
    with _quiet_sglang_overrides():
        for _source, decl in collect_model_override_declarations(arch, pristine, hf_config):
            declared.update(decl)
        backend = declared.get("attention_backend")
        if backend is None:
            backend = pristine._get_default_attn_backend(pristine.use_mla_backend(), pristine.get_model_config())
    return backend, declared.get("page_size")


def requested_dense_backend() -> str | None:
    """The ``SGLANG_MSA_DENSE_BACKEND`` override, or None for SGLang's default ("auto"/unset)."""
    value = os.environ.get(DENSE_ENV, "").strip().lower()
    if value in ("", "auto", "default"):
        return None
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

    if value == BACKEND_NAME or value not in ATTENTION_BACKENDS:
        choices = sorted(k for k in ATTENTION_BACKENDS if k != BACKEND_NAME)
        raise DenseBackendError(f"{DENSE_ENV}={value!r} is not an attention backend for msa's dense "
                                f"layers; choose 'auto' or one of {choices}")
    return value


def msa_page_size_override(server_args, hf_config) -> dict:
    """For a server that picked msa (``sglang_msa.plugin.on_server_args`` checks): without
    ``--page-size`` it gets the page size of SGLang's default deployment of this model on this GPU."""
    if server_args.page_size is not None:
        return {}
    backend = requested_dense_backend()
    default_backend, page = sglang_default_choice(server_args, hf_config)
    if backend is not None and backend != default_backend:
        return {}  # another dense backend was asked for: SGLang's generic page-size default applies
    return {} if page is None else {"page_size": int(page)}


def choose_dense_backend(server_args, hf_config) -> tuple[str, str]:
    """``(backend, why)`` for the dense half: the override, else SGLang's default for this model/GPU."""
    requested = requested_dense_backend()
    if requested is not None:
        return requested, f"{DENSE_ENV}={requested}"
    backend, _ = sglang_default_choice(server_args, hf_config)
    if backend == BACKEND_NAME:  # cannot happen with SGLang's rules; never recurse into ourselves
        return FALLBACK_BACKEND, "fallback"
    return backend, "SGLang's default for this model on this GPU"


def create_dense_backend(runner):
    """Build the dense backend for ``runner``: the chosen one, or ``triton`` (with a warning) when the
    chosen one cannot be imported or built here. Returns ``(backend, name)``."""
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

    hf_config = runner.model_config.hf_config
    name, why = choose_dense_backend(runner.server_args, hf_config)
    try:
        backend = ATTENTION_BACKENDS[name](runner)
    except (ImportError, OSError, AssertionError, RuntimeError) as exc:
        if name == FALLBACK_BACKEND:
            raise
        logger.warning("sglang-msa: dense attention backend %s (%s) is unavailable here (%s: %s); "
                       "using %s instead", name, why, type(exc).__name__, exc, FALLBACK_BACKEND)
        name, why = FALLBACK_BACKEND, "fallback"
        backend = ATTENTION_BACKENDS[name](runner)
    logger.info("sglang-msa: dense attention layers on %s (%s), page size %s", name, why,
                getattr(runner, "page_size", None) or getattr(runner.server_args, "page_size", None))
    return backend, name
