"""GRPO: reward functions on fixed completions, config checks, the estimate, and short runs on the tiny model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from meditune.errors import ConfigError
from meditune.records import MCQItem, write_records
from meditune.training.mcq_reasoning import (
    RewardSpec,
    correct_reward,
    format_reward,
    format_score,
    reasoning_messages,
    reward_functions,
)

COMPLETIONS = [
    "The patient has gout.\nAnswer: B",  # correct, final, reasoned
    "Answer: A",  # wrong letter, no reasoning
    "I am not sure.",  # no answer
    "Answer: Ceftriaxone",  # a word, not a letter
    "First, the rash.\nAnswer: (B).",  # correct, final with brackets and a full stop
    "Answer: B. Because the joint is swollen.",  # correct, not final
    "Reasoning here.\nAnswer: E",  # not an option of a 4-option item
]


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def test_correct_reward_uses_the_cot_parser():
    n = len(COMPLETIONS)
    got = correct_reward([None] * n, COMPLETIONS, gold=[1] * n, n_options=[4] * n)
    assert got == [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert correct_reward([None], [conv("So.\nAnswer: C")], gold=[2], n_options=[4]) == [1.0]  # conversational


def test_format_reward_by_hand():
    n = len(COMPLETIONS)
    assert format_reward([None] * n, COMPLETIONS, n_options=[4] * n) == [1.0, 0.5, 0.0, 0.0, 1.0, 0.5, 0.0]
    assert format_score("**Answer:** D", 4) == 0.5 and format_score("Thus.\n**Answer: D**", 4) == 1.0


def test_scorer_reward_and_names_and_weights():
    specs = [RewardSpec(type="correct"), RewardSpec(type="format", weight=0.2),
             RewardSpec(type="scorer", weight=0.5, scorer={"type": "answer"}),
             RewardSpec(type="scorer", scorer={"type": "answer"})]
    funcs, weights = reward_functions(specs)
    assert [f.__name__ for f in funcs] == ["correct", "format", "scorer_answer", "scorer_answer_2"]
    assert weights == [1.0, 0.2, 0.5, 1.0]
    cols = dict(id=["q1", "q1"], question=["Which?", "Which?"], options=[["a", "b"], ["a", "b"]], gold=[1, 1],
                n_options=[2, 2])
    # the answer scorer also reads a leading letter; an empty answer is unscorable (None)
    assert funcs[2](None, [conv("B. because"), conv("")], **cols) == [1.0, None]
    logged = []
    funcs[0](None, [conv("x\nAnswer: B"), conv("nothing")], log_metric=lambda k, v: logged.append((k, v)), **cols)
    assert logged == [("parse_rate", 0.5)]  # the first reward function logs the parse rate


def test_reward_spec_errors():
    with pytest.raises(ValueError, match="needs 'scorer'"):
        RewardSpec(type="scorer")
    with pytest.raises(ConfigError, match="rewards.scorer"):
        RewardSpec(type="scorer", scorer={"type": "nope"})


def test_reasoning_prompt_is_the_cot_evaluation_prompt():
    from meditune.evaluation.strategies.cot import cot_messages

    item = MCQItem(id="q", question="Which drug?", options=["a", "b", "c"], answer=0)
    assert reasoning_messages(item) == cot_messages(item)
    assert "Answer: X" in reasoning_messages(item)[-1]["content"]


def test_config_checks_and_estimate(tmp_path):
    from meditune.recipe import parse_recipe
    from meditune.training.grpo import GRPOStageConfig, estimate

    with pytest.raises(ConfigError, match="multiple of num_generations"):
        parse_recipe({"name": "r", "stages": [{"name": "g", "type": "grpo", "data": "x", "batch_size": 3}]})
    data = tmp_path / "mcq.jsonl"
    write_records(data, [MCQItem(id=f"q{i}", question="Q?", options=["a", "b"], answer=0) for i in range(10)])
    cfg = GRPOStageConfig(name="g", type="grpo", data=str(data), batch_size=8, grad_accum=1, num_generations=4)
    assert estimate(cfg, None) == {"steps": 5, "examples": 10, "generations": 40, "prompts_per_step": 2}
    cfg = GRPOStageConfig(name="g", type="grpo", data=str(data))  # defaults: 4 x 2 completions, 4 per prompt
    assert estimate(cfg, None)["steps"] == 5 and estimate(cfg, None)["prompts_per_step"] == 2
    cfg = GRPOStageConfig(name="g", type="grpo", data=str(data), batch_size=4, grad_accum=2, max_steps=3)
    assert estimate(cfg, None)["generations"] == 24


@pytest.fixture(scope="module")
def mcq_file(tmp_path_factory) -> Path:
    from meditune.data import load_source

    items = [r for r in load_source("sample:mcq") if r.language == "en"][:8]
    path = tmp_path_factory.mktemp("grpo") / "mcq.jsonl"
    write_records(path, items)
    return path


def test_grpo_lora_run_writes_reward_kl_length_and_parse_curves(tmp_path, tiny_model_dir, mcq_file):
    from meditune.recipe import Recipe
    from meditune.stages import StageContext
    from meditune.training.grpo import GRPOStageConfig, train_grpo

    cfg = GRPOStageConfig(name="grpo", type="grpo", data=str(mcq_file), max_steps=2, batch_size=4,
                          num_generations=2, max_completion_length=12, max_length=512, device="cpu",
                          learning_rate=1e-3, trl={"epsilon_high": 0.28})
    outs = train_grpo(cfg, StageContext(tmp_path, tmp_path / "grpo", Recipe(name="t", model=str(tiny_model_dir))))
    with open(Path(outs["curves"])) as f:
        rows = [r for r in csv.DictReader(f) if r.get("reward")]
    assert len(rows) == 2
    for key in ("reward", "rewards/correct/mean", "rewards/format/mean", "kl", "completions/mean_length",
                "parse_rate", "loss"):
        assert rows[-1][key] != "", key
    assert 0 < float(rows[0]["completions/mean_length"]) <= 12
    res = json.loads(Path(outs["results"]).read_text())
    assert res["curves"]["reward"]["steps"] == 2 and res["train"]["steps"] == 2 and res["train"]["s_per_step"] > 0
    assert (Path(outs["model"]) / "adapter_model.safetensors").exists()
    assert json.loads((Path(outs["model"]) / "meditune_base.json").read_text())["base"] == str(tiny_model_dir)


def test_grpo_full_fine_tune_runs(tmp_path, tiny_model_dir, mcq_file):
    from meditune.recipe import Recipe
    from meditune.stages import StageContext
    from meditune.training.grpo import GRPOStageConfig, train_grpo

    cfg = GRPOStageConfig(name="grpo", type="grpo", data=str(mcq_file), method="full", max_steps=1, batch_size=2,
                          num_generations=2, max_completion_length=8, max_length=512, device="cpu")
    outs = train_grpo(cfg, StageContext(tmp_path, tmp_path / "grpo", Recipe(name="t", model=str(tiny_model_dir))))
    assert (Path(outs["model"]) / "model.safetensors").exists()
