"""Tooling for tests, benchmarks and the demo; never imported by a server.

* ``tiny_m3`` / ``tiny_m3_tokenizer``: tiny random MiniMax-M3 (M3-VL) checkpoints with a locally
  built tokenizer (presets ``tiny``, ``slice``, ``rank8``): ``python -m sglang_msa_tools.tiny_m3 OUT``;
* ``demo``: the README's main job (``bash scripts/demo.sh`` runs ``python -m sglang_msa_tools.demo``);
* ``pipeline_check``: one MSA layer end to end vs the fp32 references (the demo's kernel step).

Dependencies go one way: these modules import the product package ``sglang_msa``; nothing in
``sglang_msa`` imports them (tests/test_layout.py checks it). The package is not in the wheel
(``[tool.maturin] python-packages`` lists only ``sglang_msa``): every user of it runs from a
clone — scripts/demo.sh and scripts/test.sh put the clone's copy on the path behind the installed
product, the benchmarks add the repository root, and benchmarks/gpu_call.sh runs with
``PYTHONPATH=/tmp/site:$PWD`` from the repository root.
"""
