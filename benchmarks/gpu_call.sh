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
#
# Everything lands in /tmp/gpu-out; $OUT gets results.tar.gz (all logs and JSON) plus the summaries.
set -u
MODE=${1:?usage: gpu_call.sh check|serving|vl}
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
  # tiny-checkpoint e2e check (our M3 classes on both of its servers) runs first on GPU0 with small
  # pools, and A starts once those are up, so that A's KV pool is sized after them.
  page=${AB_PAGE:-128}
  if [ "${AB_E2E:-1}" = 1 ]; then
    (
      export CUDA_VISIBLE_DEVICES=0
      python3 -m sglang_msa.tiny_m3 /tmp/tiny > "$W/tiny.log" 2>&1
      timeout $(( $(left) - 10 )) python3 benchmarks/e2e_correctness.py --model-path /tmp/tiny --models "${E2E_MODELS:-mixed}" \
        --out-dir "$W/e2e" --port-base 31000 --mem-fraction 0.08 --health-timeout 420 --log-dir "$W/e2e/logs" \
        > "$W/e2e.log" 2>&1
      echo "e2e-ours rc=$?" >> "$W/status.txt"
    ) &
    # Their servers allocate their (small) pools within ~10 s of starting; their first requests compile
    # Triton kernels for minutes, so A waits a fixed time rather than for their health.
    wait_for=(--a-start-delay 40 --a-mem-fraction 0.6)
  else
    wait_for=(--a-mem-fraction 0.6)
  fi
  (
    timeout $(( $(left) - 5 )) python3 benchmarks/gpu_ab.py --out-dir "$W/ab" --a-gpu 0 --b-gpu 1 \
      --port-base 30000 --baseline-page "$page" "${wait_for[@]}" --b-mem-fraction 0.6 \
      --input-lens "${AB_INPUT_LENS:-65536,32768}" --concurrency "${AB_CONCURRENCY:-1,4,16,32}" \
      --output-len "${AB_OUTPUT_LEN:-256}" --num-requests "${AB_NUM_REQUESTS:-1x}" --min-requests 4 \
      --b-models "${AB_B_MODELS:-ours}" --profile "${AB_PROFILE:-on}" --profile-concurrency 8 \
      --deadline-s $(( $(left) - 20 )) \
      > "$W/ab.log" 2>&1
    echo "gpu_ab page=$page rc=$?" >> "$W/status.txt"
  ) &
  ;;
vl)
  (
    export CUDA_VISIBLE_DEVICES=0
    python3 -m sglang_msa.tiny_m3 /tmp/tiny-vl --vision > "$W/tiny-vl.log" 2>&1
    video=(); [ -n "${E2E_VL_VIDEO:-}" ] && video=(--video "$E2E_VL_VIDEO")
    timeout $(( $(left) - 10 )) python3 benchmarks/e2e_vl.py --model-path /tmp/tiny-vl --out-dir "$W/e2e-vl" \
      --port-base 33000 --health-timeout 420 --log-dir "$W/e2e-vl/logs" "${video[@]}" > "$W/e2e-vl.log" 2>&1
    echo "e2e-vl rc=$?" >> "$W/status.txt"
  ) &
  (
    export CUDA_VISIBLE_DEVICES=1
    timeout $(( $(left) - 10 )) python3 benchmarks/bench_prefill.py --sweep --heads 64/4 --seqlens 65536,8192 \
      --deadline $(( $(left) - 30 )) --out "$W/bench_prefill_sweep.json" > "$W/prefill-sweep.log" 2>&1
    echo "prefill-sweep rc=$?" >> "$W/status.txt"
  ) &
  ;;
*) echo "unknown mode $MODE"; exit 2 ;;
esac
wait
tar czf "$OUT/results.tar.gz" -C "$W" . 2>/dev/null
cp "$W"/*.json "$OUT"/ 2>/dev/null
find "$W" -maxdepth 2 \( -name 'kernels-*.json' -o -name 'e2e-correctness-*.json' -o -name 'serving-NVIDIA*.json' \
  -o -name 'e2e-vl-*.json' \) \
  | head -5 | xargs -r cp -t "$OUT"
echo "== status"; cat "$W/status.txt"; cat "$W/gpus.txt" "$W/versions.txt"
for f in "$W/kernels.log" "$W/pytest-gpu.log" "$W/e2e.log" "$W/ab.log" "$W/e2e-vl.log" "$W/prefill-sweep.log"; do
  [ -f "$f" ] && { echo "== $(basename "$f")"; tail -n 25 "$f"; }
done
exit 0
