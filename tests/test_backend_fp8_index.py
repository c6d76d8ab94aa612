"""The opt-in fp8 index path in the serving backend (``SGLANG_MSA_FP8_INDEX=1``,
``sglang_msa/backend/fp8_index.py``), against SGLang's real classes on CPU.

* the pool-build hook body on SGLang's real ``KVCacheConfigurator._build_minimax_sparse_kv_pool``:
  flag off (or a server without msa) = exactly SGLang's pool, no scale tensor, no hook registered;
  flag on = an e4m3 index-K buffer and an fp32 ``[sparse layers, size + page_size]`` scale tensor;
* memory: SGLang's own cell size (``DefaultPoolConfigurator._compute_cell_size``) is the same with the
  flag, and what the fp8 pool allocates per token (values + scales) stays inside it;
* MSASparseAttnBackend with the flag: an extend batch (with a cached prefix), then a decode step; the
  stored index bytes are ``quantize_index_k``'s, the selected blocks are the naive fp8 reference's
  (``idx_k_scale=``) and the outputs the sparse references' on them; on coherent index inputs the
  output stays close to the flag-off path's.
fp32 tensors (the Triton interpreter gets bf16 wrong); kernels run under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.sglang
torch = pytest.importorskip("torch")
pytest.importorskip("sglang")

from sglang.srt.mem_cache import kv_cache_configurator as kvc_mod  # noqa: E402
from sglang.srt.mem_cache.memory_pool import MiniMaxSparseKVPool  # noqa: E402
from sglang.srt.model_executor import pool_configurator as pc_mod  # noqa: E402
from sglang.srt.model_executor.forward_batch_info import ForwardMode  # noqa: E402

from sglang_msa.backend import fp8_index, sparse  # noqa: E402
from sglang_msa.backend.sparse import MSAConfigError, MSASparseAttnBackend  # noqa: E402
from sglang_msa.kernels.msa_decode import naive_sparse_decode  # noqa: E402
from sglang_msa.kernels.msa_indexer import naive_indexer_decode, naive_indexer_prefill  # noqa: E402
from sglang_msa.kernels.msa_indexer.quant import quantize_index_k_torch  # noqa: E402
from sglang_msa.kernels.msa_prefill import naive_sparse_prefill  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from test_backend import (  # noqa: E402  (the same fakes and shapes: one dense layer, two sparse layers)
    DIM,
    HKV,
    HQ,
    LAYERS,
    _assign_slots,
    _extend_batch,
    _layer,
    runner_over,
)

FLAG = fp8_index.FP8_INDEX_ENV
ORIGINAL = getattr(kvc_mod.KVCacheConfigurator._build_minimax_sparse_kv_pool, "__wrapped__",
                   kvc_mod.KVCacheConfigurator._build_minimax_sparse_kv_pool)


def hf_config(block, topk):
    return SimpleNamespace(
        architectures=["MiniMaxM3SparseForCausalLM"], num_key_value_heads=HKV,
        sparse_attention_config={
            "sparse_attention_freq": LAYERS, "sparse_num_index_heads": HKV, "sparse_index_dim": DIM,
            "sparse_block_size": block, "sparse_topk_blocks": topk, "sparse_init_block": 0,
            "sparse_local_block": 1, "sparse_score_type": "max", "sparse_disable_index_value": LAYERS,
        },
    )


@pytest.fixture
def sglang_ctx(monkeypatch):
    """SGLang's per-process contexts the configurator reads (a 1-rank CPU server)."""
    monkeypatch.setattr(kvc_mod, "get_parallel", lambda: SimpleNamespace(attn_tp_size=1))
    monkeypatch.setattr(pc_mod, "get_parallel", lambda: SimpleNamespace(attn_tp_size=1))
    monkeypatch.setattr(kvc_mod, "get_exec",
                        lambda: SimpleNamespace(features=SimpleNamespace(enable_memory_saver=False)))


def configurator(hf, *, page, dtype=torch.float32, backend="msa"):
    return SimpleNamespace(
        model_config=SimpleNamespace(hf_config=hf, get_num_kv_heads=lambda tp: HKV, head_dim=DIM),
        pool_page_size=page, kv_cache_dtype=dtype, model_dtype=dtype, device="cpu",
        server_args=SimpleNamespace(attention_backend=backend, kv_cache_dtype="auto"),
        layer_info=SimpleNamespace(start_layer=0, end_layer=len(LAYERS), num_effective_layers=len(LAYERS)),
        use_mla_backend=False,
    )


