"""Run directories: manifests, skip of unchanged stages, re-run on change, --force, resume after a crash."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from meditune.cli import main
from meditune.errors import ConfigError
from meditune.pipeline import Pipeline
from meditune.recipe import load_recipe
from tests.pipeline_stages import RUNS, register_test_stages


@pytest.fixture(autouse=True)
def _stages():
    register_test_stages()
    RUNS.clear()


def recipe(tmp_path, stages, **top):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "t", "run_dir": str(tmp_path / "run"), **top, "stages": stages}))
    return p


TWO = [{"name": "a", "type": "test_count", "value": 1},
       {"name": "b", "type": "test_count", "value": 10, "source": "@a"}]


def test_second_run_skips_and_manifest_is_complete(tmp_path):
    rec = load_recipe(recipe(tmp_path, TWO))
    outs = Pipeline(rec).run()
    assert json.loads(open(outs["b"]["result"]).read())["value"] == 11
    m = json.loads((tmp_path / "run" / "b" / "manifest.json").read_text())
    assert m["status"] == "done" and m["config"]["source"] == outs["a"]["result"]
    assert {"python", "meditune", "torch", "transformers"} <= set(m["versions"])
    assert m["inputs"] and m["started"] and m["finished"] and m["outputs_hash"]
    plan = Pipeline(load_recipe(recipe(tmp_path, TWO))).plan()
    assert [i.action for i in plan] == ["skip", "skip"]
    Pipeline(load_recipe(recipe(tmp_path, TWO))).run()
    assert RUNS == {"a": 1, "b": 1}


def test_changed_config_reruns_downstream(tmp_path):
    Pipeline(load_recipe(recipe(tmp_path, TWO))).run()
    changed = [dict(TWO[0], value=2), TWO[1]]
    plan = Pipeline(load_recipe(recipe(tmp_path, changed))).plan()
    assert plan[0].action == "run" and plan[0].reason == "config or inputs changed"
    outs = Pipeline(load_recipe(recipe(tmp_path, changed))).run()
    assert RUNS == {"a": 2, "b": 2}  # b's input (a's output) changed, so b re-ran too
    assert json.loads(open(outs["b"]["result"]).read())["value"] == 12


def test_recipe_wide_setting_change_reruns(tmp_path):
    Pipeline(load_recipe(recipe(tmp_path, TWO))).run()
    Pipeline(load_recipe(recipe(tmp_path, TWO), ["seed=3"])).run()
    assert RUNS == {"a": 2, "b": 2}


def test_recipe_batch_size_change_reruns_and_null_is_unset(tmp_path):
    Pipeline(load_recipe(recipe(tmp_path, TWO))).run()
    assert [i.action for i in Pipeline(load_recipe(recipe(tmp_path, TWO), ["batch_size=null"])).plan()] == \
        ["skip", "skip"]
    assert [i.action for i in Pipeline(load_recipe(recipe(tmp_path, TWO), ["batch_size=4"])).plan()] == \
        ["run", "run"]


def test_force_only_and_from(tmp_path):
    Pipeline(load_recipe(recipe(tmp_path, TWO))).run()
    Pipeline(load_recipe(recipe(tmp_path, TWO))).run(force=["b"])
    assert RUNS == {"a": 1, "b": 2}
    Pipeline(load_recipe(recipe(tmp_path, TWO))).run(only=["a"], force=["a"])
    assert RUNS == {"a": 2, "b": 2}
    Pipeline(load_recipe(recipe(tmp_path, TWO))).run(from_stage="b")
    assert RUNS == {"a": 2, "b": 3}
    with pytest.raises(ConfigError, match="no stage named 'c'"):
        Pipeline(load_recipe(recipe(tmp_path, TWO))).plan(only=["c"])


def test_failed_stage_resumes_in_place(tmp_path):
    stages = [{"name": "r", "type": "test_resume", "items": 6, "crash_at": 3}]
    with pytest.raises(RuntimeError, match="simulated crash"):
        Pipeline(load_recipe(recipe(tmp_path, stages))).run()
    m = json.loads((tmp_path / "run" / "r" / "manifest.json").read_text())
    assert m["status"] == "failed" and "simulated crash" in m["error"]
    assert Pipeline(load_recipe(recipe(tmp_path, stages))).plan()[0].action == "resume"
    outs = Pipeline(load_recipe(recipe(tmp_path, stages))).run()
    # items 0-2 were kept from the crashed attempt; nothing lost, nothing duplicated
    assert open(outs["r"]["items"]).read().split() == [str(i) for i in range(6)]


def test_forced_stage_starts_clean(tmp_path):
    stages = [{"name": "a", "type": "test_count", "value": 1, "fail_first": True}]
    with pytest.raises(RuntimeError):
        Pipeline(load_recipe(recipe(tmp_path, stages))).run()
    Pipeline(load_recipe(recipe(tmp_path, stages))).run()  # resumes: marker kept, succeeds
    assert RUNS["a"] == 2
    with pytest.raises(RuntimeError):  # --force wipes the dir, so the planned first failure happens again
        Pipeline(load_recipe(recipe(tmp_path, stages))).run(force=["a"])


def test_bad_references(tmp_path):
    later = [{"name": "a", "type": "test_count", "source": "@b"}, {"name": "b", "type": "test_count"}]
    with pytest.raises(ConfigError, match="comes later"):
        Pipeline(load_recipe(recipe(tmp_path, later)))
    missing = [{"name": "a", "type": "test_count", "source": "@nope"}]
    with pytest.raises(ConfigError, match="not a stage"):
        Pipeline(load_recipe(recipe(tmp_path, missing)))


def test_input_file_change_reruns(tmp_path):
    src = tmp_path / "in.json"
    src.write_text('{"value": 5}')
    stages = [{"name": "a", "type": "test_count", "source": str(src)}]
    Pipeline(load_recipe(recipe(tmp_path, stages))).run()
    Pipeline(load_recipe(recipe(tmp_path, stages))).run()
    assert RUNS["a"] == 1
    src.write_text('{"value": 6}')
    Pipeline(load_recipe(recipe(tmp_path, stages))).run()
    assert RUNS["a"] == 2


def test_cli_run_twice_says_skipped(tmp_path, capsys):
    p = recipe(tmp_path, TWO)
    assert main(["run", str(p)]) == 0
    assert main(["run", str(p)]) == 0
    out = capsys.readouterr().out
    assert "skipped (finished, unchanged): a, b" in out
    assert (tmp_path / "run" / "run.log").read_text().count("skip a") == 1


def test_cli_dry_run_prints_plan(tmp_path, capsys):
    assert main(["run", str(recipe(tmp_path, TWO)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "items=10" in out and not (tmp_path / "run" / "a").exists()


def test_cli_typo_exits_2_without_traceback(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: t\nsed: 1\nstages: []\n")
    r = subprocess.run([sys.executable, "-m", "meditune.cli", "run", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "unknown key 'sed'" in r.stderr and "did you mean 'seed'" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_loader_spec_input_change_reruns(tmp_path):
    src = tmp_path / "in.json"
    src.write_text('{"value": 5}')
    stages = [{"name": "a", "type": "test_count", "label": f"medqa_us:{src}"}]
    Pipeline(load_recipe(recipe(tmp_path, stages))).run()
    m = json.loads((tmp_path / "run" / "a" / "manifest.json").read_text())
    assert f"medqa_us:{src}" in m["inputs"]
    src.write_text('{"value": 6}')
    Pipeline(load_recipe(recipe(tmp_path, stages))).run()
    assert RUNS["a"] == 2


def test_stage_sees_which_keys_the_recipe_set(tmp_path):
    seen = {}
    from meditune.stages import REGISTRY

    original = REGISTRY["test_count"].run

    def spy(cfg, ctx):
        seen["fields_set"] = set(cfg.model_fields_set)
        return original(cfg, ctx)

    REGISTRY["test_count"].run = spy
    try:
        Pipeline(load_recipe(recipe(tmp_path, [{"name": "a", "type": "test_count", "value": 2}]))).run()
    finally:
        REGISTRY["test_count"].run = original
    assert seen["fields_set"] == {"name", "type", "value"}
