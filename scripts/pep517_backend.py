"""PEP 517 build backend of sglang-msa: maturin, preceded by the bundled-FFmpeg build.

`pip install .`, `pip wheel .` and `python -m build` come through here (pyproject.toml:
build-backend = "pep517_backend", backend-path = ["scripts"]). Before a wheel is built, this
runs scripts/build_ffmpeg.sh (cached: a no-op once built) and sets FFMPEG_DIR to its prefix for
smg_rs's `bundled-ffmpeg` feature (on in pyproject.toml), so the wheel needs no FFmpeg on the
target machine.

Choose the system's shared FFmpeg libraries instead (distributions, or machines where
building FFmpeg is not wanted) with either of
    SGLANG_MSA_FFMPEG=system pip install .
    pip install . -C ffmpeg=system
Everything else (metadata, sdist, editable wheels, maturin's own config settings such as
`-C maturin.build-args=...`) is maturin's backend unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

import maturin
from maturin import (  # noqa: F401  (re-exported PEP 517 hooks)
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

ROOT = Path(__file__).resolve().parent.parent
MODES = ("bundled", "system")


def ffmpeg_mode(config_settings: Mapping[str, Any] | None) -> str:
    mode = (config_settings or {}).get("ffmpeg") or os.environ.get("SGLANG_MSA_FFMPEG") or "bundled"
    if mode not in MODES:
        raise ValueError(f"FFmpeg mode {mode!r}: expected one of {MODES} (SGLANG_MSA_FFMPEG or -C ffmpeg=...)")
    return mode


def _with_bundled_ffmpeg(config_settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Builds FFmpeg (or finds it cached), points cargo at it; returns maturin's config settings."""
    script = ROOT / "scripts" / "build_ffmpeg.sh"
    print(f"sglang-msa: building/using the bundled FFmpeg ({script})", file=sys.stderr, flush=True)
    out = subprocess.run(["bash", str(script)], check=True, stdout=subprocess.PIPE, text=True).stdout
    prefix = out.strip().splitlines()[-1]
    os.environ["FFMPEG_DIR"] = prefix
    # ffmpeg-sys-next copies the static libraries into its rlib and never reruns its build script,
    # so a different FFmpeg build must not share a cargo target directory with an older one (or
    # with the system-FFmpeg build). One subdirectory per FFmpeg build keeps them apart.
    base = os.environ.get("CARGO_TARGET_DIR") or str(ROOT / "target")
    os.environ["CARGO_TARGET_DIR"] = os.path.join(base, "bundled-" + os.path.basename(prefix))
    settings = dict(config_settings or {})
    # A manylinux tag (maturin checks the symbols against it) instead of `linux_x86_64`, which
    # PyPI refuses; a --compatibility given by the caller wins.
    tag = manylinux_tag()
    if tag and not _build_args_given(settings, "--compatibility"):
        settings = _add_build_args(settings, ["--compatibility", tag])
    return settings


def _add_build_args(settings: dict[str, Any], extra: list[str]) -> dict[str, Any]:
    """Appends ``extra`` to maturin's build arguments (config settings, else MATURIN_PEP517_ARGS)."""
    key = "maturin.build-args" if "maturin.build-args" in settings else "build-args"
    if key in settings:
        args = settings[key]
        settings[key] = [*args, *extra] if isinstance(args, list) else " ".join([args, *extra])
    else:
        os.environ["MATURIN_PEP517_ARGS"] = " ".join([os.environ.get("MATURIN_PEP517_ARGS", ""), *extra]).strip()
    return settings


def manylinux_tag() -> str | None:
    """``manylinux_X_Y`` of this machine's glibc: the wheel links only libc/libm/libgcc (FFmpeg is
    static), and a binary built here needs at most this glibc. None off glibc Linux."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
    except (AttributeError, ValueError, OSError):
        return None
    major, minor = version.split(".")[:2]
    return f"manylinux_{major}_{minor}" if name == "glibc" and sys.platform.startswith("linux") else None


def _build_args_given(settings: Mapping[str, Any], flag: str) -> bool:
    given = settings.get("maturin.build-args") or settings.get("build-args") or ""
    return flag in (" ".join(given) if isinstance(given, list) else given) or \
        flag in os.environ.get("MATURIN_PEP517_ARGS", "")


def _without_bundled_ffmpeg(config_settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Drops `bundled-ffmpeg` from the features of pyproject.toml (a `--features` given to
    maturin replaces that list, it does not add to it)."""
    features = [f for f in maturin.get_config().get("features", []) if f != "bundled-ffmpeg"]
    return _add_build_args(dict(config_settings or {}), ["--features", ",".join(features)] if features else [])


def _maturin_settings(config_settings: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if ffmpeg_mode(config_settings) == "bundled":
        settings = _with_bundled_ffmpeg(config_settings)
    else:
        print("sglang-msa: linking the system FFmpeg (pkg-config)", file=sys.stderr, flush=True)
        settings = _without_bundled_ffmpeg(config_settings)
    settings.pop("ffmpeg", None)
    return settings or None


def build_wheel(wheel_directory: str, config_settings: Mapping[str, Any] | None = None,
                metadata_directory: str | None = None) -> str:
    return maturin.build_wheel(wheel_directory, _maturin_settings(config_settings), metadata_directory)


def build_editable(wheel_directory: str, config_settings: Mapping[str, Any] | None = None,
                   metadata_directory: str | None = None) -> str:
    return maturin.build_editable(wheel_directory, _maturin_settings(config_settings), metadata_directory)