def build_pool(hf, *, tokens, page, dtype=torch.float32, backend="msa"):
    """The pool as the server builds it: SGLang's method through our hook body."""
    kvc = configurator(hf, page=page, dtype=dtype, backend=backend)
    pool = fp8_index.build_pool_with_fp8_index(ORIGINAL, kvc, max_total_num_tokens=tokens)
    assert kvc.model_dtype == dtype  # restored
    return pool


# ----------------------------------------------------------------------------- flag off / on: the pool


def test_flag_off_changes_nothing(monkeypatch, sglang_ctx):
    monkeypatch.delenv(FLAG, raising=False)
    hf = hf_config(16, 3)
    ours = build_pool(hf, tokens=256, page=16)
    stock = ORIGINAL(configurator(hf, page=16), max_total_num_tokens=256)
    for pool in (ours, stock):
        assert pool.get_index_k_buffer(1).dtype == torch.float32  # the model dtype, as SGLang picks
        assert not hasattr(pool, fp8_index.SCALE_ATTR)
    assert ours.mem_usage == stock.mem_usage
    assert ours.get_index_k_buffer(2).shape == stock.get_index_k_buffer(2).shape
    backend = MSASparseAttnBackend(runner_over(ours, hf, max_reqs=2, context=128))
    assert backend._idx_k_scales == {}
    # No hook at all is registered without the flag.
    from sglang.srt.plugins.hook_registry import HookRegistry

    before = list(HookRegistry._hooks.get(fp8_index.BUILD_POOL_TARGET, []))
    fp8_index.register_pool_hook()
    assert list(HookRegistry._hooks.get(fp8_index.BUILD_POOL_TARGET, [])) == before
    assert not any(h is fp8_index.build_pool_with_fp8_index for _, h, _ in before)


@pytest.mark.parametrize("value", ["0", "", "off", "no"])
def test_flag_values_that_mean_off(monkeypatch, value):
    monkeypatch.setenv(FLAG, value)
    assert not fp8_index.fp8_index_enabled()


def test_flag_on_without_msa_changes_nothing(monkeypatch, sglang_ctx):
    monkeypatch.setenv(FLAG, "1")
    pool = build_pool(hf_config(16, 3), tokens=256, page=16, backend="fa3")
    assert pool.get_index_k_buffer(1).dtype == torch.float32 and not hasattr(pool, fp8_index.SCALE_ATTR)


def test_flag_on_builds_an_fp8_index_and_per_slot_scales(monkeypatch, sglang_ctx):
    monkeypatch.setenv(FLAG, "1")
    hf = hf_config(16, 3)
    tokens, page = 256, 16
    stock = ORIGINAL(configurator(hf, page=page), max_total_num_tokens=tokens)
    pool = build_pool(hf, tokens=tokens, page=page)
    for lid in (1, 2):
        buf = pool.get_index_k_buffer(lid)
        assert buf.dtype == torch.float8_e4m3fn and buf.shape == (tokens + page, 1, DIM)
    k, v = pool.get_kv_buffer(2)
    assert k.dtype == v.dtype == torch.float32  # main K/V untouched
    scales = getattr(pool, fp8_index.SCALE_ATTR)
    assert scales.dtype == torch.float32 and scales.shape == (2, tokens + page) and scales.is_contiguous()
    # SGLang's own log figure includes the scales.
    index_saved = (tokens + page) * DIM * 2 * (4 - 1) / (1 << 30)  # fp32 -> e4m3 values, two layers
    assert pool.mem_usage == pytest.approx(stock.mem_usage - index_saved + scales.numel() * 4 / (1 << 30))
    backend = MSASparseAttnBackend(runner_over(pool, hf, max_reqs=2, context=128))
    assert sorted(backend._idx_k_scales) == [1, 2]
    for row, lid in enumerate((1, 2)):
        assert backend._idx_k_scales[lid].data_ptr() == scales[row].data_ptr()


