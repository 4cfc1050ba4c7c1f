"""Generative multiple choice: greedy answers to the rendered prompts (the project's batched generation backend).
The direct strategy's generative variant reads their letters (strategies/direct.py: meditune.letters' `lm_eval`
cascade, as lm-eval's kormedmcqa filter; no match = unparseable, counted)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meditune.evaluation.loglik import NO_HOOKS, BatchHooks

# Stop strings of lm-eval's kormedmcqa task, minus "." (which would cut "C. Because..." before the letter on
# some models; extraction handles the rest) - see docs/evaluation-mcqa.md.
DEFAULT_STOP = ("Q:", "</s>", "<|im_end|>", "\n\n")


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
    batches = [idx for idx in (order[k:k + size] for k in range(0, len(order), size)) if hooks.wants(idx)]
    flat = [i for idx in batches for i in idx]
    # One call for every wanted prompt, so the prefix plan sees all sharers (a batch keeps a prefix a later batch
    # shares); stepping it hands each planned batch to the hooks as soon as all its prompts are done.
    stepped = getattr(backend, "generate_steps", None)
    steps = stepped([requests[i] for i in flat]) if stepped else \
        [list(enumerate(backend.generate([requests[i] for i in flat])))]
    reported = 0
    for finished in steps:
        for pos, gens in finished:
            i, g = flat[pos], gens[0]
            outs[i] = GenOut(g.text, g.prompt_tokens, g.completion_tokens, g.finish_reason,
                             len(encoded[i]) - g.prompt_tokens, g.cached_tokens)
        while reported < len(batches) and all(outs[i] is not None for i in batches[reported]):
            hooks.finished(batches[reported], [outs[i] for i in batches[reported]])
            reported += 1
    return outs  # type: ignore[return-value]
