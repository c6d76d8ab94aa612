"""SGLang plugin entry point (group ``sglang.srt.plugins``, name ``msa``).

SGLang calls :func:`register` early in every process it starts (the launcher, the engine and each
scheduler subprocess), so registration lives here rather than in an import side effect.

What ``register()`` does, and nothing else:

* adds ``msa`` to ``--attention-backend`` choices (``add_attention_backend_choices``, public API);
* registers the backend factory under ``ATTENTION_BACKENDS["msa"]`` (``register_attention_backend``);
* registers one model-override provider (``register_model_override_predicate``, public API), which
  does nothing for servers that did not pick ``msa``. For ``--attention-backend msa`` it gives a server
  without ``--page-size`` the page size of SGLang's default deployment of the model (128 for
  MiniMax-M3 on Hopper; :mod:`sglang_msa.backend.dense`) and opts that server in to our MiniMax-M3
  model package and M3-VL processor (:func:`opt_in`), after rejecting the serving features msa
  does not handle (:mod:`sglang_msa.backend.features`: a clear error at startup);
* registers one AROUND hook with SGLang's ``HookRegistry`` so MiniMax sparse layers use our sparse
  backend when ``msa`` is selected (why, how and when it can go: :mod:`sglang_msa.backend.hooks`);
* registers one AROUND hook on ``TokenizerManager._validate_one_request`` that, for ``msa`` servers
  only, rejects client ``input_ids`` outside ``[0, vocab_size)`` with a 400 (SGLang 0.5.17 has no such
  check and an out-of-vocabulary id crashes the GPU gather; :mod:`sglang_msa.request_checks`);
* with ``SGLANG_MSA_FP8_INDEX=1`` only (the opt-in fp8 index-K cache): one AROUND hook on
  ``KVCacheConfigurator._build_minimax_sparse_kv_pool`` that, for ``msa`` servers, builds the MiniMax
  pool with an e4m3 index-K cache plus per-slot scales (why, how, when it can go and how its memory is
  counted: :mod:`sglang_msa.backend.fp8_index`); without the flag it is not registered at all;
* with ``SGLANG_MSA_MODELS=1`` only (an explicit opt-in for every server): our model package and
  processor right away.

Opt-in: a server started without ``--attention-backend msa`` (and without ``SGLANG_MSA_MODELS=1``)
runs exactly as stock SGLang: the same model classes, processors and attention backends. With
``msa``, the launcher's server-args resolution points ``SGLANG_EXTERNAL_MODEL_PACKAGE`` and
``SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE`` at our packages before SGLang starts its scheduler processes,
which inherit them and build their model registry from them (``SGLANG_MSA_MODELS=0`` keeps SGLang's
classes even then).

Apart from those documented hooks (the third only with ``SGLANG_MSA_FP8_INDEX=1``) it patches
nothing. It is idempotent, never raises (failures are logged), and can be
switched off with ``SGLANG_MSA_DISABLE=1``.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("sglang_msa")

DISABLE_ENV = "SGLANG_MSA_DISABLE"
MODELS_ENV = "SGLANG_MSA_MODELS"
MODEL_PACKAGE = "sglang_msa.models"
MM_PROCESSOR_ENV = "SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE"
MM_PROCESSOR_PACKAGE = "sglang_msa.multimodal"

_registered = False


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def models_switch() -> bool | None:
    """``SGLANG_MSA_MODELS``: True (our MiniMax-M3 classes for every server), False (never), None
    (unset: ours for servers started with ``--attention-backend msa`` only)."""
    value = os.environ.get(MODELS_ENV, "").strip()
    return None if value == "" else _env_flag(MODELS_ENV, False)


def opt_in() -> None:
    """Our model package and M3-VL processor for this process and the ones it starts (a server that
    picked ``msa``, or ``SGLANG_MSA_MODELS=1``); nothing when ``SGLANG_MSA_MODELS=0``."""
    if models_switch() is False:
        return
    _register_models()
    _register_mm_processor()


def on_server_args(server_args, hf_config) -> dict:
    """Model-override provider, run during every server's argument resolution: nothing unless the
    server picked ``msa``; then the feature checks (:mod:`sglang_msa.backend.features`: a rejected
    flag raises ``MSAUnsupportedFeature`` out of ``ServerArgs(...)``, before anything starts), the
    opt-in and the default deployment's page size."""
    from sglang_msa import BACKEND_NAME

    if getattr(server_args, "attention_backend", None) != BACKEND_NAME:
        return {}
    from sglang_msa.backend.features import check_server_args

    check_server_args(server_args, hf_config)
    opt_in()
    from sglang_msa.backend.dense import msa_page_size_override

    return msa_page_size_override(server_args, hf_config)


