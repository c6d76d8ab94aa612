"""Peers and bounds for benchmarks/bench_preprocess.py (issue #15).

* `ffmpeg_subprocess_factory`: the SMG-style pipeline. `ffprobe` for the frame count, rate and
  size, then one `ffmpeg` CLI subprocess that decodes and keeps only the sampled frames
  (`-vf select=...`, stopping after the last one) as raw rgb24 over a pipe; resize, rescale,
  normalize and patchify happen in Python. It reproduces the minimax_m3 preset (= SGLang's
  `get_video_tensor` + the HF MiniMaxM3VLVideoProcessor): the same frame indices (SGLang's
  sampling function), the same target size (SGLang's `get_hw_multiple_of`, then HF
  `smart_resize`), antialiased bicubic on float frames (Pillow's mode "F" resampling, the
  algorithm torchvision's antialiased bicubic was ported from), (x - 255 mean) / (255 std),
  last frame repeated to an even count, the HF patch layout. Differences left: the ffmpeg
  CLI's own YUV->RGB conversion (swscale, as its default filter graph sets it up) may round a
  level apart from TorchCodec's; the `max_abs_err_vs_hf` column records it.
* `run_concurrent`: a thread pool of N workers over a list of requests, videos/s.
* `wheel_report` / `elf_needed`: wheel size and the extension's ELF DT_NEEDED entries.
* `rss_growth`: RSS of a fresh process over N calls on one clip (read after each call; lowest of the
  first tenth vs lowest of the last tenth, so allocator arena swings do not read as growth).
* `build_targets`: issue #15's targets, each with value, target, met, miss margin, why.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import struct
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PATCH, TEMPORAL, MERGE = 14, 2, 2
MAX_PIXELS, MIN_PIXELS = 768 * 28 * 28, 4 * 28 * 28


# ------------------------------------------------------------------ ffmpeg CLI subprocess path


def ffprobe_video(path: Path) -> tuple[int, float, int, int]:
    """(frame count, average fps, width, height) of the first video stream, from the header
    (the numbers TorchCodec's metadata reports for these MP4s)."""
    out = subprocess.run(
        [shutil.which("ffprobe") or "ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=nb_frames,avg_frame_rate,width,height", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout
    s = json.loads(out)["streams"][0]
    n = int(s.get("nb_frames") or 0)
    if n <= 0:  # no count in the header (e.g. Matroska): count packets
        out = subprocess.run(
            ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
             "stream=nb_read_packets", "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True,
        ).stdout
        n = int(out.strip().split(",")[0])
    return n, float(Fraction(s["avg_frame_rate"])), int(s["width"]), int(s["height"])


def ffmpeg_rgb_frames(path: Path, indices: list[int], width: int, height: int, threads: int) -> np.ndarray:
    """The frames at presentation `indices` (sorted, unique) as uint8 (n, H, W, 3), from one
    ffmpeg CLI run: decode, `select` the wanted frames, stop after the last, rgb24 to stdout."""
    expr = "+".join(f"eq(n\\,{i})" for i in indices)
    cmd = [
        shutil.which("ffmpeg") or "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", str(threads),
        "-i", str(path), "-map", "0:v:0", "-vf", f"select='{expr}'", "-fps_mode", "passthrough",
        "-frames:v", str(len(indices)), "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
    ]
    res = subprocess.run(cmd, capture_output=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({res.returncode}): {res.stderr.decode(errors='replace')[-500:]}")
    frame_bytes = width * height * 3
    if len(res.stdout) != frame_bytes * len(indices):
        raise RuntimeError(f"ffmpeg gave {len(res.stdout)} bytes, expected {len(indices)} frames of {width}x{height}")
    return np.frombuffer(res.stdout, np.uint8).reshape(len(indices), height, width, 3)


def resize_bicubic_aa(frames: np.ndarray, height: int, width: int, threads: int = 1) -> np.ndarray:
    """uint8 (T, H, W, 3) -> float32 (T, 3, height, width): antialiased bicubic on float values
    per channel (Pillow mode "F", no rounding or clamping), as torchvision resizes float tensors.
    Frames are spread over `threads` threads (Pillow releases the GIL while resampling)."""
    from PIL import Image

    t, h, w, _ = frames.shape
    out = np.empty((t, 3, height, width), np.float32)

    def one(i: int) -> None:
        for c in range(3):
            plane = Image.fromarray(np.ascontiguousarray(frames[i, :, :, c])).convert("F")
            if (h, w) != (height, width):
                plane = plane.resize((width, height), Image.Resampling.BICUBIC)
            out[i, c] = np.asarray(plane, np.float32)

    if threads > 1 and t > 1:
        with ThreadPoolExecutor(min(threads, t)) as ex:
            list(ex.map(one, range(t)))
    else:
        for i in range(t):
            one(i)
    return out


def normalize_patchify(video: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """float (T, 3, H, W) in 0..255 -> HF MiniMaxM3VL `pixel_values_videos` and grid (t, h, w)."""
    mean = np.asarray(CLIP_MEAN, np.float32).reshape(1, 3, 1, 1) * 255
    scale = 1 / (np.asarray(CLIP_STD, np.float32).reshape(1, 3, 1, 1) * 255)
    video = (video - mean) * scale
    if pad := -video.shape[0] % TEMPORAL:
        video = np.concatenate([video, np.repeat(video[-1:], pad, 0)], 0)
    t, c, h, w = video.shape
    gt, gh, gw = t // TEMPORAL, h // PATCH, w // PATCH
    v = video.reshape(gt, TEMPORAL, c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    v = v.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(v).reshape(gt * gh * gw, c * TEMPORAL * PATCH * PATCH), (gt, gh, gw)


def ffmpeg_subprocess_factory(sgl: dict, smart_resize, fps: float = 1.0):
    """The SMG-style path; `sgl` holds SGLang's sampling / size helpers (test_smg_rs loader),
    `smart_resize` the HF one. Returns run(path, threads) -> (pixel_values, grid, indices); the
    last call's stage times (ms) are in run.stages."""
    factor = PATCH * MERGE
    side = math.isqrt(MAX_PIXELS)
    max_long = side - side % factor

    def run(path: Path, threads: int):
        t0 = time.perf_counter()
        n, vfps, w, h = ffprobe_video(path)
        indices = sgl["_compute_sampled_frame_indices"](n, vfps, fps, None)
        want = sorted(set(indices))
        t1 = time.perf_counter()
        got = ffmpeg_rgb_frames(path, want, w, h, threads)
        t2 = time.perf_counter()
        pos = {ix: k for k, ix in enumerate(want)}
        frames = got[[pos[i] for i in indices]] if want != list(indices) else got
        rw, rh = sgl["get_hw_multiple_of"]((w, h), factor, max_long)
        hh, ww = smart_resize(rh, rw, factor=factor, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
        video = resize_bicubic_aa(frames, rh, rw, threads)
        if (hh, ww) != (rh, rw):  # the HF processor resizes once more (float in, float out)
            from PIL import Image

            video = np.stack([np.stack([np.asarray(Image.fromarray(p).resize((ww, hh), Image.Resampling.BICUBIC))
                                        for p in f]) for f in video])
        t3 = time.perf_counter()
        pv, grid = normalize_patchify(video)
        t4 = time.perf_counter()
        run.stages = {"probe_ms": (t1 - t0) * 1e3, "ffmpeg_ms": (t2 - t1) * 1e3, "resize_ms": (t3 - t2) * 1e3,
                      "normalize_patchify_ms": (t4 - t3) * 1e3}
        return pv, grid, indices

    run.stages = {}
    return run


# ------------------------------------------------------------------------------ concurrency


def run_concurrent(fn, requests: list, workers: int) -> dict:
    """`fn(request)` for every request on a pool of `workers` threads: throughput and latency."""
    lat: list[float] = []

    def one(req):
        t = time.perf_counter()
        fn(req)
        lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, requests))
    wall = time.perf_counter() - t0
    lat.sort()
    return {
        "requests": len(requests), "workers": workers, "wall_s": round(wall, 3),
        "videos_per_s": round(len(requests) / wall, 3),
        "latency_p50_ms": round(statistics.median(lat) * 1e3, 1),
        "latency_p95_ms": round(lat[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)] * 1e3, 1),
    }


# ------------------------------------------------------------------------------------ wheel


def elf_needed(data: bytes) -> list[str]:
    """DT_NEEDED entries of an ELF shared object (32/64-bit, either byte order)."""
    if data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    is64, end = data[4] == 2, "<" if data[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(end + "Q", data, 0x28)
        shentsize, shnum = struct.unpack_from(end + "HH", data, 0x3A)
        sh_fmt, dyn_fmt = end + "IIQQQQIIQQ", end + "qQ"
    else:
        shoff, = struct.unpack_from(end + "I", data, 0x20)
        shentsize, shnum = struct.unpack_from(end + "HH", data, 0x2E)
        sh_fmt, dyn_fmt = end + "IIIIIIIIII", end + "iI"
    sections = [struct.unpack_from(sh_fmt, data, shoff + i * shentsize) for i in range(shnum)]
    needed = []
    for sec in sections:
        if sec[1] != 6:  # SHT_DYNAMIC
            continue
        off, size, link, entsize = sec[4], sec[5], sec[6], sec[9] or struct.calcsize(dyn_fmt)
        stroff = sections[link][4]
        for k in range(size // entsize):
            tag, val = struct.unpack_from(dyn_fmt, data, off + k * entsize)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                e = data.index(b"\0", stroff + val)
                needed.append(data[stroff + val:e].decode())
    return needed


def _is_ffmpeg_lib(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith(("libav", "libsw", "libpostproc"))


def find_wheel(path: Path | None) -> Path | None:
    """`path` itself if a .whl, else the newest .whl under it (recursively)."""
    if path is None:
        return None
    if path.is_file():
        return path
    wheels = sorted(path.rglob("*.whl"), key=lambda p: p.stat().st_mtime)
    return wheels[-1] if wheels else None


def wheel_report(wheel: Path | None, installed_ext: Path | None = None) -> dict:
    """Size of the wheel and its smg_rs extension's ELF NEEDED entries. needs_system_ffmpeg:
    a NEEDED entry names libav*/libsw*/libpostproc* and no file of that name ships in the
    wheel (auditwheel-style bundling would not need a system FFmpeg). Without a wheel the
    installed extension is inspected (size unknown)."""
    rep: dict = {"wheel": str(wheel) if wheel else None}
    if wheel is not None:
        rep["wheel_bytes"] = wheel.stat().st_size
        rep["wheel_mb"] = round(wheel.stat().st_size / 1e6, 2)
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            exts = [n for n in names if "smg_rs" in n and (n.endswith(".so") or ".so." in n)]
            shipped = {n.rsplit("/", 1)[-1] for n in names}
            largest = sorted(zf.infolist(), key=lambda i: -i.file_size)[:5]
            rep["largest_files_mb"] = {i.filename: round(i.file_size / 1e6, 2) for i in largest}
            needed = {e: elf_needed(zf.read(e)) for e in exts}
    elif installed_ext is not None and installed_ext.exists():
        rep.update(wheel_bytes=None, wheel_mb=None, source="installed extension " + str(installed_ext))
        shipped, needed = set(), {str(installed_ext): elf_needed(installed_ext.read_bytes())}
    else:
        return {**rep, "wheel_mb": None, "needs_system_ffmpeg": None, "needed": {}}
    ff = sorted({n for libs in needed.values() for n in libs if _is_ffmpeg_lib(n)})
    rep.update(needed=needed, ffmpeg_needed=ff, needs_system_ffmpeg=(bool(needed) or None) and any(n not in shipped for n in ff))
    if not needed:
        rep["note"] = "no smg_rs extension found in the wheel"
    return rep


# -------------------------------------------------------------------------------------- RSS

RSS_CHILD = r"""
import gc, json, sys, smg_rs
def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
path, warm, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(warm):
    smg_rs.preprocess_video(path)
gc.collect(); trace = [rss_kb()]
for _ in range(calls):
    smg_rs.preprocess_video(path)
    gc.collect(); trace.append(rss_kb())
print(json.dumps({"rss_trace_kb": trace}))
"""


def rss_window_growth(trace_kb: list[int]) -> tuple[float, int]:
    """(MB, calls) between the lowest RSS of the first tenth of `trace_kb` (one reading after each
    call; at least 5 readings) and the lowest of the last tenth, `calls` apart (window centres).

    glibc keeps each thread's malloc arena heap mapped or trims it depending on what was freed
    last, so one reading can sit ~3-5 MB above the next (measured on the 8 MB clip: RSS swings
    between 42.3 and 45.9 MB and back over 600 calls, flat otherwise). Those swings go up and come
    back, so the lowest reading of a window drops them; a leak raises every reading, the lowest too.
    """
    k = max(5, len(trace_kb) // 10)
    if len(trace_kb) < 2 * k:
        k = max(1, len(trace_kb) // 2)
    calls = len(trace_kb) - k
    return (min(trace_kb[-k:]) - min(trace_kb[:k])) / 1024, calls


def rss_growth(path: Path, calls: int = 100, warmup: int = 10) -> dict:
    """RSS growth of a fresh interpreter over `calls` preprocess_video calls after `warmup`
    (see rss_window_growth), per 100 calls; the plain first/last difference is kept beside it."""
    r = subprocess.run([sys.executable, "-c", RSS_CHILD, str(path), str(warmup), str(calls)],
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        return {"error": r.stderr[-500:], "rss_growth_mb_per_100_calls": None}
    trace = json.loads(r.stdout.strip().splitlines()[-1])["rss_trace_kb"]
    growth_mb, span = rss_window_growth(trace)
    return {"rss_before_kb": trace[0], "rss_after_kb": trace[-1], "rss_min_kb": min(trace), "rss_max_kb": max(trace),
            "clip_mb": round(path.stat().st_size / 1e6, 2), "warmup_calls": warmup, "calls": calls,
            "rss_growth_first_last_mb_per_100_calls": round((trace[-1] - trace[0]) / 1024 * 100 / calls, 3),
            "rss_growth_mb_per_100_calls": round(growth_mb * 100 / max(span, 1), 3),
            "rss_growth_method": "lowest RSS of the last tenth of the per-call readings minus lowest of the first "
                                 "tenth (>= 5 readings each), per 100 calls between the windows' centres"}


# ---------------------------------------------------------------------------------- targets


def _target(value, target, higher_is_better: bool = True, why: str | None = None) -> dict:
    if value is None:
        return {"value": None, "target": target, "met": None, "miss_margin": None, "why": why or "not measured"}
    if isinstance(target, bool):
        met = value == target
        return {"value": value, "target": target, "met": met, "miss_margin": None if met else f"{value} instead of {target}",
                **({"why": why} if why and not met else {})}
    met = value >= target if higher_is_better else value <= target
    d = {"value": value, "target": target, "met": met, "op": ">=" if higher_is_better else "<=",
         "miss_margin": None}
    if not met:
        gap = (target - value) if higher_is_better else (value - target)
        d["miss_margin"] = {"absolute": round(gap, 3), "relative": round(gap / abs(target), 3) if target else None}
        if why:
            d["why"] = why
    return d


def _spread_note(rows: list[dict], paths: tuple) -> str:
    """How far apart one path's calls were in this run (rows timed interleaved, bench_preprocess)."""
    spreads = {p: max(r["spread"][p] for r in rows) for p in paths if rows and all(p in r.get("spread", {}) for r in rows)}
    if not spreads:
        return ""
    return (" Calls of one path spread by up to " + ", ".join(f"{100 * v:.0f}% ({p})" for p, v in spreads.items())
            + " of their median between rounds on this machine.")


def build_targets(summary: dict, classes: dict, wheel: dict, rss: dict) -> dict:
    """Issue #15's targets from the summary; `classes` maps a clip class to its rows (for the
    explanations), `wheel` / `rss` are wheel_report / rss_growth."""
    t: dict = {}
    for cls, frac in summary["fraction_of_decode_bound"].items():
        rows = [r["threads2"] for r in classes[cls]]
        extra = statistics.mean(r["smg_rs_ms"] - r["smg_rs_decode_only_ms"] for r in rows)
        dec = statistics.mean(r["smg_rs_decode_only_ms"] for r in rows)
        cpu = statistics.mean(r.get("smg_rs_cpu_per_wall", float("nan")) for r in rows)
        why = (f"{cls}: preprocess_video takes {extra:.1f} ms beyond decode_frames' {dec:.1f} ms on average "
               f"(2 threads): resize + rescale/normalize + patchify + the output copy are "
               f"{100 * (1 - frac):.0f}% of our time; the target allows 13% (1.15x decode). Process CPU "
               f"time / wall over our call = {cpu:.2f} on {summary['cores']} cores"
               + (", i.e. the cores are already busy, so overlapping resize with decoding cannot hide it."
                  if cpu > 0.85 * min(2, summary["cores"] or 1) else ", so some of the resize could still overlap decoding.")
               + _spread_note(rows, ("smg_rs", "smg_rs_decode_only"))
               + (f" With 1 thread (resize on a core the decoder leaves free) the fraction is "
                  f"{summary['fraction_of_decode_bound_1thread'][cls]}."
                  if cls in summary.get("fraction_of_decode_bound_1thread", {}) else ""))
        t[f"fraction_of_decode_bound.{cls}"] = _target(frac, 0.87, why=why)
    ub = summary["speedup_upper_bound_if_only_decoding"]
    t["speedup_vs_sglang_python"] = _target(
        summary["speedup_vs_sglang_python"], 2.0,
        why=f"even with free resize/normalize the bound is python_ms / our decode-only ms = {ub.get('videos_threads2')}x "
            "on these clips (same FFmpeg H.264 decoder as TorchCodec, every frame up to the last sampled one decoded)")
    if "speedup_vs_sglang_python_long_gop2s" in summary:
        t["speedup_vs_sglang_python_long_gop2s"] = _target(
            summary["speedup_vs_sglang_python_long_gop2s"], 3.5,
            why=f"bound if only decoding counted: {ub.get('videos_long_threads2')}x (2 threads)"
                + _spread_note([r["threads2"] for r in classes.get("videos_long", [])], ("smg_rs", "python")))
    else:
        t["speedup_vs_sglang_python_long_gop2s"] = _target(None, 3.5, why="long clip not run")
    fs = summary.get("speedup_vs_ffmpeg_subprocess")
    fb = summary.get("speedup_vs_ffmpeg_subprocess_upper_bound_if_only_decoding")
    t["speedup_vs_ffmpeg_subprocess"] = _target(
        fs, 1.5, why=f"the ffmpeg CLI decodes the sampled frames in ffmpeg_subprocess_decode_ms; ours can be at most "
                     f"{fb}x faster if our resize/normalize cost nothing (geomean, 2 threads)")
    whymb = "largest files: " + ", ".join(f"{k} {v} MB" for k, v in wheel.get("largest_files_mb", {}).items())
    t["wheel_mb"] = _target(wheel.get("wheel_mb"), 25, higher_is_better=False,
                            why=whymb if wheel.get("wheel_mb") is not None else "no wheel given (--wheel)")
    t["wheel_needs_system_ffmpeg"] = _target(
        wheel.get("needs_system_ffmpeg"), False,
        why="the extension's ELF NEEDED names " + ", ".join(wheel.get("ffmpeg_needed", [])) if wheel.get("ffmpeg_needed")
        else None)
    g = rss.get("rss_growth_mb_per_100_calls")
    t["rss_growth_mb_per_100_calls"] = _target(
        g, 5, higher_is_better=False,
        why=(f"RSS grew {g} MB per 100 calls on a {rss.get('clip_mb')} MB clip after {rss.get('warmup_calls')} "
             "warm-up calls (lowest readings of the first and last tenth; allocator caching or a leak: the script "
             "cannot tell which)") if g is not None else rss.get("error"))
    return t
