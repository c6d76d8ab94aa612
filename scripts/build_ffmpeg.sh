#!/usr/bin/env bash
# Builds the minimal, LGPL-only static FFmpeg that the `sglang-msa` wheel bundles into smg_rs, with
# the two small libraries it needs (dav1d for AV1, zlib for PNG), from pristine, signed upstream
# release tarballs as mirrored by the Debian archive. Idempotent and cached: the install prefix is
# $SGLANG_MSA_CACHE/ffmpeg-<version>-<config hash> (default ~/.cache/sglang-msa/...); a second
# run with the same versions and flags only prints that path.
#
#   bash scripts/build_ffmpeg.sh            # prints the install prefix on its last stdout line
#
# What is in it (and nothing else): decoders h264 hevc vp8 vp9 mpeg4 mpeg1video mpeg2video mjpeg
# (+ AV1 through libdav1d; png webp bmp for still images), their parsers, demuxers mov/mp4,
# matroska/webm, avi, mpegts (+ the png/jpeg/webp/bmp "pipe" demuxers for images), protocols
# file and pipe, libswscale. No encoders, muxers, filters, devices, network, programs, docs or
# autodetected system libraries; no --enable-gpl/--enable-nonfree. One hardware path, opt-in at run
# time: NVIDIA's NVDEC through FFmpeg's cuvid decoders (h264_cuvid, hevc_cuvid, vp8/vp9/av1/mpeg4/
# mpeg1/mpeg2/mjpeg_cuvid), built against nv-codec-headers (MIT; headers only: libcuda and
# libnvcuvid are loaded with dlopen when a caller asks for NVDEC, never linked).
#
# Variables: SGLANG_MSA_CACHE (cache root), SGLANG_MSA_FFMPEG_JOBS (make -j, default 2),
# SGLANG_MSA_FFMPEG_NO_ASM=1 (build without nasm: works, but decoding is several times slower).
# Needs: a C compiler, make, nasm, meson + ninja (dav1d), pkg-config, curl, xz, sha256sum.
set -euo pipefail

FFMPEG_VERSION=7.1.5
DAV1D_VERSION=1.5.1
ZLIB_VERSION=1.3.1
NVCODEC_VERSION=12.1.14.0
# Debian 13 "trixie" source packages: the .orig tarballs are the upstream release tarballs
# (FFmpeg's and dav1d's verified against the upstream release signatures, .asc next to them).
DEBIAN_POOL="${SGLANG_MSA_DEBIAN_MIRROR:-http://deb.debian.org/debian}/pool/main"
FFMPEG_URL="$DEBIAN_POOL/f/ffmpeg/ffmpeg_${FFMPEG_VERSION}.orig.tar.xz"
FFMPEG_SHA256=de668509caf9e35e3cd162473441fdb29538c6d96ed080292b3cf9e6fc5d558f
DAV1D_URL="$DEBIAN_POOL/d/dav1d/dav1d_${DAV1D_VERSION}.orig.tar.xz"
DAV1D_SHA256=401813f1f89fa8fd4295805aa5284d9aed9bc7fc1fdbe554af4292f64cbabe21
ZLIB_URL="$DEBIAN_POOL/z/zlib/zlib_1.3.dfsg+really${ZLIB_VERSION}.orig.tar.gz"
ZLIB_SHA256=60dd315c07f616887caa029408308a018ace66e3d142726a97db164b3b8f69fb
NVCODEC_URL="$DEBIAN_POOL/n/nv-codec-headers/nv-codec-headers_${NVCODEC_VERSION}.orig.tar.xz"
NVCODEC_SHA256=0ca1a0c85b149646fa6ce4d600584507fdccf5a23d58e668d8701e89cee0c3fb

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SGLANG_MSA_CACHE:-$HOME/.cache/sglang-msa}"
JOBS="${SGLANG_MSA_FFMPEG_JOBS:-2}"
log() { echo "[build_ffmpeg] $*" >&2; }
die() { log "error: $*"; exit 1; }

ASM=1
if [ "${SGLANG_MSA_FFMPEG_NO_ASM:-0}" = 1 ]; then
  ASM=0
elif [ "$(uname -m)" = x86_64 ] && ! command -v nasm >/dev/null 2>&1; then
  die "nasm not found (Debian: apt-get install nasm). SGLANG_MSA_FFMPEG_NO_ASM=1 builds without it (slow decoding)."
fi

