"""plan(): the host_lens path (SGLang's host copies, no readback) and the device-readback path build the
same plan, whose tables match their definition and reach the kernels as aligned, contiguous int32."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sglang_msa.kernels.msa_prefill import plan

EXTENDS = [37, 1, 130]  # odd sizes, one single-token extend, one over two tiles / segments
PREFIXES = [30, 129, 0]  # off the block grid, one without prefix
TABLES = ("token_pos", "token_req", "seq_lens", "block_req", "block_local", "token_key_base",
          "tile_start", "tile_len", "tile_req")
WORKSPACES = ("ws_o", "ws_lse")  # uninitialised: shape and dtype only
SEG = 48  # several key segments per batch


def make_plan(method, page_size, device, host):
    lens = [p + e for p, e in zip(PREFIXES, EXTENDS)]
    cu = torch.tensor([0, 37, 38, 168], dtype=torch.int32, device=device)
    return plan(
        cu, torch.tensor(lens, dtype=torch.int64, device=device), torch.tensor(PREFIXES, dtype=torch.int32, device=device),
        torch.tensor([4, 0, 2], dtype=torch.int64, device=device),
        num_q_heads=8, num_kv_heads=2, head_dim=128, topk=4, block_size=64, page_size=page_size, method=method,
        dtype=torch.float16, seg_tokens=SEG, tile_tokens=16, host_lens=(EXTENDS, lens, PREFIXES) if host else None,
    )  # fmt: skip


def expected_tables(method, block_size=64, tile_tokens=16):
    """The tables by their definition, one request / token at a time."""
    lens = [p + e for p, e in zip(PREFIXES, EXTENDS)]
    starts = [sum(EXTENDS[:r]) for r in range(len(EXTENDS))]
    want = {
        "token_pos": [pos for p, n in zip(PREFIXES, lens) for pos in range(p, n)],
        "token_req": [r for r, e in enumerate(EXTENDS) for _ in range(e)],
        "seq_lens": lens,
    }
    blocks = [-(-n // block_size) for n in lens]
    if method == "block_major":
        first_block = [sum(blocks[:r]) for r in range(len(blocks))]
        want["block_req"] = [r for r, nb in enumerate(blocks) for _ in range(nb)]
        want["block_local"] = [i for nb in blocks for i in range(nb)]
        want["token_key_base"] = [(t // SEG) * sum(blocks) + first_block[r] for t, r in enumerate(want["token_req"])]
    else:
        tiles = [(t, min(tile_tokens, s + e - t), r)
                 for r, (s, e) in enumerate(zip(starts, EXTENDS)) for t in range(s, s + e, tile_tokens)]
        want["tile_start"], want["tile_len"], want["tile_req"] = (list(c) for c in zip(*tiles))
    return want


@pytest.mark.parametrize("page_size", [1, 128])
@pytest.mark.parametrize("method", ["block_major", "union_tile"])
def test_host_lens_and_readback_build_the_same_plan(method, page_size, device):
    from_host = make_plan(method, page_size, device, host=True)
    read_back = make_plan(method, page_size, device, host=False)
    for field in dataclasses.fields(from_host):
        a, b = getattr(from_host, field.name), getattr(read_back, field.name)
        if isinstance(b, torch.Tensor):
            assert (a.dtype, a.shape, a.device) == (b.dtype, b.shape, b.device), field.name
            assert field.name in WORKSPACES or torch.equal(a, b), field.name
        else:  # scalars, and None for the other method's tables and the maps (no topk_idx bound)
            assert a == b, field.name


@pytest.mark.parametrize("host", [True, False])
@pytest.mark.parametrize("method", ["block_major", "union_tile"])
def test_plan_tables_values_dtypes_and_layout(method, host, device):
    p = make_plan(method, 128, device, host)
    want = expected_tables(method)
    for name in TABLES:
        t = getattr(p, name)
        if name not in want:
            assert t is None, name
            continue
        assert t.dtype == torch.int32 and t.is_contiguous() and t.device.type == device, name
        assert t.data_ptr() % 16 == 0, f"{name}: Triton specialises pointers on 16-byte alignment"
        assert t.tolist() == want[name], name
    assert p.req_pool_indices.dtype == torch.int64 and p.req_pool_indices.tolist() == [4, 0, 2]
    assert p.paged_block  # page 128 over block 64


def test_int64_pool_indices_on_the_device_are_not_copied(device):
    pool = torch.tensor([1, 0], dtype=torch.int64, device=device)
    p = plan(torch.tensor([0, 2, 5], dtype=torch.int32, device=device), torch.tensor([2, 3], device=device),
             torch.tensor([0, 0], device=device), pool, num_q_heads=2, num_kv_heads=1, head_dim=128, topk=2,
             block_size=16, method="block_major", host_lens=([2, 3], [2, 3], [0, 0]))
    assert p.req_pool_indices is pool
