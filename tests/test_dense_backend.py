"""The dense half of ``--attention-backend msa`` is the backend SGLang itself picks (``backend/dense.py``).

Against SGLang's real server-args resolution (model overrides, default-backend rules, page-size
passes) on a ``rank8`` MiniMax-M3 config, with the GPU generation faked: Hopper, Blackwell and a GPU
without FA3/FA4 (the generic rules). Each case runs in a fresh process, so faking the capability and
loading the plugin leave this one untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.sglang
pytest.importorskip("sglang")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Resolves ServerArgs for each case in one process per GPU family; prints one JSON line.
_PROBE = r"""
import json, sys
from unittest import mock
family, model, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
import sglang.srt.arg_groups.overrides as ov
import sglang.srt.server_args as sa
caps = {"hopper": (True, False), "blackwell": (True, True), "other": (False, False)}[family]
for mod in (ov, sa):
    for name, value in zip(("is_sm90_supported", "is_sm100_supported"), caps):
        if hasattr(mod, name):
            mock.patch.object(mod, name, lambda *a, v=value, **k: v).start()
mock.patch.object(sa, "is_hopper_with_cuda_12_3", lambda: family == "hopper").start()
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang_msa.backend import dense
out = {}
import os
packages = ("SGLANG_EXTERNAL_MODEL_PACKAGE", "SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE")
for name, case in cases.items():
    for var in (dense.DENSE_ENV, *packages):
        os.environ.pop(var, None)
    os.environ.update(case.get("env", {}))
    try:
        s = sa.ServerArgs(model_path=model, load_format="dummy", device="cuda", **case["args"])
        out[name] = {"backend": s.attention_backend, "page_size": s.page_size,
                     "dense": dense.choose_dense_backend(s, None)[0],
                     "packages": [os.environ.get(var) for var in packages]}
    except Exception as exc:
        out[name] = {"error": type(exc).__name__, "message": str(exc)}
print("PROBE " + json.dumps(out))
"""

CASES = {
    "default": {"args": {}},
    "msa": {"args": {"attention_backend": "msa"}},
    "msa_page64": {"args": {"attention_backend": "msa", "page_size": 64}},
    "msa_dense_triton": {"args": {"attention_backend": "msa"}, "env": {"SGLANG_MSA_DENSE_BACKEND": "triton"}},
    "msa_dense_bad": {"args": {"attention_backend": "msa"}, "env": {"SGLANG_MSA_DENSE_BACKEND": "nope"}},
    "msa_dense_self": {"args": {"attention_backend": "msa"}, "env": {"SGLANG_MSA_DENSE_BACKEND": "msa"}},
    "triton": {"args": {"attention_backend": "triton"}},
}


@pytest.fixture(scope="module")
def rank8(tmp_path_factory):
    from sglang_msa_tools import tiny_m3

    path = str(tmp_path_factory.mktemp("rank8") / "m")
    tiny_m3.write_checkpoint(path, "rank8")
    return path


def _probe(family: str, model: str, env: dict | None = None) -> dict:
    run_env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    r = subprocess.run([sys.executable, "-c", _PROBE, family, model, json.dumps(CASES)], env=run_env,
                       capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("PROBE ")]
    assert r.returncode == 0 and lines, r.stdout[-2000:] + r.stderr[-4000:]
    return json.loads(lines[-1][len("PROBE "):])


@pytest.fixture(scope="module")
def hopper(rank8):
    return _probe("hopper", rank8)


def test_hopper_default_is_fa3_page128_and_msa_keeps_both(hopper):
    assert (hopper["default"]["backend"], hopper["default"]["page_size"]) == ("fa3", 128)
    assert (hopper["msa"]["backend"], hopper["msa"]["page_size"], hopper["msa"]["dense"]) == ("msa", 128, "fa3")


def test_only_msa_servers_opt_in_to_our_models_and_processor(hopper):
    """What the scheduler processes inherit from the launcher's resolution (plugin loaded in both)."""
    assert hopper["msa"]["packages"] == ["sglang_msa.models", "sglang_msa.multimodal"]
    assert hopper["msa_page64"]["packages"] == ["sglang_msa.models", "sglang_msa.multimodal"]
    for case in ("default", "triton"):
        assert hopper[case]["packages"] == [None, None], case


