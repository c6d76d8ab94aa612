"""Per-rank shapes of our MiniMax-M3 class at TP 2, 4 and 8, against SGLang's in-tree class (CPU).

Both classes are built on the meta device for the released model's dimensions (``slice`` preset,
two layers: one dense attention + dense MLP, one MSA-sparse attention + MoE) under SGLang's parallel
context overridden to each (TP size, rank): no process group beyond one gloo rank, no weights.
Compared per rank: every parameter's name and shape (ours renamed ``block_sparse_moe`` -> ``mlp``,
SGLang's own checkpoint mapping), the attention heads (q, KV, index, their replication and the shard
rank each projection loads), RadixAttention's per-rank heads, the MoE's per-rank experts and width,
and the numbers the msa backend derives (q heads per rank, the KV pool's heads, one index head per
KV head). EP (``--ep-size 8``) is checked as well.

SGLang's class on CUDA fuses the shared expert into FusedMoE as one extra expert; here (CPU) it keeps
it as a separate TP-sharded MLP, as ours does too off CUDA (``shared_expert_fusion``): the same
weights and math, a different layout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
from importable import has_module as _has  # noqa: E402

pytestmark = [
    pytest.mark.sglang,
    pytest.mark.skipif(not _has("sglang.srt.models.minimax_m3"), reason="SGLang with MiniMax-M3 is not installed"),
]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The released MiniMax-M3 (slice preset): 64 q heads, 4 KV heads, 4 index heads, head dim 128,
# hidden 6144, 128 experts of width 3072, shared expert 3072, dense MLP 12288.
HQ, HKV, HIDX, D, HIDDEN, E, I_MOE, I_SHARED, I_DENSE = 64, 4, 4, 128, 6144, 128, 3072, 3072, 12288

# (tp, rank, ep): ranks at both ends, and ranks sharing a replicated KV / index head at TP 8.
LAYOUTS = [(2, 0, 1), (2, 1, 1), (4, 0, 1), (4, 3, 1), (8, 0, 1), (8, 5, 1), (8, 7, 1), (8, 3, 8)]


def _key(tp, rank, ep):
    return f"tp{tp}-r{rank}-ep{ep}"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from sglang_msa_tools import tiny_m3

    path = str(tmp_path_factory.mktemp("tp_shapes") / "slice")
    tiny_m3.write_checkpoint(path, "slice", layers=2)  # config only
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SGLANG_MSA_", "SGLANG_PLUGINS")) and k != "SGLANG_EXTERNAL_MODEL_PACKAGE"}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), path], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(lines[-1][len("REPORT "):])


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda t: _key(*t))
def test_parameter_shapes_equal_sglang_in_tree(report, layout):
    r = report[_key(*layout)]
    ours, tree = r["ours"]["params"], r["tree"]["params"]
    assert len(ours) > 20
    only_ours = sorted(set(ours) - set(tree))
    only_tree = sorted(set(tree) - set(ours))
    differ = {n: (ours[n], tree[n]) for n in set(ours) & set(tree) if ours[n] != tree[n]}
    assert not only_ours and not only_tree and not differ, (only_ours, only_tree, differ)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda t: _key(*t))
def test_attention_heads_and_shard_ranks_equal_sglang_in_tree(report, layout):
    r = report[_key(*layout)]
    for layer in ("dense", "sparse"):
        assert r["ours"]["attn"][layer] == r["tree"]["attn"][layer], layer


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda t: _key(*t))
def test_moe_per_rank_experts_equal_sglang_in_tree(report, layout):
    r = report[_key(*layout)]
    assert r["ours"]["moe"] == r["tree"]["moe"]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda t: _key(*t))
def test_per_rank_numbers_are_the_expected_ones(report, layout):
    tp, rank, ep = layout
    r = report[_key(*layout)]
    p, sparse = r["ours"]["params"], r["ours"]["attn"]["sparse"]
    hq, hkv = HQ // tp, max(1, HKV // tp)
    hidx = HIDX // min(tp, HIDX)
    assert (sparse["num_heads"], sparse["num_kv_heads"], sparse["num_idx_heads"]) == (hq, hkv, hidx)
    assert sparse["idx_replicas"] == tp // min(tp, HIDX)
    assert sparse["index_qkv_tp_rank"] == rank // (tp // min(tp, HIDX))  # ranks sharing an index head load it
    assert sparse["qkv_tp_rank"] == rank
    pre = "model.layers.1."
    assert p[pre + "self_attn.qkv_proj.weight"] == [(hq + 2 * hkv) * D, HIDDEN]
    assert p[pre + "self_attn.index_qkv_proj.weight"] == [(hidx + 1) * D, HIDDEN]  # + the shared index key
    assert p[pre + "self_attn.o_proj.weight"] == [HIDDEN, hq * D]
    moe_tp = tp // ep
    assert p[pre + "mlp.experts.w13_weight"] == [E // ep, 2 * I_MOE // moe_tp, HIDDEN]
    assert p[pre + "mlp.experts.w2_weight"] == [E // ep, HIDDEN, I_MOE // moe_tp]
    assert p[pre + "mlp.shared_experts.gate_up_proj.weight"] == [2 * I_SHARED // tp, HIDDEN]
    assert p[pre + "mlp.shared_experts.down_proj.weight"] == [HIDDEN, I_SHARED // tp]
    assert p["model.layers.0.mlp.gate_up_proj.weight"] == [2 * I_DENSE // tp, HIDDEN]
    assert p[pre + "mlp.gate.weight"] == [E, HIDDEN]  # the router is replicated


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda t: _key(*t))
def test_msa_backend_per_rank_view_matches_the_model(report, layout):
    """What MSASparseAttnBackend derives per rank equals what the model hands it."""
    r = report[_key(*layout)]
    b, sparse = r["backend"], r["ours"]["attn"]["sparse"]
    assert b["num_q_heads"] == sparse["radix_q_heads"] == sparse["num_heads"]
    assert b["pool_kv_heads"] == sparse["radix_kv_heads"] == sparse["num_kv_heads"]
    assert sparse["num_idx_heads"] == sparse["num_kv_heads"]  # the backend's one index head per KV head


# ----------------------------------------------------------------------------- subprocess


def _setup(path: str) -> None:
    import socket

    from sglang.srt import runtime_context
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.distributed import parallel_state
    from sglang.srt.layers.dp_attention import initialize_dp_attention
    from sglang.srt.server_args import ServerArgs

    server_args = ServerArgs(model_path=path, device="cpu", load_format="dummy")
    runtime_context.publish(server_args, role="test")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    parallel_state.init_distributed_environment(backend="gloo", world_size=1, rank=0, local_rank=0,
                                                distributed_init_method=f"tcp://127.0.0.1:{port}")
    parallel_state.initialize_model_parallel(1, 1)
    initialize_dp_attention(server_args, ModelConfig(path))
    import sglang.srt.layers.rotary_embedding.base as rotary_base

    rotary_base._is_cpu = True  # the kernel-free rotary path (no vllm / sgl-kernel on the CPU)


def _attn_info(attn) -> dict:
    info = {
        "num_heads": attn.num_heads, "num_kv_heads": attn.num_kv_heads,
        "radix_q_heads": attn.attn.tp_q_head_num, "radix_kv_heads": attn.attn.tp_k_head_num,
        "radix_v_heads": attn.attn.tp_v_head_num,
        "qkv_tp_rank": attn.qkv_proj.tp_rank, "qkv_tp_size": attn.qkv_proj.tp_size,
        "kv_replicas": attn.qkv_proj.num_kv_head_replicas, "o_tp_rank": attn.o_proj.tp_rank,
    }
    if hasattr(attn, "index_qkv_proj"):
        info.update({
            "num_idx_heads": attn.num_idx_heads,
            # ours: idx_replicas; SGLang's: idx_replica_size
            "idx_replicas": getattr(attn, "idx_replicas", getattr(attn, "idx_replica_size", None)),
            "index_qkv_tp_rank": attn.index_qkv_proj.tp_rank, "index_qkv_tp_size": attn.index_qkv_proj.tp_size,
        })
    return info


def _model_info(model, rename: bool) -> dict:
    params = {}
    for name, p in model.named_parameters():
        params[name.replace(".block_sparse_moe.", ".mlp.") if rename else name] = list(p.shape)
    layers = model.model.layers
    moe = layers[1].block_sparse_moe if rename else layers[1].mlp
    experts = moe.experts
    return {
        "params": params,
        "attn": {"dense": _attn_info(layers[0].self_attn), "sparse": _attn_info(layers[1].self_attn)},
        "moe": {"num_experts": experts.num_experts, "num_local_experts": experts.num_local_experts,
                "width_per_rank": experts.intermediate_size_per_partition,
                "moe_tp": [experts.moe_tp_rank, experts.moe_tp_size],
                "moe_ep": [experts.moe_ep_rank, experts.moe_ep_size],
                "shared": moe.shared_experts is not None},
    }


def _main(path: str) -> None:
    _setup(path)
    import torch
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.models.minimax_m3 import MiniMaxM3SparseForCausalLM as InTree
    from sglang.srt.runtime_context import get_parallel

    from sglang_msa.models.minimax_m3 import MiniMaxM3SparseForCausalLM as Ours

    model_config = ModelConfig(path)
    hf = model_config.hf_config
    report = {}
    for tp, rank, ep in LAYOUTS:
        moe_tp = tp // ep
        sizes = dict(tp_size=tp, tp_rank=rank, attn_tp_size=tp, attn_tp_rank=rank,
                     moe_tp_size=moe_tp, moe_tp_rank=rank % moe_tp, moe_ep_size=ep, moe_ep_rank=rank // moe_tp)
        with get_parallel().override(**sizes), torch.device("meta"):
            ours, tree = Ours(hf), InTree(hf)
        report[_key(tp, rank, ep)] = {
            "ours": _model_info(ours, rename=True), "tree": _model_info(tree, rename=False),
            # MSASparseAttnBackend: q heads = num_attention_heads // attn TP; KV heads = the pool's,
            # which SGLang sizes from ModelConfig.get_num_kv_heads(attn TP).
            "backend": {"num_q_heads": model_config.num_attention_heads // tp,
                        "pool_kv_heads": model_config.get_num_kv_heads(tp)},
        }
        del ours, tree
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    _main(sys.argv[1])
