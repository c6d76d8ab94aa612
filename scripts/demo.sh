#!/usr/bin/env bash
# The main job on the embedded default (nothing is downloaded): sets everything up
# (scripts/setup.sh), then runs `python -m sglang_msa_tools.demo`, which
#   1. makes a sample video with the ffmpeg CLI and preprocesses it with smg_rs (MiniMax-M3 preset),
#   2. writes a tiny random MiniMax-M3 checkpoint (sglang_msa_tools.tiny_m3),
#   3. runs the MSA pipeline (indexer -> KV-block-major sparse prefill -> paged sparse decode) on
#      random M3-shaped inputs and checks it against the fp32 references (GPU if present, else the
#      Triton interpreter on CPU),
#   4. shows SGLang's own argument parser accepting `--attention-backend msa` through the plugin.
# Arguments go to the demo (see `--help`), e.g. `bash scripts/demo.sh --video my.mp4`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYBIN="$(bash "$ROOT/scripts/setup.sh")"
# Run from a scratch directory holding only a link to the clone's sglang_msa_tools (tooling, not in
# the wheel): `-m` puts that directory first on sys.path, so the tools come from the clone while
# `sglang_msa` is the installed package, as SGLang imports it.
WORK="$(mktemp -d)"
ln -s "$ROOT/sglang_msa_tools" "$WORK/sglang_msa_tools"
cd "$WORK"
exec "$PYBIN" -m sglang_msa_tools.demo "$@"
