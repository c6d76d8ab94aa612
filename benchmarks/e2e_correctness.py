"""GPU end-to-end check: SGLang's own MiniMax sparse path vs ``--attention-backend msa``.

Starts two SGLang servers on the same checkpoint, side by side on one GPU:
  A: SGLang's sparse backend (dense layers on ``triton``), SGLang's in-tree MiniMax-M3 class,
  B: ``--attention-backend msa`` (our indexer/prefill/decode kernels), our MiniMax-M3 class
     (``--models intree|ours`` puts the same class on both, so that only the backend differs),
greedy-decodes the same token-id prompts on both (long enough to be sparse, plus prompts that share
a prefix so B serves cached prefixes from the radix cache), and compares tokens and logprobs.
``--num-prompts N`` spaces N prompt lengths geometrically from ``--min-len`` to ``--max-len``;
``--fp32-reference`` then scores both servers' continuations with transformers' fp32 model of the same
checkpoint (``benchmarks/reference_fp32.py``) once the servers are stopped: issue #14's comparison,
``logprob_gap_vs_fp32_ours_over_intree`` = B's mean |dlogp| to fp32 over A's (A in-tree, B ours), with
how many prompts each is closer on and a 95% bootstrap interval over prompts (``logprob_gap_ci95``).
Writes ``e2e-correctness-<card>-<date>.json`` with a ``summary`` object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.servers import Server, generate, start_all_or_exit, stop_and_record  # noqa: E402


def card_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - reporting only
        return "unknown"


def versions() -> dict:
    out = {}
    for mod in ("sglang", "torch", "triton", "sglang_msa"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001 - reporting only
            out[mod] = f"unavailable: {exc!r}"
    return out


def make_prompts(lengths: list[int], vocab: int, seed: int) -> list[tuple[str, list[int]]]:
    rng = random.Random(seed)
    lo = 16  # keep clear of special tokens
    prompts = []
    for n in lengths:
        prompts.append((f"random-{n}", [rng.randrange(lo, vocab) for _ in range(n)]))
    # Prefix reuse: same first half as the longest prompt, new second half (radix-cache hit on B).
    base = prompts[-1][1]
    half = len(base) // 2
    prompts.append((f"shared-prefix-{len(base)}", base[:half] + [rng.randrange(lo, vocab) for _ in range(len(base) - half)]))
    return prompts


def greedy_divergence(tokens_a: list, tokens_b: list, logprobs_a: list, logprobs_b: list) -> dict:
    """Where two greedy continuations first differ, and the largest logprob gap up to there."""
    n = min(len(tokens_a), len(tokens_b))
    first_diff = next((i for i in range(n) if tokens_a[i] != tokens_b[i]), None)
    upto = n if first_diff is None else first_diff + 1  # the first diverging step is still comparable
    diffs = [abs(x - y) for x, y in zip(logprobs_a[:upto], logprobs_b[:upto])]
    return {
        "exact_match": tokens_a == tokens_b,
        "first_divergence": first_diff,
        "max_logprob_abs_diff": max(diffs) if diffs else None,
        "tokens_a": tokens_a, "tokens_b": tokens_b,
    }


def agreement(rows: list[dict]) -> dict:
    """The summary's agreement figures over the prompts that got both answers."""
    ok_rows = [r for r in rows if "error" not in r]
    diffs = [r["max_logprob_abs_diff"] for r in ok_rows if r["max_logprob_abs_diff"] is not None]
    return {
        "greedy_exact_match_fraction": (sum(r["exact_match"] for r in ok_rows) / len(ok_rows)) if ok_rows else 0.0,
        "max_logprob_abs_diff": max(diffs) if diffs else None,
    }


def prompt_lengths(num: int, lo: int, hi: int) -> list[int]:
    """``num`` lengths from ``lo`` to ``hi``, geometrically spaced (distinct, ascending)."""
    if num < 1 or not 1 <= lo <= hi:
        raise ValueError(f"need num >= 1 and 1 <= min-len <= max-len (got {num}, {lo}, {hi})")
    if num == 1:
        return [hi]
    out = sorted({round(lo * (hi / lo) ** (i / (num - 1))) for i in range(num)})
    return out


