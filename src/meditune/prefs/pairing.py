"""Pairing policies: choose (chosen, rejected) answers per question by score, and say why a question yields none.

Answers that are empty or whose score is not clean (an unparseable verdict, a failed judge call) never enter a
pair. Per question, in this order, the reasons for no pair are:
  empty / unparseable / too_few_answers   fewer than 2 usable answers (named by what removed the others)
  tie                                     every usable answer has the same score
  below_margin                            the best margin is smaller than `margin`
  no_rejected_below_threshold             best_random_below: no usable answer scores below `threshold`
  identical_text                          the only candidate pairs have the same text on both sides
Among answers with the same best (or worst) score, the first in generator order wins (deterministic).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from meditune.scoring.base import Score


class PairingConfig(BaseModel):
    """best_worst (default, KoMeP-style) | best_random_below | all_pairs; margins are in score units."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["best_worst", "best_random_below", "all_pairs"] = "best_worst"
    margin: float = Field(0.0, ge=0.0, description="minimum chosen - rejected score (ties always dropped)")
    threshold: float = 0.5  # best_random_below: rejected is drawn among answers scoring below this
    max_pairs_per_question: int | None = Field(None, ge=1)  # all_pairs: keep the largest margins first
    seed: int = 0


@dataclass
class Candidate:
    """One answer of a question with its score."""

    answer_id: str
    generator: str
    text: str
    score: Score


@dataclass
class Pair:
    chosen: Candidate
    rejected: Candidate

    @property
    def margin(self) -> float:
        return float(self.chosen.score.value) - float(self.rejected.score.value)  # type: ignore[arg-type]


def usable(cands: list[Candidate]) -> tuple[list[Candidate], dict[str, int]]:
    """Answers that may enter a pair, and the count of the others by reason (empty / unparseable)."""
    keep, dropped = [], {}
    for c in cands:
        if not c.text.strip():
            why = "empty"
        elif c.score.value is None or not c.score.clean:
            why = "empty" if c.score.reason == "empty" else "unparseable"
        else:
            keep.append(c)
            continue
        dropped[why] = dropped.get(why, 0) + 1
    return keep, dropped


def make_pairs(question_id: str, cands: list[Candidate], cfg: PairingConfig) -> tuple[list[Pair], str | None,
                                                                                        dict[str, int]]:
    """(pairs, reason when none, dropped answers by reason) for one question."""
    keep, dropped = usable(cands)
    if len(keep) < 2:
        reason = "unparseable" if "unparseable" in dropped else "empty" if "empty" in dropped else "too_few_answers"
        return [], reason, dropped
    values = [float(c.score.value) for c in keep]  # type: ignore[arg-type]
    if max(values) == min(values):
        return [], "tie", dropped
    best = keep[values.index(max(values))]
    if cfg.policy == "best_worst":
        pairs = [Pair(best, keep[values.index(min(values))])]
    elif cfg.policy == "best_random_below":
        below = [c for c, v in zip(keep, values, strict=True) if v < cfg.threshold and v < values[keep.index(best)]]
        if not below:
            return [], "no_rejected_below_threshold", dropped
        rng = random.Random(f"{cfg.seed}:{question_id}")  # the same draw for a question on every run
        pairs = [Pair(best, rng.choice(below))]
    else:
        pairs = [Pair(a, b) for a, va in zip(keep, values, strict=True)
                 for b, vb in zip(keep, values, strict=True) if va > vb]
        pairs.sort(key=lambda p: -p.margin)
    pairs = [p for p in pairs if p.margin > 0 and p.margin >= cfg.margin]
    if not pairs:
        return [], "below_margin", dropped
    distinct = [p for p in pairs if p.chosen.text.strip() != p.rejected.text.strip()]
    if not distinct:
        return [], "identical_text", dropped
    if cfg.max_pairs_per_question:
        distinct = distinct[: cfg.max_pairs_per_question]
    return distinct, None, dropped


def pair_all(groups: dict[str, list[Candidate]], cfg: PairingConfig) -> dict[str, Any]:
    """Pairs for every question plus counts: questions kept, dropped by reason, answers dropped by reason."""
    pairs: list[tuple[str, Pair]] = []
    q_dropped: dict[str, int] = {}
    a_dropped: dict[str, int] = {}
    kept = 0
    for qid, cands in groups.items():
        ps, reason, dropped = make_pairs(qid, cands, cfg)
        for k, v in dropped.items():
            a_dropped[k] = a_dropped.get(k, 0) + v
        if reason:
            q_dropped[reason] = q_dropped.get(reason, 0) + 1
        else:
            kept += 1
            pairs.extend((qid, p) for p in ps)
    return {"pairs": pairs, "questions": len(groups), "questions_with_pairs": kept,
            "questions_dropped": dict(sorted(q_dropped.items())), "answers_dropped": dict(sorted(a_dropped.items()))}
