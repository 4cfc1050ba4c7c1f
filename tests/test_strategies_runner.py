"""run_strategy end to end on a scripted backend: predictions, votes, cost, parse failures, resume, outputs."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from meditune.errors import ConfigError
from meditune.evaluation.strategies import run_strategy
from meditune.generation.base import ScriptedBackend
from tests.strategies_helpers import always_first, knows_marked, make_item, shown_options


def fake_embed(texts):
    """Deterministic 'embeddings': a one-hot of the question number (mod 8) plus a small constant."""
    out = np.full((len(texts), 8), 0.1, dtype=np.float32)
    for i, t in enumerate(texts):
        out[i, int(t.split("number ")[1].split("?")[0]) % 8] = 1.0
    return out / np.linalg.norm(out, axis=1, keepdims=True)


ITEMS = [make_item(i, right=i % 4) for i in range(10)]
TRAIN = [make_item(100 + i, right=(i + 1) % 4) for i in range(12)]


def test_medprompt_maps_shuffled_answers_back(tmp_path):
    backend = ScriptedBackend(knows_marked)
    res = run_strategy("medprompt", ITEMS, backend, {"runs": 4, "k": 3, "chunk_size": 4}, tmp_path,
                       train_items=TRAIN, embed=fake_embed)
    assert res.accuracy == 1.0
    for row in res.predictions:
        assert row["votes"] == {row["gold_letter"]: 4} and not row["tie"]
        orders = [run["order"] for run in row["runs"]]
        assert orders[0] == [0, 1, 2, 3] and len({tuple(o) for o in orders}) == 4
        # the shown letters differ between runs but all map back to the gold option
        assert {s["answer"] for run in row["runs"] for s in run["samples"]} == {row["gold"]}
        assert len(row["runs"][0]["shots"]) == 3
    m = res.metrics
    assert m["n"] == 10 and m["ci_low"] <= 1.0 <= m["ci_high"]
    assert m["bank"]["kept"] == 12 and m["parse"]["failed"] == 0
    assert m["cost"]["generations"] == 40
    assert json.loads((tmp_path / "results.json").read_text())["accuracy"] == 1.0
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 10


def test_medprompt_exemplars_are_nearest_and_bank_correct_only(tmp_path):
    prompts = []

    def spy(req, i):
        prompts.append(req)
        return knows_marked(req, i)

    run_strategy("knn-fewshot", [make_item(3)], ScriptedBackend(spy), {"k": 2}, tmp_path,
                 train_items=[make_item(8 * j + 3, right=1) for j in range(1, 4)] + [make_item(40)], embed=fake_embed)
    req = prompts[-1]
    users = [m["content"] for m in req.messages if m["role"] == "user"]
    assert len(users) == 3  # 2 exemplars + the question
    assert all("number 11?" in u or "number 19?" in u or "number 27?" in u for u in users[:2])
    assert [m["content"].splitlines()[-1] for m in req.messages if m["role"] == "assistant"] == ["Answer: B"] * 2


def test_position_bias_is_spread_by_shuffling(tmp_path):
    res = run_strategy("medprompt", ITEMS[:4], ScriptedBackend(always_first), {"runs": 3, "k": 1},
                       tmp_path, train_items=TRAIN[:2], embed=fake_embed)
    for row in res.predictions:
        firsts = [run["order"][0] for run in row["runs"]]
        assert [s["answer"] for run in row["runs"] for s in run["samples"]] == firsts
        counts = Counter(firsts)
        assert row["votes"] == {"ABCD"[a]: c for a, c in counts.items()}
        if len(counts) == 3:  # three different votes: the tie goes to run 0 (original order)
            assert row["tie"] and row["pred"] == firsts[0] == 0
        else:
            assert not row["tie"] and row["pred"] == counts.most_common(1)[0][0]
    assert res.metrics["votes"]["ties"] == sum(len(set(r["votes"])) == 3 for r in res.predictions) > 0


def test_self_consistency_votes_over_samples(tmp_path):
    def noisy(req, i):
        if req.params.temperature == 0:
            raise AssertionError("self-consistency must sample")
        return knows_marked(req, i) if i != 1 else "Answer: D"

    res = run_strategy("self-consistency", ITEMS[:3], ScriptedBackend(noisy), {"samples": 3, "shots": 0})
    assert res.accuracy == 1.0
    assert [r["generations"] for r in res.predictions] == [3, 3, 3]
    assert res.predictions[0]["votes"] == {"A": 2, "D": 1}


def test_cot_counts_parse_failures_and_tokens():
    def half(req, i):
        q = shown_options(req)
        return knows_marked(req, i) if "option 0 of q0" in q["A"] or "of q2" in q["A"] else "thinking forever"

    backend = ScriptedBackend(half)
    res = run_strategy("cot", ITEMS[:4], backend, {"max_retries": 1})
    m = res.metrics
    assert [r["correct"] for r in res.predictions] == [True, False, True, False]
    assert m["parse"]["failed"] == 2 and m["parse"]["failure_rate"] == 0.5 and m["parse"]["retries"] == 2
    assert m["parse"]["unanswered_items"] == 2
    assert len(backend.calls) == 6  # 4 first tries + 1 bounded retry for each of the 2 failures
    assert m["cost"]["completion_tokens"] == sum(r["completion_tokens"] for r in res.predictions) > 0
    assert m["accuracy"] == 0.5 and m["ci_low"] < 0.5 < m["ci_high"]


def test_direct_strategy_and_protocol():
    res = run_strategy("direct", ITEMS[:4], ScriptedBackend(lambda r, i: "B"))
    assert [r["pred"] for r in res.predictions] == [1] * 4
    assert res.metrics["protocol"]["answer_tokens"] == 8


def test_resume_skips_finished_items(tmp_path):
    backend = ScriptedBackend(knows_marked)
    run_strategy("cot", ITEMS[:4], backend, {"chunk_size": 2}, tmp_path)
    # simulate a crash after the first chunk: keep only its rows in the shard
    (shard,) = tmp_path.glob(".strategy-cot-*.partial.jsonl")
    shard.write_text("".join(shard.read_text().splitlines(keepends=True)[:2]))
    again = ScriptedBackend(knows_marked)
    res = run_strategy("cot", ITEMS[:4], again, {"chunk_size": 2}, tmp_path)
    assert len(again.calls) == 2 and res.accuracy == 1.0


def test_bad_names_and_options():
    with pytest.raises(ConfigError, match="did you mean 'medprompt'"):
        run_strategy("medprompts", ITEMS, ScriptedBackend(knows_marked))
    with pytest.raises(ConfigError, match="'run'.*did you mean 'runs'"):
        run_strategy("medprompt", ITEMS, ScriptedBackend(knows_marked), {"run": 3})
    with pytest.raises(ConfigError, match="train_path"):
        run_strategy("knn-fewshot", ITEMS, ScriptedBackend(knows_marked), {}, embed=fake_embed)


def test_fixed_shots_from_an_existing_bank(tmp_path):
    bank = tmp_path / "bank.jsonl"
    run_strategy("knn-fewshot", ITEMS[:1], ScriptedBackend(knows_marked), {"k": 1, "bank_path": str(bank)},
                 train_items=TRAIN[:3], embed=fake_embed)
    backend = ScriptedBackend(knows_marked)
    res = run_strategy("cot", ITEMS[:2], backend, {"shots": 2, "bank_path": str(bank)})  # no train items: load
    assert res.metrics["bank"]["kept"] == 3 and res.accuracy == 1.0
    for req in backend.calls:
        assert [m["role"] for m in req.messages] == ["user", "assistant"] * 2 + ["user"]
        assert "number 100?" in req.messages[0]["content"]  # the first bank entries, in training order
