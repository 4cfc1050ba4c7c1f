"""MCQ answer correctness: extract the chosen letter from a free-text answer and compare it with the gold."""

from __future__ import annotations

from collections.abc import Sequence

from meditune.letters import explain_choice
from meditune.records import LETTERS
from meditune.scoring.base import Score, ScoreInput, empty_score


def extract_choice(text: str, options: Sequence[str]) -> tuple[int | None, str]:
    """(0-based option index or None, how it was found) from an answer text (meditune.letters, `scorer`)."""
    return explain_choice(text, options, "scorer")


class AnswerScorer:
    """1.0 when the extracted option is the gold one, 0.0 when another; unparseable answers are not clean."""

    name = "answer"
    value_range = (0.0, 1.0)

    def score(self, items: Sequence[ScoreInput]) -> list[Score]:
        out = []
        for it in items:
            if it.options is None or it.gold is None:
                out.append(Score(None, clean=False, reason="not_mcq", evidence={}))
                continue
            if not it.answer.strip():
                out.append(empty_score())
                continue
            idx, how = extract_choice(it.answer, it.options)
            ev = {"extracted": LETTERS[idx] if idx is not None else None, "gold": LETTERS[it.gold], "how": how}
            if idx is None:
                out.append(Score(None, clean=False, reason="unparseable", evidence=ev))
            else:
                out.append(Score(float(idx == it.gold), evidence=ev))
        return out
