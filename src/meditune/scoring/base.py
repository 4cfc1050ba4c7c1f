"""The one scorer interface: answers in, a score plus its evidence out (one Score per answer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class ScoreInput:
    """One answer to score, with what a scorer may need about its question."""

    id: str
    question: str
    answer: str
    references: list[str] = field(default_factory=list)  # must-have statements or reference passages
    options: list[str] | None = None  # MCQ options (answer scorer)
    gold: int | None = None  # MCQ gold index (answer scorer)
    finish_reason: str = "stop"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Score:
    """A scorer's verdict on one answer.

    value  the score (None when the answer could not be scored at all)
    clean  False when any step failed to parse; DAHL averages clean answers only and pairing drops the rest
    reason why value is None or clean is False ("empty", "no_facts", "unparseable", "judge_error", ...)
    evidence what the score is made of (facts and verdicts, the judge's text, the extracted letter, ...)
    """

    value: float | None
    clean: bool = True
    reason: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Score:
        return cls(d.get("value"), bool(d.get("clean", True)), d.get("reason"), d.get("evidence") or {})


@runtime_checkable
class Scorer(Protocol):
    """Scores a batch of answers; `value_range` is (low, high) when the scale is bounded, else None."""

    name: str
    value_range: tuple[float, float] | None

    def score(self, items: Sequence[ScoreInput]) -> list[Score]: ...


def empty_score() -> Score:
    """The score of an empty (whitespace-only) answer: unscorable."""
    return Score(None, clean=False, reason="empty", evidence={})