def reference_summary(rows: list[dict], models: str) -> dict:
    """Per server: mean / max |dlogp| to the fp32 reference over every scored token, and the fraction
    of prompts whose whole greedy continuation is the reference's argmax at each step."""
    out: dict = {"mean_abs_dlogp_vs_fp32": {}, "max_abs_dlogp_vs_fp32": {}, "greedy_equals_fp32_fraction": {},
                 "fp32_scored_prompts": sum(1 for r in rows if r.get("fp32_a"))}
    for s in ("a", "b"):
        # (comparison, tokens scored) of the rows with a scored continuation, kept together
        scored = [(r[f"fp32_{s}"], len(r[f"tokens_{s}"])) for r in rows
                  if r.get(f"fp32_{s}") and r[f"fp32_{s}"]["mean_abs_dlogp"] is not None]
        if not scored:
            continue
        refs = [x for x, _ in scored]
        total = sum(x["mean_abs_dlogp"] * k for x, k in scored)
        out["mean_abs_dlogp_vs_fp32"][s.upper()] = total / sum(k for _, k in scored)
        out["max_abs_dlogp_vs_fp32"][s.upper()] = max(x["max_abs_dlogp"] for x in refs)
        out["greedy_equals_fp32_fraction"][s.upper()] = sum(x["greedy_equals_reference"] for x in refs) / len(refs)
    m = out["mean_abs_dlogp_vs_fp32"]
    out["logprob_gap_vs_fp32_ours_over_intree"] = (m["B"] / m["A"] if models == "mixed" and m.get("A")
                                                   and "B" in m else None)
    if out["logprob_gap_vs_fp32_ours_over_intree"] is not None:
        out.update(paired_gap(rows))
    return out


def paired_gap(rows: list[dict], draws: int = 4000, seed: int = 0) -> dict:
    """How far the gap's distance from 1 is from noise: per prompt scored on both servers, which one
    is closer to fp32, and a 95% bootstrap interval of the token-weighted gap (prompts resampled
    with replacement; a fixed seed, so the same rows give the same interval)."""
    # per prompt: (A's mean |dlogp|, A's tokens, B's mean, B's tokens)
    pairs = [(r["fp32_a"]["mean_abs_dlogp"], len(r["tokens_a"]), r["fp32_b"]["mean_abs_dlogp"], len(r["tokens_b"]))
             for r in rows if r.get("fp32_a") and r.get("fp32_b")
             and r["fp32_a"]["mean_abs_dlogp"] is not None and r["fp32_b"]["mean_abs_dlogp"] is not None
             and r["tokens_a"] and r["tokens_b"]]
    out = {"prompts_ours_closer_to_fp32": sum(mb < ma for ma, _, mb, _ in pairs),
           "prompts_intree_closer_to_fp32": sum(ma < mb for ma, _, mb, _ in pairs),
           "logprob_gap_ci95": None}
    if len(pairs) < 2:
        return out
    rng = random.Random(seed)
    gaps = []
    for _ in range(draws):
        pick = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        # token-weighted means of the resample, as reference_summary weights the whole set
        a = sum(ma * ka for ma, ka, _, _ in pick) / sum(ka for _, ka, _, _ in pick)
        b = sum(mb * kb for _, _, mb, kb in pick) / sum(kb for _, _, _, kb in pick)
        if a > 0:
            gaps.append(b / a)
    gaps.sort()
    if gaps:
        out["logprob_gap_ci95"] = [gaps[int(0.025 * (len(gaps) - 1))], gaps[int(0.975 * (len(gaps) - 1))]]
    return out


def reference_order(scored: list[tuple], min_len: int = 0) -> list[tuple]:
    """The (row, prompt ids, reply A, reply B) tuples the fp32 reference scores, in its order: the
    shortest first (most prompts by a deadline), none shorter than ``min_len`` tokens (a call that
    scores only the lengths an earlier one did not reach)."""
    return sorted((x for x in scored if len(x[1]) >= min_len), key=lambda x: len(x[1]))


