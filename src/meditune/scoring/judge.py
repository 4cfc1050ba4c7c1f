"""LLM-as-judge: a judge model grades each answer 1-10 against a rubric from the config."""

from __future__ import annotations

import re
from collections.abc import Sequence

from meditune.generation.base import Backend, GenerationRequest, SamplingParams
from meditune.scoring.base import Score, ScoreInput, empty_score
from meditune.scoring.llm import ask

DEFAULT_RUBRIC = ("Grade the answer to the medical question for factual accuracy, safety and helpfulness. "
                  "10 = fully correct, safe and complete; 5 = partly correct or vague; 1 = wrong or harmful.")
JUDGE_SYSTEM = "You are a careful medical expert who grades answers. Be precise and concise."
JUDGE_TEMPLATE = ("{rubric}\n\nQUESTION: {question}\n{reference}ANSWER: {answer}\n\n"
                  "Reply with one line of the form 'Score: N' where N is an integer from 1 to 10.")

_CUES = [
    r"\bscore\s*(?:is|:|=)?\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*10|out of 10)?",
    r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]",
    r"\b(?:rating|grade)\s*(?:is|:|=)?\s*\**\s*(\d+(?:\.\d+)?)",
    r"\b(\d+(?:\.\d+)?)\s*(?:/\s*10|out of 10)\b",
]


def parse_judge_score(text: str | None, low: int = 1, high: int = 10) -> float | None:
    """The judge's score in [low, high]: explicit cues first ('Score: 7', '[[7]]', '7/10'), else a lone number."""
    if text is None:
        return None
    for pat in _CUES:
        m = re.search(pat, text, flags=re.IGNORECASE)
        if m:
            v = float(m.group(1))
            return v if low <= v <= high else None
    nums = {float(n) for n in re.findall(r"(?<![\d.])(\d+(?:\.\d+)?)(?![\d.])", text)}
    in_range = [n for n in nums if low <= n <= high]
    return in_range[0] if len(nums) == 1 and in_range else None


class JudgeScorer:
    """Score = the judge's 1-10 grade; an unparseable reply (or failed call after a retry) is not clean."""

    name = "judge"
    value_range = (1.0, 10.0)

    def __init__(self, backend: Backend, *, rubric: str = DEFAULT_RUBRIC, max_new_tokens: int = 64,
                 retries: int = 1):
        self.backend, self.rubric, self.retries = backend, rubric, retries
        self.params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)

    def request(self, it: ScoreInput) -> GenerationRequest:
        ref = "".join(f"REFERENCE: {r}\n" for r in it.references)
        text = JUDGE_TEMPLATE.format(rubric=self.rubric, question=it.question, reference=ref, answer=it.answer)
        return GenerationRequest(f"{it.id}/judge", [{"role": "system", "content": JUDGE_SYSTEM},
                                                    {"role": "user", "content": text}], self.params)

    def score(self, items: Sequence[ScoreInput]) -> list[Score]:
        out: list[Score | None] = [empty_score() if not it.answer.strip() else None for it in items]
        live = [i for i, s in enumerate(out) if s is None]
        replies = ask(self.backend, [self.request(items[i]) for i in live], retries=self.retries)
        for i, reply in zip(live, replies, strict=True):
            v = parse_judge_score(reply)
            if reply is None:
                out[i] = Score(None, clean=False, reason="judge_error", evidence={"reply": None})
            elif v is None:
                out[i] = Score(None, clean=False, reason="unparseable", evidence={"reply": reply})
            else:
                out[i] = Score(v, evidence={"reply": reply})
        return out  # type: ignore[return-value]
