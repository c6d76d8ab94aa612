"""Our MiniMax-M3 text model (``sglang_msa.models.minimax_m3``) on the CPU, against the checkpoint and
transformers' ``minimax_m3_vl`` reference.

SGLang needs a process group and global server state, so all SGLang work runs in one subprocess (this
file run as a script), which prints a JSON report; the tests below read it. It covers:

* which class SGLang resolves for ``MiniMaxM3SparseForCausalLM`` with and without ``SGLANG_MSA_MODELS``;
* ``load_weights``: every parameter NaN-poisoned, then equal to the checkpoint tensors it is fused
  from, every checkpoint tensor consumed (tiny checkpoint, and an odd-sized one with the index value
  path); the ``slice`` preset built on the meta device with the checkpoint's shapes;
* layer math vs transformers in fp32: router (top-k ids and weights), SwiGLU-OAI dense MLP, shared
  expert, whole MoE block, qk-norm + partial RoPE on q/k and on idx_q/idx_k;
* a whole forward over a ragged two-prompt batch with a dense causal attention stand-in for the
  backend, logits vs transformers (prompts are shorter than ``topk * block`` keys, where MSA keeps
  every block, so dense attention is the exact reference), and the backend call convention;
* tensor parallelism: 2 gloo ranks (separate processes) load their shards and reproduce the logits;
  rank 5 of TP=8 (KV and index heads replicated) is built under overridden parallel sizes and its
  shards are checked row by row.

What does not run on the CPU: SGLang's fused MoE kernel (the model falls back to
``routed_experts_torch``, checked here against transformers' experts), SGLang's CUDA norm/rope kernels
(their ``forward_native`` runs instead) and the attention backends themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from sglang_msa_tools import tiny_m3  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


from checkpoint_match import match_params, tensors_for  # noqa: E402
from importable import has_module as _has  # noqa: E402


pytestmark = [
    pytest.mark.sglang,
    pytest.mark.skipif(not _has("sglang.srt.models.minimax_m3"), reason="SGLang with MiniMax-M3 is not installed"),
    pytest.mark.skipif(not _has("transformers.models.minimax_m3_vl"), reason="transformers has no minimax_m3_vl"),
]

# fp32 on both sides; what differs is GEMM blocking (fused vs separate projections) and op order.
ATOL = {"router_weights": 1e-6, "router_logits": 1e-5, "mlp": 1e-5, "rope": 1e-5, "logits": 1e-4}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("m3_model")
    paths = {name: str(root / name) for name in ("text", "index_value", "slice")}
    tiny_m3.write_checkpoint(paths["text"], seed=7)
    # Odd sizes, 2 KV heads for 4 index heads, and the index value/output path.
    tiny_m3.write_checkpoint(paths["index_value"], layers=3, hidden=192, experts=5, heads=16, kv_heads=2,
                             index_value=True, seed=3)
    tiny_m3.write_checkpoint(paths["slice"], preset="slice")  # config only (meta build)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), json.dumps(paths)],
                          env=_subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, f"subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(lines[-1][len("REPORT "):])


def _subprocess_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SGLANG_MSA_", "SGLANG_PLUGINS")) and k != "SGLANG_EXTERNAL_MODEL_PACKAGE"}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TRITON_INTERPRET", None)
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tp_report(report, tmp_path_factory):
    """Tensor parallelism on the CPU: 2 gloo ranks, each loads its shards and runs the forward.

    Depends on ``report`` only so the two SGLang subprocess runs do not compete for the CPU."""
    path = str(tmp_path_factory.mktemp("m3_tp") / "text")
    tiny_m3.write_checkpoint(path, seed=7)
    world, port = 2, _free_port()
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__),
                               json.dumps({"text": path, "tp_rank": r, "tp_world": world, "port": port})],
                              env=_subprocess_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(world)]
    outs = [p.communicate(timeout=600) for p in procs]
    lines = [line for line in outs[0][0].splitlines() if line.startswith("REPORT ")]
    ok = all(p.returncode == 0 for p in procs) and lines
    assert ok, "\n".join(f"rank {r}: rc={p.returncode}\n{o[1][-4000:]}" for r, (p, o) in enumerate(zip(procs, outs)))
    return json.loads(lines[-1][len("REPORT "):])


# ----------------------------------------------------------------------------- tests


def test_sglang_resolves_our_class_only_when_opted_in(report):
    reg = report["registry"]
    assert reg["off_package"] is None and reg["off_class"] == "sglang.srt.models.minimax_m3", reg
    assert not reg["off_is_ours"]
    assert reg["on_package"] == "sglang_msa.models" and reg["on_is_ours"], reg
    # Unset: SGLang's class unless the server picked msa (opt-in), then ours.
    assert reg["default_package"] is None and not reg["default_is_ours"], reg
    assert reg["msa_package"] == "sglang_msa.models" and reg["msa_is_ours"], reg
    assert reg["msa_off_package"] is None and not reg["msa_off_is_ours"], reg


@pytest.mark.parametrize("name", ["text", "index_value"])
def test_load_weights_fills_every_parameter_from_the_checkpoint(report, name):
    info = report["load"][name]
    assert info["num_params"] > 20
    assert info["not_loaded"] == [], "parameters load_weights left NaN"
    assert info["missing"] == [], "parameters with no checkpoint source"
    assert info["mismatched"] == [], "parameters that differ from their checkpoint tensors"
    assert info["unused_checkpoint"] == [], "checkpoint tensors no parameter takes"
    assert info["returned_not_params"] == [] and info["params_not_returned"] == []
    assert info["gemma_weight_off"] == [], "GemmaRMSNorm's cached 1 + w not refreshed by the loader"
    assert info["warnings"] == []


def test_load_weights_skips_mtp_and_reports_unknown_tensors(report):
    info = report["load_extra"]
    assert info["mtp_loaded"] == []
    assert info["unknown_warned"]


def test_slice_preset_builds_on_meta_with_checkpoint_shapes(report):
    info = report["meta"]["slice"]
    assert info["num_params"] > 20
    assert info["mismatched"] == [] and info["missing"] == [] and info["unused_checkpoint"] == []
    assert info["experts_w13"] == [128, 6144, 6144] and info["qkv"] == [64 * 128 + 2 * 4 * 128, 6144]


def test_more_ranks_than_kv_heads_replicates_kv_and_index_heads(report):
    r = report["replicated_heads"]
    # TP=8 rank 5: 8 q heads, KV head 2 and index head 2 (each shared by ranks 4 and 5), index k whole.
    assert r["heads"] == [8, 1, 1, 2]
    assert r["qkv_ok"] and r["index_qkv_ok"] and r["o_proj_ok"], r
    assert r["nan_left"] == []


def test_router_matches_transformers(report):
    r = report["math"]["router"]
    assert r["ids_equal"], r
    assert r["weights_max_abs"] <= ATOL["router_weights"], r
    assert r["logits_max_abs"] <= ATOL["router_logits"], r
    assert r["weights_sum_to_one"]
    assert r["bias_changes_choice"] > 0, "routing bias never matters on these inputs: the test is blind to it"


def test_shared_expert_sum_in_the_down_projection(report):
    r = report["math"]["shared_sum"]
    assert r["plain_in_place"], r
    assert r["plain"] <= ATOL["mlp"] * max(1.0, r["ref_max"]), r
    assert r["fallback"] <= ATOL["mlp"] * max(1.0, r["ref_max"]), r


def test_shared_expert_fused_into_fused_moe_loads_and_sums_like_the_unfused_block(report):
    f = report["fused_shared"]
    assert f["unfused_reason_on_cpu"] == "needs CUDA"  # a server on CUDA fuses, like SGLang's own M3
    assert f["num_fused"] == 1 and not f["has_shared_mlp"] and f["experts"] == 8 + 1, f
    assert f["not_loaded"] == [] and f["warnings"] == [], f
    assert f["w13_is_shared_gate_up"] and f["w2_is_shared_down"], f
    assert f["routed_scaling_factor"] != 1.0, "a scale of 1 would hide where it is applied"
    assert f["out"]["max_abs"] <= ATOL["mlp"] * max(1.0, f["out"]["ref_max"]), f


@pytest.mark.parametrize("what", ["dense_mlp", "shared_expert", "moe_block"])
def test_mlps_match_transformers(report, what):
    m = report["math"][what]
    assert m["max_abs"] <= ATOL["mlp"] * max(1.0, m["ref_max"]), m
    assert m["clamped_fraction"] > 0.01, "inputs never reach the SwiGLU clamp"
    if what == "moe_block":  # the CPU stand-in for SGLang's fused MoE kernel, alone
        assert m["torch_experts_vs_tf_experts"] <= ATOL["mlp"] * max(1.0, m["ref_max"]), m


@pytest.mark.parametrize("what", ["q", "k", "v", "idx_q", "idx_k"])
def test_qk_norm_and_partial_rope_match_transformers(report, what):
    m = report["math"]["rope"][what]
    assert m["shape_ok"], m
    assert m["max_abs"] <= ATOL["rope"] * max(1.0, m["ref_max"]), m


@pytest.mark.parametrize("branch", ["main", "index"])
def test_fused_norm_rope_reference_matches_the_sglang_modules(report, branch):
    """On CUDA the layer replaces its norm + rotary modules by qk_norm_rope (tests/test_qk_norm_rope.py
    checks the kernel against this reference); here the reference, given the layer's own arguments,
    reproduces the modules' output."""
    m = report["math"]["fused_norm_rope_reference"][branch]
    assert m is not None, "the tiny M3 layer must take the fused path"
    assert m["gemma"] and m["none_match"], m
    assert m["max_abs"] <= ATOL["rope"], m


