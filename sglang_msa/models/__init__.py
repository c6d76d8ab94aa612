"""Out-of-tree MiniMax-M3 models for SGLang (discovered via ``SGLANG_EXTERNAL_MODEL_PACKAGE``).

SGLang imports every module of this package and collects each module's ``EntryClass``.

When SGLang uses this package (``sglang_msa.plugin``, ``SGLANG_MSA_MODELS``):

* unset: for servers started with ``--attention-backend msa`` only; every other server keeps SGLang's
  in-tree classes;
* ``1``: for every server; ``0``: never.

Then it exports ours for both architectures, ``MiniMaxM3SparseForCausalLM`` and
``MiniMaxM3SparseForConditionalGeneration`` (``VL_BY_DEFAULT``). Both were served on an H200 with the
``msa`` backend against SGLang's in-tree classes on its own sparse backend, greedy-identical (see
``benchmarks/results/e2e-correctness-*.json`` and ``e2e-vl-*.json``).
"""

import os

VL_BY_DEFAULT = True  # the VL model: CPU-verified against transformers and served on an H200


def vl_enabled() -> bool:
    """Whether ``minimax_m3_vl`` exports our VL class (read each time SGLang asks for ``EntryClass``)."""
    value = os.environ.get("SGLANG_MSA_MODELS", "").strip().lower()
    if value in ("", None):
        return VL_BY_DEFAULT
    return value not in ("0", "false", "no", "off")
