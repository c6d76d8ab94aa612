#!/usr/bin/env bash
# One device call on a two-GPU H200 machine (the `device` tool, kind nvidia-h200-x2), run from the repo
# root with `.gpu/` carried (the SGLang bundle + our wheel in .gpu/wheels). Jobs run side by side, one
# per GPU, each under its own deadline, so one 10-minute call holds two GPUs' worth of work:
#
#   bash benchmarks/gpu_call.sh check     GPU0: bench_kernels.py, then the GPU test tier
#                                         GPU1: e2e_correctness.py (tiny M3, E2E_MODELS=mixed|ours|intree)
#   bash benchmarks/gpu_call.sh vl        GPU0: e2e_vl.py (tiny M3-VL: SGLang's VL path vs ours + msa;
#                                               E2E_VL_VIDEO=clip.mp4 adds a video request)
#                                         GPU1: bench_prefill.py --sweep (kernel configs, query segments)
#   bash benchmarks/gpu_call.sh default   one GPU: ab_default.py, A/A2 (SGLang's default deployment of
#                                         MiniMax-M3) vs B (msa) on the rank8 proxy of --tp 8, with
#                                         AB_WORKLOADS, AB_LENS, AB_CONC, AB_SERVERS, AB_REPEATS, AB_PROFILE,
#                                         AB_MAX_REQUESTS, AB_LAYERS, AB_PARALLEL=1 (--parallel-start),
#                                         AB_KEEP=1 (leave the servers running for the next call on this
#                                         warm machine), AB_ATTACH=1 (take them over), AB_FIRST_REP,
#                                         AB_CONTEXT, AB_KV_TOKENS, AB_GRAPH_BS (same sizing on both calls),
#                                         AB_NAME (results file suffix), AB_SERVERS=auto (A,A2,B
#                                         where three fit, else A2,B; B1 = B with the split-K indexer
#                                         off, for the summary's split_effect), AB_TRACE_JIT=1 (--trace-jit)
#   bash benchmarks/gpu_call.sh regimes   one GPU: bench_regimes.py (REGIMES_ARGS)
#   bash benchmarks/gpu_call.sh reliability  one GPU: reliability.py (REL_PHASES, REL_LOAD, REL_LAYERS)
#   bash benchmarks/gpu_call.sh accuracy  one GPU: e2e_correctness.py on the tiny checkpoint, ACC_PROMPTS
#                                         prompts of 128 to ACC_MAX_LEN tokens, both servers scored against
#                                         transformers' fp32 model (issue #14); then the GPU test tier
#                                         (ACC_TEST_S seconds kept for it, 0 = none); ACC_REF_MIN_LEN scores
#                                         only prompts that long or longer, ACC_REF_CHUNK its prefill chunk,
#                                         ACC_NAME the results file's suffix
#   bash benchmarks/gpu_call.sh video     one GPU: ab_video.py, SGLang's own M3-VL video path vs ours on the
#                                         rank8 VL proxy (VIDEO_LAYERS, VIDEO_CLIPS, VIDEO_CONC,
#                                         VIDEO_REQUESTS, VIDEO_WARMUP, VIDEO_CONTEXT, VIDEO_KV (both servers'
#                                         --max-total-tokens, so their pools match), VIDEO_SERVER_ARGS, VIDEO_NAME)
#
# Every mode first checks the bundle's pruned FlashAttention-3 (.gpu/test_fa3_pruned.py under
# CUDA_MODULE_LOADING=EAGER; SKIP_FA3_CHECK=1 skips it): SGLang's default backend for MiniMax-M3 on Hopper,
# so every baseline needs it.
# Everything lands in /tmp/gpu-out; $OUT gets results.tar.gz (all logs and JSON) plus the summaries, and
# jit-cache.tar.xz (Triton + FlashInfer JIT caches; put it in .gpu/ to start the next fresh machine warm).
set -u
MODE=${1:?usage: gpu_call.sh check|vl|default|regimes|reliability|accuracy|video}
LIMIT=${GPU_CALL_LIMIT_S:-560}  # leave the call's last ~40 s for packing up
T0=$(date +%s)
left() { echo $((LIMIT - ($(date +%s) - T0))); }

