"""Which SGLang serving features ``--attention-backend msa`` supports, checked at server start.

One table (:data:`FEATURES`): each feature is ``supported`` or ``rejected``, with the reason and a
check. :func:`check_server_args` runs every check for a server that picked ``msa`` and serves a
MiniMax sparse model (M3 / M3-VL); a rejected feature raises :class:`MSAUnsupportedFeature`
naming the flag, why, and what to do instead. Servers that did not pick ``msa`` are never checked,
and neither are other models served with ``msa`` (their layers all run on SGLang's own backend).

Where it runs:

* the plugin's model-override provider (``sglang_msa.plugin.on_server_args``), which SGLang calls
  from ``ServerArgs.__post_init__`` -> ``_handle_model_specific_adjustments`` ->
  ``collect_model_override_declarations`` with no ``try``/``except`` on the way: the error leaves
  ``ServerArgs(...)`` (the launcher's ``prepare_server_args``, ``sglang.Engine(...)``) before any
  scheduler process starts or any weight is read. The provider sees the user's flags (SGLang's
  later passes have not run yet), which is what every check reads;
* again when the sparse backend is built (:class:`~sglang_msa.backend.sparse.MSASparseAttnBackend`),
  on the final resolved arguments and the model class actually loaded: a second line of defence
  for servers whose resolution skipped the provider (e.g. SGLang's ``instance://`` connector).

Scopes: ``backend`` rows concern the msa sparse backend and apply to every MiniMax sparse model
served with ``msa``; ``model`` rows concern our MiniMax-M3 classes (``sglang_msa.models``) and apply
unless ``SGLANG_MSA_MODELS=0`` hands the architecture back to SGLang's in-tree class.

Speculative decoding: see ``SPECULATIVE.md`` next to this module (the multi-query verify design).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

SUPPORTED, REJECTED = "supported", "rejected"
BACKEND, MODEL = "backend", "model"


class MSAUnsupportedFeature(ValueError):
    """A server flag asks for something ``--attention-backend msa`` does not serve correctly."""

    def __init__(self, feature: "Feature", flag: str, detail: str = ""):
        self.feature, self.flag = feature, flag
        what = f"{flag}{f' ({detail})' if detail else ''}"
        super().__init__(
            f"sglang-msa: {what} is not supported with --attention-backend msa "
            f"[{feature.name}]: {feature.reason} Instead: {feature.instead}")


# A check returns None (fine) or (flag as the user spells it, detail) for a rejected setting.
Check = Callable[[Any, Any], Optional[tuple]]


@dataclass(frozen=True)
class Feature:
    name: str
    flags: str  # the flags this row is about, as the README matrix prints them
    status: str  # SUPPORTED | REJECTED
    scope: str  # BACKEND | MODEL
    reason: str
    instead: str = ""
    check: Optional[Check] = None


def _text_config(hf_config):
    return getattr(hf_config, "text_config", None) or hf_config


def _attn_tp_size(server_args) -> int:
    tp = int(getattr(server_args, "tp_size", 1) or 1)
    if getattr(server_args, "enable_dp_attention", False):
        tp //= max(1, int(getattr(server_args, "dp_size", 1) or 1))
    return max(1, tp)


# ----------------------------------------------------------------------------- checks


def _dp_attention(sa, hf):
    if getattr(sa, "enable_dp_attention", False):
        return "--enable-dp-attention", f"--dp-size {getattr(sa, 'dp_size', None)}"
    if getattr(sa, "enable_dp_lm_head", False):
        return "--enable-dp-lm-head", ""
    return None


def _batch_overlap(sa, hf):
    if getattr(sa, "enable_two_batch_overlap", False):
        return "--enable-two-batch-overlap", ""
    if getattr(sa, "enable_single_batch_overlap", False):
        return "--enable-single-batch-overlap", ""
    return None


_BF16_KV = ("auto", "bf16", "bfloat16", None)


def _checkpoint_kv_quant(hf) -> Optional[str]:
    """``kv_cache_quant_algo`` of the checkpoint's quantization config (ModelOpt style, flat or
    under ``quantization``): SGLang turns ``--kv-cache-dtype auto`` into fp8 for ``FP8``."""
    for cfg in (hf, _text_config(hf)):
        quant = getattr(cfg, "quantization_config", None)
        if isinstance(quant, dict):
            algo = quant.get("kv_cache_quant_algo") or (quant.get("quantization") or {}).get("kv_cache_quant_algo")
            if algo:
                return str(algo)
    return None


def _kv_cache_dtype(sa, hf):
    dtype = getattr(sa, "kv_cache_dtype", "auto")
    if dtype not in _BF16_KV:
        return "--kv-cache-dtype", str(dtype)
    if dtype == "auto":
        algo = _checkpoint_kv_quant(hf)
        if algo is not None and algo.upper() not in ("NONE", "BF16", "BFLOAT16"):
            return "--kv-cache-dtype auto", f"the checkpoint's kv_cache_quant_algo={algo} makes it {algo.lower()}"
    return None


def _speculative(sa, hf):
    algo = getattr(sa, "speculative_algorithm", None)
    if algo is not None:
        return "--speculative-algorithm", str(algo)
    return None


def _eplb(sa, hf):
    if getattr(sa, "enable_eplb", False):
        return "--enable-eplb", ""
    redundant = int(getattr(sa, "ep_num_redundant_experts", 0) or 0)
    if redundant:
        return "--ep-num-redundant-experts", str(redundant)
    location = getattr(sa, "init_expert_location", "trivial") or "trivial"
    if location != "trivial":
        return "--init-expert-location", str(location)
    mode = getattr(sa, "expert_distribution_recorder_mode", None)
    if mode is not None:
        return "--expert-distribution-recorder-mode", str(mode)
    return None


def _context_parallel(sa, hf):
    for flag, field in (("--attn-cp-size", "attn_cp_size"), ("--dcp-size", "dcp_size")):
        size = int(getattr(sa, field, 1) or 1)
        if size > 1:
            return flag, str(size)
    if getattr(sa, "enable_prefill_cp", False):
        return "--enable-prefill-cp", ""
    return None


def _pipeline(sa, hf):
    pp = int(getattr(sa, "pp_size", 1) or 1)
    return ("--pp-size", str(pp)) if pp > 1 else None


def _moe_a2a(sa, hf):
    backend = getattr(sa, "moe_a2a_backend", "none") or "none"
    return ("--moe-a2a-backend", str(backend)) if backend != "none" else None


def _sparse_layout(sa, hf):
    """Per rank, msa needs one index head per KV head and no index value path."""
    from sglang.srt.configs.model_config import (
        get_minimax_sparse_attention_config,
        get_minimax_sparse_disable_value_layer_ids,
        get_minimax_sparse_layer_ids,
    )

    cfg = get_minimax_sparse_attention_config(hf)
    _dense, sparse = get_minimax_sparse_layer_ids(cfg)
    with_value = sorted(set(sparse) - set(get_minimax_sparse_disable_value_layer_ids(cfg)))
    if with_value:
        return "model config", (f"sparse layers {with_value[:4]} have an index value path "
                                "(sparse_disable_index_value=0)")
    kv = getattr(_text_config(hf), "num_key_value_heads", None)
    if kv is None:
        return None
    tp = _attn_tp_size(sa)
    kv, idx = int(kv), int(cfg["sparse_num_index_heads"])
    kv_rank, idx_rank = max(1, kv // tp), idx // min(tp, idx)
    if kv_rank != idx_rank:
        return "model config", (f"{idx} index heads and {kv} KV heads give {idx_rank} index heads for "
                                f"{kv_rank} KV heads per rank at attention TP {tp}")
    return None


def _fp8_index_copies(sa, hf):
    """With ``SGLANG_MSA_FP8_INDEX=1``: features that copy index-K bytes without its per-slot scales."""
    from sglang_msa.backend.fp8_index import FP8_INDEX_ENV, fp8_index_enabled

    if not fp8_index_enabled():
        return None
    detail = f"with {FP8_INDEX_ENV}=1"
    if getattr(sa, "enable_hierarchical_cache", False):
        return "--enable-hierarchical-cache", detail
    if getattr(sa, "hicache_storage_backend", None):
        return "--hicache-storage-backend", f"{sa.hicache_storage_backend} {detail}"
    if getattr(sa, "enable_lmcache", False):
        return "--enable-lmcache", detail
    mode = getattr(sa, "disaggregation_mode", "null") or "null"
    if mode != "null":
        return "--disaggregation-mode", f"{mode} {detail}"
    if getattr(sa, "disaggregation_decode_enable_offload_kvcache", False):
        return "--disaggregation-decode-enable-offload-kvcache", detail
    return None


def _fp8_index_in_tree_rocm(sa, hf):
    """SGLang's in-tree MiniMax-M3 class on ROCm caches bf16 index keys itself (a fused kernel)."""
    from sglang_msa.backend.fp8_index import FP8_INDEX_ENV, fp8_index_enabled

    import torch

    if fp8_index_enabled() and getattr(torch.version, "hip", None) and not serves_our_model(hf):
        return f"{FP8_INDEX_ENV}=1", "SGLANG_MSA_MODELS=0 on ROCm"
    return None


