"""The factory, the vLLM request mapping (against a fake vllm module) and the `generate` stage."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest

from meditune.errors import ConfigError
from meditune.generation.base import BackendConfig, GenerationRequest, SamplingParams
from meditune.generation.factory import backend_config, make_backend


@dataclass
class FakeCompletion:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str


@dataclass
class FakeOutput:
    prompt_token_ids: list[int]
    outputs: list[FakeCompletion] = field(default_factory=list)


def fake_vllm(tokenizer) -> types.ModuleType:
    mod = types.ModuleType("vllm")
    mod.calls = []

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class LLM:
        def __init__(self, model, **kw):
            mod.calls.append(("init", model, kw))

        def get_tokenizer(self):
            return tokenizer

        def generate(self, prompts, params, use_tqdm=True, **kw):
            mod.calls.append(("generate", prompts, [p.kw for p in params], kw))
            outs = []
            for prompt, p in zip(prompts, params, strict=True):
                comps = [FakeCompletion(i, f"answer {i}. tail", [1] * (3 + i), "length" if i else "stop")
                         for i in reversed(range(p.kw["n"]))]  # out of order on purpose
                outs.append(FakeOutput(list(range(len(prompt.split()))), comps))
            return outs

    mod.SamplingParams, mod.LLM = SamplingParams, LLM
    return mod


def test_vllm_backend_maps_requests_and_outputs(tiny_model_dir, monkeypatch):
    from meditune.models import load_tokenizer

    fake = fake_vllm(load_tokenizer(str(tiny_model_dir)))
    monkeypatch.setitem(sys.modules, "vllm", fake)
    be = make_backend(BackendConfig(backend="vllm", model=str(tiny_model_dir), dtype="bfloat16"))
    reqs = [GenerationRequest("a", [{"role": "user", "content": "hi"}],
                              SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=5, n=2, seed=3, stop=("\n",))),
            GenerationRequest("b", prompt="The liver", params=SamplingParams())]
    out = be.generate(reqs)
    init, gen = fake.calls
    assert init[1] == str(tiny_model_dir) and init[2]["dtype"] == "bfloat16" and init[2]["trust_remote_code"] is False
    assert gen[1][1] == "The liver" and "<|im_start|>user\nhi" in gen[1][0] and "SmolLM" not in gen[1][0]
    assert gen[2][0] == {"n": 2, "temperature": 0.7, "top_p": 0.9, "max_tokens": 5, "seed": 3, "stop": ["\n"]}
    assert gen[2][1]["stop"] is None
    assert [g.index for g in out[0]] == [0, 1]
    assert out[0][1].finish_reason == "length" and out[0][1].completion_tokens == 4
    assert out[1][0].text == "answer 0. tail" and out[1][0].prompt_tokens == 2


def test_vllm_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(ConfigError, match=r"meditune\[vllm\]"):
        make_backend(BackendConfig(backend="vllm"))


def test_backend_config_coercion():
    assert backend_config("default").model.spec == "default"
    assert backend_config({"backend": "openai", "model": "gpt-4o"}).backend == "openai"
    with pytest.raises(ConfigError, match="'batch_sz'"):
        backend_config({"batch_sz": 3})


def test_generate_stage_runs_and_inherits_recipe_defaults(tiny_model_dir, tmp_path):
    from meditune.generation.stage import GenerateStageConfig, backend_config_of, run_generate
    from meditune.io import read_json, read_jsonl, write_jsonl
    from meditune.recipe import parse_recipe
    from meditune.stages import StageContext, registry

    assert "generate" in registry()
    data = tmp_path / "items.jsonl"
    write_jsonl(data, [{"id": "m1", "question": "Which organ makes insulin?", "options": ["Liver", "Pancreas"],
                        "answer": 1},
                       {"id": "m2", "question": "Which vitamin is made in skin?", "options": ["D", "C"], "answer": 0}])
    recipe = parse_recipe({"name": "t", "model": str(tiny_model_dir), "seed": 4, "system_prompt": "Be brief.",
                           "stages": [{"name": "gen", "type": "generate", "data": str(data), "n": 2,
                                       "temperature": 0.8, "max_new_tokens": 4, "device": "cpu"}]})
    cfg = type(recipe.stages[0]).model_validate(recipe.stages[0].model_dump())  # as the pipeline re-validates
    assert isinstance(cfg, GenerateStageConfig)
    bc = backend_config_of(cfg, recipe)
    assert bc.model.spec == str(tiny_model_dir) and bc.system_prompt == "Be brief." and bc.model.device == "cpu"
    assert bc.model.dtype == "auto" and bc.model.trust_remote_code is False
    assert backend_config_of(cfg.model_copy(update={"system_prompt": ""}), recipe).system_prompt is None
    est = registry()["generate"].estimate(cfg, recipe)
    assert est["items"] == 2 and est["generations"] == 4
    ctx = StageContext(run_dir=tmp_path / "run", stage_dir=tmp_path / "run" / "gen", recipe=recipe)
    outs = run_generate(cfg, ctx)
    rows = read_jsonl(outs["generations"])
    assert [r["id"] for r in rows] == ["m1", "m2"] and all(len(r["generations"]) == 2 for r in rows)
    assert rows[0]["params"]["seed"] == 4
    assert read_json(outs["summary"])["generated"] == 2
    again = run_generate(cfg, StageContext(run_dir=tmp_path / "run", stage_dir=tmp_path / "run" / "gen2",
                                           recipe=recipe))  # same run: answered from the run's cache
    assert read_json(again["summary"])["cached"] == 2
    assert read_jsonl(again["generations"]) == rows
    with pytest.raises(ConfigError, match="unknown key 'stages\\[0\\].temprature'"):
        parse_recipe({"name": "t", "stages": [{"name": "g", "type": "generate", "data": "x", "temprature": 1}]})
