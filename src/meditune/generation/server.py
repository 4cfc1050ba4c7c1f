"""An OpenAI-compatible HTTP server over any Backend: /v1/chat/completions, /v1/completions, /v1/models.

Concurrent requests are micro-batched: a worker thread takes every request that arrives within `batch_wait_s`
of the first (up to `max_batch`) and runs them as one `Backend.generate` call, so parallel clients get batched
throughput. Faults can be injected for testing clients (see FaultPlan); they are off unless asked for.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request  # module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from meditune.errors import ConfigError, MeditunError
from meditune.generation.base import Backend, Generation, GenerationRequest, SamplingParams
from meditune.generation.sampling import check_request

log = logging.getLogger(__name__)
FAULT_KINDS = ("500", "429", "slow", "malformed")


@dataclass
class FaultPlan:
    """Faults for the first requests, in order: e.g. ["500", "500", "slow", "malformed"]."""

    faults: list[str]
    slow_s: float = 2.0

    @classmethod
    def parse(cls, specs: list[str]) -> FaultPlan:
        """From CLI specs KIND:COUNT[:SECONDS], e.g. 500:2 slow:1:3 malformed:1 429:1."""
        faults, slow_s = [], 2.0
        for spec in specs:
            parts = spec.split(":")
            if parts[0] not in FAULT_KINDS or len(parts) > 3 or not all(p.replace(".", "", 1).isdigit()
                                                                        for p in parts[1:]):
                raise ConfigError(f"bad fault {spec!r}: use KIND:COUNT[:SECONDS] with KIND one of "
                                  f"{', '.join(FAULT_KINDS)}")
            count = int(parts[1]) if len(parts) > 1 else 1
            if len(parts) == 3:
                slow_s = float(parts[2])
            faults += [parts[0]] * count
        return cls(faults, slow_s)


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = ""


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())
    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=128)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False

    def params(self, default_max: int) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return SamplingParams(temperature=self.temperature, top_p=self.top_p,
                              max_new_tokens=self.max_completion_tokens or self.max_tokens or default_max,
                              n=self.n, seed=self.seed or 0, stop=tuple(s for s in stop if s))


class ChatCompletionRequest(_Common):
    messages: list[_Message] = Field(min_length=1)


class CompletionRequest(_Common):
    prompt: str


class _ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return content or ""


class _Batcher:
    """Runs backend.generate on one worker thread, batching requests that arrive together."""

    def __init__(self, backend: Backend, max_batch: int, wait_s: float):
        self.backend, self.max_batch, self.wait_s = backend, max_batch, wait_s
        self.q: queue.Queue[tuple[GenerationRequest, Future]] = queue.Queue()
        threading.Thread(target=self._loop, daemon=True, name="meditune-serve-batcher").start()

    def submit(self, req: GenerationRequest) -> Future:
        fut: Future = Future()
        self.q.put((req, fut))
        return fut

    def _loop(self) -> None:
        while True:
            items = [self.q.get()]
            deadline = time.monotonic() + self.wait_s
            while len(items) < self.max_batch:
                try:
                    items.append(self.q.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            try:
                results = self.backend.generate([r for r, _ in items])
            except Exception as e:  # noqa: BLE001 - every waiting client gets the error
                for _, fut in items:
                    fut.set_exception(e)
                continue
            for (_, fut), gens in zip(items, results, strict=True):
                fut.set_result(gens)


def create_app(backend: Backend, model_name: str, *, max_batch: int = 16, batch_wait_s: float = 0.01,
               default_max_tokens: int = 256, faults: FaultPlan | None = None):
    """The FastAPI app serving `backend` under the model name `model_name`."""
    app = FastAPI(title="meditune serve", docs_url=None, redoc_url=None)
    batcher = _Batcher(backend, max_batch, batch_wait_s)
    created = int(time.time())
    counter = itertools.count()
    plan = list(faults.faults) if faults else []
    slow_s = faults.slow_s if faults else 0.0

    def error(e: _ApiError) -> JSONResponse:
        return JSONResponse({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": None}},
                            status_code=e.status)

    @app.middleware("http")
    async def inject_faults(request: Request, call_next):
        if request.method == "POST" and plan:
            k = next(counter)
            fault = plan[k] if k < len(plan) else None
            if fault == "500":
                return error(_ApiError(500, "injected fault: internal error", "server_error"))
            if fault == "429":
                return JSONResponse({"error": {"message": "injected fault: rate limited", "type": "rate_limit"}},
                                    status_code=429, headers={"Retry-After": "0"})
            if fault == "malformed":
                return Response('{"id": "x", "choices": [', media_type="application/json")
            if fault == "slow":
                await asyncio.sleep(slow_s)
        return await call_next(request)

    async def parse(request: Request, kind: type[BaseModel]) -> Any:
        try:
            body = await request.json()
        except ValueError:
            raise _ApiError(400, "request body is not valid JSON") from None
        try:
            parsed = kind.model_validate(body)
        except ValidationError as e:
            first = e.errors()[0]
            param = ".".join(str(p) for p in first["loc"])
            raise _ApiError(400, f"'{param}': {first['msg']}", param=param) from None
        if parsed.stream:
            raise _ApiError(400, "stream=true is not supported by meditune serve", param="stream")
        if parsed.model not in (None, model_name):
            raise _ApiError(404, f"the model '{parsed.model}' does not exist; this server serves "
                                 f"'{model_name}'", param="model")
        return parsed

    async def run(req: GenerationRequest) -> list[Generation]:
        try:
            check_request(req)  # before batching: one bad request must not fail its batch-mates
        except MeditunError as e:
            raise _ApiError(400, str(e)) from None
        try:
            return await asyncio.wrap_future(batcher.submit(req))
        except Exception as e:  # noqa: BLE001 - a backend failure is the server's fault, not the client's
            log.exception("generation failed")
            raise _ApiError(500, f"generation failed: {e}", "server_error") from None

    def usage(gens: list[Generation]) -> dict[str, int]:
        prompt = gens[0].prompt_tokens if gens else 0
        completion = sum(g.completion_tokens for g in gens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "meditune"}]}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await parse(request, ChatCompletionRequest)
            messages = [{"role": m.role, "content": _text(m.content)} for m in body.messages]
            for i, m in enumerate(messages):
                if m["role"] not in ("system", "user", "assistant"):
                    raise _ApiError(400, f"messages[{i}].role must be system, user or assistant",
                                    param=f"messages[{i}].role")
            rid = f"chatcmpl-{uuid.uuid4().hex}"
            gens = await run(GenerationRequest(rid, messages, body.params(default_max_tokens)))
        except _ApiError as e:
            return error(e)
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model_name,
                "choices": [{"index": g.index, "message": {"role": "assistant", "content": g.text},
                             "finish_reason": g.finish_reason, "logprobs": None} for g in gens],
                "usage": usage(gens)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        try:
            body = await parse(request, CompletionRequest)
            rid = f"cmpl-{uuid.uuid4().hex}"
            gens = await run(GenerationRequest(rid, [], body.params(default_max_tokens), prompt=body.prompt))
        except _ApiError as e:
            return error(e)
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model_name,
                "choices": [{"index": g.index, "text": g.text, "finish_reason": g.finish_reason,
                             "logprobs": None} for g in gens],
                "usage": usage(gens)}

    return app


def serve(backend: Backend, model_name: str, *, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 16,
          faults: FaultPlan | None = None) -> None:
    """Serve until interrupted (blocking)."""
    import uvicorn

    app = create_app(backend, model_name, max_batch=max_batch, faults=faults)
    uvicorn.run(app, host=host, port=port, log_level="warning")
