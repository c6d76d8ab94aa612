"""SGLang plugin entry point (group ``sglang.srt.plugins``, name ``msa``).

SGLang calls :func:`register` early in every process it starts (the launcher, the engine and each
scheduler subprocess), so registration lives here rather than in an import side effect.

What ``register()`` does, and nothing else:

* adds ``msa`` to ``--attention-backend`` choices (``add_attention_backend_choices``, public API);
* registers the backend factory under ``ATTENTION_BACKENDS["msa"]`` (``register_attention_backend``);
* registers one model-override provider (``register_model_override_predicate``, public API) that gives
  ``--attention-backend msa`` without ``--page-size`` the page size of SGLang's default deployment of
  the model (128 for MiniMax-M3 on Hopper); it returns nothing for servers that did not pick ``msa``
  (:mod:`sglang_msa.backend.dense`);
* registers one AROUND hook with SGLang's ``HookRegistry`` so MiniMax sparse layers use our sparse
  backend when ``msa`` is selected (why, how and when it can go: :mod:`sglang_msa.backend.hooks`);
* makes SGLang's model registry see ``sglang_msa.models`` when our models are enabled (see
  :func:`_register_models`);
* points SGLang's multimodal-processor lookup at ``sglang_msa.multimodal`` (MiniMax-M3-VL video and
  image inputs preprocessed by ``smg_rs``; see :func:`_register_mm_processor`).

Apart from that documented hook it patches nothing. It is idempotent, never raises (failures are logged), and can be
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


def models_enabled() -> bool:
    """Whether our MiniMax-M3 classes should replace SGLang's in-tree ones.

    On by default since the text model was verified on a GPU (``sglang_msa.models.IMPLEMENTED``); the
    environment variable ``SGLANG_MSA_MODELS=1/0`` forces it either way. The VL class follows its own
    default (``sglang_msa.models.vl_enabled``).
    """
    from sglang_msa import models

    return _env_flag(MODELS_ENV, models.IMPLEMENTED)


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
    _register_page_size_override()


def _register_page_size_override() -> None:
    from sglang.srt.arg_groups import overrides

    from sglang_msa.backend.dense import msa_page_size_override

    if not any(fn is msa_page_size_override for _, fn in overrides._PREDICATE_OVERRIDE_FNS):
        overrides.register_model_override_predicate(lambda _arch: True)(msa_page_size_override)


def _register_models() -> None:
    """Point SGLang's model registry at ``sglang_msa.models`` (overriding same-named archs).

    SGLang builds ``ModelRegistry`` when ``sglang.srt.models.registry`` is first imported and reads
    ``SGLANG_EXTERNAL_MODEL_PACKAGE`` at that moment. Plugins load before that import in every
    SGLang process, so setting the variable is enough and keeps ``register()`` cheap (importing the
    registry imports every SGLang model). If the registry is already built, or the variable names
    another package, we register into the live registry instead.
    """
    current = os.environ.get("SGLANG_EXTERNAL_MODEL_PACKAGE", "")
    if "sglang.srt.models.registry" not in sys.modules and current in ("", MODEL_PACKAGE):
        os.environ["SGLANG_EXTERNAL_MODEL_PACKAGE"] = MODEL_PACKAGE
        return
    from sglang.srt.models.registry import ModelRegistry

    ModelRegistry.register(MODEL_PACKAGE, overwrite=True)


def _register_mm_processor() -> None:
    """Have SGLang use our smg_rs-backed MiniMax-M3-VL processor (``sglang_msa.multimodal``).

    SGLang's tokenizer manager reads ``SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE`` when it builds the
    processor (after plugins load; child processes inherit it) and imports that package over its
    own processors. Writing into SGLang's processor mapping directly would be undone there. The
    processor serves SGLang's in-tree M3-VL as well as ours, so this does not depend on
    :func:`models_enabled`.
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
        if models_enabled():
            _register_models()
    except Exception:
        logger.exception("sglang-msa: could not register the MiniMax-M3 models")
    try:
        _register_mm_processor()
    except Exception:
        logger.exception("sglang-msa: could not register the MiniMax-M3-VL processor")
    _registered = True
    logger.info("sglang-msa: registered attention backend 'msa'")
