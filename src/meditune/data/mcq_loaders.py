"""Multiple-choice benchmarks with simple layouts: MedMCQA, PubMedQA (PQA-L), MMLU (medical), CMMLU."""

from __future__ import annotations

from collections.abc import Iterator

from meditune.data.common import (
    Src,
    check_option_count,
    int_index,
    iter_csv,
    iter_json_lines,
    letter_index,
    load_json,
    make,
    need,
    string_list,
)
from meditune.data.registry import loader
from meditune.records import MCQItem

PUBMEDQA_LABELS = ["yes", "no", "maybe"]


@loader("medmcqa", "mcq", "MedMCQA dev/train JSON lines (opa..opd, `cop` 1-based; cop_base=0 for HF copies)",
        patterns=("*.json", "*.jsonl"),
        options={"cop_base": "1 for the original release (default), 0 for Hugging Face copies",
                 "single_only": "drop choice_type=multi items (default false)"})
def medmcqa(src: Src, cop_base: int = 1, single_only: bool = False) -> Iterator[tuple[int, MCQItem]]:
    for line, obj in iter_json_lines(src):
        options = [need(src, obj, k, line) for k in ("opa", "opb", "opc", "opd")]
        answer = int_index(src, obj.get("cop"), 4, line, "cop", int(cop_base))
        if single_only and obj.get("choice_type") == "multi":
            continue
        meta = {k: obj[k] for k in ("choice_type", "topic_name") if obj.get(k) is not None}
        yield line, make(src, MCQItem, {
            "id": str(obj.get("id") or f"{src.rel}:{line}"), "question": need(src, obj, "question", line),
            "options": options, "answer": answer, "language": "en", "subject": obj.get("subject_name"),
            "rationale": obj.get("exp") or None, "meta": meta}, line)


@loader("pubmedqa", "mcq", "PubMedQA PQA-L JSON {PMID: {QUESTION, CONTEXTS, final_decision, ...}} (or HF rows "
        "{pubid, question, context {contexts, labels}, final_decision}) -> yes/no/maybe MCQ with the abstract as "
        "context", patterns=("*.json", "*.jsonl"))
def pubmedqa(src: Src) -> Iterator[tuple[str | int, MCQItem]]:
    if src.path.suffix == ".jsonl":  # Hugging Face layout (qiaojin/PubMedQA), one row per line
        for line, row in iter_json_lines(src):
            ctx = need(src, row, "context", line, dict)
            obj = {"QUESTION": row.get("question"), "CONTEXTS": ctx.get("contexts"), "LABELS": ctx.get("labels"),
                   "MESHES": ctx.get("meshes"), "final_decision": row.get("final_decision"),
                   "LONG_ANSWER": row.get("long_answer")}
            yield line, _pubmedqa_item(src, str(row.get("pubid") or f"{src.rel}:{line}"), obj, line)
        return
    data = load_json(src)
    if not isinstance(data, dict):
        raise src.error(f"expected a JSON object keyed by PMID, got {type(data).__name__}")
    for pmid, obj in data.items():
        key = f"key {pmid}"
        if not isinstance(obj, dict):
            raise src.error("expected an object", line=key)
        yield key, _pubmedqa_item(src, str(pmid), obj, key)


def _pubmedqa_item(src: Src, pmid: str, obj: dict, key: str | int) -> MCQItem:
    question = need(src, obj, "QUESTION", key)
    contexts = string_list(src, need(src, obj, "CONTEXTS", key, (list, str)), key, "CONTEXTS")
    labels = obj.get("LABELS")
    labels = string_list(src, labels, key, "LABELS") if labels else []
    if labels and len(labels) == len(contexts):
        context = "\n".join(f"{lab}: {c}" for lab, c in zip(labels, contexts, strict=True))
    else:
        context = "\n".join(contexts)
    decision = need(src, obj, "final_decision", key)
    if decision not in PUBMEDQA_LABELS:
        raise src.error(f"expected one of {PUBMEDQA_LABELS}, got {decision!r}", line=key, field="final_decision")
    meta = {k.lower(): obj[k] for k in ("YEAR", "MESHES") if obj.get(k)}
    return make(src, MCQItem, {
        "id": pmid, "question": question, "options": list(PUBMEDQA_LABELS),
        "answer": PUBMEDQA_LABELS.index(decision), "language": "en", "context": context,
        "rationale": obj.get("LONG_ANSWER") or None, "meta": meta}, key)


@loader("mmlu", "mcq", "MMLU CSV: original header-less `question,A,B,C,D,letter` or reformatted "
        "`question,choice0..choice3,answer` (0-based int); subject from the file name", patterns=("*.csv",))
def mmlu(src: Src) -> Iterator[tuple[int, MCQItem]]:
    subject = src.path.stem.removesuffix("_test").removesuffix("_dev").removesuffix("_val")
    text_head = src.path.read_bytes()[:200].decode("utf-8", "replace").lstrip("\ufeff")
    reformatted = text_head.startswith("question,choice0")
    rows = iter_csv(src, header=reformatted, required=("question", "choice0", "choice1", "choice2", "choice3",
                                                       "answer") if reformatted else ())
    for line, row in rows:
        if reformatted:
            question, options, ans = row["question"], [row[f"choice{i}"] for i in range(4)], row["answer"]
        else:
            if len(row) != 6:
                raise src.error(f"expected 6 columns (question,A,B,C,D,answer), got {len(row)}", line=line)
            question, options, ans = row[0], list(row[1:5]), row[5]
        answer = (int_index(src, ans, 4, line, "answer", 0) if reformatted
                  else letter_index(src, ans, 4, line, "answer"))
        yield line, make(src, MCQItem, {
            "id": f"{src.rel}:{line}", "question": question, "options": options, "answer": answer,
            "language": "en", "subject": subject}, line)


@loader("cmmlu", "mcq", "CMMLU CSV `,Question,A,B,C,D,Answer` (letter); subject from the file name",
        patterns=("*.csv",))
def cmmlu(src: Src) -> Iterator[tuple[int, MCQItem]]:
    for line, row in iter_csv(src, required=("Question", "A", "B", "C", "D", "Answer"), script="zh"):
        options = [row[k] for k in "ABCD"]
        check_option_count(src, len(options), 4, line)
        yield line, make(src, MCQItem, {
            "id": f"{src.rel}:{line}", "question": row["Question"], "options": options,
            "answer": letter_index(src, row["Answer"], 4, line, "Answer"), "language": "zh",
            "subject": src.path.stem}, line)
