"""The msa feature matrix (``sglang_msa/backend/features.py``) against SGLang's real server-args
resolution.

Every case builds a real ``ServerArgs`` for a MiniMax-M3 config (``rank8`` preset, Hopper faked as in
``test_dense_backend.py``) in a fresh process with the plugin loaded by SGLang's ``load_plugins()``:

* each rejected feature with ``--attention-backend msa`` fails with ``MSAUnsupportedFeature`` (a
  ``ValueError``) whose message names the flag, the reason and what to do instead;
* the same flags without ``msa`` resolve exactly as in a process where the plugin is switched off
  (every resolved field, or the same SGLang error): we never touch other servers;
* supported features (page size 1/64/128, chunked prefill sizes, the overlap scheduler, TP) resolve;
* the real launcher (``python -m sglang.launch_server``) stops with the error before it starts any
  scheduler process or reads a weight.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.sglang
pytest.importorskip("sglang")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = r"""
import json, os, sys
from unittest import mock
models, cases = json.loads(sys.argv[1]), json.loads(sys.argv[2])
import sglang.srt.arg_groups.overrides as ov
import sglang.srt.server_args as sa
for mod in (ov, sa):
    for name, value in zip(("is_sm90_supported", "is_sm100_supported"), (True, False)):
        if hasattr(mod, name):
            mock.patch.object(mod, name, lambda *a, v=value, **k: v).start()
mock.patch.object(sa, "is_hopper_with_cuda_12_3", lambda: True).start()
from sglang.srt.plugins import load_plugins
load_plugins()
out = {}
for name, case in cases.items():
    for var in ("SGLANG_MSA_MODELS", "SGLANG_MSA_FP8_INDEX"):
        os.environ.pop(var, None)
    os.environ.update(case.get("env", {}))
    try:
        s = sa.ServerArgs(model_path=models[case.get("model", "rank8")], load_format="dummy", device="cuda",
                          random_seed=0, **case["args"])
        out[name] = {"fields": {k: v for k, v in vars(s).items()
                                if isinstance(v, (str, int, float, bool, type(None)))}}
    except Exception as exc:
        out[name] = {"error": type(exc).__name__, "message": str(exc),
                     "is_value_error": isinstance(exc, ValueError)}
