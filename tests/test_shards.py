"""meditune.shards: the one resumable-shard primitive (torn tails, identities, one file per writer, kill -9)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meditune.errors import ConfigError
from meditune.shards import Shard, ShardDir, cut_torn_tail


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_torn_last_line_is_cut_and_the_next_append_starts_fresh(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "te')  # a write killed mid-line
    shard = Shard(path)
    assert list(shard.done) == ["a", "b"]
    shard.add([{"id": "c", "text": "again"}])
    assert lines(path) == [{"id": "a"}, {"id": "b"}, {"id": "c", "text": "again"}]


def test_a_complete_record_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}')  # killed between the record and its newline
    cut_torn_tail(path)
    assert path.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    assert list(Shard(path).done) == ["a", "b"]


def test_identity_resets_or_refuses(tmp_path):
    path, ident = tmp_path / "s.jsonl", tmp_path / "s.key.json"
    Shard(path, identity={"k": 1}, identity_path=ident).add([{"id": "a"}])
    assert list(Shard(path, identity={"k": 1}, identity_path=ident).done) == ["a"]
    assert Shard(path, identity={"k": 2}, identity_path=ident).done == {}  # reset: other settings start over
    assert not path.exists()
    Shard(path, identity={"k": 2}, identity_path=ident).add([{"id": "b"}])
    with pytest.raises(ConfigError, match="another configuration"):
        Shard(path, identity={"k": 3}, identity_path=ident, on_mismatch="refuse")
    ident.unlink()  # a shard whose identity cannot be checked is not trusted in reset mode
    assert Shard(path, identity={"k": 2}, identity_path=ident).done == {}


def test_keys_parsers_and_filters(tmp_path):
    path = tmp_path / "s.jsonl"
    Shard(path, key="key").add([{"key": "x", "v": 1}, {"key": "y", "v": 2}, {"key": "x", "v": 3}])
    shard = Shard(path, key="key", parse=lambda line, row: {**row, "line": line}, keep=lambda r: r["v"] > 1)
    assert shard.done == {"x": {"key": "x", "v": 3, "line": 3}, "y": {"key": "y", "v": 2, "line": 2}}


def test_shard_dir_gives_each_writer_its_own_file(tmp_path):
    a = ShardDir(tmp_path, prefix="entries", writer="a")
    a.add([{"id": "1"}, {"id": "2"}])
    with open(a.path, "a") as f:
        f.write('{"id": "3", "tor')  # torn at the end of writer a's file
    b = ShardDir(tmp_path, prefix="entries", writer="b")
    assert set(b.done) == {"1", "2"}
    b.add([{"id": "3"}])
    assert [p.name for p in b.files()] == ["entries-a.jsonl", "entries-b.jsonl"]
    assert set(ShardDir(tmp_path, prefix="entries").done) == {"1", "2", "3"}
    assert a.path.read_text().endswith('"tor')  # never appended to by another writer


WRITER = """
import sys, time
from meditune.shards import Shard
shard = Shard(sys.argv[1])
for i in range(int(sys.argv[2])):
    if str(i) not in shard.done:
        time.sleep(0.01)  # a kill at 0.15-0.6 s lands mid-run whatever the machine's speed
        shard.add([{"id": str(i), "payload": "x" * (20000 + 997 * i)}])
"""


def test_kill_minus_9_at_random_points_loses_and_duplicates_nothing(tmp_path):
    path, total = tmp_path / "work.jsonl", 120
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rng, kills, progress = random.Random(3), 0, []
    while kills < 4:
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(total)], env=env)
        time.sleep(rng.uniform(0.15, 0.6))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        progress.append(path.read_bytes().count(b"\n") if path.exists() else 0)
    assert kills >= 2 and any(0 < p < total for p in progress), progress
    subprocess.run([sys.executable, "-c", WRITER, str(path), str(total)], env=env, check=True)
    ids = [row["id"] for row in lines(path)]  # every line complete: torn ones were cut before appending
    assert ids == [str(i) for i in range(total)]  # each record exactly once, in order
    assert all(len(row["payload"]) == 20000 + 997 * int(row["id"]) for row in lines(path))