def test_backend_refuses_a_pool_that_does_not_match_the_flag(monkeypatch, sglang_ctx):
    hf = hf_config(16, 3)
    monkeypatch.setenv(FLAG, "1")
    plain = ORIGINAL(configurator(hf, page=16), max_total_num_tokens=256)
    with pytest.raises(MSAConfigError, match="not built with an fp8 index-K cache"):
        MSASparseAttnBackend(runner_over(plain, hf, max_reqs=2, context=128))
    fp8_pool = build_pool(hf, tokens=256, page=16)
    monkeypatch.delenv(FLAG)
    with pytest.raises(MSAConfigError, match="is off"):
        MSASparseAttnBackend(runner_over(fp8_pool, hf, max_reqs=2, context=128))


def test_hook_refuses_a_pool_it_cannot_make_fp8(monkeypatch, sglang_ctx):
    """If SGLang's method ever stops taking the index dtype from model_dtype, start-up fails loudly."""
    monkeypatch.setenv(FLAG, "1")
    hf = hf_config(16, 3)

    def upstream_changed(kvc, *, max_total_num_tokens):
        return MiniMaxSparseKVPool(
            size=max_total_num_tokens, page_size=16, dtype=torch.float32, head_num=HKV, head_dim=DIM,
            idx_head_dim=DIM, dense_layer_ids=[0], sparse_layer_ids=[1, 2], device="cpu",
            disable_value_sparse_layer_ids=[1, 2], start_layer=0, end_layer=3, index_dtype=torch.float32)

    with pytest.raises(RuntimeError, match="could not get an fp8 index-K cache"):
        fp8_index.build_pool_with_fp8_index(upstream_changed, configurator(hf, page=16), max_total_num_tokens=64)


# ----------------------------------------------------------------------------- memory accounting


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scales_fit_in_the_budget_sglang_charges(monkeypatch, sglang_ctx, dtype):
    """SGLang sizes the pool from its cell size, which charges the index cache at the model dtype; the
    flag does not change that figure, and the fp8 pool's bytes per token (values + scales) fit in it."""
    hf = hf_config(128, 16)
    kvc = configurator(hf, page=128, dtype=dtype)
    from sglang.srt.layers.cp import utils as cp_utils

    monkeypatch.setattr(cp_utils, "get_glm_dsa_layer_split_effective_num_layers", lambda kvc, n: n)
    cell = pc_mod.DefaultPoolConfigurator._compute_cell_size(SimpleNamespace(), kvc, len(LAYERS))
    monkeypatch.setenv(FLAG, "1")
    assert pc_mod.DefaultPoolConfigurator._compute_cell_size(SimpleNamespace(), kvc, len(LAYERS)) == cell

    tokens = 1024
    pool = build_pool(hf, tokens=tokens, page=128, dtype=dtype)
    slots = tokens + 128
    allocated = sum(t.numel() * t.element_size() for t in pool.main_pool.k_buffer + pool.main_pool.v_buffer)
    allocated += sum(t.numel() * t.element_size() for t in pool.index_k_pool.k_buffer)
    scales = getattr(pool, fp8_index.SCALE_ATTR)
    allocated += scales.numel() * scales.element_size()
    assert allocated <= cell * slots  # everything the pool holds, scales included, fits the budget
    charged, used = fp8_index.index_bytes_per_token(2, DIM, dtype)
    assert (charged, used) == (2 * 256, 2 * 132)
    main_per_token = len(LAYERS) * 2 * HKV * DIM * 2
    assert cell == main_per_token + charged
    assert allocated == slots * (main_per_token + used)


# ----------------------------------------------------------------------------- the backend, end to end


def _decode_batch(r2t, lens):
    reqs = torch.arange(len(lens), dtype=torch.int64)
    return SimpleNamespace(
        forward_mode=ForwardMode.DECODE, req_pool_indices=reqs,
        seq_lens=torch.tensor([n + 1 for n in lens], dtype=torch.int64),
        out_cache_loc=torch.stack([r2t[r, n] for r, n in enumerate(lens)]).long(),
        minimax_m3_precached_sparse_layers=None)


class Capture:
    """Records the indexers' selections as the backend runs them (the backend keeps none)."""

    def __init__(self, monkeypatch):
        self.prefill, real_prefill = [], sparse.indexer_prefill

        def prefill(*a, **kw):
            out = real_prefill(*a, **kw)
            self.prefill.append((out.clone(), kw.get("idx_k_scale")))
            return out

        monkeypatch.setattr(sparse, "indexer_prefill", prefill)


