"""Time every multimodal preprocessing call of an SGLang server (benchmarks only: put this folder on
PYTHONPATH).

With ``SGLANG_MSA_TRACE_MM=1`` the processor object that SGLang's tokenizer manager builds
(``multimodal_processor.get_mm_processor``, whichever class serves the model: SGLang's own or ours) gets
its ``process_mm_data_async`` wrapped, and each call writes one line to stderr (the server's log)::

    [mm-trace] <start epoch s> <end epoch s> pid=123 <class name> <ms> ok|error

That is the wall time the request spends in preprocessing (decoding, resizing, the executor queue
under concurrency), the part of TTFT that differs between two processors. ``benchmarks/ab_video.py``
reads the lines inside each measured point. Without the variable nothing is imported or changed.
"""

import os

if os.environ.get("SGLANG_MSA_TRACE_MM", "") not in ("", "0"):
    import importlib.abc
    import importlib.util
    import sys
    import time

    _TARGET = "sglang.srt.managers.multimodal_processor"

    def _wrap_processor(proc):
        inner = proc.process_mm_data_async
        name = type(proc).__name__

        async def timed(*args, **kwargs):
            t0 = time.time()
            status = "error"
            try:
                out = await inner(*args, **kwargs)
                status = "ok"
                return out
            finally:
                t1 = time.time()
                sys.stderr.write(f"[mm-trace] {t0:.6f} {t1:.6f} pid={os.getpid()} {name} "
                                 f"{(t1 - t0) * 1e3:.2f} {status}\n")
                sys.stderr.flush()

        proc.process_mm_data_async = timed
        return proc

    def _patch(module) -> None:
        original = module.get_mm_processor

        def get_mm_processor(*args, **kwargs):
            proc = original(*args, **kwargs)
            return proc if proc is None else _wrap_processor(proc)

        module.get_mm_processor = get_mm_processor

    class _Finder(importlib.abc.MetaPathFinder):
        """Patches the module right after it executes, before the tokenizer manager imports the name."""

        def find_spec(self, fullname, path, target=None):
            if fullname != _TARGET:
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(fullname)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                try:
                    _patch(module)
                except Exception as e:  # noqa: BLE001 - tracing must never stop the server
                    sys.stderr.write(f"[mm-trace] not installed: {e!r}\n")

            spec.loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, _Finder())
