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
    produces 147, so the last indices are served by the last decoded frame."""
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
    rows = [line.split(",") for line in out.splitlines() if line.strip()]
    order = sorted(int(pts) for pts, _ in rows)
    return sorted(order.index(int(pts)) for pts, flags in rows if "K" in flags)
