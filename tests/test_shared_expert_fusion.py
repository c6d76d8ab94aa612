"""shared_expert_fusion's choice on CUDA machines, faked on CPU: SGLang's own conditions, plus ours (bf16
experts): fuse only where SGLang has a tuned fused-MoE config for the E + 1 experts, or none for E.
The configs are SGLang 0.5.17's real files, looked up by their real names for a faked device name."""

from __future__ import annotations

import types

import pytest

pytest.importorskip("torch")
from importable import has_module as _has  # noqa: E402

pytestmark = [
    pytest.mark.sglang,
    pytest.mark.skipif(not _has("sglang.srt.models.minimax_m3"), reason="SGLang with MiniMax-M3 is not installed"),
]

# The rank8 proxy / MiniMax-M3 at --tp 8: 128 experts of per-rank width 384, one shared expert as wide.
CONFIG = types.SimpleNamespace(n_shared_experts=1, intermediate_size=384, shared_intermediate_size=384,
                               num_local_experts=128)


@pytest.fixture
def on_gpu(monkeypatch):
    """Pretend to be on a CUDA SM90 GPU named as given; returns the setter."""
    import torch
    from sglang.srt.layers.moe.moe_runner.triton_utils import fused_moe_triton_config as cfgs

    from sglang_msa.models import m3_layers  # imported on the real (CPU) machine, before faking CUDA

    monkeypatch.setattr(m3_layers, "get_parallel", lambda: types.SimpleNamespace(moe_ep_size=1, moe_tp_size=1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (9, 0))
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.delenv("SGLANG_MSA_FUSE_SHARED_EXPERT", raising=False)
    monkeypatch.delenv("SGLANG_MOE_CONFIG_DIR", raising=False)

    def set_name(name: str) -> None:
        monkeypatch.setattr(cfgs, "get_device_name", lambda *a, **k: name)

    return set_name


def test_h100_keeps_the_shared_expert_apart_where_only_128_experts_are_tuned(on_gpu):
    from sglang_msa.models.m3_layers import shared_expert_fusion, tuned_moe_configs

    on_gpu("NVIDIA H100 80GB HBM3")
    assert tuned_moe_configs(128, 384) and not tuned_moe_configs(129, 384)  # SGLang 0.5.17's files
    n, why = shared_expert_fusion(CONFIG)
    assert n == 0 and "128 experts" in why and "E=128,N=384,device_name=NVIDIA_H100_80GB_HBM3.json" in why, why


def test_the_per_rank_width_names_the_config(on_gpu, monkeypatch):
    """The released MiniMax-M3 at --tp 8: experts of width 3072 split 8 ways, so SGLang looks up N=384."""
    from sglang_msa.models import m3_layers

    on_gpu("NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(m3_layers, "get_parallel", lambda: types.SimpleNamespace(moe_ep_size=1, moe_tp_size=8))
    full = types.SimpleNamespace(**{**vars(CONFIG), "intermediate_size": 3072, "shared_intermediate_size": 3072})
    n, why = m3_layers.shared_expert_fusion(full)
    assert n == 0 and "N=384" in why, why


def test_h200_fuses_like_sglang_where_129_experts_are_tuned(on_gpu):
    from sglang_msa.models.m3_layers import shared_expert_fusion, tuned_moe_configs

    on_gpu("NVIDIA H200")
    assert tuned_moe_configs(129, 384)
    assert shared_expert_fusion(CONFIG) == (1, None)


def test_no_tuned_config_at_all_fuses_like_sglang(on_gpu):
    from sglang_msa.models.m3_layers import shared_expert_fusion

    on_gpu("NVIDIA Some Future GPU")
    assert shared_expert_fusion(CONFIG) == (1, None)


def test_the_env_switch_fuses_regardless_of_configs(on_gpu, monkeypatch):
    from sglang_msa.models.m3_layers import shared_expert_fusion

    on_gpu("NVIDIA H100 80GB HBM3")
    monkeypatch.setenv("SGLANG_MSA_FUSE_SHARED_EXPERT", "1")
    assert shared_expert_fusion(CONFIG) == (1, None)


def test_quantized_experts_keep_sglangs_rule(on_gpu):
    from sglang_msa.models.m3_layers import shared_expert_fusion

    on_gpu("NVIDIA H100 80GB HBM3")
    quant = types.SimpleNamespace(get_name=lambda: "fp8")
    assert shared_expert_fusion(CONFIG, quant) == (1, None)  # the bf16 file names say nothing about fp8
