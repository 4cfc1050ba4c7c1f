"""Questions to collect answers for: any data source (meditune.data.load_source) or a JSONL of records."""

from __future__ import annotations

from meditune.errors import ConfigError
from meditune.prompts import render_mcq
from meditune.records import LongFormItem, MCQItem, SafetyItem

Question = LongFormItem | MCQItem | SafetyItem


def load_questions(spec: str, limit: int | None = None) -> list[Question]:
    """Questions from a source spec ('dahl:path/questions.csv', 'sample:longform', a .jsonl of records, ...)."""
    from meditune.data import load_source

    items = [it for it in load_source(spec) if isinstance(it, (LongFormItem, MCQItem, SafetyItem))]
    if not items:
        raise ConfigError(f"questions {spec!r}: no long-form, multiple-choice or safety questions found")
    return items[:limit] if limit else items


def question_text(item: Question, template: str = "prefs_question") -> str:
    """The text a generator sees: the question; for an MCQ item its context (a PubMedQA abstract) and options,
    written with the meditune.prompts template named (`cot`: the CoT strategies' prompt, instruction included)."""
    if isinstance(item, MCQItem):
        return render_mcq(item, template)
    if isinstance(item, SafetyItem):
        return item.request
    return item.question


def reference_answer(item: Question) -> str | None:
    """The answer shipped with a question (a long-form reference, a safety item's safe response), if any."""
    if isinstance(item, SafetyItem):
        return item.safe_response
    if isinstance(item, LongFormItem):
        return item.reference
    return None


def references(item: Question) -> list[str]:
    """Reference statements for grounded verification: must-have statements, else the reference text."""
    if isinstance(item, SafetyItem):
        return [item.safe_response] if item.safe_response else []
    if isinstance(item, LongFormItem):
        if item.must_have:
            return list(item.must_have) + list(item.nice_to_have)
        if item.reference:
            return _sentences(item.reference)
    elif item.context:
        return _sentences(item.context)
    return []


def _sentences(text: str) -> list[str]:
    from meditune.scoring.dahl import split_sentences

    # A passage is compared sentence by sentence, so one long reference does not dilute the similarity.
    return split_sentences(text, drop_incomplete_last=False) or [text]
