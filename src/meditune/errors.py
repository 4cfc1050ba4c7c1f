"""Errors that the CLI turns into a clear message and exit code 2 (never a traceback)."""

from __future__ import annotations


class MeditunError(Exception):
    """Base class of user-facing errors: bad input, bad config, missing files."""


class ConfigError(MeditunError):
    """A recipe or command-line setting is invalid."""


class InputError(MeditunError):
    """A data file is malformed; the message names file, line (or row/key) and field."""

    def __init__(self, message: str, *, file: object = None, line: int | str | None = None,
                 field: str | None = None):
        self.file, self.line, self.field, self.reason = file, line, field, message
        where = []
        if file is not None:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}" if isinstance(line, int) else str(line))
        prefix = ":".join(where)
        if field:
            prefix = f"{prefix}: field '{field}'" if prefix else f"field '{field}'"
        super().__init__(f"{prefix}: {message}" if prefix else message)
