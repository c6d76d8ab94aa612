"""Serving benchmark client: seeded workloads, streaming request timing, A/B sweeps and reports.

The command line is ``benchmarks/bench_serving.py``; modules: ``workload`` (prompts), ``sse``
(event-stream decoding), ``client`` (one timed request), ``metrics`` (aggregation and ratios),
``runner`` (interleaved sweep), ``report`` (table, JSON, plots).
"""
