"""The openai backend: retry/error logic on a mock transport, and end to end against `meditune serve` with faults."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from meditune.errors import ConfigError
from meditune.generation.base import BackendConfig, GenerationRequest, SamplingParams
from meditune.generation.openai_backend import HTTPGenerationError, OpenAIBackend
from meditune.generation.server import FaultPlan, launch

SECRET = "sk-test-0123456789abcdef-secret"


def chat(rid: str, text: str, **params) -> GenerationRequest:
    return GenerationRequest(rid, [{"role": "user", "content": text}], SamplingParams(**params))


def ok_body(texts: list[str], finish: str = "stop") -> dict:
    return {"choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish}
                        for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3 * len(texts)}}


def mock_backend(handler, monkeypatch, **cfg) -> tuple[OpenAIBackend, list[float]]:
    monkeypatch.setenv("TEST_KEY", SECRET)
    sleeps: list[float] = []
    be = OpenAIBackend(BackendConfig(backend="openai", model="m", base_url="https://test/v1", api_key_env="TEST_KEY",
                                     **cfg), transport=httpx.MockTransport(handler), sleep=sleeps.append)
    return be, sleeps


def test_retries_on_5xx_429_malformed_and_timeouts(monkeypatch):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        k = len(seen)
        if k == 1:
            return httpx.Response(500, json={"error": {"message": "boom"}})
        if k == 2:
            return httpx.Response(429, json={"error": {"message": "slow down"}}, headers={"Retry-After": "7"})
        if k == 3:
            return httpx.Response(200, text='{"choices": [')
        if k == 4:
            raise httpx.ReadTimeout("timed out", request=request)
        if k == 5:
            return httpx.Response(200, json={"choices": []})
        return httpx.Response(200, json=ok_body(["Paris. More", "Lyon"]))

    be, sleeps = mock_backend(handler, monkeypatch, max_retries=5)
    out = be.generate([chat("q", "capital?", n=2, stop=(".",), temperature=0.5, seed=4, max_new_tokens=9)])
    assert [g.text for g in out[0]] == ["Paris", "Lyon"]
    assert out[0][0].finish_reason == "stop" and out[0][0].prompt_tokens == 5
    assert sum(g.completion_tokens for g in out[0]) == 6
    assert be.retries == 5 and len(sleeps) == 5
    assert sleeps[1] >= 7  # Retry-After honoured
    assert all(b <= 2 ** a for a, b in enumerate(sleeps) if a != 1)  # exponential with jitter below the cap
    body = json.loads(seen[-1].content)
    assert body == {"model": "m", "temperature": 0.5, "top_p": 1.0, "max_tokens": 9, "n": 2, "seed": 4,
                    "stop": ["."], "messages": [{"role": "user", "content": "capital?"}]}
    assert seen[-1].headers["authorization"] == f"Bearer {SECRET}"


def test_4xx_fails_fast_with_status_and_message_and_masks_the_key(monkeypatch, caplog):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(401, json={"error": {"message": f"Incorrect API key provided: {SECRET}"}})

    be, _ = mock_backend(handler, monkeypatch)
    with caplog.at_level(logging.DEBUG), pytest.raises(HTTPGenerationError) as e:
        be.generate([chat("q", "hi")])
    assert "HTTP 401" in str(e.value) and "Incorrect API key" in str(e.value) and SECRET not in str(e.value)
    assert len(calls) == 1
    assert SECRET not in caplog.text and SECRET not in repr(be)


def test_retries_exhausted_names_the_last_error(monkeypatch):
    be, sleeps = mock_backend(lambda r: httpx.Response(503, text="overloaded"), monkeypatch, max_retries=2)
    # a plain-text error body is not copied: the status and its reason phrase only
    with pytest.raises(HTTPGenerationError, match=r"failed after 3 attempts; last error: HTTP 503: Service Unavailable"):
        be.generate([chat("q", "hi")])
    assert len(sleeps) == 2


def test_servers_ignoring_n_and_raw_prompts(monkeypatch):
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append((request.url.path, body))
        if "prompt" in body:
            return httpx.Response(200, json={"choices": [{"index": 0, "text": " beats", "finish_reason": "length"}],
                                             "usage": {"prompt_tokens": 2, "completion_tokens": 1}})
        return httpx.Response(200, json=ok_body([f"answer seed {body['seed']}"]))  # one choice, whatever n is

    be, _ = mock_backend(handler, monkeypatch, system_prompt="Be brief.")
    out = be.generate([chat("q", "hi", n=3, seed=10),
                       GenerationRequest("p", prompt="The heart", params=SamplingParams(max_new_tokens=1))])
    assert [g.text for g in out[0]] == ["answer seed 10", "answer seed 11", "answer seed 12"]
    assert [g.index for g in out[0]] == [0, 1, 2]
    assert bodies[0][1]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert out[1][0].text == " beats" and out[1][0].finish_reason == "length"
    assert any(path == "/v1/completions" for path, _ in bodies)


def test_openai_without_key_is_a_config_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_KEY"):
        OpenAIBackend(BackendConfig(backend="openai", model="gpt-4o", api_key_env="NO_SUCH_KEY"))


def test_fault_plan_parsing():
    plan = FaultPlan.parse(["500:2", "slow:1:3.5", "malformed"])
    assert plan.faults == ["500", "500", "slow", "malformed"] and plan.slow_s == 3.5
    with pytest.raises(ConfigError, match="bad fault"):
        FaultPlan.parse(["teapot:1"])


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    args = [str(tiny_model_dir), "--served-name", "tiny", "--device", "cpu", "--fault", "500:2", "--fault", "slow:1:4",
            "--fault", "malformed:1", "--fault", "429:1"]
    proc, url = launch(args, tmp_path_factory.mktemp("serve") / "serve.log", env={"OMP_NUM_THREADS": "1"})
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_backend_against_meditune_serve_survives_injected_faults(server, tiny_model_dir, monkeypatch, caplog):
    from meditune.generation.transformers_backend import TransformersBackend

    monkeypatch.setenv("SERVE_KEY", SECRET)
    cfg = BackendConfig(backend="openai", model="tiny", base_url=f"{server}/v1", api_key_env="SERVE_KEY",
                        timeout_s=2.0, max_retries=6, max_concurrency=1)
    be = OpenAIBackend(cfg, backoff_s=0.05)
    reqs = [chat("a", "What is a normal blood pressure?", max_new_tokens=8),
            chat("b", "Name a vaccine.", max_new_tokens=6, temperature=0.9, seed=3, n=2),
            GenerationRequest("c", prompt="The kidney", params=SamplingParams(max_new_tokens=5))]
    with caplog.at_level(logging.DEBUG):
        out = be.generate(reqs)
    assert be.retries >= 5  # 500, 500, slow (client timeout), malformed, 429
    # One request at a time reaches the server, so each is generated alone: same as in-process generation.
    local = TransformersBackend(BackendConfig(model=str(tiny_model_dir), device="cpu"))
    for req, gens in zip(reqs, out, strict=True):
        ref = local.generate([req])[0]
        assert [(g.index, g.text, g.prompt_tokens, g.finish_reason) for g in gens] == \
               [(g.index, g.text, g.prompt_tokens, g.finish_reason) for g in ref]
    assert SECRET not in caplog.text
    models = httpx.get(f"{server}/v1/models").json()
    assert models["data"][0]["id"] == "tiny"


def test_serve_rejects_bad_requests_with_openai_errors(server):
    be = OpenAIBackend(BackendConfig(backend="openai", model="nope", base_url=f"{server}/v1", max_retries=1),
                       backoff_s=0.01)
    with pytest.raises(HTTPGenerationError, match=r"HTTP 404: the model 'nope' does not exist"):
        be.generate([chat("a", "hi", max_new_tokens=2)])
    r = httpx.post(f"{server}/v1/chat/completions", json={"model": "tiny", "messages": [], "max_tokens": 2})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    r = httpx.post(f"{server}/v1/chat/completions",
                   json={"messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"
    r = httpx.post(f"{server}/v1/chat/completions", json={"messages": [{"role": "tool", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].role"
    # concurrent clients are micro-batched and all answered
    many = OpenAIBackend(BackendConfig(backend="openai", model="tiny", base_url=f"{server}/v1", max_concurrency=6))
    out = many.generate([chat(f"m{i}", f"question {i}", max_new_tokens=3) for i in range(6)])
    assert [g[0].request_id for g in out] == [f"m{i}" for i in range(6)]
    assert all(g[0].completion_tokens >= 1 for g in out)
