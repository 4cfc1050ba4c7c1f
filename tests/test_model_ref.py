"""The model reference: nested in code, flat or nested on input, flat (as before it was nested) on output."""

from __future__ import annotations

import pytest

from meditune.errors import ConfigError
from meditune.evaluation.mcqa import MCQAOptions
from meditune.generation.base import BackendConfig
from meditune.model_ref import ModelRef
from meditune.recipe import Recipe, config_from, parse_recipe, yaml_lines
from meditune.scoring.registry import RewardConfig
from meditune.stages import apply_recipe_defaults, registry, upstream_refs

# MCQAOptions' canonical dump, written out: the keys, defaults and order manifests had before the nesting (plus
# `engine`, added later)
MCQA_FLAT = {
    "model": "org/m", "data": "d.jsonl", "task": None, "template": None, "shots": 0, "fewshot_data": None,
    "chat_template": False, "system_prompt": None, "mode": None, "choices": None, "per_token": False,
    "strategy": "direct", "strategy_options": {}, "limit": None, "batch_size": 16, "max_batch_tokens": None,
    "engine": "auto", "max_length": None, "max_new_tokens": 32, "stop": None, "device": "cpu", "dtype": "auto",
    "trust_remote_code": False, "seed": 0,
}


def test_a_nested_reference_dumps_to_the_flat_keys_in_their_old_order():
    cfg = MCQAOptions.model_validate({"data": "d.jsonl", "model": {"spec": "org/m", "device": "cpu"}})
    assert cfg.model == ModelRef(spec="org/m", device="cpu", dtype="auto", trust_remote_code=False)
    dumped = cfg.model_dump(mode="json")
    assert dumped == MCQA_FLAT and list(dumped) == list(MCQA_FLAT)
    assert cfg.model_dump(mode="json", exclude_unset=True) == {"model": "org/m", "data": "d.jsonl", "device": "cpu"}


@pytest.mark.parametrize("cls,base,defaults", [
    (BackendConfig, {}, {"model": "default", "device": "auto", "dtype": "auto", "trust_remote_code": False}),
    (Recipe, {"name": "r"}, {"model": "default", "device": "auto", "dtype": "auto", "trust_remote_code": False}),
    ("sft", {"name": "s", "type": "sft", "data": "d"},
     {"model": None, "device": None, "dtype": None, "trust_remote_code": None}),
    ("generate", {"name": "g", "type": "generate", "data": "d"},
     {"model": None, "device": None, "dtype": None, "trust_remote_code": None}),
])
def test_flat_and_nested_inputs_give_equal_configs_and_equal_flat_dumps(cls, base, defaults):
    cls = registry()[cls].config if isinstance(cls, str) else cls
    flat = cls.model_validate({**base, "model": "@sft", "device": "cuda:1", "dtype": "bf16",
                               "trust_remote_code": True})
    nested = cls.model_validate({**base, "model": {"spec": "@sft", "device": "cuda:1", "dtype": "bf16",
                                                   "trust_remote_code": True}})
    kwargs = cls(**base, model="@sft", device="cuda:1", dtype="bf16", trust_remote_code=True)
    assert flat == nested == kwargs
    assert flat.model_dump(mode="json") == nested.model_dump(mode="json")
    dumped = flat.model_dump(mode="json")
    assert {k: dumped[k] for k in defaults} == {"model": "@sft", "device": "cuda:1", "dtype": "bf16",
                                                 "trust_remote_code": True}
    assert "spec" not in dumped and upstream_refs(dumped) == ["sft"]  # "@stage" stays visible to the pipeline
    unset = cls.model_validate(base).model_dump(mode="json")
    assert {k: unset[k] for k in defaults} == defaults


def test_a_key_given_flat_and_nested_is_an_error_naming_it():
    text = "name: r\nstages:\n  - name: e\n    type: eval_mcqa\n    data: d.jsonl\n    device: cpu\n" \
           "    model: {spec: m, device: cuda}\n"
    import yaml

    with pytest.raises(ConfigError, match=r"^r.yaml: 'stages\[0\]': 'device' is given twice: as 'device' and as "
                                          r"'model.device'; keep one$"):
        parse_recipe(yaml.safe_load(text), "r.yaml", yaml_lines(text))


def test_a_bad_device_or_dtype_is_one_line_naming_the_key_as_written():
    import yaml

    flat = "name: r\nstages:\n  - name: e\n    type: eval_mcqa\n    data: d.jsonl\n    device: gpu\n"
    with pytest.raises(ConfigError) as e:
        parse_recipe(yaml.safe_load(flat), "r.yaml", yaml_lines(flat))
    assert str(e.value) == "r.yaml:6: 'stages[0].device': unknown device 'gpu': use auto, cpu, cuda, cuda:N, mps " \
                           "or xpu"
    nested = "name: r\nmodel:\n  spec: m\n  dtype: half\n"
    with pytest.raises(ConfigError) as e:
        parse_recipe(yaml.safe_load(nested), "r.yaml", yaml_lines(nested))
    assert str(e.value) == "r.yaml:4: 'model.dtype': unknown dtype 'half': use auto, float32, bfloat16 or float16"
    with pytest.raises(ConfigError, match=r"^--device: .*unknown device 'gpu'"):
        config_from(MCQAOptions, fields={"data": "d", "device": "gpu"})
    with pytest.raises(ConfigError, match=r"'model': this config takes no 'dtype' \(it takes model, device\)$"):
        config_from(RewardConfig, fields={}, sets=["model={spec: rm, dtype: float32}"])
    for unset in ([], ["model=null"]):
        with pytest.raises(ConfigError, match="^command line: 'model': Field required$"):  # as before the nesting
            config_from(RewardConfig, fields={}, sets=unset)


def test_unset_settings_take_the_recipes_after_the_pipelines_round_trip():
    recipe = Recipe(name="r", model="org/big", device="cuda", dtype="bf16", trust_remote_code=True)
    stage = registry()["eval_mcqa"].config(name="e", type="eval_mcqa", data="d", device="cpu")
    again = type(stage).model_validate(stage.model_dump(mode="json", exclude_unset=True))  # as the pipeline does
    applied = apply_recipe_defaults(again, recipe)
    assert applied.model == ModelRef(spec="org/big", device="cpu", dtype="bf16", trust_remote_code=True)
    assert apply_recipe_defaults(applied, recipe) == applied
    # None (flat or nested) is "the recipe's", even where the config's own default is not None
    for none in ({"model": None}, {"model": {"device": None}}, {"device": None}):
        cfg = MCQAOptions.model_validate({"data": "d", **none})
        assert cfg.model.device == "auto" and "device" not in cfg.model.model_fields_set
