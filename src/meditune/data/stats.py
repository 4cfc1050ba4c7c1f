"""Summaries of a list of records for `meditune data inspect`: counts, languages, option-count histogram,
answer distribution, length percentiles and a few examples."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from meditune.data.overlap import question_text
from meditune.records import LongFormItem, MCQItem, NERItem, Preference, Record, SafetyItem, kind_name

PERCENTILES = (5, 25, 50, 75, 95)


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values)
    return {f"p{p}": round(float(np.percentile(arr, p)), 1) for p in PERCENTILES} | {"max": int(arr.max())}


def describe(records: list[Record], examples: int = 3) -> dict[str, Any]:
    """Statistics of records (all of one type, or mixed)."""
    kinds = Counter(kind_name(type(r)) for r in records)
    out: dict[str, Any] = {"items": len(records), "kinds": dict(kinds),
                           "languages": dict(Counter(getattr(r, "language", None) or "?" for r in records))}
    out["question_chars"] = _percentiles([len(question_text(r)) for r in records])
    mcq = [r for r in records if isinstance(r, MCQItem)]
    if mcq:
        out["options"] = dict(sorted(Counter(len(r.options) for r in mcq).items()))
        out["answers"] = dict(sorted(Counter(r.answer_letter for r in mcq).items()))
        out["with_context"] = sum(1 for r in mcq if r.context)
        out["with_rationale"] = sum(1 for r in mcq if r.rationale)
        out["with_image"] = sum(1 for r in mcq if r.meta.get("has_image"))
    subjects = Counter(getattr(r, "subject", None) or getattr(r, "category", None) for r in records)
    subjects.pop(None, None)
    if subjects:
        out["subjects"] = dict(subjects.most_common(15))
        out["distinct_subjects"] = len(subjects)
    lf = [r for r in records if isinstance(r, LongFormItem)]
    if lf:
        out["with_reference"] = sum(1 for r in lf if r.reference)
        out["must_have_per_item"] = _percentiles([len(r.must_have) for r in lf])
    prefs = [r for r in records if isinstance(r, Preference)]
    if prefs:
        out["chosen_chars"] = _percentiles([len(r.chosen) for r in prefs])
        out["rejected_chars"] = _percentiles([len(r.rejected) for r in prefs])
        out["with_scores"] = sum(1 for r in prefs if r.chosen_score is not None)
    safety = [r for r in records if isinstance(r, SafetyItem)]
    if safety:
        out["with_safe_response"] = sum(1 for r in safety if r.safe_response)
    ner = [r for r in records if isinstance(r, NERItem)]
    if ner:
        out["entities"] = dict(Counter(e.type for r in ner for e in r.entities).most_common())
    dup = Counter(q for q in (question_text(r).strip() for r in records) if q)
    out["duplicate_questions"] = sum(c - 1 for c in dup.values() if c > 1)
    out["examples"] = [r.model_dump(mode="json", exclude_none=True) for r in records[:examples]]
    return out
