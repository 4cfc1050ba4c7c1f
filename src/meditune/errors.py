"""Errors that the CLI turns into a clear message and exit code 2 (never a traceback)."""

from __future__ import annotations

import errno
import os


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


# OS errors a user causes with a path (a missing parent, a directory where a file goes, no permission, a full
# disk); any other OSError is a bug and keeps its traceback.
USER_OS_ERRNOS = {getattr(errno, name) for name in (
    "ENOENT", "ENOTDIR", "EISDIR", "EEXIST", "EACCES", "EPERM", "ENOSPC", "EDQUOT", "EROFS", "ENAMETOOLONG",
    "ELOOP", "ENOTEMPTY", "EXDEV") if hasattr(errno, name)}


def os_error_message(e: OSError) -> str | None:
    """One line for an OSError caused by a user-given path ("out/x.jsonl: No space left on device"), or None
    when the error is not one a user can fix."""
    if e.errno not in USER_OS_ERRNOS:
        return None
    reason = e.strerror or os.strerror(e.errno or 0)
    if e.errno == errno.EEXIST and e.filename is not None and os.path.isfile(e.filename):
        reason = "is a file, where a directory is needed"  # mkdir of a path whose parent is a file
    paths = [p for p in (e.filename, e.filename2) if p is not None]
    where = " -> ".join(os.fsdecode(p) for p in paths)
    return f"{where}: {reason}" if where else reason


def print_error(message: str, label: str = "error:") -> None:
    """`LABEL MESSAGE` on stderr. The message is user-derived text (paths, data values), so it is printed as
    is, never read as rich markup: "a[/b].jsonl" and "[red]Z" come out literally."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True).print(Text.assemble((label, "bold red"), " ", message), highlight=False, soft_wrap=True)
