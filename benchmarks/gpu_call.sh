#!/usr/bin/env bash
# One device call on a two-GPU H200 machine (the `device` tool, kind nvidia-h200-x2), run from the repo
# root with `.gpu/` carried (the SGLang bundle + our wheel in .gpu/wheels). Jobs run side by side, one
# per GPU, each under its own deadline, so one 10-minute call holds two GPUs' worth of work:
#
#   bash benchmarks/gpu_call.sh check     GPU0: bench_kernels.py, then the GPU test tier
#                                         GPU1: e2e_correctness.py (tiny M3, E2E_MODELS), then a short
#                                               gpu_ab.py dry run (32k prompts, page-128 baseline)
#   bash benchmarks/gpu_call.sh serving   gpu_ab.py: A on GPU0, B on GPU1 (AB_PAGE=128|default); with
#                                         AB_E2E=1 also e2e_correctness.py (E2E_MODELS=mixed|ours|intree) on GPU0
#   bash benchmarks/gpu_call.sh vl        GPU0: e2e_vl.py (tiny M3-VL: SGLang's VL path vs ours + msa;
#                                               E2E_VL_VIDEO=clip.mp4 adds a video request)
#                                         GPU1: bench_prefill.py --sweep (kernel configs, query segments)
#   bash benchmarks/gpu_call.sh default   one GPU: ab_default.py, A/A2 (SGLang's default deployment of
#                                         MiniMax-M3) vs B (msa) on the rank8 proxy of --tp 8, with
#                                         AB_WORKLOADS, AB_LENS, AB_CONC, AB_SERVERS, AB_REPEATS, AB_PROFILE
#   bash benchmarks/gpu_call.sh quad      four GPUs (kind nvidia-h200-x4), two A/B pairs at once:
#                                         GPU0/1: A at page 128 vs B (QUAD_LENS1, default 32768,65536),
#                                                 after e2e_correctness.py (E2E_MODELS) on GPU0;
#                                         GPU2/3: A at SGLang's default page size (QUAD_PAGE2) vs B
#                                                 (QUAD_LENS2, default 65536,32768; QUAD_B2_ENV=K=V gives
#                                                 this B an extra setting), after e2e_vl.py on GPU2;
#                                         QUAD_PYTEST="tests/a.py ..." runs those GPU tests on GPU2 first
#
# Every mode first checks the bundle's pruned FlashAttention-3 (.gpu/test_fa3_pruned.py, also under
# CUDA_MODULE_LOADING=EAGER): SGLang's default backend for MiniMax-M3 on Hopper, so every baseline needs it.
# Everything lands in /tmp/gpu-out; $OUT gets results.tar.gz (all logs and JSON) plus the summaries.
set -u
MODE=${1:?usage: gpu_call.sh check|serving|vl|quad|default}
LIMIT=${GPU_CALL_LIMIT_S:-560}  # leave the call's last ~40 s for packing up
T0=$(date +%s)
left() { echo $((LIMIT - ($(date +%s) - T0))); }

python3 .gpu/unpack.py >/dev/null || exit 3
python3 -m pip install -q --no-deps --no-index --target /tmp/site .gpu/wheels/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
W=/tmp/gpu-out
mkdir -p "$W"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$W/gpus.txt"
python3 -c 'import sglang, torch, triton, sglang_msa; print(sglang.__version__, torch.__version__, triton.__version__, sglang_msa.__file__)' > "$W/versions.txt" 2>&1
EAGER=1 timeout 180 python3 .gpu/test_fa3_pruned.py > "$W/fa3.log" 2>&1
echo "fa3-pruned rc=$?" >> "$W/status.txt"

# e2e_correctness.py on the tiny checkpoint, on GPU $1 with small pools (shares the GPU with an A server).
e2e_tiny() {
  (
    export CUDA_VISIBLE_DEVICES=$1
    python3 -m sglang_msa.tiny_m3 /tmp/tiny > "$W/tiny.log" 2>&1
    timeout $(( $(left) - 10 )) python3 benchmarks/e2e_correctness.py --model-path /tmp/tiny --models "${E2E_MODELS:-mixed}" \
      --out-dir "$W/e2e" --port-base 31000 --mem-fraction 0.08 --health-timeout 420 --log-dir "$W/e2e/logs" \
      > "$W/e2e.log" 2>&1
    echo "e2e-${E2E_MODELS:-mixed} rc=$?" >> "$W/status.txt"
  ) &
}

# e2e_vl.py on the tiny --vision checkpoint, on GPU $1.
e2e_vl() {
  (
    export CUDA_VISIBLE_DEVICES=$1
    python3 -m sglang_msa.tiny_m3 /tmp/tiny-vl --vision > "$W/tiny-vl.log" 2>&1
    video=(); [ -n "${E2E_VL_VIDEO:-}" ] && video=(--video "$E2E_VL_VIDEO")
    timeout $(( $(left) - 10 )) python3 benchmarks/e2e_vl.py --model-path /tmp/tiny-vl --out-dir "$W/e2e-vl" \
      --port-base 33000 --health-timeout 420 --log-dir "$W/e2e-vl/logs" "${video[@]}" > "$W/e2e-vl.log" 2>&1
    echo "e2e-vl rc=$?" >> "$W/status.txt"
  ) &
}

