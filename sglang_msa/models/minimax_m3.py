"""MiniMax-M3 (text) for SGLang, written for the ``msa`` backend.

Placeholder classes that carry the architecture names SGLang resolves; the implementation lands
with the model issue. They are only registered when ``SGLANG_MSA_MODELS=1`` (or once
``sglang_msa.models.IMPLEMENTED`` is True), so installing the plugin leaves SGLang's in-tree M3 in
charge until then.
"""

from __future__ import annotations

from torch import nn


class _NotYetImplemented(nn.Module):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError(
            f"sglang-msa: {type(self).__name__} is not implemented in this version; unset "
            "SGLANG_MSA_MODELS to use SGLang's in-tree MiniMax-M3."
        )


class MiniMaxM3SparseForCausalLM(_NotYetImplemented):
    """MiniMax-M3 text model (architecture name from the Hugging Face config)."""


class MiniMaxM3SparseForConditionalGeneration(_NotYetImplemented):
    """MiniMax-M3-VL (vision tower + language model)."""


EntryClass = [MiniMaxM3SparseForCausalLM, MiniMaxM3SparseForConditionalGeneration]
