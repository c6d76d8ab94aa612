"""Fixture videos made on the fly with the ffmpeg CLI (nothing is committed).

Each maker writes into a directory and returns the path; callers cache per session.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

FFMPEG = shutil.which("ffmpeg")


def have_ffmpeg() -> bool:
    return FFMPEG is not None


def have_encoder(name: str) -> bool:
    if not FFMPEG:
        return False
    out = subprocess.run([FFMPEG, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return any(line.split()[1:2] == [name] for line in out.splitlines() if line.startswith(" "))


def run_ffmpeg(args: list[str], timeout: float = 120) -> None:
    cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-y", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {' '.join(cmd)}\n{res.stderr}")


def lavfi_source(size: str, rate: float, duration: float, pattern: str = "testsrc2") -> list[str]:
    sep = ":" if "=" in pattern else "="  # "color=c=black" already has options
    return ["-f", "lavfi", "-i", f"{pattern}{sep}size={size}:rate={rate}:duration={duration}"]


def make(out: Path, size: str, rate: float, duration: float, codec_args: list[str], pattern: str = "testsrc2", extra: list[str] | None = None) -> Path:
    run_ffmpeg([*lavfi_source(size, rate, duration, pattern), *(extra or []), *codec_args, str(out)])
    return out


def h264_odd_444(d: Path) -> Path:
    """203x117 (odd sides), yuv444p H.264 in MP4, 30 fps, 3.2 s (96 frames)."""
    return make(d / "h264_odd_444.mp4", "203x117", 30, 3.2, ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p"])


def h264_bframes(d: Path) -> Path:
    """320x240 yuv420p H.264 with B-frames, 29.97 fps, 4 s, faststart."""
    return make(
        d / "h264_b.mp4", "320x240", 30000 / 1001, 4.0,
        ["-c:v", "libx264", "-preset", "veryfast", "-bf", "3", "-pix_fmt", "yuv420p", "-movflags", "+faststart"],
    )


def vp9_webm(d: Path) -> Path:
    return make(d / "vp9.webm", "160x90", 25, 2.0, ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "200k"])


def mpeg4_avi(d: Path) -> Path:
    return make(d / "mpeg4.avi", "176x144", 25, 2.0, ["-c:v", "mpeg4", "-q:v", "3"])


def hevc_10bit_mkv(d: Path) -> Path:
    return make(
        d / "hevc10.mkv", "192x108", 24, 1.5,
        ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le", "-x265-params", "log-level=error"],
    )


def rotated_mp4(d: Path, degrees: int = 90) -> Path:
    """Landscape 160x96 frames with display-matrix rotation metadata (no re-encode)."""
    base = make(d / f"unrotated_{degrees}.mp4", "160x96", 10, 1.0, ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"])
    out = d / f"rotated_{degrees}.mp4"
    run_ffmpeg(["-i", str(base), "-c", "copy", "-metadata:s:v:0", f"rotate={degrees}", str(out)])
    return out


def vfr_mp4(d: Path) -> Path:
    """Variable frame rate: 30 fps for 1 s, then 10 fps for 2 s."""
    expr = "if(lt(N,30),N/30,1+(N-30)/10)/TB"
    return make(
        d / "vfr.mp4", "128x96", 30, 1.0 + 20 / 30, ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"],
        extra=["-vf", f"setpts='{expr}'", "-fps_mode", "passthrough"],
    )


def sized_h264(d: Path, name: str, size: str, rate: float, duration: float) -> Path:
    return make(d / name, size, rate, duration, ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"])


# Short GOPs (a keyframe every 12 frames or sooner): sparse selections let the decoder seek.
GOP12_H264 = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "12", "-pix_fmt", "yuv420p"]
GOP12_B2_H264 = ["-c:v", "libx264", "-preset", "veryfast", "-g", "12", "-bf", "2", "-pix_fmt", "yuv420p"]


def h264_gop12(d: Path) -> Path:
    """128x72 H.264 in MP4, keyframe every 12 frames, no B-frames, 25 fps, 6 s (150 frames)."""
    return make(d / "h264_g12.mp4", "128x72", 25, 6.0, GOP12_H264)


def h264_gop12_bframes(d: Path) -> Path:
    """Short GOPs with two B-frames (decode order differs from presentation order), MP4."""
    return make(d / "h264_g12_b2.mp4", "128x72", 25, 6.0, GOP12_B2_H264)


def h264_ts(d: Path) -> Path:
    """160x120 H.264 with B-frames in MPEG-TS (90 kHz timestamps that start at 1.4 s, no index), 25 fps, 3 s."""
    return make(d / "h264_b.ts", "160x120", 25, 3.0, ["-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-pix_fmt", "yuv420p", "-f", "mpegts"])


def h264_gop12_bframes_ts(d: Path) -> Path:
    """Short GOPs with two B-frames in MPEG-TS (seeking by bytes: the demuxer has no index)."""
    return make(d / "h264_g12_b2.ts", "128x72", 25, 6.0, [*GOP12_B2_H264, "-f", "mpegts"])


def h264_gop12_bframes_mkv(d: Path) -> Path:
    """The same in Matroska (seek index by presentation time, guessed decode times)."""
    return make(d / "h264_g12_b2.mkv", "128x72", 25, 6.0, GOP12_B2_H264)


def vfr_gop12(d: Path) -> Path:
    """Variable frame rate with short GOPs: 30 fps for 2 s, then 10 fps for 4 s (100 frames)."""
    expr = "if(lt(N,60),N/30,2+(N-60)/10)/TB"
    return make(
        d / "vfr_g12.mp4", "128x72", 30, 2.0 + 40 / 30, GOP12_H264,
        extra=["-vf", f"setpts='{expr}'", "-fps_mode", "passthrough"],
    )


def hevc_gop12_mkv(d: Path) -> Path:
    """HEVC, x265's default open GOPs (leading pictures shown before their keyframe)."""
    return make(
        d / "hevc_g12.mkv", "128x72", 25, 6.0,
        ["-c:v", "libx265", "-preset", "ultrafast", "-g", "12", "-pix_fmt", "yuv420p", "-x265-params", "log-level=error"],
    )


