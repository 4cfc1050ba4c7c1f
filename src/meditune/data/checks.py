"""Checks of a whole source beyond what the record schema enforces (the per-record ones are
meditune.records.FileChecks, run by every loader):

- an MCQ item whose options repeat a text (two identical answers: the item is ambiguous): a warning, once per
  file, with the count and the first line;
- a preference pair whose chosen equals its rejected (nothing to learn from): an InputError naming the line;
- a source that yields no item at all: an InputError (an empty file is almost always a mistake).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meditune.errors import InputError
from meditune.records import CHECK_WARNINGS, Record


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
        token = CHECK_WARNINGS.set(sink)
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
            CHECK_WARNINGS.reset(token)
