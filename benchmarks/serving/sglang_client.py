"""Run several ``sglang.benchmark.serving`` points in one process (SGLang's own load generator).

    python -m benchmarks.serving.sglang_client JOBS.json

``JOBS.json``: ``{"deadline": <epoch s>, "jobs": [{"key": ..., "argv": [...], "estimate_s": ...}]}``.
Each job is SGLang's command line without the program name; its ``--output-file`` receives SGLang's
JSONL record. Importing SGLang's benchmark takes ~10 s, so one process serves all of a server's points.
A job whose estimate would end past the deadline is skipped and reported as such on stdout.
"""

from __future__ import annotations

import json
import sys
import time
import traceback


def without_hf_datasets() -> None:
    """SGLang's benchmark imports Hugging Face ``datasets`` at module level for its dataset loaders
    (MMMU, ShareGPT ...). Our points use only ``random-ids`` and ``generated-shared-prefix``, which never
    call it, and a machine without network may lack the package: stand in a module whose
    ``load_dataset`` says so, instead of failing the import."""
    import importlib.util
    import types

    if "datasets" in sys.modules or importlib.util.find_spec("datasets") is not None:
        return
    stub = types.ModuleType("datasets")

    def load_dataset(*_a, **_k):
        raise RuntimeError("the Hugging Face `datasets` package is not installed (needed only for "
                           "SGLang's downloadable datasets; ab_default's points do not use them)")

    stub.load_dataset = load_dataset
    sys.modules["datasets"] = stub


def wait_idle_and_flush(argv: list[str], timeout_s: float = 60.0) -> str:
    """For a job that flushes the prefix cache (``--flush-cache``): flush it first through SGLang's
    ``/flush_cache?timeout=``, which waits until the scheduler is idle. SGLang's benchmark flushes without
    waiting and fails the whole point if the previous point's last request is still being released;
    after this call its own flush finds the server idle. Returns "" or what went wrong."""
    import urllib.request

    def arg(name: str, default: str) -> str:
        return argv[argv.index(name) + 1] if name in argv else default

    url = f"http://{arg('--host', '127.0.0.1')}:{arg('--port', '30000')}/flush_cache?timeout={timeout_s:g}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=timeout_s + 10) as r:
            return "" if r.status == 200 else f"HTTP {r.status}"
    except OSError as exc:
        return repr(exc)


def run_jobs(spec: dict) -> dict[str, str]:
    without_hf_datasets()
    from sglang.benchmark import serving

    status = {}
    for job in spec["jobs"]:
        if time.time() + float(job.get("estimate_s", 0)) > float(spec["deadline"]):
            status[job["key"]] = "skipped: deadline"
            print(f"[sglang_client] {job['key']}: skipped (deadline)", flush=True)
            continue
        t0 = time.time()
        if "--flush-cache" in job["argv"]:
            err = wait_idle_and_flush(job["argv"])
            if err:
                print(f"[sglang_client] {job['key']}: waiting flush failed ({err}); SGLang's own follows", flush=True)
        saved = sys.argv
        sys.argv = ["sglang.benchmark.serving", *job["argv"]]
        try:
            serving.cli_main()
            status[job["key"]] = "ok"
        except BaseException as exc:  # noqa: BLE001 - SystemExit included: one point must not end the rest
            status[job["key"]] = f"error: {exc!r}"
            traceback.print_exc()
        finally:
            sys.argv = saved
        print(f"[sglang_client] {job['key']}: {status[job['key']]} in {time.time() - t0:.1f} s", flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        spec = json.load(f)
    status = run_jobs(spec)
    print("[sglang_client] status " + json.dumps(status), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
