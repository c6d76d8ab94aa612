"""Answer the malformed-request corpus with SGLang's REAL HTTP app on CPU, no model, no GPU.

What is real: ``sglang.srt.entrypoints.http_server.app`` (routing, FastAPI/pydantic parsing, SGLang's
exception handlers, ``validate_json_request``), SGLang's OpenAI serving classes
(``OpenAIServingCompletion``, the tokenizer manager's chat class) with a real ``TemplateManager``,
and SGLang's ``TokenizerManager.generate_request`` path on a real ``ModelConfig``, tokenizer and (for
an M3-VL checkpoint) the multimodal processor SGLang would pick (ours when
``SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE=sglang_msa.multimodal``): request normalization, tokenization,
``_validate_one_request`` (context length, max_new_tokens, token_ids_logprob), ``SamplingParams``
construction and ``verify``, multimodal loading and preprocessing.

What is stubbed: the IPC to the scheduler. :class:`CpuTokenizerManager` builds the manager without
ZMQ sockets, metrics or watchdogs, and its ``_send_one_request`` is a stand-in scheduler that applies
the scheduler's model-free admission check (``validate_input_length`` against ``max_req_input_len``,
set to ``context_len - 1`` as SGLang's scheduler reports it) and otherwise finishes the request at
once with two made-up tokens. Everything the scheduler would do with a model (embedding lookups)
is out of reach: a request that gets here with out-of-vocabulary ids is answered 200, which is the
finding that SGLang has no such check before the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass

PROBE = {"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 2, "temperature": 0.0}}


def _tm_class():
    from sglang.srt.managers.tokenizer_manager import TokenizerManager
    from sglang.srt.managers.utils import validate_input_length
    from sglang.srt.sampling.sampling_params import SamplingParams

    class CpuTokenizerManager(TokenizerManager):
        """SGLang's TokenizerManager minus the scheduler IPC (see the module docstring)."""

        def __init__(self, server_args):  # noqa: D107 - mirrors TokenizerManager.__init__ minus IPC
            self.server_args = server_args
            self.startup_time = None
            self._config_updates = []
            self.elastic_worker_count = server_args.dp_size
            self.elastic_pending_ep_size = None
            self.elastic_scale_phase = "idle"
            self.elastic_last_error = None
            self.enable_metrics = False
            self.incremental_streaming_output = server_args.incremental_streaming_output
            self.enable_lora = server_args.enable_lora
            self.enable_trace = False
            self.allow_auto_truncate = server_args.allow_auto_truncate
            self.skip_tokenizer_init = server_args.skip_tokenizer_init
            self.preferred_sampling_params = server_args.preferred_sampling_params
            self.crash_dump_folder = None
            self.init_model_config()
            self.init_tokenizer_and_processor()
            self.init_running_status()
            self.init_request_logging_and_dumping()
            self.init_weight_update()
            self.init_lora()
            self.init_disaggregation(start_pd_bootstrap_service=False)
            self.sampling_params_class = SamplingParams
            self.max_req_input_len = self.context_len - 1  # what the scheduler reports
            self.dispatched: list = []  # tokenized requests the stand-in scheduler admitted
            self.rejected: list = []  # (rid, message) the stand-in scheduler refused
            self.to_scheduler: list = []  # other messages SGLang would have sent the scheduler

        def auto_create_handle_loop(self):
            self.event_loop = asyncio.get_event_loop()  # no recv loop, no signal handlers

        def abort_request(self, rid: str = "", abort_all: bool = False):
            self.rid_to_state.pop(rid, None)

        def _dispatch_to_scheduler(self, obj) -> None:
            self.to_scheduler.append(obj)  # aborts and control messages; no scheduler here

        def _send_batch_request(self, tokenized_objs):
            for tokenized_obj in tokenized_objs:  # the scheduler admits a batch request by request
                self._send_one_request(tokenized_obj)

        def _send_one_request(self, tokenized_obj):
            state = self.rid_to_state.get(tokenized_obj.rid)
            if state is None:
                return
            state.dispatched = True

            class _Req:  # what validate_input_length reads
                origin_input_ids = list(tokenized_obj.input_ids or [])

            n_in = len(_Req.origin_input_ids)
            meta = {"id": tokenized_obj.rid, "prompt_tokens": n_in, "completion_tokens": 2, "cached_tokens": 0,
                    "reasoning_tokens": 0, "num_retractions": 0, "e2e_latency": 0.0,
                    "weight_version": self.config_value("weight_version")}
            error = validate_input_length(_Req, self.max_req_input_len, self.allow_auto_truncate)
            if error:
                self.rejected.append((tokenized_obj.rid, error))
                meta["finish_reason"] = {"type": "abort", "message": error, "status_code": 400}
                meta["completion_tokens"] = 0
                out = {"text": "", "output_ids": [], "meta_info": meta}
            else:
                self.dispatched.append(tokenized_obj)
                meta["finish_reason"] = {"type": "length", "length": 2}
                out = {"text": " ok ok", "output_ids": [5, 6], "meta_info": meta}
            state.out_list.append(out)
            state.finished = True
            state.event.set()

    return CpuTokenizerManager


