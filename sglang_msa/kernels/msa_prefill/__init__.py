"""MSA sparse prefill attention: KV-block-major Triton kernels (+ a query-major path for short extends).

Files: ``naive.py`` (fp32 reference), ``reverse_map.py`` (token->block map inverted to block->tokens),
``block_major.py`` (one program per selected block), ``combine.py`` (LSE merge of the per-block
partials), ``query_major.py`` (one program per token), ``plan.py`` (plan/run host API).
"""

from .naive import naive_sparse_prefill
from .plan import QUERY_MAJOR_MAX_TOKEN_HEADS, SparsePrefillPlan, bind_topk, plan, run, sparse_prefill

__all__ = [
    "QUERY_MAJOR_MAX_TOKEN_HEADS",
    "SparsePrefillPlan",
    "bind_topk",
    "naive_sparse_prefill",
    "plan",
    "run",
    "sparse_prefill",
]
