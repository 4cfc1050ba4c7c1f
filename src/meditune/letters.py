"""The one answer-letter parser: which option a generated answer names, under a named protocol.

A protocol is an ordered list of cues (regular expressions capturing one letter). The first cue that finds one
of the item's own letters decides: "last" takes its last match, "unique" takes it only when every match names
the same letter (several different letters = ambiguous, no answer).

  lm_eval               the direct strategy's generative variant (`meditune eval mcqa --mode generative`): an
                        explicit cue ("Answer: C", "answer is (C)", "정답: C", "정답은 C입니다", "答案：C"), then a
                        letter at the very start, then "C." anywhere, then a standalone capital letter; last match
                        (lm-eval's kormedmcqa filter)
  answer_line           CoT strategies: the last "Answer: X" ("answer is (C)", "**Answer:** [D]")
  letter_or_answer_line the direct strategy's letter_only variant (run_strategy): a leading letter ("C", "(C)",
                        "C. Ceftriaxone"), else answer_line
  scorer                the `answer` scorer: "answer is C" (any case), a leading letter, "(C)", "option C", each
                        unique; else the one option whose text the answer contains
A letter must not start a longer word: "Answer: Ceftriaxone" is not C.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from meditune.records import LETTERS

CLS = "<CLS>"  # stands for the character class of the item's letters, e.g. [ABCD]
_CUE = r"(?i:answer|correct answer|final answer)(?:\s+(?i:is))?|정답(?:은|는)?|答案(?:是|为)?"
_ANSWER_LINE = r"(?i:answer)(?:\s+(?i:is))?\s*\**\s*[:：]?\s*\**\s*[\[\(]?\s*([A-Z])(?![A-Za-z0-9])"


@dataclass(frozen=True)
class Cue:
    """One way an answer names a letter."""

    name: str
    regex: str  # one capturing group: the letter; CLS is replaced by the item's letters
    pick: Literal["last", "unique"] = "last"
    flags: int = 0
    stripped: bool = False  # matched against the text without surrounding whitespace


PROTOCOLS: dict[str, tuple[Cue, ...]] = {
    "lm_eval": (
        Cue("answer_cue", rf"(?:{_CUE})\s*\**\s*[:：]?\s*\**\s*[\[\(（]?\s*({CLS})(?![A-Za-z])"),
        Cue("leading_letter", rf"^\s*[\[\(（]?({CLS})(?![A-Za-z])"),
        Cue("letter_dot", rf"(?<![A-Za-z])({CLS})\."),
        Cue("standalone_letter", rf"(?<![A-Za-z])({CLS})(?![A-Za-z])"),
    ),
    "answer_line": (Cue("answer_line", _ANSWER_LINE),),
    "letter_or_answer_line": (
        Cue("leading_letter", r"^\W{0,3}([A-Z])(?![A-Za-z0-9])", stripped=True),
        Cue("answer_line", _ANSWER_LINE),
    ),
    "scorer": (
        Cue("answer_cue", rf"answer\s*(?:is|:)?\s*(?:option\s*)?[\(\[]?({CLS})[\)\]]?(?![A-Za-z])", "unique",
            re.IGNORECASE | re.MULTILINE),
        Cue("leading_letter", rf"^\s*[\(\[]?({CLS})(?:[\)\]\.:]|\s*$)", "unique", re.MULTILINE),
        Cue("parenthesised", rf"\(({CLS})\)", "unique", re.MULTILINE),
        Cue("option_cue", rf"\boption\s+({CLS})\b", "unique", re.MULTILINE),
    ),
}
OPTION_TEXT_PROTOCOLS = {"scorer"}  # fall back to the one option whose text the answer contains


@lru_cache(maxsize=64)
def _compiled(protocol: str, letters: str) -> tuple[tuple[Cue, re.Pattern[str]], ...]:
    return tuple((c, re.compile(c.regex.replace(CLS, f"[{letters}]"), c.flags)) for c in PROTOCOLS[protocol])


def explain_choice(text: str, options: int | Sequence[str], protocol: str = "lm_eval") -> tuple[int | None, str]:
    """(0-based option index or None, the cue that decided) of a generated answer; `options` is the option
    count, or the option texts (needed by protocols that match option text)."""
    n = options if isinstance(options, int) else len(options)
    letters = LETTERS[:n]
    for cue, pattern in _compiled(protocol, letters):
        found = [m.upper() for m in pattern.findall(text.strip() if cue.stripped else text)]
        found = [f for f in found if f in letters]
        if not found:
            continue
        if cue.pick == "last":
            return letters.index(found[-1]), cue.name
        if len(set(found)) == 1:
            return letters.index(found[0]), cue.name
        return None, f"ambiguous_{cue.name}"
    if protocol in OPTION_TEXT_PROTOCOLS and not isinstance(options, int):
        lowered = text.lower()
        hits = [i for i, opt in enumerate(options) if opt.strip() and opt.strip().lower() in lowered]
        if len(hits) == 1:
            return hits[0], "option_text"
        return None, "ambiguous_option_text" if hits else "not_found"
    return None, "not_found"


def parse_choice(text: str, options: int | Sequence[str], protocol: str = "lm_eval") -> int | None:
    """0-based index of the option a generated answer names under `protocol`, or None."""
    return explain_choice(text, options, protocol)[0]


def last_answer_line(text: str, n_options: int) -> re.Match[str] | None:
    """The last "Answer: X" of a text whose letter is one of the item's (the answer_line protocol), or None."""
    (_, pattern), = _compiled("answer_line", LETTERS[:n_options])
    found = [m for m in pattern.finditer(text) if m.group(1) in LETTERS[:n_options]]
    return found[-1] if found else None


def trim_rationale(text: str, n_options: int) -> str | None:
    """The text up to and including its last valid "Answer: X", normalised to end with "Answer: X"."""
    last = last_answer_line(text, n_options)
    if last is None:
        return None
    body = text[: last.start()].rstrip()
    return f"{body}\nAnswer: {last.group(1)}" if body else f"Answer: {last.group(1)}"
