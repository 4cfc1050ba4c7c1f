"""No user-given name becomes a path outside its directory; removals are checked; recipes report every problem
with its line; a run directory's report works from anywhere and fails loudly when an output is missing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from meditune.cli import main
from meditune.errors import ConfigError, InputError
from meditune.io import child, directory_name, is_inside, remove_tree, removed_on_error
from meditune.pipeline import Pipeline
from meditune.recipe import load_recipe, parse_recipe
from meditune.stages import StageContext
from tests.pipeline_stages import register_test_stages

BAD = Path(__file__).parent / "bad_inputs"


@pytest.fixture(autouse=True)
def _stages():
    register_test_stages()


@pytest.mark.parametrize("name", ["/tmp", ".", "..", "../x", "a/b", "", " x", ".hidden", "a b", "é"])
def test_stage_names_are_simple_identifiers(name):
    with pytest.raises(ConfigError, match=r"'stages\[0\]\.name': it names a directory: use letters, digits"):
        parse_recipe({"name": "t", "stages": [{"name": name, "type": "test_count"}]})


@pytest.mark.parametrize("name", ["eval_before", "merged-misled-hot", "mcq2", "A"])
def test_good_stage_names_pass(name):
    assert parse_recipe({"name": "t", "stages": [{"name": name, "type": "test_count"}]}).stages[0].name == name


def test_absolute_stage_name_cannot_delete_anything(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "t", "run_dir": str(tmp_path / "run"),
                                      "stages": [{"name": str(victim), "type": "test_count"}]}))
    with pytest.raises(ConfigError, match="r.yaml:4: 'stages\\[0\\].name'"):
        load_recipe(recipe)
    assert (victim / "precious.txt").read_text() == "keep"


def test_remove_tree_only_inside(tmp_path):
    inner = tmp_path / "run" / "stage"
    inner.mkdir(parents=True)
    (inner / "f").write_text("x")
    for outside in (tmp_path / "run", tmp_path, Path("/"), tmp_path / "run" / ".." / "other"):
        with pytest.raises(ConfigError, match="refusing to remove"):
            remove_tree(outside, inside=tmp_path / "run")
    link = tmp_path / "run" / "link"
    link.symlink_to(tmp_path)  # a symlink pointing out of the run directory is removed as a link only
    remove_tree(link, inside=tmp_path / "run")
    assert tmp_path.is_dir() and not link.exists()
    remove_tree(inner, inside=tmp_path / "run")
    assert not inner.exists() and (tmp_path / "run").is_dir()


def test_stage_paths_and_names_stay_inside(tmp_path):
    ctx = StageContext(run_dir=tmp_path, stage_dir=tmp_path / "s", recipe=None)
    assert ctx.path("out.json") == tmp_path / "s" / "out.json"
    for bad in ("../x", "/etc/passwd", ".."):
        with pytest.raises(ConfigError):
            ctx.path(bad)
    with pytest.raises(ConfigError):
        child(tmp_path, "../escape")
    assert directory_name("gen-1_a") == "gen-1_a"
    with pytest.raises(ValueError):
        directory_name("../a")
    assert is_inside(tmp_path / "a" / "b", tmp_path) and not is_inside(tmp_path, tmp_path)


def test_results_json_cannot_point_samples_outside(tmp_path):
    from meditune.evaluation.results import load_samples

    (tmp_path / "secret.jsonl").write_text('{"id": "x", "metrics": {"acc": 1}}\n')
    res = tmp_path / "eval" / "results.json"
    res.parent.mkdir()
    res.write_text(json.dumps({"results": {"t": {"acc,none": 1.0}}, "meditune": {"samples": "../secret.jsonl"}}))
    with pytest.raises(InputError, match="field 'meditune.samples'"):
        load_samples(res)


def test_removed_on_error_keeps_what_was_there(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    (d / "old").write_text("old")
    with pytest.raises(InputError), removed_on_error(d):
        (d / "new").write_text("new")
        (d / "newdir").mkdir()
        raise InputError("bad row")
    assert sorted(p.name for p in d.iterdir()) == ["old"]
    fresh = tmp_path / "fresh"
    with pytest.raises(ConfigError), removed_on_error(fresh):
        fresh.mkdir()
        raise ConfigError("bad option")
    assert not fresh.exists()
    with pytest.raises(RuntimeError), removed_on_error(d):  # a crash is not bad input: work is kept to resume
        (d / "partial").write_text("p")
        raise RuntimeError("crash")
    assert (d / "partial").exists()


def test_recipe_type_error_names_the_line():
    with pytest.raises(ConfigError) as e:
        load_recipe(BAD / "recipe_seed_abc.yaml")
    assert str(e.value) == (f"{BAD / 'recipe_seed_abc.yaml'}:2: 'seed': Input should be a valid integer, unable to "
                            "parse string as an integer")


def test_recipe_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as e:
        load_recipe(BAD / "recipe_many_problems.yaml")
    src = str(BAD / "recipe_many_problems.yaml")
    assert str(e.value).splitlines() == [
        f"{src}:2: 'name': Field required",
        f"{src}:2: unknown key 'sede'; did you mean 'seed'?",
        f"{src}:3: 'device': Input should be a valid string",
        f"{src}:5: 'stages[0].source': Field required",
        f"{src}:7: unknown key 'stages[0].sorce'; did you mean 'source'?",
    ]


def test_set_override_errors_have_no_misleading_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_recipe(BAD / "recipe_seed_abc.yaml", ["mcq.limit=many"])
    lines = str(e.value).splitlines()
    assert any(ln.endswith("recipe_seed_abc.yaml: 'stages[0].limit': Input should be a valid integer, unable to "
                           "parse string as an integer") for ln in lines)


def _run(tmp_path: Path) -> Path:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "t", "stages": [
        {"name": "a", "type": "test_count", "value": 1},
        {"name": "b", "type": "test_count", "value": 2, "source": "@a"}]}))
    Pipeline(load_recipe(recipe), Path("runs/t")).run()  # a relative run directory, as `meditune run` uses
    return tmp_path / "runs" / "t"


def test_manifests_store_run_relative_paths_and_report_works_from_elsewhere(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    run = _run(work)
    m = json.loads((run / "b" / "manifest.json").read_text())
    assert m["paths"] == "run-relative" and m["outputs"] == {"result": "b/out.json"}
    moved = tmp_path / "elsewhere" / "t"
    shutil.move(str(run), moved)  # a run directory can be moved, and read from any working directory
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(moved)]) == 0
    html = (moved / "report.html").read_text()
    assert "What ran" in html and ">a<" in html and ">b<" in html
    # a moved run still finds its finished stages (b re-runs: its input path, a's output, moved with it)
    plan = Pipeline(load_recipe(tmp_path / "work" / "r.yaml"), moved).plan()
    assert [i.action for i in plan] == ["skip", "run"]


def test_old_manifests_with_working_directory_paths_still_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = _run(tmp_path)
    mpath = run / "a" / "manifest.json"
    m = json.loads(mpath.read_text())
    del m["paths"]
    m["outputs"] = {"result": "runs/t/a/out.json"}  # what manifests held before: relative to the cwd of the run
    mpath.write_text(json.dumps(m))
    from meditune.pipeline import manifest_outputs

    monkeypatch.chdir("/")
    assert manifest_outputs(m, run) == {"result": str(run / "a" / "out.json")}


def test_report_fails_loudly_when_an_output_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = _run(tmp_path)
    (run / "b" / "out.json").unlink()
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "output 'result' of stage 'b' is missing" in err and "Traceback" not in err
