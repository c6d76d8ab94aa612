"""Index queries/keys whose top-k block selections look like a real model's, and selection statistics.

Two regimes for the MSA indexer's inputs (index queries ``[T, H_idx, D]`` and the one-head index keys
``[L, D]`` in sequence order):

- ``random_index_qk``: i.i.d. Gaussian queries and keys. Every query's block scores are independent,
  so top-k picks unrelated blocks for neighbouring tokens (neighbour Jaccard ~ topk / n_blocks) and
  the union of a 64-row query tile's blocks covers most of the causal context.
- ``smooth_index_qk``: a smooth part (a few sinusoids of position, periods of thousands of tokens,
  each with a random direction) plus i.i.d. noise, for keys and for each index head's queries.
  Neighbouring queries share their smooth part, so the scores they give every key are nearly the
  same and so is their top-k; the query noise (``noise``) sets how much of the selection's margin
  changes from one token to the next. The default is calibrated so that neighbouring rows share
  ~0.9 of their blocks (Jaccard) at 16k-1M contexts with top-16 of 128-token blocks, inside the
  range measured on real selection dumps of a comparable block-sparse model (vLLM issue #55394).
  The indexer's own top-k over these inputs is the "realistic" selection: init + local blocks are
  whatever the indexer forces (the model's own settings), the rest follow the coherent scores.

``selection_stats`` measures what matters for sparse prefill kernels: the neighbour-row Jaccard and
the mean union size of the blocks selected by one 64- or 128-row query tile (per KV/index head).
``reference_topk`` is a small torch reference of the indexer's selection (score = block max of q.k,
causal, forced init/local blocks) used to check the generators on the CPU.
"""

from __future__ import annotations

import math

import torch

# Query noise for a neighbour Jaccard of ~0.9 (top-16 of 128-token blocks, init 0 / local 1), measured on
# the CPU with ``python benchmarks/selections.py --noise ...`` (reference_topk, 256 rows x 2 heads x 3
# seeds): noise 0.02 gives 0.89-0.92 at every context from 16k to 512k (0.94 at 8k, ~0.88 at 1M);
# 0.03 gives 0.85-0.89, 0.01 gives 0.94-0.96.
DEFAULT_NOISE = 0.02
DEFAULT_KEY_SMOOTH = 0.5
COMPONENTS = 12
MIN_PERIOD, MAX_PERIOD = 2048.0, 262144.0


