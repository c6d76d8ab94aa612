"""qk_norm_rope (per-head RMSNorm + partial NeoX RoPE of q/k, v packing, one launch) vs its fp32
reference (tests/test_m3_model.py checks the reference against the unfused path with SGLang's modules).

CPU: fp32/fp16 under the Triton interpreter. GPU: bf16 at M3's shapes (64/4/4 heads of 128, rotary
64) against the reference, rounding or not between the norm and the rotation.
"""

from __future__ import annotations

import pytest
import torch

from sglang_msa.kernels.qk_norm_rope import naive_qk_norm_rope, qk_norm_rope


def rope_cache(max_pos: int, rotary_dim: int, base: float = 10000.0) -> torch.Tensor:
    inv = 1.0 / base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim)
    freqs = torch.arange(max_pos, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def make_case(tokens, heads, head_dim, rotary_dim, dtype, device, seed, pad_cols=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(heads)
    # A column slice of a wider buffer, as when q/k/v come out of one fused projection.
    wide = torch.randn(tokens, total * head_dim + pad_cols, generator=g) * 3 + 0.5
    x = wide.to(dtype=dtype, device=device)[:, :total * head_dim]
    wq = (torch.randn(head_dim, generator=g) * 0.3).to(dtype=dtype, device=device)
    wk = (torch.randn(head_dim, generator=g) * 0.3).to(dtype=dtype, device=device)
    cache = rope_cache(4096, rotary_dim).to(device)
    positions = torch.randint(0, 4096, (tokens,), generator=g).to(device)
    return x, wq, wk, cache, positions


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-5), (torch.float16, 2e-3)])
@pytest.mark.parametrize("tokens,heads,head_dim,rotary_dim,gemma", [
    (37, (5, 2, 2), 96, 32, True),  # head_dim not a power of two, odd token count
    (16, (3, 1, 0), 64, 64, False),  # full rotation, no v heads (index branch without value)
    (1, (2, 1, 1), 48, 16, True),  # one token (decode)
    (50, (4, 1, 1), 128, 64, True),  # M3's head and rotary sizes
])
def test_qk_norm_rope_matches_naive(device, nan_like, dtype, atol, tokens, heads, head_dim, rotary_dim, gemma):
    for seed in (0, 1):
        x, wq, wk, cache, pos = make_case(tokens, heads, head_dim, rotary_dim, dtype, device, seed, pad_cols=40)
        assert tokens == 1 or not x.is_contiguous()
        out = tuple(nan_like((tokens, n * head_dim), dtype=dtype, device=device) if n else None for n in heads)
        q, k, v = qk_norm_rope(x, *heads, head_dim, wq, wk, cache, pos, eps=1e-6, gemma=gemma, out=out)
        assert q is out[0] and k is out[1] and v is out[2]
        rq, rk, rv = naive_qk_norm_rope(x, *heads, head_dim, wq, wk, cache, pos, eps=1e-6, gemma=gemma)
        torch.testing.assert_close(q, rq, atol=atol, rtol=atol)
        torch.testing.assert_close(k, rk, atol=atol, rtol=atol)
        if heads[2]:
            torch.testing.assert_close(v, rv, atol=0, rtol=0)  # a copy: exact
        else:
            assert v is None and rv is None


def test_qk_norm_rope_rotates_only_the_rotary_channels(device):
    x, wq, wk, cache, pos = make_case(9, (2, 1, 0), 64, 16, torch.float32, device, seed=3)
    q, _, _ = qk_norm_rope(x, 2, 1, 0, 64, wq, wk, cache, pos, eps=1e-6, gemma=True)
    zero = torch.zeros_like(pos)
    q0, _, _ = qk_norm_rope(x, 2, 1, 0, 64, wq, wk, cache, zero, eps=1e-6, gemma=True)  # position 0: identity
    heads, heads0 = q.view(9, 2, 64), q0.view(9, 2, 64)
    torch.testing.assert_close(heads[..., 16:], heads0[..., 16:], atol=0, rtol=0)
    assert (heads[..., :16] - heads0[..., :16]).abs().max() > 1e-2
    # Rotation keeps each pair's norm.
    pair = lambda h: h[..., :8] ** 2 + h[..., 8:16] ** 2  # noqa: E731
    torch.testing.assert_close(pair(heads), pair(heads0), atol=1e-4, rtol=1e-4)


def test_qk_norm_rope_rejects_bad_shapes(device):
    x, wq, wk, cache, pos = make_case(4, (2, 1, 1), 32, 16, torch.float32, device, seed=0)
    with pytest.raises(ValueError, match="unit column stride|x must be"):
        qk_norm_rope(x[:, ::2], 2, 1, 1, 16, wq, wk, cache, pos, eps=1e-6, gemma=True)
    with pytest.raises(ValueError, match="rotary_dim"):
        qk_norm_rope(x, 2, 1, 1, 32, wq, wk, rope_cache(64, 48), pos, eps=1e-6, gemma=True)
    with pytest.raises(ValueError, match="positions"):
        qk_norm_rope(x, 2, 1, 1, 32, wq, wk, cache, pos[:3], eps=1e-6, gemma=True)
    with pytest.raises(ValueError, match="out tensors"):
        qk_norm_rope(x, 2, 1, 1, 32, wq, wk, cache, pos, eps=1e-6, gemma=True,
                     out=(torch.empty(4, 64), torch.empty(4, 32), None))


@pytest.mark.gpu
@pytest.mark.parametrize("gemma", [True, False])
def test_qk_norm_rope_bf16_at_m3_shapes(nan_like, gemma):
    """M3's shapes in bf16 (64/4/4 heads of 128, rotary 64, a 3001-token prefill chunk): within one bf16
    rounding step of the reference that rounds where the unfused pipeline rounds, and close to the
    one that does not."""
    tokens, heads, head_dim, rotary_dim = 3001, (64, 4, 4), 128, 64
    x, wq, wk, cache, pos = make_case(tokens, heads, head_dim, rotary_dim, torch.bfloat16, "cuda", seed=2,
                                      pad_cols=256)
    out = tuple(nan_like((tokens, n * head_dim), dtype=torch.bfloat16, device="cuda") for n in heads)
    q, k, v = qk_norm_rope(x, *heads, head_dim, wq, wk, cache, pos, eps=1e-6, gemma=gemma, out=out)
    for round_between in (True, False):
        rq, rk, rv = naive_qk_norm_rope(x, *heads, head_dim, wq, wk, cache, pos, eps=1e-6, gemma=gemma,
                                        round_between=round_between)
        for ours, ref in ((q, rq), (k, rk)):
            err = (ours.float() - ref.float()).abs().view(tokens, -1, head_dim)
            ref = ref.float().view(tokens, -1, head_dim)
            head_max = ref.abs().amax(-1, keepdim=True)
            if round_between:  # the same roundings; fp32 noise may flip the last one or, rarely, the middle one
                assert (err <= 2 ** -7 * ref.abs() + 2 ** -8 * head_max).all(), err.max().item()
                assert (err > 0).float().mean().item() < 0.02
            else:  # one rounding fewer: within a bf16 step of the head's largest value
                assert (err <= 2 ** -6 * head_max).all(), err.max().item()
        torch.testing.assert_close(v, rv, atol=0, rtol=0)
