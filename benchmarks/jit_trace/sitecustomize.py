"""Log every Triton JIT compile of a process (benchmarks only: put this folder on PYTHONPATH).

With ``SGLANG_MSA_TRACE_JIT=1`` each compile that misses the process's in-memory kernel cache writes
one line to stderr (a server's log)::

    [jit-trace] 1765000000.123 pid=123 compile sglang_msa.kernels.msa_prefill.block_major:block_major_fwd_kernel 812 ms <specialisation>

``benchmarks/ab_default.py --trace-jit`` reads the lines that fall inside each measured point, so a
compile during serving shows up in the results instead of as an unexplained slow repeat. Without the
variable nothing is imported or changed.
"""

import os

if os.environ.get("SGLANG_MSA_TRACE_JIT", "") not in ("", "0"):
    import sys
    import time

    _started: dict = {}

    def _ident(fn, key) -> tuple:
        return (id(fn.jit_function), str(key))

    def _cache_hook(*, key, repr, fn, compile, is_manual_warmup, already_compiled):  # noqa: A002
        _started[_ident(fn, key)] = time.time()
        return False  # never skip the compile

    def _post_hook(*, key, repr, fn, compile, is_manual_warmup, already_compiled):  # noqa: A002
        t0 = _started.pop(_ident(fn, key), None)
        ms = -1 if t0 is None else (time.time() - t0) * 1e3
        sys.stderr.write(f"[jit-trace] {time.time():.3f} pid={os.getpid()} compile {fn.module}:{fn.name} "
                         f"{ms:.0f} ms {repr[:400]}\n")
        sys.stderr.flush()

    try:
        from triton import knobs

        knobs.runtime.jit_cache_hook = _cache_hook
        knobs.runtime.jit_post_compile_hook = _post_hook
    except Exception as e:  # noqa: BLE001 - tracing must never stop the process
        sys.stderr.write(f"[jit-trace] not installed: {e!r}\n")
