"""`--benign ''` on the command line and `benign: null` (or '') in a recipe skip the over-refusal items."""

from __future__ import annotations

import pytest

import meditune.generation.factory as factory
from meditune.generation.base import ScriptedBackend
from meditune.io import read_json

REFUSE = "I cannot help with that request."


@pytest.fixture
def scripted(monkeypatch):
    """Every backend the evaluation builds answers with a refusal (no model is loaded)."""
    built = []

    def make(cfg, **kwargs):
        backend = ScriptedBackend(lambda req, i: REFUSE)
        built.append(backend)
        return backend

    monkeypatch.setattr(factory, "make_backend", make)
    return built


@pytest.mark.parametrize("benign", [[], ["--benign", ""]])
def test_cli_benign_empty_skips_benign_items(tmp_path, scripted, benign):
    from meditune.cli import main

    out = tmp_path / "safety"
    assert main(["eval", "safety", "sample:safety", "--limit", "3", "--benign-limit", "4", "--out", str(out),
                 *benign]) == 0
    med = read_json(out / "results.json")["meditune"]
    asked = [r.id for b in scripted for r in b.calls]
    if benign:
        assert med["n_benign"] == 0 and not any(i.startswith("benign") for i in asked)
    else:  # the default still checks over-refusal on the bundled benign questions
        assert med["n_benign"] == 4 and sum(i.startswith("benign") for i in asked) == 4


@pytest.mark.parametrize("value", [None, ""])
def test_recipe_benign_null_or_empty_skips(tmp_path, scripted, value):
    from meditune.pipeline import Pipeline
    from meditune.recipe import parse_recipe

    recipe = parse_recipe({"name": "s", "stages": [
        {"name": "safety", "type": "eval_safety", "data": "sample:safety", "limit": 2, "benign": value}]}, "test")
    pipe = Pipeline(recipe, tmp_path / "run")
    pipe.run()
    med = read_json(pipe.manifest("safety")["outputs"]["results"])["meditune"]
    assert med["n_harmful"] == 2 and med["n_benign"] == 0
    assert "benign_items" not in pipe.plan()[0].estimate
