"""The ``msa`` SGLang attention backend."""
