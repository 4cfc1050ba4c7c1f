"""KorMedMCQA (Korean licensing exams: doctor, nurse, pharm, dentist), CSV dumps of the HF dataset.

Header `,subject,year,period,q_number,question,A,B,C,D,E,answer,cot`. `answer` is a letter A-E in
train/valid/test but a digit 1-5 in fewshot.csv, whose `cot` column holds a chain-of-thought rationale.
JSON-lines rows with the same columns (the Hugging Face dataset, whose `answer` is an integer 1-5) also work.
"""

from __future__ import annotations

from collections.abc import Iterator

from meditune.data.common import Src, int_index, iter_csv, iter_json_lines, letter_index, make
from meditune.data.registry import loader
from meditune.records import MCQItem

COLUMNS = ("subject", "question", "A", "B", "C", "D", "E", "answer")


@loader("kormedmcqa", "mcq", "KorMedMCQA CSV (5 options; letters, or digits 1-5 with CoT in fewshot.csv "
        "-> rationale); a directory reads every subset/split", patterns=("*.csv", "*.jsonl"),
        options={"encoding": "file encoding (default utf-8)"})
def kormedmcqa(src: Src, encoding: str = "utf-8") -> Iterator[tuple[int, MCQItem]]:
    rows = (iter_json_lines(src, encoding, script="ko") if src.path.suffix == ".jsonl"
            else iter_csv(src, encoding=encoding, required=COLUMNS, script="ko"))
    for line, row in rows:
        row = {k: "" if v is None else str(v) for k, v in row.items()}  # type: ignore[union-attr]
        for col in COLUMNS:
            if col not in row:
                raise src.error("missing required field", line=line, field=col)
        options = [row[k] for k in "ABCDE"]
        ans = row["answer"].strip()
        answer = (int_index(src, ans, 5, line, "answer", 1) if ans.isdigit()
                  else letter_index(src, ans, 5, line, "answer"))
        meta = {k: row[k] for k in ("year", "period", "q_number") if row.get(k, "").strip()}
        yield line, make(src, MCQItem, {
            "id": f"{src.rel}:{line}", "question": row["question"], "options": options, "answer": answer,
            "language": "ko", "subject": row["subject"] or None,
            "rationale": (row.get("cot") or "").strip() or None, "meta": meta}, line)
