"""MSA indexer: per (index head, query token) top-k key blocks by pooled q·k score.

`indexer_prefill` (fused, one kernel) for extend batches; `IndexerDecode` (plan/run, CUDA-graph
capturable) and `indexer_decode` for decode. `naive` holds the fp32 torch reference. The selection
rules are in README.md. The opt-in fp8 index path: `quantize_index_k` stores keys as e4m3 + per-slot
scales; both indexers take `idx_k_scale=` to score them (README.md, "fp8 index path").
"""

from .decode import IndexerDecode, indexer_decode
from .naive import naive_indexer_decode, naive_indexer_prefill
from .prefill import indexer_prefill
from .quant import quantize_index_k, quantize_index_k_cache, quantize_index_k_torch

__all__ = ["IndexerDecode", "indexer_decode", "indexer_prefill", "naive_indexer_decode",
           "naive_indexer_prefill", "quantize_index_k", "quantize_index_k_cache", "quantize_index_k_torch"]
