"""The `openai` backend: any OpenAI-compatible endpoint (OpenAI, vLLM serve, llama.cpp server, meditune serve).

Chat requests go to /chat/completions, raw prompts to /completions. Up to `max_concurrency` requests are in
flight; 429, 5xx, timeouts, connection errors and malformed bodies are retried with exponential backoff and
full jitter (a delay drawn uniformly from [0, min(max_backoff_s, backoff_s * 2**attempt)], at least the
server's Retry-After); other 4xx fail at once with the status and a short reason.

The API key is read from the environment variable named by `api_key_env` and only ever placed in the request
header, and only over https or to this machine (plain http elsewhere needs `allow_insecure_http: true`). Errors
keep the status and a short reason (the server's message cut to REASON_CHARS), never a response body, and every
text we log or raise has each 8+ character fragment of the key masked.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from meditune.cost import count_tokens
from meditune.errors import ConfigError, MeditunError
from meditune.generation.base import BackendConfig, Generation, GenerationRequest
from meditune.generation.sampling import check_request, truncate_at_stop
from meditune.secrets import is_loopback, mask_secret

log = logging.getLogger(__name__)
OPENAI_URL = "https://api.openai.com/v1"
REASON_CHARS = 160  # a failed request keeps this much of the server's message


class HTTPGenerationError(MeditunError):
    """A request to the generation endpoint failed for good (4xx, or retries exhausted)."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class OpenAIBackend:
    """Chat completions over HTTP with a concurrency limit and retries."""

    name = "openai"

    def __init__(self, cfg: BackendConfig, *, transport: Any = None, backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None):
        import httpx

        self.cfg = cfg
        self.base_url = (cfg.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL).rstrip("/")
        key = os.environ.get(cfg.api_key_env) or None
        if key is None and self.base_url.startswith(OPENAI_URL):
            raise ConfigError(f"the OpenAI API needs a key: set the environment variable {cfg.api_key_env}")
        if key is not None and not cfg.allow_insecure_http and _plain_http_elsewhere(self.base_url):
            raise ConfigError(f"base_url {self.base_url} is plain http to another machine: the key in "
                              f"{cfg.api_key_env} would travel unencrypted; use https, or set "
                              "allow_insecure_http: true if the network is trusted")
        self._key = key
        self._rng = rng or random.Random()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=cfg.timeout_s,
                                    transport=transport)
        self.backoff_s, self.max_backoff_s, self._sleep = backoff_s, max_backoff_s, sleep
        self.retries = 0  # how many retries happened (for tests and logs)

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.cfg.model.spec!r})"

    @property
    def label(self) -> str:
        return self.cfg.label

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Generation]]:
        """All n samples of every request, in request order; requests run concurrently."""
        for req in requests:
            check_request(req)
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=max(1, self.cfg.max_concurrency)) as pool:
            return list(pool.map(self._one, requests))

    def request_body(self, req: GenerationRequest, n: int | None = None, seed: int | None = None) -> dict[str, Any]:
        """The JSON body for a request (chat or completion)."""
        p = req.params
        body: dict[str, Any] = {"model": self.cfg.model.spec, "temperature": p.temperature, "top_p": p.top_p,
                                "max_tokens": p.max_new_tokens, "n": n or p.n,
                                "seed": p.seed if seed is None else seed}
        if p.stop:
            body["stop"] = list(p.stop)
        if req.prefill:
            raise ConfigError(f"request {req.id!r}: a prefilled answer needs a local backend (transformers or vllm); "
                              "chat-completion APIs do not continue an assistant turn")
        if req.prompt is not None:
            body["prompt"] = req.prompt
        else:
            msgs = list(req.messages)
            # The server applies its own template; we can only add a system prompt, not remove its default.
            sp = self.cfg.system_prompt
            if sp and sp != "model-default" and not (msgs and msgs[0]["role"] == "system"):
                msgs = [{"role": "system", "content": sp}, *msgs]
            body["messages"] = msgs
        return body

    def _one(self, req: GenerationRequest) -> list[Generation]:
        path = "/completions" if req.prompt is not None else "/chat/completions"
        gens = self._parse(req, self._post(path, self.request_body(req)), first_index=0)
        # Servers that ignore n (llama.cpp) answer one choice: ask for the rest one by one, seed + index.
        while len(gens) < req.params.n:
            k = len(gens)
            more = self._parse(req, self._post(path, self.request_body(req, n=1, seed=req.params.seed + k)),
                               first_index=k)
            gens.extend(more[:1])
        return gens[:req.params.n]

    def _parse(self, req: GenerationRequest, data: dict[str, Any], first_index: int) -> list[Generation]:
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        total = int(usage.get("completion_tokens") or 0)
        out = []
        for k, c in enumerate(choices):
            text = c["text"] if req.prompt is not None else c["message"]["content"]
            text, hit = truncate_at_stop(text or "", req.params.stop)  # servers that ignore `stop`
            reason = "length" if c.get("finish_reason") == "length" and not hit else "stop"
            # usage is per response: split the completion tokens over the choices (exact for n = 1)
            share = total // len(choices) + (total % len(choices) if k == len(choices) - 1 else 0)
            out.append(Generation(req.id, first_index + k, text, prompt_tokens, share, reason))
        count_tokens("generated", total)
        return out

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            try:
                return self._attempt(path, body)
            except _Retryable as e:
                last = str(e)
                if attempt == self.cfg.max_retries:
                    break
                delay = self.backoff(attempt, e.retry_after)
                self.retries += 1
                log.warning("%s", self._mask(f"{self.base_url}{path}: {last}; retry {attempt + 1}/"
                                             f"{self.cfg.max_retries} in {delay:.1f}s"))
                self._sleep(delay)
            except httpx.HTTPError as e:  # anything else httpx raises: not worth retrying
                raise HTTPGenerationError(self._mask(f"{self.base_url}{path}: {type(e).__name__}: {e}")) from None
        raise HTTPGenerationError(self._mask(f"{self.base_url}{path}: failed after {self.cfg.max_retries + 1} "
                                             f"attempts; last error: {last}"))

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry `attempt` + 1: full jitter, uniform in [0, min(cap, base * 2**attempt)]
        (clients that failed together spread out), but never less than the server's Retry-After."""
        delay = self._rng.uniform(0.0, min(self.max_backoff_s, self.backoff_s * 2 ** attempt))
        return max(delay, retry_after) if retry_after is not None else delay

    def _attempt(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            resp = self._client.post(path, json=body)
        except httpx.TimeoutException:
            raise _Retryable(f"timed out after {self.cfg.timeout_s}s") from None
        except httpx.TransportError as e:
            raise _Retryable(self._mask(f"connection error: {type(e).__name__}: {e}")) from None
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Retryable(f"HTTP {resp.status_code}: {self._message(resp)}", _retry_after(resp))
        if resp.status_code >= 400:
            raise HTTPGenerationError(self._mask(f"{self.base_url}{path}: HTTP {resp.status_code}: "
                                                 f"{self._message(resp)}"))
        try:
            data = resp.json()
            choices = data["choices"]
            if not isinstance(choices, list) or not choices:
                raise ValueError("no choices")
            for c in choices:
                text = c["text"] if "prompt" in body else c["message"]["content"]
                if text is not None and not isinstance(text, str):
                    raise ValueError("content is not a string")
        except (ValueError, KeyError, TypeError) as e:
            raise _Retryable(f"malformed response body ({type(e).__name__}: {e})") from None
        return data

    def _message(self, resp: Any) -> str:
        """A short reason for a failed response: the server's error message (cut), else the HTTP reason phrase;
        never the raw body."""
        try:
            err = resp.json().get("error")
            msg = err.get("message") if isinstance(err, dict) else err
        except (ValueError, AttributeError):
            msg = None
        reason = " ".join(str(msg).split()) if isinstance(msg, str) and msg.strip() else resp.reason_phrase
        reason = self._mask(reason or "")
        return reason if len(reason) <= REASON_CHARS else reason[:REASON_CHARS] + "..."

    def _mask(self, text: str) -> str:
        return mask_secret(text, self._key)


def _plain_http_elsewhere(url: str) -> bool:
    """Whether `url` is plain http to a host other than this machine."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme == "http" and not is_loopback(parts.hostname or "")


def _retry_after(resp: Any) -> float | None:
    try:
        return float(resp.headers.get("Retry-After"))
    except (TypeError, ValueError):
        return None