@dataclass
class Answer:
    status: int
    message: str
    probe_status: int | None = None  # the valid request sent right after this case


def error_message(status: int, raw: bytes) -> str:
    """The human-readable message of an error body (SGLang's ErrorResponse, FastAPI's detail, text)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
        else:
            msg = err
        msg = msg or body.get("message") or body.get("detail")
        if msg is not None:
            return msg if isinstance(msg, str) else json.dumps(msg)
    return raw.decode(errors="replace").strip() if status >= 400 else ""


@contextlib.contextmanager
def sglang_app(model_path: str, context_length: int, *, mm_processor_package: str | None = None, **server_kwargs):
    """SGLang's ``app`` wired to a :class:`CpuTokenizerManager` for ``model_path``; restores the
    module's global state on exit. Yields ``(app, tokenizer_manager)``."""
    env_key = "SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE"
    old_env = os.environ.get(env_key)
    if mm_processor_package is not None:
        os.environ[env_key] = mm_processor_package
    import sglang.srt.entrypoints.http_server as hs
    from sglang.srt.entrypoints.openai.serving_completions import OpenAIServingCompletion
    from sglang.srt.parser.template_manager import TemplateManager
    from sglang.srt.server_args import ServerArgs

    try:
        args = ServerArgs(model_path=model_path, device="cpu", context_length=context_length, **server_kwargs)
        tm = _tm_class()(args)
        tm.server_status = hs.ServerStatus.Up
        templates = TemplateManager()
        templates.initialize_templates(tokenizer_manager=tm, model_path=model_path)
        old_state = hs.get_global_state()
        hs.set_global_state(hs._GlobalState(tokenizer_manager=tm, template_manager=templates,
                                            scheduler_info={"max_req_input_len": tm.max_req_input_len}))
        saved = {k: getattr(hs.app.state, k, None) for k in ("openai_serving_completion", "openai_serving_chat")}
        hs.app.state.openai_serving_completion = OpenAIServingCompletion(tm, templates)
        hs.app.state.openai_serving_chat = tm.serving_chat_class(tm, templates)
        try:
            yield hs.app, tm
        finally:
            hs.set_global_state(old_state)
            for k, v in saved.items():
                setattr(hs.app.state, k, v)
    finally:
        if mm_processor_package is not None:
            if old_env is None:
                os.environ.pop(env_key, None)
            else:
                os.environ[env_key] = old_env


async def _answer_all(app, cases, probe: bool, timeout_s: float) -> dict[str, Answer]:
    import httpx

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    out: dict[str, Answer] = {}
    async with httpx.AsyncClient(transport=transport, base_url="http://sglang.test") as client:
        for case in cases:
            try:  # the ASGI transport ignores httpx timeouts: bound each exchange here
                r = await asyncio.wait_for(
                    client.request(case.method, case.path, content=case.body, headers=case.headers), timeout_s)
                ans = Answer(int(r.status_code), error_message(r.status_code, r.content))
            except asyncio.TimeoutError:
                ans = Answer(0, f"no answer within {timeout_s} s")
            if probe:
                try:
                    p = await asyncio.wait_for(client.post("/generate", json=PROBE), timeout_s)
                    ans.probe_status = int(p.status_code)
                except asyncio.TimeoutError:
                    ans.probe_status = 0
            out[case.name] = ans
    return out


def answer_corpus(app, cases, probe: bool = True, timeout_s: float = 60.0) -> dict[str, Answer]:
    """Send every case to ``app`` in-process (httpx's ASGI transport, one event loop); after each,
    the valid probe request too. Status 0: no answer within ``timeout_s``."""
    return asyncio.run(_answer_all(app, cases, probe, timeout_s))


@contextlib.contextmanager
def cpu_media_shims():
    """Let SGLang's multimodal path run without a CUDA driver (numbers untouched): SGLang's base
    processor moves images to ``cuda:N`` unless its CPU engine is on, and its video decoder pins
    frame memory."""
    import torch
    import sglang.srt.multimodal.processors.base_processor as base_processor

    old_cpu, old_pin = base_processor._is_cpu, torch.Tensor.pin_memory
    base_processor._is_cpu = True
    torch.Tensor.pin_memory = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        base_processor._is_cpu, torch.Tensor.pin_memory = old_cpu, old_pin
