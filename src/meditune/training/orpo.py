"""ORPO (odds-ratio preference optimisation, no reference model), as compared in KoMeP.

TRL 1.x moved ORPO to trl.experimental.orpo (older releases exported it from trl); `import_orpo`
(training/trl_options.py) finds it on either path and fails with a clear message otherwise (tests guard this path).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from meditune.stages import StageContext
from meditune.training.common import (
    TrainOptions,
    base_model_dir,
    load_causal_lm,
    lora_config,
    settings,
    trainer_kwargs,
)
from meditune.training.data import PREF_KINDS, load_records, preference_row, split_eval
from meditune.training.outputs import CurvesCallback
from meditune.training.runner import train_and_save
from meditune.training.trl_options import import_orpo, with_trl


class ORPOStageConfig(TrainOptions):
    """Options of the `orpo` stage."""

    trl_config: ClassVar[str] = "ORPOConfig"

    beta: float = Field(0.1, gt=0.0, description="weight of the odds-ratio term (lambda in the ORPO paper)")
    max_completion_length: int | None = None


def train_orpo(cfg: ORPOStageConfig, ctx: StageContext, records: list[Any] | None = None) -> dict[str, str]:
    """Run ORPO; returns the stage outputs."""
    from datasets import Dataset

    orpo_config, orpo_trainer = import_orpo()
    s = settings(cfg, ctx.recipe)
    data = cfg.data[0] if isinstance(cfg.data, list) else cfg.data
    recs = records or load_records(data, PREF_KINDS)
    base_dir, base_spec = base_model_dir(s.model, ctx.stage_dir)
    model, tok = load_causal_lm(base_dir, s)
    rows = [preference_row(r, tok, s.system_prompt) for r in recs]
    if cfg.eval_data:
        train_rows = rows
        eval_rows = [preference_row(r, tok, s.system_prompt) for r in load_records(cfg.eval_data, PREF_KINDS)]
    else:
        train_rows, eval_rows = split_eval(rows, cfg.eval_fraction, s.seed)
    kwargs = trainer_kwargs(cfg, s, ctx.stage_dir, default_lr=8e-6 if cfg.method == "full" else 5e-5,
                            has_eval=bool(eval_rows))
    args = orpo_config(**with_trl(cfg, dict(**kwargs, beta=cfg.beta, max_length=cfg.max_length,
                                            max_completion_length=cfg.max_completion_length, dataset_num_proc=None)))
    curves = CurvesCallback(ctx.stage_dir)
    trainer = orpo_trainer(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                           eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None, processing_class=tok,
                           peft_config=lora_config(cfg), callbacks=[curves])
    outs, _ = train_and_save(trainer, tok, cfg, s, ctx.stage_dir, stage="orpo", base_spec=base_spec,
                             curves=curves, n_train=len(train_rows), n_eval=len(eval_rows))
    return outs
