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

Under several ranks (`ranks=` a meditune.distributed.Ranks, every rank opening the shard together) each rank
appends to its own file (`<stem>.rank<N><suffix>`, rank 0 to the shard itself), rank 0 checks the identity and
reads every rank's file, and all ranks start from its `done`; `merge()` then gathers what each rank added, so
every rank ends with the whole result. A killed run resumes under any number of ranks (or one): whoever opens the
shard reads every rank's file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from meditune.distributed import SOLO, Ranks, rank_path, rank_siblings, tally
from meditune.errors import ConfigError
from meditune.io import append_jsonl, iter_jsonl, read_json, write_json, write_jsonl

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


class _Gathered:
    """What Shard and ShardDir share across ranks: `done`, the records this rank added, and their merge."""

    done: dict[str, Any]
    ranks: Ranks
    _new: list[tuple[str, Any]]  # what this rank added since opening (kept only under several ranks)

    def _keep(self, key: str, record: Any) -> None:
        self.done[key] = record
        if self.ranks.distributed:
            self._new.append((key, record))

    def merge(self) -> dict[str, Any]:
        """Every rank's additions since opening, gathered: `done` is then the whole result on every rank (all ranks
        call this together); counts the rows each rank added."""
        if self.ranks.distributed:
            parts = self.ranks.all_gather(self._new)
            for r, part in enumerate(parts):
                if r != self.ranks.rank:
                    self.done.update(part)
            tally([len(p) for p in parts])
        self._new = []
        return self.done


class Shard(_Gathered):
    """One append-only shard file: `done` holds the finished records by key (later lines win)."""

    def __init__(self, path: str | os.PathLike, *, key: str | KeyFn = "id", parse: ParseFn | None = None,
                 keep: Callable[[Any], bool] | None = None, identity: Any = None,
                 identity_path: str | os.PathLike | None = None,
                 on_mismatch: Literal["reset", "refuse"] = "reset", refusal: str | None = None,
                 ranks: Ranks = SOLO):
        self.main = Path(path)
        self.main.parent.mkdir(parents=True, exist_ok=True)
        self.ranks = ranks
        self.path = rank_path(self.main, ranks.rank)  # this rank's own file
        self.key = _key_fn(key)
        self.identity_path = Path(identity_path) if identity_path else None
        self.done: dict[str, Any] = {}
        self._new: list[tuple[str, Any]] = []  # what this rank added, for merge()
        error = None
        if ranks.is_main:
            try:
                self._open(identity, on_mismatch, refusal, parse, keep)
            except ConfigError as e:
                error = str(e)
        if ranks.distributed:
            error = ranks.broadcast(error)
        if error:
            raise ConfigError(error)
        if ranks.distributed:
            self.done = ranks.broadcast(self.done)

    def _open(self, identity: Any, on_mismatch: str, refusal: str | None, parse: ParseFn | None,
              keep: Callable[[Any], bool] | None) -> None:
        """Check the identity (resetting every rank's file on a mismatch) and read every rank's file."""
        if self.identity_path is not None:
            # reset: a shard under other settings, or with no identity to check, starts over
            unverified = on_mismatch == "reset" and not self.identity_path.exists()
            if not check_identity(self.identity_path, identity, on_mismatch=on_mismatch,  # type: ignore[arg-type]
                                  refusal=refusal) or unverified:
                for p in self.files():
                    p.unlink(missing_ok=True)
        for p in self.files():  # no rank appends yet: every torn tail can be cut
            cut_torn_tail(p)
            for rec in read_shard(p, parse=parse):
                if keep is None or keep(rec):
                    self.done[self.key(rec)] = rec

    def files(self) -> list[Path]:
        """The shard and the files other ranks wrote beside it (existing ones)."""
        return [p for p in [self.main, *rank_siblings(self.main)] if p.exists()]

    def add(self, rows: Iterable[Any], records: Iterable[Any] | None = None) -> None:
        """Append rows (one fsync) and count them done; `records` are what `done` keeps when they differ from the
        rows written (e.g. parsed objects)."""
        rows = list(rows)
        append_jsonl(self.path, rows)
        for row, rec in zip(rows, rows if records is None else list(records), strict=True):
            self._keep(self.key(row), rec)

    def consolidate(self, rows: Iterable[Any]) -> None:
        """Rank 0 rewrites the shard as `rows` (the merged result, in the order one process writes it) and removes
        the other ranks' files, so a shard that is also an output reads as one process's. Nothing to do (and
        nothing rewritten) for one process that found no other rank's file."""
        if not self.ranks.is_main or not (self.ranks.distributed or rank_siblings(self.main)):
            return
        write_jsonl(self.main, rows)
        for p in rank_siblings(self.main):
            p.unlink(missing_ok=True)

    def remove(self) -> None:
        """Delete the shard, the other ranks' files and its identity file (the work is now in a final output)."""
        remove_shard(self.main, self.identity_path)


def remove_shard(path: str | os.PathLike, identity_path: str | os.PathLike | None = None) -> None:
    """Delete a shard, the files other ranks wrote beside it and its identity file."""
    for p in [Path(path), *rank_siblings(path)]:
        p.unlink(missing_ok=True)
    if identity_path is not None:
        Path(identity_path).unlink(missing_ok=True)


class ShardDir(_Gathered):
    """A directory of shards `<prefix>-*.jsonl`, one per writer; `done` merges them in name order.

    Under several ranks rank 0 reads the directory and every rank starts from its `done`; `merge()` gathers what
    each rank added (each rank writes its own file: give every rank a distinct `writer`)."""

    def __init__(self, directory: str | os.PathLike, *, prefix: str, key: str | KeyFn = "id",
                 writer: str | None = None, ranks: Ranks = SOLO):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.key, self.ranks = prefix, _key_fn(key), ranks
        self.done: dict[str, Any] = {}
        self._new: list[tuple[str, Any]] = []
        if ranks.is_main:
            for path in self.files():
                for rec in read_shard(path):
                    self.done[self.key(rec)] = rec
        if ranks.distributed:
            self.done = ranks.broadcast(self.done)
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
            self._keep(self.key(row), row)
