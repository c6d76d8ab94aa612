"""Which checkpoint tensors each SGLang parameter is built from, and a parameter-by-parameter check
of a loaded (or meta-device) model against them. Plain helpers without side effects, so test modules
and their script-mode subprocesses can import them."""

from __future__ import annotations

import re


def tensors_for(param: str, ck: dict, rules: list, prefix: str = ""):
    """(tensor, checkpoint names) a parameter should hold, by the first matching rule.

    A rule is ``(pattern, how, sources)``: ``how`` is ``same`` (one tensor), ``cat`` (the sources
    concatenated; a source ending in ``?`` only when present) or ``experts13`` / ``experts2`` (the
    per-expert ``w1``+``w3`` or ``w2`` tensors under the source prefix, stacked). ``prefix`` goes
    before every source name. A missing checkpoint tensor raises KeyError."""
    import torch

    for pattern, how, sources in rules:
        m = re.match(pattern, param)
        if not m:
            continue
        names = [prefix + m.expand(s.rstrip("?")) for s in sources]
        if how == "same":
            return ck[names[0]], names
        if how == "cat":
            used = [n for n, s in zip(names, sources) if n in ck or not s.endswith("?")]
            return torch.cat([ck[n] for n in used]), used
        base = names[0] + "."  # experts: stack the per-expert tensors (w13 = [gate; up])
        n_experts = len({k for k in ck if k.startswith(base) and k.endswith(".w2.weight")})
        per_expert = ("w1", "w3") if how == "experts13" else ("w2",)
        parts = [[f"{base}{j}.{w}.weight" for w in per_expert] for j in range(n_experts)]
        return torch.stack([torch.cat([ck[n] for n in p]) for p in parts]), [n for p in parts for n in p]
    raise AssertionError(param)


def match_params(params: dict, ck: dict, expected, *, values: bool, skip=None):
    """Each parameter against ``expected(name, ck) -> (tensor, names)``: (mismatched, used checkpoint
    names, missing). ``values``: compare contents too (else shapes only, for meta-device models);
    ``skip(name)``: parameters that have no checkpoint source by design."""
    import torch

    mismatched, used, missing = [], set(), []
    for name, param in params.items():
        if skip is not None and skip(name):
            continue
        try:
            want, names = expected(name, ck)
        except KeyError as e:
            missing.append(f"{name}: {e}")
            continue
        used.update(names)
        if tuple(want.shape) != tuple(param.shape):
            mismatched.append(f"{name}: {tuple(param.shape)} vs checkpoint {tuple(want.shape)}")
        elif values and not torch.equal(param.detach().float(), want.float()):
            mismatched.append(name)
    return mismatched, used, missing
