"""DPO: LoRA with the adapter-disabled model as reference (no second copy), or full fine-tuning with
reference log-probs precomputed once before training (the reference model is then freed)."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from meditune.stages import StageContext
from meditune.training.common import (
    TrainOptions,
    base_model_dir,
    load_causal_lm,
    lora_config,
    make_dataset,
    settings,
    trainer_kwargs,
)
from meditune.training.data import PREF_KINDS, load_records, preference_row, split_eval
from meditune.training.outputs import CurveLog, CurvesCallback
from meditune.training.runner import train_and_save
from meditune.training.trl_options import with_trl

log = logging.getLogger(__name__)

DPO_LOSSES = {"sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"}


class DPOStageConfig(TrainOptions):
    """Options of the `dpo` stage. A list in `data` runs multi-stage DPO, one dataset after the other."""

    trl_config: ClassVar[str] = "DPOConfig"

    beta: float = Field(0.1, gt=0.0)
    loss_type: str | list[str] = "sigmoid"
    # One weight per loss_type entry (TRL's loss_weights). ["sigmoid", "sft"] with [1.0, a] is RPO: DPO plus an
    # NLL term of weight a on the chosen answers (TRL 1.x's replacement of rpo_alpha); see docs/training.md.
    loss_weights: list[float] | None = None
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    # None: on. With LoRA the reference pass runs once up front with the adapter disabled, so each step is one
    # policy forward+backward; with full fine-tuning it means no second model in memory while training.
    precompute_ref: bool | None = None
    # each pair runs as one row `prompt + chosen + rejected` (exact; see training/shared_prompt.py): the prompt is
    # computed once instead of twice, which saves activation memory and time in proportion to its length
    share_prompt: bool = True
    # A DPO step holds two answers per prompt. Recomputing every 3rd decoder layer's activations in the backward
    # keeps a LoRA DPO step within ~1.25x the memory of a LoRA SFT step of the same batch (docs/training.md)
    activation_checkpointing: bool = True
    checkpoint_every: int = Field(3, ge=1)

    @field_validator("loss_type")
    @classmethod
    def _known_loss(cls, v: str | list[str]) -> str | list[str]:
        bad = [x for x in ([v] if isinstance(v, str) else v) if x not in DPO_LOSSES]
        if bad:
            raise ValueError(f"unknown DPO loss_type {bad}; one of {sorted(DPO_LOSSES)}")
        return v

    @model_validator(mode="after")
    def _weights_match(self) -> DPOStageConfig:
        n = 1 if isinstance(self.loss_type, str) else len(self.loss_type)
        if self.loss_weights is not None and len(self.loss_weights) != n:
            raise ValueError(f"loss_weights has {len(self.loss_weights)} entries; loss_type has {n}")
        return self


def preference_rows(records: list[Any], tokenizer: Any, system_prompt: str | None) -> list[dict[str, Any]]:
    """TRL conversational preference rows."""
    return [preference_row(r, tokenizer, system_prompt) for r in records]


def build_dpo_trainer(cfg: DPOStageConfig, s: Any, ctx: StageContext, model: Any, tok: Any,
                      train_rows: list[dict], eval_rows: list[dict], curves: CurveLog):
    """A TRL DPOTrainer; never builds a second full model (LoRA: adapter off; full: precomputed reference)."""
    from trl import DPOConfig, DPOTrainer

    from meditune.training.shared_prompt import shared_prompt_dpo_trainer

    precompute = True if cfg.precompute_ref is None else cfg.precompute_ref
    args = DPOConfig(**with_trl(cfg, dict(
        **trainer_kwargs(cfg, s, ctx.stage_dir, default_lr=5e-5 if cfg.method == "lora" else 5e-7,
                         has_eval=bool(eval_rows)),
        beta=cfg.beta, loss_type=[cfg.loss_type] if isinstance(cfg.loss_type, str) else cfg.loss_type,
        loss_weights=cfg.loss_weights, label_smoothing=cfg.label_smoothing, max_length=cfg.max_length,
        precompute_ref_log_probs=precompute, dataset_num_proc=None)))
    ref_model = None
    if cfg.method == "full" and not precompute:
        # the one case that needs a reference copy: full fine-tune without precomputation (asked for explicitly)
        from meditune.training.common import load_causal_lm as _load

        ref_model, _ = _load(str(model.name_or_path), s)
        ref_model.eval().requires_grad_(False)
    trainer_class = shared_prompt_dpo_trainer() if cfg.share_prompt else DPOTrainer
    return trainer_class(model=model, ref_model=ref_model, args=args,
                         train_dataset=make_dataset(train_rows, ctx.stage_dir, "train"),
                         eval_dataset=make_dataset(eval_rows, ctx.stage_dir, "eval") if eval_rows else None,
                         processing_class=tok, peft_config=lora_config(cfg), callbacks=[curves])


def train_dpo(cfg: DPOStageConfig, ctx: StageContext, records: list[Any] | None = None,
              model_spec: str | None = None, save_merged: bool | None = None) -> dict[str, str]:
    """Run DPO on one dataset (or the given records); returns the stage outputs."""
    s = settings(cfg, ctx.recipe)
    if model_spec:
        s.model = s.model.with_spec(model_spec)
    data = cfg.data[0] if isinstance(cfg.data, list) else cfg.data
    recs = records if records is not None else load_records(data, PREF_KINDS)
    base_dir, base_spec = base_model_dir(s.model, ctx.stage_dir)
    model, tok = load_causal_lm(base_dir, s)
    rows = preference_rows(recs, tok, s.system_prompt)
    if cfg.eval_data:
        train_rows, eval_rows = rows, preference_rows(load_records(cfg.eval_data, PREF_KINDS), tok, s.system_prompt)
    else:
        train_rows, eval_rows = split_eval(rows, cfg.eval_fraction, s.seed)
    curves = CurvesCallback(ctx.stage_dir)
    trainer = build_dpo_trainer(cfg, s, ctx, model, tok, train_rows, eval_rows, curves)
    outs, _ = train_and_save(trainer, tok, cfg, s, ctx.stage_dir, stage=cfg.type, base_spec=base_spec,
                             curves=curves, n_train=len(train_rows), n_eval=len(eval_rows), save_merged=save_merged)
    return outs
