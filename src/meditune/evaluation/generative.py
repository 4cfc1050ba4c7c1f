"""Generative multiple choice: greedy answers to the rendered prompt (the project's batched generation backend),
then the chosen letter by meditune.letters' `lm_eval` cascade (as lm-eval's kormedmcqa filter; no match =
unparseable, counted)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from meditune.evaluation.loglik import NO_HOOKS, BatchHooks
from meditune.letters import parse_choice

# Stop strings of lm-eval's kormedmcqa task, minus "." (which would cut "C. Because..." before the letter on
# some models; extraction handles the rest) - see docs/evaluation-mcqa.md.
DEFAULT_STOP = ("Q:", "</s>", "<|im_end|>", "\n\n")


def extract_choice(text: str, n_options: int) -> int | None:
    """0-based option index named in a generated answer, or None (meditune.letters, `lm_eval` cascade)."""
    return parse_choice(text, n_options, "lm_eval")


@dataclass
class GenOut:
    """One greedy completion."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    truncated_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from a prefix shared with other prompts


def generate_texts(backend: Any, prompts: Sequence[str], *, max_new_tokens: int = 32,
                   stop: Sequence[str] = DEFAULT_STOP, max_length: int | None = None, batch_size: int | None = None,
                   hooks: BatchHooks = NO_HOOKS) -> list[GenOut]:
    """Greedy completions of raw prompts (already chat-rendered when wanted) by a transformers generation backend
    (meditune.generation): batched longest first, a prefix shared by several prompts (k-shot exemplars)
    computed once. Prompts are tokenised and left-truncated as lm-eval's generate_until does. `hooks` may skip
    planned batches (their outputs stay None) and take each batch's outputs as it finishes."""
    from meditune.evaluation.loglik import TokenEncoder, model_max_length
    from meditune.generation.base import GenerationRequest, SamplingParams

    enc = TokenEncoder(backend.tokenizer)
    window = (max_length or model_max_length(backend.model, backend.tokenizer)) - max_new_tokens
    if window <= 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room in the context window")
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop=tuple(stop))
    encoded = [enc.encode(p) for p in prompts]
    seqs = [ids[-window:] for ids in encoded]
    requests = [GenerationRequest(f"prompt-{i}", prompt=p, prompt_ids=ids, params=params)
                for i, (p, ids) in enumerate(zip(prompts, seqs, strict=True))]
    # the backend's own order and batches (longest first), so a batch gives the numbers it gives in one call
    order = sorted(range(len(prompts)), key=lambda i: (-len(seqs[i]), i))
    size = batch_size or getattr(backend, "batch_size", None) or len(prompts) or 1
    outs: list[GenOut | None] = [None] * len(prompts)
    keep = getattr(backend, "keep_prefixes", None)  # prefixes computed by one batch serve the next ones
    with keep() if keep else nullcontext():
        for start in range(0, len(order), size):
            idx = order[start:start + size]
            if not hooks.wants(idx):
                continue
            for i, gens in zip(idx, backend.generate([requests[i] for i in idx]), strict=True):
                g = gens[0]
                outs[i] = GenOut(g.text, g.prompt_tokens, g.completion_tokens, g.finish_reason,
                                 len(encoded[i]) - g.prompt_tokens, g.cached_tokens)
            hooks.finished(idx, [outs[i] for i in idx])
    return outs  # type: ignore[return-value]