# --- the configuration (its hash names the install prefix) --------------------------------------
DECODERS=h264,hevc,vp8,vp9,mpeg4,mpeg1video,mpeg2video,mjpeg,libdav1d,png,webp,bmp
CUVID_DECODERS=h264_cuvid,hevc_cuvid,vp8_cuvid,vp9_cuvid,av1_cuvid,mpeg4_cuvid,mpeg1_cuvid,mpeg2_cuvid,mjpeg_cuvid
PARSERS=h264,hevc,vp8,vp9,av1,mpeg4video,mpegvideo,mjpeg,png,webp,bmp
DEMUXERS=mov,matroska,avi,mpegts,image_png_pipe,image_jpeg_pipe,image_webp_pipe,image_bmp_pipe
PROTOCOLS=file,pipe
FFMPEG_FLAGS=(
  --disable-everything --disable-autodetect
  --disable-programs --disable-doc --disable-network --disable-debug
  --disable-avdevice --disable-avfilter --disable-swresample --disable-postproc
  --enable-avcodec --enable-avformat --enable-swscale
  --enable-static --disable-shared --enable-pic
  --enable-zlib --enable-libdav1d --enable-ffnvcodec --enable-cuvid
  "--enable-decoder=$DECODERS,$CUVID_DECODERS" "--enable-parser=$PARSERS"
  "--enable-demuxer=$DEMUXERS" "--enable-protocol=$PROTOCOLS"
)
[ "$ASM" = 1 ] || FFMPEG_FLAGS+=(--disable-x86asm)
DAV1D_FLAGS=(--buildtype=release --default-library=static -Db_pic=true -Dbitdepths=8,16
  -Denable_tools=false -Denable_tests=false -Denable_examples=false -Denable_docs=false
  -Dlogging=false "-Denable_asm=$([ "$ASM" = 1 ] && echo true || echo false)")

key="$(printf '%s\n' "$FFMPEG_VERSION $DAV1D_VERSION $ZLIB_VERSION $NVCODEC_VERSION" "${FFMPEG_FLAGS[*]}" "${DAV1D_FLAGS[*]}" \
  "$(cc -dumpmachine 2>/dev/null)" | sha256sum | cut -c1-10)"
PREFIX="$CACHE/ffmpeg-$FFMPEG_VERSION-$key"
if [ -f "$PREFIX/.complete" ]; then
  echo "$PREFIX"
  exit 0
fi
for tool in cc make pkg-config curl xz sha256sum meson ninja; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (Debian: apt-get install build-essential pkg-config curl xz-utils meson ninja-build nasm)"
done

# --- sources (downloaded once, checksum-verified every time) -------------------------------------
DL="$CACHE/downloads"
mkdir -p "$DL"
fetch() {  # url sha256 -> path
  local url="$1" sum="$2" f
  f="$DL/$(basename "$url")"
  if [ ! -f "$f" ] || ! echo "$sum  $f" | sha256sum -c --status; then
    log "downloading $url"
    curl -fsSL --retry 3 -o "$f.part" "$url" || die "cannot download $url"
    mv "$f.part" "$f"
  fi
  echo "$sum  $f" | sha256sum -c --status || die "sha256 mismatch for $f (expected $sum)"
  echo "$f"
}
ffmpeg_tar="$(fetch "$FFMPEG_URL" "$FFMPEG_SHA256")"
dav1d_tar="$(fetch "$DAV1D_URL" "$DAV1D_SHA256")"
zlib_tar="$(fetch "$ZLIB_URL" "$ZLIB_SHA256")"
nvcodec_tar="$(fetch "$NVCODEC_URL" "$NVCODEC_SHA256")"

start=$(date +%s)
BUILD="$CACHE/ffmpeg-build-$key"
STAGE="$PREFIX"  # .complete is written last: a half-built prefix is rebuilt from scratch
rm -rf "$BUILD" "$STAGE"
mkdir -p "$BUILD" "$STAGE"
trap 'rm -rf "$BUILD"' EXIT

# --- zlib (static, PIC) -------------------------------------------------------------------------
log "zlib $ZLIB_VERSION"
tar -xzf "$zlib_tar" -C "$BUILD"
( cd "$BUILD/zlib-$ZLIB_VERSION" \
  && CFLAGS="-O2 -fPIC" ./configure --static --prefix="$STAGE" >"$BUILD/zlib.log" 2>&1 \
  && make -j"$JOBS" libz.a >>"$BUILD/zlib.log" 2>&1 && make install >>"$BUILD/zlib.log" 2>&1 ) \
  || { tail -30 "$BUILD/zlib.log" >&2; die "zlib build failed"; }

# --- dav1d (static, PIC; meson) ------------------------------------------------------------------
log "dav1d $DAV1D_VERSION"
tar -xJf "$dav1d_tar" -C "$BUILD"
( cd "$BUILD/dav1d-$DAV1D_VERSION" \
  && meson setup build --prefix="$STAGE" --libdir=lib "${DAV1D_FLAGS[@]}" >"$BUILD/dav1d.log" 2>&1 \
  && ninja -C build -j"$JOBS" install >>"$BUILD/dav1d.log" 2>&1 ) \
  || { tail -30 "$BUILD/dav1d.log" >&2; die "dav1d build failed"; }

