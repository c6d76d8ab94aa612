"""Out-of-tree multimodal processors for SGLang (discovered via ``SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE``).

SGLang's tokenizer manager imports every module of this package and maps each
``BaseMultimodalProcessor`` subclass to the architectures listed in its ``models``, replacing
in-tree processors of the same architecture name. Keep this file free of imports: SGLang imports
the package on every multimodal server start.

* :mod:`sglang_msa.multimodal.minimax_m3_vl`: MiniMax-M3-VL with image and video preprocessing
  done by the Rust ``smg_rs`` extension (imported only when media arrive).
"""
