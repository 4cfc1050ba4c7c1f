"""An OpenAI-compatible HTTP server over any Backend: /v1/chat/completions, /v1/completions, /v1/models.

Concurrent requests are micro-batched: the worker takes every request that arrives within `batch_wait_s` of the
first (up to `max_batch`) as one batch. With a backend that can decode step by step (`generate_steps`, the
transformers backend), the worker keeps up to `max_active` batches and decodes them in turn, `slice_steps` tokens
at a time, so one long request cannot hold the model while short ones wait; each request is answered as soon as
its own rows finish, and a request whose client disconnected stops at the next step.

Limits (see ServerLimits): max_tokens beyond the server's limit (and the model's context) is a 400, a body
beyond `max_body_bytes` a 413; with an API key every /v1 route needs `Authorization: Bearer KEY` (compared in
constant time). On SIGTERM/SIGINT waiting requests get a 503 at once and the process exits within seconds.
Faults can be injected for testing clients (see FaultPlan); they are off unless asked for.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import itertools
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request  # module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from meditune.errors import ConfigError, MeditunError
from meditune.generation.base import Backend, Generation, GenerationRequest, SamplingParams
from meditune.generation.sampling import check_request
from meditune.secrets import is_loopback

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

    def params(self, default_max: int, limit: int) -> SamplingParams:
        """The sampling params; max_tokens above `limit` is refused (a 400), not silently cut."""
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        asked = self.max_completion_tokens or self.max_tokens
        if asked is not None and asked > limit:
            param = "max_completion_tokens" if self.max_completion_tokens else "max_tokens"
            raise _ApiError(400, f"'{param}' is {asked}; this server allows at most {limit}", param=param)
        return SamplingParams(temperature=self.temperature, top_p=self.top_p,
                              max_new_tokens=asked or min(default_max, limit),
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


@dataclass
class ServerLimits:
    """What one client may ask of the server."""

    max_tokens: int = 2048  # most tokens a request may generate (also capped by the model's context)
    default_max_tokens: int = 256  # when the request gives no max_tokens
    max_body_bytes: int = 1 << 20  # larger request bodies get a 413
    slice_steps: int = 8  # decoding steps a batch runs before the next active batch gets its turn
    max_active: int = 4  # batches decoded in turn; more requests wait in the queue
    shutdown_s: float = 3.0  # on SIGTERM: longest wait for in-flight responses before their tasks are cancelled


class _ShuttingDown(Exception):
    """The server is stopping: waiting requests are answered with a 503."""


@dataclass
class _Ticket:
    """A submitted request: its future result and whether its client is gone."""

    req: GenerationRequest
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def deliver(self, gens: list[Generation] | None = None, error: BaseException | None = None) -> None:
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(gens)


class _Scheduler:
    """One worker thread shares the backend between requests (see the module docstring)."""

    def __init__(self, backend: Backend, max_batch: int, wait_s: float, limits: ServerLimits):
        self.backend, self.max_batch, self.wait_s, self.limits = backend, max_batch, wait_s, limits
        self.q: queue.Queue[_Ticket] = queue.Queue()
        self.stopping = threading.Event()
        self._lock = threading.Lock()  # a request submitted while stopping is never left unanswered in the queue
        self.stepping = callable(getattr(backend, "generate_steps", None))
        self.thread = threading.Thread(target=self._loop, daemon=True, name="meditune-serve-worker")
        self.thread.start()

    def submit(self, req: GenerationRequest) -> _Ticket:
        ticket = _Ticket(req)
        with self._lock:
            if self.stopping.is_set():
                ticket.deliver(error=_ShuttingDown())
            else:
                self.q.put(ticket)
        return ticket

    def stop(self) -> None:
        """Stop decoding at the next step; the worker then answers every waiting request with _ShuttingDown.
        Only sets an event, so a signal handler may call it."""
        self.stopping.set()

    def _drain(self) -> None:
        with self._lock:
            while True:
                try:
                    self.q.get_nowait().deliver(error=_ShuttingDown())
                except queue.Empty:
                    return

    def _take(self, block: bool) -> list[_Ticket]:
        """The next micro-batch: waits for a first request only when `block` (nothing else to do)."""
        try:
            first = self.q.get(timeout=0.1) if block else self.q.get_nowait()
        except queue.Empty:
            return []
        items = [first]
        deadline = time.monotonic() + (self.wait_s if block else 0.0)
        while len(items) < self.max_batch:
            try:
                items.append(self.q.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return [t for t in items if not t.cancelled.is_set()]  # a client gone while queued: nobody waits

    def _loop(self) -> None:
        active: collections.deque = collections.deque()
        with getattr(self.backend, "step_context", contextlib.nullcontext)():
            try:
                self._serve(active)
            except BaseException:  # a bug here must not leave clients waiting forever
                log.exception("the generation worker failed; the server stops answering")
                self.stopping.set()
            finally:
                for batch, steps in active:
                    steps.close()  # inside the step context, which the batches' own contexts nest in
                    for t in batch:
                        t.deliver(error=_ShuttingDown())
        self._drain()

    def _serve(self, active: collections.deque) -> None:
        """Admit batches and decode the active ones in turn until stopped."""
        while not self.stopping.is_set():
            if len(active) < self.limits.max_active:
                batch = self._take(block=not active)
                if batch and not self.stepping:
                    self._run_whole(batch)
                    continue
                if batch:
                    def cancelled(i: int, b: list[_Ticket] = batch) -> bool:
                        return b[i].cancelled.is_set() or self.stopping.is_set()

                    active.append((batch, self.backend.generate_steps([t.req for t in batch], cancelled)))
            if not active:
                continue
            batch, steps = active.popleft()
            if self._run_slice(batch, steps):
                active.append((batch, steps))

    def _run_slice(self, batch: list[_Ticket], steps: Any) -> bool:
        """Decode `slice_steps` steps of a batch, answering the requests they complete; False when it is done."""
        try:
            for _ in range(self.limits.slice_steps):
                if self.stopping.is_set():
                    return True  # left to the shutdown, which answers it with a 503
                for i, gens in next(steps):
                    batch[i].deliver(gens)
        except StopIteration as done:
            for t, gens in zip(batch, done.value, strict=True):
                t.deliver(gens)
            return False
        except Exception as e:  # noqa: BLE001 - every client of the batch gets the error
            for t in batch:
                t.deliver(error=e)
            return False
        return True

    def _run_whole(self, batch: list[_Ticket]) -> None:
        """Backends without step-wise decoding (vllm, scripted): the batch in one call."""
        try:
            results = self.backend.generate([t.req for t in batch])
        except Exception as e:  # noqa: BLE001 - every waiting client gets the error
            for t in batch:
                t.deliver(error=e)
            return
        for t, gens in zip(batch, results, strict=True):
            t.deliver(gens)


def create_app(backend: Backend, model_name: str, *, max_batch: int = 16, batch_wait_s: float = 0.01,
               default_max_tokens: int | None = None, faults: FaultPlan | None = None,
               limits: ServerLimits | None = None, api_key: str | None = None):
    """The FastAPI app serving `backend` under the model name `model_name` (app.state.scheduler: the worker)."""
    limits = limits or ServerLimits()
    if default_max_tokens is not None:
        limits.default_max_tokens = default_max_tokens
    context = getattr(backend, "context", None)
    has_context = isinstance(context, int) and context > 0
    token_limit = min(limits.max_tokens, context) if has_context else limits.max_tokens
    scheduler = _Scheduler(backend, max_batch, batch_wait_s, limits)
    app = FastAPI(title="meditune serve", docs_url=None, redoc_url=None)
    app.state.scheduler = scheduler
    created = int(time.time())
    counter = itertools.count()
    plan = list(faults.faults) if faults else []
    slow_s = faults.slow_s if faults else 0.0
    expected_auth = f"Bearer {api_key}".encode() if api_key else None

    def error(e: _ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": None}},
                            status_code=e.status, headers=headers)

    if plan:  # only when asked for: a middleware that reads requests also delays disconnect detection
        @app.middleware("http")
        async def inject_faults(request: Request, call_next):
            if request.method == "POST":
                k = next(counter)
                fault = plan[k] if k < len(plan) else None
                if fault == "500":
                    return error(_ApiError(500, "injected fault: internal error", "server_error"))
                if fault == "429":
                    return JSONResponse({"error": {"message": "injected fault: rate limited",
                                                   "type": "rate_limit"}}, status_code=429,
                                        headers={"Retry-After": "0"})
                if fault == "malformed":
                    return Response('{"id": "x", "choices": [', media_type="application/json")
                if fault == "slow":
                    await asyncio.sleep(slow_s)
            return await call_next(request)

    def authorize(request: Request) -> None:
        if expected_auth is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected_auth):
            raise _ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error")

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        too_big = _ApiError(413, f"request body larger than {limits.max_body_bytes} bytes",
                            "request_too_large")
        if declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    async def parse(request: Request, kind: type[BaseModel]) -> Any:
        authorize(request)
        body = await read_body(request)
        try:
            data = json.loads(body)
        except ValueError:
            raise _ApiError(400, "request body is not valid JSON") from None
        try:
            parsed = kind.model_validate(data)
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

    async def run(request: Request, req: GenerationRequest) -> list[Generation]:
        try:
            check_request(req)  # before batching: one bad request must not fail its batch-mates
        except MeditunError as e:
            raise _ApiError(400, str(e)) from None
        ticket = scheduler.submit(req)
        waiting = asyncio.wrap_future(ticket.future)
        try:
            while True:  # wait for the result, and stop the work when the client goes away
                done, _ = await asyncio.wait({waiting}, timeout=0.25)
                if done:
                    return waiting.result()
                if await request.is_disconnected():
                    log.info("client of %s disconnected: generation cancelled", req.id)
                    raise _ApiError(499, "client closed the request")
        except _ShuttingDown:
            raise _ApiError(503, "the server is shutting down", "server_error") from None
        except _ApiError:
            raise
        except Exception as e:  # noqa: BLE001 - a backend failure is the server's fault, not the client's
            log.exception("generation failed")
            raise _ApiError(500, f"generation failed: {e}", "server_error") from None
        finally:
            ticket.cancelled.set()  # no-op once answered; else (disconnect, task cancelled) the rows stop

    def usage(gens: list[Generation]) -> dict[str, int]:
        prompt = gens[0].prompt_tokens if gens else 0
        completion = sum(g.completion_tokens for g in gens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            authorize(request)
        except _ApiError as e:
            return error(e)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "meditune", "max_tokens": token_limit}]}

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
            gens = await run(request, GenerationRequest(rid, messages, body.params(limits.default_max_tokens,
                                                                                   token_limit)))
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
            gens = await run(request, GenerationRequest(rid, [], body.params(limits.default_max_tokens,
                                                                             token_limit), prompt=body.prompt))
        except _ApiError as e:
            return error(e)
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model_name,
                "choices": [{"index": g.index, "text": g.text, "finish_reason": g.finish_reason,
                             "logprobs": None} for g in gens],
                "usage": usage(gens)}

    return app


def check_exposure(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to serve beyond this machine without an API key, unless explicitly insecure."""
    if not is_loopback(host) and api_key is None and not insecure:
        raise ConfigError(f"--host {host} exposes the server to the network: protect it with --api-key-env NAME "
                          "(clients send Authorization: Bearer KEY), or pass --insecure to serve without a key")


