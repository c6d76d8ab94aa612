"""The tiny MiniMax-M3 checkpoint writer: configs, tokenizer, and loading in SGLang and transformers.

SGLang's in-tree models are built on the CPU in a subprocess (it needs a process group and global
server state): every parameter is poisoned with NaN, ``load_weights`` runs on the written
safetensors, and each parameter must then equal the checkpoint tensors it is fused from. The slice
preset is built on the meta device and compared by shape. That subprocess starts with the first test
and runs while the transformers tests run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

from sglang_msa_tools import tiny_m3  # noqa: E402
from sglang_msa_tools import tiny_m3_tokenizer as tok  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


from checkpoint_match import match_params, tensors_for  # noqa: E402
from importable import has_module as _has  # noqa: E402


HAS_SGLANG = _has("sglang.srt.models.minimax_m3")
HAS_TF_M3 = _has("transformers.models.minimax_m3_vl")
needs_sglang = pytest.mark.skipif(not HAS_SGLANG, reason="SGLang with MiniMax-M3 is not installed")
needs_tf_m3 = pytest.mark.skipif(not HAS_TF_M3, reason="this transformers has no minimax_m3_vl")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_m3")
    out = {
        "text": str(root / "text"),
        "vl": str(root / "vl"),
        "index_value": str(root / "index_value"),
        "slice": str(root / "slice"),
        "slice_vl": str(root / "slice_vl"),
        "rank8": str(root / "rank8"),
    }
    tiny_m3.write_checkpoint(out["text"], seed=7)
    tiny_m3.write_checkpoint(out["vl"], vision=True, seed=7)
    # Odd sizes and the indexer value path (SGLang only; transformers' indexer has no value path).
    tiny_m3.write_checkpoint(out["index_value"], layers=3, hidden=192, experts=5, heads=16, kv_heads=2,
                             index_value=True, seed=3)
    tiny_m3.main([out["slice"], "--preset", "slice"])
    tiny_m3.main([out["slice_vl"], "--preset", "slice", "--vision"])
    tiny_m3.main([out["rank8"], "--preset", "rank8", "--layers", "4"])
    return out


class _SglangCheck:
    """The SGLang load check running in a subprocess; ``result()`` waits for its JSON report."""

    def __init__(self, ckpts):
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("TRITON_INTERPRET", None)
        args = json.dumps({"load": [ckpts["text"], ckpts["vl"], ckpts["index_value"]],
                           "meta": [ckpts["slice"], ckpts["slice_vl"], ckpts["rank8"]]})
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        self._report = None

    def result(self) -> dict:
        if self._report is None:
            out, err = self.proc.communicate(timeout=300)
            lines = [line for line in out.splitlines() if line.startswith("REPORT ")]
            assert self.proc.returncode == 0 and lines, f"SGLang check failed:\n{out[-3000:]}\n{err[-6000:]}"
            self._report = json.loads(lines[-1][len("REPORT "):])
        return self._report


@pytest.fixture(scope="module")
def sglang_check(ckpts):
    if not HAS_SGLANG:
        pytest.skip("SGLang with MiniMax-M3 is not installed")
    check = _SglangCheck(ckpts)
    yield check
    if check.proc.poll() is None:
        check.proc.kill()
        check.proc.wait()


def _load_json(path):
    with open(path) as f:
        return json.load(f)


def _tree_hash(path: str) -> dict[str, str]:
    return {f: hashlib.sha256(open(os.path.join(path, f), "rb").read()).hexdigest() for f in sorted(os.listdir(path))}


# ----------------------------------------------------------------------------- writer / configs


@needs_sglang
def test_starts_sglang_check(sglang_check):
    # Listed first so the SGLang subprocess overlaps with the transformers tests below.
    assert sglang_check.proc.pid > 0


def test_files_and_size(ckpts):
    text = set(os.listdir(ckpts["text"]))
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= text
    assert os.path.getsize(os.path.join(ckpts["text"], "model.safetensors")) < 50e6
    vl = set(os.listdir(ckpts["vl"]))
    assert {"preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json",
            "chat_template.jinja"} <= vl
    assert os.path.getsize(os.path.join(ckpts["vl"], "model.safetensors")) < 50e6
    for name in ("slice", "slice_vl"):  # config-only by default
        assert not [f for f in os.listdir(ckpts[name]) if f.endswith(".safetensors")]


def test_text_config_fields(ckpts):
    cfg = _load_json(os.path.join(ckpts["text"], "config.json"))
    assert cfg["architectures"] == ["MiniMaxM3SparseForCausalLM"]
    sparse = cfg["sparse_attention_config"]
    assert set(sparse) == {"sparse_attention_freq", "sparse_num_index_heads", "sparse_index_dim",
                           "sparse_block_size", "sparse_topk_blocks", "sparse_init_block",
                           "sparse_local_block", "sparse_score_type", "sparse_disable_index_value"}
    assert sparse["sparse_attention_freq"] == cfg["moe_layer_freq"] == [0, 1, 1, 1]
    assert sparse["sparse_disable_index_value"] == [0, 1, 1, 1]
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (64, 4, 128)
    assert cfg["rotary_dim"] == cfg["head_dim"] * cfg["partial_rotary_factor"] == 64
    assert cfg["shared_intermediate_size"] == cfg["intermediate_size"] * cfg["n_shared_experts"]
    assert (cfg["qk_norm_type"], cfg["use_gemma_norm"], cfg["hidden_act"]) == ("per_head", True, "swigluoai")
    gen = _load_json(os.path.join(ckpts["text"], "generation_config.json"))
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (cfg["bos_token_id"], cfg["eos_token_id"])

    odd = _load_json(os.path.join(ckpts["index_value"], "config.json"))
    assert odd["sparse_attention_config"]["sparse_disable_index_value"] == [0, 0, 0]
    assert (odd["num_hidden_layers"], odd["hidden_size"], odd["num_local_experts"]) == (3, 192, 5)


def test_slice_config_has_real_widths(ckpts):
    cfg = _load_json(os.path.join(ckpts["slice"], "config.json"))
    expect = {
        "hidden_size": 6144, "num_attention_heads": 64, "num_key_value_heads": 4, "head_dim": 128,
        "num_local_experts": 128, "num_experts_per_tok": 4, "n_shared_experts": 1,
        "intermediate_size": 3072, "shared_intermediate_size": 3072, "dense_intermediate_size": 12288,
        "vocab_size": 200064, "num_hidden_layers": 4, "moe_layer_freq": [0, 1, 1, 1],
        "rotary_dim": 64, "rope_theta": 5000000.0, "routed_scaling_factor": 2.0,
        "scoring_func": "sigmoid", "use_routing_bias": True, "bos_token_id": 200034, "eos_token_id": 200020,
    }
    assert {k: cfg[k] for k in expect} == expect
    vl = _load_json(os.path.join(ckpts["slice_vl"], "config.json"))
    assert (vl["image_token_index"], vl["video_token_index"]) == (200025, 200026)
    assert vl["text_config"]["hidden_size"] == vl["projector_hidden_size"] == 6144
    assert vl["vision_config"]["hidden_size"] == 1280
    # ~50 GB of bf16 weights, which is why slice is config-only unless forced.
    assert 45e9 < tiny_m3.checkpoint_bytes(cfg) < 55e9


def test_rank8_is_one_gpu_of_tp8(tmp_path):
    """What one of 8 GPUs computes in MiniMax-M3: 64/8 q heads, one (replicated) KV head, one of the 4
    index query heads (SGLang splits them over min(8, 4) ranks), 1/8 of every MLP; whole hidden/vocab."""
    cfg = tiny_m3.text_config("rank8")
    expect = {"hidden_size": 6144, "vocab_size": 200064, "head_dim": 128, "num_attention_heads": 8,
              "num_key_value_heads": 1, "num_local_experts": 128, "num_experts_per_tok": 4,
              "intermediate_size": 384, "shared_intermediate_size": 384, "dense_intermediate_size": 1536,
              "num_hidden_layers": 20}
    assert {k: cfg[k] for k in expect} == expect
    assert cfg["sparse_attention_config"]["sparse_num_index_heads"] == 1
    # The released model's first 3 of 60 layers are dense; the default depth keeps that fraction.
    assert cfg["moe_layer_freq"] == [0] + [1] * 19 == cfg["sparse_attention_config"]["sparse_attention_freq"]
    deep = tiny_m3.text_config("rank8", layers=60)
    assert deep["moe_layer_freq"][:4] == [0, 0, 0, 1] and sum(deep["moe_layer_freq"]) == 57
    assert tiny_m3.text_config("rank8", layers=4, dense_layers=2)["moe_layer_freq"] == [0, 0, 1, 1]
    assert tiny_m3.text_config("slice")["moe_layer_freq"] == [0, 1, 1, 1]  # other presets: one dense layer
    # Config-only by default (~40 GB of weights at 20 layers), like slice.
    tiny_m3.main([str(tmp_path / "r"), "--preset", "rank8"])
    assert not any(f.endswith(".safetensors") for f in os.listdir(tmp_path / "r"))
    assert 35e9 < tiny_m3.checkpoint_bytes(cfg) < 45e9
    with pytest.raises(SystemExit, match=r"rank8 weights.*--force"):
        tiny_m3.main([str(tmp_path / "w"), "--preset", "rank8", "--weights"])


def test_slice_weights_refuse_without_force(tmp_path):
    with pytest.raises(SystemExit, match=r"GB.*--force"):
        tiny_m3.main([str(tmp_path / "s"), "--preset", "slice", "--weights"])
    assert not (tmp_path / "s").exists()


def test_seeded_output_is_reproducible(ckpts, tmp_path):
    again = str(tmp_path / "again")
    tiny_m3.write_checkpoint(again, seed=7)
    assert _tree_hash(again) == _tree_hash(ckpts["text"])
    other = str(tmp_path / "other")
    tiny_m3.write_checkpoint(other, seed=8)
    assert _tree_hash(other)["model.safetensors"] != _tree_hash(again)["model.safetensors"]


def test_sharded_weights_match_single_file(ckpts, tmp_path):
    from safetensors.torch import load_file

    cfg = _load_json(os.path.join(ckpts["text"], "config.json"))
    files = tiny_m3.write_weights(str(tmp_path), cfg, seed=7, dtype="bfloat16", shard_bytes=9 << 20)
    assert len(files) >= 4
    index = _load_json(tmp_path / "model.safetensors.index.json")
    assert index["metadata"]["total_size"] == tiny_m3.checkpoint_bytes(cfg)
    single = load_file(os.path.join(ckpts["text"], "model.safetensors"))
    assert set(index["weight_map"]) == set(single)
    for fname in files:
        shard = load_file(tmp_path / fname)
        assert all(index["weight_map"][n] == fname and torch.equal(t, single[n]) for n, t in shard.items())


def test_weights_are_sane(ckpts):
    from safetensors.torch import load_file

    text = load_file(os.path.join(ckpts["text"], "model.safetensors"))
    vl = load_file(os.path.join(ckpts["vl"], "model.safetensors"))
    cfg = _load_json(os.path.join(ckpts["text"], "config.json"))
    assert list(text) and set(text) == set(tiny_m3.checkpoint_specs(cfg))
    for name, t in text.items():
        assert torch.isfinite(t.float()).all(), name
        assert t.dtype == (torch.float32 if name.endswith("e_score_correction_bias") else torch.bfloat16)
    w = text["model.layers.1.self_attn.q_proj.weight"].float()
    assert abs(w.std().item() - 0.02) < 2e-3 and abs(w.mean().item()) < 1e-3
    assert text["model.norm.weight"].float().abs().max() < 0.2  # gemma norms: x * (1 + w), w ~ 0
    # The VL language model is the text model made with the same seed.
    for name, t in text.items():
        assert torch.equal(vl["language_model." + name], t), name


def test_tokenizer_round_trip_and_chat_template(ckpts):
    from transformers import AutoTokenizer

    cfg = _load_json(os.path.join(ckpts["text"], "config.json"))
    tk = AutoTokenizer.from_pretrained(ckpts["text"])
    assert len(tk) == cfg["vocab_size"]
    assert (tk.bos_token_id, tk.eos_token_id, tk.pad_token_id) == (
        cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"])
    for text in ["Hello, world!", "  two  spaces\tand\ttabs\n", "caf\u00e9 \u6f22\u5b57 \U0001F600",
                 "def f(x):\n    return x * 2", "<mm:think>why</mm:think> ]<]image[>[ ok"]:
        ids = tk(text)["input_ids"]
        assert all(0 <= i < cfg["vocab_size"] for i in ids)
        assert tk.decode(ids) == text
    assert len(tk("the tests")["input_ids"]) < len("the tests")  # merges make multi-byte tokens
    for token in (tok.IMAGE, tok.VIDEO, tok.THINK_START, tok.NAMESPACE):
        assert tk(token)["input_ids"] == [tk.convert_tokens_to_ids(token)]

    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    prompt = tk.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert prompt == ("]~!b[]~b]system\nBe brief.[e~[\n]~b]user\nHi[e~[\n]~b]ai\nHello[e~[\n"
                      "]~b]user\nBye[e~[\n]~b]ai\n")
    ids = tk.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert ids[0] == cfg["bos_token_id"] and ids.count(cfg["eos_token_id"]) == 4
    think = tk.apply_chat_template(msgs[1:2], tokenize=False, add_generation_prompt=True, enable_thinking=True)
    assert think.endswith("]~b]ai\n<mm:think>\n")

    slice_tk = AutoTokenizer.from_pretrained(ckpts["slice_vl"])
    assert len(slice_tk) == 200064
    assert [slice_tk.convert_tokens_to_ids(t) for t in (tok.BOS, tok.EOS, tok.IMAGE, tok.VIDEO)] == [
        200034, 200020, 200025, 200026]
    assert slice_tk.decode(slice_tk("Hello, world!")["input_ids"]) == "Hello, world!"


# ----------------------------------------------------------------------------- transformers


def test_transformers_autoconfig(ckpts):
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(ckpts["text"])
    assert text.sparse_attention_config["sparse_num_index_heads"] == 4 and text.rotary_dim == 64
    if not HAS_TF_M3:
        pytest.skip("this transformers has no minimax_m3_vl")
    vl = AutoConfig.from_pretrained(ckpts["vl"])
    assert type(vl).__name__ == "MiniMaxM3VLConfig"
    t = vl.text_config
    assert t.layer_types == ["full_attention"] + ["minimax_m3_sparse"] * 3
    assert t.mlp_layer_types == ["dense"] + ["sparse"] * 3
    assert (t.index_n_heads, t.index_head_dim, t.index_topk_blocks) == (4, 128, 16)
    assert t.rope_parameters["partial_rotary_factor"] == 0.5
    assert (vl.image_token_id, vl.video_token_id) == (tok.SMALL_IDS[tok.IMAGE], tok.SMALL_IDS[tok.VIDEO])
    assert vl.vision_config.spatial_merge_size == 2


def _no_missing(info: dict) -> None:
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info


@needs_tf_m3
def test_transformers_text_and_vl_forward(ckpts):
    from safetensors.torch import load_file
    from transformers import AutoProcessor

    text_model, info = tiny_m3.load_transformers_model(ckpts["text"], output_loading_info=True)
    _no_missing(info)
    ck = load_file(os.path.join(ckpts["text"], "model.safetensors"))
    sd = text_model.state_dict()
    w13 = torch.cat([ck[f"model.layers.2.block_sparse_moe.experts.3.w{i}.weight"] for i in (1, 3)])
    assert torch.equal(sd["model.layers.2.mlp.experts.gate_up_proj"][3], w13.float())
    assert torch.equal(sd["model.layers.3.self_attn.indexer.q_proj.weight"],
                       ck["model.layers.3.self_attn.index_q_proj.weight"].float())

    ids = torch.tensor([[1, 17, 300, 301, 45, 900, 5, 2, 77]])
    with torch.no_grad():
        text_logits = text_model(ids).logits
    assert text_logits.shape == (1, 9, 1024) and torch.isfinite(text_logits).all()
    assert text_logits.std() > 0.05  # not collapsed

    vl_model, info = tiny_m3.load_transformers_model(ckpts["vl"], output_loading_info=True)
    _no_missing(info)
    with torch.no_grad():
        torch.testing.assert_close(vl_model(input_ids=ids).logits, text_logits)

    proc = AutoProcessor.from_pretrained(ckpts["vl"])
    assert (proc.image_processor.patch_size, proc.image_processor.merge_size) == (14, 2)
    assert proc.video_processor.temporal_patch_size == 2
    gen = torch.Generator().manual_seed(0)
    image = (torch.rand(3, 90, 130, generator=gen) * 255).to(torch.uint8)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    prompt = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    inputs = proc(text=[prompt], images=[image], return_tensors="pt")
    n_image = int(inputs["image_grid_thw"].prod() // 4)
    assert (inputs["input_ids"] == vl_model.config.image_token_id).sum() == n_image > 0
    with torch.no_grad():
        logits = vl_model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()


# ----------------------------------------------------------------------------- SGLang


@needs_sglang
def test_sglang_parses_configs(sglang_check):
    report = sglang_check.result()
    for name, info in report["configs"].items():
        assert info["is_minimax_sparse"], name
        assert info["dtype"] == "torch.bfloat16"
    text, vl = report["configs"]["text"], report["configs"]["vl"]
    assert (text["num_attention_heads"], text["head_dim"], text["kv_heads"]) == (64, 128, 4)
    assert not text["is_multimodal"] and vl["is_multimodal"]
    assert report["configs"]["slice"]["hidden_size"] == 6144


@needs_sglang
def test_sglang_loads_tokenizer_and_processor(sglang_check, ckpts):
    report = sglang_check.result()["tokenizers"]
    for name in ("text", "vl", "index_value"):
        cfg = _load_json(os.path.join(ckpts[name], "config.json"))
        text = cfg.get("text_config", cfg)
        assert report[name]["len"] == text["vocab_size"]
        assert (report[name]["bos"], report[name]["eos"]) == (text["bos_token_id"], text["eos_token_id"])
        assert report[name]["has_chat_template"]
    vl = _load_json(os.path.join(ckpts["vl"], "config.json"))
    assert report["vl"]["image_video"] == [vl["image_token_index"], vl["video_token_index"]]


@needs_sglang
@pytest.mark.parametrize("name", ["text", "vl", "index_value"])
def test_sglang_loads_every_weight(sglang_check, name):
    info = sglang_check.result()["load"][name]
    assert info["num_params"] > 20
    assert info["not_loaded"] == [] and info["missing"] == [], "parameters load_weights left untouched"
    assert info["mismatched"] == [], "parameters that differ from their checkpoint tensors"
    assert info["unused_checkpoint"] == [], "checkpoint tensors no parameter takes"
    assert info["warnings"] == []


@needs_sglang
@pytest.mark.parametrize("name", ["slice", "slice_vl", "rank8"])
def test_sglang_slice_shapes(sglang_check, name):
    info = sglang_check.result()["meta"][name]
    assert info["num_params"] > 20
    assert info["mismatched"] == [] and info["missing"] == [] and info["unused_checkpoint"] == []


# ----------------------------------------------------------------------------- SGLang subprocess

# SGLang parameters are fused or renamed checkpoint tensors. Each rule maps a parameter name (text
# names without the VL prefix) to the checkpoint names it is built from and how they combine.
_MOE = r"^(model\.layers\.\d+)\.mlp\."
_RULES = [
    (r"^(model\.layers\.\d+\.self_attn)\.qkv_proj\.weight$", "cat", [r"\1.q_proj.weight", r"\1.k_proj.weight",
                                                                       r"\1.v_proj.weight"]),
    (r"^(model\.layers\.\d+\.self_attn)\.index_qkv_proj\.weight$", "cat", [
        r"\1.index_q_proj.weight", r"\1.index_k_proj.weight", r"\1.index_v_proj.weight?"]),
    (_MOE + r"shared_experts\.gate_up_proj\.weight$", "cat", [
        r"\1.block_sparse_moe.shared_experts.gate_proj.weight", r"\1.block_sparse_moe.shared_experts.up_proj.weight"]),
    (_MOE + r"experts\.w13_weight$", "experts13", [r"\1.block_sparse_moe.experts"]),
    (_MOE + r"experts\.w2_weight$", "experts2", [r"\1.block_sparse_moe.experts"]),
    (_MOE + r"(gate\.weight|e_score_correction_bias|shared_experts\.down_proj\.weight)$", "same", [
        r"\1.block_sparse_moe.\2"]),
    (r"^(model\.layers\.\d+)\.mlp\.gate_up_proj\.weight$", "cat", [r"\1.mlp.gate_proj.weight",
                                                                    r"\1.mlp.up_proj.weight"]),
    (r"^(vision_tower\.vision_model\.encoder\.layers\.\d+)\.self_attn\.qkv_proj\.(weight|bias)$", "cat", [
        r"\1.self_attn.q_proj.\2", r"\1.self_attn.k_proj.\2", r"\1.self_attn.v_proj.\2"]),
    (r"^(vision_tower\.vision_model\.encoder\.layers\.\d+)\.self_attn\.proj\.(.*)$", "same", [
        r"\1.self_attn.out_proj.\2"]),
    (r"^(vision_tower\.vision_model\.encoder\.layers\.\d+)\.(fc[12]\..*)$", "same", [r"\1.mlp.\2"]),
    (r"^vision_tower\.((multi_modal_projector|patch_merge_mlp)\..*)$", "same", [r"\1"]),
    (r"^(.*)$", "same", [r"\1"]),
]
# Built by SGLang but never run in its forward (transformers has no such tensor either).
_UNUSED_PARAMS = re.compile(r"^vision_tower\.vision_model\.post_layernorm\.")


def _expected(param: str, ck: dict, vl: bool):
    """The tensor (or meta tensor) a SGLang parameter should hold, and the checkpoint names used."""
    is_text = param.startswith(("model.", "lm_head."))
    return tensors_for(param, ck, _RULES, prefix="language_model." if vl and is_text else "")


def _compare(model, ck: dict, vl: bool, values: bool) -> dict:
    params = dict(model.named_parameters())
    mismatched, used, missing = match_params(params, ck, lambda name, c: _expected(name, c, vl), values=values,
                                             skip=_UNUSED_PARAMS.match)
    return {"num_params": len(params), "mismatched": mismatched, "missing": missing,
            "unused_checkpoint": sorted(set(ck) - used)}


def _sglang_main(args: dict) -> None:
    import logging
    import socket
    import time

    t0 = time.time()

    from safetensors.torch import load_file

    from sglang.srt import runtime_context
    from sglang.srt.configs.model_config import ModelConfig, is_minimax_sparse
    from sglang.srt.distributed import parallel_state
    from sglang.srt.layers.dp_attention import initialize_dp_attention
    from sglang.srt.server_args import ServerArgs

    print(f"[{time.time() - t0:5.1f}s] imported", file=sys.stderr)
    first = args["load"][0]
    server_args = ServerArgs(model_path=first, device="cpu")
    runtime_context.publish(server_args, role="test")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    parallel_state.init_distributed_environment(backend="gloo", world_size=1, rank=0, local_rank=0,
                                                distributed_init_method=f"tcp://127.0.0.1:{port}")
    parallel_state.initialize_model_parallel(1, 1)
    initialize_dp_attention(server_args, ModelConfig(first))
    # SGLang's rotary embedding only has a kernel-free path on its CPU engine; use that path here.
    import sglang.srt.layers.rotary_embedding.base as rotary_base

    rotary_base._is_cpu = True
    # The two in-tree entry modules directly (the registry would import every model: seconds).
    from sglang.srt.models import minimax_m3, minimax_m3_vl

    entry = {cls.__name__: cls for cls in minimax_m3.EntryClass + minimax_m3_vl.EntryClass}

    warnings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING and "weight" in record.getMessage().lower():
                warnings.append(record.getMessage())

    logging.getLogger("sglang").addHandler(Collect())

    from sglang.srt.utils.hf_transformers_utils import get_processor, get_tokenizer

    report = {"configs": {}, "load": {}, "meta": {}, "tokenizers": {}}
    for path in args["load"] + args["meta"]:
        key = os.path.basename(path)
        mc = ModelConfig(path)
        hf = mc.hf_config
        report["configs"][key] = {
            "is_minimax_sparse": is_minimax_sparse(hf), "dtype": str(mc.dtype),
            "is_multimodal": mc.is_multimodal, "num_attention_heads": mc.num_attention_heads,
            "head_dim": mc.head_dim, "kv_heads": mc.get_total_num_kv_heads(),
            "hidden_size": mc.hidden_size,
        }
        cls = entry[hf.architectures[0]]
        vl = "text_config" in _load_json(os.path.join(path, "config.json"))
        if path in args["load"]:
            tk = get_tokenizer(path)
            report["tokenizers"][key] = {"len": len(tk), "eos": tk.eos_token_id, "bos": tk.bos_token_id,
                                         "has_chat_template": bool(tk.chat_template)}
            if vl:
                proc = get_processor(path)
                report["tokenizers"][key]["image_video"] = [proc.image_token_id, proc.video_token_id]
        if path in args["meta"]:
            with torch.device("meta"):
                model = cls(hf)
                specs = tiny_m3.checkpoint_specs(_load_json(os.path.join(path, "config.json")))
                ck = {n: torch.empty(shape) for n, (shape, _) in specs.items()}
            report["meta"][key] = _compare(model, ck, vl, values=False)
            continue
        model = cls(hf)
        for p in model.parameters():
            p.data.fill_(float("nan"))
        ck = load_file(os.path.join(path, "model.safetensors"))
        warnings.clear()
        model.load_weights(iter(ck.items()))
        info = _compare(model, ck, vl, values=True)
        info["not_loaded"] = [n for n, p in model.named_parameters()
                              if not _UNUSED_PARAMS.match(n) and torch.isnan(p.float()).any()]
        info["warnings"] = list(warnings)
        report["load"][key] = info
        print(f"[{time.time() - t0:5.1f}s] {key}: loaded", file=sys.stderr)
    print(f"[{time.time() - t0:5.1f}s] done", file=sys.stderr)
    print("REPORT " + json.dumps(report), flush=True)
    os._exit(0)  # skip the process-group and thread teardown (seconds)


if __name__ == "__main__":
    _sglang_main(json.loads(sys.argv[1]))
