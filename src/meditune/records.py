"""Typed records that flow between stages, with JSONL read/write that names file, line and field on errors.

MCQItem      a multiple-choice question (MedQA, MedMCQA, PubMedQA, KorMedMCQA, ...)
LongFormItem an open question with optional reference answer and must-have / nice-to-have statements
Chat         a conversation (SFT data, dialogue references)
Preference   a prompt with chosen and rejected answers, their scores and provenance
SafetyItem   a harmful request with a safe response (MedSafetyBench style)
NERItem      a text with typed entity spans (CCKS-2019 style, end exclusive)
AttitudeItem a Likert statement about patients (bias probe)
TextItem     a raw text for continued pre-training (corpus files)
"""

from __future__ import annotations

import logging
import os
import string
from collections.abc import Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from meditune.errors import InputError
from meditune.io import iter_jsonl, write_jsonl

log = logging.getLogger(__name__)

LETTERS = string.ascii_uppercase


class Record(BaseModel):
    """Base of all records: unknown fields are errors, so typos surface."""

    model_config = ConfigDict(extra="forbid")


class MCQItem(Record):
    id: str
    question: str
    options: list[str]
    answer: int = Field(description="0-based index of the correct option")
    language: str = "en"
    subject: str | None = None
    context: str | None = None
    rationale: str | None = None
    source: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("question")
    @classmethod
    def _question_nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("question is empty")
        return v

    @field_validator("options")
    @classmethod
    def _options_nonempty(cls, v: list[str]) -> list[str]:
        if len(v) < 2:
            raise ValueError(f"needs at least 2 options, got {len(v)}")
        for i, opt in enumerate(v):
            if not isinstance(opt, str) or not opt.strip():
                raise ValueError(f"option {LETTERS[i] if i < 26 else i} is empty")
        return v

    @model_validator(mode="after")
    def _answer_in_range(self) -> MCQItem:
        if not 0 <= self.answer < len(self.options):
            raise ValueError(f"answer index {self.answer} out of range for {len(self.options)} options")
        return self

    @property
    def letters(self) -> list[str]:
        return list(LETTERS[: len(self.options)])

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]


class Message(Record):
    role: Literal["system", "user", "assistant"]
    content: str


class Chat(Record):
    id: str
    messages: list[Message]
    system: str | None = None
    language: str = "en"
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("messages")
    @classmethod
    def _has_messages(cls, v: list[Message]) -> list[Message]:
        if not v:
            raise ValueError("no messages")
        return v

    def to_messages(self) -> list[dict[str, str]]:
        """Messages as plain dicts, with the system prompt first when set."""
        msgs = [m.model_dump() for m in self.messages]
        if self.system and not (msgs and msgs[0]["role"] == "system"):
            msgs.insert(0, {"role": "system", "content": self.system})
        return msgs


class Preference(Record):
    id: str
    prompt: list[Message]
    chosen: str
    rejected: str
    chosen_score: float | None = None
    rejected_score: float | None = None
    language: str = "en"
    provenance: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sides_nonempty(self) -> Preference:
        if not self.prompt:
            raise ValueError("prompt has no messages")
        if not self.chosen.strip():
            raise ValueError("chosen is empty")
        if not self.rejected.strip():
            raise ValueError("rejected is empty")
        return self


class LongFormItem(Record):
    id: str
    question: str
    reference: str | None = None
    must_have: list[str] = Field(default_factory=list)
    nice_to_have: list[str] = Field(default_factory=list)
    category: str | None = None
    language: str = "en"
    source: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("question")
    @classmethod
    def _question_nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("question is empty")
        return v


class SafetyItem(Record):
    id: str
    request: str
    safe_response: str | None = None
    category: str | None = None
    harmful: bool = True
    language: str = "en"
    source: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("request")
    @classmethod
    def _request_nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("request is empty")
        return v


class Entity(Record):
    start: int
    end: int
    type: str
    text: str


class NERItem(Record):
    id: str
    text: str
    entities: list[Entity] = Field(default_factory=list)
    language: str = "zh"
    source: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _spans_match(self) -> NERItem:
        for e in self.entities:
            if not 0 <= e.start < e.end <= len(self.text):
                raise ValueError(f"entity span [{e.start}, {e.end}) outside text of length {len(self.text)}")
            if self.text[e.start:e.end] != e.text:
                raise ValueError(f"entity text {e.text!r} != text[{e.start}:{e.end}] {self.text[e.start:e.end]!r}")
        return self


class AttitudeItem(Record):
    id: str
    statement: str
    dimension: str
    reverse_scored: bool = False
    scale: list[str] = Field(default_factory=lambda: ["strongly disagree", "disagree", "neutral", "agree",
                                                      "strongly agree"])
    group: str | None = None
    language: str = "en"
    source: str | None = None


class TextItem(Record):
    id: str
    text: str
    language: str = "en"
    source: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("text")
    @classmethod
    def _text_nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is empty")
        return v