@pytest.mark.parametrize("seed", [0, 1])
def test_fp8_extend_then_decode_matches_the_fp8_reference(monkeypatch, sglang_ctx, seed):
    monkeypatch.setenv(FLAG, "1")
    block, topk, context, max_reqs = 16, 3, 256, 4
    hf = hf_config(block, topk)
    pool = build_pool(hf, tokens=max_reqs * context, page=block)
    runner = runner_over(pool, hf, max_reqs=max_reqs, context=context)
    backend = MSASparseAttnBackend(runner)
    cap = Capture(monkeypatch)
    r2t = runner.req_to_token_pool.req_to_token
    gen = torch.Generator().manual_seed(seed)
    layer = _layer(2)
    scales = backend._idx_k_scales[2]
    untouched_layer = pool.get_index_k_buffer(1).view(torch.uint8).clone(), backend._idx_k_scales[1].clone()
    full = [83, 61]
    _assign_slots(r2t, [n + 1 for n in full], gen, block)

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    def check_store(loc, idx_k):
        vals = torch.zeros(pool.get_index_k_buffer(2).shape, dtype=torch.float8_e4m3fn)
        ref_scales = torch.ones_like(scales)
        quantize_index_k_torch(idx_k, vals, ref_scales, loc)
        stored = pool.get_index_k_buffer(2)
        assert torch.equal(stored[loc].view(torch.uint8), vals[loc].view(torch.uint8))
        assert torch.equal(scales[loc], ref_scales[loc])

    def run_extend(reqs, prefix, extend):
        fb = _extend_batch(r2t, reqs, prefix, extend)
        backend.init_forward_metadata(fb)
        t = sum(extend)
        q, k, v = rand(t, HQ, DIM), rand(t, HKV, DIM), rand(t, HKV, DIM)
        idx_q, idx_k = rand(t, HKV, DIM), rand(t, 1, DIM) * torch.logspace(-2, 1, t)[:, None, None]
        idx_out, out = backend.forward(q, k, v, layer, fb, idx_q=idx_q, idx_k=idx_k, idx_v=None)
        assert idx_out is None
        check_store(fb.out_cache_loc, idx_k)
        k_cache, v_cache = pool.get_kv_buffer(2)
        assert torch.equal(k_cache[fb.out_cache_loc], k) and torch.equal(v_cache[fb.out_cache_loc], v)
        cu = torch.tensor([0, *torch.tensor(extend).cumsum(0).tolist()], dtype=torch.int32)
        ref_topk = naive_indexer_prefill(idx_q, pool.get_index_k_buffer(2), r2t, fb.req_pool_indices, cu,
                                         fb.seq_lens, fb.extend_prefix_lens, block_size=block, topk=topk,
                                         init_blocks=0, local_blocks=1, idx_k_scale=scales)
        ours, passed_scales = cap.prefill[-1]
        assert passed_scales is scales
        assert torch.equal(ours.cpu().long(), ref_topk.cpu().long())
        ref = naive_sparse_prefill(q, k_cache, v_cache, ref_topk, r2t, fb.req_pool_indices, cu, fb.seq_lens,
                                   fb.extend_prefix_lens, block_size=block)
        torch.testing.assert_close(out.view(t, HQ, DIM), ref.float(), atol=2e-4, rtol=2e-4)

    run_extend([1], [0], [37])  # becomes request 1's cached prefix
    run_extend([0, 1], [0, 37], [full[0], full[1] - 37])

    fb = _decode_batch(r2t, full)
    backend.init_forward_metadata(fb)
    q, k, v = rand(2, HQ, DIM), rand(2, HKV, DIM), rand(2, HKV, DIM)
    idx_q, idx_k = rand(2, HKV, DIM), rand(2, 1, DIM)
    idx_out, out = backend.forward(q, k, v, layer, fb, idx_q=idx_q, idx_k=idx_k, idx_v=None)
    check_store(fb.out_cache_loc, idx_k)
    k_cache, v_cache = pool.get_kv_buffer(2)
    ref_topk = naive_indexer_decode(idx_q, pool.get_index_k_buffer(2), r2t, fb.req_pool_indices, fb.seq_lens,
                                    block_size=block, topk=topk, init_blocks=0, local_blocks=1, idx_k_scale=scales)
    assert torch.equal(backend._topk_buf[:, :2].cpu().long(), ref_topk.cpu().long())
    ref = naive_sparse_decode(q, k_cache, v_cache, ref_topk, r2t, fb.req_pool_indices, fb.seq_lens,
                              block_size=block)
    torch.testing.assert_close(out.view(2, HQ, DIM), ref.float(), atol=2e-4, rtol=2e-4)
    # The other sparse layer's cache and scales were not written.
    assert torch.equal(pool.get_index_k_buffer(1).view(torch.uint8), untouched_layer[0])
    assert torch.equal(backend._idx_k_scales[1], untouched_layer[1])