def vp9_gop12_webm(d: Path) -> Path:
    return make(
        d / "vp9_g12.webm", "128x72", 25, 6.0,
        ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "200k", "-g", "12"],
    )


def mpeg4_gop12_avi(d: Path) -> Path:
    return make(d / "mpeg4_g12.avi", "128x72", 25, 6.0, ["-c:v", "mpeg4", "-q:v", "4", "-g", "12"])


def h264_gop12_dead_tail(d: Path, dead: int = 3) -> Path:
    """h264_gop12 whose last `dead` packets are zeroed: the scan counts 150 frames, the decoder
    rejects the last `dead` packets (a damaged stream: asking for those frames raises)."""
    path = h264_gop12(d)
    out = probe_packets(path, "pos,size", "json")
    packets = sorted((int(p["pos"]), int(p["size"])) for p in json.loads(out)["packets"])
    data = bytearray(path.read_bytes())
    for pos, size in packets[-dead:]:
        data[pos:pos + size] = bytes(size)
    dead_path = d / "h264_g12_dead_tail.mp4"
    dead_path.write_bytes(bytes(data))
    return dead_path


def probe_packets(path: Path, entries: str, of: str) -> str:
    """ffprobe's listing of the first video stream's packets: ``entries`` fields in format ``of``."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        raise RuntimeError("needs ffprobe")
    return subprocess.run(
        [ffprobe, "-v", "error", "-select_streams", "v:0", "-show_entries", f"packet={entries}", "-of", of, str(path)],
        capture_output=True, text=True, check=True,
    ).stdout


def keyframe_indices(path: Path) -> list[int]:
    """Presentation indices of the video packets flagged as keyframes (ffprobe)."""
    out = probe_packets(path, "pts,flags", "csv=p=0")
    rows = [line.split(",")[:2] for line in out.splitlines() if line.strip()]  # MPEG-TS adds a field
    order = sorted(int(pts) for pts, _ in rows)
    return sorted(order.index(int(pts)) for pts, flags in rows if "K" in flags)


# ----------------------------------------------------------------- edge inputs (issue #15)


def damaged_mp4(d: Path) -> tuple[Path, Path]:
    """(clean, damaged): 320x240 H.264 in MP4, 25 fps, 6 s, keyframes every 50 frames, no
    B-frames; in the damaged copy a run of 1% of the file's bytes, starting in the packet of
    frame 77 (inside the second GOP), is inverted. Frames before it and the whole third GOP
    are intact."""
    clean = make(d / "damage_clean.mp4", "320x240", 25, 6.0, ["-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-pix_fmt", "yuv420p"])
    packets = json.loads(probe_packets(clean, "pts,pos,size", "json"))["packets"]
    by_pts = sorted((int(p["pts"]), int(p["pos"]), int(p["size"])) for p in packets)
    _, start, size = by_pts[77]
    data = bytearray(clean.read_bytes())
    run = len(data) // 100
    assert start + size // 2 + run < by_pts[100][1], "the damage must end before the third GOP"
    for i in range(start + size // 2, start + size // 2 + run):
        data[i] ^= 0xFF
    damaged = d / "damage_flipped.mp4"
    damaged.write_bytes(bytes(data))
    return clean, damaged


def two_video_streams_mp4(d: Path) -> Path:
    """Two video streams: the first (default disposition) 96x64 testsrc2, the second a larger
    160x120 smptebars. FFmpeg's best stream is the first."""
    out = d / "two_streams.mp4"
    run_ffmpeg([
        *lavfi_source("96x64", 10, 1.0), *lavfi_source("160x120", 10, 1.0, "smptebars"),
        "-map", "0", "-map", "1", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(out),
    ])
    return out