RECORD_TYPES: dict[str, type[Record]] = {
    "mcq": MCQItem, "chat": Chat, "preference": Preference, "longform": LongFormItem,
    "safety": SafetyItem, "ner": NERItem, "attitude": AttitudeItem, "text": TextItem,
}


def kind_name(kind: type[Record]) -> str:
    """The short name of a record type ("mcq", "chat", ...)."""
    for name, cls in RECORD_TYPES.items():
        if cls is kind:
            return name
    raise KeyError(kind.__name__)


def validation_message(err: ValidationError) -> tuple[str, str]:
    """(field path, reason) of the first error of a pydantic ValidationError."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(record)"
    msg = first["msg"].removeprefix("Value error, ")
    return loc, msg


def parse_record(kind: type[Record], obj: Any, *, file: object = None, line: int | str | None = None) -> Record:
    """Validate one object as a record; errors name file, line and field."""
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, got {type(obj).__name__}", file=file, line=line)
    try:
        return kind.model_validate(obj)
    except ValidationError as e:
        field, msg = validation_message(e)
        raise InputError(msg, file=file, line=line, field=field) from None


def detect_kind_at(obj: Any, *, file: object = None, line: int | str | None = None) -> type[Record]:
    """detect_kind for one line of a file: errors name the file and line."""
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, got {type(obj).__name__}", file=file, line=line)
    try:
        return detect_kind(obj)
    except InputError as e:
        raise InputError(e.reason, file=file, line=line) from None


def read_records(path: str | os.PathLike, kind: type[Record] | None = None) -> list[Record]:
    """Read a JSONL file of records (type detected from the first line when not given); checks every line
    and rejects duplicate ids."""

    out: list[Record] = []
    seen: dict[str, int] = {}
    checks = FileChecks(path)
    for line, obj in iter_jsonl(path):
        if kind is None:
            kind = detect_kind_at(obj, file=path, line=line)
        rec = parse_record(kind, obj, file=path, line=line)
        rid = getattr(rec, "id", None)
        if rid is not None:
            if rid in seen:
                raise InputError(f"duplicate id {rid!r} (first on line {seen[rid]})", file=path, line=line,
                                 field="id")
            seen[rid] = line
        checks.check(rec, line)
        out.append(rec)
    checks.finish()
    return out


def write_records(path: str | os.PathLike, records: Iterable[Record]) -> int:
    """Write records as JSONL atomically; returns the count."""
    return write_jsonl(Path(path), records)


def detect_kind(obj: dict[str, Any]) -> type[Record]:
    """Guess the record type of a JSONL object from its fields."""
    keys = set(obj)
    if {"options", "answer"} <= keys:
        return MCQItem
    if {"chosen", "rejected"} <= keys:
        return Preference
    if "messages" in keys:
        return Chat
    if "entities" in keys and "text" in keys:
        return NERItem
    if "request" in keys:
        return SafetyItem
    if "statement" in keys:
        return AttitudeItem
    if "question" in keys:
        return LongFormItem
    if "text" in keys:
        return TextItem
    raise InputError(f"cannot tell the record type from fields {sorted(keys)}")


# Checks beyond the schema (see meditune.data.checks): where FileChecks.finish puts its warnings instead of logging them (set by validate_source, which reads a
# source several times and reports the warnings of the last read only).
CHECK_WARNINGS: ContextVar[list[str] | None] = ContextVar("meditune_check_warnings", default=None)


class FileChecks:
    """The checks of the records of one file, fed one record at a time; `finish()` reports per-file findings."""

    def __init__(self, where: Any, hint: str = ""):
        self.where, self.hint = where, hint
        self.duplicate_options = 0
        self.first_duplicate: int | str | None = None

    def check(self, rec: Record, line: int | str) -> None:
        """Raise for a record that cannot be right; count the doubtful ones."""
        if isinstance(rec, Preference) and rec.chosen.strip() == rec.rejected.strip():
            raise InputError(f"chosen and rejected are the same text (a pair must differ){self.hint}",
                             file=self.where, line=line, field="rejected")
        if isinstance(rec, MCQItem):
            texts = [" ".join(o.split()).casefold() for o in rec.options]
            if len(set(texts)) < len(texts):
                self.duplicate_options += 1
                if self.first_duplicate is None:
                    self.first_duplicate = line

    def finish(self) -> None:
        """Warn once for the file about the doubtful records seen."""
        if self.duplicate_options:
            at = f"line {self.first_duplicate}" if isinstance(self.first_duplicate, int) else self.first_duplicate
            msg = (f"{self.where}: {self.duplicate_options} item(s) have two options with the same text (first at "
                   f"{at}); such items are ambiguous")
            sink = CHECK_WARNINGS.get()
            if sink is None:
                log.warning("%s", msg)
            else:
                sink.append(msg)