# --- nv-codec-headers (headers + ffnvcodec.pc only) -----------------------------------------------
log "nv-codec-headers $NVCODEC_VERSION"
tar -xJf "$nvcodec_tar" -C "$BUILD"
( cd "$BUILD/nv-codec-headers-n$NVCODEC_VERSION" && make PREFIX="$STAGE" install >"$BUILD/nvcodec.log" 2>&1 ) \
  || { tail -30 "$BUILD/nvcodec.log" >&2; die "nv-codec-headers install failed"; }

# --- FFmpeg ---------------------------------------------------------------------------------------
log "FFmpeg $FFMPEG_VERSION (configure: ${FFMPEG_FLAGS[*]})"
tar -xJf "$ffmpeg_tar" -C "$BUILD"
src="$BUILD/ffmpeg-$FFMPEG_VERSION"
( cd "$src" \
  && PKG_CONFIG_LIBDIR="$STAGE/lib/pkgconfig" PKG_CONFIG_PATH="" \
     ./configure --prefix="$STAGE" --pkg-config-flags=--static \
       --extra-cflags="-I$STAGE/include" --extra-ldflags="-L$STAGE/lib" \
       "${FFMPEG_FLAGS[@]}" >"$BUILD/ffmpeg-configure.log" 2>&1 ) \
  || { tail -30 "$BUILD/ffmpeg-configure.log" >&2; tail -40 "$src/ffbuild/config.log" >&2 || true; die "FFmpeg configure failed"; }
grep -q '^License: LGPL version 2.1 or later' "$BUILD/ffmpeg-configure.log" \
  || die "FFmpeg configure did not report 'LGPL version 2.1 or later'"
( cd "$src" && make -j"$JOBS" >"$BUILD/ffmpeg-make.log" 2>&1 && make install >>"$BUILD/ffmpeg-make.log" 2>&1 ) \
  || { tail -40 "$BUILD/ffmpeg-make.log" >&2; die "FFmpeg build failed"; }

# --- license texts and the notice that ship in the wheel -----------------------------------------
mkdir -p "$STAGE/share/licenses"
cp "$src/COPYING.LGPLv2.1" "$STAGE/share/licenses/FFmpeg-COPYING.LGPLv2.1"
cp "$src/LICENSE.md" "$STAGE/share/licenses/FFmpeg-LICENSE.md"
cp "$BUILD/dav1d-$DAV1D_VERSION/COPYING" "$STAGE/share/licenses/dav1d-COPYING"
cp "$BUILD/zlib-$ZLIB_VERSION/LICENSE" "$STAGE/share/licenses/zlib-LICENSE"
# The MIT notice heading each nv-codec-headers file (the package ships no separate licence file)
sed -n '1,/\*\//p' "$BUILD/nv-codec-headers-n$NVCODEC_VERSION/include/ffnvcodec/dynlink_loader.h" \
  > "$STAGE/share/licenses/nv-codec-headers-LICENSE"
{
  echo "FFmpeg $FFMPEG_VERSION (LGPL version 2.1 or later), statically linked into smg_rs"
  echo "  source: $FFMPEG_URL"
  echo "  sha256: $FFMPEG_SHA256 (pristine upstream release tarball, signed by the FFmpeg release key)"
  echo "  configure: --pkg-config-flags=--static ${FFMPEG_FLAGS[*]}"
  echo "  unmodified; the exact build script is scripts/build_ffmpeg.sh in the sglang-msa sdist"
  echo "dav1d $DAV1D_VERSION (BSD-2-Clause), statically linked (AV1 decoding through libdav1d)"
  echo "  source: $DAV1D_URL"
  echo "  sha256: $DAV1D_SHA256"
  echo "  meson: ${DAV1D_FLAGS[*]}"
  echo "zlib $ZLIB_VERSION (zlib license), statically linked (PNG decoding)"
  echo "  source: $ZLIB_URL"
  echo "  sha256: $ZLIB_SHA256"
  echo "nv-codec-headers $NVCODEC_VERSION (MIT), headers only: FFmpeg's cuvid decoders load libcuda and"
  echo "  libnvcuvid with dlopen when NVDEC is asked for (smg_rs decoder=\"nvdec\")"
  echo "  source: $NVCODEC_URL"
  echo "  sha256: $NVCODEC_SHA256"
} > "$STAGE/share/licenses/BUILD-INFO.txt"
cp "$BUILD/ffmpeg-configure.log" "$STAGE/share/licenses/ffmpeg-configure.log"

date -u +%FT%TZ > "$PREFIX/.complete"
log "done in $(( $(date +%s) - start )) s: $PREFIX"
echo "$PREFIX"
