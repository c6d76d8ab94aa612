"""Factory registered as ``ATTENTION_BACKENDS["msa"]``."""

from __future__ import annotations


class MSABackendNotReady(NotImplementedError):
    """Raised while the serving backend is not implemented yet (see the backend issue)."""


def create_msa_backend(runner):
    """Build the MSA attention backend for a ``ModelRunner``.

    The serving backend lands with the backend/model issue; until then selecting it fails loudly
    with this message instead of silently falling back to another backend.
    """
    raise MSABackendNotReady(
        "sglang-msa: the 'msa' attention backend is registered, but its serving implementation is "
        "not available in this version yet. Use --attention-backend triton for now."
    )
