"""The `vllm` backend: the same interface over vLLM's offline `LLM.generate` (optional extra `meditune[vllm]`).

Prompts are rendered by us (meditune.chat, same system-prompt policy as the transformers backend) and passed
as text; vLLM does the batching. vLLM's per-request `seed` makes each sampled request reproducible whatever
else is in the batch. PEFT adapter directories are served with LoRA on top of their base model.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from meditune.chat import render_chat
from meditune.cost import count_tokens
from meditune.errors import ConfigError
from meditune.generation.base import BackendConfig, Generation, GenerationRequest
from meditune.generation.sampling import check_request, truncate_at_stop


def import_vllm() -> Any:
    """The vllm module, or a ConfigError saying how to install it."""
    try:
        return importlib.import_module("vllm")
    except ImportError:
        raise ConfigError("the vllm backend needs vLLM (Linux + CUDA GPU): pip install 'meditune[vllm]'") from None


class VLLMBackend:
    """Generation with a vLLM engine held for the life of the backend."""

    name = "vllm"

    def __init__(self, cfg: BackendConfig, *, engine_kwargs: dict[str, Any] | None = None):
        from meditune.models import resolve

        self.cfg = cfg
        self.vllm = import_vllm()
        rm = resolve(cfg.model.spec)
        self._lora = None
        kwargs: dict[str, Any] = {"trust_remote_code": cfg.model.trust_remote_code, "seed": 0}
        if cfg.model.dtype != "auto":
            kwargs["dtype"] = cfg.model.dtype
        if cfg.tensor_parallel_size:
            kwargs["tensor_parallel_size"] = cfg.tensor_parallel_size
        path = rm.path
        if rm.kind == "adapter":
            path = rm.base.path
            kwargs["enable_lora"] = True
            from vllm.lora.request import LoRARequest

            self._lora = LoRARequest("adapter", 1, rm.path)
        kwargs.update(engine_kwargs or {})
        self.llm = self.vllm.LLM(model=path, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    @property
    def label(self) -> str:
        return self.cfg.label

    def prompt_text(self, req: GenerationRequest) -> str:
        """The exact prompt text (raw prompt, or the chat rendered with our system-prompt policy)."""
        if req.prompt is not None:
            return req.prompt
        return render_chat(self.tokenizer, req.messages, system_prompt=self.cfg.system_prompt) + req.prefill

    def sampling_params(self, req: GenerationRequest) -> Any:
        """vLLM SamplingParams for a request."""
        p = req.params
        return self.vllm.SamplingParams(n=p.n, temperature=p.temperature, top_p=p.top_p,
                                        max_tokens=p.max_new_tokens, seed=p.seed, stop=list(p.stop) or None)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Generation]]:
        """All n samples of every request, in request order."""
        for req in requests:
            check_request(req)
        if not requests:
            return []
        prompts = [{"prompt_token_ids": r.prompt_ids} if r.prompt_ids is not None else self.prompt_text(r)
                   for r in requests]
        params = [self.sampling_params(r) for r in requests]
        extra = {"lora_request": self._lora} if self._lora is not None else {}
        outs = self.llm.generate(prompts, params, use_tqdm=False, **extra)
        results = []
        for req, out in zip(requests, outs, strict=True):
            n_prompt = len(out.prompt_token_ids or [])
            gens = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                text, hit = truncate_at_stop(c.text, req.params.stop)
                reason = "length" if c.finish_reason == "length" and not hit else "stop"
                gens.append(Generation(req.id, c.index, req.prefill + text, n_prompt, len(c.token_ids), reason))
            results.append(gens)
        count_tokens("generated", sum(g.completion_tokens for gens in results for g in gens))
        return results
