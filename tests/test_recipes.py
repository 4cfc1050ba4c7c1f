"""The bundled recipes: each validates and dry-runs, and each runs end to end at a tiny scale.

The tiny runs swap every `model: default` (the recipe model, generators, judges) for the 2-layer random
`tiny_model_dir` and shrink the work with --set-style overrides (few items, 1-2 training steps, a few generated
tokens). A random model writes gibberish, so the recipes whose preference pairs come from a judge or an
embedding verifier get a scorer that always returns a score (the tiny model as a reward model); the DAHL
scorers themselves are tested in tests/test_scoring_*.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from meditune.errors import ConfigError
from meditune.pipeline import Pipeline, manifest_outputs
from meditune.recipe import apply_overrides, bundled_recipe, load_recipe, parse_recipe
from meditune.stages import registry

RECIPES = ["quickstart", "komep", "med42", "chimed", "aloe", "reasoning"]


def with_model(value: Any, model: str) -> Any:
    """Replace every `model: default` (recipe, stages, generators, judges) by `model`."""
    if isinstance(value, dict):
        return {k: (model if k == "model" and v == "default" else with_model(v, model)) for k, v in value.items()}
    if isinstance(value, list):
        return [with_model(v, model) for v in value]
    return value


def tiny_recipe(name: str, model: Path, overrides: list[str]):
    """A bundled recipe on `model` with --set-style overrides applied."""
    path = bundled_recipe(name)
    data = with_model(yaml.safe_load(path.read_text(encoding="utf-8")), str(model))
    return parse_recipe(apply_overrides(data, overrides), str(path))


def stage_types_of(name: str) -> set[str]:
    data = yaml.safe_load(bundled_recipe(name).read_text(encoding="utf-8"))
    return {s["type"] for s in data["stages"]}


def require_stage_types(name: str) -> None:
    """Skip (naming them) when stage types this recipe needs are not registered in this checkout."""
    missing = sorted(stage_types_of(name) - set(registry()))
    if missing:
        pytest.skip(f"recipe {name!r} needs stage types not registered yet: {', '.join(missing)}")


# ---- validation and dry runs (fast) ----

@pytest.mark.parametrize("name", RECIPES)
def test_recipe_validates_and_dry_runs(name, tmp_path):
    require_stage_types(name)
    recipe = load_recipe(bundled_recipe(name))
    assert recipe.name == name
    assert recipe.model.spec == "default"
    assert recipe.stages[-1].type == "report"
    plan = Pipeline(recipe, tmp_path / name).plan()
    assert [p.stage.name for p in plan] == [s.name for s in recipe.stages]
    assert all(p.action == "run" and p.reason == "not run yet" for p in plan)
    # every stage with an estimator says how much work it is
    types = registry()
    for p in plan:
        if types[p.stage.type].estimate:
            assert p.estimate, p.stage.name
    assert not (tmp_path / name).exists()  # a dry run writes nothing


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_defaults_use_only_bundled_data(name):
    """Recipes run offline out of the box: no benchmark paths, no ../shared, no hub datasets in defaults."""
    text = bundled_recipe(name).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    sources = []
    for s in data["stages"]:
        for key in ("source", "data", "questions", "general_data", "fewshot_data"):
            v = s.get(key)
            sources += v if isinstance(v, list) else [v] if v else []
    assert sources
    for src in sources:
        assert src.startswith(("@", "sample:")), (name, src)
    assert "shared" not in "".join(line.split("#")[0] for line in text.splitlines())


def test_default_run_is_the_quickstart():
    assert bundled_recipe("quickstart").name == "quickstart.yaml"
    q = load_recipe(bundled_recipe("quickstart"))
    types = [s.type for s in q.stages]
    assert types.index("eval_safety") < types.index("prefs") < types.index("dpo") < len(types) - 2
    # the before/after comparisons are only meaningful on the same items with the same protocol
    for kind, same in (("eval_mcqa", ("data", "task", "template", "choices", "chat_template", "shots", "limit")),
                       ("eval_safety", ("data", "benign", "max_new_tokens", "temperature", "classifier", "limit"))):
        before, after = [s for s in q.stages if s.type == kind]
        assert {k: getattr(before, k) for k in same} == {k: getattr(after, k) for k in same}
        assert after.model.spec == "@dpo" and before.model.spec is None
    assert q.stage("dpo").method == "lora"
    # pairs come from the train half, evaluation from the test half of the same sample files
    assert q.stage("prefs").questions == "@safety_train" and q.stage("safety_before").data == "@safety_test"
    assert (q.stage("safety_train").split, q.stage("safety_test").split) == ("train", "test")
    assert q.stage("safety_train").source == q.stage("safety_test").source


def test_overrides_reach_stages_and_typos_are_named():
    r = load_recipe(bundled_recipe("quickstart"), ["safety_train.limit=5", "dpo.beta=0.3", "model=some/model"])
    assert r.stage("safety_train").limit == 5 and r.stage("dpo").beta == 0.3 and r.model.spec == "some/model"
    with pytest.raises(ConfigError, match="did you mean 'beta'"):
        load_recipe(bundled_recipe("quickstart"), ["dpo.betaa=0.3"])


# ---- tiny end-to-end runs ----

TRAIN = ["max_steps=1", "batch_size=2", "max_length=256"]
GEN = ["max_new_tokens=8", "batch_size=8"]
MCQ_EVAL = ["limit=6", "batch_size=8"]


def stage_sets(stage: str, keys: list[str]) -> list[str]:
    return [f"{stage}.{k}" for k in keys]


def reward_scorer(model: Path) -> str:
    """A scorer that scores any text (a random reward head on the tiny model), so pairs always form."""
    return f"{{type: reward, model: {model}, batch_size: 8, max_length: 256}}"


def tiny_prefs(stage: str, model: Path, questions: int = 4) -> list[str]:
    return [f"{stage}.limit={questions}", f"{stage}.collection.max_new_tokens=12",
            f"{stage}.scorer={reward_scorer(model)}", f"{stage}.pairing.margin=0.0"]


def run_twice(recipe, run_dir: Path, caplog) -> dict[str, dict[str, str]]:
    """Run the recipe, check the report, run it again and check that everything is skipped."""
    outputs = Pipeline(recipe, run_dir).run()
    names = [s.name for s in recipe.stages]
    assert list(outputs) == names
    for name in names:
        m = json.loads((run_dir / name / "manifest.json").read_text())
        assert m["status"] == "done", name
        assert m["paths"] == "run-relative", name
        assert all(Path(p).exists() for p in manifest_outputs(m, run_dir).values()), name
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "<svg" in html or "<table" in html
    for name in names:
        assert name in html, f"report does not mention stage {name}"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="meditune.pipeline"):
        again = Pipeline(recipe, run_dir)
        assert again.run() == outputs
    assert again.skipped == names
    assert sum("skip " in r.getMessage() for r in caplog.records) == len(names)
    return outputs


def read_results(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


QUICKSTART_TINY = (["mcq.limit=6", "safety_train.sample=8", "safety_test.sample=6"]
                   + stage_sets("mcq_before", MCQ_EVAL) + stage_sets("mcq_after", MCQ_EVAL)
                   + stage_sets("safety_before", ["max_new_tokens=8"]) + stage_sets("safety_after", ["max_new_tokens=8"])
                   + stage_sets("prefs", ["generators.1.max_new_tokens=8", "generators.2.max_new_tokens=8"])
                   + stage_sets("dpo", TRAIN))


def test_quickstart_runs_tiny(tiny_model_dir, tmp_path, caplog):
    require_stage_types("quickstart")
    recipe = tiny_recipe("quickstart", tiny_model_dir, QUICKSTART_TINY)
    out = run_twice(recipe, tmp_path / "run", caplog)
    before, after = read_results(out["mcq_before"]["results"]), read_results(out["mcq_after"]["results"])
    assert before["meditune"]["n"] == after["meditune"]["n"] == 6
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "safety_before → safety_after" in html and "mcq_before → mcq_after" in html  # paired tables
    # the lead story: the three numbers before and after, each with its paired CI
    story = html.split("<h2>What changed</h2>", 1)[1].split("<h2>", 1)[0]
    for label in ("harmful requests complied with", "benign medical questions refused", "MCQ accuracy"):
        row = story.split(label, 1)[1].split("</tr>", 1)[0]
        assert row.count("class='num'") == 4 and "[" in row, label
    assert Path(out["dpo"]["model"]).is_dir()


@pytest.mark.slow  # several tiny trainings and generations: minutes on a shared CPU
def test_komep_runs_tiny(tiny_model_dir, tmp_path, caplog):
    require_stage_types("komep")
    ov = (["questions.limit=3", "kormed.limit=6"] + tiny_prefs("prefs", tiny_model_dir, 3)
          + [o for s in ("eval_base", "eval_dpo", "eval_orpo") for o in stage_sets(s, MCQ_EVAL)]
          + stage_sets("dpo", TRAIN) + stage_sets("orpo", TRAIN))
    out = run_twice(tiny_recipe("komep", tiny_model_dir, ov), tmp_path / "run", caplog)
    card = json.loads(Path(out["prefs"]["datacard"]).read_text(encoding="utf-8"))
    assert [g["label"] for g in card["generators"]] == ["instruct", "no-instruction"]
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "eval_base → eval_dpo" in html and "eval_base → eval_orpo" in html


@pytest.mark.slow  # several tiny trainings and generations: minutes on a shared CPU
def test_med42_runs_tiny(tiny_model_dir, tmp_path, caplog):
    require_stage_types("med42")
    ov = (["dialogues.limit=4", "answers.limit=2", "general.limit=4", "prefs_data.limit=6", "prompts.limit=2", "mcq.limit=6"]
          + stage_sets("eval_base", MCQ_EVAL) + stage_sets("eval_after", MCQ_EVAL)
          + [o for s in ("safety_base", "safety_after")
             for o in stage_sets(s, ["limit=3", "benign_limit=2", "max_new_tokens=8"])]
          + stage_sets("sft", TRAIN) + stage_sets("rm", TRAIN)
          + stage_sets("idpo", TRAIN + ["n=2", "rounds=2", "max_new_tokens=8", "gen_batch_size=8"]))
    out = run_twice(tiny_recipe("med42", tiny_model_dir, ov), tmp_path / "run", caplog)
    assert Path(out["idpo"]["model"]).is_dir()
    assert (tmp_path / "run" / "idpo" / "round_1").is_dir()  # the second iteration ran


@pytest.mark.slow  # several tiny trainings and generations: minutes on a shared CPU
def test_chimed_runs_tiny(tiny_model_dir, tmp_path, caplog):
    require_stage_types("chimed")
    ov = (["corpus.limit=4", "chats.limit=6", "prefs_data.limit=6", "prompts.limit=2", "mcq.limit=6",
           "qa.limit=2", "ner.limit=2"]
          + stage_sets("cpt", TRAIN) + stage_sets("sft", TRAIN) + stage_sets("rm", TRAIN)
          + stage_sets("rs", TRAIN + ["k=2", "max_new_tokens=8", "gen_batch_size=8"])
          + stage_sets("mcq_base", MCQ_EVAL) + stage_sets("mcq_final", MCQ_EVAL)
          + stage_sets("ner_base", ["max_new_tokens=12"]) + stage_sets("ner_final", ["max_new_tokens=12"])
          + stage_sets("qa_final", ["max_new_tokens=8"])
          + stage_sets("dialogue_final", ["limit=2", "max_new_tokens=8"])
          + stage_sets("bias_final", ["limit=2", "max_new_tokens=4"]))
    out = run_twice(tiny_recipe("chimed", tiny_model_dir, ov), tmp_path / "run", caplog)
    assert Path(out["rs"]["model"]).is_dir()


@pytest.mark.slow  # several tiny trainings and generations: minutes on a shared CPU
def test_aloe_runs_tiny(tiny_model_dir, tmp_path, caplog):
    require_stage_types("aloe")
    medprompt = "{k: 2, runs: 2, max_new_tokens: 8, bank_size: 3, max_retries: 0}"
    ov = (["mcq.limit=10", "mcq.eval_size=3", "chats.limit=6", "general.limit=4", "questions.limit=3",
           "safety_train.sample=4", "safety_test.sample=3"]
          # gibberish never reaches the gold letter: score the tiny run's CoT samples with a reward head
          + stage_sets("cot_sft", TRAIN + ["k=2", "max_new_tokens=8", "gen_batch_size=8", "min_score=null",
                                           f"scorer={reward_scorer(tiny_model_dir)}"])
          + stage_sets("chat_sft", TRAIN) + tiny_prefs("general_prefs", tiny_model_dir, 3)
          + stage_sets("safety_prefs", ["generators.1.max_new_tokens=8", "generators.2.max_new_tokens=8"])
          + stage_sets("dpo", TRAIN)
          + [o for s in ("medprompt_base", "medprompt_merge", "medprompt_final")
             for o in stage_sets(s, [f"strategy_options={medprompt}"])]
          + [o for s in ("safety_base", "safety_final")
             for o in stage_sets(s, ["max_new_tokens=8"])])
    out = run_twice(tiny_recipe("aloe", tiny_model_dir, ov), tmp_path / "run", caplog)
    merge_manifest = json.loads((tmp_path / "run" / "merge" / "manifest.json").read_text())
    assert merge_manifest["config"]["merge_method"] == "dare_ties"
    assert read_results(out["medprompt_final"]["results"])["meditune"]["n"] == 3


def test_reasoning_runs_tiny(tiny_model_dir, tmp_path, caplog, monkeypatch):
    """rationales -> sft -> grpo -> before/after evaluation. A random model never reaches a gold letter, so the
    rationales and the CoT evaluations get a scripted backend that reasons and answers the gold letter; the
    direct evaluation and GRPO (TRL's own generation) run on the tiny model."""
    require_stage_types("reasoning")
    from meditune.data import load_source
    from meditune.generation.base import ScriptedBackend
    from meditune.records import LETTERS

    gold = {r.id: LETTERS[r.answer] for r in load_source("sample:mcq")}

    def scripted(cfg, **kwargs):
        def respond(req, i):
            return f"The findings point one way.\nAnswer: {gold[req.id.removeprefix('bank-').split('#')[0]]}"
        return ScriptedBackend(respond)

    monkeypatch.setattr("meditune.generation.factory.make_backend", scripted)
    cot = "strategy_options={max_new_tokens: 8, max_retries: 0}"
    ov = (["mcq.limit=10", "mcq.eval_size=4", "rationales.max_new_tokens=8", f"cot_before.{cot}",
           f"cot_after.{cot}"] + stage_sets("sft", TRAIN)
          + stage_sets("grpo", ["max_steps=1", "batch_size=4", "num_generations=2", "max_completion_length=8",
                                "max_length=256"]))
    out = run_twice(tiny_recipe("reasoning", tiny_model_dir, ov), tmp_path / "run", caplog)
    kept = read_results(out["rationales"]["results"])["bank"]
    assert kept["attempted"] == kept["kept"] == 6
    assert read_results(out["grpo"]["results"])["train"]["steps"] == 1
    cot_after = read_results(out["cot_after"]["results"])
    assert cot_after["results"]["heldout_cot"]["acc,none"] == 1.0 and cot_after["meditune"]["n"] == 4
    direct = read_results(out["direct_after"]["results"])
    assert "acc_ece,none" in direct["results"]["heldout_direct"]
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "cot_before → cot_after" in html and "direct_before → direct_after" in html
    assert "grpo: rewards, accuracy and parse rate" in html and "grpo: KL to the reference" in html
    assert "reliability (acc)" in html