def test_rope_leaves_the_pass_through_half_alone(report):
    m = report["math"]["rope"]
    assert m["pass_through_is_norm_only"] and m["rotated_half_moves"]
    assert m["idx_v_is_none"]  # released M3: no index value path


@pytest.mark.parametrize("mode", ["decode_all_tokens", "extend_last_tokens"])
def test_full_forward_logits_match_transformers(report, mode):
    f = report["forward"][mode]
    assert f["shape_ok"], f
    assert f["max_abs"] <= ATOL["logits"] * max(1.0, f["ref_max"]), f
    assert f["argmax_equal"], f


def test_forward_calls_the_backend_with_the_sparse_convention(report):
    calls = report["forward"]["backend_calls"]
    # tiny preset: layer 0 dense, layers 1-3 MSA; 64 q heads, 4 KV heads, 4 index heads of 128.
    dense = [c for c in calls if not c["sparse"]]
    sparse = [c for c in calls if c["sparse"]]
    assert sorted({c["layer"] for c in dense}) == [0] and sorted({c["layer"] for c in sparse}) == [1, 2, 3]
    for c in sparse:
        assert c["q"] == [23, 64, 128] and c["k"] == [23, 4, 128] and c["v"] == [23, 4, 128]
        assert c["idx_q"] == [23, 4, 128] and c["idx_k"] == [23, 1, 128] and c["idx_v"] is None
        assert c["kwargs"] == ["idx_k", "idx_q", "idx_v"]
        assert c["packed"] == {"q": True, "k": True, "v": True, "idx_q": True, "idx_k": True}
    assert all(all(c["packed"].values()) for c in dense)


