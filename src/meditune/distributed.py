"""The one owner of multi-process work under `torchrun` / `accelerate launch`: which rank this process is, one
process group, and the few collectives every split stage uses.

A stage that splits its items runs the same code on every rank: it cuts its work into fixed units (the same
units a single process would form, so batching, and therefore every number, is the same), each rank does the
units it `owns` (unit index modulo world size) and appends them to its own shard file, then the rows are gathered
(`all_gather`) so that every rank holds the whole result, and rank 0 writes the outputs. With one process every
call here is free: no process group, no torch import, collectives return their input.

The process group is created once (`setup`): gloo for CPU runs, NCCL when CUDA is used (the CUDA device of a
rank is `cuda:LOCAL_RANK`, set before any model is loaded). training (TRL / accelerate) reuses the same group.
`solo()` marks work that only rank 0 does while the others wait (a data or merge stage): inside it this process
is a world of one, so nothing in it waits for the other ranks.
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
TIMEOUT_ENV = "MEDITUNE_DIST_TIMEOUT_S"
# Ranks wait for rank 0 while it runs a rank-0-only stage (data, merge, report), which can take hours.
DEFAULT_TIMEOUT_S = 24 * 3600

_SOLO: contextvars.ContextVar[bool] = contextvars.ContextVar("meditune_solo", default=False)
_rows_per_rank: list[int] = []  # rows each rank added in the current stage (see tally / take_tally)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a run, and the collectives among them."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def owns(self, unit: int) -> bool:
        """Whether this rank does work unit `unit` (round robin over the units, in their fixed order)."""
        return unit % self.world == self.rank

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's value of obj, on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's value of obj, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def first_failure(self, failure: str | None) -> str | None:
        """The first failure (in rank order) of any rank, on every rank; None when no rank failed."""
        return next((f for f in self.all_gather(failure) if f), None)


SOLO = Ranks()


def env_ranks() -> Ranks:
    """(rank, world size, local rank) as torchrun and accelerate launch set them; a world of one otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return SOLO
    return Ranks(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def current(device: str = "auto") -> Ranks:
    """The ranks this process works with now (a world of one inside `solo()`); sets up the process group the
    first time it is needed."""
    if _SOLO.get():
        return SOLO
    ranks = env_ranks()
    if ranks.distributed:
        setup(device)
    return ranks


@contextmanager
def solo() -> Iterator[None]:
    """Work done by this rank alone: inside, `current()` is a world of one (no collective waits for others)."""
    token = _SOLO.set(True)
    try:
        yield
    finally:
        _SOLO.reset(token)


def setup(device: str = "auto") -> None:
    """Create the process group once: NCCL when CUDA is used (each rank on cuda:LOCAL_RANK), else gloo."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    ranks = env_ranks()
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(ranks.local_rank)  # "cuda" means this rank's GPU from here on
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timeout)
    log.info("rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), "nccl" if cuda else "gloo")


def rank_path(path: str | os.PathLike, rank: int) -> Path:
    """The file rank `rank` writes instead of `path`: `path` itself for rank 0, `<stem>.rank<N><suffix>` else."""
    path = Path(path)
    return path if rank == 0 else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def rank_siblings(path: str | os.PathLike) -> list[Path]:
    """The files other ranks wrote in place of `path` (any rank number, in rank order)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    found = []
    for p in path.parent.glob(f"{path.stem}.rank*{path.suffix}"):
        num = p.name[len(path.stem) + len(".rank"):len(p.name) - len(path.suffix)]
        if num.isdigit() and int(num) > 0:
            found.append((int(num), p))
    return [p for _, p in sorted(found)]


def tally(rows_per_rank: Sequence[int]) -> None:
    """Count rows each rank added (called by the shards' merge), for the stage's manifest."""
    while len(_rows_per_rank) < len(rows_per_rank):
        _rows_per_rank.append(0)
    for i, n in enumerate(rows_per_rank):
        _rows_per_rank[i] += n


def take_tally() -> list[int]:
    """Rows each rank added since the last call (and reset)."""
    out = list(_rows_per_rank)
    _rows_per_rank.clear()
    return out