# One A/B pair: ab_pair A_GPU B_GPU PAGE LENS PORT_BASE PROFILE [gpu_ab flags...]
ab_pair() {
  local ga=$1 gb=$2 page=$3 lens=$4 port=$5 profile=$6; shift 6
  (
    timeout $(( $(left) - 5 )) python3 benchmarks/gpu_ab.py --out-dir "$W/ab-$port" --a-gpu "$ga" --b-gpu "$gb" \
      --port-base "$port" --baseline-page "$page" "$@" --a-mem-fraction 0.6 --b-mem-fraction 0.6 \
      --input-lens "$lens" --concurrency "${AB_CONCURRENCY:-1,4,16,32}" \
      --output-len "${AB_OUTPUT_LEN:-256}" --num-requests "${AB_NUM_REQUESTS:-1x}" --min-requests 4 \
      --b-models "${AB_B_MODELS:-ours}" --profile "$profile" --profile-concurrency 8 \
      --deadline-s $(( $(left) - 20 )) > "$W/ab-$port.log" 2>&1
    echo "gpu_ab page=$page lens=$lens rc=$?" >> "$W/status.txt"
  ) &
}

case "$MODE" in
quad)
  # The tiny-checkpoint servers allocate their small pools within ~10 s of starting and then compile
  # Triton kernels for minutes, so each A waits a fixed time rather than for their health.
  if [ -n "${QUAD_PYTEST:-}" ]; then
    (
      # shellcheck disable=SC2086  # a list of test files
      CUDA_VISIBLE_DEVICES=2 timeout 200 python3 -m pytest $QUAD_PYTEST -m gpu -q -p no:cacheprovider \
        > "$W/pytest-gpu.log" 2>&1
      echo "pytest-gpu rc=$?" >> "$W/status.txt"
    ) &
  fi
  e2e_tiny 0
  e2e_vl 2
  b2_env=(); [ -n "${QUAD_B2_ENV:-}" ] && b2_env=(--b-env "$QUAD_B2_ENV")
  ab_pair 0 1 128 "${QUAD_LENS1:-32768,65536}" 30000 "${QUAD_PROFILE1:-off}" --a-start-delay 40
  ab_pair 2 3 "${QUAD_PAGE2:-default}" "${QUAD_LENS2:-65536,32768}" 32000 "${QUAD_PROFILE2:-off}" \
    --a-start-delay 40 "${b2_env[@]}"
  ;;
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
    python3 -m sglang_msa.tiny_m3 /tmp/tiny > "$W/tiny.log" 2>&1
    timeout 300 python3 benchmarks/e2e_correctness.py --model-path /tmp/tiny --models "${E2E_MODELS:-mixed}" --out-dir "$W/e2e" \
      --port-base 31000 --health-timeout 200 --log-dir "$W/e2e/logs" > "$W/e2e.log" 2>&1
    rc=$?; echo "e2e-ours rc=$rc" >> "$W/status.txt"
    bm=intree; [ $rc -eq 0 ] && bm=ours
    rem=$(left)
    timeout $((rem - 5)) python3 benchmarks/gpu_ab.py --out-dir "$W/ab" --port-base 32000 --b-models $bm \
      --input-lens 32768 --concurrency 1,8 --num-requests 4 --output-len 128 --baseline-page 128 \
      --deadline-s $((rem - 40)) --profile-len 16384 --profile-concurrency 8 > "$W/ab.log" 2>&1
    echo "gpu_ab-dry rc=$? b_models=$bm" >> "$W/status.txt"
  ) &
  ;;
serving)
  # A (SGLang's sparse path) on GPU0, B (msa) on GPU1, measured at once. With AB_E2E=1 (default) the
  # tiny-checkpoint e2e check runs first on GPU0 with small pools, and A starts 40 s later, so that
  # A's KV pool is sized after them.
  delay=()
  if [ "${AB_E2E:-1}" = 1 ]; then e2e_tiny 0; delay=(--a-start-delay 40); fi
  ab_pair 0 1 "${AB_PAGE:-128}" "${AB_INPUT_LENS:-65536,32768}" 30000 "${AB_PROFILE:-on}" "${delay[@]}"
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
  (
    timeout $(( $(left) - 10 )) python3 benchmarks/ab_default.py --out-dir "$W/default" \
      --workloads "${AB_WORKLOADS:-cookbook,agentic,long,max-context}" --lens "${AB_LENS:-}" \
      --concurrency "${AB_CONC:-}" --servers "${AB_SERVERS:-A,A2,B}" --repeats "${AB_REPEATS:-2}" \
      --profile "${AB_PROFILE:-}" ${AB_MAX_REQUESTS:+--max-requests $AB_MAX_REQUESTS} --deadline-s $(( $(left) - 25 )) > "$W/default.log" 2>&1
    echo "ab_default rc=$?" >> "$W/status.txt"
  ) &
  ;;
*) echo "unknown mode $MODE (check|serving|vl|quad|default)"; exit 2 ;;
esac
wait
tar czf "$OUT/results.tar.gz" --exclude=rank8-model --exclude="prof-*" --exclude="*.pt.trace.json*" -C "$W" . 2>/dev/null
cp "$W"/*.json "$OUT"/ 2>/dev/null
find "$W" -maxdepth 2 \( -name 'kernels-*.json' -o -name 'e2e-correctness-*.json' -o -name 'serving-NVIDIA*.json' \
  -o -name 'e2e-vl-*.json' -o -name 'serving-*-rank8.json' -o -name 'serving-*-rank8.png' \) \
  | head -6 | xargs -r cp -t "$OUT"
echo "== status"; cat "$W/status.txt"; cat "$W/gpus.txt" "$W/versions.txt"
for f in "$W/fa3.log" "$W/default.log" "$W/kernels.log" "$W/pytest-gpu.log" "$W/e2e.log" "$W"/ab*.log "$W/e2e-vl.log" "$W/prefill-sweep.log"; do
  [ -f "$f" ] && { echo "== $(basename "$f")"; tail -n 25 "$f"; }
done
exit 0