def test_explicit_page_size_and_dense_override_win(hopper):
    assert hopper["msa_page64"]["page_size"] == 64 and hopper["msa_page64"]["dense"] == "fa3"
    # Another dense backend: SGLang's generic page-size default applies, as for that backend alone.
    assert hopper["msa_dense_triton"]["dense"] == "triton"
    assert hopper["msa_dense_triton"]["page_size"] == hopper["triton"]["page_size"] == 1


@pytest.mark.parametrize("case", ["msa_dense_bad", "msa_dense_self"])
def test_bad_dense_override_is_a_clear_startup_error(hopper, case):
    assert hopper[case]["error"] == "DenseBackendError"
    assert "SGLANG_MSA_DENSE_BACKEND" in hopper[case]["message"] and "triton" in hopper[case]["message"]


def test_servers_without_msa_resolve_as_without_the_plugin(rank8, hopper):
    off = _probe("hopper", rank8, {"SGLANG_MSA_DISABLE": "1"})
    for case in ("default", "triton"):
        assert hopper[case] == off[case]


def test_blackwell_default_is_fa4_page128(rank8):
    r = _probe("blackwell", rank8)
    assert (r["default"]["backend"], r["default"]["page_size"]) == ("fa4", 128)
    assert (r["msa"]["page_size"], r["msa"]["dense"]) == (128, "fa4")


def test_gpu_without_fa3_gets_sglang_generic_default(rank8):
    r = _probe("other", rank8)
    assert r["default"]["backend"] == r["msa"]["dense"] == "triton"
    assert r["default"]["page_size"] == r["msa"]["page_size"] == 1


# --------------------------------------------------------------------------- building the backend


def _runner():
    return SimpleNamespace(model_config=SimpleNamespace(hf_config=SimpleNamespace(architectures=["X"])),
                           server_args=SimpleNamespace(page_size=128), page_size=128)


class _Built:
    def __init__(self, name):
        self.name = name


def test_unimportable_default_falls_back_to_triton_with_a_warning(monkeypatch, caplog):
    from sglang.srt.layers.attention import attention_registry

    from sglang_msa.backend import dense

    def no_fa3(runner):
        raise ImportError("libflash_ops.so: cannot open shared object file")

    monkeypatch.setattr(dense, "choose_dense_backend", lambda sa, hf: ("fa3", "SGLang's default"))
    monkeypatch.setitem(attention_registry.ATTENTION_BACKENDS, "fa3", no_fa3)
    monkeypatch.setitem(attention_registry.ATTENTION_BACKENDS, "triton", lambda r: _Built("triton"))
    with caplog.at_level("INFO", logger="sglang_msa"):
        backend, name = dense.create_dense_backend(_runner())
    assert (backend.name, name) == ("triton", "triton")
    assert "fa3" in caplog.text and "unavailable" in caplog.text and "cannot open shared object" in caplog.text
    assert "dense attention layers on triton (fallback), page size 128" in caplog.text


def test_chosen_backend_is_built_and_logged(monkeypatch, caplog):
    from sglang.srt.layers.attention import attention_registry

    from sglang_msa.backend import dense

    monkeypatch.setattr(dense, "choose_dense_backend", lambda sa, hf: ("fa3", "SGLang's default"))
    monkeypatch.setitem(attention_registry.ATTENTION_BACKENDS, "fa3", lambda r: _Built("fa3"))
    with caplog.at_level("INFO", logger="sglang_msa"):
        backend, name = dense.create_dense_backend(_runner())
    assert (backend.name, name) == ("fa3", "fa3")
    assert "dense attention layers on fa3 (SGLang's default), page size 128" in caplog.text
