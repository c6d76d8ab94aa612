"""MSA sparse prefill attention: KV-block-major Triton kernels (+ a query-major path for short extends
and a union-tile path for coherent selections).

Files: ``naive.py`` (fp32 reference), ``reverse_map.py`` (token->block map inverted to block->tokens),
``reverse_map_counting.py`` (the same map by counting sort: atomics, no stable sort; the default,
``SGLANG_MSA_REVERSE_MAP=sort`` picks the sorted one), ``block_major.py`` (one program per selected block), ``combine.py`` (LSE merge of the per-block
partials), ``query_major.py`` (one program per token), ``union_tile.py`` (one program per query tile
walking the union of its tokens' blocks, no partials; its device-side union builder and the
``mean_tile_union`` / ``prefer_union_tile`` helpers), ``tiles.py`` (shared K/V block loads),
``plan.py`` (plan/run host API; ``method="union_tile"`` or ``SGLANG_MSA_PREFILL_METHOD``).
"""

from .naive import naive_sparse_prefill
from .plan import QUERY_MAJOR_MAX_TOKEN_HEADS, SparsePrefillPlan, bind_topk, plan, run, sparse_prefill
from .union_tile import mean_tile_union, prefer_union_tile

__all__ = [
    "QUERY_MAJOR_MAX_TOKEN_HEADS",
    "SparsePrefillPlan",
    "bind_topk",
    "mean_tile_union",
    "naive_sparse_prefill",
    "plan",
    "prefer_union_tile",
    "run",
    "sparse_prefill",
]
