"""Reward model: a sequence-classification head trained on preference pairs (Bradley-Terry loss via TRL),
with pairwise accuracy on a held-out split; RewardScorer scores (prompt, response) pairs for rs/idpo."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import Field

from meditune.chat import render_chat
from meditune.errors import ConfigError
from meditune.io import write_json
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

log = logging.getLogger(__name__)


class RMStageConfig(TrainOptions):
    """Options of the `rm` stage; the merged reward model is always saved (scorers load it directly)."""

    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    center_rewards_coefficient: float | None = None


class RewardScorer:
    """Scores responses to chat prompts with a saved reward model (higher is better)."""

    def __init__(self, path: str | Path, *, device: str = "auto", system_prompt: str | None = None,
                 batch_size: int = 8, max_length: int = 1024, model: Any = None, tokenizer: Any = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from meditune.models import pick_device

        self.device = pick_device(device)
        if model is None:
            p = Path(path)
            if not (p / "config.json").exists():
                raise ConfigError(f"reward model {p} has no config.json (use the 'merged' output of an rm stage)")
            model = AutoModelForSequenceClassification.from_pretrained(p, use_safetensors=True)
            tokenizer = AutoTokenizer.from_pretrained(p)
        self.model, self.tok = model.to(self.device).eval(), tokenizer
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.system_prompt, self.batch_size, self.max_length = system_prompt, batch_size, max_length

    def texts(self, prompts: list[list[dict[str, str]]], responses: list[str]) -> list[str]:
        """The rendered conversations the reward model reads."""
        return [render_chat(self.tok, [*p, {"role": "assistant", "content": r}], system_prompt=self.system_prompt,
                            add_generation_prompt=False) for p, r in zip(prompts, responses, strict=True)]

    def __call__(self, prompts: list[list[dict[str, str]]], responses: list[str]) -> list[float]:
        """One reward per (prompt messages, response)."""
        import torch

        texts, out = self.texts(prompts, responses), []
        self.tok.padding_side = "right"
        for i in range(0, len(texts), self.batch_size):
            enc = self.tok(texts[i:i + self.batch_size], return_tensors="pt", padding=True, truncation=True,
                           max_length=self.max_length, add_special_tokens=False).to(self.device)
            with torch.no_grad():
                out += self.model(**enc).logits[:, 0].float().cpu().tolist()
        return out


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


def train_rm(cfg: RMStageConfig, ctx: StageContext) -> dict[str, str]:
    """Train the reward model and report held-out pairwise accuracy; returns the stage outputs."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from meditune.models import pick_device, pick_dtype

    s = settings(cfg, ctx.recipe)
    data = cfg.data[0] if isinstance(cfg.data, list) else cfg.data
    recs = load_records(data, PREF_KINDS)
    base_dir, base_spec = base_model_dir(s.model, ctx.stage_dir, s.trust_remote_code)
    tok = AutoTokenizer.from_pretrained(base_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    dev = pick_device(s.device)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1, use_safetensors=True,
                                                               dtype=pick_dtype(s.dtype, dev),
                                                               trust_remote_code=s.trust_remote_code)
    model.config.pad_token_id = tok.pad_token_id
    if cfg.eval_data:
        train_recs, held = recs, load_records(cfg.eval_data, PREF_KINDS)
    else:
        train_recs, held = split_eval(recs, cfg.eval_fraction, s.seed)
    rows = [preference_row(r, tok, s.system_prompt) for r in train_recs]
    args = RewardConfig(**trainer_kwargs(cfg, s, ctx.stage_dir, default_lr=1e-4 if cfg.method == "lora" else 1e-5),
                        max_length=cfg.max_length, center_rewards_coefficient=cfg.center_rewards_coefficient,
                        dataset_num_proc=None)
    curves = CurvesCallback(ctx.stage_dir)
    peft = lora_config(cfg, task_type="SEQ_CLS")
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                            peft_config=peft, callbacks=[curves])
    acc = None
    if held:
        scorer = RewardScorer("", device=dev, system_prompt=s.system_prompt, max_length=cfg.max_length,
                              model=trainer.model, tokenizer=tok)
        before = pairwise_accuracy(scorer, held)["value"]
    outs, summary = train_and_save(trainer, tok, cfg, s, ctx.stage_dir, stage="rm", base_spec=base_spec,
                                   curves=curves, n_train=len(rows), save_merged=True)
    if held:
        scorer.model = trainer.model.eval()
        acc = pairwise_accuracy(scorer, held)
        acc["value_before_training"] = before
        trainer.model.train()
    if is_main_process():
        write_json(ctx.stage_dir / "results.json", {"stage": "rm", "heldout": acc, "train": summary})
    # the merged full reward model is what scorers load, so it is the main output
    main = outs.get("merged", outs["model"])
    return {"model": main, "adapter": outs["model"], "results": str(ctx.stage_dir / "results.json"),
            **{k: v for k, v in outs.items() if k not in ("model", "merged")}}
