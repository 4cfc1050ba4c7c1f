"""Prompts, sampling from the current policy and scoring: the shared core of rejection sampling and
iterative DPO. Every round's samples and scores are written to disk, so a killed round resumes."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from meditune.distributed import current
from meditune.errors import ConfigError
from meditune.io import iter_jsonl, write_jsonl
from meditune.model_ref import ModelRef
from meditune.prompts import render_mcq
from meditune.records import Chat, LongFormItem, MCQItem, Preference, Record, SafetyItem

log = logging.getLogger(__name__)

PROMPT_KINDS = (Chat, LongFormItem, MCQItem, Preference, SafetyItem)
# A scorer for rollouts: (prompt items, responses) -> one score per response (None = unscorable).
ScoreFn = Callable[[Sequence["PromptItem"], Sequence[str]], list[float | None]]


@dataclass
class PromptItem:
    """A prompt to sample from, with what scorers may need about it."""

    id: str
    messages: list[dict[str, str]]
    question: str
    references: list[str] = field(default_factory=list)
    options: list[str] | None = None
    gold: int | None = None


def prompt_item(rec: Record) -> PromptItem:
    """The prompt of a record (a Chat's conversation up to its last assistant turn)."""
    if isinstance(rec, Chat):
        msgs = rec.to_messages()
        while msgs and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        if not msgs:
            raise ConfigError(f"chat {rec.id!r} has no user turn to sample a reply to")
        ref = [m["content"] for m in rec.to_messages()[len(msgs):]]
        return PromptItem(rec.id, msgs, msgs[-1]["content"], ref)
    if isinstance(rec, Preference):
        msgs = [m.model_dump() for m in rec.prompt]
        return PromptItem(rec.id, msgs, msgs[-1]["content"], [rec.chosen])
    if isinstance(rec, LongFormItem):
        refs = rec.must_have + ([rec.reference] if rec.reference else [])
        return PromptItem(rec.id, [{"role": "user", "content": rec.question}], rec.question, refs)
    if isinstance(rec, SafetyItem):
        return PromptItem(rec.id, [{"role": "user", "content": rec.request}], rec.request,
                          [rec.safe_response] if rec.safe_response else [])
    if isinstance(rec, MCQItem):
        text = render_mcq(rec, "rollout")
        return PromptItem(rec.id, [{"role": "user", "content": text}], text, [], rec.options, rec.answer)
    raise ConfigError(f"{type(rec).__name__} records cannot be prompts")


class RolloutOptions(BaseModel):
    """Sampling and scoring settings of rs / idpo."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    rounds: int = Field(1, ge=1)
    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(256, ge=1)
    gen_batch_size: int = Field(16, ge=1)
    reward_model: str | None = None  # a reward model dir (the `rm` stage's main output)
    scorer: dict[str, Any] | None = None  # a meditune.scoring config, e.g. {type: answer} or {type: dahl, ...}


ROLLOUT_FIELDS = set(RolloutOptions.model_fields)


def make_score_fn(opts: Any, system_prompt: str | None, device: str) -> ScoreFn:
    """The rollout scorer of a stage: its reward model, or a meditune.scoring scorer config."""
    if opts.reward_model and opts.scorer:
        raise ConfigError("set either reward_model or scorer, not both")
    if opts.reward_model:
        from meditune.scoring.reward import RewardScorer

        rm = RewardScorer(opts.reward_model, device=device, system_prompt=system_prompt)
        return lambda items, responses: list(rm([it.messages for it in items], list(responses)))
    if opts.scorer:
        from meditune.scoring.base import ScoreInput
        from meditune.scoring.registry import build_scorer, parse_scorer_config

        scorer = build_scorer(parse_scorer_config(opts.scorer, "scorer"))

        def score(items: Sequence[PromptItem], responses: Sequence[str]) -> list[float | None]:
            inputs = [ScoreInput(id=it.id, question=it.question, answer=r, references=it.references,
                                 options=it.options, gold=it.gold) for it, r in zip(items, responses, strict=True)]
            return [s.value if s.clean else None for s in scorer.score(inputs)]

        return score
    raise ConfigError("rollouts need a scorer: set reward_model (an rm stage output) or scorer (a scoring config)")


def sample(policy: ModelRef, items: list[PromptItem], n: int, opts: Any, *, seed: int, system_prompt: str | None,
           backend: Any = None) -> list[list[str]]:
    """n sampled responses per prompt from the policy model (or the given backend, e.g. for tests)."""
    from meditune.generation.base import BackendConfig, GenerationRequest, SamplingParams

    own = backend is None
    if own:
        from meditune.generation.factory import make_backend

        backend = make_backend(BackendConfig(model=policy, system_prompt=system_prompt, batch_size=opts.gen_batch_size))
    params = SamplingParams(temperature=opts.temperature, top_p=opts.top_p, max_new_tokens=opts.max_new_tokens,
                            n=n, seed=seed)
    gens = backend.generate([GenerationRequest(id=it.id, messages=it.messages, params=params) for it in items])
    if own:
        del backend
        gc.collect()  # free the sampling copy of the policy before training starts
    return [[g.text for g in sorted(per, key=lambda g: g.index)] for per in gens]


def rollouts(round_dir: Path, policy: ModelRef, items: list[PromptItem], n: int, opts: Any, score_fn: ScoreFn, *,
             seed: int, system_prompt: str | None, backend: Any = None) -> list[dict[str, Any]]:
    """Sampled and scored responses per prompt, read back from round_dir/rollouts.jsonl when already done.

    Under several processes each rank samples and scores every world-th prompt and the rows are gathered, so no
    prompt is sampled twice. A sample's random stream depends on (seed, sample index) only, not on which rank
    draws it; each row records the rank that made it.
    """
    path = round_dir / "rollouts.jsonl"
    if path.exists():
        rows = [obj for _, obj in iter_jsonl(path)]
        if [r["id"] for r in rows] == [it.id for it in items]:
            log.info("reusing %s", path)
            return rows
    # under torchrun / accelerate the process group is set up here when no trainer has done it yet (round 1
    # samples before any trainer exists)
    ranks = current(policy.device or "auto")
    rank, world = ranks.rank, ranks.world
    mine = list(range(rank, len(items), world))
    share = [items[i] for i in mine]
    texts = sample(policy, share, n, opts, seed=seed, system_prompt=system_prompt, backend=backend) if share else []
    flat_items = [it for it, t in zip(share, texts, strict=True) for _ in t]
    flat_scores = score_fn(flat_items, [x for t in texts for x in t]) if flat_items else []
    rows, k = [], 0
    for i, it, t in zip(mine, share, texts, strict=True):
        rows.append((i, {"id": it.id, "messages": it.messages, "responses": t, "scores": flat_scores[k:k + len(t)],
                         "rank": rank}))
        k += len(t)
    if world > 1:
        rows = [row for part in ranks.all_gather(rows) for row in part]
        log.info("rank %d sampled %d of %d prompts", rank, len(mine), len(items))
    rows = [row for _, row in sorted(rows, key=lambda x: x[0])]
    if ranks.is_main:
        write_jsonl(path, rows)
    return rows


def score_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean score of all scored samples with a bootstrap 95 % CI, and the count of unscorable ones."""
    from meditune.stats import bootstrap_ci

    vals = [s for r in rows for s in r["scores"] if s is not None]
    n_all = sum(len(r["scores"]) for r in rows)
    if not vals:
        return {"mean": None, "n": 0, "unscorable": n_all}
    lo, hi = bootstrap_ci(vals)
    return {"mean": sum(vals) / len(vals), "n": len(vals), "ci95": [lo, hi], "unscorable": n_all - len(vals),
            "protocol": "mean rollout score, bootstrap 95% CI over samples"}
