"""The attention hook the plugin installs through SGLang's own plugin hook registry (the others:
an msa-only input-id range check, :mod:`sglang_msa.request_checks`; and, only with the opt-in
``SGLANG_MSA_FP8_INDEX=1``, the KV-pool build hook of :mod:`sglang_msa.backend.fp8_index`).

Why: for MiniMax sparse models SGLang's ``attn_backend_wrapper`` wraps whatever full-attention
backend was chosen into ``MiniMaxHybridAttnBackend(full, MiniMaxSparseAttnBackend(runner), ...)``,
so the sparse layers would always run SGLang's own sparse kernels, even with
``--attention-backend msa``. No public registry lets a backend claim the sparse layers.

How: an AROUND hook on ``sglang.srt.layers.attention.attention_registry.attn_backend_wrapper``
(``HookRegistry``, applied by SGLang's ``load_plugins()``). It changes nothing unless the backend
being wrapped was built by our ``msa`` factory *and* the model is a MiniMax sparse model; then it
builds the same hybrid with our :class:`~sglang_msa.backend.sparse.MSASparseAttnBackend` in place of
SGLang's sparse backend. Every other call goes to SGLang's original function untouched.

When it can go: once SGLang lets an attention backend declare that it serves MiniMax sparse
layers itself (or exposes the sparse backend class through a registry).
"""

from __future__ import annotations

import logging

logger = logging.getLogger("sglang_msa")

WRAPPER_TARGET = "sglang.srt.layers.attention.attention_registry.attn_backend_wrapper"

# Set on backends built by our factory so the hook can recognise them (also inside SGLang's
# HybridAttnBackend when prefill and decode backends differ).
MSA_MARKER = "_sglang_msa_backend"


def is_msa_backend(backend) -> bool:
    if getattr(backend, MSA_MARKER, False):
        return True
    children = (getattr(backend, "prefill_backend", None), getattr(backend, "decode_backend", None))
    return any(getattr(child, MSA_MARKER, False) for child in children if child is not None)


def wrap_minimax_sparse_with_msa(original_fn, runner, full_attn_backend, *args, **kwargs):
    """AROUND hook body: our sparse backend for MiniMax sparse models served with ``msa``."""
    from sglang.srt.configs.model_config import is_minimax_sparse

    if not (is_msa_backend(full_attn_backend) and is_minimax_sparse(runner.model_config.hf_config)):
        return original_fn(runner, full_attn_backend, *args, **kwargs)

    from sglang.srt.layers.attention.minimax_sparse_backend import MiniMaxHybridAttnBackend

    from sglang_msa.backend.sparse import MSASparseAttnBackend

    sparse_backend = MSASparseAttnBackend(runner)
    logger.info(
        "sglang-msa: MiniMax sparse layers %s run on the msa kernels; dense layers on %s",
        sparse_backend.sparse_layer_ids, type(full_attn_backend).__name__,
    )
    return MiniMaxHybridAttnBackend(full_attn_backend, sparse_backend, sparse_backend.sparse_layer_ids)


def register_hooks() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    already = any(h is wrap_minimax_sparse_with_msa for _, h, _ in HookRegistry._hooks.get(WRAPPER_TARGET, []))
    if not already:
        HookRegistry.register(WRAPPER_TARGET, wrap_minimax_sparse_with_msa, HookType.AROUND)
    from sglang_msa.backend.fp8_index import register_pool_hook

    register_pool_hook()  # nothing unless SGLANG_MSA_FP8_INDEX=1