@pytest.mark.slow
def test_tensor_parallel_2_shards_heads_and_matches_transformers(tp_report):
    assert tp_report["not_loaded"] == []
    shapes = tp_report["shapes"]
    # 64 q / 4 KV / 4 index heads of 128 over 2 ranks: 32 / 2 / 2 per rank; index k replicated.
    assert shapes["model.layers.1.self_attn.qkv_proj.weight"] == [(32 + 2 * 2) * 128, 256]
    assert shapes["model.layers.1.self_attn.index_qkv_proj.weight"] == [(2 + 1) * 128, 256]
    assert shapes["model.layers.1.self_attn.o_proj.weight"] == [256, 32 * 128]
    assert shapes["model.layers.1.block_sparse_moe.experts.w13_weight"] == [8, 128, 256]
    f = tp_report["forward"]
    for c in f["backend_calls"]:
        assert c["k"][-2:] == [2, 128]
        if c["sparse"]:
            assert c["q"] == [23, 32, 128] and c["idx_q"] == [23, 2, 128] and c["idx_k"] == [23, 1, 128]
    for mode in ("decode_all_tokens", "extend_last_tokens"):
        assert f[mode]["max_abs"] <= ATOL["logits"] * max(1.0, f[mode]["ref_max"]), f[mode]
        assert f[mode]["argmax_equal"]


# ----------------------------------------------------------------------------- subprocess: setup


def _setup_sglang(path: str, rank: int = 0, world: int = 1, port: int | None = None) -> None:
    """A gloo TP process group and the server state SGLang's layers read, on the CPU."""
    from sglang.srt import runtime_context
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.distributed import parallel_state
    from sglang.srt.layers.dp_attention import initialize_dp_attention
    from sglang.srt.server_args import ServerArgs

    server_args = ServerArgs(model_path=path, device="cpu", tp_size=world)
    runtime_context.publish(server_args, role="test")
    if port is None:
        port = _free_port()
    if world > 1:  # CPU ranks talk over gloo only: keep SGLang from opening NCCL / custom all-reduce
        from sglang.srt.distributed.device_communicators import pynccl

        def no_nccl(*args, **kwargs):
            raise RuntimeError("no NCCL on the CPU")

        pynccl.NCCLLibrary = no_nccl
        parallel_state.set_custom_all_reduce(False)
    parallel_state.init_distributed_environment(backend="gloo", world_size=world, rank=rank, local_rank=rank,
                                                distributed_init_method=f"tcp://127.0.0.1:{port}")
    parallel_state.initialize_model_parallel(world, 1)
    initialize_dp_attention(server_args, ModelConfig(path))
    # SGLang's rotary embedding has a kernel-free path only on its CPU engine; take that path here.
    import sglang.srt.layers.rotary_embedding.base as rotary_base

    rotary_base._is_cpu = True


def _entry_classes(package: str) -> dict:
    """What SGLang's registry overlays for ``package``: each module's ``EntryClass`` by class name."""
    import importlib
    import pkgutil

    pkg = importlib.import_module(package)
    found = {}
    for info in pkgutil.iter_modules(pkg.__path__, package + "."):
        entry = getattr(importlib.import_module(info.name), "EntryClass", [])
        for cls in entry if isinstance(entry, list) else [entry]:
            found[cls.__name__] = cls
    return found


