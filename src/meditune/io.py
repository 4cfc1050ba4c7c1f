"""Atomic file writes, JSONL with line-numbered errors, and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from meditune.errors import ConfigError, InputError, MeditunError

# A name that becomes one path component: letters, digits, '_' and '-' (no '/', no '..', nothing hidden).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def directory_name(name: str) -> str:
    """`name` if it is a simple identifier that can be one path component, else a ValueError (for validators)."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise ValueError("it names a directory: use letters, digits, '_' and '-' only")
    return name


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when `path` (resolved, symlinks followed) lies strictly inside the directory `root`."""
    p, r = Path(path).resolve(), Path(root).resolve()
    return p != r and r in p.parents


def child(root: str | os.PathLike, name: str) -> Path:
    """root / name, refused (ConfigError) when the result would not lie inside `root`."""
    path = Path(root) / name
    if not is_inside(path, root):
        raise ConfigError(f"{name!r} would leave the directory {root}")
    return path


def remove_tree(path: str | os.PathLike, *, inside: str | os.PathLike) -> None:
    """shutil.rmtree(path) (or unlink a file or link; nothing when missing), after checking that `path` lies
    strictly inside `inside` (never the directory we were asked to clean, nor anything outside it)."""
    path = Path(path)
    # a symlink is removed as a link: where it sits matters, not where it points
    where = path.parent.resolve() / path.name if path.is_symlink() else path.resolve()
    root = Path(inside).resolve()
    if where == root or root not in where.parents:
        raise ConfigError(f"refusing to remove {path}: it is not inside {inside}")
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


@contextlib.contextmanager
def removed_on_error(directory: str | os.PathLike, errors: tuple[type[BaseException], ...] = (MeditunError,)):
    """Inside the block, `directory` may be created and filled; if the block raises one of `errors` (bad input),
    whatever it created there is removed again: the directory itself if it did not exist, else the entries that
    were not there before. Nothing half-written stays behind after an input error."""
    directory = Path(directory)
    existed = directory.exists()
    before = {p.name for p in directory.iterdir()} if existed and directory.is_dir() else set()
    try:
        yield directory
    except errors:
        if not existed:
            remove_tree(directory, inside=directory.parent)
        elif directory.is_dir():
            for p in directory.iterdir():
                if p.name not in before:
                    remove_tree(p, inside=directory)
        raise


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """A file path we may write: not an existing directory (the parent is created on write)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; give a file name")
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """A directory path we may write into: not an existing file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is an existing file; give a directory")
    return path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temp file beside `path`; on success fsync and rename it over `path`, else delete it."""
    path = check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_write(path) as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Write JSON atomically (UTF-8, non-ASCII kept)."""
    with atomic_write(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent, default=_json_default)
        f.write("\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """Write rows (dicts or pydantic models) as JSONL atomically; returns the row count."""
    n = 0
    with atomic_write(path) as f:
        for row in rows:
            f.write(dumps_line(row))
            n += 1
    return n


def dumps_line(row: Any) -> str:
    """One JSONL line (with newline) for a dict or pydantic model."""
    if hasattr(row, "model_dump"):
        row = row.model_dump(mode="json", exclude_none=True)
    return json.dumps(row, ensure_ascii=False, default=_json_default) + "\n"


def append_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    """Append rows to a JSONL shard and fsync (for resumable jobs; a torn last line is ignored on read)."""
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(dumps_line(row))
        f.flush()
        os.fsync(f.fileno())


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a syntax error names the file and line."""
    path = Path(path)
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg} (column {e.colno})", file=path, line=e.lineno) from None


def iter_jsonl(path: str | os.PathLike, *, tolerate_torn_tail: bool = False) -> Iterator[tuple[int, Any]]:
    """Yield (line_number, object) for each non-empty line; bad JSON raises InputError with the line.

    With tolerate_torn_tail, an unparseable *last* line without a newline (a write killed mid-line) is skipped.
    """
    path = Path(path)
    text = _read_text(path)
    lines = text.split("\n")
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            if tolerate_torn_tail and i == len(lines):
                return
            raise InputError(f"invalid JSON: {e.msg} (column {e.colno})", file=path, line=i) from None


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Read all objects of a JSONL file."""
    return [obj for _, obj in iter_jsonl(path)]


def _read_text(path: Path) -> str:
    if not path.exists():
        raise InputError("file not found", file=path)
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 BOM is harmless: drop it
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"not valid UTF-8 (byte {e.start}); convert the file or pass its encoding",
                         file=path, line=line) from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_path(path: str | os.PathLike) -> str:
    """sha256 over a file, or over the relative names and contents of every file under a directory."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(str(p.relative_to(path)).encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def hash_obj(obj: Any) -> str:
    """sha256 of the canonical JSON of an object."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=_json_default)
    return hashlib.sha256(blob.encode()).hexdigest()
