"""Train a prepared TRL trainer, resume from checkpoints, and save weights, card and summary."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from meditune.cost import count_tokens
from meditune.io import write_json
from meditune.memory import training_allocator
from meditune.training.common import Settings, TrainOptions, last_checkpoint
from meditune.training.outputs import CurveLog, is_main_process, save_model, write_model_card

log = logging.getLogger(__name__)


def train_and_save(trainer: Any, tokenizer: Any, cfg: TrainOptions, s: Settings, out_dir: Path, *,
                   stage: str, base_spec: str, curves: CurveLog, n_train: int, n_eval: int = 0,
                   extra_metrics: dict[str, Any] | None = None, save_merged: bool | None = None,
                   card_extra: str = "") -> tuple[dict[str, str], dict[str, Any]]:
    """Run trainer.train (resuming a killed run), then save; returns (outputs, summary)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # CurvesCallback logs instead of raw dict prints
    resume = last_checkpoint(out_dir)
    if resume:
        log.info("resuming from %s", resume)
    t0 = time.time()
    with training_allocator():  # freed step buffers stay in the heap while training (meditune.memory)
        result = trainer.train(resume_from_checkpoint=resume)
    wall = time.time() - t0
    tokens = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)  # all ranks, non-padding
    count_tokens("trained", tokens)
    metrics: dict[str, Any] = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    losses = curves.losses("loss")
    if losses:
        metrics["first_loss"], metrics["last_loss"] = losses[0], losses[-1]
    if n_eval:
        with training_allocator():
            metrics.update({k: v for k, v in trainer.evaluate().items() if isinstance(v, (int, float))})
    metrics.update(extra_metrics or {})
    summary = {"stage": stage, "base": base_spec, "method": cfg.method, "train_examples": n_train,
               "eval_examples": n_eval, "steps": trainer.state.global_step, "world_size": trainer.args.world_size,
               "tokens": tokens, "wall_s": round(wall, 2), "s_per_step": round(wall / max(1, trainer.state.global_step), 4),
               "metrics": metrics}
    lora = cfg.method == "lora"
    merged = cfg.save_merged if save_merged is None else save_merged
    outs = {"model": str(out_dir / "model")}
    if lora and merged:
        outs["merged"] = str(out_dir / "merged")
    if is_main_process():
        outs = save_model(trainer.model, tokenizer, out_dir, base_spec=base_spec, lora=lora, save_merged=merged)
        hp = {k: v for k, v in cfg.model_dump().items() if k not in ("name", "type", "data", "model")}
        for d in outs.values():
            write_model_card(Path(d), stage=stage, base_spec=base_spec, method=cfg.method if d == outs["model"]
                             else "full", data=cfg.data, hyperparameters=hp, metrics=metrics, extra=card_extra)
        write_json(out_dir / "train_summary.json", summary)
    trainer.accelerator.wait_for_everyone()
    outs["summary"] = str(out_dir / "train_summary.json")
    outs["curves"] = str(out_dir / "curves.csv")
    return outs, summary


def finished_outputs(out_dir: Path) -> dict[str, str] | None:
    """The outputs of a training run that already completed in out_dir (for resuming multi-round stages)."""
    if not (out_dir / "train_summary.json").exists() or not (out_dir / "model").is_dir():
        return None
    outs = {"model": str(out_dir / "model")}
    if (out_dir / "merged").is_dir():
        outs["merged"] = str(out_dir / "merged")
    outs["summary"] = str(out_dir / "train_summary.json")
    outs["curves"] = str(out_dir / "curves.csv")
    return outs
