"""Benchmarks of sglang-msa (serving A/B client, kernel micro-benchmarks); results go to results/."""