def resummarize(path: Path, models: str) -> dict:
    """The reference part of an existing results file's summary computed again from its rows (no
    GPU): a summary field added after the run reaches the file the run wrote, which keeps its name."""
    results = json.loads(path.read_text())
    results["summary"].update(reference_summary(results["prompts"], models))
    results.setdefault("resummarized", []).append({"date": date.today().isoformat(),
                                                   "command": " ".join(sys.argv)})
    path.write_text(json.dumps(results, indent=1))
    return results["summary"]


def compare(a: dict, b: dict) -> dict:
    return {
        **greedy_divergence(a["output_ids"], b["output_ids"], a["logprobs"], b["logprobs"]),
        "latency_a_s": a["latency_s"], "latency_b_s": b["latency_s"],
        "cached_tokens_b": b.get("cached_tokens"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", default=None, help="the checkpoint both servers load (required unless "
                    "--resummarize)")
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--prompt-lens", default="3000,9000,17000")
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--page-size", type=int, default=128)
    ap.add_argument("--context-length", type=int, default=65536)
    ap.add_argument("--mem-fraction", type=float, default=0.35)
    ap.add_argument("--kv-tokens", type=int, default=0, help="--max-total-tokens of both servers (default: "
                    "twice --context-length): both get the same pool whichever starts first")
    ap.add_argument("--name", default="", help="suffix of the results file (a second run of one day keeps "
                    "the first one's file)")
    ap.add_argument("--cuda-graph", choices=["on", "off"], default="on", help="for server B")
    ap.add_argument("--health-timeout", type=float, default=420)
    ap.add_argument("--models", choices=["mixed", "intree", "ours"], default="mixed",
                    help="MiniMax-M3 classes: mixed = A SGLang's in-tree, B ours (the issue's pairing); "
                         "intree / ours = the same classes on both servers, so only the backend differs")
    ap.add_argument("--num-prompts", type=int, default=0, help="N prompt lengths from --min-len to --max-len "
                    "(geometric) instead of --prompt-lens")
    ap.add_argument("--min-len", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=65536)
    ap.add_argument("--fp32-reference", action="store_true", help="score both servers' continuations with "
                    "transformers' fp32 model of the checkpoint after the servers stop (reference_fp32.py)")
    ap.add_argument("--reference-chunk", type=int, default=256)
    ap.add_argument("--reference-min-len", type=int, default=0, help="score only prompts of at least this many "
                    "tokens against fp32 (e.g. the lengths an earlier call's deadline did not reach)")
    ap.add_argument("--reference-deadline-s", type=float, default=0, help="stop fp32 scoring this many "
                    "seconds after start (shortest prompts are scored first; the results say how many were); "
                    "0 = no limit")
    ap.add_argument("--log-dir", default="/tmp/e2e-logs")
    ap.add_argument("--port-base", type=int, default=30000, help="A listens here, B on the next port")
    ap.add_argument("--resummarize", type=Path, default=None, help="no GPU: compute the fp32-reference part "
                    "of this results file's summary again from its rows, in place")
    args = ap.parse_args(argv)
    if args.resummarize:
        print(json.dumps(resummarize(args.resummarize, args.models), indent=1))
        return 0
    if not args.model_path:
        ap.error("--model-path is required")
    t_start = time.time()

    cfg = json.loads((Path(args.model_path) / "config.json").read_text())
    vocab = int(cfg.get("vocab_size") or cfg.get("text_config", {}).get("vocab_size"))
    common = ["--model-path", args.model_path, "--context-length", str(args.context_length),
              "--mem-fraction-static", str(args.mem_fraction), "--page-size", str(args.page_size),
              "--max-running-requests", "8", "--chunked-prefill-size", "8192",
              "--max-total-tokens", str(args.kv_tokens or 2 * args.context_length)]
    env_a = {"SGLANG_MSA_MODELS": "1" if args.models == "ours" else "0"}
    env_b = {"SGLANG_MSA_MODELS": "0" if args.models == "intree" else "1"}
    a = Server("A-sglang-sparse", args.port_base, [*common, "--attention-backend", "triton",
                                          "--disable-cuda-graph"], env=env_a)
    b_flags = [*common, "--attention-backend", "msa"]
    if args.cuda_graph == "off":
        b_flags.append("--disable-cuda-graph")
    else:
        b_flags += ["--cuda-graph-max-bs", "8"]
    b = Server("B-msa", args.port_base + 1, b_flags, env=env_b)
    log_dir = Path(args.log_dir)
    results = {"card": card_name(), "date": date.today().isoformat(), "command": " ".join(sys.argv),
               "versions": versions(), "models": args.models, "servers": {}, "prompts": []}
    failed = 0
    scored: list[tuple] = []
    try:
        lens = (prompt_lengths(args.num_prompts, args.min_len, min(args.max_len, args.context_length - args.new_tokens - 8))
                if args.num_prompts else [int(x) for x in args.prompt_lens.split(",")])
        start_all_or_exit((a, b), log_dir, args.health_timeout, results["servers"],
                          min_pool_tokens=max(lens) + args.new_tokens)
        for name, ids in make_prompts(lens, vocab, args.seed):
            with ThreadPoolExecutor(2) as pool:
                fa = pool.submit(generate, a, ids, args.new_tokens)
                fb = pool.submit(generate, b, ids, args.new_tokens)
                try:
                    ra, rb = fa.result(), fb.result()
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    failed += 1
                    results["prompts"].append({"name": name, "len": len(ids), "error": repr(exc)})
                    print(f"{name}: request failed: {exc!r}", flush=True)
                    continue
            row = {"name": name, "len": len(ids), **compare(ra, rb)}
            results["prompts"].append(row)
            scored.append((row, ids, ra, rb))
            print(f"{name:>22} len={len(ids):>6} exact={row['exact_match']!s:>5} "
                  f"first_div={row['first_divergence']} max|dlogp|={row['max_logprob_abs_diff']}", flush=True)
    finally:
        stop_and_record((a, b), results["servers"])
    if args.fp32_reference and scored:
        from benchmarks import reference_fp32

        model = reference_fp32.load(args.model_path)
        results["fp32_reference"] = ("transformers' minimax_m3_vl text model in fp32 on the same checkpoint, "
                                     f"prompt in {args.reference_chunk}-token chunks through its DynamicCache, "
                                     "teacher-forced on each server's own continuation"
                                     + (f"; prompts of {args.reference_min_len}+ tokens only"
                                        if args.reference_min_len else ""))
        results["fp32_scored_prompts"] = None  # set below
        n_ref = 0
        for row, ids, ra, rb in reference_order(scored, args.reference_min_len):
            if args.reference_deadline_s and time.time() - t_start > args.reference_deadline_s:
                break
            t_row = time.time()
            refs = {}  # identical continuations are scored once
            for s, r in (("a", ra), ("b", rb)):
                key = tuple(r["output_ids"])
                if key not in refs:
                    refs[key] = reference_fp32.score(model, ids, r["output_ids"], chunk=args.reference_chunk)
                row[f"fp32_{s}"] = reference_fp32.compare_to_reference(r["logprobs"], r["output_ids"], refs[key])
            n_ref += 1
            row["fp32_s"] = round(time.time() - t_row, 2)  # what a later call can plan with
            print(f"{row['name']:>22} fp32 |dlogp| mean A {row['fp32_a']['mean_abs_dlogp']} "
                  f"B {row['fp32_b']['mean_abs_dlogp']} ({row['fp32_s']} s)", flush=True)
        results["fp32_scored_prompts"] = n_ref
        del model

    results["summary"] = {
        "card": results["card"],
        **agreement(results["prompts"]),
        "cuda_graph": args.cuda_graph == "on",
        "failed_requests": failed,
        "prompt_tokens": [r["len"] for r in results["prompts"]],
        "prompts": len(results["prompts"]),
        **(reference_summary(results["prompts"], args.models) if args.fp32_reference else {}),
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    card = results["card"].replace(" ", "-")
    path = out_dir / f"e2e-correctness-{card}-{results['date']}{'-' + args.name if args.name else ''}.json"
    path.write_text(json.dumps(results, indent=1))
    print(json.dumps(results["summary"], indent=1))
    print(f"wrote {path}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
