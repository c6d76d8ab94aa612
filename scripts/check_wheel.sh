#!/usr/bin/env bash
# Checks the self-contained wheel: builds it (default, bundled FFmpeg) unless one is given, then
#   1. size <= 25 MB (SGLANG_MSA_MAX_WHEEL_MB), abi3 tag, the FFmpeg/dav1d/zlib notices inside;
#   2. the extension module NEEDs no libav*/libsw*/libdav1d/libz (readelf) and ldd resolves none;
#   3. it installs into a fresh venv (no system site-packages, only numpy beside it) and decodes
#      sample videos (H.264/MP4, VP9/WebM, MPEG-4/AVI, AV1/MP4 when the ffmpeg CLI can encode them)
#      with the system's FFmpeg libraries made unreadable (bind-mounted /dev/null, in a private
#      mount namespace; needs root + unshare, else it says so and loads them normally: step 2
#      already shows they are not used).
#   bash scripts/check_wheel.sh [path/to/sglang_msa-*.whl]
# Variables: PYTHON (builds the wheel; default the setup venv's), SGLANG_MSA_CACHE.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SGLANG_MSA_CACHE:-$HOME/.cache/sglang-msa}"
PY="${PYTHON:-$CACHE/venv/bin/python}"
MAX_MB="${SGLANG_MSA_MAX_WHEEL_MB:-25}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
log() { echo "[check_wheel] $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# --- the wheel -------------------------------------------------------------------------------------
if [ $# -ge 1 ]; then
  WHEEL="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
else
  log "building the wheel (bundled FFmpeg)"
  start=$(date +%s)
  env -u SGLANG_MSA_FFMPEG "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$ROOT" >&2
  WHEEL="$(ls "$WORK"/dist/sglang_msa-*.whl)"
  log "built in $(( $(date +%s) - start )) s"
fi
name="$(basename "$WHEEL")"
bytes=$(stat -c %s "$WHEEL")
log "$name: $(( bytes / 1024 )) KiB"
[[ "$name" == *-abi3-* ]] || fail "not an abi3 wheel: $name"
[[ "$name" == *-manylinux_* ]] || fail "not a manylinux wheel (PyPI refuses linux_x86_64): $name"
[ "$bytes" -le $(( MAX_MB * 1000 * 1000 )) ] || fail "wheel is larger than $MAX_MB MB"

mkdir -p "$WORK/unpacked"
"$PY" -m zipfile -e "$WHEEL" "$WORK/unpacked"
for f in NOTICE-FFmpeg.md FFmpeg-COPYING.LGPLv2.1 FFmpeg-LICENSE.md dav1d-COPYING zlib-LICENSE nv-codec-headers-LICENSE; do
  ls "$WORK"/unpacked/*.dist-info/licenses/licenses/"$f" >/dev/null 2>&1 \
    || fail "$f is not in the wheel's .dist-info/licenses/licenses/"
done
so="$(find "$WORK/unpacked" -name 'smg_rs*.so' | head -1)"
[ -n "$so" ] || fail "no smg_rs extension module in the wheel"

# --- what the extension links ----------------------------------------------------------------------
needed="$(readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
log "NEEDED: $needed"
if grep -Eq 'lib(avcodec|avformat|avutil|avfilter|avdevice|swscale|swresample|postproc|dav1d|z)\.so' <<<"$needed"; then
  fail "the extension module still needs shared FFmpeg libraries: $needed"
fi
if ldd "$so" | grep -E 'lib(av|sw|postproc|dav1d|z\.)|not found' >&2; then
  fail "ldd resolves FFmpeg libraries (or misses some), see above"
fi
log "ldd: $(ldd "$so" | awk '{print $1}' | tr '\n' ' ')"

# --- a clean venv, sample videos, the system FFmpeg hidden -----------------------------------------
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q "$WHEEL" >&2
samples=()
if command -v ffmpeg >/dev/null 2>&1; then
  enc() { ffmpeg -hide_banner -encoders 2>/dev/null | awk '{print $2}' | grep -qx "$1"; }
  mk() { ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc2=size=160x120:rate=24:duration=1 "$@"; }
  enc libx264 && mk -c:v libx264 -pix_fmt yuv420p "$WORK/h264.mp4" && samples+=("$WORK/h264.mp4")
  enc libvpx-vp9 && mk -c:v libvpx-vp9 -deadline realtime -cpu-used 8 "$WORK/vp9.webm" && samples+=("$WORK/vp9.webm")
  enc mpeg4 && mk -c:v mpeg4 "$WORK/mpeg4.avi" && samples+=("$WORK/mpeg4.avi")
  if enc libaom-av1; then
    mk -c:v libaom-av1 -cpu-used 8 -row-mt 1 "$WORK/av1.mp4" && samples+=("$WORK/av1.mp4")
  elif enc libsvtav1; then
    mk -c:v libsvtav1 -preset 12 "$WORK/av1.mp4" && samples+=("$WORK/av1.mp4")
  fi
fi
((${#samples[@]})) || fail "no sample video (needs the ffmpeg CLI with libx264 to make one)"
cat > "$WORK/decode.py" <<'EOF'
import sys
import smg_rs
for path in sys.argv[1:]:
    f = smg_rs.preprocess_video(path, preset="minimax_m3")
    info = {k: getattr(f, k) for k in ("codec", "num_frames") if hasattr(f, k)}
    print(f"decoded {path.rsplit('/', 1)[-1]}: {info or f}")
with open(sys.argv[1], "rb") as fh:  # in-memory input too
    smg_rs.preprocess_video(fh.read(), preset="minimax_m3")
print("smg_rs", smg_rs.__version__, "OK")
EOF
run_py=("$WORK/venv/bin/python" -I "$WORK/decode.py" "${samples[@]}")
hide='for f in /usr/lib/*-linux-gnu/lib{avcodec,avformat,avutil,avfilter,avdevice,swscale,swresample,postproc,dav1d}.so*; do
        [ -e "$f" ] && mount --bind /dev/null "$f"; done; exec "$@"'
if [ "$(id -u)" -eq 0 ] && command -v unshare >/dev/null && unshare -m true 2>/dev/null; then
  log "decoding with the system FFmpeg libraries hidden"
  (cd "$WORK" && unshare -m bash -c "$hide" _ env -i PATH=/usr/bin:/bin "${run_py[@]}") || fail "decode in the clean venv failed"
else
  log "cannot hide the system libraries here (needs root + unshare -m); decoding with them present"
  (cd "$WORK" && env -i PATH=/usr/bin:/bin "${run_py[@]}") || fail "decode in the clean venv failed"
fi
log "OK: $name ($(( bytes / 1024 )) KiB) is self-contained"
