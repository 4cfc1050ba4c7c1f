"""Recipe validation: typos name the key and suggest the closest valid one; --set overrides."""

from __future__ import annotations

import pytest
import yaml

from meditune.errors import ConfigError
from meditune.recipe import apply_overrides, load_recipe
from tests.pipeline_stages import register_test_stages


@pytest.fixture(autouse=True)
def _stages():
    register_test_stages()


def write(tmp_path, data) -> str:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


BASE = {"name": "t", "stages": [{"name": "a", "type": "test_count", "value": 1}]}


def test_valid_recipe(tmp_path):
    r = load_recipe(write(tmp_path, BASE))
    assert r.name == "t" and r.stages[0].value == 1 and r.model.spec == "default"


def test_misspelled_top_level_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_recipe(write(tmp_path, {**BASE, "sed": 3}))
    assert "unknown key 'sed'" in str(e.value) and "did you mean 'seed'" in str(e.value)


def test_misspelled_stage_key(tmp_path):
    bad = {"name": "t", "stages": [{"name": "a", "type": "test_count", "valeu": 1}]}
    with pytest.raises(ConfigError) as e:
        load_recipe(write(tmp_path, bad))
    assert "stages[0].valeu" in str(e.value) and "did you mean 'value'" in str(e.value)


def test_unknown_stage_type(tmp_path):
    bad = {"name": "t", "stages": [{"name": "a", "type": "test_cout"}]}
    with pytest.raises(ConfigError, match="unknown stage type 'test_cout'.*did you mean 'test_count'"):
        load_recipe(write(tmp_path, bad))


def test_wrong_type_names_key(tmp_path):
    bad = {"name": "t", "stages": [{"name": "a", "type": "test_count", "value": "many"}]}
    with pytest.raises(ConfigError, match=r"stages\[0\]\.value"):
        load_recipe(write(tmp_path, bad))


def test_duplicate_stage_names(tmp_path):
    bad = {"name": "t", "stages": [{"name": "a", "type": "test_count"}, {"name": "a", "type": "test_count"}]}
    with pytest.raises(ConfigError, match="two stages are named 'a'"):
        load_recipe(write(tmp_path, bad))


def test_invalid_yaml_names_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: t\nstages:\n  - name: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_recipe(p)


def test_overrides(tmp_path):
    r = load_recipe(write(tmp_path, BASE), ["seed=7", "a.value=5", "stages.a.label=x", "model=org/name"])
    assert r.seed == 7 and r.stages[0].value == 5 and r.stages[0].label == "x" and r.model.spec == "org/name"
    data = apply_overrides({"stages": [{"name": "a"}]}, ["a.items=[1, 2]", "a.f=0.5"])
    assert data["stages"][0]["items"] == [1, 2] and data["stages"][0]["f"] == 0.5


def test_override_typo_is_caught(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'value'"):
        load_recipe(write(tmp_path, BASE), ["a.vlaue=3"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_recipe(write(tmp_path, BASE), ["seed"])
