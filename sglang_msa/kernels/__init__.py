"""Triton kernels for MiniMax Sparse Attention (one folder per op, each with a ``naive.py`` reference).

- ``msa_indexer``: index scores → block scores → forced init/local blocks → top-k block ids.
- ``msa_prefill``: sparse prefill attention, KV-block-major (reverse map + block tiles + LSE combine).
- ``msa_decode``: sparse decode attention over stride-paged KV blocks.
- ``qk_norm_rope``: the M3 attention inputs: per-head q/k RMSNorm + partial RoPE and v packing, one launch.
"""
