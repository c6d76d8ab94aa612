#!/usr/bin/env bash
# Sets up everything sglang-msa needs on a fresh Debian machine (no GPU needed), idempotently:
#   1. Debian packages: a C toolchain, clang/libclang + pkg-config (Rust build of smg_rs), nasm,
#      meson, ninja (the bundled FFmpeg build), FFmpeg 5.1 dev libraries (`cargo test` of the Rust
#      core links the system FFmpeg), the ffmpeg CLI (test fixtures, sample video).
#      Rust itself: if there is no cargo, rustup (stable, minimal profile) into ~/.cargo, the
#      standard way; SGLANG_MSA_NO_RUSTUP=1 stops with the command to run instead.
#   1b. The minimal static LGPL FFmpeg that the wheel bundles (scripts/build_ffmpeg.sh; ~3.5 min
#      on 2 cores the first time, cached in $SGLANG_MSA_CACHE/ffmpeg-<version>-<hash>). Skipped with
#      SGLANG_MSA_FFMPEG=system, which links smg_rs against the system FFmpeg instead.
#   2. A Python venv OUTSIDE the clone (default ~/.cache/sglang-msa/venv) with the pinned host stack
#      from constraints.txt (SGLang 0.5.17, torch 2.11.0, Triton 3.6.0). Re-synced only when
#      constraints.txt changes (stamp file), so repeated runs and CI re-runs take seconds.
#   3. `pip install .` of this repository into that venv (maturin builds smg_rs; the cargo target
#      directory is cached outside the clone as well).
# Prints the venv's python path on its last line. Variables: SGLANG_MSA_CACHE, SGLANG_MSA_VENV, PYTHON.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SGLANG_MSA_CACHE:-$HOME/.cache/sglang-msa}"
VENV="${SGLANG_MSA_VENV:-$CACHE/venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
log() { echo "[setup] $*" >&2; }

# --- 1. system packages ---------------------------------------------------------------------------
APT_PKGS=(build-essential ca-certificates curl xz-utils pkg-config clang libclang-dev nasm meson
          ninja-build ffmpeg libavcodec-dev libavformat-dev libavutil-dev libswscale-dev
          libswresample-dev libavfilter-dev libavdevice-dev python3-venv)
missing=()
for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1; then
  # rustup, as https://rustup.rs documents it. `curl https://sh.rustup.rs | sh` fetches this same
  # rustup-init from static.rust-lang.org; going there directly also lets us check its sha256.
  RUSTUP_CMD="curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal"
  if [ "${SGLANG_MSA_NO_RUSTUP:-0}" = 1 ]; then
    log "error: no Rust toolchain (cargo) found. Install Rust >= 1.80 first, e.g.: $RUSTUP_CMD"
    exit 1
  fi
  triple="$(uname -m)-unknown-linux-gnu"
  url="https://static.rust-lang.org/rustup/dist/$triple/rustup-init"
  tmp="$(mktemp -d)"
  log "no cargo found: installing Rust (stable, minimal profile) with rustup into ~/.cargo"
  if curl --proto '=https' --tlsv1.2 -fsSL --retry 3 -o "$tmp/rustup-init" "$url" \
     && curl --proto '=https' --tlsv1.2 -fsSL --retry 3 -o "$tmp/rustup-init.sha256" "$url.sha256" \
     && [ "$(cut -d' ' -f1 "$tmp/rustup-init.sha256")" = "$(sha256sum "$tmp/rustup-init" | cut -d' ' -f1)" ]; then
    chmod +x "$tmp/rustup-init"
    "$tmp/rustup-init" -y --no-modify-path --profile minimal --default-toolchain stable >&2
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  rm -rf "$tmp"
  command -v cargo >/dev/null 2>&1 || {
    log "error: could not install Rust from $url. Install Rust >= 1.80 yourself, e.g.: $RUSTUP_CMD"
    exit 1; }
fi

# --- 1b. the bundled FFmpeg (the wheel links it statically) ----------------------------------------
if [ "${SGLANG_MSA_FFMPEG:-bundled}" != system ]; then
  log "bundled FFmpeg: scripts/build_ffmpeg.sh (first time ~3.5 min on 2 cores, then cached)"
  bash "$ROOT/scripts/build_ffmpeg.sh" >/dev/null
fi

# --- 2. the venv with the pinned host stack --------------------------------------------------------
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
  || { log "error: Python >= 3.10 is required"; exit 1; }
stamp_want="$(cat "$ROOT/constraints.txt" | sha256sum | cut -c1-16)"
stamp_file="$VENV/.sglang-msa-stamp"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp_want" ]; then
  log "installing the host stack into $VENV (first time: ~10 min, ~9 GB; SGLang pulls torch's CUDA build)"
  "$VENV/bin/python" -m pip install -q -U pip >&2
  "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" \
    sglang torch triton transformers numpy pytest maturin aiohttp matplotlib av >&2
  echo "$stamp_want" > "$stamp_file"
fi

# --- 3. this repository ----------------------------------------------------------------------------
log "building and installing sglang-msa (maturin, FFmpeg: ${SGLANG_MSA_FFMPEG:-bundled}; cargo target dir $CARGO_TARGET_DIR)"
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation --force-reinstall "$ROOT" >&2
echo "$VENV/bin/python"
