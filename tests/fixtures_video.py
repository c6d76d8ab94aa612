"""Fixture videos made on the fly with the ffmpeg CLI (nothing is committed).

Each maker writes into a directory and returns the path; callers cache per session.
"""

from __future__ import annotations

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
