"""The one generation interface every backend implements: chat requests in, texts with token counts out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import ConfigDict, Field

from meditune.model_ref import ModelRef, ModelRefOwner, model_ref_field


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings of one request. temperature 0 means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    n: int = 1
    seed: int = 0
    stop: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass
class GenerationRequest:
    """A chat (list of {role, content}) or, when `prompt` is set, a raw text prompt (no chat template).

    `prefill` (chat requests, local backends) is the start of the assistant's answer: the model continues it and
    every Generation's text begins with it (e.g. the opening of a refusal, to collect the model's own wording).
    `prompt_ids`: the raw prompt already tokenised by the caller (e.g. left-truncated the way lm-eval does); local
    backends feed these tokens, backends that take text send `prompt`."""

    id: str
    messages: list[dict[str, str]] = field(default_factory=list)
    params: SamplingParams = field(default_factory=SamplingParams)
    prompt: str | None = None
    prefill: str = ""
    prompt_ids: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"id": self.id, "messages": self.messages, "prompt": self.prompt, "params": self.params.to_dict()}
        if self.prefill:  # only when set, so cache keys of requests without one stay what they were
            d["prefill"] = self.prefill
        if self.prompt_ids is not None:
            d["prompt_ids"] = self.prompt_ids
        return d


@dataclass
class Generation:
    """One sampled completion of a request (index = sample number 0..n-1)."""

    request_id: str
    index: int
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" | "length" | "error"
    # prompt tokens served from KV computed once for several rows (a shared prefix; OpenAI's cached_tokens): a
    # cost of this run that depends on what else was batched with it, so it is not part of the saved record
    cached_tokens: int = field(default=0, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["cached_tokens"]
        return d


@runtime_checkable
class Backend(Protocol):
    """A generation backend: `generate` returns, for each request, its n generations in order."""

    name: str

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Generation]]: ...


class ScriptedBackend:
    """A deterministic backend driven by a function (request, sample index) -> text.

    For tests and dry runs of stages that consume generations; token counts are whitespace word counts.
    """

    name = "scripted"

    def __init__(self, respond: Callable[[GenerationRequest, int], str]):
        self.respond = respond
        self.calls: list[GenerationRequest] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Generation]]:
        out = []
        for req in requests:
            self.calls.append(req)
            gens = []
            for i in range(req.params.n):
                text = self.respond(req, i)
                prompt_text = req.prompt or " ".join(m["content"] for m in req.messages)
                gens.append(Generation(req.id, i, req.prefill + text, len(prompt_text.split()), len(text.split())))
            out.append(gens)
        return out


class BackendConfig(ModelRefOwner):
    """How to reach a generator model; used in recipes (generators, judges) and by `make_backend`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model_defaults = {"model": "default", "device": "auto", "dtype": "auto", "trust_remote_code": False}
    model_keys_after = "system_prompt"

    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    model: ModelRef = model_ref_field()
    name: str | None = None  # label in reports/datacards; defaults to the model spec
    system_prompt: str | None = None  # see meditune.chat: None = no system prompt
    batch_size: int = 16
    # vllm backend: GPUs one engine shards the model over, within one rank (docs/scaleout.md); None = vLLM's 1
    tensor_parallel_size: int | None = Field(None, ge=1)
    prefix_cache: bool = True  # transformers: compute a prefix shared by several prompts once per call
    # transformers, float32 on CPU: MKL-packed Linear weights per batch row count (generation/packed_linear.py).
    # Off by default: it pays on long fixed-size batches, but costs a copy of the weights per row count in use and
    # repacks as batches shrink (the quickstart's safety eval: 1.2 GB more and 9 % slower with it; docs/cost.md)
    pack_weights: bool = False
    # openai backend
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this environment variable, never from files
    allow_insecure_http: bool = False  # send the key over plain http to a non-loopback host (trusted networks)
    max_concurrency: int = 8
    max_retries: int = 5
    timeout_s: float = 120.0

    @property
    def label(self) -> str:
        return self.name or self.model.spec
