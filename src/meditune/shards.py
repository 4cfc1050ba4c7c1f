"""The one resumable-shard primitive: append-only JSONL files of finished records that survive kill -9.

Every resumable loop (MCQA samples, strategies, the CoT bank, generation jobs and the generation cache, preference
answers and scores, and through generation jobs the open evaluations' judge calls) keeps its finished work here:

  Shard     one file. Opening it reads every complete line into `done` (record key -> record); a torn last line
            (a write killed mid-line) is cut off first, so the next append starts on a fresh line. `add(rows)`
            appends and fsyncs: a record is done exactly when its line is complete.
  ShardDir  a directory of shards, one per writer: a writer never appends to a file another wrote, so concurrent
            processes never interleave and an old torn line stays at the end of its own file (and is skipped).
An identity file beside the shard says what the records are valid for (settings, model, requests): a shard
written under another identity is started over (`on_mismatch="reset"`) or refused (`"refuse"`, a ConfigError).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from meditune.errors import ConfigError
from meditune.io import append_jsonl, iter_jsonl, read_json, write_json

KeyFn = Callable[[dict[str, Any]], str]
ParseFn = Callable[[int, Any], Any]  # (line, object) -> record; may raise InputError naming the line


def cut_torn_tail(path: Path) -> None:
    """Make a shard end on a newline: a last line without one is dropped when torn, completed when whole JSON."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    try:
        json.loads(data[keep:])
        whole = True
    except ValueError:
        whole = False
    with open(path, "r+b") as f:
        if whole:  # killed between the record and its newline: the record is complete
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())


def read_shard(path: Path, *, parse: ParseFn | None = None) -> Iterator[Any]:
    """The records of one shard file (a torn last line skipped); nothing when it does not exist."""
    if not path.exists():
        return
    for line, obj in iter_jsonl(path, tolerate_torn_tail=True):
        yield parse(line, obj) if parse else obj


def check_identity(path: Path, identity: Any, *, on_mismatch: Literal["reset", "refuse"] = "refuse",
                   refusal: str | None = None) -> bool:
    """Write the identity file; returns False when one under another identity was there (reset), or raises
    ConfigError (refuse)."""
    same = True
    if path.exists():
        same = read_json(path) == json.loads(json.dumps(identity, default=str))
        if not same and on_mismatch == "refuse":
            raise ConfigError(refusal or f"{path.parent} holds results of another configuration ({path.name} "
                                         "differs); use another output directory or remove it")
    write_json(path, identity)
    return same


def _key_fn(key: str | KeyFn) -> KeyFn:
    return (lambda row: row[key]) if isinstance(key, str) else key


class Shard:
    """One append-only shard file: `done` holds the finished records by key (later lines win)."""

    def __init__(self, path: str | os.PathLike, *, key: str | KeyFn = "id", parse: ParseFn | None = None,
                 keep: Callable[[Any], bool] | None = None, identity: Any = None,
                 identity_path: str | os.PathLike | None = None,
                 on_mismatch: Literal["reset", "refuse"] = "reset", refusal: str | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.key = _key_fn(key)
        self.identity_path = Path(identity_path) if identity_path else None
        if self.identity_path is not None:
            # reset: a shard under other settings, or with no identity to check, starts over
            unverified = on_mismatch == "reset" and not self.identity_path.exists()
            if not check_identity(self.identity_path, identity, on_mismatch=on_mismatch, refusal=refusal) \
                    or unverified:
                self.path.unlink(missing_ok=True)
        cut_torn_tail(self.path)
        self.done: dict[str, Any] = {}
        for rec in read_shard(self.path, parse=parse):
            if keep is None or keep(rec):
                self.done[self.key(rec)] = rec

    def add(self, rows: Iterable[Any], records: Iterable[Any] | None = None) -> None:
        """Append rows (one fsync) and count them done; `records` are what `done` keeps when they differ from the
        rows written (e.g. parsed objects)."""
        rows = list(rows)
        append_jsonl(self.path, rows)
        for row, rec in zip(rows, rows if records is None else list(records), strict=True):
            self.done[self.key(row)] = rec

    def remove(self) -> None:
        """Delete the shard and its identity file (the work is now in a final output)."""
        self.path.unlink(missing_ok=True)
        if self.identity_path is not None:
            self.identity_path.unlink(missing_ok=True)


class ShardDir:
    """A directory of shards `<prefix>-*.jsonl`, one per writer; `done` merges them in name order."""

    def __init__(self, directory: str | os.PathLike, *, prefix: str, key: str | KeyFn = "id",
                 writer: str | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.key = prefix, _key_fn(key)
        self.done: dict[str, Any] = {}
        for path in self.files():
            for rec in read_shard(path):
                self.done[self.key(rec)] = rec
        # this writer's own file (created on the first add): by default unique per process and time
        self.path = self.dir / f"{prefix}-{writer or f'{time.time_ns()}-{os.getpid()}'}.jsonl"

    def files(self) -> list[Path]:
        """The shard files, in name order."""
        return sorted(self.dir.glob(f"{self.prefix}-*.jsonl"))

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows to this writer's file (one fsync) and count them done."""
        rows = list(rows)
        if rows:
            append_jsonl(self.path, rows)
        for row in rows:
            self.done[self.key(row)] = row