def test_fp8_output_stays_close_to_the_flag_off_path_on_coherent_inputs(monkeypatch, sglang_ctx, capsys):
    """Smooth index queries/keys (benchmarks/selections.py), the same q/k/v: the flag-on backend keeps
    most of the blocks the flag-off backend keeps, and its layer output stays close."""
    from selections import smooth_index_qk

    block, topk, ctx, rows = 16, 8, 1024, 32
    hf = hf_config(block, topk)
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(ctx + 1, h, DIM, generator=gen) for h in (HQ, HKV, HKV))
    idx_q, idx_k = smooth_index_qk(ctx + 1, 0, ctx + 1, HKV, DIM, seed=2)
    idx_k = idx_k[:, None, :]
    results = {}
    for flag in ("0", "1"):
        monkeypatch.setenv(FLAG, flag)
        pool = build_pool(hf, tokens=2 * ctx, page=block)
        runner = runner_over(pool, hf, max_reqs=1, context=ctx + block)
        backend = MSASparseAttnBackend(runner)
        cap = Capture(monkeypatch)
        r2t = runner.req_to_token_pool.req_to_token
        _assign_slots(r2t, [ctx + 1], torch.Generator().manual_seed(0), block)
        layer = _layer(1)
        # Prefill ctx - rows tokens, then one chunk of `rows` (the rows compared), then one decode step.
        outs = []
        for prefix, extend in ((0, ctx - rows), (ctx - rows, rows)):
            fb = _extend_batch(r2t, [0], [prefix], [extend])
            backend.init_forward_metadata(fb)
            s = slice(prefix, prefix + extend)
            outs.append(backend.forward(q[s], k[s], v[s], layer, fb, idx_q=idx_q[s], idx_k=idx_k[s])[1])
        fb = _decode_batch(r2t, [ctx])
        backend.init_forward_metadata(fb)
        s = slice(ctx, ctx + 1)
        dec = backend.forward(q[s], k[s], v[s], layer, fb, idx_q=idx_q[s], idx_k=idx_k[s])[1]
        results[flag] = (outs[1], cap.prefill[-1][0].clone(), dec, backend._topk_buf[:, :1].clone())
    (o0, t0, d0, dt0), (o1, t1, d1, dt1) = results["0"], results["1"]
    same = (t1[..., :, None] == t0[..., None, :]).any(-1).sum(-1).float() / topk
    rel = float((o1 - o0).norm() / o0.norm())
    rel_dec = float((d1 - d0).norm() / d0.norm())
    dec_same = float((dt1[..., :, None] == dt0[..., None, :]).any(-1).sum(-1).float().mean() / topk)
    with capsys.disabled():
        print(f"\n[backend fp8 vs flag off, coherent, {ctx} keys, top-{topk}] blocks in common: mean "
              f"{float(same.mean()):.3f}, worst row {float(same.min()):.3f}; output rel err {rel:.4f}; "
              f"decode: blocks in common {dec_same:.3f}, rel err {rel_dec:.4f}")
    # Measured (CPU interpreter): 0.996 of the blocks in common (one block of one row differs), output
    # rel err 0.11 (all of it that row's: a swapped block moves 1/8 of a near-uniform attention mass),
    # decode selection identical.
    assert float(same.mean()) >= 0.9 and float(same.min()) >= 0.75 and dec_same >= 0.75
    assert rel <= 0.25
    # Rows that select the same blocks give the same output (main K/V are identical): what differs is
    # the selection, nothing else.
    rows_same = (same[0] == 1).nonzero().flatten()
    assert len(rows_same) >= rows // 2
    torch.testing.assert_close(o1.view(rows, HQ, DIM)[rows_same], o0.view(rows, HQ, DIM)[rows_same],
                               atol=1e-5, rtol=1e-5)
    if dec_same == 1.0:
        torch.testing.assert_close(d1, d0, atol=1e-5, rtol=1e-5)