def serve(backend: Backend, model_name: str, *, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 16,
          faults: FaultPlan | None = None, limits: ServerLimits | None = None, api_key: str | None = None,
          insecure: bool = False) -> None:
    """Serve until SIGTERM/SIGINT (blocking); waiting requests then get a 503 and the process exits."""
    import uvicorn

    check_exposure(host, api_key, insecure)
    limits = limits or ServerLimits()
    app = create_app(backend, model_name, max_batch=max_batch, faults=faults, limits=limits, api_key=api_key)

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # the signal handler: stop decoding first, so responses end now
            app.state.scheduler.stop()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=max(1, round(limits.shutdown_s)))
    _Server(config).run()


def launch(args: list[str], log_path: str | Path, *, env: dict[str, str] | None = None,
           timeout_s: float = 300.0) -> tuple[subprocess.Popen, str]:
    """Start `meditune serve ARGS` on a free 127.0.0.1 port in a subprocess (its console output goes to
    `log_path`) and wait until /health answers; returns (process, base URL). For tests and benches."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "meditune.cli", "serve", *args, "--port", str(port)],
                                env=env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"meditune serve exited: {Path(log_path).read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"meditune serve did not answer within {timeout_s:.0f} s")


def sigterm_during_request(proc: subprocess.Popen, url: str, path: str, body: dict[str, Any], *,
                           headers: dict[str, str] | None = None, after_s: float = 0.5,
                           timeout_s: float = 60.0) -> tuple[float, str]:
    """Send SIGTERM to a `launch`ed server while it works on a request; returns (seconds from the signal to
    the process exit, what the request's client got: "HTTP 503", or the httpx error's name)."""
    import httpx

    outcome: dict[str, str] = {}

    def request() -> None:
        try:
            r = httpx.post(f"{url}{path}", json=body, headers=headers, timeout=timeout_s)
            outcome["client"] = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            outcome["client"] = type(e).__name__

    client = threading.Thread(target=request)
    client.start()
    time.sleep(after_s)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=timeout_s)
    exit_s = time.monotonic() - t0
    client.join(timeout=timeout_s)
    return exit_s, outcome.get("client", "no answer")
