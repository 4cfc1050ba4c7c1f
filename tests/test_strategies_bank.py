"""The CoT bank keeps only rationales that reach the gold answer, and resumes from disk."""

from __future__ import annotations

import json

import pytest

from meditune.errors import InputError
from meditune.evaluation.strategies.cot_bank import build_cot_bank, load_cot_bank
from meditune.generation.base import ScriptedBackend
from tests.strategies_helpers import knows_marked, make_item


def half_right(req, i):
    """Right on even-numbered questions, wrong (first option) on odd ones, no answer on q5."""
    user = req.messages[-1]["content"]
    if "number 5?" in user:
        return "no idea"
    n = int(user.split("number ")[1].split("?")[0])
    return knows_marked(req, i) if n % 2 == 0 else "Looks like the first.\nAnswer: A\nthanks"


def test_bank_keeps_only_correct_rationales(tmp_path):
    items = [make_item(i, right=2) for i in range(8)]
    backend = ScriptedBackend(half_right)
    bank = build_cot_bank(items, backend, tmp_path / "bank.jsonl", model="m", chunk_size=3)
    assert [e.item.id for e in bank.entries] == ["q0", "q2", "q4", "q6"]
    for e in bank.entries:
        assert e.rationale.endswith("Answer: C") and e.item.answer == 2
    assert bank.attempted == 8 and bank.reused == 0
    rows = [json.loads(x) for x in (tmp_path / "bank.jsonl").read_text().splitlines()]
    assert sum(r["correct"] for r in rows) == 4 and all(r["rationale"] is None for r in rows if not r["correct"])
    assert next(r for r in rows if r["item_id"] == "q5")["retries"] == 2  # unparseable: retried, still wrong


def test_bank_resumes_and_keys_on_model(tmp_path):
    items = [make_item(i, right=0) for i in range(6)]
    path = tmp_path / "bank.jsonl"
    build_cot_bank(items[:4], ScriptedBackend(knows_marked), path, model="m")
    with open(path, "a") as f:
        f.write('{"key": "torn')  # a write killed mid-line
    backend = ScriptedBackend(knows_marked)
    bank = build_cot_bank(items, backend, path, model="m")
    assert bank.reused == 4 and bank.kept == 6
    assert len(backend.calls) == 2  # only the two new items were generated
    other = ScriptedBackend(knows_marked)
    build_cot_bank(items, other, path, model="another-model")
    assert len(other.calls) == 6  # a different model never reuses the first model's rationales
    assert load_cot_bank(path).kept == 12
    assert all(line.startswith("{") for line in path.read_text().splitlines())


def test_bad_bank_file_names_the_line(tmp_path):
    path = tmp_path / "bank.jsonl"
    path.write_text('{"key": "a"}\n')
    with pytest.raises(InputError, match="line 1"):
        load_cot_bank(path)