def _register_backend() -> None:
    from sglang.srt.layers.attention.attention_registry import (
        ATTENTION_BACKENDS,
        register_attention_backend,
    )
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES, add_attention_backend_choices

    from sglang_msa import BACKEND_NAME
    from sglang_msa.backend.factory import create_msa_backend

    if BACKEND_NAME not in ATTENTION_BACKEND_CHOICES:
        add_attention_backend_choices([BACKEND_NAME])
    if ATTENTION_BACKENDS.get(BACKEND_NAME) is not create_msa_backend:
        register_attention_backend(BACKEND_NAME)(create_msa_backend)

    from sglang_msa.backend.hooks import register_hooks

    register_hooks()
    from sglang_msa.request_checks import register_request_hooks

    register_request_hooks()
    _register_server_args_provider()


def _register_server_args_provider() -> None:
    from sglang.srt.arg_groups import overrides

    if not any(fn is on_server_args for _, fn in overrides._PREDICATE_OVERRIDE_FNS):
        overrides.register_model_override_predicate(lambda _arch: True)(on_server_args)


def _register_models() -> None:
    """Point SGLang's model registry at ``sglang_msa.models`` (overriding same-named archs).

    SGLang builds ``ModelRegistry`` when ``sglang.srt.models.registry`` is first imported and reads
    ``SGLANG_EXTERNAL_MODEL_PACKAGE`` at that moment, in this process and in the scheduler processes
    it starts later (they inherit the variable). Setting it is enough where the registry is not built
    yet and keeps this cheap (importing the registry imports every SGLang model). If the registry is
    already built here, or the variable names another package, we also register into the live one.
    """
    current = os.environ.get("SGLANG_EXTERNAL_MODEL_PACKAGE", "")
    if current in ("", MODEL_PACKAGE):
        os.environ["SGLANG_EXTERNAL_MODEL_PACKAGE"] = MODEL_PACKAGE
        if "sglang.srt.models.registry" not in sys.modules:
            return
    from sglang.srt.models.registry import ModelRegistry

    ModelRegistry.register(MODEL_PACKAGE, overwrite=True)


def _register_mm_processor() -> None:
    """Have SGLang use our smg_rs-backed MiniMax-M3-VL processor (``sglang_msa.multimodal``).

    SGLang's tokenizer manager reads ``SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE`` when it builds the
    processor (after plugins load; child processes inherit it) and imports that package over its
    own processors. Writing into SGLang's processor mapping directly would be undone there. The
    processor serves SGLang's in-tree M3-VL as well as ours.
    """
    current = os.environ.get(MM_PROCESSOR_ENV, "")
    if current in ("", MM_PROCESSOR_PACKAGE):
        os.environ[MM_PROCESSOR_ENV] = MM_PROCESSOR_PACKAGE
    else:
        logger.warning("sglang-msa: %s=%s is set; MiniMax-M3-VL keeps that package's processor",
                       MM_PROCESSOR_ENV, current)


def register() -> None:
    """Entry point called by SGLang's ``load_plugins()``. Cheap, idempotent, never raises."""
    global _registered
    if _registered:
        return
    if _env_flag(DISABLE_ENV, False):
        logger.info("sglang-msa: disabled by %s=1; nothing registered", DISABLE_ENV)
        return
    try:
        _register_backend()
    except Exception:  # a broken plugin must not take SGLang down with it
        logger.exception("sglang-msa: could not register the 'msa' attention backend")
        return
    try:
        if models_switch():
            opt_in()
    except Exception:
        logger.exception("sglang-msa: could not register the MiniMax-M3 models")
    _registered = True
    logger.info("sglang-msa: registered attention backend 'msa'")
