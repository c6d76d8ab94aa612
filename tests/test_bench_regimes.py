"""benchmarks/selections.py (coherent vs random selections) and bench_regimes.py --smoke (results file shape).

No timings are asserted: the smoke run only has to produce the results file with every summary key of
issue #13, the matrix's points with their parts, and selection statistics that tell the regimes apart.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import selections as sel  # noqa: E402


def bench_constant(name):
    """A literal module constant of bench_regimes.py (importing the script would set TRITON_INTERPRET here)."""
    tree = ast.parse((ROOT / "benchmarks" / "bench_regimes.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise KeyError(name)


# issue #13's summary keys (``issues show 13``, "Targets")
ISSUE_KEYS = [
    "prefill_layer_rank8_128k_speedup_vs_upstream",
    "prefill_layer_rank8_512k_speedup_vs_upstream",
    "main_prefill_rank8_128k_tflops",
    "indexer_fraction_of_matmul",
    "decode_step_512k_b8_fraction_of_floor",
    "decode_step_512k_b8_fp8_index_speedup",
    "prefill_layer_rank8_128k_fp8_index_speedup_vs_upstream",
    "prefill_layer_rank8_512k_fp8_index_speedup_vs_upstream",
    "workspace_gib_per_16k_chunk",
    "plan_included",
]
CFG = dict(block_size=128, topk=16, init_blocks=0, local_blocks=1)


def _select(gen, ctx, rows=256, heads=2, seed=0):
    q, k = gen(ctx, ctx - rows, rows, heads, 128, seed=seed)
    assert q.shape == (rows, heads, 128) and k.shape == (ctx, 128)
    return sel.reference_topk(q, k, ctx - rows, **CFG)


@pytest.mark.parametrize("ctx", [32768, 131072])
def test_smooth_selections_are_coherent_random_are_not(ctx):
    smooth = [sel.selection_stats(_select(sel.smooth_index_qk, ctx, seed=s)) for s in range(2)]
    rand = sel.selection_stats(_select(sel.random_index_qk, ctx))
    j_smooth = sum(s["neighbour_jaccard"] for s in smooth) / len(smooth)
    # real dumps: 0.87-0.94; the generator is calibrated to ~0.9 (sampling noise on 256 rows x 2 heads)
    assert 0.78 <= j_smooth <= 0.97, smooth
    assert rand["neighbour_jaccard"] < 0.2, rand
    for s in smooth:
        assert s["selected_per_row"] == 16
        assert s["union_per_tile_64"] < 48  # a handful of blocks beyond one row's 16
    n_blocks = ctx // 128
    assert rand["union_per_tile_64"] > min(0.6 * n_blocks, 400), rand


def test_generators_are_deterministic_and_shaped():
    a = sel.smooth_index_qk(4096, 1024, 64, 3, 32, seed=5)
    b = sel.smooth_index_qk(4096, 1024, 64, 3, 32, seed=5)
    c = sel.smooth_index_qk(4096, 1024, 64, 3, 32, seed=6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (64, 3, 32) and a[1].shape == (4096, 32)
    # the queries at positions 1024.. are the same process as a generator started earlier
    d = sel.smooth_index_qk(4096, 1024, 64, 3, 32, seed=5, dtype=torch.float16)
    assert d[0].dtype == torch.float16


def test_reference_topk_forces_local_and_respects_causality():
    q, k = sel.random_index_qk(1000, 0, 1000, 1, 16, seed=1)
    idx = sel.reference_topk(q, k, 0, block_size=16, topk=4, init_blocks=1, local_blocks=1)
    pos = torch.arange(1000)
    own = pos // 16
    valid = idx[0] >= 0
    assert (idx[0][valid].view(-1) >= 0).all()
    assert ((idx[0] <= own[:, None]) | ~valid).all()  # no future block
    assert (idx[0] == own[:, None]).any(-1).all()  # local block forced
    assert (idx[0, 16:] == 0).any(-1).all()  # init block forced
    assert (valid.sum(-1) == torch.clamp(own + 1, max=4)).all()
    rows = idx[0][valid.all(-1)]
    assert (rows[:, 1:] > rows[:, :-1]).all()  # ascending, distinct


def test_stats_on_hand_built_selections():
    idx = torch.tensor([[[0, 1, 2, 3], [0, 1, 2, 4], [5, 6, -1, -1], [5, 6, -1, -1]]], dtype=torch.int32)
    # pairs: {0,1,2,3}/{0,1,2,4} = 3/5; {0,1,2,4}/{5,6} = 0; {5,6}/{5,6} = 1
    assert sel.neighbour_jaccard(idx) == pytest.approx((0.6 + 0 + 1) / 3)
    assert sel.tile_union(idx, 2) == pytest.approx((5 + 2) / 2)
    assert sel.tile_union(idx, 4) == pytest.approx(7)
    assert sel.tile_union(idx, 8) is None
    st = sel.selection_stats(idx, tile_rows=(2,))
    assert st["selected_per_row"] == pytest.approx(3.0)


@pytest.mark.slow
def test_smoke_run_writes_every_summary_key(tmp_path):
    """The whole script on tiny shapes (CPU: TRITON_INTERPRET=1, upstream SGLang's kernels included)."""
    pytest.importorskip("triton")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_regimes.py"), "--smoke", "--out-dir", str(tmp_path),
           "--layouts", "8/1/1", "--chunks", "16k", "--tiers", "128k,512k", "--selections", "realistic,random",
           "--decode-tiers", "512k", "--batches", "8", "--budget-s", "1500", "--name", "regimes-smoke"]
    env = dict(os.environ)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1700)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = list(tmp_path.glob("kernels-*-regimes-smoke.json"))  # --name picks the file's suffix
    assert len(files) == 1, list(tmp_path.iterdir())

    def no_nan(x):
        raise AssertionError(f"non-strict JSON constant {x}")

    res = json.loads(files[0].read_text(), parse_constant=no_nan)
    for key in ("card", "date", "command", "versions", "points", "summary", "targets", "references", "config"):
        assert key in res, key
    assert "bench_regimes.py" in res["command"] and res["smoke"] is True
    assert res["versions"]["torch"] and res["versions"]["triton"]
    summary = res["summary"]
    for key in ISSUE_KEYS:
        assert key in summary, key
        assert key in res["targets"], key
    assert summary["plan_included"] is True
    # the fp8 index path is measured beside bf16 in the same run (CPU: one interpreted call each)
    assert summary["decode_step_512k_b8_fp8_index_speedup"] > 0
    assert "fp8-index step" in res["targets"]["decode_step_512k_b8_fp8_index_speedup"]["why"]
    for tier in ("128k", "512k"):
        assert 0.5 <= summary[f"fp8_topk_blocks_in_common_rank8_{tier}_realistic"] <= 1.0
        assert summary[f"fp8_indexer_speedup_vs_bf16_rank8_{tier}"] > 0
    cpu = not torch.cuda.is_available()
    upstream = res["upstream"].get("error") is None
    for key in ("prefill_layer_rank8_128k_speedup_vs_upstream", "prefill_layer_rank8_512k_speedup_vs_upstream",
                "prefill_layer_rank8_128k_fp8_index_speedup_vs_upstream",
                "prefill_layer_rank8_512k_fp8_index_speedup_vs_upstream"):
        assert (summary[key] is not None) == upstream, key
    for key in ("main_prefill_rank8_128k_tflops", "indexer_fraction_of_matmul",
                "decode_step_512k_b8_fraction_of_floor", "workspace_gib_per_16k_chunk"):
        assert summary[key] is not None and summary[key] > 0, key
    # union-tile kernel variants (prefetch 0/1/2, 64/128 MMA rows, 4/8 warps) against block-major
    variants = [v[0] for v in bench_constant("UNION_VARIANTS")]
    assert len(variants) == 6
    assert summary["indexer_topk_upkeep_share_rank8_128k"] < 1.0
    assert summary["indexer_pool_only_share_rank8_128k"] > 0
    assert summary["indexer_pool_only_fraction_of_matmul_rank8_128k"] > 0
    for tier in ("128k", "512k"):
        assert summary[f"indexer_sweep_best_rank8_{tier}"] is not None
        assert summary[f"indexer_sweep_best_speedup_vs_tuned_rank8_{tier}"] > 0
        assert summary[f"indexer_sweep_best_fraction_of_matmul_rank8_{tier}"] > 0
    assert summary["union_tile_best_speedup_vs_block_major_rank8_128k_realistic"] > 0
    assert summary["union_tile_best_kernel_speedup_vs_block_major_kernel_rank8_128k_realistic"] > 0
    assert summary["union_tile_best_variant_rank8_128k_realistic"] in variants
    assert set(summary["union_tile_variants_ms_rank8_128k_realistic"]) == {"block_major", *variants}

    prefill = [p for p in res["points"] if p["kind"] == "prefill"]
    decode = [p for p in res["points"] if p["kind"] == "decode"]
    assert len(prefill) == 4 and len(decode) == 1, [p.get("point") for p in res["points"]]
    assert [p["point"][1:] for p in prefill[:2]] == [["8/1/1", "16k", "128k", "realistic"],
                                                     ["8/1/1", "16k", "512k", "realistic"]]  # summary first
    for p in prefill:
        assert "error" not in p and "skipped" not in p, p
        assert p["heads"] == {"q": 8, "kv": 1, "index": 1}
        assert p["prefix"] == p["context"] - p["chunk"] > 0
        assert p["ours_out_finite"] and p["method"] == "block_major"
        for part in ("layer", "indexer", "main", "plan", "reverse_map", "main_kernel", "combine",
                     "reverse_map_counting", "main_counting", "reverse_map_sort", "main_sort"):
            assert p[f"ours_{part}_ms"] > 0, part
        assert p["counting_map_output_identical"] is True  # the counting-sort map: same layer output
        # split-K indexer beside the unsplit one (1 index head): same selection, both timed
        assert p["indexer_split_k"] >= 2 and p["indexer_split_matches_unsplit"] is True
        assert p["indexer_split_ms"] > 0 and p["indexer_unsplit_ms"] > 0 and p["indexer_split_speedup"] > 0
        # the same indexer with a top-2 list: what the top-k upkeep costs
        assert p["indexer_small_topk"] == 2 and p["indexer_small_topk_ms"] > 0
        assert p["indexer_topk_upkeep_share"] < 1.0
        # ... and with no list at all (pool only), and each config of the sweep forced, same selection
        assert p["indexer_pool_only_ms"] > 0 and p["indexer_pool_only_share"] > 0
        smoke_cfgs = bench_constant("INDEXER_SWEEP_SMOKE")
        split_cfgs = bench_constant("INDEXER_SWEEP_SPLIT_SMOKE")  # the same forced, with split-K (S >= 2)
        names = {f"{bm}/{nw}/{ns}/{mr or '-'}" for bm, nw, ns, mr in smoke_cfgs}
        split_names = {n for n in p["indexer_config_sweep"] if "/S" in n}
        pipe_cfgs = bench_constant("INDEXER_SWEEP_PIPELINE_SMOKE")  # the same forced, with pipeline_dots
        pipe_names = {f"{bm}/{nw}/{ns}/{mr or '-'}/P" for bm, nw, ns, mr in pipe_cfgs}
        assert set(p["indexer_config_sweep"]) == names | split_names | pipe_names
        assert {n.rsplit("/S", 1)[0] for n in split_names} == {f"{bm}/{nw}/{ns}/{mr or '-'}"
                                                               for bm, nw, ns, mr in split_cfgs}
        assert all(int(n.rsplit("/S", 1)[1]) >= 2 for n in split_names)
        for name, row in p["indexer_config_sweep"].items():
            assert row.get("same_selection") is True and row["ms"] > 0, (name, row)
        assert p["indexer_sweep_best"] in p["indexer_config_sweep"] and p["indexer_sweep_best_ms"] > 0
        # fp8 index path beside bf16: timed, and its selection compared with bf16's
        for part in ("fp8_indexer", "fp8_layer", "fp8_index_k_store"):
            assert p[f"ours_{part}_ms"] > 0, part
        assert 0.0 < p["fp8_topk_blocks_in_common"] <= 1.0 and 0.0 <= p["fp8_topk_rows_identical_frac"] <= 1.0
        assert p["fp8_out_max_abs_diff"] is not None and p["fp8_out_max_abs_diff"] >= 0
        if upstream:
            assert p["fp8_layer_speedup_vs_upstream"] > 0
        if upstream:
            for part in ("layer", "indexer", "main"):
                assert p[f"upstream_{part}_ms"] > 0, part
            assert p["max_abs_diff_vs_upstream"] < 0.05  # same layer output as upstream (fp16)
            assert p["topk_rows_differing_frac"] < 0.05
        assert [v["name"] for v in p["union_variants"]] == variants
        for v in p["union_variants"]:
            assert "error" not in v and v["out_finite"], v
            assert v["map_kernel_ms"] > 0 and v["kernel_ms"] > 0 and v["speedup_vs_block_major"] > 0, v
            assert v["max_abs_diff_vs_block_major"] < 0.05, v  # the same layer output (fp16)
        assert p["union_best_variant"] in variants and p["block_major_map_main_combine_ms"] > 0
        st = p["selection_stats"]
        assert st["selected_per_row"] > 1 and st["union_per_tile_64"] >= st["selected_per_row"]
    by = {(p["tier"], p["selection"]): p for p in prefill}
    assert by[("128k", "realistic")]["selection_stats"]["neighbour_jaccard"] > \
        by[("128k", "random")]["selection_stats"]["neighbour_jaccard"]
    d = decode[0]
    assert d["batch"] == 8 and d["tier"] == "512k" and d["bytes_per_step"] > 0
    assert d["ours_eager_us"] > 0 and (d["ours_graph_us"] is None) == cpu
    assert d["ours_fp8_eager_us"] > 0 and (d["ours_fp8_graph_us"] is None) == cpu
    assert d["fp8_step_speedup_eager"] > 0 and 0.0 < d["fp8_topk_blocks_in_common"] <= 1.0
    assert d["bytes_per_step_fp8_index"] < d["bytes_per_step"]
    if upstream:
        assert d["max_abs_diff_vs_upstream"] < 0.05
    assert res["references"]["copy"]["gbps"] > 0 and res["references"]["matmul"]["square"]["tflops"] > 0
    for rec in res["targets"].values():
        assert set(rec) >= {"target", "value", "met"}


