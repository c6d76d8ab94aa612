"""fp8 index-K store: quantize index keys to float8 e4m3 with one fp32 scale per token.

Layout (two tensors, both indexed by the KV pool's slot):
- values `[slots, 1, D]` torch.float8_e4m3fn (the index-K cache; may be a strided view),
- scales `[slots]` fp32, contiguous: key ~ values.float() * scale.
scale = absmax(row) / 448 (1 for an all-zero row); values = round-to-nearest-even(key * 448 / absmax).
`quantize_index_k` writes the rows of `out_cache_loc` the way a server stores each forward's new keys;
`quantize_index_k_torch` is the same in plain torch (the CPU fallback and the tests' reference).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .common import interpreting, quantize_rows_e4m3
from .naive import quantize_e4m3


@triton.jit(do_not_specialize=["n_rows", "stride_x"])
def _quantize_index_k_kernel(
    x_ptr, loc_ptr, val_ptr, scale_ptr, n_rows, stride_x, stride_v,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr, HAS_LOC: tl.constexpr,
):
    o_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, D_PAD)
    m_n = o_n < n_rows
    m_x = m_n[:, None] & (o_d[None, :] < HEAD_DIM)
    b_x = tl.load(x_ptr + o_n.to(tl.int64)[:, None] * stride_x + o_d[None, :], mask=m_x, other=0.0)
    b_val, b_scale = quantize_rows_e4m3(b_x)
    if HAS_LOC:
        o_slot = tl.load(loc_ptr + o_n, mask=m_n, other=0).to(tl.int64)
    else:
        o_slot = o_n.to(tl.int64)
    tl.store(val_ptr + o_slot[:, None] * stride_v + o_d[None, :], b_val, mask=m_x)
    tl.store(scale_ptr + o_slot, b_scale, mask=m_n)


def _check(k, out_values, out_scales, out_cache_loc):
    if k.dim() == 3:
        if k.shape[1] != 1:
            raise ValueError(f"index keys must be [N, 1, D] or [N, D], got {tuple(k.shape)}")
        k = k[:, 0]
    if out_values.dtype != torch.float8_e4m3fn or out_values.dim() != 3 or out_values.shape[1] != 1:
        raise ValueError("out_values must be a float8_e4m3fn [slots, 1, D] tensor")
    if out_values.shape[2] != k.shape[1] or k.stride(-1) != 1 or out_values.stride(-1) != 1:
        raise ValueError("head_dim mismatch, or a non-contiguous last dim")
    if out_scales.dtype != torch.float32 or out_scales.dim() != 1 or out_scales.stride(0) != 1:
        raise ValueError("out_scales must be a contiguous fp32 [slots] tensor")
    if out_cache_loc is not None and out_cache_loc.shape != (k.shape[0],):
        raise ValueError("out_cache_loc must be [N]")
    return k


def quantize_index_k(k: torch.Tensor, out_values: torch.Tensor, out_scales: torch.Tensor,
                     out_cache_loc: Optional[torch.Tensor] = None) -> None:
    """Store index keys k [N, 1, D] (or [N, D]; bf16/fp16/fp32) as e4m3 + scale at slots out_cache_loc [N]
    (None: slots 0..N-1). Launch only: no sync, no allocation (CUDA-graph safe for a fixed N)."""
    k = _check(k, out_values, out_scales, out_cache_loc)
    n, d = k.shape
    if n == 0:
        return
    if k.device.type == "cpu" and not interpreting():
        return quantize_index_k_torch(k, out_values, out_scales, out_cache_loc)
    block_n = 16 if interpreting() else 32
    loc = out_cache_loc if out_cache_loc is not None else out_scales  # unused when HAS_LOC is False
    _quantize_index_k_kernel[(triton.cdiv(n, block_n),)](
        k, loc, out_values, out_scales, n, k.stride(0), out_values.stride(0),
        HEAD_DIM=d, D_PAD=triton.next_power_of_2(d), BLOCK_N=block_n, HAS_LOC=out_cache_loc is not None,
        num_warps=4)


def quantize_index_k_torch(k: torch.Tensor, out_values: torch.Tensor, out_scales: torch.Tensor,
                           out_cache_loc: Optional[torch.Tensor] = None) -> None:
    """torch fallback of quantize_index_k (same bits)."""
    k = _check(k, out_values, out_scales, out_cache_loc)
    vals, scales = quantize_e4m3(k)
    loc = out_cache_loc.long() if out_cache_loc is not None else torch.arange(k.shape[0], device=k.device)
    out_values[loc, 0] = vals.to(out_values.device)
    out_scales[loc] = scales.to(out_scales.device)


def quantize_index_k_cache(idx_k_cache: torch.Tensor):
    """A whole bf16/fp16/fp32 index-K cache [slots, 1, D] -> (e4m3 values [slots, 1, D], fp32 scales [slots])."""
    slots, _, d = idx_k_cache.shape
    vals = torch.empty((slots, 1, d), dtype=torch.float8_e4m3fn, device=idx_k_cache.device)
    scales = torch.empty((slots,), dtype=torch.float32, device=idx_k_cache.device)
    quantize_index_k(idx_k_cache, vals, scales)
    return vals, scales
