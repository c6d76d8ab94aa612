"""Plugin wiring against the real installed SGLang 0.5.17 (CPU: SGLang imports, it cannot serve).

Most checks run in a fresh interpreter (subprocess) so that each sees SGLang exactly as a freshly
started launcher or scheduler process would: registration must come from the entry point alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.sglang

sglang = pytest.importorskip("sglang")


def run_python(code: str, *, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SGLANG_MSA_", "SGLANG_PLUGINS"))}
    full_env.pop("SGLANG_EXTERNAL_MODEL_PACKAGE", None)
    full_env.pop("SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, env=full_env,
    )


def test_entry_point_is_installed():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="sglang.srt.plugins")}
    assert eps.get("msa") == "sglang_msa.plugin:register"


def test_register_is_idempotent_and_adds_backend_once():
    proc = run_python(
        """
        from sglang_msa import plugin
        plugin.register(); plugin.register()
        plugin._registered = False; plugin.register()   # even a forced second pass adds nothing twice
        from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES
        from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
        from sglang_msa.backend.factory import create_msa_backend
        assert ATTENTION_BACKEND_CHOICES.count("msa") == 1, ATTENTION_BACKEND_CHOICES
        assert ATTENTION_BACKENDS["msa"] is create_msa_backend
        print("OK")
        """
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_sglang_load_plugins_registers_msa_in_a_fresh_process():
    # What every SGLang process does first (launcher, engine, scheduler subprocess).
    proc = run_python(
        """
        from sglang.srt.plugins import load_plugins
        load_plugins()
        from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES
        from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
        assert "msa" in ATTENTION_BACKEND_CHOICES
        assert "msa" in ATTENTION_BACKENDS
        print("OK")
        """
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_scheduler_process_loads_plugins_before_building_the_runner():
    # SGLang spawns its scheduler; registration there relies on this call (not on fork inheritance).
    import inspect

    from sglang.srt.managers import scheduler

    src = inspect.getsource(scheduler.run_scheduler_process)
    assert "load_plugins()" in src


def test_registration_survives_spawn(tmp_path):
    # SGLang starts its scheduler with the "spawn" start method: a brand-new interpreter that
    # inherits nothing but the environment. The script must be a file so spawn can re-import it.
    script = tmp_path / "spawn_check.py"
    script.write_text(textwrap.dedent(
        """
        import multiprocessing as mp

        def child(q):
            from sglang.srt.plugins import load_plugins
            load_plugins()
            from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
            q.put("msa" in ATTENTION_BACKENDS)

        if __name__ == "__main__":
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            p = ctx.Process(target=child, args=(q,))
            p.start()
            ok = q.get(timeout=400)
            p.join(timeout=60)
            assert ok is True and p.exitcode == 0
            print("OK")
        """
    ))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGLANG_MSA_")}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=500, env=env)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_off_switch_registers_nothing():
    proc = run_python(
        """
        from sglang.srt.plugins import load_plugins
        load_plugins()
        from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES
        from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
        import os
        assert "msa" not in ATTENTION_BACKEND_CHOICES
        assert "msa" not in ATTENTION_BACKENDS
        assert "SGLANG_EXTERNAL_MODEL_PACKAGE" not in os.environ
        assert "SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE" not in os.environ
        print("OK")
        """,
        env={"SGLANG_MSA_DISABLE": "1"},
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_sglang_argument_parser_accepts_msa_and_rejects_unknown():
    proc = run_python(
        """
        import argparse
        from sglang.srt.plugins import load_plugins
        load_plugins()
        from sglang.srt.server_args import ServerArgs
        parser = argparse.ArgumentParser(exit_on_error=False)
        ServerArgs.add_cli_args(parser)
        ns = parser.parse_args(["--model-path", "m", "--attention-backend", "msa",
                                "--decode-attention-backend", "msa"])
        assert ns.attention_backend == "msa" and ns.decode_attention_backend == "msa"
        try:
            parser.parse_args(["--model-path", "m", "--attention-backend", "no-such-backend"])
        except (argparse.ArgumentError, SystemExit):
            print("OK")
        """
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.slow
def test_launch_server_cli_help_lists_msa_and_accepts_it():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGLANG_MSA_")}
    help_out = subprocess.run(
        [sys.executable, "-m", "sglang.launch_server", "--help"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert help_out.returncode == 0, help_out.stderr[-2000:]
    assert ",msa}" in help_out.stdout or ",msa," in help_out.stdout

    # The real launcher: `msa` gets past SGLang's parser (on CPU it then stops at device detection).
    accepted = subprocess.run(
        [sys.executable, "-m", "sglang.launch_server", "--model-path", "/nonexistent",
         "--attention-backend", "msa"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert "invalid choice" not in accepted.stderr
    rejected = subprocess.run(
        [sys.executable, "-m", "sglang.launch_server", "--model-path", "/nonexistent",
         "--attention-backend", "msa-typo"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert rejected.returncode == 2
    assert "invalid choice: 'msa-typo'" in rejected.stderr


@pytest.mark.parametrize("switch, expected", [
    ("1", {"MiniMaxM3SparseForCausalLM", "MiniMaxM3SparseForConditionalGeneration"}),
    (None, {"MiniMaxM3SparseForCausalLM", "MiniMaxM3SparseForConditionalGeneration"}),  # both on by default
])
def test_model_package_is_discoverable_by_sglang(monkeypatch, switch, expected):
    from sglang.srt.models.registry import import_model_classes

    if switch is None:
        monkeypatch.delenv("SGLANG_MSA_MODELS", raising=False)
    else:
        monkeypatch.setenv("SGLANG_MSA_MODELS", switch)
    import_model_classes.cache_clear()  # SGLang caches it per package; the switch is read per build
    archs = import_model_classes("sglang_msa.models")
    import_model_classes.cache_clear()
    assert set(archs) == expected
    assert all(cls.__module__.startswith("sglang_msa.models") for cls in archs.values())


@pytest.mark.slow
@pytest.mark.parametrize("enabled", ["1", "0", ""])
def test_models_switch_decides_which_m3_sglang_resolves(enabled):
    # "": unset, and no server picked msa here: SGLang's own class (the plugin is opt-in).
    proc = run_python(
        """
        from sglang.srt.plugins import load_plugins
        load_plugins()
        from sglang.srt.models.registry import ModelRegistry
        print("MODULE", ModelRegistry.models["MiniMaxM3SparseForCausalLM"].__module__)
        """,
        env={"SGLANG_MSA_MODELS": enabled},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    module = proc.stdout.split("MODULE", 1)[1].strip()
    if enabled == "1":
        assert module.startswith("sglang_msa.models")
    else:
        assert module.startswith("sglang.srt.models")


def test_models_registered_into_an_already_built_registry():
    # If SGLang built its registry before the plugin ran, register() must still take effect.
    proc = run_python(
        """
        from sglang.srt.models.registry import ModelRegistry
        from sglang_msa import plugin
        plugin.register()
        print("MODULE", ModelRegistry.models["MiniMaxM3SparseForCausalLM"].__module__)
        """,
        env={"SGLANG_MSA_MODELS": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("MODULE", 1)[1].strip().startswith("sglang_msa.models")


def test_importing_sglang_msa_is_cheap():
    proc = run_python(
        """
        import sys, sglang_msa, sglang_msa.plugin
        heavy = [m for m in ("sglang", "torch", "triton", "smg_rs") if m in sys.modules]
        assert not heavy, heavy
        print("OK")
        """
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize("flag", ["", "1"])
def test_fp8_index_pool_hook_only_with_the_flag(flag):
    """SGLANG_MSA_FP8_INDEX: without it SGLang's KV-pool builder is not wrapped at all (a server that
    did not opt in is unchanged); with it, load_plugins() wraps it with our hook."""
    proc = run_python(
        """
        import sys
        from sglang.srt.plugins import load_plugins
        load_plugins()
        from sglang.srt.mem_cache.kv_cache_configurator import KVCacheConfigurator
        print("WRAPPED", hasattr(KVCacheConfigurator._build_minimax_sparse_kv_pool, "__wrapped__"))
        """,
        env={"SGLANG_MSA_FP8_INDEX": flag} if flag else None,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"WRAPPED {flag == '1'}" in proc.stdout, proc.stdout[-2000:]