def _registry_states(arch: str, in_tree_cls, our_cls) -> dict:
    """The plugin's model switch, off / on / unset: which class ``arch`` resolves to. SGLang builds its
    registry from the in-tree models plus ``SGLANG_EXTERNAL_MODEL_PACKAGE`` (overriding same-named
    archs) when the registry module is first imported; that import pulls in every SGLang model
    (minutes here), so it is not imported: the check reads the variable the plugin sets and the
    package's entry classes, which is what the registry would read."""
    from sglang_msa import plugin

    assert "sglang.srt.models.registry" not in sys.modules
    from types import SimpleNamespace

    out = {}
    # default: plugin loaded, server without msa; msa: the launcher resolved --attention-backend msa.
    for state, value in (("off", "0"), ("on", "1"), ("default", None), ("msa", None), ("msa_off", "0")):
        os.environ.pop("SGLANG_EXTERNAL_MODEL_PACKAGE", None)
        if value is None:
            os.environ.pop(plugin.MODELS_ENV, None)
        else:
            os.environ[plugin.MODELS_ENV] = value
        plugin._registered = False
        plugin.register()
        if state.startswith("msa"):
            plugin.on_server_args(SimpleNamespace(attention_backend="msa", page_size=128), None)
        package = os.environ.get("SGLANG_EXTERNAL_MODEL_PACKAGE")
        resolved = (_entry_classes(package).get(arch) if package else None) or in_tree_cls
        out[f"{state}_package"] = package
        out[f"{state}_class"] = resolved.__module__
        out[f"{state}_is_ours"] = resolved is our_cls
    return out


def _registry_check() -> dict:
    from sglang.srt.models import minimax_m3 as in_tree

    from sglang_msa.models import minimax_m3 as ours

    return _registry_states("MiniMaxM3SparseForCausalLM", in_tree.MiniMaxM3SparseForCausalLM,
                            ours.MiniMaxM3SparseForCausalLM)


# ----------------------------------------------------------------------------- subprocess: weights

# Our parameter -> the checkpoint tensors it is fused from ("?" = only when present).
_RULES = [
    (r"^(.*)\.qkv_proj\.weight$", "cat", [r"\1.q_proj.weight", r"\1.k_proj.weight", r"\1.v_proj.weight"]),
    (r"^(.*)\.index_qkv_proj\.weight$", "cat",
     [r"\1.index_q_proj.weight", r"\1.index_k_proj.weight", r"\1.index_v_proj.weight?"]),
    (r"^(.*)\.gate_up_proj\.weight$", "cat", [r"\1.gate_proj.weight", r"\1.up_proj.weight"]),
    (r"^(.*)\.experts\.w13_weight$", "experts13", [r"\1.experts"]),
    (r"^(.*)\.experts\.w2_weight$", "experts2", [r"\1.experts"]),
    (r"^(.*)$", "same", [r"\1"]),
]


def _expected(param: str, ck: dict):
    return tensors_for(param, ck, _RULES)


def _compare(model, ck: dict, values: bool) -> dict:
    params = dict(model.named_parameters())
    mismatched, used, missing = match_params(params, ck, _expected, values=values)
    return {"num_params": len(params), "mismatched": mismatched, "missing": missing,
            "unused_checkpoint": sorted(set(ck) - used)}


def _load_check(cls, path: str):
    import logging

    from safetensors.torch import load_file
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.layers.layernorm import GemmaRMSNorm

    """Poisoned build + load + comparison; returns (report, model, checkpoint tensors)."""
    warnings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    handler = Collect()
    logging.getLogger("sglang_msa").addHandler(handler)
    model = cls(ModelConfig(path).hf_config)
    for p in model.parameters():
        p.data.fill_(float("nan"))
    ck = load_file(os.path.join(path, "model.safetensors"))
    returned = model.load_weights(iter(ck.items()))
    logging.getLogger("sglang_msa").removeHandler(handler)
    info = _compare(model, ck, values=True)
    names = {n for n, _ in model.named_parameters()}
    info["not_loaded"] = [n for n, p in model.named_parameters() if torch.isnan(p.float()).any()]
    info["returned_not_params"] = sorted(returned - names)
    info["params_not_returned"] = sorted(names - returned)
    info["gemma_weight_off"] = [n for n, m in model.named_modules() if isinstance(m, GemmaRMSNorm)
                                and not torch.equal(m.gemma_weight, m.weight.detach() + 1)]
    info["warnings"] = warnings
    return info, model, ck


def _load_extra_check(model, ck: dict) -> dict:
    """MTP tensors (by prefix and as extra decoder layers) are skipped; unknown names are warned about."""
    import logging

    warnings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())

    n = model.config.num_hidden_layers
    w = ck["model.layers.1.self_attn.q_norm.weight"]
    extra = [("model.mtp.layers.0.self_attn.q_norm.weight", w), (f"model.layers.{n}.self_attn.q_norm.weight", w),
             ("model.layers.1.self_attn.no_such_proj.weight", w)]
    handler = Collect()
    logging.getLogger("sglang_msa").addHandler(handler)
    returned = model.load_weights(iter(extra))
    logging.getLogger("sglang_msa").removeHandler(handler)
    return {"mtp_loaded": sorted(returned), "unknown_warned": any("no_such_proj" in m for m in warnings)}


