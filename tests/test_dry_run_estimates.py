"""A dry run says where a stage's input comes from when an earlier stage will write it, for every stage type."""

from __future__ import annotations

from meditune.pipeline import Pipeline
from meditune.recipe import parse_recipe

STAGES = [
    {"name": "mcq", "type": "data", "source": "sample:mcq", "language": "en"},
    {"name": "questions", "type": "data", "source": "sample:longform", "limit": 8},
    {"name": "copy", "type": "data", "source": "@questions", "limit": 4},
    {"name": "eval_before", "type": "eval_mcqa", "data": "@mcq", "task": "sample_mcq_en"},
    {"name": "answers", "type": "generate", "data": "@questions", "n": 2},
    {"name": "prefs", "type": "prefs", "questions": "@questions",
     "generators": [{"name": "a"}, {"name": "b", "temperature": 1.0}],
     "scorer": {"type": "dahl", "splitter": "sentences", "verifier": "embedding"}},
    {"name": "dpo", "type": "dpo", "data": "@prefs", "batch_size": 4, "epochs": 2},
    {"name": "rs", "type": "rs", "data": "@questions", "rounds": 2},
    {"name": "open", "type": "eval_open", "data": "@answers", "limit": 5},
    {"name": "safety", "type": "eval_safety", "data": "sample:safety", "benign": "@copy"},
    {"name": "bias", "type": "eval_bias", "data": "@mcq"},
]


def plan_of(tmp_path):
    recipe = parse_recipe({"name": "dry", "stages": STAGES}, "test")
    return Pipeline(recipe, tmp_path / "run"), {p.stage.name: p.estimate for p in
                                                 Pipeline(recipe, tmp_path / "run").plan()}


def test_every_stage_type_says_where_its_input_comes_from(tmp_path):
    _, est = plan_of(tmp_path)
    assert est["copy"]["items"] == "at most 4, from @questions"
    assert est["eval_before"]["items"] == "from @mcq"
    assert est["answers"]["items"] == "from @questions" and est["answers"]["generations"] == "2 per item"
    assert est["prefs"]["questions"] == "from @questions"
    assert est["prefs"]["generations"] == "2 per question"
    assert est["dpo"]["examples"] == "from @prefs" and est["dpo"]["steps"] == "2 epoch(s) at batch 4x1"
    assert est["rs"]["examples"] == "from @questions" and est["rs"]["rounds"] == 2
    assert est["open"]["items"] == "at most 5, from @answers"
    assert est["safety"]["items"] == 144  # a bundled sample: counted
    assert est["safety"]["benign_items"] == "from @copy"
    assert est["bias"]["items"] == "from @mcq" and "per item" in est["bias"]["generations"]
    assert not any("unknown" in str(v) for e in est.values() if e for v in e.values())


def test_finished_upstream_outputs_are_counted(tmp_path):
    pipe, _ = plan_of(tmp_path)
    pipe.run(only=["mcq", "questions"])
    est = {p.stage.name: p.estimate for p in pipe.plan()}
    assert isinstance(est["eval_before"]["items"], int) and est["eval_before"]["items"] > 0
    assert est["answers"]["items"] == 8 and est["answers"]["generations"] == 16
    assert est["prefs"]["questions"] == "all"  # the file exists now: no longer "from @questions"
    assert est["copy"]["items"] == 4
    assert est["dpo"]["examples"] == "from @prefs"  # prefs has not run


def test_cli_dry_run_prints_where_from(tmp_path, capsys):
    import yaml

    from meditune.cli import main

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "dry", "stages": STAGES[:4]}), encoding="utf-8")
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "from @mcq" in out and "InputError" not in out and "unknown" not in out
