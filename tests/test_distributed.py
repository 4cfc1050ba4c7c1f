"""meditune.distributed in one process: ranks from the environment, solo(), per-rank file names, shards that
read (and clean up) the files other ranks wrote, so one process can resume a killed multi-rank run, and a
generation job whose ranks (threads here) stay in step when one of them fails."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from meditune import distributed
from meditune.distributed import SOLO, Ranks, env_ranks, rank_path, rank_siblings
from meditune.errors import ConfigError
from meditune.shards import Shard, remove_shard


def test_ranks_come_from_the_launcher_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert env_ranks() == SOLO and distributed.current() == SOLO  # no launcher: no process group, no torch
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert env_ranks() == Ranks(rank=3, world=4, local_rank=1)
    with distributed.solo():  # rank-0-only work: a world of one, nothing waits for other ranks
        assert distributed.current() == SOLO


def test_units_go_round_robin_and_collectives_of_one_are_identities():
    ranks = [Ranks(r, 3) for r in range(3)]
    owners = [[r.rank for r in ranks if r.owns(u)] for u in range(7)]
    assert owners == [[0], [1], [2], [0], [1], [2], [0]]  # every unit exactly once
    assert SOLO.broadcast({"a": 1}) == {"a": 1} and SOLO.all_gather(5) == [5]
    SOLO.barrier()


def test_rank_files_sit_beside_the_shard(tmp_path):
    p = tmp_path / "samples.partial.jsonl"
    assert rank_path(p, 0) == p and rank_path(p, 2).name == "samples.partial.rank2.jsonl"
    for r in (10, 2, 1):
        rank_path(p, r).write_text("")
    (tmp_path / "samples.partial.rankx.jsonl").write_text("")  # not a rank file
    assert [q.name for q in rank_siblings(p)] == ["samples.partial.rank1.jsonl", "samples.partial.rank2.jsonl",
                                                  "samples.partial.rank10.jsonl"]


def _lines(*rows: dict, torn: str = "") -> str:
    return "".join(json.dumps(r) + "\n" for r in rows) + torn


def test_one_process_resumes_from_every_ranks_file_and_cleans_them(tmp_path):
    p = tmp_path / "scores.jsonl"
    p.write_text(_lines({"id": "a", "v": 1}))
    rank_path(p, 1).write_text(_lines({"id": "b", "v": 2}, torn='{"id": "c", "v"'))  # rank 1 killed mid-line
    shard = Shard(p)
    assert shard.done == {"a": {"id": "a", "v": 1}, "b": {"id": "b", "v": 2}}
    assert rank_path(p, 1).read_text().endswith("\n")  # the torn tail was cut: a later append starts clean
    shard.add([{"id": "c", "v": 3}])
    assert shard.path == p and shard.merge() is shard.done  # one process appends to the shard itself
    shard.consolidate([shard.done[k] for k in ("a", "b", "c")])  # other ranks' files existed: rewrite as one
    assert p.read_text() == _lines({"id": "a", "v": 1}, {"id": "b", "v": 2}, {"id": "c", "v": 3})
    assert not rank_siblings(p)


def test_one_process_without_rank_files_never_rewrites(tmp_path):
    p = tmp_path / "answers.jsonl"
    p.write_text(_lines({"id": "b"}, {"id": "a"}))
    Shard(p).consolidate([{"id": "a"}, {"id": "b"}])
    assert p.read_text() == _lines({"id": "b"}, {"id": "a"})  # nothing changes with one process


def test_identity_reset_and_removal_cover_every_ranks_file(tmp_path):
    p, ident = tmp_path / "s.jsonl", tmp_path / "s.key.json"
    Shard(p, identity={"k": 1}, identity_path=ident).add([{"id": "a"}])
    rank_path(p, 1).write_text(_lines({"id": "b"}))
    assert set(Shard(p, identity={"k": 1}, identity_path=ident).done) == {"a", "b"}
    assert Shard(p, identity={"k": 2}, identity_path=ident).done == {}  # other settings: every rank's file goes
    assert not rank_siblings(p)
    rank_path(p, 1).write_text(_lines({"id": "b"}))
    with pytest.raises(ConfigError):
        Shard(p, identity={"k": 3}, identity_path=ident, on_mismatch="refuse")
    remove_shard(p, ident)
    assert not p.exists() and not rank_siblings(p) and not ident.exists()


class _Hub:
    """Collectives among threads that play the ranks of one run; a rank left waiting fails (barrier timeout)
    instead of hanging the test."""

    def __init__(self, world: int):
        self.wait = threading.Barrier(world, timeout=10).wait
        self.slots: list[Any] = [None] * world

    def all_gather(self, rank: int, obj: Any) -> list[Any]:
        self.slots[rank] = obj
        self.wait()
        out = list(self.slots)
        self.wait()  # nobody writes the next collective's value before every rank has read this one
        return out


@dataclass(frozen=True)
class _ThreadRanks(Ranks):
    hub: Any = None

    def barrier(self) -> None:
        self.hub.wait()

    def broadcast(self, obj: Any) -> Any:
        return self.hub.all_gather(self.rank, obj)[0]

    def all_gather(self, obj: Any) -> list[Any]:
        return self.hub.all_gather(self.rank, obj)


def test_a_generation_that_fails_on_one_rank_raises_on_every_rank_and_the_retry_stays_in_step(tmp_path):
    """A judge call that fails on one rank (a server error) must not leave the other ranks waiting in the merge:
    every rank raises, so the judges' one retry (scoring.llm.ask) runs on every rank together."""
    from meditune.generation.base import GenerationRequest, SamplingParams, ScriptedBackend
    from meditune.generation.job import run_job

    reqs = [GenerationRequest(f"r{i}", [{"role": "user", "content": f"q{i}"}], SamplingParams()) for i in range(4)]
    hub, fail_once = _Hub(2), {1}

    def respond(req: GenerationRequest, i: int) -> str:
        if req.id == "r1" and fail_once:  # rank 1 owns unit 1
            fail_once.clear()
            raise ConnectionError("judge unreachable")
        return f"answer {req.id}"

    def rank(r: int) -> tuple[list[str], list[str]]:
        errors = []
        for _ in range(2):  # the first try and one retry, as ask() does (keeping no traceback, as ask())
            try:
                res = run_job(reqs, ScriptedBackend(respond), tmp_path / "job", model={"backend": "scripted"},
                              unit_size=1, progress=False, ranks=_ThreadRanks(r, 2, hub=hub))
                return errors, [row["generations"][0]["text"] for row in res.rows or []]
            except Exception as e:  # noqa: BLE001
                errors.append(f"{type(e).__name__}: {e}")
        return errors, []

    with ThreadPoolExecutor(2) as pool:
        (errors0, texts0), (errors1, texts1) = pool.map(rank, (0, 1))
    assert errors1 == ["ConnectionError: judge unreachable"]
    assert len(errors0) == 1 and "generation failed on rank 1: ConnectionError: judge unreachable" in errors0[0]
    assert texts0 == texts1 == [f"answer r{i}" for i in range(4)]
    assert json.loads((tmp_path / "job" / "generations.jsonl").read_text().splitlines()[1])["id"] == "r1"
