"""Helpers shared by the loaders: decoding with clear errors, CSV/JSON readers that keep line numbers,
required-field access, answer-letter parsing and record validation that names file, line and field."""

from __future__ import annotations

import ast
import contextlib
import csv
import io
import json
import re
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meditune.errors import InputError
from meditune.records import LETTERS, Record, parse_record

BOM = b"\xef\xbb\xbf"
HANGUL = re.compile(r"[\uac00-\ud7a3]")
HAN = re.compile(r"[\u4e00-\u9fff]")
LATIN = re.compile(r"[A-Za-z]")
# Lines blanked out on read, by resolved path: `data validate` re-reads a source without the lines already
# reported, to find the errors after them (line numbers stay those of the file).
_MASKED: ContextVar[dict[Path, set[int]] | None] = ContextVar("meditune_masked_lines", default=None)


@dataclass(frozen=True)
class Src:
    """One input file and its short name (relative to the directory given, without suffix) used in ids."""

    path: Path
    rel: str
    display: str | None = None  # what errors call the file when it is a temporary copy (hub datasets)

    def error(self, message: str, line: int | str | None = None, field: str | None = None) -> InputError:
        """An InputError located in this file."""
        return InputError(message, file=self.display or self.path, line=line, field=field)


# Encodings worth suggesting for a file that is not UTF-8, by the script its text should be in.
LEGACY_ENCODINGS = {"ko": ("cp949", "euc-kr"), "zh": ("gb18030", "big5"), "latin": ("cp1252", "latin-1")}
SCRIPT_NAMES = {"ko": "Korean (Hangul)", "zh": "Chinese (Han)", "latin": "Latin-script"}


@contextlib.contextmanager
def masked_lines(masked: dict[Path, set[int]]):
    """Within the block, read_text returns the files of `masked` with those (1-based) lines blanked."""
    token = _MASKED.set(masked)
    try:
        yield masked
    finally:
        _MASKED.reset(token)


def mask_lines(path: Path, text: str) -> str:
    """`text` with the lines masked for `path` (see masked_lines) replaced by empty lines."""
    masked = _MASKED.get()
    lines = masked.get(path.resolve()) if masked else None
    if not lines:
        return text
    parts = text.split("\n")
    for i in lines:
        if 1 <= i <= len(parts):
            parts[i - 1] = ""
    return "\n".join(parts)


def script_share(text: str, script: str) -> float:
    """Share of the non-ASCII letters of `text` that belong to `script` (ko: Hangul, zh: Han, latin: Latin)."""
    letters = [c for c in text if ord(c) > 127 and c.isalpha()]
    if not letters:
        return 1.0 if script == "latin" else 0.0
    if script == "latin":
        # real Latin-1 text has sparse accented letters; CJK bytes read as Latin-1 give a letter per byte
        ascii_letters = sum(c.isascii() and c.isalpha() for c in text)
        if len(letters) > 0.3 * (len(letters) + ascii_letters):
            return 0.0
        return sum("\u00c0" <= c <= "\u024f" for c in letters) / len(letters)
    pattern = HANGUL if script == "ko" else HAN
    return sum(bool(pattern.match(c)) for c in letters) / len(letters)


