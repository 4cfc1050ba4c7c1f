"""Scripted 'models' and items for the strategy tests."""

from __future__ import annotations

import re

from meditune.generation.base import GenerationRequest
from meditune.records import MCQItem

OPTION_RE = re.compile(r"^([A-Z])\. (.*)$", re.M)


def shown_options(req: GenerationRequest) -> dict[str, str]:
    """letter -> option text of the LAST user turn (the question being asked)."""
    user = [m["content"] for m in req.messages if m["role"] == "user"][-1]
    return dict(OPTION_RE.findall(user))


def knows_marked(req: GenerationRequest, i: int) -> str:
    """A 'model' that reasons a bit and picks the option whose text contains 'RIGHT'."""
    for letter, text in shown_options(req).items():
        if "RIGHT" in text:
            return f"Let me think. Option {letter} looks right.\nAnswer: {letter}"
    return "I am not sure."


def always_first(req: GenerationRequest, i: int) -> str:
    """A position-biased 'model' that always answers the first shown letter."""
    return "Answer: A"


def make_item(i: int, right: int = 1, n: int = 4, question: str | None = None) -> MCQItem:
    """An item whose correct option (index `right`) is marked RIGHT."""
    opts = [f"option {j} of q{i}" + (" RIGHT" if j == right else "") for j in range(n)]
    return MCQItem(id=f"q{i}", question=question or f"Question number {i}?", options=opts, answer=right)
