"""`trl:` pass-through: validated against TRL's config dataclasses when the recipe is read, values reach the
trainer, conflicts with meditune's own options are errors; DPO loss variants and RPO (sigmoid + sft) reach TRL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from meditune.errors import ConfigError
from meditune.recipe import parse_recipe

ROOT = Path(__file__).resolve().parents[1]

# one valid field of each stage's TRL config that meditune does not set itself
STAGE_KEYS = {"sft": "neftune_noise_alpha", "cpt": "eval_packing", "dpo": "use_weighting", "orpo": "disable_dropout",
              "rm": "disable_dropout", "rs": "completion_only_loss", "idpo": "ld_alpha", "grpo": "epsilon_high"}
CONFIG_NAMES = {"sft": "SFTConfig", "cpt": "SFTConfig", "dpo": "DPOConfig", "orpo": "ORPOConfig",
                "rm": "RewardConfig", "rs": "SFTConfig", "idpo": "DPOConfig", "grpo": "GRPOConfig"}


def recipe_with(stage: dict) -> dict:
    return {"name": "r", "stages": [{"name": "s", "data": "x.jsonl", **stage}]}


@pytest.mark.parametrize("stage", sorted(STAGE_KEYS))
def test_every_training_stage_accepts_its_trl_fields(stage):
    recipe = parse_recipe(recipe_with({"type": stage, "trl": {STAGE_KEYS[stage]: 0.5, "optim": "adamw_torch"}}))
    assert recipe.stages[0].trl == {STAGE_KEYS[stage]: 0.5, "optim": "adamw_torch"}
    with pytest.raises(ConfigError) as e:
        parse_recipe(recipe_with({"type": stage, "trl": {"optimm": "adamw_torch"}}))
    assert f"unknown {CONFIG_NAMES[stage]} option 'optimm'" in str(e.value) and "did you mean 'optim'?" in str(e.value)


def test_misspelt_key_error_names_file_key_and_suggestion():
    with pytest.raises(ConfigError) as e:
        parse_recipe(recipe_with({"type": "dpo", "trl": {"los_type": ["ipo"]}}), "recipes/r.yaml")
    msg = str(e.value)
    assert msg.startswith("recipes/r.yaml: 'stages[0].trl': unknown DPOConfig option 'los_type'")
    assert msg.endswith("did you mean 'loss_type'?")


def test_conflicts_and_reserved_keys():
    with pytest.raises(ConfigError, match="trl.beta and the stage option 'beta'"):
        parse_recipe(recipe_with({"type": "dpo", "beta": 0.2, "trl": {"beta": 0.3}}))
    with pytest.raises(ConfigError, match="trl.per_device_train_batch_size and the stage option 'batch_size'"):
        parse_recipe(recipe_with({"type": "sft", "batch_size": 2, "trl": {"per_device_train_batch_size": 8}}))
    with pytest.raises(ConfigError, match="'output_dir' cannot be set"):
        parse_recipe(recipe_with({"type": "sft", "trl": {"output_dir": "/tmp/x"}}))
    with pytest.raises(ConfigError, match="trl.loss_weights and the stage option 'loss_weights'"):
        parse_recipe(recipe_with({"type": "dpo", "loss_weights": [1.0], "trl": {"loss_weights": [1.0]}}))
    # a meditune default (not set explicitly) gives way to the trl: value
    assert parse_recipe(recipe_with({"type": "dpo", "trl": {"beta": 0.3}})).stages[0].trl == {"beta": 0.3}


def test_misspelt_key_exits_2_on_the_command_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nstages:\n  - {name: dpo, type: dpo, data: x.jsonl, trl: {los_type: [ipo]}}\n")
    proc = subprocess.run([sys.executable, "-m", "meditune.cli", "run", str(recipe), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "unknown DPOConfig option 'los_type'" in out and "did you mean 'loss_type'?" in out
    assert "Traceback" not in out


def _dpo_trainer(tmp_path, model_dir, **options):
    from meditune.recipe import Recipe
    from meditune.stages import StageContext
    from meditune.training.common import load_causal_lm, settings
    from meditune.training.dpo import DPOStageConfig, build_dpo_trainer, preference_rows
    from meditune.training.outputs import CurvesCallback
    from meditune.training.toy import toy_preferences

    ctx = StageContext(tmp_path, tmp_path / "dpo", Recipe(name="t", model=str(model_dir)))
    cfg = DPOStageConfig(name="dpo", type="dpo", data="-", batch_size=4, max_length=64, device="cpu", max_steps=1,
                         **options)
    s = settings(cfg, ctx.recipe)
    model, tok = load_causal_lm(str(model_dir), s)
    rows = preference_rows(toy_preferences(4), tok, None)
    return build_dpo_trainer(cfg, s, ctx, model, tok, rows, [], CurvesCallback(tmp_path))


def test_dpo_loss_variant_through_trl_reaches_the_trainer(tmp_path, tiny_model_dir):
    trainer = _dpo_trainer(tmp_path, tiny_model_dir, trl={"loss_type": ["ipo"], "use_weighting": True,
                                                          "beta": 0.3})
    assert trainer.args.loss_type == ["ipo"] and trainer.loss_types == ["ipo"]
    assert trainer.args.use_weighting is True and trainer.beta == 0.3


def test_rpo_with_lora_and_shared_prompt_matches_unpacked_loss(tmp_path, tiny_model_dir):
    trainer = _dpo_trainer(tmp_path, tiny_model_dir, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5])
    assert trainer.args.loss_type == ["sigmoid", "sft"] and trainer.args.loss_weights == [1.0, 0.5]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    forward = trainer.model.get_base_model().forward
    assert forward.meditune_shared_prompt
    calls = forward.packed_calls
    with torch.no_grad():
        packed = trainer.compute_loss(trainer.model, dict(batch))
        assert forward.packed_calls == calls + 1  # the policy pass ran packed
        trainer.model.get_base_model().forward = forward.unpacked  # TRL's own two-row layout
        unpacked = trainer.compute_loss(trainer.model, dict(batch))
        trainer.model.get_base_model().forward = forward
        trainer.loss_types, trainer.loss_weights = ["sigmoid"], [1.0]
        dpo_only = trainer.compute_loss(trainer.model, dict(batch))
    torch.testing.assert_close(packed, unpacked, atol=1e-5, rtol=1e-5)
    # the NLL term of the chosen answers is really there: about 0.5 * ln(vocabulary) for a random model
    assert float(packed - dpo_only) > 0.5 * 5.0


def test_sft_trl_value_reaches_the_config(tmp_path, tiny_model_dir):
    from meditune.recipe import Recipe
    from meditune.stages import StageContext
    from meditune.training.common import load_causal_lm, settings
    from meditune.training.outputs import CurvesCallback
    from meditune.training.sft import SFTStageConfig, build_sft_trainer, sft_rows
    from meditune.training.toy import toy_chats

    ctx = StageContext(tmp_path, tmp_path / "sft", Recipe(name="t", model=str(tiny_model_dir)))
    cfg = SFTStageConfig(name="sft", type="sft", data="-", max_length=64, device="cpu", max_steps=1,
                         trl={"neftune_noise_alpha": 5.0, "learning_rate": 3e-3})
    s = settings(cfg, ctx.recipe)
    model, tok = load_causal_lm(str(tiny_model_dir), s)
    rows = sft_rows(toy_chats(4), tok, None, 64, True)
    trainer = build_sft_trainer(cfg, s, ctx, model, tok, rows, [], CurvesCallback(tmp_path))
    assert trainer.args.neftune_noise_alpha == 5.0 and trainer.args.learning_rate == 3e-3  # trl wins over default


def test_grpo_trl_value_reaches_the_trainer(tmp_path, tiny_model_dir):
    from meditune.recipe import Recipe
    from meditune.records import MCQItem
    from meditune.stages import StageContext
    from meditune.training.common import load_causal_lm, settings
    from meditune.training.grpo import GRPOStageConfig, build_grpo_trainer, prompt_rows
    from meditune.training.outputs import CurvesCallback

    ctx = StageContext(tmp_path, tmp_path / "grpo", Recipe(name="t", model=str(tiny_model_dir)))
    cfg = GRPOStageConfig(name="g", type="grpo", data="-", batch_size=4, num_generations=2, device="cpu",
                          max_completion_length=8, trl={"epsilon_high": 0.28, "loss_type": "dr_grpo"},
                          rewards=[{"type": "correct"}, {"type": "format", "weight": 0.1}])
    s = settings(cfg, ctx.recipe)
    model, tok = load_causal_lm(str(tiny_model_dir), s)
    rows = prompt_rows([MCQItem(id="q", question="Q?", options=["a", "b"], answer=0)] * 2, tok, None, 512)
    trainer = build_grpo_trainer(cfg, s, ctx, model, tok, rows, [], CurvesCallback(tmp_path))
    assert trainer.epsilon_high == 0.28 and trainer.loss_type == "dr_grpo" and trainer.beta == 0.04
    assert trainer.reward_func_names == ["correct", "format"] and trainer.reward_weights.tolist() == pytest.approx(
        [1.0, 0.1])