def suggest_encoding(raw: bytes, script: str | None) -> tuple[str, str] | None:
    """(encoding, script) of an encoding that decodes `raw` to text of the expected script, or None. With no
    expected script each family is tried with a strict share, so a CP949 file is never called GB18030 and the
    other way round."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16", script or "latin"
    scripts = [script] if script else ["ko", "zh", "latin"]
    need = 0.5 if script else 0.9
    for sc in scripts:
        if sc in ("ko", "zh") and paired_high_bytes(raw) < 0.8:
            continue  # lone high bytes (accented Latin letters) also decode as CJK, pairing them with ASCII
        for enc in LEGACY_ENCODINGS[sc]:
            try:
                text = raw.decode(enc)
            except UnicodeDecodeError:
                continue
            if script_share(text, sc) >= need:
                return enc, sc
    return None


def paired_high_bytes(raw: bytes) -> float:
    """Share of the bytes >= 0x80 that sit in runs of two or more: about 1 for CJK text in a double-byte
    encoding (both bytes of its common characters are high), about 0 for Latin-1/CP1252 text."""
    high = paired = run = 0
    for b in raw + b"\x00":
        if b >= 0x80:
            run += 1
            continue
        high += run
        paired += run if run >= 2 else 0
        run = 0
    return paired / high if high else 0.0


def read_text(path: Path, encoding: str = "utf-8", script: str | None = None) -> str:
    """Decode a whole file; a UTF-8 BOM is dropped, a wrong encoding names the line and suggests one that
    decodes to text of the expected `script` (ko, zh or latin; None when the loader cannot know)."""
    if not path.exists():
        raise InputError("file not found", file=path)
    raw = path.read_bytes()
    enc = encoding.lower().replace("_", "-")
    if enc in ("utf-8", "utf8", "utf-8-sig") and raw.startswith(BOM):
        raw = raw[len(BOM):]
        enc = "utf-8"
    try:
        text = raw.decode(enc)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"cannot decode byte {e.start} as {encoding}{_hint(raw, script, encoding)}", file=path,
                         line=line) from None
    except LookupError:
        raise InputError(f"unknown encoding {encoding!r}", file=path, field="encoding") from None
    if script in ("ko", "zh") and not enc.startswith("utf") and script_share(text, script) < 0.5:
        # a legacy encoding decodes almost any bytes: check that the result is text of the expected language
        raise InputError(f"decoded as {encoding}, this is not {SCRIPT_NAMES[script]} text"
                         f"{_hint(raw, script, encoding)}", file=path, field="encoding")
    return mask_lines(path, text)


def _hint(raw: bytes, script: str | None, tried: str) -> str:
    found = suggest_encoding(raw, script)
    if found and found[0] != tried.lower():
        return f" (it reads as {SCRIPT_NAMES[found[1]]} text with encoding={found[0]}: pass that)"
    expected = f" as {SCRIPT_NAMES[script]} text" if script else ""
    return f" (no common encoding reads it{expected}; convert it to UTF-8)"


def iter_json_lines(src: Src, encoding: str = "utf-8",
                    script: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty line of a JSON-lines file; every line must be an object.
    `script` is the script the text should be in (ko, zh, latin), for encoding hints."""
    text = read_text(src.path, encoding, script)
    for i, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise src.error(f"invalid JSON: {e.msg} (column {e.colno})", line=i) from None
        if not isinstance(obj, dict):
            raise src.error(f"expected a JSON object, got {type(obj).__name__}", line=i)
        yield i, obj


def load_json(src: Src, encoding: str = "utf-8", script: str | None = None) -> Any:
    """Parse a whole-file JSON document; syntax errors name the line."""
    text = read_text(src.path, encoding, script)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        hint = " (one object per line? use a JSON-lines loader)" if e.msg == "Extra data" else ""
        raise src.error(f"invalid JSON: {e.msg} (column {e.colno}){hint}", line=e.lineno) from None


def iter_csv(src: Src, *, encoding: str = "utf-8", header: bool = True, required: tuple[str, ...] = (),
             delimiter: str = ",", script: str | None = None) -> Iterator[tuple[int, dict[str, str] | list[str]]]:
    """(line number, row) for each data row; with a header rows are dicts and `required` columns are checked.

    Rows whose field count differs from the header's are errors (a stray comma or quote)."""
    text = read_text(src.path, encoding, script)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    cols: list[str] | None = None
    start = 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if header and cols is None:
                cols = [c.strip() for c in row]
                missing = [c for c in required if c not in cols]
                if missing:
                    raise src.error(f"header {cols} lacks column(s) {missing}", line=line, field=missing[0])
                continue
            if cols is not None:
                if len(row) != len(cols):
                    raise src.error(f"row has {len(row)} fields but the header has {len(cols)} "
                                    "(unquoted comma or quote?)", line=line)
                yield line, dict(zip(cols, row, strict=True))
            else:
                yield line, row
    except csv.Error as e:
        raise src.error(f"CSV syntax: {e}", line=reader.line_num) from None
    if header and cols is None:
        raise src.error("empty file: no header row")