def vp9_odd_420(d: Path) -> Path:
    """203x117 (odd sides) 4:2:0 VP9 in WebM (testsrc: testsrc2 rounds sizes to even)."""
    return make(d / "vp9_odd420.webm", "203x117", 10, 1.0, ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-pix_fmt", "yuv420p"], pattern="testsrc")


def with_display_matrix(src: Path, out: Path, a: int, b: int, c: int, d: int) -> Path:
    """`src` (an MP4 with one track) with its track header's matrix set to [a b; c d] (the
    translation as muxers write it). The FFmpeg 5.1 CLI cannot write flips (-display_hflip
    came with 6.0), so the tkhd box is patched in place."""
    import struct

    data = bytearray(src.read_bytes())
    i = data.find(b"tkhd")
    version = data[i + 4]
    # version/flags, creation/modification times, track id, reserved, duration, reserved(8),
    # layer, alternate group, volume, reserved: then the 3x3 matrix
    off = i + 4 + 4 + (32 if version == 1 else 20) + 8 + 8
    old = struct.unpack(">9i", data[off:off + 36])
    assert old[8] == 1 << 30, old
    width, height = struct.unpack(">II", data[off + 36:off + 44])
    tx = (width if a < 0 or b < 0 else 0)
    ty = (height if d < 0 or c < 0 else 0)
    struct.pack_into(">9i", data, off, a << 16, b << 16, 0, c << 16, d << 16, 0, tx, ty, 1 << 30)
    out.write_bytes(bytes(data))
    return out


def lost_timestamp_mkv(d: Path) -> Path:
    """150 frames at 25 fps (6 s) with packets 60..110 dropped and one early block's timestamp
    made unreadable (a relative time that would fall before its cluster): FFmpeg demuxes that
    packet without a timestamp. The last frame is at 5.96 s."""
    base = make(d / "lost_base.mkv", "128x72", 25, 6.0, ["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p"])
    dropped = d / "lost_dropped.mkv"
    run_ffmpeg(["-i", str(base), "-c", "copy", "-bsf:v", "noise=drop=between(n\\,60\\,110)", str(dropped)])
    data = bytearray(dropped.read_bytes())
    cluster = data.find(b"\x1f\x43\xb6\x75")
    blocks, i = [], cluster
    while len(blocks) < 4:  # SimpleBlocks of track 1 in the first cluster
        i = data.find(b"\xa3", i + 1)
        size_len = next(k for k in range(8) if data[i + 1] & (0x80 >> k)) + 1
        if data[i + 1 + size_len] == 0x81:
            blocks.append(i + 1 + size_len + 1)
    data[blocks[-1]:blocks[-1] + 2] = b"\x80\x00"  # int16 -32768 before a cluster at 0
    out = d / "lost_timestamp.mkv"
    out.write_bytes(bytes(data))
    return out