def _meta_check(cls, path: str) -> dict:
    from sglang.srt.configs.model_config import ModelConfig

    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    with torch.device("meta"):
        model = cls(ModelConfig(path).hf_config)
        ck = {n: torch.empty(shape) for n, (shape, _) in tiny_m3.checkpoint_specs(cfg).items()}
    info = _compare(model, ck, values=False)
    params = dict(model.named_parameters())
    info["experts_w13"] = list(params["model.layers.1.block_sparse_moe.experts.w13_weight"].shape)
    info["qkv"] = list(params["model.layers.1.self_attn.qkv_proj.weight"].shape)
    return info


def _replicated_heads_check(path: str, ck: dict) -> dict:
    """Rank 5 of TP=8 (more ranks than the 4 KV / 4 index heads) without 8 processes: build one sparse
    attention block under overridden parallel sizes, load it, and check which rows it took."""
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.runtime_context import get_parallel

    from sglang_msa.models.m3_layers import M3Attention
    from sglang_msa.models.minimax_m3 import MiniMaxM3SparseForCausalLM

    tp, rank, d = 8, 5, 128
    with get_parallel().override(attn_tp_size=tp, attn_tp_rank=rank, tp_size=tp, tp_rank=rank):
        attn = M3Attention(ModelConfig(path).hf_config, layer_id=1)
        prefix = "model.layers.1.self_attn."
        params = {prefix + n: p for n, p in attn.named_parameters()}
        for p in params.values():
            p.data.fill_(float("nan"))
        for name, tensor in ck.items():
            if name.startswith(prefix):
                MiniMaxM3SparseForCausalLM._load_one(params, name, tensor)

    def rows(name, head, width=d):
        return ck[prefix + name + ".weight"][head * width:(head + 1) * width].float()

    q_heads = 64 // tp
    kv_head = rank // (tp // 4)  # 2 ranks share each KV head, and each index head
    want_qkv = torch.cat([rows("q_proj", rank, q_heads * d), rows("k_proj", kv_head), rows("v_proj", kv_head)])
    want_idx = torch.cat([rows("index_q_proj", kv_head), ck[prefix + "index_k_proj.weight"].float()])
    want_o = ck[prefix + "o_proj.weight"][:, rank * q_heads * d:(rank + 1) * q_heads * d].float()
    return {
        "heads": [attn.num_heads, attn.num_kv_heads, attn.num_idx_heads, attn.idx_replicas],
        "qkv_ok": bool(torch.equal(attn.qkv_proj.weight, want_qkv)),
        "index_qkv_ok": bool(torch.equal(attn.index_qkv_proj.weight, want_idx)),
        "o_proj_ok": bool(torch.equal(attn.o_proj.weight, want_o)),
        "nan_left": [n for n, p in params.items() if torch.isnan(p).any()],
    }


# ----------------------------------------------------------------------------- subprocess: math


def _diff(ours: torch.Tensor, ref: torch.Tensor) -> dict:
    ok = tuple(ours.shape) == tuple(ref.shape)
    return {"shape_ok": ok, "max_abs": float((ours - ref).abs().max()) if ok else float("inf"),
            "ref_max": float(ref.abs().max())}


