#!/usr/bin/env bash
# The test command: sets everything up (scripts/setup.sh), then runs the Rust core's tests
# (`cargo test`) and the Python tests (pytest; CPU tier by default: GPU tests skip without CUDA).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k indexer`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYBIN="$(bash "$ROOT/scripts/setup.sh")"
CACHE="${SGLANG_MSA_CACHE:-$HOME/.cache/sglang-msa}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cd "$ROOT"
echo "== cargo test (Rust core) =="
cargo test --workspace --quiet
echo "== pytest =="
# Run from a scratch directory so that `import sglang_msa` resolves to the installed package
# (the one SGLang's entry point loads), not the checkout.
export PYTHONDONTWRITEBYTECODE=1
cd "$(mktemp -d)"
"$PYBIN" -m pytest "$ROOT/tests" -c "$ROOT/pyproject.toml" --rootdir "$ROOT" -p no:cacheprovider "$@"
