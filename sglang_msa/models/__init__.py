"""Out-of-tree MiniMax-M3 models for SGLang (discovered via ``SGLANG_EXTERNAL_MODEL_PACKAGE``).

SGLang imports every module of this package and collects each module's ``EntryClass``.

What the plugin puts in charge (``SGLANG_MSA_MODELS``):

* unset: our text model ``MiniMaxM3SparseForCausalLM`` (``IMPLEMENTED``: served on an H200 with the
  ``msa`` backend and with SGLang's own sparse backend, greedy-identical; see
  ``benchmarks/results/e2e-correctness-*.json``) and SGLang's in-tree M3-VL class, because our VL class
  has only been checked on the CPU so far (``VL_BY_DEFAULT``);
* ``1``: ours for both architectures; ``0``: SGLang's in-tree classes for both.
"""

import os

IMPLEMENTED = True  # the text model: GPU-verified
VL_BY_DEFAULT = False  # the VL model: CPU-verified against transformers, not yet served on a GPU


def vl_enabled() -> bool:
    """Whether ``minimax_m3_vl`` exports our VL class (read each time SGLang asks for ``EntryClass``)."""
    value = os.environ.get("SGLANG_MSA_MODELS", "").strip().lower()
    if value in ("", None):
        return VL_BY_DEFAULT
    return value not in ("0", "false", "no", "off")