def _math_check(model, tf_model) -> dict:
    from transformers.models.minimax_m3_vl.modeling_minimax_m3_vl import apply_rotary_pos_emb

    from sglang_msa.models.m3_layers import routed_experts_torch

    gen = torch.Generator().manual_seed(11)
    cfg = model.config
    hidden = cfg.hidden_size
    ours_moe = model.model.layers[2].block_sparse_moe
    tf_moe = tf_model.model.layers[2].mlp
    out: dict = {}

    # Router: sigmoid scores, top-k on score + bias, renormalised unbiased weights.
    x = torch.randn(257, hidden, generator=gen) * 0.5
    topk = ours_moe.route(x)
    tf_logits, tf_w, tf_ids = tf_moe.gate(x)
    ids, order = topk.topk_ids.long().sort(dim=-1)
    w = topk.topk_weights.gather(1, order)
    tf_ids_sorted, tf_order = tf_ids.sort(dim=-1)
    tf_w = tf_w.gather(1, tf_order)
    unbiased = torch.sigmoid(tf_logits.float()).topk(cfg.num_experts_per_tok, dim=-1).indices.sort(-1).values
    out["router"] = {
        "ids_equal": bool(torch.equal(ids, tf_ids_sorted)),
        "weights_max_abs": float((w - tf_w).abs().max()),
        "logits_max_abs": float((topk.router_logits - tf_logits).abs().max()),
        "weights_sum_to_one": bool(torch.allclose(w.sum(-1), torch.ones(len(w)), atol=1e-6)),
        "bias_changes_choice": int((unbiased != tf_ids_sorted).any(-1).sum()),
    }

    # SwiGLU-OAI MLPs; inputs large enough that gate/up reach the clamp at swiglu_limit.
    limit = cfg.swiglu_limit

    def clamped(mlp, xs):
        gate_up, _ = mlp.gate_up_proj(xs)
        return float((gate_up.abs() > limit).float().mean())

    x = torch.randn(37, hidden, generator=gen) * 40.0
    dense, tf_dense = model.model.layers[0].mlp, tf_model.model.layers[0].mlp
    out["dense_mlp"] = {**_diff(dense(x), tf_dense(x)), "clamped_fraction": clamped(dense, x)}
    out["shared_expert"] = {**_diff(ours_moe.shared_experts(x), tf_moe.shared_experts(x)),
                            "clamped_fraction": clamped(ours_moe.shared_experts, x)}
    # shared + beta * routed summed in the down projection (addmm_), and the fallback (here: a
    # non-contiguous accumulator) that runs down_proj and adds.
    sh = ours_moe.shared_experts
    acc = torch.randn(len(x), hidden, generator=gen) * 3.0
    want = sh(x) + 0.7 * acc
    strided = torch.empty(hidden, len(x)).t()
    strided.copy_(acc)
    plain_in = acc.clone()
    plain = sh.add_down_into(sh.hidden(x), plain_in, 0.7)
    out["shared_sum"] = {"plain": _diff(plain, want)["max_abs"], "plain_in_place": plain.data_ptr() == plain_in.data_ptr(),
                         "fallback": _diff(sh.add_down_into(sh.hidden(x), strided, 0.7), want)["max_abs"],
                         "ref_max": float(want.abs().max())}
    moe = _diff(ours_moe(x.clone()), tf_moe(x[None])[0])  # clone: FusedMoE overwrites its input
    top = ours_moe.route(x)
    w13 = ours_moe.experts.w13_weight
    moe["clamped_fraction"] = float((torch.einsum("th,eih->tei", x, w13).abs() > limit).float().mean())
    moe["torch_experts_vs_tf_experts"] = _diff(
        routed_experts_torch(x, w13, ours_moe.experts.w2_weight, top.topk_weights, top.topk_ids, ours_moe.act),
        tf_moe.experts(x, top.topk_ids.long(), top.topk_weights))["max_abs"]
    out["moe_block"] = moe

    # qk-norm + partial RoPE on q/k and idx_q/idx_k, at scattered positions up to the max.
    tokens = 11
    positions = torch.tensor([0, 1, 2, 7, 127, 128, 1000, 4097, 30000, 65000, 65535])
    x = torch.randn(tokens, hidden, generator=gen)
    attn, tf_attn = model.model.layers[2].self_attn, tf_model.model.layers[2].self_attn
    q, k, v = attn.project_qkv(positions, x)
    idx_q, idx_k, idx_v = attn.project_index(positions, x)
    hs = x[None]
    d = attn.head_dim
    cos, sin = tf_model.model.rotary_emb(hs, position_ids=positions[None])
    tq = tf_attn.q_norm(tf_attn.q_proj(hs).view(1, tokens, -1, d)).transpose(1, 2)
    tk = tf_attn.k_norm(tf_attn.k_proj(hs).view(1, tokens, -1, d)).transpose(1, 2)
    tq, tk = apply_rotary_pos_emb(tq, tk, cos, sin)
    tv = tf_attn.v_proj(hs)[0]
    ix = tf_attn.indexer
    di = ix.head_dim
    tiq = ix.q_norm(ix.q_proj(hs).view(1, tokens, -1, di)).transpose(1, 2)
    tik = ix.k_norm(ix.k_proj(hs).view(1, tokens, 1, di)).transpose(1, 2)
    tiq, tik = apply_rotary_pos_emb(tiq, tik, cos[..., :di], sin[..., :di])

    def heads(t):  # [1, H, T, D] -> [T, H*D]
        return t[0].transpose(0, 1).reshape(tokens, -1)

    rope = {"q": _diff(q, heads(tq)), "k": _diff(k, heads(tk)), "v": _diff(v, tv),
            "idx_q": _diff(idx_q, heads(tiq)), "idx_k": _diff(idx_k, heads(tik)), "idx_v_is_none": idx_v is None}
    # The channels past rotary_dim are the normed projection, untouched; the first ones move.
    rot = attn.rotary_dim
    normed = attn._norm_heads(attn.qkv_proj(x)[0][:, : attn.q_size], attn.q_norm, d).view(tokens, -1, d)
    qh = q.view(tokens, -1, d)
    rope["pass_through_is_norm_only"] = bool(torch.equal(qh[..., rot:], normed[..., rot:]))
    rope["rotated_half_moves"] = bool((qh[1:, :, :rot] - normed[1:, :, :rot]).abs().max() > 1e-3)
    out["rope"] = rope

    # The fused op's reference, called with the arguments the layer passes the kernel on CUDA, against
    # the separate SGLang norm and rotary modules (the path above, which transformers confirmed).
    from sglang_msa.kernels.qk_norm_rope import naive_qk_norm_rope

    fused = {}
    for branch, proj, outs in (("main", attn.qkv_proj, (q, k, v)), ("index", attn.index_qkv_proj,
                                                                     (idx_q, idx_k, idx_v))):
        args = attn.norm_rope_args(branch)
        if args is None:
            fused[branch] = None
            continue
        ref = naive_qk_norm_rope(proj(x)[0], positions=positions, **args)
        fused[branch] = {"gemma": args["gemma"], "max_abs": max(
            float((a - b).abs().max()) for a, b in zip(outs, ref) if a is not None),
            "none_match": [a is None for a in outs] == [b is None for b in ref]}
    out["fused_norm_rope_reference"] = fused
    return out


