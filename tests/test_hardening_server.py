"""`meditune serve` cannot be tied up: bounded max_tokens and bodies, an API key, fair sharing of the model
between requests, cancellation when a client leaves, and a prompt exit on SIGTERM."""

from __future__ import annotations

import time

import httpx
import pytest
from fastapi.testclient import TestClient

from meditune.errors import ConfigError
from meditune.generation.base import BackendConfig, GenerationRequest, SamplingParams, ScriptedBackend
from meditune.generation.server import (
    ServerLimits,
    _Scheduler,
    _ShuttingDown,
    check_exposure,
    create_app,
    launch,
    sigterm_during_request,
)

KEY = "serve-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def client():
    be = ScriptedBackend(lambda req, i: "word " * req.params.max_new_tokens)
    be.context = 512  # a backend's context caps the limit too
    app = create_app(be, "m", limits=ServerLimits(max_tokens=1000, default_max_tokens=16, max_body_bytes=4096),
                     api_key=KEY)
    with TestClient(app) as c:
        yield c
    app.state.scheduler.stop()


def test_api_key_is_required_on_every_v1_route(client):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert client.get("/v1/models", headers=headers).status_code == 401
    assert client.post("/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 200
    assert client.get("/health").status_code == 200  # liveness stays open, it tells nothing


def test_max_tokens_is_bounded_by_the_limit_and_the_context(client):
    r = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 10**9}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    assert "at most 512" in r.json()["error"]["message"]  # min(--max-tokens-limit 1000, context 512)
    r = client.post("/v1/completions", json={"prompt": "x", "max_completion_tokens": 513}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"
    ok = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 512}, headers=AUTH)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 512
    default = client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert default.json()["usage"]["completion_tokens"] == 16
    assert client.get("/v1/models", headers=AUTH).json()["data"][0]["max_tokens"] == 512


def test_request_body_size_is_limited(client):
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    r = client.post("/v1/chat/completions", json=big, headers=AUTH)
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"

    def chunks():  # no Content-Length: the limit applies while reading
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'

    r = client.post("/v1/chat/completions", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413


def test_exposure_needs_a_key_or_insecure():
    with pytest.raises(ConfigError, match="--api-key-env"):
        check_exposure("0.0.0.0", None, False)
    with pytest.raises(ConfigError):
        check_exposure("192.168.1.4", None, False)
    check_exposure("0.0.0.0", KEY, False)
    check_exposure("0.0.0.0", None, True)
    check_exposure("127.0.0.1", None, False)
    check_exposure("::1", None, False)


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_dir):
    from meditune.generation.transformers_backend import TransformersBackend

    be = TransformersBackend(BackendConfig(model=str(tiny_model_dir), device="cpu", batch_size=8))
    be.eos_ids = set()  # a random model could stop anywhere: make lengths exact
    return be


def _req(rid: str, n_tokens: int) -> GenerationRequest:
    return GenerationRequest(rid, prompt=f"Question {rid}: what is hypertension?",
                             params=SamplingParams(max_new_tokens=n_tokens))


def test_small_requests_do_not_wait_for_a_huge_one_and_cancel_stops_it(tiny_backend):
    sched = _Scheduler(tiny_backend, max_batch=8, wait_s=0.005, limits=ServerLimits(slice_steps=4))
    try:
        huge = sched.submit(_req("huge", 1000))
        time.sleep(0.3)  # the huge request is decoding
        small = [sched.submit(_req(f"s{i}", 4)) for i in range(3)]
        answers = [t.future.result(timeout=60) for t in small]
        assert not huge.future.done()  # answered while the huge one still runs
        assert [a[0].completion_tokens for a in answers] == [4, 4, 4]
        ref = tiny_backend.generate([_req(f"s{i}", 4) for i in range(3)])  # same batch, same tokens
        assert [a[0].text for a in answers] == [r[0].text for r in ref]
        huge.cancelled.set()  # its client went away
        gens = huge.future.result(timeout=10)
        assert gens[0].finish_reason == "cancelled" and 0 < gens[0].completion_tokens < 1000
    finally:
        sched.stop()


def test_stop_answers_waiting_requests(tiny_backend):
    sched = _Scheduler(tiny_backend, max_batch=2, wait_s=0.0, limits=ServerLimits(slice_steps=2, max_active=1))
    running = sched.submit(_req("a", 1000))
    time.sleep(0.2)
    queued = sched.submit(_req("b", 1000))
    t0 = time.monotonic()
    sched.stop()
    for t in (running, queued):
        with pytest.raises(_ShuttingDown):
            t.future.result(timeout=5)
    assert time.monotonic() - t0 < 5
    with pytest.raises(_ShuttingDown):
        sched.submit(_req("late", 1)).future.result(timeout=1)


def test_disconnect_cancels_and_sigterm_exits_fast(tiny_model_dir, tmp_path):
    log = tmp_path / "serve.log"
    args = [str(tiny_model_dir), "--served-name", "tiny", "--device", "cpu", "--api-key-env", "SERVE_TEST_KEY",
            "--max-tokens-limit", "1000"]
    proc, url = launch(args, log, env={"OMP_NUM_THREADS": "1", "SERVE_TEST_KEY": KEY})
    try:
        body = {"prompt": "Hypertension is", "max_tokens": 1000, "temperature": 0}
        with pytest.raises(httpx.ReadTimeout):  # the client gives up: the server must stop generating
            httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=0.5)
        small = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, headers=AUTH,
                           timeout=30)
        assert small.status_code == 200 and small.json()["usage"]["completion_tokens"] <= 3
        # SIGTERM while a long request runs: it gets a 503 and the process exits within seconds
        exit_s, client = sigterm_during_request(proc, url, "/v1/completions", body, headers=AUTH, after_s=0.5)
        assert exit_s < 5, exit_s
        assert client in ("HTTP 503", "RemoteProtocolError", "ReadError"), client
        assert "generation cancelled" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