def _gen(seed: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def random_index_qk(num_keys: int, q_start: int, num_q: int, num_heads: int, head_dim: int, *, seed: int = 0,
                    device="cpu", dtype=torch.float32):
    """i.i.d. N(0, 1) index queries [num_q, H, D] (positions q_start..) and keys [num_keys, D]."""
    del q_start  # no positional structure
    g = _gen(seed, device)
    k = torch.randn(num_keys, head_dim, device=device, generator=g).to(dtype)
    q = torch.randn(num_q, num_heads, head_dim, device=device, generator=g).to(dtype)
    return q, k


def _smooth(positions: torch.Tensor, directions: torch.Tensor, periods: torch.Tensor, phases: torch.Tensor,
            rows: int = 1 << 16) -> torch.Tensor:
    """sum_j cos(2 pi p / period_j + phase_j) * direction_j, unit variance per dim: [P, D] fp32."""
    out = torch.empty(positions.numel(), directions.shape[1], device=positions.device, dtype=torch.float32)
    norm = math.sqrt(2.0 / directions.shape[0])
    for i in range(0, positions.numel(), rows):  # bounded temporaries at 1M positions
        p = positions[i:i + rows].to(torch.float64)[:, None]
        ang = (2 * math.pi * p / periods[None, :] + phases[None, :]).remainder(2 * math.pi)
        out[i:i + rows] = (torch.cos(ang).to(torch.float32) @ directions) * norm
    return out


def smooth_index_qk(num_keys: int, q_start: int, num_q: int, num_heads: int, head_dim: int, *, seed: int = 0,
                    noise: float = DEFAULT_NOISE, key_smooth: float = DEFAULT_KEY_SMOOTH,
                    components: int = COMPONENTS, device="cpu", dtype=torch.float32):
    """Coherent index queries [num_q, H, D] (positions q_start .. q_start + num_q - 1) and keys [num_keys, D].

    key(p)      = key_smooth * S_k(p) + sqrt(1 - key_smooth^2) * eps_k(p)
    query_h(p)  = sqrt(1 - noise^2) * S_h(p) + noise * eps_q(p, h)
    S(p) = sum of ``components`` sinusoids of position (periods log-uniform in [2k, 256k] tokens) with
    random Gaussian directions, unit variance per dimension. Deterministic in ``seed``.
    """
    if not 0.0 <= noise <= 1.0 or not 0.0 <= key_smooth <= 1.0:
        raise ValueError("noise and key_smooth must lie in [0, 1]")
    g = _gen(seed, "cpu")

    def process():
        dirs = torch.randn(components, head_dim, generator=g)
        periods = torch.exp(torch.empty(components, dtype=torch.float64).uniform_(
            math.log(MIN_PERIOD), math.log(MAX_PERIOD), generator=g))
        phases = torch.empty(components, dtype=torch.float64).uniform_(0, 2 * math.pi, generator=g)
        return dirs.to(device), periods.to(device), phases.to(device)

    key_proc = process()
    head_procs = [process() for _ in range(num_heads)]
    gd = _gen(seed + 1, device)
    kpos = torch.arange(num_keys, device=device)
    k = _smooth(kpos, *key_proc)
    k.mul_(key_smooth).add_(torch.randn(num_keys, head_dim, device=device, generator=gd),
                            alpha=math.sqrt(1 - key_smooth**2))
    qpos = torch.arange(q_start, q_start + num_q, device=device)
    q = torch.empty(num_q, num_heads, head_dim, device=device, dtype=torch.float32)
    for h, proc in enumerate(head_procs):
        q[:, h] = _smooth(qpos, *proc) * math.sqrt(1 - noise**2)
    q.add_(torch.randn(num_q, num_heads, head_dim, device=device, generator=gd), alpha=noise)
    return q.to(dtype), k.to(dtype)


def reference_topk(idx_q: torch.Tensor, idx_k: torch.Tensor, q_start: int, *, block_size: int, topk: int,
                   init_blocks: int, local_blocks: int, rows: int = 256) -> torch.Tensor:
    """Indexer selection in plain torch: int32 [H, T, topk], ascending, -1 padded.

    Score of (row, block) = max over the block's causal keys of q.k (fp32); blocks < init_blocks and the
    last local_blocks causal blocks are forced; ties are irrelevant here (continuous scores).
    """
    num_q, num_heads, _ = idx_q.shape
    keys = idx_k.float()
    out = torch.full((num_heads, num_q, topk), -1, dtype=torch.int32, device=idx_q.device)
    for t0 in range(0, num_q, rows):
        t1 = min(num_q, t0 + rows)
        pos = torch.arange(q_start + t0, q_start + t1, device=idx_q.device)
        seq = int(pos[-1]) + 1
        nb = math.ceil(seq / block_size)
        kk = keys[:seq]
        for h in range(num_heads):
            s = idx_q[t0:t1, h].float() @ kk.T  # [r, seq]
            s = s.masked_fill(torch.arange(seq, device=s.device)[None, :] > pos[:, None], float("-inf"))
            s = torch.nn.functional.pad(s, (0, nb * block_size - seq), value=float("-inf"))
            score = s.view(t1 - t0, nb, block_size).amax(-1)
            n_causal = pos // block_size + 1
            b = torch.arange(nb, device=s.device)[None, :]
            score = torch.where(b < init_blocks, torch.full_like(score, 1e30), score)
            score = torch.where((b >= n_causal[:, None] - local_blocks) & (b < n_causal[:, None]),
                                torch.full_like(score, 1e29), score)
            score = score.masked_fill(b >= n_causal[:, None], float("-inf"))
            k_eff = min(topk, nb)
            top = score.topk(k_eff, dim=-1)
            ids = torch.where(torch.isfinite(top.values), top.indices, torch.full_like(top.indices, 1 << 30))
            ids = ids.sort(-1).values
            ids = torch.where(ids >= (1 << 30), torch.full_like(ids, -1), ids)
            out[h, t0:t1, :k_eff] = ids.to(torch.int32)
    return out


def neighbour_jaccard(topk_idx: torch.Tensor, max_pairs: int = 8192) -> float | None:
    """Mean Jaccard of the block sets of consecutive rows (t, t+1), over heads and (sampled) pairs."""
    h, t, k = topk_idx.shape
    if t < 2:
        return None
    stride = max(1, (t - 1) // max_pairs)
    a = topk_idx[:, :-1:stride].long()
    b = topk_idx[:, 1::stride].long()
    n = min(a.shape[1], b.shape[1])
    a, b = a[:, :n], b[:, :n]
    va, vb = a >= 0, b >= 0
    inter = ((a[..., :, None] == b[..., None, :]) & va[..., :, None] & vb[..., None, :]).sum((-1, -2))
    union = va.sum(-1) + vb.sum(-1) - inter
    return float((inter.float() / union.clamp_min(1).float()).mean())


def tile_union(topk_idx: torch.Tensor, tile_rows: int, max_tiles: int = 1024) -> float | None:
    """Mean number of distinct blocks selected by the rows of one query tile (per head)."""
    h, t, k = topk_idx.shape
    n_tiles = t // tile_rows
    if n_tiles == 0:
        return None
    stride = max(1, n_tiles // max_tiles)
    ids = topk_idx[:, : n_tiles * tile_rows].reshape(h, n_tiles, tile_rows * k)[:, ::stride].long()
    s = ids.sort(-1).values
    new = torch.ones_like(s, dtype=torch.bool)
    new[..., 1:] = s[..., 1:] != s[..., :-1]
    return float((new & (s >= 0)).sum(-1).float().mean())


def selection_stats(topk_idx: torch.Tensor, tile_rows=(64, 128)) -> dict:
    """Neighbour Jaccard, mean union per query tile, mean selected blocks per row (topk_idx [H, T, K])."""
    out = {"neighbour_jaccard": neighbour_jaccard(topk_idx),
           "selected_per_row": float((topk_idx >= 0).sum(-1).float().mean())}
    for r in tile_rows:
        out[f"union_per_tile_{r}"] = tile_union(topk_idx, r)
    return out


def _calibrate():  # pragma: no cover - a tuning aid, run by hand
    import argparse
    import time

    ap = argparse.ArgumentParser(description="neighbour Jaccard / tile union of both generators")
    ap.add_argument("--contexts", default="8192,131072,524288")
    ap.add_argument("--noise", default=str(DEFAULT_NOISE), help="comma list of noise levels")
    ap.add_argument("--key-smooth", type=float, default=DEFAULT_KEY_SMOOTH)
    ap.add_argument("--rows", type=int, default=256)
    args = ap.parse_args()
    for ctx in [int(c) for c in args.contexts.split(",")]:
        for noise in [float(x) for x in args.noise.split(",")]:
            t0 = time.time()
            q, k = smooth_index_qk(ctx, ctx - args.rows, args.rows, 1, 128, noise=noise, key_smooth=args.key_smooth)
            sel = reference_topk(q, k, ctx - args.rows, block_size=128, topk=16, init_blocks=0, local_blocks=1)
            print(f"smooth ctx={ctx} noise={noise}: {selection_stats(sel)} ({time.time() - t0:.1f} s)", flush=True)
        q, k = random_index_qk(ctx, ctx - args.rows, args.rows, 1, 128)
        sel = reference_topk(q, k, ctx - args.rows, block_size=128, topk=16, init_blocks=0, local_blocks=1)
        print(f"random ctx={ctx}: {selection_stats(sel)}", flush=True)


if __name__ == "__main__":
    _calibrate()
