"""What `pip install .` must leave behind: both modules, the version, typed stubs, the entry point,
and (default build) an smg_rs that carries its own FFmpeg: no shared libav*/libsw* needed, the
notices of the statically linked FFmpeg/dav1d/zlib in the wheel, every accepted codec decodable.

SGLANG_MSA_FFMPEG=system at test time means the installed build was made that way (setup.sh and
the build backend read the same variable): the linkage tests then expect the system libraries.
The clean-venv install with the system FFmpeg hidden is scripts/check_wheel.sh.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

import fixtures_video as fv

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_FFMPEG = os.environ.get("SGLANG_MSA_FFMPEG") == "system"
FFMPEG_LIBS = re.compile(r"lib(avcodec|avformat|avutil|avfilter|avdevice|swscale|swresample|postproc|dav1d)\.so")
NOTICES = ("NOTICE-FFmpeg.md", "FFmpeg-COPYING.LGPLv2.1", "FFmpeg-LICENSE.md", "dav1d-COPYING", "zlib-LICENSE",
           "nv-codec-headers-LICENSE")


def test_smg_rs_is_installed_with_version_and_stubs():
    smg_rs = pytest.importorskip("smg_rs")
    assert smg_rs.__version__ == md.version("sglang-msa")
    pkg = Path(smg_rs.__file__).parent
    assert (pkg / "py.typed").exists(), "maturin ships py.typed only when smg_rs.pyi sits at the repo root"
    stub = (pkg / "__init__.pyi").read_text()
    for name in ("def preprocess_video", "class VideoFeatures", "class SmgError", "class LimitExceededError"):
        assert name in stub


def test_sglang_msa_ships_with_the_distribution():
    import sglang_msa

    files = {str(f) for f in md.files("sglang-msa") or []}
    assert any(f.endswith("sglang_msa/plugin.py") for f in files)
    assert any(f.endswith("sglang_msa/kernels/msa_prefill/block_major.py") for f in files)
    assert sglang_msa.__version__ == md.version("sglang-msa")


def _extension_module() -> Path:
    smg_rs = pytest.importorskip("smg_rs")
    found = sorted(Path(smg_rs.__file__).parent.glob("smg_rs*.so"))
    assert found, f"no compiled smg_rs module next to {smg_rs.__file__}"
    return found[0]


def test_extension_links_no_shared_ffmpeg():
    if shutil.which("readelf") is None or shutil.which("ldd") is None:
        pytest.skip("needs readelf and ldd (binutils, libc-bin)")
    so = _extension_module()
    dyn = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\).*\[(.+)\]", dyn)
    ldd = subprocess.run(["ldd", str(so)], capture_output=True, text=True, check=True).stdout
    assert "not found" not in ldd, ldd
    if SYSTEM_FFMPEG:
        assert any(n.startswith("libavcodec.so") for n in needed), needed
        return
    assert not [n for n in needed if FFMPEG_LIBS.search(n) or n.startswith("libz.so")], needed
    assert not FFMPEG_LIBS.search(ldd), ldd
    # Only the C runtime is left (no libstdc++, nothing a manylinux wheel would have to vendor).
    assert set(needed) <= {"libc.so.6", "libm.so.6", "libgcc_s.so.1", "libpthread.so.0", "libdl.so.2",
                           "librt.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"}, needed


def test_wheel_ships_the_ffmpeg_notices():
    if SYSTEM_FFMPEG:
        pytest.skip("system-FFmpeg build (the notices ship anyway; nothing is linked statically)")
    files = {Path(str(f)).name: f for f in md.files("sglang-msa") or [] if ".dist-info/licenses/" in str(f)}
    for name in NOTICES:
        assert name in files, f"{name} missing from the wheel's .dist-info/licenses/"
    notice = files["NOTICE-FFmpeg.md"].read_text()
    assert "LGPL version 2.1 or later" in notice
    lgpl = files["FFmpeg-COPYING.LGPLv2.1"].read_text()
    assert "GNU LESSER GENERAL PUBLIC LICENSE" in lgpl and "Version 2.1" in lgpl


def test_notice_matches_the_ffmpeg_build_script():
    """The shipped notice names exactly the versions, tarballs, checksums and component lists that
    scripts/build_ffmpeg.sh builds, and that build stays LGPL-only."""
    script = (ROOT / "scripts" / "build_ffmpeg.sh").read_text()
    notice = (ROOT / "licenses" / "NOTICE-FFmpeg.md").read_text()
    values = dict(re.findall(r"^([A-Z0-9_]+)=([^\s$(]+)$", script, flags=re.M))
    for key in ("FFMPEG_VERSION", "DAV1D_VERSION", "ZLIB_VERSION", "NVCODEC_VERSION", "FFMPEG_SHA256", "DAV1D_SHA256",
                "ZLIB_SHA256", "NVCODEC_SHA256", "DECODERS", "CUVID_DECODERS", "PARSERS", "DEMUXERS", "PROTOCOLS"):
        assert key in values, f"{key} not found in build_ffmpeg.sh"
        assert values[key] in notice, f"{key}={values[key]} is not what licenses/NOTICE-FFmpeg.md says"
    code = "\n".join(line.split("#", 1)[0] for line in script.splitlines())
    flags = code.split("FFMPEG_FLAGS=(", 1)[1].split(")", 1)[0]
    for flag in re.findall(r"(--(?:disable|enable)-[a-z0-9-]+)(?=[\s\"])", flags):
        assert flag in notice, f"configure flag {flag} is not in the notice"
    for forbidden in ("--enable-gpl", "--enable-nonfree", "--enable-version3"):
        assert forbidden not in code


# Every codec/container pair the presets accept that the ffmpeg CLI here can encode (skipped if not).
SAMPLES = {
    "h264.mp4": ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"],
    "hevc.mkv": ["-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error"],
    "vp8.webm": ["-c:v", "libvpx", "-deadline", "realtime", "-b:v", "200k"],
    "vp9.webm": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "200k"],
    "av1.mp4": ["-c:v", "libaom-av1", "-cpu-used", "8", "-row-mt", "1"],
    "mpeg4.avi": ["-c:v", "mpeg4"],
    "mjpeg.avi": ["-c:v", "mjpeg", "-pix_fmt", "yuvj420p"],
    "mpeg2.mkv": ["-c:v", "mpeg2video"],
}


@pytest.mark.skipif(not fv.have_ffmpeg(), reason="needs the ffmpeg CLI to make the sample")
@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_installed_smg_rs_decodes_every_accepted_codec(sample, tmp_path):
    smg_rs = pytest.importorskip("smg_rs")
    args = SAMPLES[sample]
    if not fv.have_encoder(args[1]):
        pytest.skip(f"the ffmpeg CLI here has no {args[1]} encoder")
    path = fv.make(tmp_path / sample, "160x120", 24, 1.0, args)
    feats = smg_rs.preprocess_video(str(path), preset="minimax_m3")
    assert feats.grid_thw[0] >= 1 and len(feats.frame_indices) >= 2, repr(feats)
    from_bytes = smg_rs.preprocess_video(path.read_bytes(), preset="minimax_m3")
    assert from_bytes.frame_indices == feats.frame_indices and from_bytes.grid_thw == feats.grid_thw


def _png(h: int, w: int) -> bytes:
    rows = b"".join(b"\x00" + bytes((x * 7 + y * 3) % 256 for x in range(w * 3)) for y in range(h))
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_installed_smg_rs_decodes_a_png():
    """PNG needs zlib inside FFmpeg (statically linked in the bundled build)."""
    smg_rs = pytest.importorskip("smg_rs")
    feats = smg_rs.preprocess_image(_png(64, 96), preset="minimax_m3")
    assert feats.grid_thw[0] >= 1, repr(feats)


def test_build_backend_tags_the_bundled_wheel_manylinux(monkeypatch):
    """The bundled-FFmpeg build asks maturin for the build machine's manylinux_X_Y tag (PyPI refuses
    `linux_x86_64`); a --compatibility the caller gives wins; the system-FFmpeg build adds none."""
    import sys

    pytest.importorskip("maturin")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import pep517_backend as be
    finally:
        sys.path.pop(0)
    tag = be.manylinux_tag()
    glibc = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else ""
    if not glibc.startswith("glibc"):
        assert tag is None
        return
    assert tag == "manylinux_" + "_".join(glibc.split()[1].split(".")[:2])
    monkeypatch.setattr(be.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout="/ff/prefix\n"))
    for var in ("FFMPEG_DIR", "CARGO_TARGET_DIR"):  # the backend sets them: put back after the test
        monkeypatch.setenv(var, "/unused")
    monkeypatch.setenv("MATURIN_PEP517_ARGS", "")  # recorded, so it is removed again after the test
    assert be._with_bundled_ffmpeg({"maturin.build-args": "--release"})["maturin.build-args"] == \
        f"--release --compatibility {tag}"
    given = {"maturin.build-args": ["--compatibility", "linux"]}
    assert be._with_bundled_ffmpeg(given)["maturin.build-args"] == ["--compatibility", "linux"]
    be._with_bundled_ffmpeg(None)
    assert os.environ["MATURIN_PEP517_ARGS"] == f"--compatibility {tag}"
