"""The README's main job: the whole sglang-msa pipeline on an embedded default, nothing downloaded.

    python -m sglang_msa_tools.demo [--video PATH] [--workdir DIR] [--tokens N]

Without ``--workdir`` the sample video and the checkpoint go to a temporary folder that is removed at
the end; with it they stay there.

1. video: makes a sample clip with the ``ffmpeg`` CLI (or takes ``--video``) and preprocesses it
   with ``smg_rs`` (MiniMax-M3 preset) -> ``pixel_values``, ``grid_thw``, sampled frames, timing;
2. model: writes a tiny random MiniMax-M3 checkpoint (``sglang_msa_tools.tiny_m3``);
3. kernels: runs the MSA pipeline (indexer -> KV-block-major sparse prefill -> stride-paged sparse
   decode) on random M3-shaped inputs in a paged KV pool and checks it against the fp32
   references (on the GPU when there is one, else on the CPU under the Triton interpreter);
4. SGLang: shows SGLang's own argument parser accepting ``--attention-backend msa`` via the plugin.
Exits non-zero if any step fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# The one launch command the README shows too; each flag is explained in LAUNCH_NOTE.
LAUNCH_COMMAND = "python -m sglang.launch_server --model-path <checkpoint dir> --attention-backend msa"
LAUNCH_NOTE = ("  --model-path: a MiniMax-M3 checkpoint (e.g. the one step 2 wrote, with --workdir)\n"
               "  --attention-backend msa: sparse layers on sglang-msa's kernels, dense layers on the backend "
               "SGLang picks\n    for the model and GPU (fa3 on Hopper), page size 128 unless --page-size "
               "is given; add --tp 8 for the real model")


def _header(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def make_sample_video(path: Path, seconds: float = 4.0, fps: int = 30, size: str = "480x272") -> Path:
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("the ffmpeg CLI is needed to make the sample video (scripts/setup.sh installs it)")
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}",
           "-t", str(seconds), "-pix_fmt", "yuv420p", "-c:v", "libx264", str(path)]
    subprocess.run(cmd, check=True)
    return path


def step_video(video: Path) -> None:
    import smg_rs

    _header(f"1. smg_rs {smg_rs.__version__}: preprocess {video.name} (preset minimax_m3)")
    timings = []
    for _ in range(2):  # the first call pays for loading codecs and page-cache misses
        t0 = time.perf_counter()
        feats = smg_rs.preprocess_video(str(video), preset="minimax_m3")
        timings.append(time.perf_counter() - t0)
    dt = timings[-1]
    pv = feats.pixel_values
    print(f"source: {feats.num_source_frames} frames @ {feats.source_fps:.2f} fps, {feats.duration:.2f} s")
    print(f"sampled frames: {list(feats.frame_indices)}")
    print(f"grid_thw: {tuple(feats.grid_thw)}  pixel_values: {pv.shape} {pv.dtype}  "
          f"mean {float(pv.mean()):+.4f} std {float(pv.std()):.4f}")
    print(f"time: {dt * 1e3:.1f} ms per video, {feats.num_source_frames / dt:.0f} source frames/s decoded "
          f"(first call {timings[0] * 1e3:.1f} ms)")
    if pv.shape[0] != feats.grid_thw[0] * feats.grid_thw[1] * feats.grid_thw[2]:
        raise RuntimeError("pixel_values rows != grid_t * grid_h * grid_w")


def step_model(workdir: Path) -> Path:
    from sglang_msa_tools import tiny_m3

    out = workdir / "tiny-m3"
    _header(f"2. tiny random MiniMax-M3 checkpoint -> {out}")
    tiny_m3.main([str(out)])
    files = sorted(p.name for p in out.iterdir())
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"files: {', '.join(files)}  ({size / 2**20:.1f} MiB)")
    return out


def step_kernels(tokens: int) -> float:
    from sglang_msa_tools.pipeline_check import run_pipeline_check

    _header("3. MSA kernels: indexer -> sparse prefill (KV-block-major) -> sparse decode")
    report = run_pipeline_check(tokens=tokens, progress=lambda line: print(line, flush=True))
    return report["max_rel_err"]


def step_sglang() -> None:
    _header("4. SGLang accepts --attention-backend msa (its own parser, plugin loaded by entry point)")
    code = (
        "import argparse\n"
        "from sglang.srt.plugins import load_plugins\n"
        "load_plugins()\n"
        "from sglang.srt.server_args import ServerArgs\n"
        "p = argparse.ArgumentParser(); ServerArgs.add_cli_args(p)\n"
        "ns = p.parse_args(['--model-path', 'tiny-m3', '--attention-backend', 'msa'])\n"
        "print('parsed --attention-backend =', ns.attention_backend)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    print(proc.stdout.strip())
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    if not gpu:
        print(f"no GPU here: serving needs one. On a Hopper machine with SGLang 0.5.17 and this package:\n"
              f"  {LAUNCH_COMMAND}\n{LAUNCH_NOTE}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="sglang-msa main job on the embedded default")
    ap.add_argument("--video", type=Path, help="a video file to preprocess (default: a sample made with ffmpeg)")
    ap.add_argument("--workdir", type=Path, help="where to write the sample video and checkpoint")
    ap.add_argument("--tokens", type=int, default=None,
                    help="sequence length of the kernel check (default: 300 on CPU, 8192 on GPU)")
    args = ap.parse_args(argv)
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sglang-msa-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    failures = []
    steps = [
        ("video", lambda: step_video(args.video or make_sample_video(workdir / "sample.mp4"))),
        ("model", lambda: step_model(workdir)),
        ("kernels", lambda: step_kernels(args.tokens)),
        ("sglang", step_sglang),
    ]
    for name, fn in steps:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - each step reports, the exit code tells
            failures.append(name)
            print(f"!! step {name} failed: {type(exc).__name__}: {exc}", flush=True)
    _header("summary")
    if keep:
        print(f"files kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        print("temporary files removed (pass --workdir DIR to keep the video and checkpoint)")
    print("all steps passed" if not failures else f"failed steps: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
