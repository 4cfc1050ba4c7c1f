"""Long-form questions: DAHL, MedLFQA (must-have / nice-to-have statements), HealthSearchQA, MedicationQA
(xlsx) and CMB-Clin clinical cases."""

from __future__ import annotations

import re
from collections.abc import Iterator

from meditune.data.common import Src, iter_csv, iter_json_lines, load_json, make, need, string_list
from meditune.data.registry import loader
from meditune.records import LongFormItem

NUMBER_PREFIX = re.compile(r"^\d+,(?=\S)")  # "12,Can ..." rows of MedLFQA's healthsearch copy


@loader("dahl", "longform", "DAHL questions.csv `question,category` (no answers)", patterns=("*.csv",))
def dahl(src: Src) -> Iterator[tuple[int, LongFormItem]]:
    for line, row in iter_csv(src, required=("question", "category")):
        yield line, make(src, LongFormItem, {
            "id": f"{src.rel}:{line}", "question": row["question"], "category": row["category"] or None,
            "language": "en"}, line)


def _statements(src: Src, obj: dict, key: str, line: int) -> list[str]:
    value = obj.get(key)
    return [] if value is None else [s for s in string_list(src, value, line, key) if s.strip()]


@loader("medlfqa", "longform", "MedLFQA JSONL {Question, Free_form_answer, Must_have, Nice_to_have} (K-QA adds "
        "ICD_10_diag, Sources), the self-instruct {instances: {input: 'QUESTION: ...', output}} files, and the "
        "question-only healthsearch copy (blank rows skipped, '12,' prefixes removed)")
def medlfqa(src: Src) -> Iterator[tuple[int, LongFormItem]]:
    for line, obj in iter_json_lines(src):
        if "instances" in obj:  # self-instruct layout
            inst = need(src, obj, "instances", line, dict)
            question = need(src, inst, "input", line).strip().removeprefix("QUESTION:").strip()
            if not question:
                raise src.error("is empty", line=line, field="instances.input")
            reference = (inst.get("output") or "").strip() or None
            meta = {k: obj[k] for k in ("id", "title") if obj.get(k) not in (None, "", "<notitle>")}
            yield line, make(src, LongFormItem, {"id": f"{src.rel}:{line}", "question": question,
                                                 "reference": reference, "meta": meta}, line)
            continue
        if set(obj) == {"Question"}:  # question-only copy with blank rows and numeric prefixes
            question = need(src, obj, "Question", line, str, nonempty=False).strip()
            if not question:
                continue
            yield line, make(src, LongFormItem, {"id": f"{src.rel}:{line}",
                                                 "question": NUMBER_PREFIX.sub("", question)}, line)
            continue
        question = need(src, obj, "Question", line)
        meta = {k.lower(): obj[k] for k in ("ICD_10_diag", "Sources") if obj.get(k)}
        yield line, make(src, LongFormItem, {
            "id": f"{src.rel}:{line}", "question": question,
            "reference": (obj.get("Free_form_answer") or "").strip() or None,
            "must_have": _statements(src, obj, "Must_have", line),
            "nice_to_have": _statements(src, obj, "Nice_to_have", line),
            "category": obj.get("ICD_10_diag") or None, "meta": meta}, line)


@loader("healthsearchqa", "longform", "HealthSearchQA JSONL {question} (consumer questions, no answers)")
def healthsearchqa(src: Src) -> Iterator[tuple[int, LongFormItem]]:
    for line, obj in iter_json_lines(src):
        yield line, make(src, LongFormItem, {"id": f"{src.rel}:{line}",
                                             "question": need(src, obj, "question", line)}, line)


MEDICATIONQA_COLUMNS = ["Question", "Focus (Drug)", "Question Type", "Answer", "Section Title", "URL"]


@loader("medicationqa", "longform", "MedicationQA xlsx (Question, Focus (Drug), Question Type, Answer, "
        "Section Title, URL); one item per row", patterns=("*.xlsx",))
def medicationqa(src: Src) -> Iterator[tuple[str, LongFormItem]]:
    import openpyxl

    try:
        wb = openpyxl.load_workbook(src.path, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises several types for non-xlsx input
        raise src.error(f"not a readable .xlsx workbook ({type(e).__name__}: {e})") from None
    try:
        rows = wb.worksheets[0].iter_rows(values_only=True)
        header = [str(c).strip() if c is not None else "" for c in next(rows, ())]
        missing = [c for c in ("Question", "Answer") if c not in header]
        if missing:
            raise src.error(f"header {header} lacks column(s) {missing}", line="row 1", field=missing[0])
        for n, values in enumerate(rows, start=2):
            row = dict(zip(header, values, strict=False))
            if all(v is None for v in values):
                continue
            key = f"row {n}"
            question = str(row.get("Question") or "").strip()
            if not question:
                raise src.error("is empty", line=key, field="Question")
            meta = {k: str(row[k]) for k in ("Focus (Drug)", "Section Title", "URL") if row.get(k) is not None}
            yield key, make(src, LongFormItem, {
                "id": f"{src.rel}:{n}", "question": question,
                "reference": str(row["Answer"]).strip() if row.get("Answer") is not None else None,
                "category": str(row["Question Type"]) if row.get("Question Type") else None, "meta": meta}, key)
    finally:
        wb.close()


@loader("cmb_clin", "longform", "CMB-Clin JSON [{id, title, description, QA_pairs}] -> one item per "
        "question, with the case description prepended", patterns=("*.json",))
def cmb_clin(src: Src) -> Iterator[tuple[str, LongFormItem]]:
    data = load_json(src)
    if not isinstance(data, list):
        raise src.error(f"expected a JSON list of cases, got {type(data).__name__}")
    for i, case in enumerate(data):
        key = f"[{i}]"
        if not isinstance(case, dict):
            raise src.error("expected an object", line=key)
        description = need(src, case, "description", key)
        for j, qa in enumerate(need(src, case, "QA_pairs", key, list)):
            k2 = f"{key}.QA_pairs[{j}]"
            if not isinstance(qa, dict):
                raise src.error("expected an object", line=k2)
            yield k2, make(src, LongFormItem, {
                "id": f"{src.rel}:{case.get('id', i)}:{j}",
                "question": f"{description.strip()}\n\n{need(src, qa, 'question', k2)}",
                "reference": (qa.get("answer") or "").strip() or None, "category": case.get("title"),
                "language": "zh", "meta": {"case": str(case.get("id", i))}}, k2)
