"""``has_module``: whether a module can be imported, for skip conditions (no side effects, so test
modules and their script-mode subprocesses can both import it)."""

from __future__ import annotations

import importlib.util


def has_module(module: str) -> bool:
    """find_spec, not import: importing SGLang costs seconds and global state."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False