def test_gpu_call_has_a_regimes_mode():
    text = (ROOT / "benchmarks" / "gpu_call.sh").read_text()
    assert "\nregimes)" in text and "benchmarks/bench_regimes.py" in text
    assert text.index("test_fa3_pruned.py") < text.index("\nregimes)")  # the FA3 check still runs first


def test_tuned_config_is_read_after_a_call_of_its_own_key():
    """Triton's Autotuner.best_config is the last call's config, whatever its key: the benchmark reads it
    right after a call of the key it reports (it once named the split-K run's config as the unsplit one's)."""
    pytest.importorskip("triton")
    code = (
        "import types, bench_regimes as b\n"
        "fake = types.SimpleNamespace(best_config='split')\n"
        "b.indexer_prefill_module._indexer_prefill_tuned = fake\n"
        "got = b.tuned_config(lambda: setattr(fake, 'best_config', 'unsplit'))\n"
        "assert got == 'unsplit', got\n"
        "fake.best_config = None\n"
        "assert b.tuned_config(lambda: None) is None\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "benchmarks", capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'benchmarks'}"})
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_smoke_short_extend_point_reports_the_split(tmp_path):
    """`--chunks 2k --tiers 64k`: a short extend over a long prefix (an agentic turn), where the split
    indexer (on by default) should pay most; its split count, split speedup and layer ratio reach the summary.
    With decode at B = 1 (c1 serving) and the decode indexer's two stages timed apart."""
    pytest.importorskip("triton")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_regimes.py"), "--smoke", "--out-dir", str(tmp_path),
           "--layouts", "8/1/1", "--chunks", "2k", "--tiers", "64k", "--selections", "realistic",
           "--decode-layouts", "8/1/1", "--decode-tiers", "512k", "--batches", "1", "--budget-s", "600",
           "--name", "short"]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(next(tmp_path.glob("kernels-*-short.json")).read_text())
    s = res["summary"]
    assert s["indexer_split_k_rank8_2k_over_64k"] >= 2 and s["indexer_split_speedup_rank8_2k_over_64k"] > 0
    point = next(p for p in res["points"] if p["kind"] == "prefill")
    assert (point["chunk_name"], point["tier"]) == ("2k", "64k") and point["indexer_split_matches_unsplit"]
    assert point["indexer_split_k_default"] >= 1 and "indexer_split_speedup_rank8_2k_no_prefix" in s
    # decode at one request (c1 serving), the indexer's stages timed apart (graph timings: GPU only)
    dec = next(p for p in res["points"] if p["kind"] == "decode")
    assert dec["batch"] == 1 and "ours_indexer_scores_graph_us" in dec and "ours_indexer_topk_graph_us" in dec
    assert "decode_512k_b1_indexer_topk_us" in s and s["decode_step_512k_b1_us"] == dec["ours_graph_us"]
    assert dec["topk_parts_same_selection"] and "decode_512k_b1_indexer_topk_single_us" in s
    if isinstance(res["upstream"], dict):  # SGLang's in-tree kernels ran beside ours
        assert s["prefill_layer_rank8_2k_over_64k_speedup_vs_upstream"] > 0
