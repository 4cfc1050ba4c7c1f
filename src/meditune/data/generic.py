"""Plain paths: our own JSONL records, known benchmark files (format sniffed), or any JSONL/JSON/CSV/TSV/Parquet
file with a field mapping (`fields={"question": "Q", "options": ["A", "B", "C", "D"], "answer": "label"}`)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meditune.data.common import Src, iter_csv, iter_json_lines, load_json, read_text
from meditune.data.registry import loader, loaders
from meditune.errors import ConfigError, InputError
from meditune.records import LETTERS, RECORD_TYPES, Record, detect_kind, parse_record

OPTIONS = {
    "fields": "mapping record field -> source column (options may be a list of columns)",
    "kind": f"record type to build: {', '.join(RECORD_TYPES)} (default: detected)",
    "format": "jsonl, json, csv, tsv or parquet (default: from the file suffix)",
    "answer_base": "0 or 1: base of integer answers in the source (default 0)",
    "encoding": "text encoding (default utf-8)",
}
FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet",
           ".ndjson": "jsonl"}


def rows_of(src: Src, fmt: str, encoding: str = "utf-8") -> Iterator[tuple[int | str, dict[str, Any]]]:
    """(line or row key, row dict) of a tabular or JSON file."""
    if fmt == "jsonl":
        yield from iter_json_lines(src, encoding)
    elif fmt == "json":
        data = load_json(src, encoding)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise src.error("expected a JSON list of objects (or {\"data\": [...]})")
        for i, obj in enumerate(data):
            if not isinstance(obj, dict):
                raise src.error(f"expected an object, got {type(obj).__name__}", line=f"[{i}]")
            yield f"[{i}]", obj
    elif fmt in ("csv", "tsv"):
        yield from iter_csv(src, encoding=encoding, delimiter="\t" if fmt == "tsv" else ",")  # type: ignore[misc]
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(src.path)
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError for non-parquet input
            raise src.error(f"not a readable Parquet file ({e})") from None
        for i, row in enumerate(table.to_pylist()):
            yield f"row {i}", row
    else:
        raise ConfigError(f"unknown format {fmt!r}; one of {sorted(set(FORMATS.values()))}")


def _column(src: Src, row: dict[str, Any], col: str, line: int | str, required: bool = True) -> Any:
    if col not in row or row[col] is None or (isinstance(row[col], str) and not row[col].strip()):
        if required:
            raise src.error(f"missing or empty (columns: {sorted(row)})", line=line, field=col)
        return None
    return row[col]


def _options(src: Src, row: dict[str, Any], spec: Any, line: int | str) -> list[str]:
    if spec is None:
        if "options" in row:
            spec = "options"
        else:
            spec = [k for k in LETTERS[:8] if k in row and row[k] not in (None, "")]
            if not spec:
                raise src.error("no options: map them with fields.options", line=line, field="options")
    if isinstance(spec, str) and "," in spec:
        spec = [c.strip() for c in spec.split(",")]
    if isinstance(spec, list):
        return [_column(src, row, c, line) for c in spec]
    value = _column(src, row, spec, line)
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list):
        return value
    raise src.error("expected a list or {letter: text} of options", line=line, field=spec)


def _answer(src: Src, value: Any, options: list[str], line: int | str, field: str, base: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool):
        idx = value - base
        if not 0 <= idx < len(options):
            raise src.error(f"answer {value} out of range for {len(options)} options ({base}-based)", line=line,
                            field=field)
        return idx
    if isinstance(value, str):
        v = value.strip()
        if len(v) == 1 and v.upper() in LETTERS:
            idx = LETTERS.index(v.upper())
            if idx >= len(options):
                raise src.error(f"answer {v!r} out of range for {len(options)} options", line=line, field=field)
            return idx
        matches = [i for i, o in enumerate(options) if isinstance(o, str) and o.strip() == v]
        if len(matches) == 1:
            return matches[0]
    raise src.error(f"answer {value!r} is not an index, a letter or the text of one option", line=line,
                    field=field)


def map_row(src: Src, row: dict[str, Any], line: int | str, kind: type[Record], fields: dict[str, Any],
            answer_base: int = 0) -> Record:
    """Build one record from a source row through a field mapping."""
    col = {f: fields.get(f, f) for f in kind.model_fields}
    obj: dict[str, Any] = {}
    for f, c in col.items():
        if f in ("options", "answer", "messages", "prompt") or not isinstance(c, str):
            continue
        if c in row and row[c] is not None and row[c] != "":
            obj[f] = row[c]
    obj["id"] = str(obj.get("id", f"{src.rel}:{line}"))
    name = kind.__name__
    if name == "MCQItem":
        options = _options(src, row, fields.get("options"), line)
        obj["options"] = [str(o) if isinstance(o, (int, float)) else o for o in options]
        acol = fields.get("answer", "answer")
        obj["answer"] = _answer(src, _column(src, row, acol, line), obj["options"], line, acol, int(answer_base))
    elif name == "Chat":
        if fields.get("messages", "messages") in row:
            obj["messages"] = row[fields.get("messages", "messages")]
        else:
            p, r = fields.get("prompt", "prompt"), fields.get("response", "response")
            obj["messages"] = [{"role": "user", "content": _column(src, row, p, line)},
                               {"role": "assistant", "content": _column(src, row, r, line)}]
    elif name == "Preference":
        prompt = _column(src, row, fields.get("prompt", "prompt"), line)
        obj["prompt"] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return parse_record(kind, obj, file=src.display or src.path, line=line)


SNIFF_JSONL = [  # (required keys, loader) checked in order on the first object
    ({"opa", "opb", "opc", "opd", "cop"}, "medmcqa"),
    ({"question", "options", "answer_idx"}, "medqa"),
    ({"conversations", "chosen", "rejected"}, "sharegpt"),
    ({"prompt", "chosen", "rejected"}, "ultrafeedback"),
    ({"text", "entity_list"}, "ccks"),
    ({"originalText", "entities"}, "ccks"),
    ({"question", "A", "B", "C", "D", "E", "answer"}, "kormedmcqa"),
    ({"question", "context", "final_decision"}, "pubmedqa"),
    ({"question", "choices", "answer"}, "_choices"),  # MMLU on the hub (cais/mmlu): choices list, 0-based answer
    ({"instances"}, "medlfqa"),
    ({"Question"}, "medlfqa"),
]
SNIFF_CSV = [  # (required header columns, loader)
    ({"harmful_medical_request"}, "medsafetybench"),
    ({"question", "choice0", "answer"}, "mmlu"),
    ({"question", "A", "B", "C", "D", "E", "answer", "cot"}, "kormedmcqa"),
    ({"Question", "A", "B", "C", "D", "Answer"}, "cmmlu"),
    ({"question", "category"}, "dahl"),
]


def sniff(src: Src, fmt: str, encoding: str = "utf-8") -> str | None:
    """Name of the known loader for a benchmark file, from its first record or header; None when unknown."""
    suffix = src.path.suffix.lower()
    if suffix == ".xlsx":
        return "medicationqa"
    if suffix == ".xml":
        return "liveqa"
    if fmt == "jsonl":
        first = next(iter_json_lines(src, encoding), None)
        if first is None:
            return None
        keys = set(first[1])
        return next((name for req, name in SNIFF_JSONL if req <= keys), None)
    if fmt == "json":
        data = load_json(src, encoding)
        if isinstance(data, dict) and "exams" in data:
            return "headqa"
        if isinstance(data, dict) and data and all(isinstance(v, dict) and "QUESTION" in v
                                                   for v in list(data.values())[:3]):
            return "pubmedqa"
        if isinstance(data, list) and data and isinstance(data[0], dict) and "QA_pairs" in data[0]:
            return "cmb_clin"
        return None
    if fmt == "csv":
        head = read_text(src.path, encoding).split("\n", 1)[0]
        cols = {c.strip() for c in next(csv.reader([head]), [])}
        return next((name for req, name in SNIFF_CSV if req <= cols), None)
    return None


def _is_json_lines(src: Src, encoding: str) -> bool:
    lines = [ln for ln in read_text(src.path, encoding).split("\n", 3)[:3] if ln.strip()]
    if len(lines) < 2:
        return False
    try:
        return all(isinstance(json.loads(ln), dict) for ln in lines[:2])
    except json.JSONDecodeError:
        return False


def _own_records(src: Src, encoding: str) -> Iterator[tuple[int, Record]] | None:
    """Our own JSONL records when the first line is a valid record of some type, else None (read once)."""
    rows = iter_json_lines(src, encoding)
    first = next(rows, None)
    if first is None:
        return iter(())
    where = src.display or src.path
    try:
        kind = detect_kind(first[1])
        head = parse_record(kind, first[1], file=where, line=first[0])
    except InputError:
        return None

    def all_records() -> Iterator[tuple[int, Record]]:
        yield first[0], head
        for line, obj in rows:
            yield line, parse_record(kind, obj, file=where, line=line)

    return all_records()


@loader("auto", "auto", "a plain path: our JSONL records, a known benchmark file (format sniffed), or a "
        "JSONL/JSON/CSV/TSV/Parquet file with `fields`", patterns=("*.jsonl",), options=OPTIONS)
def auto(src: Src, fields: dict[str, Any] | None = None, kind: str | None = None, format: str | None = None,
         answer_base: int = 0, encoding: str = "utf-8") -> Iterator[tuple[int | str, Record]]:
    fmt = format or FORMATS.get(src.path.suffix.lower())
    if fmt == "json" and format is None and _is_json_lines(src, encoding):
        fmt = "jsonl"  # MedMCQA's dev.json and similar: JSON lines despite the suffix
    if fields is not None and not isinstance(fields, dict):
        raise ConfigError(f"option fields must be a mapping of record field -> column, got {fields!r}")
    if not fields:
        if fmt == "jsonl" and kind is None:
            own = _own_records(src, encoding)
            if own is not None:
                yield from own
                return
        if kind is None:
            name = sniff(src, fmt or "", encoding) if fmt or src.path.suffix.lower() in (".xlsx", ".xml") else None
            if name == "_choices":
                yield from auto(src, fields={"options": "choices"}, kind="mcq", format=fmt, encoding=encoding)
                return
            if name is not None:
                yield from loaders()[name].fn(src)
                return
    if fmt is None:
        raise src.error(f"unknown file type {src.path.suffix!r}; pass format=jsonl|json|csv|tsv|parquet "
                        "or use a named loader (meditune data list)")
    rows = rows_of(src, fmt, encoding)
    record_kind: type[Record] | None = RECORD_TYPES.get(kind) if kind else None
    if kind and record_kind is None:
        raise ConfigError(f"unknown record kind {kind!r}; one of {', '.join(RECORD_TYPES)}")
    for line, row in rows:
        if record_kind is None:
            renamed = {f: row[c] for f, c in (fields or {}).items() if isinstance(c, str) and c in row}
            try:
                record_kind = detect_kind({**row, **renamed, **({"options": 1} if "options" in (fields or {})
                                                                  else {})})
            except InputError as e:
                raise src.error(f"{e.reason}; pass kind= and fields= to map columns", line=line) from None
        yield line, map_row(src, row, line, record_kind, fields or {}, answer_base)


def sniffed_loader(path: str | Path) -> str | None:
    """The loader `load_source` would use for a plain path (for `data inspect`)."""
    p = Path(path)
    return sniff(Src(p, p.stem), FORMATS.get(p.suffix.lower(), ""))
