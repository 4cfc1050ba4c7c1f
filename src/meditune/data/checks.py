"""Checks every loaded record goes through (in `load_source`), beyond what the record schema enforces:
problems a schema cannot see because they are about meaning, not shape.

- an MCQ item whose options repeat a text (two identical answers: the item is ambiguous): a warning, once per
  file, with the count and the first line;
- a preference pair whose chosen equals its rejected (nothing to learn from): an InputError naming the line;
- a source that yields no item at all: an InputError (an empty file is almost always a mistake).
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meditune.errors import InputError
from meditune.records import MCQItem, Preference, Record

log = logging.getLogger(__name__)
# Where FileChecks.finish puts its warnings instead of logging them (set by validate_source, which reads a
# source several times and reports the warnings of the last read only).
_WARNINGS: ContextVar[list[str] | None] = ContextVar("meditune_check_warnings", default=None)


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
            sink = _WARNINGS.get()
            if sink is None:
                log.warning("%s", msg)
            else:
                sink.append(msg)


def require_items(records: list[Record], spec: Any, n_files: int) -> None:
    """An InputError when a source gave no records (an empty file, or a filter that kept nothing)."""
    if not records:
        what = ("the file is empty or every row was skipped" if n_files <= 1
                else f"none of its {n_files} files has one")
        raise InputError(f"no items ({what})", file=spec)


@dataclass
class Validation:
    """What `validate_source` found: the records that load once the bad lines are skipped (None when a
    whole-file error stopped it), every error found (up to the cap, in file order), whether it stopped at the
    cap, and the warnings."""

    records: list[Record] | None
    errors: list[InputError] = field(default_factory=list)
    capped: bool = False
    warnings: list[str] = field(default_factory=list)


def validate_source(spec: Any, cap: int = 50, **options: Any) -> Validation:
    """Load a source and collect its errors, not only the first: after each error at a line, the source is read
    again with the lines reported so far blanked out (line numbers unchanged), until it loads, an error has no
    line to skip (a whole-file problem), or `cap` errors are found."""
    from meditune.data.common import masked_lines
    from meditune.data.registry import load_source

    masked: dict[Path, set[int]] = {}
    found = Validation(None)
    while True:
        sink: list[str] = []
        token = _WARNINGS.set(sink)
        try:
            with masked_lines(masked):
                found.records = load_source(spec, **options)
            found.warnings = sink
            return found
        except InputError as e:
            if found.errors and e.line is None and e.reason.startswith("no items"):
                return found  # every item was bad: already said line by line
            path = Path(str(e.file)).resolve() if isinstance(e.file, (str, Path)) and e.file else None
            if path is not None and e.line in masked.get(path, ()):
                return found  # the same line again: a whole-file problem (its encoding), already reported
            found.errors.append(e)
            if len(found.errors) >= cap:
                found.capped = True
                return found
            if not isinstance(e.line, int) or path is None or not path.is_file():
                return found
            masked.setdefault(path, set()).add(e.line)
        finally:
            _WARNINGS.reset(token)
