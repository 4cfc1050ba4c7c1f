"""Continued pre-training on raw medical text (ChiMed-GPT style), packed into fixed-length blocks."""

from __future__ import annotations

from typing import Literal

from meditune.stages import StageContext
from meditune.training.common import (
    TrainOptions,
    base_model_dir,
    load_causal_lm,
    lora_config,
    settings,
    trainer_kwargs,
)
from meditune.training.data import corpus_texts, split_eval
from meditune.training.outputs import CurvesCallback
from meditune.training.runner import train_and_save
from meditune.training.trl_options import with_trl


class CPTStageConfig(TrainOptions):
    """Options of the `cpt` stage (data: a .txt file, a directory of .txt files, or JSONL with 'text')."""

    method: Literal["lora", "full"] = "full"
    packing: bool = True
    packing_strategy: Literal["bfd", "bfd_split", "wrapped"] = "bfd_split"  # long documents split, none lost


def corpus_list(data: str | list[str]) -> list[str]:
    """All documents of one or several corpora."""
    return [t for d in (data if isinstance(data, list) else [data]) for t in corpus_texts(d)]


def train_cpt(cfg: CPTStageConfig, ctx: StageContext) -> dict[str, str]:
    """Run continued pre-training; returns the stage outputs."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    s = settings(cfg, ctx.recipe)
    texts = corpus_list(cfg.data)
    base_dir, base_spec = base_model_dir(s.model, ctx.stage_dir)
    model, tok = load_causal_lm(base_dir, s)
    train, held = (texts, corpus_list(cfg.eval_data)) if cfg.eval_data else split_eval(texts, cfg.eval_fraction,
                                                                                      s.seed)
    args = SFTConfig(**with_trl(cfg, dict(
        **trainer_kwargs(cfg, s, ctx.stage_dir, default_lr=2e-4 if cfg.method == "lora" else 2e-5,
                         has_eval=bool(held)),
        max_length=cfg.max_length, packing=cfg.packing, packing_strategy=cfg.packing_strategy,
        dataset_text_field="text", dataset_num_proc=None)))
    curves = CurvesCallback(ctx.stage_dir)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([{"text": t} for t in train]),
                         eval_dataset=Dataset.from_list([{"text": t} for t in held]) if held else None,
                         processing_class=tok, peft_config=lora_config(cfg), callbacks=[curves])
    outs, _ = train_and_save(trainer, tok, cfg, s, ctx.stage_dir, stage="cpt", base_spec=base_spec,
                             curves=curves, n_train=len(train), n_eval=len(held))
    return outs
