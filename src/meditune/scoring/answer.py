"""MCQ answer correctness: extract the chosen letter from a free-text answer and compare it with the gold."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from meditune.scoring.base import Score, ScoreInput, empty_score

LETTERS = string.ascii_uppercase


def extract_choice(text: str, options: Sequence[str]) -> tuple[int | None, str]:
    """(0-based option index or None, how it was found) from an answer text."""
    valid = LETTERS[: len(options)]
    cls = f"[{valid}]"
    patterns = [
        ("answer_cue", rf"answer\s*(?:is|:)?\s*(?:option\s*)?[\(\[]?({cls})[\)\]]?(?![A-Za-z])"),
        ("leading_letter", rf"^\s*[\(\[]?({cls})(?:[\)\]\.:]|\s*$)"),
        ("parenthesised", rf"\(({cls})\)"),
        ("option_cue", rf"\boption\s+({cls})\b"),
    ]
    for how, pat in patterns:
        flags = re.IGNORECASE if how == "answer_cue" else 0
        found = {m.upper() for m in re.findall(pat, text, flags=flags | re.MULTILINE)}
        if how == "answer_cue":
            found = {f for f in found if f in valid}
        if len(found) == 1:
            return valid.index(found.pop()), how
        if len(found) > 1:
            return None, f"ambiguous_{how}"
    lowered = text.lower()
    hits = [i for i, opt in enumerate(options) if opt.strip() and opt.strip().lower() in lowered]
    if len(hits) == 1:
        return hits[0], "option_text"
    return None, "ambiguous_option_text" if hits else "not_found"


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
