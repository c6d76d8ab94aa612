"""The fp32 reference of ``e2e_correctness.py --fp32-reference`` (issue #14's accuracy comparison), on CPU.

``reference_fp32.score`` (chunked prefill through transformers' cache, teacher-forced) against one full
forward of the same tokens on the tiny checkpoint; the comparison and summary helpers on hand-made rows.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
from importable import has_module as _has  # noqa: E402

import torch  # noqa: E402

from benchmarks import e2e_correctness, reference_fp32  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    if not _has("transformers.models.minimax_m3_vl"):
        pytest.skip("transformers with minimax_m3_vl is not installed")
    from sglang_msa_tools import tiny_m3

    path = tmp_path_factory.mktemp("tiny-ref")
    tiny_m3.main([str(path), "--layers", "2"])
    return reference_fp32.load(str(path), "cpu")


def test_chunked_teacher_forced_score_equals_one_full_forward(tiny_model):
    g = torch.Generator().manual_seed(0)
    vocab = tiny_model.config.vocab_size
    # 21 key blocks of 128 against top-16: the indexer drops blocks, so the cache must carry its keys right
    prompt = torch.randint(16, vocab, (2600,), generator=g).tolist()
    cont = torch.randint(16, vocab, (9,), generator=g).tolist()
    got = reference_fp32.score(tiny_model, prompt, cont, chunk=384)
    with torch.no_grad():
        logits = tiny_model(torch.tensor([prompt + cont[:-1]])).logits[0].float()
    lsm = torch.log_softmax(logits[len(prompt) - 1:], -1)
    want = lsm.gather(1, torch.tensor(cont)[:, None])[:, 0]
    assert len(got["logprobs"]) == len(cont) == len(got["argmax"])
    assert torch.allclose(torch.tensor(got["logprobs"]), want, atol=1e-4), (got["logprobs"], want)
    assert got["argmax"] == lsm.argmax(-1).tolist()
    # a continuation of the reference's own picks is its greedy output
    greedy = reference_fp32.score(tiny_model, prompt, got["argmax"][:1], chunk=128)
    assert reference_fp32.compare_to_reference(greedy["logprobs"], got["argmax"][:1], greedy)["greedy_equals_reference"]


def test_score_edge_cases(tiny_model):
    assert reference_fp32.score(tiny_model, [20, 21], []) == {"logprobs": [], "argmax": []}
    with pytest.raises(ValueError, match="empty prompt"):
        reference_fp32.score(tiny_model, [], [5])


def test_compare_to_reference_and_summary():
    ref = {"logprobs": [-1.0, -2.0, -0.5], "argmax": [7, 8, 9]}
    same = reference_fp32.compare_to_reference([-1.1, -2.0, -0.3], [7, 8, 9], ref)
    assert same["mean_abs_dlogp"] == pytest.approx(0.1) and same["max_abs_dlogp"] == pytest.approx(0.2)
    assert same["greedy_equals_reference"] and same["first_step_off_reference"] is None
    off = reference_fp32.compare_to_reference([-1.0, -2.5, -0.5], [7, 3, 9], ref)
    assert not off["greedy_equals_reference"] and off["first_step_off_reference"] == 1
    rows = [{"tokens_a": [7, 8, 9], "tokens_b": [7, 3, 9], "fp32_a": same, "fp32_b": off},
            {"tokens_a": [1], "tokens_b": [1], "error": None,
             "fp32_a": reference_fp32.compare_to_reference([-0.4], [1], {"logprobs": [-1.0], "argmax": [1]}),
             "fp32_b": reference_fp32.compare_to_reference([-1.0], [1], {"logprobs": [-1.0], "argmax": [1]})}]
    s = e2e_correctness.reference_summary(rows, "mixed")
    # token-weighted: A (0.1 x 3 + 0.6 x 1) / 4, B (0.5 / 3 x 3 + 0) / 4
    assert s["mean_abs_dlogp_vs_fp32"]["A"] == pytest.approx(0.225)
    assert s["mean_abs_dlogp_vs_fp32"]["B"] == pytest.approx(0.125)
    assert s["logprob_gap_vs_fp32_ours_over_intree"] == pytest.approx(0.125 / 0.225)
    assert s["greedy_equals_fp32_fraction"] == {"A": 1.0, "B": 0.5}
    # a prompt the fp32 scoring did not reach by its deadline has no fp32_* entries and is not counted
    assert s["fp32_scored_prompts"] == 2
    assert e2e_correctness.reference_summary(rows + [{"tokens_a": [2], "tokens_b": [2]}], "mixed")[
        "fp32_scored_prompts"] == 2
    assert e2e_correctness.reference_summary(rows, "ours")["logprob_gap_vs_fp32_ours_over_intree"] is None
    # an empty continuation (nothing scored) before the others counts for nothing, and shifts nothing
    empty = reference_fp32.compare_to_reference([], [], {"logprobs": [], "argmax": []})
    s = e2e_correctness.reference_summary([{"tokens_a": [], "tokens_b": [], "fp32_a": empty, "fp32_b": empty}]
                                          + rows, "mixed")
    assert s["mean_abs_dlogp_vs_fp32"] == {"A": pytest.approx(0.225), "B": pytest.approx(0.125)}


def test_prompt_lengths_are_geometric_and_bounded():
    lens = e2e_correctness.prompt_lengths(64, 128, 65536)
    assert lens[0] == 128 and lens[-1] == 65536 and len(lens) == 64 and lens == sorted(set(lens))
    assert e2e_correctness.prompt_lengths(1, 128, 4096) == [4096]
    with pytest.raises(ValueError):
        e2e_correctness.prompt_lengths(4, 500, 100)


def test_paired_gap_counts_prompts_and_brackets_the_gap(tmp_path):
    """Which server is closer to fp32 per prompt, and a bootstrap interval that holds the gap."""
    def row(a, b, k=4):
        return {"tokens_a": [1] * k, "tokens_b": [1] * k,
                "fp32_a": {"mean_abs_dlogp": a, "max_abs_dlogp": a, "greedy_equals_reference": True},
                "fp32_b": {"mean_abs_dlogp": b, "max_abs_dlogp": b, "greedy_equals_reference": True}}
    rows = [row(0.01, 0.02), row(0.03, 0.02), row(0.02, 0.02), row(0.05, 0.01), row(0.02, 0.03)]
    s = e2e_correctness.reference_summary(rows, "mixed")
    assert s["prompts_ours_closer_to_fp32"] == 2 and s["prompts_intree_closer_to_fp32"] == 2
    lo, hi = s["logprob_gap_ci95"]
    assert lo <= s["logprob_gap_vs_fp32_ours_over_intree"] <= hi and lo < hi
    assert e2e_correctness.reference_summary(rows, "mixed")["logprob_gap_ci95"] == [lo, hi]  # seeded
    # B always exactly half of A: every resample has the same gap
    s = e2e_correctness.reference_summary([row(0.02, 0.01), row(0.04, 0.02), row(0.06, 0.03)], "mixed")
    assert s["logprob_gap_ci95"] == [pytest.approx(0.5), pytest.approx(0.5)]
    assert s["prompts_ours_closer_to_fp32"] == 3
    # --resummarize recomputes the summary of a written file in place, from its rows
    path = tmp_path / "e2e.json"
    path.write_text(json.dumps({"summary": {"card": "X", "prompts": 5}, "prompts": rows}))
    assert e2e_correctness.main(["--resummarize", str(path)]) == 0
    out = json.loads(path.read_text())
    assert out["summary"]["card"] == "X" and out["summary"]["prompts_ours_closer_to_fp32"] == 2
    assert out["resummarized"][0]["date"]


def test_reference_order_shortest_first_from_a_minimum_length():
    """The fp32 scoring takes the shortest prompts first; a later call can start where a deadline stopped."""
    scored = [({"name": n}, [0] * n, {}, {}) for n in (9000, 128, 65000, 20000)]
    assert [len(x[1]) for x in e2e_correctness.reference_order(scored)] == [128, 9000, 20000, 65000]
    assert [len(x[1]) for x in e2e_correctness.reference_order(scored, 20000)] == [20000, 65000]
    assert e2e_correctness.reference_order(scored, 70000) == []
