"""`meditune score` and `meditune prefs build` from the command line (model-free scorers, tiny model)."""

from __future__ import annotations

import json

from meditune.cli import main
from meditune.io import read_jsonl, write_jsonl

REFS = ["Metformin is the first-line drug for type 2 diabetes.",
        "Lactic acidosis is a rare side effect of metformin."]


def test_score_answer_scorer_and_bad_input(tmp_path, capsys):
    f = tmp_path / "answers.jsonl"
    write_jsonl(f, [{"id": "1", "question": "q", "answer": "Answer: B", "options": ["a", "b"], "gold": 1,
                     "model": "m1"},
                    {"id": "2", "question": "q", "answer": "Answer: A", "options": ["a", "b"], "gold": 1,
                     "model": "m1"}])
    assert main(["score", str(f), "--scorer", "answer"]) == 0
    rows = read_jsonl(tmp_path / "answers.scores.jsonl")
    assert [r["value"] for r in rows] == [1.0, 0.0] and rows[0]["evidence"]["extracted"] == "B"
    assert "m1: answer mean 0.5000" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "question": "q", "answer": "x"}\n{"id": "2", "question": "q"}\n')
    assert main(["score", str(bad), "--scorer", "answer"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "line 2" in err and "answer" in err
    assert main(["score", str(f), "--scorer", "nope"]) == 2


def test_score_dahl_model_free(tmp_path, capsys):
    f = tmp_path / "answers.jsonl"
    write_jsonl(f, [{"id": "a", "question": "q", "references": REFS, "model": "good",
                     "answer": "Metformin is the first-line drug for type 2 diabetes. Metformin can rarely cause lactic acidosis."},
                    {"id": "b", "question": "q", "references": REFS, "model": "bad",
                     "answer": "Penicillin is an antiviral drug. The Eiffel Tower is in Paris."}])
    out = tmp_path / "s.jsonl"
    assert main(["score", str(f), "--splitter", "sentences", "--verifier", "embedding", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "good: DAHL 1.0000" in text and "bad: DAHL 0.0000" in text
    assert read_jsonl(out)[0]["evidence"]["facts"][0]["verdict"] == "true"


def test_prefs_build_with_a_tiny_model(tmp_path, tiny_model_dir, capsys):
    q = tmp_path / "q.jsonl"
    write_jsonl(q, [{"id": f"q{i}", "question": f"What is drug {i}?", "must_have": REFS} for i in range(3)])
    cfg = tmp_path / "prefs.yaml"
    cfg.write_text("scorer:\n  type: dahl\n  splitter: sentences\n  verifier: embedding\n"
                   "pairing:\n  margin: 0.0\n")
    rc = main(["prefs", "build", str(cfg), "-q", str(q), "-g", f"a={tiny_model_dir}", "-g", f"b={tiny_model_dir}",
               "--max-new-tokens", "12", "--set", "collection.temperature=1.0", "--out", str(tmp_path / "run")])
    assert rc == 0
    card = json.loads((tmp_path / "run" / "datacard.json").read_text())
    c = card["counts"]
    assert c["questions"] == 3
    assert c["questions_with_pairs"] + sum(c["questions_dropped"].values()) == 3
    assert [g["answers"] for g in card["generators"]] == [3, 3]
    assert card["collection"]["temperature"] == 1.0 and card["collection"]["max_new_tokens"] == 12
    assert "preference pairs" in capsys.readouterr().out
    assert main(["prefs", "build", "-q", str(q), "-g", "x", "--set", "pairing.polcy=1"]) == 2


def test_prefs_stage_in_a_recipe(tmp_path, tiny_model_dir):
    from meditune.pipeline import Pipeline
    from meditune.recipe import parse_recipe

    q = tmp_path / "q.jsonl"
    write_jsonl(q, [{"id": f"q{i}", "question": f"What is drug {i}?", "must_have": REFS} for i in range(2)])
    recipe = parse_recipe({"name": "r", "stages": [{
        "name": "prefs", "type": "prefs", "questions": str(q),
        "generators": [{"name": "a", "model": str(tiny_model_dir)}, {"name": "b", "model": str(tiny_model_dir)}],
        "collection": {"max_new_tokens": 8},
        "scorer": {"type": "dahl", "splitter": "sentences", "verifier": "embedding"}}]})
    pipe = Pipeline(recipe, tmp_path / "run")
    outs = pipe.run()["prefs"]
    assert list(outs)[0] == "dataset" and {"datacard", "scores", "trl"} <= set(outs)
    assert len(read_jsonl(outs["scores"])) == 4
    pipe2 = Pipeline(recipe, tmp_path / "run")
    pipe2.run()
    assert pipe2.skipped == ["prefs"]
