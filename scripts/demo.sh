#!/usr/bin/env bash
# The main job on the embedded default (nothing is downloaded): sets everything up
# (scripts/setup.sh), then runs `python -m sglang_msa.demo`, which
#   1. makes a sample video with the ffmpeg CLI and preprocesses it with smg_rs (MiniMax-M3 preset),
#   2. writes a tiny random MiniMax-M3 checkpoint (sglang_msa.tiny_m3),
#   3. runs the MSA pipeline (indexer -> KV-block-major sparse prefill -> paged sparse decode) on
#      random M3-shaped inputs and checks it against the fp32 references (GPU if present, else the
#      Triton interpreter on CPU),
#   4. shows SGLang's own argument parser accepting `--attention-backend msa` through the plugin.
# Arguments go to the demo (see `--help`), e.g. `bash scripts/demo.sh --video my.mp4`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYBIN="$(bash "$ROOT/scripts/setup.sh")"
cd "$(mktemp -d)"   # import the installed package, as SGLang would
exec "$PYBIN" -m sglang_msa.demo "$@"
