"""MSA sparse decode attention: one query token per request over its top-k KV blocks."""

from .naive import naive_sparse_decode
from .paged import DecodeTiling, SparseDecodeWrapper, choose_tiling, sparse_decode

__all__ = ["DecodeTiling", "SparseDecodeWrapper", "choose_tiling", "naive_sparse_decode", "sparse_decode"]
