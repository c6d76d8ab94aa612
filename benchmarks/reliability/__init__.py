"""Reliability checks of a live SGLang server with the plugin (issue #14): the malformed-request
corpus (:mod:`benchmarks.reliability.corpus`), an in-process harness that answers the corpus with
SGLang's real HTTP app and request validation on CPU (:mod:`benchmarks.reliability.inprocess`), and
the GPU driver ``benchmarks/reliability.py``."""
