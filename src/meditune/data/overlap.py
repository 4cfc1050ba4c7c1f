"""Contamination check between a training source and an evaluation source.

Two signals, as in common decontamination practice (GPT-3 / Llama reports use 13-gram overlap):
  * n-gram overlap: texts are normalised (NFKC, lower case, punctuation dropped) and split into tokens (words;
    each Han character is its own token, so Chinese text is compared by character n-grams); a training item
    overlaps when it shares at least `min_shared` n-grams with some evaluation item. N-grams never span two
    segments (question, context, each option, each answer); a question shorter than n tokens contributes one
    n-gram of all its tokens, other short segments (option names) none.
  * exact question match after the same normalisation.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from meditune.records import (
    AttitudeItem,
    Chat,
    LongFormItem,
    MCQItem,
    NERItem,
    Preference,
    Record,
    SafetyItem,
    TextItem,
)

TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff]|[^\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    """NFKC, lower case, punctuation removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(TOKEN.findall(text))


def tokens(text: str) -> list[str]:
    """Tokens of a normalised text (words; single Han/kana characters)."""
    return TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def ngrams(toks: list[str], n: int) -> set[tuple[str, ...]]:
    """All n-grams; a shorter text gives one gram of all its tokens."""
    if not toks:
        return set()
    if len(toks) < n:
        return {tuple(toks)}
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def question_text(rec: Record) -> str:
    """The text that identifies an item (its question, request or first user turn)."""
    if isinstance(rec, (MCQItem, LongFormItem)):
        return rec.question
    if isinstance(rec, SafetyItem):
        return rec.request
    if isinstance(rec, Preference):
        return next((m.content for m in rec.prompt if m.role == "user"), "")
    if isinstance(rec, Chat):
        return next((m.content for m in rec.messages if m.role == "user"), "")
    if isinstance(rec, (NERItem, TextItem)):
        return rec.text
    if isinstance(rec, AttitudeItem):
        return rec.statement
    return ""


def segments(rec: Record, use_full_text: bool = True) -> list[str]:
    """The item's texts, question first; with use_full_text also context, options and answers.

    Segments are compared separately so that n-grams never span two options (short option names joined
    together would otherwise match unrelated items)."""
    first = question_text(rec)
    if not use_full_text:
        return [first]
    if isinstance(rec, MCQItem):
        rest = [rec.context or "", *rec.options]
    elif isinstance(rec, LongFormItem):
        rest = [rec.reference or ""]
    elif isinstance(rec, Preference):
        rest = [*(m.content for m in rec.prompt), rec.chosen, rec.rejected]
    elif isinstance(rec, Chat):
        rest = [m.content for m in rec.messages]
    elif isinstance(rec, SafetyItem):
        rest = [rec.safe_response or ""]
    else:
        rest = []
    return [first, *rest]


def item_ngrams(rec: Record, n: int, use_full_text: bool = True) -> set[tuple[str, ...]]:
    """n-grams of an item; only the question yields a whole-text gram when shorter than n tokens."""
    grams: set[tuple[str, ...]] = set()
    for i, text in enumerate(segments(rec, use_full_text)):
        toks = tokens(text)
        if len(toks) >= n or i == 0:
            grams |= ngrams(toks, n)
    return grams


@dataclass
class OverlapReport:
    n: int
    train_items: int
    eval_items: int
    flagged: list[dict[str, Any]] = field(default_factory=list)  # per overlapping train item
    eval_contaminated: int = 0

    @property
    def train_flagged(self) -> int:
        return len(self.flagged)

    def summary(self) -> dict[str, Any]:
        """Counts and rates, JSON-ready."""
        return {"ngram": self.n, "train_items": self.train_items, "eval_items": self.eval_items,
                "train_flagged": self.train_flagged,
                "train_flagged_rate": self.train_flagged / self.train_items if self.train_items else 0.0,
                "exact_question_matches": sum(1 for f in self.flagged if f["exact_question"]),
                "eval_contaminated": self.eval_contaminated,
                "eval_contaminated_rate": self.eval_contaminated / self.eval_items if self.eval_items else 0.0}


def find_overlap(train: list[Record], evaluation: list[Record], *, n: int = 13, min_shared: int = 1,
                 use_full_text: bool = True) -> OverlapReport:
    """Training items that share n-grams with, or have the same question as, an evaluation item."""
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for j, rec in enumerate(evaluation):
        for g in item_ngrams(rec, n, use_full_text):
            index[g].append(j)
    questions: dict[str, list[int]] = defaultdict(list)
    for j, rec in enumerate(evaluation):
        q = normalise(question_text(rec))
        if q:
            questions[q].append(j)
    report = OverlapReport(n=n, train_items=len(train), eval_items=len(evaluation))
    hit_eval: set[int] = set()
    for rec in train:
        shared: dict[int, int] = defaultdict(int)
        for g in item_ngrams(rec, n, use_full_text):
            for j in index.get(g, ()):
                shared[j] += 1
        exact = questions.get(normalise(question_text(rec)), [])
        matched = {j for j, c in shared.items() if c >= min_shared} | set(exact)
        if not matched:
            continue
        hit_eval |= matched
        best = max(matched, key=lambda j: shared.get(j, 0))
        report.flagged.append({"train_id": rec.id, "eval_ids": sorted(evaluation[j].id for j in matched)[:20],
                               "shared_ngrams": shared.get(best, 0), "exact_question": bool(exact)})
    report.eval_contaminated = len(hit_eval)
    return report


def filter_train(train: list[Record], report: OverlapReport) -> list[Record]:
    """The training items not flagged by the report."""
    flagged = {f["train_id"] for f in report.flagged}
    return [r for r in train if r.id not in flagged]  # type: ignore[attr-defined]
