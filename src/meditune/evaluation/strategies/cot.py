"""Chain-of-thought prompts ending in "Answer: X", answer parsing, and bounded retries of unparseable answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from meditune.generation.base import Backend, GenerationRequest, SamplingParams
from meditune.letters import parse_choice
from meditune.prompts import render_mcq
from meditune.records import MCQItem

PROMPT_VERSION = "cot-v1"  # bump when the cot template (meditune.prompts) changes: CoT bank keys include it


def cot_messages(item: MCQItem, shots: Sequence[tuple[MCQItem, str]] = ()) -> list[dict[str, str]]:
    """Chat messages: each shot is a (question, rationale ending in "Answer: X") exchange, then the question."""
    msgs: list[dict[str, str]] = []
    for shot_item, rationale in shots:
        msgs.append({"role": "user", "content": render_mcq(shot_item, "cot")})
        msgs.append({"role": "assistant", "content": rationale})
    msgs.append({"role": "user", "content": render_mcq(item, "cot")})
    return msgs


def parse_cot_answer(text: str, n_options: int) -> int | None:
    """Index of the LAST "Answer: X" whose letter is a valid option, else None (meditune.letters)."""
    return parse_choice(text, n_options, "answer_line")


@dataclass(frozen=True)
class RetryPolicy:
    """Unparseable answers are re-asked up to max_retries times, each time hotter and longer."""

    max_retries: int = 2
    temperature_step: float = 0.05
    extra_tokens: int = 128

    def params_for(self, base: SamplingParams, attempt: int, sample: int) -> SamplingParams:
        """Sampling settings of retry number `attempt` (1-based) of sample `sample`."""
        return replace(base, n=1, temperature=base.temperature + self.temperature_step * attempt,
                       max_new_tokens=base.max_new_tokens + self.extra_tokens * attempt,
                       seed=base.seed + 7919 * attempt + 104729 * sample)


@dataclass
class Sample:
    """One answer to one request after retries: the final text, its parsed option (or None) and its cost."""

    text: str
    answer: int | None
    retries: int = 0
    completion_tokens: int = 0  # summed over the first try and every retry
    prompt_tokens: int = 0
    finish_reason: str = "stop"
    cached_tokens: int = 0  # prompt tokens served from a shared prefix's KV (not prefilled again)


def generate_parsed(backend: Backend, requests: Sequence[GenerationRequest], n_options: Sequence[int], *,
                    parser=parse_cot_answer, policy: RetryPolicy = RetryPolicy()) -> list[list[Sample]]:
    """Run requests (n samples each), parse every sample, retry the unparseable ones; per request its samples."""
    if len(requests) != len(n_options):
        raise ValueError("one option count per request is needed")
    results: list[list[Sample]] = []
    for _req, gens, k in zip(requests, backend.generate(requests), n_options, strict=True):
        results.append([Sample(g.text, parser(g.text, k), 0, g.completion_tokens, g.prompt_tokens,
                               g.finish_reason, g.cached_tokens) for g in gens])
    for attempt in range(1, policy.max_retries + 1):
        pending = [(r, s) for r, samples in enumerate(results) for s, smp in enumerate(samples) if smp.answer is None]
        if not pending:
            break
        retry_reqs = [replace(requests[r], id=f"{requests[r].id}#s{s}#retry{attempt}",
                              params=policy.params_for(requests[r].params, attempt, s)) for r, s in pending]
        for (r, s), gens in zip(pending, backend.generate(retry_reqs), strict=True):
            g, old = gens[0], results[r][s]
            results[r][s] = Sample(g.text, parser(g.text, n_options[r]), attempt,
                                   old.completion_tokens + g.completion_tokens,
                                   old.prompt_tokens + g.prompt_tokens, g.finish_reason,
                                   old.cached_tokens + g.cached_tokens)
    return results