rm -f /tmp/gpu-warm.txt
# A warm machine (the next call within ~30 s) still has /tmp/site, maybe with servers of the last call
# running from it (AB_KEEP=1): unpacking again would rewrite their loaded libraries in place.
if [ ! -f /tmp/site/.sglang-msa-ready ]; then
  python3 .gpu/unpack.py >/dev/null || exit 3
  python3 -m pip install -q --no-deps --no-index --target /tmp/site .gpu/wheels/*.whl \
    || python3 -m zipfile -e .gpu/wheels/*.whl /tmp/site || exit 3  # a wheel is a zip; pip may refuse its tag
  touch /tmp/site/.sglang-msa-ready
else
  echo "warm machine: /tmp/site kept from the last call" >> /tmp/gpu-warm.txt
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# JIT caches between sessions: a fresh machine spent ~5 of a call's 9 minutes starting SGLang's in-tree
# servers, mostly compiling and autotuning Triton kernels (H100, 2026-12-06). A call leaves its Triton
# and FlashInfer caches in $OUT/jit-cache.tar.xz; copied to .gpu/jit-cache.tar.xz (if the upload
# budget allows), the next fresh machine starts from them. Every server of a call sees the same cache.
JIT_DIRS=("$HOME/.triton/cache" "$HOME/.cache/flashinfer")
# Autotuning results go into the same cache (Triton 3.6's TRITON_CACHE_AUTOTUNING): SGLang's in-tree MSA
# kernels autotune ~36 configs per decode batch size during graph capture (~3.5 of its 5.5 minutes).
# The chosen configs are those a fresh autotune picks; only the search is skipped.
export TRITON_CACHE_AUTOTUNING=1
if [ -f .gpu/jit-cache.tar.xz ] && [ ! -f "$HOME/.triton/.sglang-msa-carried" ]; then
  mkdir -p "$HOME/.triton" && tar -xJf .gpu/jit-cache.tar.xz -C / 2>/dev/null \
    && touch "$HOME/.triton/.sglang-msa-carried" && echo "jit cache unpacked from .gpu" >> /tmp/gpu-warm.txt
fi
W=/tmp/gpu-out
mkdir -p "$W"
: > "$W/status.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$W/gpus.txt"
# Whether this machine could decode video on the GPU (issue #15's opt-in NVDEC path needs the driver's
# libnvcuvid, which containers only get with NVIDIA_DRIVER_CAPABILITIES including "video").
echo "nvdec: libnvcuvid $(ldconfig -p 2>/dev/null | grep -c libnvcuvid) found, driver capabilities ${NVIDIA_DRIVER_CAPABILITIES:-unset}" >> "$W/gpus.txt"
python3 -c 'import sglang, torch, triton, sglang_msa; print(sglang.__version__, torch.__version__, triton.__version__, sglang_msa.__file__)' > "$W/versions.txt" 2>&1
if [ "${SKIP_FA3_CHECK:-0}" = 1 ]; then  # already checked on this kind of card in this session
  echo "fa3-pruned skipped (SKIP_FA3_CHECK=1)" >> "$W/status.txt"
else
  EAGER=1 timeout 180 python3 .gpu/test_fa3_pruned.py > "$W/fa3.log" 2>&1
  rc=$?
  # Its last step calls a pruned-away variant (fp16), which FA3 answers with exit(1) after a CUDA
  # error instead of a Python exception (seen on an H100): rc 1 after both loading modes passed every
  # kept variant means SGLang's bf16 fa3 path works.
  ok=$(grep -c "all checks passed" "$W/fa3.log")
  echo "fa3-pruned rc=$rc, loading modes with every kept (bf16, head dim 128) variant correct: $ok of 2" >> "$W/status.txt"
fi

# Servers that an AB_KEEP=1 call left running hold most of the GPU's memory: every job but an attaching
# `default` call stops them first (and waits for them to exit).
if [ -f "$W/default/live-servers.json" ] && ! { [ "$MODE" = default ] && [ -n "${AB_ATTACH:-}" ]; }; then
  python3 benchmarks/ab_default.py --out-dir "$W/default" --stop-kept >> "$W/status.txt" 2>&1
fi

# SGLang's own video decoding (TorchCodec) where .gpu/torchcodec-bundle.tar.xz is carried: the image has
# no FFmpeg or TorchCodec (benchmarks/make_torchcodec_bundle.sh makes the bundle). Call in a subshell.
torchcodec_env() {
  local tc=/tmp/torchcodec-bundle
  [ -f .gpu/torchcodec-bundle.tar.xz ] || return 0
  if [ ! -d "$tc/site/torchcodec" ]; then
    mkdir -p "$tc" && tar -xJf .gpu/torchcodec-bundle.tar.xz -C "$tc" || echo "torchcodec bundle: unpack failed" >> "$W/status.txt"
  fi
  export PYTHONPATH=$tc/site:$PYTHONPATH LD_LIBRARY_PATH=$tc/lib:${LD_LIBRARY_PATH:-}
}

# e2e_vl.py on the tiny --vision checkpoint, on GPU $1 (E2E_VL_VIDEO=.gpu/video/10s-720p.mp4 adds a video
# request, which SGLang's side decodes with the carried TorchCodec bundle).
e2e_vl() {
  (
    export CUDA_VISIBLE_DEVICES=$1
    torchcodec_env
    python3 -m sglang_msa_tools.tiny_m3 /tmp/tiny-vl --vision > "$W/tiny-vl.log" 2>&1
    video=(); [ -n "${E2E_VL_VIDEO:-}" ] && video=(--video "$E2E_VL_VIDEO")
    timeout $(( $(left) - 10 )) python3 benchmarks/e2e_vl.py --model-path /tmp/tiny-vl --out-dir "$W/e2e-vl" \
      --port-base 33000 --health-timeout 420 --log-dir "$W/e2e-vl/logs" "${video[@]}" > "$W/e2e-vl.log" 2>&1
    echo "e2e-vl rc=$?" >> "$W/status.txt"
  ) &
}

case "$MODE" in
check)
  (
    export CUDA_VISIBLE_DEVICES=0
    python3 benchmarks/bench_kernels.py --out-dir "$W/kernels" --budget-s 420 > "$W/kernels.log" 2>&1
    echo "bench_kernels rc=$?" >> "$W/status.txt"
    timeout $(( $(left) - 10 )) python3 -m pytest tests/test_msa_indexer.py tests/test_msa_prefill.py \
      tests/test_msa_decode.py tests/test_backend.py -m gpu -q -p no:cacheprovider > "$W/pytest-gpu.log" 2>&1
    echo "pytest-gpu rc=$?" >> "$W/status.txt"
  ) &
  (
    export CUDA_VISIBLE_DEVICES=1
    python3 -m sglang_msa_tools.tiny_m3 /tmp/tiny > "$W/tiny.log" 2>&1
    timeout 300 python3 benchmarks/e2e_correctness.py --model-path /tmp/tiny --models "${E2E_MODELS:-mixed}" --out-dir "$W/e2e" \
      --port-base 31000 --health-timeout 200 --log-dir "$W/e2e/logs" > "$W/e2e.log" 2>&1
    echo "e2e-${E2E_MODELS:-mixed} rc=$?" >> "$W/status.txt"
  ) &
  ;;
vl)
  e2e_vl 0
  (
    export CUDA_VISIBLE_DEVICES=1
    timeout $(( $(left) - 10 )) python3 benchmarks/bench_prefill.py --sweep --heads 64/4 --seqlens 65536,8192 \
      --deadline $(( $(left) - 30 )) --out "$W/bench_prefill_sweep.json" > "$W/prefill-sweep.log" 2>&1
    echo "prefill-sweep rc=$?" >> "$W/status.txt"
  ) &
  ;;
default)
  # AB_LAYERS=auto: the rank8 proxy at 20 layers (the released dense fraction, 1 in 20) where two servers of
  # ~40 GB fit side by side (H200), else 12 (H100 80 GB; 1 dense layer in 12).
  mem=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits -i 0 | head -1)
  big=$([ "${mem%%.*}" -ge 120000 ] && echo 1 || echo 0)  # H200-class memory
  if [ "${AB_LAYERS:-}" = auto ]; then
    AB_LAYERS=$([ "$big" = 1 ] && echo 20 || echo 12)
  fi
  # AB_SERVERS=auto: A,A2,B side by side where three 12-layer servers fit (H200), else A2,B (H100; a
  # second call with AB_SERVERS=A,B AB_ATTACH=1 measures A beside the same B and stops A2).
  if [ "${AB_SERVERS:-}" = auto ]; then
    AB_SERVERS=$([ "$big" = 1 ] && echo A,A2,B || echo A2,B)
  fi
  echo "servers ${AB_SERVERS:-A,A2,B}, layers ${AB_LAYERS:-20}" >> "$W/status.txt"
  (
    timeout $(( $(left) - 10 )) python3 benchmarks/ab_default.py --out-dir "$W/default" \
      --workloads "${AB_WORKLOADS:-cookbook,agentic,long,max-context}" --lens "${AB_LENS:-}" \
      --concurrency "${AB_CONC:-}" --servers "${AB_SERVERS:-A,A2,B}" --repeats "${AB_REPEATS:-2}" \
      --profile "${AB_PROFILE:-}" ${AB_MAX_REQUESTS:+--max-requests $AB_MAX_REQUESTS} ${AB_LAYERS:+--layers $AB_LAYERS} \
      ${AB_PARALLEL:+--parallel-start} ${AB_KEEP:+--keep-running} ${AB_ATTACH:+--attach} \
      ${AB_FIRST_REP:+--first-rep $AB_FIRST_REP} ${AB_CONTEXT:+--context-length $AB_CONTEXT} \
      ${AB_KV_TOKENS:+--kv-tokens $AB_KV_TOKENS} ${AB_GRAPH_BS:+--graph-bs $AB_GRAPH_BS} --name "${AB_NAME:-rank8}" ${AB_TRACE_JIT:+--trace-jit} \
      --deadline-s $(( $(left) - 25 )) > "$W/default.log" 2>&1
    echo "ab_default rc=$?" >> "$W/status.txt"
  ) &
  ;;
regimes)
  # One GPU: bench_regimes.py (issue #13: per-GPU head layouts, chunked prefill over long prefixes,
  # 128k-1M decode; ours and upstream in one process) under the call's deadline. REGIMES_ARGS adds
  # options, e.g. a reduced matrix; the results file lands in $OUT (kernels-*-regimes.json).
  (
    export CUDA_VISIBLE_DEVICES=0
    # shellcheck disable=SC2086  # REGIMES_ARGS is a list of options
    timeout $(( $(left) - 10 )) python3 benchmarks/bench_regimes.py --out-dir "$W/regimes" \
      --budget-s $(( $(left) - 35 )) ${REGIMES_ARGS:-} > "$W/regimes.log" 2>&1
    echo "bench_regimes rc=$?" >> "$W/status.txt"
    echo "== regimes.log"; grep -v '^{"kind"' "$W/regimes.log" | tail -n 60
  ) &
  ;;
reliability)
  # One GPU: benchmarks/reliability.py (vanilla check, M3-VL and text malformed-request corpus,
  # REL_LOAD concurrent long requests, KV-leak and mid-stream-disconnect checks on the rank8 proxy).
  (
    export CUDA_VISIBLE_DEVICES=0
    timeout $(( $(left) - 10 )) python3 benchmarks/reliability.py --out-dir "$W/reliability" --ckpt-dir /tmp/rel-ckpt \
      --phases "${REL_PHASES:-vanilla,vl,load,corpus}" --load "${REL_LOAD:-64x32768,8x262144}" \
      --layers "${REL_LAYERS:-4}" ${REL_EXTERNAL:+--external "$REL_EXTERNAL"} ${REL_MERGE:+--merge "$REL_MERGE"} \
      --deadline-s $(( $(left) - 25 )) > "$W/reliability.log" 2>&1
    echo "reliability rc=$?" >> "$W/status.txt"
    cp "$W"/reliability/reliability-*.json "$W"/ 2>/dev/null
    echo "== reliability.log"; tail -n 60 "$W/reliability.log"
  ) &
  ;;
accuracy)
  # One GPU: A (in-tree class + SGLang's sparse backend) and B (ours + msa) side by side on the tiny
  # checkpoint, greedy continuations of ACC_PROMPTS prompts, then the fp32 reference once they stop;
  # the GPU test tier with what time is left.
  (
    export CUDA_VISIBLE_DEVICES=0
    python3 -m sglang_msa_tools.tiny_m3 /tmp/tiny > "$W/tiny.log" 2>&1
    # the tiny checkpoint's max_position_embeddings is 65536; prompts stop 24 tokens short of the context.
    # The fp32 scoring stops starting prompts ACC_TEST_S seconds before the end (at least 120: one long
    # prompt's scoring and the results must still fit before the timeout).
    test_s=${ACC_TEST_S:-200}
    ref_margin=$(( test_s > 120 ? test_s : 120 ))
    timeout $(( $(left) - 60 )) python3 benchmarks/e2e_correctness.py --model-path /tmp/tiny --out-dir "$W/e2e" \
      --num-prompts "${ACC_PROMPTS:-64}" --max-len "${ACC_MAX_LEN:-65536}" --context-length 65536 --new-tokens 16 \
      --fp32-reference --reference-deadline-s $(( $(left) - ref_margin )) --port-base 31000 --health-timeout 300 \
      --reference-min-len "${ACC_REF_MIN_LEN:-0}" --reference-chunk "${ACC_REF_CHUNK:-256}" ${ACC_NAME:+--name "$ACC_NAME"} \
      --log-dir "$W/e2e/logs" > "$W/e2e.log" 2>&1
    echo "e2e-accuracy rc=$?" >> "$W/status.txt"
    if [ "$test_s" -gt 0 ]; then
      timeout $(( $(left) - 10 )) python3 -m pytest tests/test_msa_prefill_union.py tests/test_msa_prefill_plan.py \
        tests/test_msa_indexer_fp8.py tests/test_msa_indexer.py tests/test_msa_prefill.py tests/test_msa_decode.py \
        tests/test_backend.py -m gpu -q -p no:cacheprovider \
        --tb=line > "$W/pytest-gpu.log" 2>&1
      echo "pytest-gpu rc=$?" >> "$W/status.txt"
    else
      echo "pytest-gpu skipped (ACC_TEST_S=0)" >> "$W/status.txt"
    fi
  ) &
  ;;
video)
  # Issue #15's served video A/B (ab_video.py): SGLang's own M3-VL path (TorchCodec, from
  # .gpu/torchcodec-bundle.tar.xz: the image has no FFmpeg) against ours, on the rank8 VL proxy with dummy
  # weights, clips from .gpu/video (ab_video.py --make-clips on a machine with the ffmpeg CLI).
  (
    export CUDA_VISIBLE_DEVICES=0
    torchcodec_env
    python3 -c 'from sglang.srt.utils.video_decoder import _BACKEND; print("sglang video decoder:", _BACKEND)' \
      >> "$W/status.txt" 2>&1
    mkdir -p "${OUT:-$W/video}" && cp "$W/status.txt" "$W/gpus.txt" "${OUT:-$W/video}/" 2>/dev/null
    # smg_rs' opt-in NVDEC decoder against its software decoder on the carried clips (or why it cannot run)
    timeout 120 python3 benchmarks/bench_preprocess.py --nvdec-only .gpu/video/10s-720p.mp4 .gpu/video/60s-720p.mp4 \
      --repeats 3 --out "${OUT:-$W/video}" > "$W/nvdec.log" 2>&1
    echo "nvdec check rc=$? ($(grep -o '"available": [a-z]*' "$W/nvdec.log" | head -1))" >> "$W/status.txt"
    python3 -m sglang_msa_tools.tiny_m3 /tmp/m3vl --preset rank8 --vision --layers "${VIDEO_LAYERS:-4}" > "$W/m3vl.log" 2>&1
    clips=(); for label in ${VIDEO_CLIPS:-10s-720p 60s-720p 60s-1080p 5m-720p}; do
      [ -f ".gpu/video/$label.mp4" ] && clips+=(--clip "$label=.gpu/video/$label.mp4"); done
    srv=(); for a in ${VIDEO_SERVER_ARGS:---disable-cuda-graph --mm-attention-backend triton_attn}; do srv+=("--server-arg=$a"); done
    timeout $(( $(left) - 15 )) python3 benchmarks/ab_video.py --model-path /tmp/m3vl "${clips[@]}" \
      --concurrency "${VIDEO_CONC:-1,8}" --num-requests "${VIDEO_REQUESTS:-16}" --warmup "${VIDEO_WARMUP:-1}" \
      --context-length "${VIDEO_CONTEXT:-131072}" --kv-tokens "${VIDEO_KV:-600000}" --deadline-s $(( $(left) - 60 )) "${srv[@]}" \
      --work-dir "$W/video" --log-dir "${OUT:-$W/video}/video-logs" --out-dir "${OUT:-$W/video}" --name "${VIDEO_NAME:-rank8vl}" 2>&1 | tee "${OUT:-$W/video}/video-run.log" > "$W/video.log"
    echo "ab_video rc=${PIPESTATUS[0]}" >> "$W/status.txt"
    # (results go straight to $OUT, rewritten after every point: a call cut short keeps what it measured)
  ) &
  ;;
*) echo "unknown mode $MODE (check|vl|default|regimes|reliability|accuracy|video)"; exit 2 ;;
esac
wait
tar czf "$OUT/results.tar.gz" --exclude=rank8-model --exclude=copies --exclude="prof-*" --exclude="*.pt.trace.json*" -C "$W" . 2>/dev/null
cp "$W"/*.json "$OUT"/ 2>/dev/null
find "$W" -maxdepth 2 -newer "$W/gpus.txt" \( -name 'kernels-*.json' -o -name 'e2e-correctness-*.json' \
  -o -name 'e2e-vl-*.json' -o -name 'serving-*.json' -o -name 'serving-*.png' \) -not -path '*/copies/*' \
  | head -6 | xargs -r cp -t "$OUT"
existing=(); for d in "${JIT_DIRS[@]}"; do [ -d "$d" ] && existing+=("${d#/}"); done
[ -n "${OUT:-}" ] && ((${#existing[@]})) && tar -cf - -C / "${existing[@]}" 2>/dev/null | xz -T0 -6 > "$OUT/jit-cache.tar.xz"
echo "== status"; cat "$W/status.txt"; cat "$W/gpus.txt" "$W/versions.txt" /tmp/gpu-warm.txt 2>/dev/null
for f in "$W/fa3.log" "$W/nvdec.log" "$W/video.log" "$W/default.log" "$W/kernels.log" "$W/pytest-gpu.log" "$W/e2e.log" "$W/e2e-vl.log" "$W/prefill-sweep.log"; do
  [ -f "$f" ] && { echo "== $(basename "$f")"; tail -n 25 "$f"; }
done
exit 0
