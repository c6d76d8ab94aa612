"""The ``msa`` serving backend against SGLang's real classes, on CPU (kernels under the interpreter).

* the attn_backend_wrapper hook: passes through for everything but MiniMax sparse + msa, and then
  builds SGLang's MiniMaxHybridAttnBackend around our sparse backend;
* MSASparseAttnBackend end to end on a real MiniMaxSparseKVPool: an extend batch (one request with
  a cached prefix written by an earlier extend), then a decode step, vs the fp32 references.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.sglang
torch = pytest.importorskip("torch")
pytest.importorskip("sglang")

from sglang.srt.layers.attention.minimax_sparse_backend import MiniMaxHybridAttnBackend  # noqa: E402
from sglang.srt.mem_cache.memory_pool import MiniMaxSparseKVPool  # noqa: E402
from sglang.srt.model_executor.forward_batch_info import ForwardMode  # noqa: E402

from sglang_msa.backend import hooks  # noqa: E402
from sglang_msa.backend.sparse import MSAConfigError, MSASparseAttnBackend  # noqa: E402
from sglang_msa.kernels.msa_decode import naive_sparse_decode  # noqa: E402
from sglang_msa.kernels.msa_indexer import naive_indexer_decode, naive_indexer_prefill  # noqa: E402
from sglang_msa.kernels.msa_prefill import naive_sparse_prefill  # noqa: E402

BLOCK, TOPK, HQ, HKV, DIM = 16, 3, 16, 1, 128
LAYERS = [0, 1, 1]  # one dense layer, two sparse layers


def m3_hf_config(arch="MiniMaxM3SparseForCausalLM"):
    return SimpleNamespace(
        architectures=[arch],
        sparse_attention_config={
            "sparse_attention_freq": LAYERS, "sparse_num_index_heads": HKV, "sparse_index_dim": DIM,
            "sparse_block_size": BLOCK, "sparse_topk_blocks": TOPK, "sparse_init_block": 0,
            "sparse_local_block": 1, "sparse_score_type": "max", "sparse_disable_index_value": LAYERS,
        },
    )


def fake_runner(hf_config, *, page_size=BLOCK, max_reqs=4, context=256, dtype=torch.float32):
    pool = MiniMaxSparseKVPool(
        size=max_reqs * context, page_size=page_size, dtype=dtype, head_num=HKV, head_dim=DIM,
        idx_head_dim=DIM, dense_layer_ids=[0], sparse_layer_ids=[1, 2], device="cpu",
        disable_value_sparse_layer_ids=[1, 2], start_layer=0, end_layer=len(LAYERS),
    )
    return runner_over(pool, hf_config, max_reqs=max_reqs, context=context)


def runner_over(pool, hf_config, *, max_reqs, context):
    """What the backend reads of SGLang's ModelRunner, around a KV pool."""
    return SimpleNamespace(
        token_to_kv_pool=pool,
        req_to_token_pool=SimpleNamespace(req_to_token=torch.zeros(max_reqs, context, dtype=torch.int32),
                                          size=max_reqs),
        model_config=SimpleNamespace(hf_config=hf_config, context_len=context, num_attention_heads=HQ),
        server_args=SimpleNamespace(speculative_algorithm=None, attention_backend="msa"),
        tp_size=1,
    )


class _Dense:
    """Stands in for the dense backend built by our factory."""


def test_factory_builds_the_chosen_dense_backend_and_marks_it(monkeypatch, caplog):
    from sglang.srt.layers.attention import attention_registry

    from sglang_msa.backend import dense as dense_choice
    from sglang_msa.backend.factory import create_msa_backend

    # Which backend is chosen is tests/test_dense_backend.py's subject; here: it is built and marked.
    monkeypatch.setattr(dense_choice, "choose_dense_backend", lambda sa, hf: ("triton", "test"))
    monkeypatch.setitem(attention_registry.ATTENTION_BACKENDS, "triton", lambda runner: _Dense())
    dense = create_msa_backend(fake_runner(m3_hf_config()))
    assert isinstance(dense, _Dense) and hooks.is_msa_backend(dense)
    with caplog.at_level("WARNING", logger="sglang_msa"):
        create_msa_backend(fake_runner(SimpleNamespace(architectures=["LlamaForCausalLM"])))
    assert "only changes MiniMax sparse models" in caplog.text


