"""Factory registered as ``ATTENTION_BACKENDS["msa"]``.

``msa`` accelerates MiniMax sparse attention layers. Dense attention (M3's full-attention layers,
and every layer of other models) runs on the backend SGLang itself would choose for this model on
this GPU (:mod:`sglang_msa.backend.dense`: fa3 on Hopper for M3), which this factory builds and
marks; the hook in :mod:`sglang_msa.backend.hooks` then puts our sparse backend next to it.
"""

from __future__ import annotations

import logging

from sglang_msa.backend.dense import create_dense_backend
from sglang_msa.backend.hooks import MSA_MARKER

logger = logging.getLogger("sglang_msa")


def create_msa_backend(runner):
    """Build the dense half of the ``msa`` backend for a ``ModelRunner``."""
    from sglang.srt.configs.model_config import is_minimax_sparse

    dense, name = create_dense_backend(runner)
    setattr(dense, MSA_MARKER, True)
    if not is_minimax_sparse(runner.model_config.hf_config):
        logger.warning(
            "sglang-msa: --attention-backend msa only changes MiniMax sparse models; this model "
            "(%s) runs entirely on SGLang's %s backend",
            (runner.model_config.hf_config.architectures or ["?"])[0], name,
        )
    return dense
