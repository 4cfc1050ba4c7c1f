"""Export records: our JSONL, TRL dataset formats (conversational SFT `messages`; preference `prompt`/`chosen`/
`rejected` as message lists; `text` for raw corpora) and Hugging Face `datasets` (and back)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from meditune.errors import ConfigError, InputError
from meditune.io import remove_tree, write_jsonl
from meditune.prompts import render_mcq
from meditune.records import (
    RECORD_TYPES,
    Chat,
    LongFormItem,
    MCQItem,
    Preference,
    Record,
    SafetyItem,
    TextItem,
    parse_record,
)

DICT_FIELDS = ("meta", "provenance")  # JSON-encoded in HF datasets: free-form dicts do not fit one Arrow schema


def mcq_answer(item: MCQItem) -> str:
    """The assistant turn of an MCQ: rationale when present, then the answer letter and text."""
    answer = f"Answer: {item.answer_letter}. {item.options[item.answer]}"
    return f"{item.rationale.strip()}\n\n{answer}" if item.rationale else answer


def to_trl_sft(rec: Record) -> dict[str, Any]:
    """One TRL SFT row: {"messages": [...]} (conversational) or {"text": ...} for raw text."""
    if isinstance(rec, Chat):
        return {"messages": rec.to_messages()}
    if isinstance(rec, MCQItem):
        return {"messages": [{"role": "user", "content": render_mcq(rec, "chat_turn")},
                             {"role": "assistant", "content": mcq_answer(rec)}]}
    if isinstance(rec, LongFormItem):
        if not rec.reference:
            raise InputError("long-form item has no reference answer to train on", line=f"id {rec.id}",
                             field="reference")
        return {"messages": [{"role": "user", "content": rec.question},
                             {"role": "assistant", "content": rec.reference}]}
    if isinstance(rec, SafetyItem):
        if not rec.safe_response:
            raise InputError("safety item has no safe_response to train on", line=f"id {rec.id}",
                             field="safe_response")
        return {"messages": [{"role": "user", "content": rec.request},
                             {"role": "assistant", "content": rec.safe_response}]}
    if isinstance(rec, TextItem):
        return {"text": rec.text}
    raise ConfigError(f"{type(rec).__name__} records have no TRL SFT form")


def to_trl_preference(rec: Preference) -> dict[str, Any]:
    """One TRL conversational preference row: prompt messages, chosen and rejected assistant turns."""
    return {"prompt": [m.model_dump() for m in rec.prompt],
            "chosen": [{"role": "assistant", "content": rec.chosen}],
            "rejected": [{"role": "assistant", "content": rec.rejected}]}


def to_trl(records: Iterable[Record]) -> list[dict[str, Any]]:
    """TRL rows for records: preference rows for Preference, SFT rows for the rest."""
    return [to_trl_preference(r) if isinstance(r, Preference) else to_trl_sft(r) for r in records]


def write_trl(path: str | os.PathLike, records: Iterable[Record]) -> int:
    """Write TRL rows as JSONL atomically; returns the count."""
    return write_jsonl(path, to_trl(records))


def to_hf_dataset(records: list[Record]):
    """A datasets.Dataset with one column per record field (meta/provenance as JSON strings)."""
    import datasets

    rows = []
    for r in records:
        row = r.model_dump(mode="json")
        for k in DICT_FIELDS:
            if k in row:
                row[k] = json.dumps(row[k], ensure_ascii=False, sort_keys=True)
        rows.append(row)
    return datasets.Dataset.from_list(rows)


def from_hf_rows(rows: Iterable[dict[str, Any]], kind: str | type[Record], where: str = "dataset") -> list[Record]:
    """Records from rows written by to_hf_dataset (JSON-encoded meta/provenance decoded)."""
    cls = RECORD_TYPES[kind] if isinstance(kind, str) else kind
    out = []
    for i, row in enumerate(rows):
        obj = {k: v for k, v in dict(row).items() if v is not None}
        for k in DICT_FIELDS:
            if isinstance(obj.get(k), str):
                try:
                    obj[k] = json.loads(obj[k])
                except json.JSONDecodeError:
                    raise InputError("not a JSON object", file=where, line=f"row {i}", field=k) from None
        out.append(parse_record(cls, obj, file=where, line=f"row {i}"))
    return out


def save_hf(records: list[Record], directory: str | os.PathLike) -> Path:
    """save_to_disk into a temporary directory beside `directory`, then rename it into place (atomic)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        to_hf_dataset(records).save_to_disk(str(tmp / "ds"))
        if directory.exists():
            remove_tree(directory, inside=directory.parent)
        os.replace(tmp / "ds", directory)
    finally:
        remove_tree(tmp, inside=directory.parent)
    return directory