# ----------------------------------------------------------------------------- the table

FEATURES: tuple[Feature, ...] = (
    Feature(
        "tensor parallelism", "--tp-size N", SUPPORTED, MODEL,
        "q heads split over ranks; KV and index heads split, or replicated when fewer than ranks; "
        "experts, shared expert and dense MLP split on the intermediate dimension (or experts over "
        "--ep-size ranks). Per-rank shapes equal SGLang's in-tree MiniMax-M3 at TP 2/4/8 "
        "(tests/test_tp_shapes.py) and TP 2 over gloo reproduces the logits (tests/test_m3_model.py); "
        "not yet served on several GPUs.",
    ),
    Feature(
        "shared-expert fusion", "(default), --disable-shared-experts-fusion, "
        "`SGLANG_MSA_FUSE_SHARED_EXPERT=1`", SUPPORTED, MODEL,
        "as in SGLang's own MiniMax-M3: on CUDA (SM80+, no expert parallelism) the shared expert runs "
        "as FusedMoE's extra expert (TopK appends it with weight 1 and scales the routed weights), "
        "else, or with the flag, as its own TP-sharded MLP summed in the down projection's GEMM. One "
        "rule of ours for bf16 experts: fused only where SGLang ships a tuned fused-MoE config for the "
        "E + 1 experts, or none for E (SGLang 0.5.17 has E=129, N=384 for H200 only, so an H100 keeps "
        "the shared expert apart and its routed experts on the tuned E=128 config; fused on the default "
        "config, 128k prefill spent 63 vs 26 ms per step in MoE on an H100); "
        "`SGLANG_MSA_FUSE_SHARED_EXPERT=1` fuses anyway. The server log says which and why "
        "(\"sglang-msa: built ...\"). Loading, the block's sum and the rule against SGLang's real "
        "config files are CPU-tested (tests/test_m3_model.py, tests/test_shared_expert_fusion.py).",
    ),
    Feature(
        "DP attention", "--enable-dp-attention, --enable-dp-lm-head", REJECTED, BACKEND,
        "our MiniMax-M3 class has no LayerCommunicator: it neither gathers the DP ranks' tokens "
        "before the MoE nor scatters them after, and it all-reduces over the whole TP group, so "
        "ranks holding different batches would mix or hang; the msa backend is also unverified "
        "with DP padding and idle batches.",
        "plain tensor parallelism (--tp-size N without --enable-dp-attention), or serve DP "
        "attention without --attention-backend msa.",
        _dp_attention,
    ),
    Feature(
        "two-batch overlap", "--enable-two-batch-overlap, --enable-single-batch-overlap", REJECTED, BACKEND,
        "our MiniMax-M3 class has no micro-batch operation split (SGLang's in-tree one runs "
        "model_forward_maybe_tbo), and SGLang allows two-batch overlap only with DP attention or an "
        "all-to-all MoE backend, both rejected here. (msa's plan state would be per micro-batch: "
        "SGLang's TboAttnBackend builds one backend per child batch.)",
        "drop the flag; the overlap scheduler (on by default) still overlaps scheduling with the "
        "forward.",
        _batch_overlap,
    ),
    Feature(
        "overlap scheduler", "(default), --disable-overlap-schedule", SUPPORTED, BACKEND,
        "the next batch's metadata is built on the same forward stream after this batch's launches "
        "are queued; the sparse backend's per-batch state is read only while launching, and buffers "
        "reused across batches (decode block tables, top-k, split workspaces) are written by "
        "stream-ordered kernels. The prefill plan takes SGLang's host copies of the lengths "
        "(extend_seq_lens_cpu, seq_lens_cpu, extend_prefix_lens_cpu) and uploads its tables as "
        "pinned non-blocking copies: no stream sync (a batch without those host copies reads the "
        "device lengths back, one sync).",
    ),
    Feature(
        "fp8 KV cache", "--kv-cache-dtype fp8_e4m3 / fp8_e5m2 / mxfp8 / nvfp4 / fp4_*", REJECTED, BACKEND,
        "msa's sparse-attention kernels read bf16/fp16/fp32 K and V pages and have no fp8 "
        "dequantisation or KV scales (the index-K cache alone has an opt-in fp8 path, below); its "
        "accuracy with an fp8 KV cache is unmeasured.",
        "--kv-cache-dtype bf16 (or auto on a bf16 checkpoint), or serve fp8 KV without "
        "--attention-backend msa.",
        _kv_cache_dtype,
    ),
    Feature(
        "fp8 index cache (opt-in)", "SGLANG_MSA_FP8_INDEX=1 (environment; off by default)", SUPPORTED, BACKEND,
        "index keys of the sparse layers stored as float8 e4m3 + one fp32 scale per slot (main K/V "
        "unchanged); the indexers score them with e4m3 dots. The KV pool is still sized for a bf16 "
        "index cache (no extra tokens yet; the scales fit in that budget). Tested on CPU only: its "
        "speed and its accuracy on GPU are not yet measured. Design: sglang_msa/backend/fp8_index.py.",
    ),
    Feature(
        "fp8 index cache + index-K byte copies",
        "SGLANG_MSA_FP8_INDEX=1 with --enable-hierarchical-cache, --hicache-storage-backend, "
        "--enable-lmcache, --disaggregation-mode prefill/decode, "
        "--disaggregation-decode-enable-offload-kvcache", REJECTED, BACKEND,
        "these copy the index-K cache between GPU, host, storage or hosts byte for byte, and the fp8 "
        "index path keeps each slot's scale in a tensor of its own that they do not copy: the copied "
        "keys would be scored with whatever scale the destination slot held.",
        "unset SGLANG_MSA_FP8_INDEX (the bf16 index cache works with them), or drop those flags.",
        _fp8_index_copies,
    ),
    Feature(
        "fp8 index cache + SGLang's MiniMax-M3 class on ROCm", "SGLANG_MSA_FP8_INDEX=1 with SGLANG_MSA_MODELS=0 (ROCm)",
        REJECTED, BACKEND,
        "SGLang's in-tree class caches bf16 index keys itself with a fused ROCm kernel "
        "(minimax_m3_precached_sparse_layers), which would write them into the fp8 cache.",
        "unset SGLANG_MSA_FP8_INDEX, or keep our MiniMax-M3 class (SGLANG_MSA_MODELS unset).",
        _fp8_index_in_tree_rocm,
    ),
    Feature(
        "EPLB / redundant experts",
        "--enable-eplb, --ep-num-redundant-experts N, --init-expert-location, "
        "--expert-distribution-recorder-mode", REJECTED, MODEL,
        "our MiniMax-M3 MoE allocates exactly num_local_experts experts (no redundant slots), never "
        "maps logical to physical expert ids and never tells the expert-distribution recorder which "
        "layer runs, so redundant or moved experts would get the wrong tokens and the statistics "
        "the wrong layer.",
        "drop these flags (with SGLANG_MSA_MODELS=0 SGLang's in-tree MiniMax-M3 class serves the MoE "
        "and they behave as they do without msa).",
        _eplb,
    ),
    Feature(
        "speculative decoding", "--speculative-algorithm EAGLE / EAGLE3 / NEXTN / STANDALONE / NGRAM / ...", REJECTED, BACKEND,
        "msa plans one query token per request in decode; target verify (several draft tokens of "
        "one request, each selecting its own key blocks) and draft extend are not implemented, and "
        "our MiniMax-M3 class does not capture EAGLE3's auxiliary hidden states. Design of the "
        "multi-query verify path: sglang_msa/backend/SPECULATIVE.md.",
        "serve without speculative decoding, or serve it without --attention-backend msa.",
        _speculative,
    ),
    Feature(
        "chunked prefill", "--chunked-prefill-size N (any, -1 = off)", SUPPORTED, BACKEND,
        "extend plans take each request's cached prefix length, so a chunk may start and end "
        "anywhere (off the 128-token sparse block grid, mid page); the indexer and prefill kernels "
        "are tested with ragged prefixes off the block grid.",
    ),
    Feature(
        "page size", "--page-size 1 / 64 / 128 (default: SGLang's, 128 for M3 on Hopper/Blackwell)", SUPPORTED, BACKEND,
        "a page size that is a multiple of the sparse block (128) takes the stride-paged decode path; "
        "smaller pages (1, 64) read every token through req_to_token (a logged warning, slower).",
    ),
    Feature(
        "context parallelism", "--attn-cp-size N, --dcp-size N, --enable-prefill-cp", REJECTED, BACKEND,
        "msa plans and attends each request's whole sequence on one rank; splitting its tokens or its "
        "KV over ranks needs a cross-rank top-k block selection and softmax merge that msa does not do.",
        "drop the context-parallel flags, or serve them without --attention-backend msa.",
        _context_parallel,
    ),
    Feature(
        "pipeline parallelism", "--pp-size N>1", REJECTED, MODEL,
        "our MiniMax-M3 class builds every layer on one rank (no PP stages or proxy tensors).",
        "use --tp-size, or SGLANG_MSA_MODELS=0 (SGLang's in-tree class with the msa backend).",
        _pipeline,
    ),
    Feature(
        "MoE all-to-all", "--moe-a2a-backend deepep / mooncake / ...", REJECTED, MODEL,
        "our MiniMax-M3 MoE runs FusedMoE with a TP all-reduce only (no dispatch/combine path).",
        "--moe-a2a-backend none (plain TP/EP MoE), or SGLANG_MSA_MODELS=0.",
        _moe_a2a,
    ),
    Feature(
        "sparse layout", "(model config)", REJECTED, BACKEND,
        "msa's kernels pair each KV head with one index head on every rank and have no index "
        "value/output path (the released MiniMax-M3 fits both).",
        "serve this checkpoint without --attention-backend msa (SGLang's own sparse backend), or "
        "pick a --tp-size that gives as many index heads as KV heads per rank.",
        _sparse_layout,
    ),
)