# ----------------------------------------------------------------------------- subprocess: forward


class _DenseCausalBackend:
    """Stands in for the attention backend: exact causal attention per sequence, GQA, fp32."""

    def __init__(self, cu_seqlens: list[int]):
        self.cu = cu_seqlens
        self.calls: list[dict] = []

    def forward(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        sparse = kwargs.get("idx_q") is not None
        self.calls.append({
            "layer": layer.layer_id, "sparse": sparse, "q": list(q.shape), "k": list(k.shape),
            "v": list(v.shape), "kwargs": sorted(kwargs),
            **{n: (None if kwargs.get(n) is None else list(kwargs[n].shape)) for n in ("idx_q", "idx_k", "idx_v")},
            # SGLang's fused KV/index store (CUDA) rejects rows whose stride is not their width.
            "packed": {n: t.is_contiguous() for n, t in (("q", q), ("k", k), ("v", v), *kwargs.items())
                       if t is not None},
        })
        hq, hk, d = layer.tp_q_head_num, layer.tp_k_head_num, layer.head_dim
        q, k, v = q.reshape(-1, hq, d), k.reshape(-1, hk, d), v.reshape(-1, hk, d)
        out = torch.empty_like(q)
        for a, b in zip(self.cu[:-1], self.cu[1:]):
            kk = k[a:b].repeat_interleave(hq // hk, dim=1)
            vv = v[a:b].repeat_interleave(hq // hk, dim=1)
            s = torch.einsum("thd,shd->hts", q[a:b], kk) * layer.scaling
            future = torch.ones(b - a, b - a, dtype=torch.bool).triu(1)
            p = s.masked_fill(future, float("-inf")).softmax(-1)
            out[a:b] = torch.einsum("hts,shd->thd", p, vv)
        out = out.reshape(q.shape[0], hq * d)
        return (None, out) if sparse else out


def _forward_check(model, tf_model) -> dict:
    from sglang.srt.layers.logits_processor import LogitsMetadata
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.srt.model_executor.forward_context import ForwardContext, set_forward_context

    gen = torch.Generator().manual_seed(5)
    lens = [9, 14]
    prompts = [torch.randint(16, model.config.vocab_size, (n,), generator=gen) for n in lens]
    input_ids = torch.cat(prompts)
    positions = torch.cat([torch.arange(n) for n in lens])
    cu = [0, lens[0], sum(lens)]
    with torch.no_grad():
        ref = torch.cat([tf_model(p[None]).logits[0] for p in prompts])

    out = {}
    backend = _DenseCausalBackend(cu)
    set_forward_context(ForwardContext(attn_backend=backend))
    try:
        # DECODE mode: the logits processor returns every token's logits (one query per row).
        meta = LogitsMetadata(forward_mode=ForwardMode.DECODE)
        logits = model(input_ids, positions, meta).next_token_logits
        out["decode_all_tokens"] = {**_diff(logits, ref),
                                    "argmax_equal": bool(torch.equal(logits.argmax(-1), ref.argmax(-1)))}
        out["backend_calls"] = backend.calls
        backend.calls = []
        # EXTEND mode (prefill): only each prompt's last token.
        meta = LogitsMetadata(forward_mode=ForwardMode.EXTEND, extend_seq_lens=torch.tensor(lens),
                              extend_seq_lens_cpu=lens)
        last = model(input_ids, positions, meta).next_token_logits
        ref_last = ref[torch.tensor(cu[1:]) - 1]
        out["extend_last_tokens"] = {**_diff(last, ref_last),
                                     "argmax_equal": bool(torch.equal(last.argmax(-1), ref_last.argmax(-1)))}
    finally:
        set_forward_context(None)
    return out


def _fused_shared_check(cls, path: str, model) -> dict:
    """The shared expert as FusedMoE's last expert (CUDA only in a server; forced here): the loader
    puts the checkpoint's shared_experts into expert E, and the block's output equals the unfused one's
    given TopK's fused convention (SGLang's grouped_topk_gpu / topk_sigmoid: the shared id appended
    with weight 1, the routed weights x routed_scaling_factor)."""
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    from sglang_msa.models import m3_layers

    unfused_reason = model.model.layers[2].block_sparse_moe.unfused_reason
    real = m3_layers.shared_expert_fusion
    m3_layers.shared_expert_fusion = lambda config, quant_config=None: (1, None)
    try:
        info, fused, _ = _load_check(cls, path)
    finally:
        m3_layers.shared_expert_fusion = real
    cfg = model.config
    e = cfg.num_local_experts
    ours, moe = model.model.layers[2].block_sparse_moe, fused.model.layers[2].block_sparse_moe
    shared = ours.shared_experts
    x = torch.randn(29, cfg.hidden_size, generator=torch.Generator().manual_seed(5)) * 3.0
    top = ours.route(x)
    rsf = ours.routed_scaling_factor
    n = len(x)
    fused_top = StandardTopKOutput(
        torch.cat([top.topk_weights * rsf, torch.ones(n, 1)], 1),
        torch.cat([top.topk_ids, torch.full((n, 1), e, dtype=top.topk_ids.dtype)], 1), top.router_logits)
    moe.route = lambda hidden_states: fused_top
    want = ours(x.clone())
    return {"unfused_reason_on_cpu": unfused_reason, "num_fused": fused.num_fused_shared_experts,
            "has_shared_mlp": moe.shared_experts is not None, "experts": int(moe.experts.w13_weight.shape[0]),
            "not_loaded": info["not_loaded"], "warnings": info["warnings"],
            "w13_is_shared_gate_up": bool(torch.equal(moe.experts.w13_weight[e], shared.gate_up_proj.weight)),
            "w2_is_shared_down": bool(torch.equal(moe.experts.w2_weight[e], shared.down_proj.weight)),
            "routed_scaling_factor": rsf,
            "out": {**_diff(moe(x.clone()), want), "ref_max": float(want.abs().max())}}


# ----------------------------------------------------------------------------- subprocess: main


def _main(paths: dict) -> None:
    import time

    t0 = time.time()

    def note(what):
        print(f"[{time.time() - t0:5.1f}s] {what}", file=sys.stderr, flush=True)

    torch.set_default_dtype(torch.float32)
    _setup_sglang(paths["text"])
    note("sglang set up")
    report: dict = {"registry": _registry_check()}
    note("registry")

    from sglang_msa.models.minimax_m3 import MiniMaxM3SparseForCausalLM as cls

    report["load"] = {}
    text_info, model, ck = _load_check(cls, paths["text"])
    report["load"]["text"] = text_info
    report["load"]["index_value"] = _load_check(cls, paths["index_value"])[0]
    report["load_extra"] = _load_extra_check(cls(model.config), ck)
    report["meta"] = {"slice": _meta_check(cls, paths["slice"])}
    report["replicated_heads"] = _replicated_heads_check(paths["text"], ck)
    note("weights")

    tf_model = tiny_m3.load_transformers_model(paths["text"]).eval()
    note("transformers loaded")
    with torch.no_grad():
        report["math"] = _math_check(model, tf_model)
        note("layer math")
        report["forward"] = _forward_check(model, tf_model)
        note("forward")
        report["fused_shared"] = _fused_shared_check(cls, paths["text"], model)
        note("fused shared expert")
    print("REPORT " + json.dumps(report), flush=True)
    os._exit(0)  # skip process-group teardown (seconds)


def _tp_main(args: dict) -> None:
    """One rank of a CPU tensor-parallel run: shard-load the tiny checkpoint, run the forward."""
    rank, world = args["tp_rank"], args["tp_world"]
    torch.set_default_dtype(torch.float32)
    _setup_sglang(args["text"], rank, world, args["port"])
    from safetensors.torch import load_file
    from sglang.srt.configs.model_config import ModelConfig

    from sglang_msa.models.minimax_m3 import MiniMaxM3SparseForCausalLM as cls

    model = cls(ModelConfig(args["text"]).hf_config)
    for p in model.parameters():
        p.data.fill_(float("nan"))
    model.load_weights(iter(load_file(os.path.join(args["text"], "model.safetensors")).items()))
    report = {"not_loaded": [n for n, p in model.named_parameters() if torch.isnan(p.float()).any()],
              "shapes": {n: list(p.shape) for n, p in model.named_parameters() if ".layers.1." in n}}
    tf_model = tiny_m3.load_transformers_model(args["text"]).eval()
    with torch.no_grad():
        report["forward"] = _forward_check(model, tf_model)
    if rank == 0:
        print("REPORT " + json.dumps(report), flush=True)
    os._exit(0)


if __name__ == "__main__":
    _args = json.loads(sys.argv[1])
    _tp_main(_args) if "tp_rank" in _args else _main(_args)
