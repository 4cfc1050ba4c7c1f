"""The openai backend keeps its key secret: no key over plain http to another machine, no fragment of it in
errors or logs, failed requests reduced to a status and a short reason; and its backoff is real full jitter."""

from __future__ import annotations

import logging
import random

import httpx
import pytest

from meditune.errors import ConfigError
from meditune.generation.base import BackendConfig, GenerationRequest, SamplingParams
from meditune.generation.openai_backend import REASON_CHARS, HTTPGenerationError, OpenAIBackend
from meditune.secrets import is_loopback, mask_secret

KEY = "sk-live-ABCDEFGH12345678-zyxwvuts"


def test_mask_secret_hides_every_fragment_of_8_or_more():
    text = f"echo: {KEY} / part ABCDEFGH1234 / short ABCDEFG / tail 5678-zyxwvu / none"
    masked = mask_secret(text, KEY)
    assert KEY not in masked and "ABCDEFGH1234" not in masked and "5678-zyxwvu" not in masked
    assert "short ABCDEFG " in masked  # 7 characters of the key are not a secret
    for i in range(len(KEY) - 7):
        assert KEY[i:i + 8] not in masked
    assert mask_secret("nothing here", KEY) == "nothing here" and mask_secret("x", None) == "x"


@pytest.mark.parametrize(("url", "refused"), [
    ("http://example.org/v1", True), ("http://10.0.0.5:8000/v1", True), ("http://0.0.0.0:8000/v1", True),
    ("https://example.org/v1", False), ("http://127.0.0.1:8000/v1", False), ("http://localhost:8000/v1", False),
    ("http://[::1]:8000/v1", False),
])
def test_key_never_travels_over_plain_http_to_another_machine(url, refused, monkeypatch):
    monkeypatch.setenv("K", KEY)
    cfg = BackendConfig(backend="openai", model="m", base_url=url, api_key_env="K")
    if refused:
        with pytest.raises(ConfigError, match="plain http") as e:
            OpenAIBackend(cfg)
        assert KEY not in str(e.value)
        OpenAIBackend(cfg.model_copy(update={"allow_insecure_http": True})).close()  # explicit opt-in
    else:
        OpenAIBackend(cfg).close()
    monkeypatch.delenv("K")
    OpenAIBackend(cfg).close()  # no key, nothing to leak


def test_allow_insecure_http_is_a_recipe_setting():
    from meditune.generation.stage import GenerateStageConfig, backend_config_of

    stage = GenerateStageConfig(name="g", type="generate", data="x", backend="openai", base_url="http://h/v1",
                                allow_insecure_http=True)
    assert backend_config_of(stage, None).allow_insecure_http is True


def _backend(handler, monkeypatch, **kw) -> tuple[OpenAIBackend, list[float]]:
    monkeypatch.setenv("K", KEY)
    sleeps: list[float] = []
    be = OpenAIBackend(BackendConfig(backend="openai", model="m", base_url="https://api.test/v1", api_key_env="K",
                                     **kw), transport=httpx.MockTransport(handler), sleep=sleeps.append,
                       backoff_s=0.01)
    return be, sleeps


def _req() -> GenerationRequest:
    return GenerationRequest("q", [{"role": "user", "content": "hi"}], SamplingParams(max_new_tokens=4))


def test_echoed_key_fragments_and_bodies_stay_out_of_errors_and_logs(monkeypatch, caplog):
    fragment = KEY[3:15]
    long_message = f"invalid key {fragment}... " + "details " * 200

    def handler(request):
        if "retry" not in request.headers.get("x-test", "") and len(calls) < 2:
            calls.append(1)
            return httpx.Response(500, json={"error": {"message": f"upstream saw {KEY[10:22]}"}})
        return httpx.Response(401, json={"error": {"message": long_message}}, text=None)

    calls: list[int] = []
    be, _ = _backend(handler, monkeypatch, max_retries=3)
    with caplog.at_level(logging.DEBUG), pytest.raises(HTTPGenerationError) as e:
        be.generate([_req()])
    message = str(e.value)
    assert "HTTP 401" in message and "invalid key ***" in message
    assert len(message) < REASON_CHARS + 100  # a short reason, not the body
    for text in (message, caplog.text):
        for i in range(len(KEY) - 7):
            assert KEY[i:i + 8] not in text


def test_plain_text_error_bodies_are_not_copied(monkeypatch):
    be, _ = _backend(lambda r: httpx.Response(403, text=f"<html>forbidden for {KEY}</html>"), monkeypatch)
    with pytest.raises(HTTPGenerationError) as e:
        be.generate([_req()])
    assert str(e.value).endswith("HTTP 403: Forbidden") and "html" not in str(e.value)


def test_backoff_is_full_jitter_with_a_seeded_rng(monkeypatch):
    monkeypatch.setenv("K", KEY)
    be = OpenAIBackend(BackendConfig(backend="openai", model="m", base_url="https://api.test/v1", api_key_env="K"),
                       backoff_s=1.0, max_backoff_s=8.0, rng=random.Random(42))
    got = [be.backoff(a) for a in range(6)]
    ref = random.Random(42)
    assert got == [ref.uniform(0.0, min(8.0, 2.0 ** a)) for a in range(6)]
    assert all(0.0 <= d <= min(8.0, 2.0 ** a) for a, d in enumerate(got))
    draws = [be.backoff(3) for _ in range(2000)]  # uniform on [0, 8]: the whole range, not only its top half
    assert min(draws) < 0.5 and max(draws) > 7.5 and 3.6 < sum(draws) / len(draws) < 4.4
    assert be.backoff(0, retry_after=5.0) == 5.0  # Retry-After is a floor


def test_loopback_names():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.1.2.3", "example.org", ""))
