"""Reward model: a sequence-classification head trained on preference pairs (Bradley-Terry loss via TRL),
with pairwise accuracy on a held-out split (scored by meditune.scoring.reward.RewardScorer, the one reward
scorer, which rs/idpo also use)."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from pydantic import Field

from meditune.io import write_json
from meditune.scoring.reward import RewardScorer
from meditune.stages import StageContext
from meditune.stats import wilson_ci
from meditune.training.common import (
    TrainOptions,
    base_model_dir,
    lora_config,
    settings,
    trainer_kwargs,
)
from meditune.training.data import PREF_KINDS, load_records, preference_row, split_eval
from meditune.training.outputs import CurvesCallback, is_main_process
from meditune.training.runner import train_and_save
from meditune.training.trl_options import with_trl

log = logging.getLogger(__name__)


class RMStageConfig(TrainOptions):
    """Options of the `rm` stage; the merged reward model is always saved (scorers load it directly)."""

    trl_config: ClassVar[str] = "RewardConfig"

    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    center_rewards_coefficient: float | None = None


def pairwise_accuracy(scorer: RewardScorer, records: list[Any]) -> dict[str, Any]:
    """Share of held-out pairs where the chosen answer outscores the rejected one, with a Wilson 95 % CI."""
    prompts = [[m.model_dump() for m in r.prompt] for r in records]
    chosen = scorer(prompts, [r.chosen for r in records])
    rejected = scorer(prompts, [r.rejected for r in records])
    wins = sum(c > rj for c, rj in zip(chosen, rejected, strict=True))
    lo, hi = wilson_ci(wins, len(records))
    return {"metric": "pairwise_accuracy", "value": wins / len(records), "n": len(records), "ci95": [lo, hi],
            "protocol": "reward(chosen) > reward(rejected) on held-out preference pairs; Wilson 95% CI",
            "mean_margin": sum(c - rj for c, rj in zip(chosen, rejected, strict=True)) / len(records)}


def _scorer(model: Any, tok: Any, system_prompt: str | None, max_length: int) -> RewardScorer:
    """The reward scorer over the model being trained (in memory, eval mode)."""
    return RewardScorer("(training)", system_prompt=system_prompt, max_length=max_length,
                        loaded=(model.eval(), tok))


def train_rm(cfg: RMStageConfig, ctx: StageContext) -> dict[str, str]:
    """Train the reward model and report held-out pairwise accuracy; returns the stage outputs."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from meditune.models import pick_device, pick_dtype, set_pad_token

    s = settings(cfg, ctx.recipe)
    data = cfg.data[0] if isinstance(cfg.data, list) else cfg.data
    recs = load_records(data, PREF_KINDS)
    base_dir, base_spec = base_model_dir(s.model, ctx.stage_dir)
    tok = AutoTokenizer.from_pretrained(base_dir)
    dev = pick_device(s.model.device)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1, use_safetensors=True,
                                                               dtype=pick_dtype(s.model.dtype, dev),
                                                               trust_remote_code=s.model.trust_remote_code)
    set_pad_token(tok, model)
    if cfg.eval_data:
        train_recs, held = recs, load_records(cfg.eval_data, PREF_KINDS)
    else:
        train_recs, held = split_eval(recs, cfg.eval_fraction, s.seed)
    rows = [preference_row(r, tok, s.system_prompt) for r in train_recs]
    args = RewardConfig(**with_trl(cfg, dict(
        **trainer_kwargs(cfg, s, ctx.stage_dir, default_lr=1e-4 if cfg.method == "lora" else 1e-5),
        max_length=cfg.max_length, center_rewards_coefficient=cfg.center_rewards_coefficient, dataset_num_proc=None)))
    curves = CurvesCallback(ctx.stage_dir)
    peft = lora_config(cfg, task_type="SEQ_CLS")
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                            peft_config=peft, callbacks=[curves])
    acc = None
    if held:
        before = pairwise_accuracy(_scorer(trainer.model.to(dev), tok, s.system_prompt, cfg.max_length),
                                   held)["value"]
    outs, summary = train_and_save(trainer, tok, cfg, s, ctx.stage_dir, stage="rm", base_spec=base_spec,
                                   curves=curves, n_train=len(rows), save_merged=True)
    if held:
        acc = pairwise_accuracy(_scorer(trainer.model, tok, s.system_prompt, cfg.max_length), held)
        acc["value_before_training"] = before
        trainer.model.train()
    if is_main_process():
        write_json(ctx.stage_dir / "results.json", {"stage": "rm", "heldout": acc, "train": summary})
    # the merged full reward model is what scorers load, so it is the main output
    main = outs.get("merged", outs["model"])
    return {"model": main, "adapter": outs["model"], "results": str(ctx.stage_dir / "results.json"),
            **{k: v for k, v in outs.items() if k not in ("model", "merged")}}
