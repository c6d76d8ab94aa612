"""Out-of-tree MiniMax-M3 models for SGLang (discovered via ``SGLANG_EXTERNAL_MODEL_PACKAGE``).

SGLang imports every module of this package and collects each module's ``EntryClass``.
"""

# Flipped to True when our own MiniMax-M3 implementation is complete; until then the plugin leaves
# SGLang's in-tree classes in place unless SGLANG_MSA_MODELS=1 forces ours.
IMPLEMENTED = False
