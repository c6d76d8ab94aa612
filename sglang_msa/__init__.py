"""sglang-msa: MiniMax Sparse Attention (MSA) for SGLang on Hopper, as a fork-free plugin.

Importing this package is cheap and pulls in neither SGLang, torch nor `smg_rs`; the SGLang
entry point is :func:`sglang_msa.plugin.register`.
"""

__version__ = "0.1.0"

BACKEND_NAME = "msa"