def test_hook_passes_through_unless_msa_and_minimax_sparse():
    calls = []

    def original(runner, backend):
        calls.append(backend)
        return backend

    plain = _Dense()
    runner = fake_runner(m3_hf_config())
    assert hooks.wrap_minimax_sparse_with_msa(original, runner, plain) is plain  # not ours

    ours = _Dense()
    setattr(ours, hooks.MSA_MARKER, True)
    llama = fake_runner(SimpleNamespace(architectures=["LlamaForCausalLM"]))
    assert hooks.wrap_minimax_sparse_with_msa(original, llama, ours) is ours  # not MiniMax sparse
    assert calls == [plain, ours]


def test_hook_builds_the_hybrid_with_our_sparse_backend():
    ours = _Dense()
    setattr(ours, hooks.MSA_MARKER, True)
    runner = fake_runner(m3_hf_config())
    hybrid = hooks.wrap_minimax_sparse_with_msa(lambda *a: pytest.fail("original called"), runner, ours)
    assert isinstance(hybrid, MiniMaxHybridAttnBackend)
    assert isinstance(hybrid.sparse, MSASparseAttnBackend)
    assert hybrid.dense is ours and hybrid.sparse_layer_ids == [1, 2]
    # ... also when SGLang composes different prefill/decode backends (HybridAttnBackend).
    composed = SimpleNamespace(prefill_backend=ours, decode_backend=_Dense())
    assert hooks.is_msa_backend(composed)