BY_NAME = {f.name: f for f in FEATURES}


# ----------------------------------------------------------------------------- running the checks


def serves_our_model(hf_config) -> bool:
    """Whether this server builds ``sglang_msa.models``' class for the architecture (the plugin's
    opt-in for ``msa`` servers, unless ``SGLANG_MSA_MODELS=0``)."""
    value = os.environ.get("SGLANG_MSA_MODELS", "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    arch = (getattr(hf_config, "architectures", None) or [""])[0]
    if arch == "MiniMaxM3SparseForConditionalGeneration":
        from sglang_msa.models import vl_enabled

        return vl_enabled()
    return arch == "MiniMaxM3SparseForCausalLM"


def check_server_args(server_args, hf_config, *, our_model: Optional[bool] = None) -> None:
    """Raise :class:`MSAUnsupportedFeature` for the first rejected feature this server asks for.

    Callers check that the server picked ``msa``; models that are not MiniMax sparse pass untouched.
    ``our_model``: whether our model class serves it (default: what the plugin's opt-in gives)."""
    from sglang.srt.configs.model_config import is_minimax_sparse

    if hf_config is None or not is_minimax_sparse(hf_config):
        return
    if our_model is None:
        our_model = serves_our_model(hf_config)
    for feature in FEATURES:
        if feature.status != REJECTED or feature.check is None:
            continue
        if feature.scope == MODEL and not our_model:
            continue
        hit = feature.check(server_args, hf_config)
        if hit is not None:
            raise MSAUnsupportedFeature(feature, *hit)


def matrix_markdown() -> str:
    """The README's feature matrix, from the table."""
    rows = ["| feature | flags | msa | reason / notes |", "|---|---|---|---|"]
    for f in FEATURES:
        note = f.reason + (f" Instead: {f.instead}" if f.status == REJECTED and f.instead else "")
        rows.append(f"| {f.name} | {f.flags} | {f.status} | {note} |")
    return "\n".join(rows)
