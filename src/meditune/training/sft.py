"""Supervised fine-tuning: chat template, loss on assistant tokens only, packing, system prompt, data mixing."""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field

from meditune.errors import ConfigError
from meditune.stages import StageContext
from meditune.training.common import (
    TrainOptions,
    base_model_dir,
    load_causal_lm,
    lora_config,
    settings,
    trainer_kwargs,
)
from meditune.training.data import (
    SFT_KINDS,
    load_records,
    mix_general,
    record_messages,
    split_eval,
    tokenize_chat,
)
from meditune.training.outputs import CurveLog, CurvesCallback
from meditune.training.runner import train_and_save
from meditune.training.trl_options import with_trl

log = logging.getLogger(__name__)


class SFTStageConfig(TrainOptions):
    """Options of the `sft` stage."""

    assistant_only_loss: bool = True  # loss on assistant turns only (system/user tokens masked)
    packing: bool = False
    packing_strategy: Literal["bfd", "bfd_split", "wrapped"] = "bfd"
    general_data: str | None = None  # general-domain chats mixed in (Med42-v2: 26.5 %)
    general_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of the final mix from general_data")


def sft_rows(records: list[Any], tokenizer: Any, system_prompt: str | None, max_length: int,
             assistant_only: bool) -> list[dict[str, list[int]]]:
    """Token rows with assistant masks; rows whose assistant part was cut away by max_length are dropped."""
    rows, dropped = [], 0
    for rec in records:
        row = tokenize_chat(tokenizer, record_messages(rec), system_prompt, max_length)
        if not assistant_only:
            row["assistant_masks"] = [1] * len(row["input_ids"])
        if 1 not in row["assistant_masks"]:
            dropped += 1
            continue
        rows.append(row)
    if dropped:
        log.warning("dropped %d of %d examples whose assistant turn lies beyond max_length", dropped, len(records))
    if not rows:
        raise ConfigError("no SFT example keeps an assistant turn within max_length; raise max_length")
    return rows


def load_sft_records(cfg: SFTStageConfig, seed: int, records: list[Any] | None = None) -> list[Any]:
    """The stage's records (or the given ones), with general data mixed in at general_ratio."""
    datas = cfg.data if isinstance(cfg.data, list) else [cfg.data]
    recs = records if records is not None else [r for d in datas for r in load_records(d, SFT_KINDS)]
    if cfg.general_data and cfg.general_ratio > 0:
        recs = mix_general(recs, load_records(cfg.general_data, SFT_KINDS), cfg.general_ratio, seed)
    elif cfg.general_ratio > 0:
        raise ConfigError("general_ratio is set but general_data is not")
    return recs


def build_sft_trainer(cfg: SFTStageConfig, s: Any, ctx: StageContext, model: Any, tok: Any,
                      train_rows: list[dict], eval_rows: list[dict], curves: CurveLog):
    """A TRL SFTTrainer over pre-tokenized rows whose assistant_masks become the loss mask."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**with_trl(cfg, dict(
        **trainer_kwargs(cfg, s, ctx.stage_dir, default_lr=2e-4 if cfg.method == "lora" else 2e-5,
                         has_eval=bool(eval_rows)),
        max_length=cfg.max_length, packing=cfg.packing, packing_strategy=cfg.packing_strategy, dataset_num_proc=None)))
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                      eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
                      processing_class=tok, peft_config=lora_config(cfg), callbacks=[curves])


def train_sft(cfg: SFTStageConfig, ctx: StageContext, records: list[Any] | None = None) -> dict[str, str]:
    """Run SFT (records may be given directly, e.g. by rejection sampling); returns the stage outputs."""
    s = settings(cfg, ctx.recipe)
    recs = load_sft_records(cfg, s.seed, records)
    base_dir, base_spec = base_model_dir(s.model, ctx.stage_dir)
    model, tok = load_causal_lm(base_dir, s)
    rows = sft_rows(recs, tok, s.system_prompt, cfg.max_length, cfg.assistant_only_loss)
    if cfg.eval_data:
        train_rows = rows
        eval_rows = sft_rows(load_records(cfg.eval_data, SFT_KINDS), tok, s.system_prompt, cfg.max_length,
                             cfg.assistant_only_loss)
    else:
        train_rows, eval_rows = split_eval(rows, cfg.eval_fraction, s.seed)
    curves = CurvesCallback(ctx.stage_dir)
    trainer = build_sft_trainer(cfg, s, ctx, model, tok, train_rows, eval_rows, curves)
    outs, _ = train_and_save(trainer, tok, cfg, s, ctx.stage_dir, stage="sft", base_spec=base_spec,
                             curves=curves, n_train=len(train_rows), n_eval=len(eval_rows))
    return outs