print("PROBE " + json.dumps(out))
"""

MSA = {"attention_backend": "msa"}

# name -> (extra server args, flag the message must name, feature row)
REJECTED = {
    "dp_attention": ({"enable_dp_attention": True, "tp_size": 2, "dp_size": 2}, "--enable-dp-attention",
                     "DP attention"),
    "dp_lm_head": ({"enable_dp_lm_head": True}, "--enable-dp-lm-head", "DP attention"),
    "two_batch_overlap": ({"enable_two_batch_overlap": True}, "--enable-two-batch-overlap", "two-batch overlap"),
    "tbo_with_dp": ({"enable_two_batch_overlap": True, "enable_dp_attention": True, "tp_size": 2, "dp_size": 2},
                    "--enable-dp-attention", "DP attention"),
    "single_batch_overlap": ({"enable_single_batch_overlap": True}, "--enable-single-batch-overlap",
                             "two-batch overlap"),
    "fp8_e4m3": ({"kv_cache_dtype": "fp8_e4m3"}, "--kv-cache-dtype", "fp8 KV cache"),
    "fp8_e5m2": ({"kv_cache_dtype": "fp8_e5m2"}, "--kv-cache-dtype", "fp8 KV cache"),
    "eplb": ({"enable_eplb": True, "tp_size": 2, "ep_size": 2}, "--enable-eplb", "EPLB / redundant experts"),
    "redundant_experts": ({"ep_num_redundant_experts": 2, "tp_size": 2, "ep_size": 2},
                          "--ep-num-redundant-experts", "EPLB / redundant experts"),
    "expert_recorder": ({"expert_distribution_recorder_mode": "stat"}, "--expert-distribution-recorder-mode",
                        "EPLB / redundant experts"),
    "eagle3": ({"speculative_algorithm": "EAGLE3", "speculative_draft_model_path": "@rank8",
                "speculative_num_steps": 3, "speculative_eagle_topk": 1, "speculative_num_draft_tokens": 4},
               "--speculative-algorithm", "speculative decoding"),
    "ngram": ({"speculative_algorithm": "NGRAM"}, "--speculative-algorithm", "speculative decoding"),
    "pipeline": ({"pp_size": 2}, "--pp-size", "pipeline parallelism"),
    "attn_cp": ({"attn_cp_size": 2, "tp_size": 2}, "--attn-cp-size", "context parallelism"),
    "dcp": ({"dcp_size": 2, "tp_size": 2}, "--dcp-size", "context parallelism"),
    "prefill_cp": ({"enable_prefill_cp": True, "attn_cp_size": 2, "tp_size": 2}, "--attn-cp-size",
                   "context parallelism"),
    "deepep": ({"moe_a2a_backend": "deepep", "tp_size": 2, "ep_size": 2}, "--moe-a2a-backend", "MoE all-to-all"),
}

# name -> (extra server args, flag the message must name); rejected only with SGLANG_MSA_FP8_INDEX=1
FP8_INDEX_REJECTED = {
    "hicache": ({"enable_hierarchical_cache": True}, "--enable-hierarchical-cache"),
    "pd_prefill": ({"disaggregation_mode": "prefill"}, "--disaggregation-mode"),
    "pd_decode": ({"disaggregation_mode": "decode"}, "--disaggregation-mode"),
}

SUPPORTED = {
    "page1": {"page_size": 1},
    "page64": {"page_size": 64},
    "page128": {"page_size": 128},
    "chunk_off": {"chunked_prefill_size": -1},
    "chunk1": {"chunked_prefill_size": 1},
    "chunk100_page64": {"chunked_prefill_size": 100, "page_size": 64},
    "chunk8192": {"chunked_prefill_size": 8192},
    "overlap_default": {},
    "overlap_off": {"disable_overlap_schedule": True},
    "tp2": {"tp_size": 2},
    "tp4": {"tp_size": 4},
    "tp8": {"tp_size": 8},
    "ep8": {"tp_size": 8, "ep_size": 8},
    "kv_bf16": {"kv_cache_dtype": "bf16"},
}


def _cases() -> dict:
    cases = {}
    for name, (args, _flag, _row) in REJECTED.items():
        cases[f"msa:{name}"] = {"args": {**MSA, **args}}
        cases[f"plain:{name}"] = {"args": dict(args)}
    for name, args in SUPPORTED.items():
        cases[f"msa:{name}"] = {"args": {**MSA, **args}}
        cases[f"plain:{name}"] = {"args": dict(args)}
    # SGLANG_MSA_MODELS=0: SGLang's in-tree class with the msa backend; the model rows do not apply.
    for name in ("pipeline", "redundant_experts", "fp8_e4m3", "dp_attention"):
        cases[f"msa_intree:{name}"] = {"args": {**MSA, **REJECTED[name][0]}, "env": {"SGLANG_MSA_MODELS": "0"}}
    # SGLANG_MSA_FP8_INDEX=1: features that copy index-K bytes are refused with msa only.
    fp8 = {"SGLANG_MSA_FP8_INDEX": "1"}
    for name, (args, _flag) in FP8_INDEX_REJECTED.items():
        cases[f"msa_fp8:{name}"] = {"args": {**MSA, **args}, "env": fp8}
        cases[f"plain_fp8:{name}"] = {"args": dict(args), "env": fp8}
        cases[f"msa:{name}"] = {"args": {**MSA, **args}}  # flag off: not this row's business
        cases[f"plain:{name}"] = {"args": dict(args)}
    cases["msa_fp8:default"] = {"args": dict(MSA), "env": fp8}
    cases["msa:index_value"] = {"args": dict(MSA), "model": "index_value"}
    cases["plain:index_value"] = {"args": {}, "model": "index_value"}
    cases["msa:vl_dp_attention"] = {"args": {**MSA, **REJECTED["dp_attention"][0]}, "model": "vl"}
    cases["msa:vl"] = {"args": dict(MSA), "model": "vl"}
    return cases


def _probe(models: dict, cases: dict, env: dict | None = None) -> dict:
    def resolve(v):
        return models[v[1:]] if isinstance(v, str) and v.startswith("@") else v

    cases = {n: {**c, "args": {k: resolve(v) for k, v in c["args"].items()}} for n, c in cases.items()}
    run_env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SGLANG_MSA_", "SGLANG_EXTERNAL_")) and k != "SGLANG_PLUGINS"}
    run_env["PYTHONPATH"] = REPO + os.pathsep + run_env.get("PYTHONPATH", "")
    run_env.update(env or {})
    r = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(models), json.dumps(cases)], env=run_env,
                       capture_output=True, text=True, timeout=600)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("PROBE ")]
    assert r.returncode == 0 and lines, r.stdout[-2000:] + r.stderr[-4000:]
    return json.loads(lines[-1][len("PROBE "):])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from sglang_msa_tools import tiny_m3

    root = tmp_path_factory.mktemp("features")
    paths = {"rank8": str(root / "rank8"), "index_value": str(root / "index_value"), "vl": str(root / "vl")}
    tiny_m3.write_checkpoint(paths["rank8"], "rank8")
    tiny_m3.write_checkpoint(paths["index_value"], "slice", layers=2, index_value=True)
    tiny_m3.write_checkpoint(paths["vl"], "rank8", vision=True)
    return paths


@pytest.fixture(scope="module")
def on(models):
    return _probe(models, _cases())


@pytest.fixture(scope="module")
def off(models, on):
    """The plain cases in a process where the plugin registers nothing: stock SGLang."""
    plain = {n: c for n, c in _cases().items() if n.startswith("plain:")}
    return _probe(models, plain, {"SGLANG_MSA_DISABLE": "1"})


# ----------------------------------------------------------------------------- rejected features


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected_feature_fails_at_server_args_with_the_flag_named(on, name):
    _args, flag, row = REJECTED[name]
    r = on[f"msa:{name}"]
    assert r.get("error") == "MSAUnsupportedFeature", r
    assert r["is_value_error"]
    msg = r["message"]
    assert flag in msg and f"[{row}]" in msg and "--attention-backend msa" in msg, msg
    assert "Instead:" in msg, msg
    if row == "speculative decoding":
        assert "SPECULATIVE.md" in msg  # where the multi-query verify design lives


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_same_flags_without_msa_resolve_as_stock_sglang(on, off, name):
    mine, stock = on[f"plain:{name}"], off[f"plain:{name}"]
    assert mine.get("error") != "MSAUnsupportedFeature"
    assert mine == stock


@pytest.mark.parametrize("name", sorted(FP8_INDEX_REJECTED))
def test_fp8_index_refuses_index_k_byte_copies(on, off, name):
    _args, flag = FP8_INDEX_REJECTED[name]
    r = on[f"msa_fp8:{name}"]
    assert r.get("error") == "MSAUnsupportedFeature", r
    msg = r["message"]
    assert flag in msg and "SGLANG_MSA_FP8_INDEX=1" in msg and "[fp8 index cache + index-K byte copies]" in msg, msg
    assert "unset SGLANG_MSA_FP8_INDEX" in msg, msg
    # The flag does nothing to servers without msa, and the row is silent when the flag is off.
    assert on[f"plain_fp8:{name}"] == off[f"plain:{name}"]
    assert "fp8 index" not in on[f"msa:{name}"].get("message", "")


def test_fp8_index_flag_alone_resolves_like_msa(on):
    mine, base = on["msa_fp8:default"]["fields"], on["msa:overlap_default"]["fields"]
    assert mine == base


def test_in_tree_model_class_lifts_only_the_model_rows(on):
    # SGLANG_MSA_MODELS=0: SGLang's class (with its own EPLB/PP support) serves; msa's backend limits stay.
    for name in ("pipeline", "redundant_experts"):
        assert on[f"msa_intree:{name}"].get("error") != "MSAUnsupportedFeature", on[f"msa_intree:{name}"]
    for name in ("fp8_e4m3", "dp_attention"):
        assert on[f"msa_intree:{name}"].get("error") == "MSAUnsupportedFeature"


def test_index_value_checkpoint_is_rejected_only_with_msa(on, off):
    r = on["msa:index_value"]
    assert r.get("error") == "MSAUnsupportedFeature" and "index value path" in r["message"], r
    assert on["plain:index_value"] == off["plain:index_value"]
    assert "fields" in on["plain:index_value"]


def test_vl_model_gets_the_same_checks(on):
    assert on["msa:vl_dp_attention"].get("error") == "MSAUnsupportedFeature"
    assert on["msa:vl"]["fields"]["attention_backend"] == "msa"


# ----------------------------------------------------------------------------- supported features


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_supported_feature_resolves_with_msa(on, off, name):
    r = on[f"msa:{name}"]
    assert "fields" in r, r
    fields = r["fields"]
    assert fields["attention_backend"] == "msa"
    for key, value in SUPPORTED[name].items():
        assert fields[key] == value, (key, fields[key])
    assert on[f"plain:{name}"] == off[f"plain:{name}"]


def test_msa_changes_only_the_backend_against_stock(on, off):
    """With a supported flag set, msa resolves like stock SGLang except the fields it owns."""
    for name in ("page64", "chunk1", "overlap_default", "tp4"):
        mine, stock = on[f"msa:{name}"]["fields"], off[f"plain:{name}"]["fields"]
        differ = {k for k in set(mine) | set(stock) if mine.get(k) != stock.get(k)}
        assert differ <= {"attention_backend"}, (name, {k: (mine.get(k), stock.get(k)) for k in differ})


def test_overlap_scheduler_stays_on_with_msa(on):
    assert on["msa:overlap_default"]["fields"]["disable_overlap_schedule"] is False


def test_default_page_size_with_msa_is_128(on):
    assert on["msa:overlap_default"]["fields"]["page_size"] == 128


# ----------------------------------------------------------------------------- the table itself


def test_table_covers_every_issue_feature_and_each_row_is_complete():
    from sglang_msa.backend.features import FEATURES, REJECTED as REJ, SUPPORTED as SUP

    names = {f.name for f in FEATURES}
    assert {"DP attention", "two-batch overlap", "overlap scheduler", "fp8 KV cache", "EPLB / redundant experts",
            "speculative decoding", "chunked prefill", "page size", "tensor parallelism"} <= names
    for f in FEATURES:
        assert f.status in (REJ, SUP) and f.reason and f.flags
        if f.status == REJ:
            assert f.check is not None and f.instead, f.name
    for name in ("overlap scheduler", "chunked prefill", "page size", "tensor parallelism"):
        assert next(f for f in FEATURES if f.name == name).status == SUP


def _hf(arch="MiniMaxM3SparseForCausalLM", kv=4, idx=4, quant=None):
    cfg = SimpleNamespace(
        architectures=[arch], num_key_value_heads=kv,
        sparse_attention_config={"sparse_attention_freq": [0, 1], "sparse_num_index_heads": idx,
                                 "sparse_index_dim": 128, "sparse_block_size": 128, "sparse_topk_blocks": 16,
                                 "sparse_disable_index_value": [0, 1]},
    )
    if quant is not None:
        cfg.quantization_config = quant
    return cfg


def _sa(**kw):
    base = {"attention_backend": "msa", "tp_size": 1, "kv_cache_dtype": "auto", "speculative_algorithm": None}
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("quant", [
    {"quant_method": "modelopt", "kv_cache_quant_algo": "FP8"},
    {"quant_method": "modelopt", "quantization": {"kv_cache_quant_algo": "FP8"}},
])
def test_auto_kv_dtype_with_an_fp8_kv_checkpoint_is_rejected(quant):
    from sglang_msa.backend.features import MSAUnsupportedFeature, check_server_args

    with pytest.raises(MSAUnsupportedFeature, match="kv_cache_quant_algo=FP8"):
        check_server_args(_sa(), _hf(quant=quant))
    check_server_args(_sa(kv_cache_dtype="bf16"), _hf(quant=quant))  # the way out the message names
    check_server_args(_sa(), _hf(quant={"quant_method": "fp8"}))  # fp8 weights, bf16 KV: fine


@pytest.mark.parametrize("kv, idx, tp, ok", [
    (4, 4, 1, True), (4, 4, 2, True), (4, 4, 8, True), (1, 1, 8, True),
    (2, 4, 1, False),  # 4 index heads for 2 KV heads on one rank
    (4, 1, 2, False),  # 1 index head (replicated) for 2 KV heads per rank
])
def test_index_heads_must_pair_with_kv_heads_per_rank(kv, idx, tp, ok):
    from sglang_msa.backend.features import MSAUnsupportedFeature, check_server_args

    if ok:
        check_server_args(_sa(tp_size=tp), _hf(kv=kv, idx=idx))
    else:
        with pytest.raises(MSAUnsupportedFeature, match="index heads"):
            check_server_args(_sa(tp_size=tp), _hf(kv=kv, idx=idx))


def test_other_models_are_never_checked():
    from sglang_msa.backend.features import check_server_args

    llama = SimpleNamespace(architectures=["LlamaForCausalLM"])
    check_server_args(_sa(kv_cache_dtype="fp8_e4m3", enable_dp_attention=True, speculative_algorithm="EAGLE3"), llama)


def test_backend_init_is_a_second_line_of_defence():
    """The sparse backend runs the same checks on the final arguments (e.g. a server that only set
    ``--decode-attention-backend msa``), after its own dtype/speculative checks."""
    import inspect

    from sglang_msa.backend import sparse

    src = inspect.getsource(sparse.MSASparseAttnBackend.__init__)
    assert "check_server_args(server_args" in src


def test_matrix_markdown_lists_every_row():
    from sglang_msa.backend.features import FEATURES, matrix_markdown

    text = matrix_markdown()
    assert text.count("\n") == len(FEATURES) + 1
    assert all(line.count("|") == 5 for line in text.splitlines()), "a cell holds a '|'"
    for f in FEATURES:
        assert f"| {f.name} |" in text


def test_readme_matrix_is_the_generated_one():
    from pathlib import Path

    from sglang_msa.backend.features import matrix_markdown

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert matrix_markdown() in readme, "README's feature matrix is stale: paste features.matrix_markdown()"


# ----------------------------------------------------------------------------- the real launcher


def test_launcher_stops_with_the_error_before_starting_anything(models):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SGLANG_MSA_", "SGLANG_EXTERNAL_"))}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(
        [sys.executable, "-m", "sglang.launch_server", "--model-path", models["rank8"], "--device", "cuda",
         "--load-format", "dummy", "--attention-backend", "msa", "--kv-cache-dtype", "fp8_e4m3"],
        capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode != 0
    assert "MSAUnsupportedFeature" in r.stderr and "--kv-cache-dtype (fp8_e4m3)" in r.stderr, r.stderr[-3000:]
    # Raised from ServerArgs resolution (the model-override providers), before any scheduler process
    # or weight loading.
    for frame in ("prepare_server_args", "__post_init__", "collect_model_override_declarations", "on_server_args"):
        assert frame in r.stderr, (frame, r.stderr[-3000:])
    for later in ("Load weight", "scheduler", "Scheduler"):
        assert later not in r.stderr, later
