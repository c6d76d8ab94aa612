"""fp32 reference log-probabilities of a checkpoint, from transformers' MiniMax-M3 (issue #14).

``e2e_correctness.py --fp32-reference`` asks how close each server's greedy continuation is to the
same checkpoint in fp32: for every continuation token, log p(token | prompt + earlier tokens) under
transformers' ``minimax_m3_vl`` text model (``sglang_msa_tools.tiny_m3.load_transformers_model``),
teacher-forced on the server's own tokens, and the reference's argmax at that step.

The prompt goes in chunks through transformers' ``DynamicCache`` (chunked equals one pass: checked in
``tests/test_reference_fp32.py``): its eager attention and indexer hold ``heads x chunk x context``
fp32 scores, 4 GiB per step for 64 heads, a 256-token chunk and 64k of context, where one pass over
64k tokens would need 64k x 64k per head.
"""

from __future__ import annotations

import torch


def load(model_path: str, device: str | None = None):
    """transformers' fp32 model of a tiny_m3 checkpoint, on ``device`` (default: CUDA when present)."""
    from sglang_msa_tools.tiny_m3 import load_transformers_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load_transformers_model(model_path, dtype=torch.float32).to(device).eval()


@torch.no_grad()
def score(model, prompt: list[int], continuation: list[int], chunk: int = 256) -> dict:
    """Teacher-forced fp32 scoring: ``{"logprobs": [...], "argmax": [...]}``, one entry per continuation
    token (its log-probability after prompt + the tokens before it, and the reference's greedy pick
    there)."""
    from transformers import DynamicCache

    if not prompt:
        raise ValueError("an empty prompt has nothing to condition on")
    if not continuation:
        return {"logprobs": [], "argmax": []}
    device = next(model.parameters()).device
    ids = torch.tensor(prompt + continuation[:-1], dtype=torch.long, device=device)
    first = len(prompt) - 1  # the position whose logits predict continuation[0]
    cache = DynamicCache(config=model.config)
    rows = []
    for start in range(0, len(ids), chunk):
        x = ids[start:start + chunk]
        pos = torch.arange(start, start + len(x), device=device)
        lo = max(first - start, 0)  # logits this chunk must keep (the rest only fill the cache)
        keep = len(x) - lo if lo < len(x) else 1
        logits = model(x[None], past_key_values=cache, use_cache=True, position_ids=pos[None],
                       logits_to_keep=keep).logits[0]
        if lo < len(x):
            rows.append(torch.log_softmax(logits[-keep:].float(), dim=-1))
    lsm = torch.cat(rows)
    target = torch.tensor(continuation, dtype=torch.long, device=device)
    return {"logprobs": lsm.gather(1, target[:, None])[:, 0].tolist(), "argmax": lsm.argmax(-1).tolist()}


def compare_to_reference(logprobs: list[float], tokens: list[int], ref: dict) -> dict:
    """How far a server's continuation is from the fp32 reference on the same tokens."""
    diffs = [abs(a - b) for a, b in zip(logprobs, ref["logprobs"])]
    return {
        "mean_abs_dlogp": sum(diffs) / len(diffs) if diffs else None,
        "max_abs_dlogp": max(diffs) if diffs else None,
        "greedy_equals_reference": list(tokens) == list(ref["argmax"]),
        "first_step_off_reference": next((i for i, (t, r) in enumerate(zip(tokens, ref["argmax"])) if t != r),
                                         None),
    }