def need(src: Src, obj: dict[str, Any], key: str, line: int | str | None, typ: type | tuple = str,
         *, nonempty: bool = True) -> Any:
    """obj[key], which must exist, have type `typ` and (for strings and lists) not be empty."""
    if key not in obj or obj[key] is None:
        raise src.error("missing required field", line=line, field=key)
    val = obj[key]
    if not isinstance(val, typ) or (isinstance(val, bool) and typ in (int, float)):
        names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise src.error(f"expected {names}, got {type(val).__name__}", line=line, field=key)
    if nonempty and isinstance(val, (str, list, dict)) and not (val.strip() if isinstance(val, str) else val):
        raise src.error("is empty", line=line, field=key)
    return val


def letter_index(src: Src, value: Any, n_options: int, line: int | str | None, field: str) -> int:
    """0-based index of an answer letter (A, B, ...), checked against the number of options."""
    if not isinstance(value, str) or len(value.strip()) != 1 or value.strip().upper() not in LETTERS:
        raise src.error(f"expected one answer letter, got {value!r}", line=line, field=field)
    idx = LETTERS.index(value.strip().upper())
    if idx >= n_options:
        raise src.error(f"answer {value.strip()!r} out of range for {n_options} options "
                        f"({LETTERS[0]}-{LETTERS[n_options - 1]})", line=line, field=field)
    return idx


def int_index(src: Src, value: Any, n_options: int, line: int | str | None, field: str, base: int) -> int:
    """0-based index from an integer answer that is `base`-based (0 or 1), checked against the options."""
    try:
        if isinstance(value, bool):
            raise ValueError
        num = int(value) if not isinstance(value, str) else int(value.strip())
        if isinstance(value, float) and value != num:
            raise ValueError
    except (TypeError, ValueError):
        raise src.error(f"expected an integer answer ({base}-based), got {value!r}", line=line,
                        field=field) from None
    idx = num - base
    if not 0 <= idx < n_options:
        raise src.error(f"answer {num} out of range for {n_options} options ({base}-based: "
                        f"{base}..{n_options - 1 + base})", line=line, field=field)
    return idx


def check_option_count(src: Src, n: int, expected: int | None, line: int | str | None,
                       field: str = "options") -> None:
    """Reject an item whose number of options differs from the expected count (mixed 4/5 options)."""
    if expected is not None and n != expected:
        raise src.error(f"has {n} options but this file has {expected}-option items (mixed 4/5 options; "
                        f"pass n_options to choose)", line=line, field=field)




def guess_language(text: str) -> str:
    """The dominant script of a text: ko (Hangul), zh (Han) or en (Latin); for formats without a language field."""
    # a Latin word is ~5 letters and carries about as much as one Han character or Hangul syllable
    scores = {"ko": len(HANGUL.findall(text)), "zh": len(HAN.findall(text)), "en": len(LATIN.findall(text)) / 5}
    return max(scores, key=lambda k: (scores[k], k == "en"))


def string_list(src: Src, value: Any, line: int | str | None, field: str) -> list[str]:
    """A list of strings, also from a stringified Python list as some dumps store them ("['a', 'b']")."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise src.error("not a list literal", line=line, field=field) from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise src.error(f"expected a list of strings, got {type(value).__name__}", line=line, field=field)
    return value


def make(src: Src, kind: type[Record], obj: dict[str, Any], line: int | str | None) -> Record:
    """Validate a record built by a loader; errors name the source file and line."""
    return parse_record(kind, obj, file=src.display or src.path, line=line)
