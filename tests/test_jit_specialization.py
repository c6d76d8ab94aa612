"""Prefill-path kernels compile once per server, not once per batch shape.

Triton specialises every integer argument on ``x % 16 == 0`` and ``x == 1`` unless it is listed in
``do_not_specialize``, and each new combination is a compile of seconds in the middle of serving (the
first H100 agentic run: B's TTFT p50 moved between 167 and 1443 ms from one repeat to the next). Here
each entry point runs on two batches of different shapes with a hook on every launch; an integer
argument whose value differs between the two must be one the kernel does not specialise on.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from test_msa_indexer import make_batch
from test_msa_prefill import BLOCK, HEAD_DIM, make_case, ours

from sglang_msa.kernels.msa_indexer import indexer_prefill, quantize_index_k
from sglang_msa.kernels.msa_indexer import prefill as indexer_mod
from sglang_msa.kernels.msa_indexer import quant as index_quant_mod
from sglang_msa.kernels.msa_prefill import block_major, combine, query_major, reverse_map_counting, union_tile
from sglang_msa.kernels.qk_norm_rope import fused as qk_mod
from sglang_msa.kernels.qk_norm_rope import qk_norm_rope

KERNELS = {
    "block_major": block_major.block_major_fwd_kernel,
    "combine": combine.combine_kernel,
    "query_major": query_major.query_major_fwd_kernel,
    "union_tile": union_tile.union_tile_fwd_kernel,
    "indexer": indexer_mod._indexer_prefill_kernel,
    "indexer_merge": indexer_mod._indexer_merge_kernel,
    "index_k_store": index_quant_mod._quantize_index_k_kernel,
    "qk_norm_rope": qk_mod.qk_norm_rope_kernel,
    "rm_key_count": reverse_map_counting._key_count_kernel,
    "rm_scatter": reverse_map_counting._scatter_kernel,
    "rm_items": reverse_map_counting._items_kernel,
}


def not_specialized(kernel) -> set[str]:
    names = getattr(kernel, "do_not_specialize", None)
    if names is None:  # the interpreter keeps the decorator's arguments
        names = getattr(kernel, "kwargs", {}).get("do_not_specialize") or []
    params = list(inspect.signature(kernel.fn).parameters)
    return {params[n] if isinstance(n, int) else n for n in names}


def runtime_int_args(kernel, args, kwargs) -> dict[str, int]:
    params = inspect.signature(kernel.fn).parameters
    named = dict(zip(params, args), **kwargs)
    return {n: v for n, v in named.items()
            if isinstance(v, int) and not isinstance(v, bool) and "constexpr" not in str(params[n].annotation)}


@pytest.fixture
def launches():
    """{kernel name: [int args of each launch]} for the launches made while the fixture is active."""
    seen: dict[str, list[dict]] = {name: [] for name in KERNELS}
    hooks = []
    for name, kernel in KERNELS.items():
        def hook(*args, _name=name, _kernel=kernel, **kwargs):
            seen[_name].append(runtime_int_args(_kernel, args, kwargs))
        kernel.add_pre_run_hook(hook)
        hooks.append((kernel, hook))
    yield seen
    for kernel, hook in hooks:
        kernel.pre_run_hooks.remove(hook)


def assert_shape_stable(seen: dict[str, list[dict]], names: list[str]) -> None:
    for name in names:
        runs = seen[name]
        assert len(runs) >= 2, f"{name}: expected a launch per batch, got {len(runs)}"
        varying = {k for k in runs[0] if any(r[k] != runs[0][k] for r in runs[1:])}
        missing = varying - not_specialized(KERNELS[name])
        assert not missing, f"{name}: per-batch integer args {sorted(missing)} are specialised (a compile per shape)"


# Two batches whose sizes differ in the ways Triton looks at (42 vs 48 tokens, 5 vs 6 blocks, other
# prefixes), with the same longest sequence, so that the server-wide buffers (req_to_token, the KV
# pool) have the same shape in both, as they do in a server.
BATCHES = [dict(extends=[37, 5], prefixes=[20, 0]), dict(extends=[16, 32], prefixes=[41, 0])]


@pytest.mark.parametrize("method,kw,kernels", [
    ("block_major", {}, ["block_major", "combine"]),
    ("block_major", {"reverse_map": "counting"}, ["rm_key_count", "rm_scatter", "rm_items"]),
    ("query_major", {}, ["query_major"]),
    ("union_tile", {}, ["union_tile"]),
    ("union_tile", {"prefetch": 1}, ["union_tile"]),  # hand-pipelined K/V + precomputed multiplicities
    ("union_tile", {"prefetch": 2}, ["union_tile"]),  # block table in registers
])
def test_sparse_prefill_launches_do_not_specialize_on_batch_shape(launches, device, method, kw, kernels):
    for seed, b in enumerate(BATCHES):
        case = make_case(seed, num_q_heads=4, num_kv_heads=2, block_size=BLOCK, topk=3, page_size=1,
                         dtype=torch.float32, device=device, **b)
        out = torch.empty_like(case["q"])
        ours(case, BLOCK, 1, method, out, **kw)
    assert_shape_stable(launches, kernels)


@pytest.mark.parametrize("split_k,kernels", [(1, ["indexer"]), (2, ["indexer", "indexer_merge"])])
def test_indexer_prefill_launches_do_not_specialize_on_batch_shape(launches, device, split_k, kernels):
    for seed, (ext, pre) in enumerate((b["extends"], b["prefixes"]) for b in BATCHES):
        b = make_batch(ext, pre, num_heads=1, page_size=1, dtype=torch.float32, seed=seed, device=device,
                       head_dim=32)
        indexer_prefill(**b, block_size=BLOCK, topk=3, init_blocks=1, local_blocks=1, split_k=split_k)
    assert_shape_stable(launches, kernels)


def test_indexer_split_count_changing_with_the_batch_is_not_a_compile(launches, device):
    """The automatic split count (the default) follows each batch's grid: 16 for a short extend, 5 for a
    16k chunk on an H100, so S itself must not be specialised on (16 % 16 == 0 would be a new kernel)."""
    for seed, ((ext, pre), split) in enumerate(zip(((b["extends"], b["prefixes"]) for b in BATCHES), (3, 16))):
        b = make_batch(ext, pre, num_heads=1, page_size=1, dtype=torch.float32, seed=seed, device=device,
                       head_dim=32)
        indexer_prefill(**b, block_size=BLOCK, topk=3, init_blocks=1, local_blocks=1, split_k=split)
    assert {r["num_splits"] for r in launches["indexer"]} == {3, 16}
    assert_shape_stable(launches, ["indexer", "indexer_merge"])


def test_fp8_index_path_launches_do_not_specialize_on_batch_shape(launches, device):
    """The fp8 index-K store (every forward's new keys) and the fp8 prefill indexer."""
    for seed, (ext, pre) in enumerate((b["extends"], b["prefixes"]) for b in BATCHES):
        b = make_batch(ext, pre, num_heads=1, page_size=1, dtype=torch.float32, seed=seed, device=device,
                       head_dim=32)
        slots = b["idx_k_cache"].shape[0]  # server-wide buffers: the same shapes for both batches
        vals = torch.empty((slots, 1, 32), dtype=torch.float8_e4m3fn, device=device)
        scales = torch.empty(slots, device=device)
        new = b["cu_seqlens_q"][-1].item()
        quantize_index_k(b["idx_k_cache"][:new], vals, scales, torch.arange(new, device=device))
        quantize_index_k(b["idx_k_cache"][new:], vals, scales, torch.arange(new, vals.shape[0], device=device))
        indexer_prefill(**{**b, "idx_k_cache": vals}, idx_k_scale=scales, block_size=BLOCK, topk=3,
                        init_blocks=1, local_blocks=1)
    assert_shape_stable(launches, ["index_k_store", "indexer"])


def test_qk_norm_rope_launches_do_not_specialize_on_batch_shape(launches, device):
    for tokens in (37, 48):
        g = torch.Generator().manual_seed(tokens)
        x = torch.randn(tokens, 3 * HEAD_DIM, generator=g).to(device)
        w = torch.ones(HEAD_DIM, device=device)
        cache = torch.randn(256, 32, generator=g).to(device)
        pos = torch.randint(0, 256, (tokens,), generator=g).to(device)
        qk_norm_rope(x, 1, 1, 1, HEAD_DIM, w, w, cache, pos, eps=1e-6, gemma=False)
    assert_shape_stable(launches, ["qk_norm_rope"])


def test_indexer_size_class_changing_with_the_batch_is_not_a_compile(launches, device):
    """The autotuner's size class of the batch (rows_bucket) is a runtime argument the kernel ignores:
    a batch of another class is a new tuning on a GPU, never a new compile."""
    for seed, (ext, pre) in enumerate((([37, 5], [20, 0]), ([300], [7]))):
        b = make_batch(ext, pre, num_heads=1, page_size=1, dtype=torch.float32, seed=seed, device=device,
                       head_dim=32)
        indexer_prefill(**b, block_size=BLOCK, topk=3, init_blocks=1, local_blocks=1, split_k=1)
    assert [r["rows_bucket"] for r in launches["indexer"]] == [0, 1]
    assert "rows_bucket" in not_specialized(KERNELS["indexer"])  # (the two batches' r2t widths differ too)
