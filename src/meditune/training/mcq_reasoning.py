"""The MCQ reasoning task of RL with verifiable rewards: the prompt (the model reasons, then answers "Answer: X"),
and reward functions in the form TRL's GRPOTrainer calls them.

The prompt is the chain-of-thought prompt of MCQA evaluation (evaluation/strategies/cot.py), so what GRPO trains
is exactly what `eval_mcqa` with `strategy: cot` measures; `reasoning_messages` is the only caller of it here.

Rewards (each a function `(prompts, completions, **dataset columns) -> list[float | None]`; TRL logs each one as
`rewards/<name>/mean`, and combines them with the stage's weights):
- `correct`: 1 when the last "Answer: X" of the completion is the gold letter, else 0 (unparsed: 0). Parsing is
  the CoT evaluation's parser (`parse_cot_answer`), so the reward is the evaluation's accuracy per sample.
- `format`: 1 when the completion ends with its "Answer: X" line after some reasoning, 0.5 when an "Answer: X"
  is there but not last or without reasoning before it, 0 when there is none.
- `scorer`: any meditune.scoring scorer (dahl, reward, judge, answer, combine) on the completion text; None (an
  unscorable answer) is left out of the mean by TRL.
The first reward function also logs `parse_rate`: the share of completions with a parseable "Answer: X".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from meditune.evaluation.strategies.cot import cot_messages, parse_cot_answer
from meditune.letters import last_answer_line
from meditune.records import MCQItem

RewardFn = Callable[..., list[float | None]]


def reasoning_messages(item: MCQItem) -> list[dict[str, str]]:
    """The user turn asking for reasoning, then a final "Answer: X" (the CoT evaluation prompt, zero-shot)."""
    return cot_messages(item)


class RewardSpec(BaseModel):
    """One reward term: `correct`, `format`, or `scorer` (a meditune.scoring config), with its weight."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    type: Literal["correct", "format", "scorer"]
    weight: float = 1.0
    scorer: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _scorer_config(self) -> RewardSpec:
        if (self.type == "scorer") != (self.scorer is not None):
            raise ValueError("a reward of type 'scorer' needs 'scorer' (a scoring config); the others take none")
        if self.scorer is not None:
            from meditune.scoring.registry import parse_scorer_config

            parse_scorer_config(self.scorer, "rewards.scorer")
        return self


DEFAULT_REWARDS = [RewardSpec(type="correct", weight=1.0), RewardSpec(type="format", weight=0.2)]


def completion_text(completion: Any) -> str:
    """The text of one completion (conversational: its assistant turns; standard: the string)."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion if m.get("role") == "assistant")


def format_score(text: str, n_options: int) -> float:
    """1 when the text ends with a valid "Answer: X" after reasoning, 0.5 when one is there otherwise, else 0."""
    last = last_answer_line(text, n_options)  # the answer the CoT parser reads (meditune.letters)
    if last is None:
        return 0.0
    final = not re.search(r"\w", text[last.end():])  # nothing but punctuation after it
    reasoned = bool(re.search(r"\w", text[: last.start()]))
    return 1.0 if final and reasoned else 0.5


def correct_reward(prompts: Sequence[Any], completions: Sequence[Any], gold: Sequence[int],
                   n_options: Sequence[int], **_: Any) -> list[float | None]:
    """1.0 when the completion's last "Answer: X" is the gold letter, else 0.0."""
    return [float(parse_cot_answer(completion_text(c), n) == g)
            for c, g, n in zip(completions, gold, n_options, strict=True)]


def format_reward(prompts: Sequence[Any], completions: Sequence[Any], n_options: Sequence[int],
                  **_: Any) -> list[float | None]:
    """format_score of every completion."""
    return [format_score(completion_text(c), n) for c, n in zip(completions, n_options, strict=True)]


def scorer_reward(config: dict[str, Any]) -> RewardFn:
    """A reward function scoring completions with a meditune.scoring scorer (None when unscorable)."""
    from meditune.scoring.base import ScoreInput
    from meditune.scoring.registry import build_scorer, parse_scorer_config

    scorer = build_scorer(parse_scorer_config(config, "rewards.scorer"))

    def score(prompts: Sequence[Any], completions: Sequence[Any], id: Sequence[str],  # noqa: A002
              question: Sequence[str], options: Sequence[list[str]], gold: Sequence[int],
              **_: Any) -> list[float | None]:
        inputs = [ScoreInput(id=f"{i}#{k}", question=q, answer=completion_text(c), options=list(o), gold=g)
                  for k, (c, i, q, o, g) in enumerate(zip(completions, id, question, options, gold, strict=True))]
        return [s.value for s in scorer.score(inputs)]

    score.__name__ = f"scorer_{config.get('type', 'custom')}"
    return score


def parse_rate(completions: Sequence[Any], n_options: Sequence[int]) -> float:
    """Share of completions with a parseable "Answer: X"."""
    ok = [parse_cot_answer(completion_text(c), n) is not None for c, n in zip(completions, n_options, strict=True)]
    return sum(ok) / len(ok) if ok else 0.0


def logging_parse_rate(fn: RewardFn) -> RewardFn:
    """fn, also logging the batch's parse rate through TRL's log_metric."""

    def wrapped(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            log_metric("parse_rate", parse_rate(completions, kwargs["n_options"]))
        return fn(prompts, completions, **kwargs)

    wrapped.__name__ = fn.__name__
    return wrapped


BUILTIN_REWARDS: dict[str, RewardFn] = {"correct": correct_reward, "format": format_reward}


def named(fn: RewardFn, name: str) -> RewardFn:
    """fn under another name (TRL logs each reward function as rewards/<name>/mean)."""

    def reward(*args: Any, **kwargs: Any) -> list[float | None]:
        return fn(*args, **kwargs)

    reward.__name__ = name
    return reward


def reward_functions(specs: Sequence[RewardSpec]) -> tuple[list[RewardFn], list[float]]:
    """(reward functions, weights) for GRPOTrainer; names are unique (a repeated type gets a suffix)."""
    funcs: list[RewardFn] = []
    for spec in specs:
        fn = BUILTIN_REWARDS.get(spec.type) or scorer_reward(spec.scorer or {})
        base = spec.type if spec.type in BUILTIN_REWARDS else fn.__name__
        taken = {f.__name__ for f in funcs}
        name = base if base not in taken else next(f"{base}_{k}" for k in range(2, 99) if f"{base}_{k}" not in taken)
        funcs.append(named(fn, name))
    funcs[0] = logging_parse_rate(funcs[0])
    return funcs, [s.weight for s in specs]