def test_hook_is_applied_by_sglang_load_plugins():
    code = textwrap.dedent(
        """
        from sglang.srt.plugins import load_plugins
        load_plugins()
        from sglang.srt.layers.attention import attention_registry as reg
        from sglang.srt.model_executor.model_runner_components import attention_backend_setup as setup
        from sglang_msa.backend.hooks import wrap_minimax_sparse_with_msa
        assert hasattr(reg.attn_backend_wrapper, "__wrapped__")
        assert setup.attn_backend_wrapper is reg.attn_backend_wrapper  # the runner's binding too
        print("OK")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGLANG_MSA_")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_unsupported_configurations_fail_clearly():
    runner = fake_runner(m3_hf_config())
    runner.server_args.speculative_algorithm = "EAGLE"
    with pytest.raises(MSAConfigError, match="speculative"):
        MSASparseAttnBackend(runner)


def test_a_bad_split_k_setting_fails_at_start_up(monkeypatch):
    monkeypatch.setenv("SGLANG_MSA_INDEXER_SPLIT_K", "four")
    with pytest.raises(MSAConfigError, match="SGLANG_MSA_INDEXER_SPLIT_K='four'"):
        MSASparseAttnBackend(fake_runner(m3_hf_config()))
    for ok in ("auto", "0", "5"):
        monkeypatch.setenv("SGLANG_MSA_INDEXER_SPLIT_K", ok)
        MSASparseAttnBackend(fake_runner(m3_hf_config()))


def test_a_bad_decode_topk_part_fails_at_start_up(monkeypatch):
    for bad, why in (("fast", "expected auto, 0 or a power of two"), ("4", "got 4"), ("12", "got 12")):
        monkeypatch.setenv("SGLANG_MSA_DECODE_TOPK_PART", bad)  # TOPK 3: parts of >= 8 scores, powers of two
        with pytest.raises(MSAConfigError, match=why):
            MSASparseAttnBackend(fake_runner(m3_hf_config()))
    for ok, part in (("auto", 256), ("0", None), ("8", 8)):
        monkeypatch.setenv("SGLANG_MSA_DECODE_TOPK_PART", ok)
        assert MSASparseAttnBackend(fake_runner(m3_hf_config())).decode_topk_part == part
    monkeypatch.delenv("SGLANG_MSA_DECODE_TOPK_PART")
    assert MSASparseAttnBackend(fake_runner(m3_hf_config())).decode_topk_part == 256  # the default


def test_startup_logs_the_memory_outside_the_kv_pool(caplog):
    """The prefill scratch for the server's chunk size and the decode buffers for its captured batch
    sizes (sglang_msa.backend.memory) are logged, with the figures the memory module gives."""
    from sglang_msa.backend import memory

    runner = fake_runner(m3_hf_config())
    runner.server_args.chunked_prefill_size = 512
    runner.server_args.cuda_graph_bs_decode = [1, 2, 4]
    with caplog.at_level("INFO", logger="sglang_msa"):
        backend = MSASparseAttnBackend(runner)
        backend.init_cuda_graph_state(4, 4)
    want = memory.prefill_scratch_bytes(512, num_q_heads=HQ, num_kv_heads=HKV, num_idx_heads=HKV, head_dim=DIM,
                                        topk=TOPK, block_size=BLOCK, max_blocks=256 // BLOCK, dtype_bytes=4)
    assert f"prefill scratch up to {memory.gib(want['total'])} per sparse layer for a 512-token batch" in caplog.text
    assert "decode buffers" in caplog.text and "for 3 captured batch sizes up to 4" in caplog.text
    assert "may run out of memory" not in caplog.text  # off CUDA: nothing to compare with


def test_startup_warns_when_the_prefill_scratch_crowds_the_free_memory(caplog, monkeypatch):
    from sglang_msa.backend import memory

    runner = fake_runner(m3_hf_config())
    runner.server_args.chunked_prefill_size = 512
    need = memory.prefill_scratch_bytes(512, num_q_heads=HQ, num_kv_heads=HKV, num_idx_heads=HKV, head_dim=DIM,
                                        topk=TOPK, block_size=BLOCK, max_blocks=256 // BLOCK, dtype_bytes=4)["total"]
    for free, warned in ((2 * need + 2, False), (2 * need - 2, True)):
        monkeypatch.setattr(memory, "free_device_bytes", lambda device, free=free: free)
        caplog.clear()
        with caplog.at_level("INFO", logger="sglang_msa"):
            MSASparseAttnBackend(runner)
        assert ("may run out of memory. Lower --chunked-prefill-size" in caplog.text) == warned


def _layer(layer_id):
    return SimpleNamespace(layer_id=layer_id, k_scale_float=None, v_scale_float=None, idx_k_scale_float=None,
                           tp_q_head_num=HQ, v_head_dim=DIM, k_scale=None, v_scale=None)


def _assign_slots(r2t, lens, gen, block=BLOCK):
    """Give each request of the req_to_token table whole pages in shuffled order (page == block)."""
    pages = torch.randperm(r2t.numel() // block, generator=gen)
    at = 0
    for r, n in enumerate(lens):
        for j in range((n + block - 1) // block):
            r2t[r, j * block:(j + 1) * block] = pages[at] * block + torch.arange(block)
            at += 1


def _extend_batch(r2t, reqs, prefix, extend):
    locs = torch.cat([r2t[r, p:p + e] for r, p, e in zip(reqs, prefix, extend)]).long()
    return SimpleNamespace(
        forward_mode=ForwardMode.EXTEND, req_pool_indices=torch.tensor(reqs, dtype=torch.int64),
        seq_lens=torch.tensor([p + e for p, e in zip(prefix, extend)], dtype=torch.int64),
        extend_seq_lens=torch.tensor(extend, dtype=torch.int32), extend_seq_lens_cpu=list(extend),
        extend_prefix_lens=torch.tensor(prefix, dtype=torch.int32), out_cache_loc=locs,
        minimax_m3_precached_sparse_layers=None,
        # SGLang's host copies: the prefill plan reads these instead of syncing on the device tensors
        extend_prefix_lens_cpu=list(prefix), seq_lens_cpu=torch.tensor([p + e for p, e in zip(prefix, extend)]),
    )


def test_prefill_plan_takes_sglangs_host_lengths_when_they_agree():
    from sglang_msa.backend.sparse import _host_lens

    fb = SimpleNamespace(extend_seq_lens_cpu=[3, 5], extend_prefix_lens_cpu=[10, 0],
                         seq_lens_cpu=torch.tensor([13, 5]))
    assert _host_lens(fb, 2) == ([3, 5], [13, 5], [10, 0])
    assert _host_lens(fb, 3) is None  # another request count (e.g. padded batches): read the device
    assert _host_lens(SimpleNamespace(**{**vars(fb), "seq_lens_cpu": torch.tensor([14, 5])}), 2) is None
    assert _host_lens(SimpleNamespace(**{**vars(fb), "extend_prefix_lens_cpu": None}), 2) is None


# Decode stage 2: the default (parts of 256 scores: one part at this context, so the single program runs),
# parts of 8 (2 parts over 16 blocks, the merge across them), and one program per (head, request).
@pytest.mark.parametrize("seed,topk_part,n_parts", [(0, "auto", 1), (1, "8", 2), (1, "0", None)])
def test_sparse_backend_extend_then_decode_matches_reference(seed, topk_part, n_parts, monkeypatch):
    monkeypatch.setenv("SGLANG_MSA_DECODE_TOPK_PART", topk_part)
    gen = torch.Generator().manual_seed(seed)
    runner = fake_runner(m3_hf_config())
    backend = MSASparseAttnBackend(runner)
    pool, r2t = runner.token_to_kv_pool, runner.req_to_token_pool.req_to_token
    layer = _layer(2)
    full = [83, 61]  # final lengths; request 1 reaches its length in two chunks (prefix reuse)
    _assign_slots(runner.req_to_token_pool.req_to_token, [n + 1 for n in full], gen)

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    def run_extend(reqs, prefix, extend):
        fb = _extend_batch(runner.req_to_token_pool.req_to_token, reqs, prefix, extend)
        backend.init_forward_metadata(fb)
        assert backend._max_seqlen_k == max(p + e for p, e in zip(prefix, extend))  # host lengths, no sync
        t = sum(extend)
        q, k, v = rand(t, HQ, DIM), rand(t, HKV, DIM), rand(t, HKV, DIM)
        idx_q, idx_k = rand(t, HKV, DIM), rand(t, 1, DIM)
        out = torch.full((t, HQ * DIM), float("nan"))
        idx_out, out[:] = backend.forward(q, k, v, layer, fb, idx_q=idx_q, idx_k=idx_k, idx_v=None)
        assert idx_out is None
        cu = torch.tensor([0, *torch.tensor(extend).cumsum(0).tolist()], dtype=torch.int32)
        k_cache, v_cache = pool.get_kv_buffer(2)
        idx_k_cache = pool.get_index_k_buffer(2)
        ref_topk = naive_indexer_prefill(idx_q, idx_k_cache, r2t, fb.req_pool_indices, cu, fb.seq_lens,
                                         fb.extend_prefix_lens, block_size=BLOCK, topk=TOPK, init_blocks=0,
                                         local_blocks=1)
        ref = naive_sparse_prefill(q, k_cache, v_cache, ref_topk, r2t, fb.req_pool_indices, cu, fb.seq_lens,
                                   fb.extend_prefix_lens, block_size=BLOCK)
        torch.testing.assert_close(out.view(t, HQ, DIM), ref.float(), atol=2e-4, rtol=2e-4)

    run_extend([1], [0], [37])  # request 1: first chunk becomes its cached prefix
    run_extend([0, 1], [0, 37], [full[0], full[1] - 37])  # ragged batch, request 1 on a prefix

    # One decode step for both requests (position = previous length).
    seq = torch.tensor([full[0] + 1, full[1] + 1], dtype=torch.int64)
    reqs = torch.tensor([0, 1], dtype=torch.int64)
    fb = SimpleNamespace(forward_mode=ForwardMode.DECODE, req_pool_indices=reqs, seq_lens=seq,
                         out_cache_loc=torch.stack([r2t[0, full[0]], r2t[1, full[1]]]).long(),
                         minimax_m3_precached_sparse_layers=None)
    backend.init_forward_metadata(fb)
    q, k, v = rand(2, HQ, DIM), rand(2, HKV, DIM), rand(2, HKV, DIM)
    idx_q, idx_k = rand(2, HKV, DIM), rand(2, 1, DIM)
    idx_out, out = backend.forward(q, k, v, layer, fb, idx_q=idx_q, idx_k=idx_k, idx_v=None)
    k_cache, v_cache = pool.get_kv_buffer(2)
    ref_topk = naive_indexer_decode(idx_q, pool.get_index_k_buffer(2), r2t, reqs, seq, block_size=BLOCK,
                                    topk=TOPK, init_blocks=0, local_blocks=1)
    ref = naive_sparse_decode(q, k_cache, v_cache, ref_topk, r2t, reqs, seq, block_size=BLOCK)
    assert idx_out is None
    torch.testing.assert_close(out.view(2, HQ, DIM), ref.float(), atol=2e-4, rtol=2e-4)
    assert (backend.decode_indexer.topk_part is None) == (n_parts is None)
    assert n_parts is None or backend.decode_indexer.n_parts == n_parts
