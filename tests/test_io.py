"""Atomic writes and line-numbered JSONL errors."""

from __future__ import annotations

import pytest

from meditune.errors import InputError
from meditune.io import atomic_write, hash_path, iter_jsonl, read_jsonl, write_json, write_jsonl


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write('{"half": ')
        raise RuntimeError("killed mid-write")
    assert target.read_text().strip().startswith('{\n  "a": 1')
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


def test_atomic_write_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "rows.jsonl"
    assert write_jsonl(target, [{"x": 1}, {"x": "é"}]) == 2
    assert read_jsonl(target) == [{"x": 1}, {"x": "é"}]


def test_bad_json_line_is_named(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"ok": 1}\n\n{"broken": \n{"ok": 2}\n')
    with pytest.raises(InputError) as e:
        read_jsonl(p)
    assert str(p) in str(e.value) and "line 3" in str(e.value)


def test_bom_is_accepted_and_bad_encoding_named(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    assert read_jsonl(p) == [{"a": 1}]
    q = tmp_path / "latin.jsonl"
    q.write_bytes(b'{"a": 1}\n{"b": "caf\xe9"}\n')
    with pytest.raises(InputError, match="line 2.*UTF-8"):
        read_jsonl(q)


def test_torn_tail_tolerated_only_when_asked(tmp_path):
    p = tmp_path / "shard.jsonl"
    p.write_text('{"a": 1}\n{"a": 2')
    assert [o for _, o in iter_jsonl(p, tolerate_torn_tail=True)] == [{"a": 1}]
    with pytest.raises(InputError):
        list(iter_jsonl(p))


def test_hash_path_changes_with_content(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("1")
    h1 = hash_path(tmp_path / "d")
    (tmp_path / "d" / "x").write_text("2")
    assert hash_path(tmp_path / "d") != h1
