"""benchmarks/profile_step.py: kernel-time summaries of torch profiler traces (synthetic traces)."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.profile_step import OTHER, categorize, load_trace, main, summarize_trace  # noqa: E402


@pytest.mark.parametrize("name, category", [
    ("_indexer_prefill_kernel", "indexer"),
    ("_indexer_merge_kernel", "indexer"),
    ("_decode_topk_part_kernel", "indexer"),
    ("_decode_topk_merge_kernel", "indexer"),
    ("_flash_attn_fwd_with_block_score_kernel", "indexer"),
    ("_topk_index_partial_kernel", "indexer"),
    ("block_major_fwd_kernel", "sparse_attention"),
    ("sparse_decode_split_kernel", "sparse_attention"),
    ("_gqa_share_sparse_fwd_kernel", "sparse_attention"),
    ("_fwd_kernel", "dense_attention"),
    ("_fwd_grouped_kernel_stage1", "dense_attention"),
    ("fused_moe_kernel", "moe"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32", "gemm"),
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT", "gemm"),
    ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", "communication"),
    ("void (anonymous namespace)::fused_gemma_qknorm_rope_kernel<...>", "norm_rope"),
    ("void flashinfer::norm::FusedAddRMSNormKernel<8u, __nv_bfloat16>", "norm_rope"),
    ("vectorized_elementwise_kernel<4, ...>", OTHER),
])
def test_categorize(name, category):
    assert categorize(name) == category


def _trace(events):
    return {"traceEvents": events}


def test_summarize_trace_sums_kernels_per_step_and_ignores_cpu_events():
    events = [
        {"ph": "X", "cat": "kernel", "name": "fused_moe_kernel", "dur": 3000.0},
        {"ph": "X", "cat": "kernel", "name": "fused_moe_kernel", "dur": 1000.0},
        {"ph": "X", "cat": "kernel", "name": "block_major_fwd_kernel", "dur": 500.0},
        {"ph": "X", "cat": "kernel", "name": "elementwise", "dur": 300.0},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD", "dur": 200.0},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "dur": 99999.0},
        {"ph": "i", "cat": "kernel", "name": "fused_moe_kernel", "dur": 77777.0},
    ]
    s = summarize_trace(_trace(events), steps=2)
    assert s["ms_per_step"] == {"moe": 2.0, "sparse_attention": 0.25, OTHER: 0.15}
    assert list(s["ms_per_step"]) == ["moe", "sparse_attention", OTHER]  # heaviest first
    assert s["kernel_ms_per_step"] == pytest.approx(2.4)
    assert s["memcpy_ms_per_step"] == pytest.approx(0.1)
    assert s["share"]["moe"] == pytest.approx(4000 / 4800)
    top = s["top_kernels"][0]
    assert top == {"name": "fused_moe_kernel", "category": "moe", "ms_per_step": 2.0, "calls_per_step": 1.0}


def test_trace_files_plain_and_gzipped(tmp_path, capsys):
    doc = _trace([{"ph": "X", "cat": "Kernel", "name": "_fwd_kernel", "dur": 1500.0}])
    plain, packed = tmp_path / "t.json", tmp_path / "t.json.gz"
    plain.write_text(json.dumps(doc))
    packed.write_bytes(gzip.compress(json.dumps(doc).encode()))
    assert load_trace(plain) == load_trace(packed) == doc
    assert main(["--trace", str(packed), "--steps", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ms_per_step"] == {"dense_attention": pytest.approx(0.5)}


def test_cli_needs_a_source():
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
