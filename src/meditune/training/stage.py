"""Registers the training stage types: cpt, sft, dpo, orpo, rm, rs, idpo."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from meditune.stages import StageContext, stage_type
from meditune.training.cpt import CPTStageConfig
from meditune.training.dpo import DPOStageConfig
from meditune.training.idpo import IDPOStageConfig
from meditune.training.orpo import ORPOStageConfig
from meditune.training.rm import RMStageConfig
from meditune.training.rs import RSStageConfig
from meditune.training.sft import SFTStageConfig


def count_examples(data: str | list[str] | None) -> int | None:
    """Non-empty lines of JSONL data files (None when a source spec or not yet produced)."""
    if data is None:
        return 0
    total = 0
    for d in data if isinstance(data, list) else [data]:
        p = Path(d)
        if not p.is_file():
            return None
        with open(p, encoding="utf-8", errors="replace") as f:
            if p.suffix == ".txt":
                total += sum(1 for block in f.read().split("\n\n") if block.strip())
            else:
                total += sum(1 for line in f if line.strip())
    return total


def estimate(cfg: Any, recipe: Any) -> dict[str, Any]:
    """Optimizer steps and examples a training stage will run (per process, world size 1)."""
    m = count_examples(cfg.data)
    if cfg.max_steps and cfg.max_steps > 0:
        steps: int | None = cfg.max_steps
    elif m is None:
        steps = None
    else:
        train = m - (max(1, round(m * cfg.eval_fraction)) if cfg.eval_fraction and not cfg.eval_data else 0)
        steps = math.ceil(math.ceil(train / cfg.batch_size) / cfg.grad_accum * cfg.epochs)
    out: dict[str, Any] = {"steps": steps, "examples": m}
    rounds = getattr(cfg, "rounds", None)
    if isinstance(cfg, (RSStageConfig, IDPOStageConfig)) and m is not None:
        per = cfg.k if isinstance(cfg, RSStageConfig) else cfg.n
        out["generations"] = m * per * rounds
        out["rounds"] = rounds
        if steps is not None and not (cfg.max_steps and cfg.max_steps > 0):
            kept = m * (cfg.top_k if isinstance(cfg, RSStageConfig) else 1)
            out["steps"] = math.ceil(math.ceil(kept / cfg.batch_size) / cfg.grad_accum * cfg.epochs) * rounds
        elif steps is not None:
            out["steps"] = steps * rounds
    return out


@stage_type("cpt", CPTStageConfig, "continued pre-training on raw text, packed", estimate=estimate)
def run_cpt(cfg: CPTStageConfig, ctx: StageContext) -> dict[str, str]:
    from meditune.training.cpt import train_cpt

    return train_cpt(cfg, ctx)


@stage_type("sft", SFTStageConfig, "supervised fine-tuning, loss on assistant turns (LoRA or full)",
            estimate=estimate)
def run_sft(cfg: SFTStageConfig, ctx: StageContext) -> dict[str, str]:
    from meditune.training.sft import train_sft

    return train_sft(cfg, ctx)


@stage_type("dpo", DPOStageConfig, "DPO (LoRA: adapter-off reference; full: precomputed reference); "
            "a list of datasets runs them in sequence", estimate=estimate)
def run_dpo(cfg: DPOStageConfig, ctx: StageContext) -> dict[str, str]:
    from meditune.training.dpo import train_dpo
    from meditune.training.idpo import train_multistage_dpo

    if isinstance(cfg.data, list) and len(cfg.data) > 1:
        return train_multistage_dpo(cfg, ctx)
    return train_dpo(cfg, ctx)


@stage_type("orpo", ORPOStageConfig, "ORPO preference optimisation (no reference model)", estimate=estimate)
def run_orpo(cfg: ORPOStageConfig, ctx: StageContext) -> dict[str, str]:
    from meditune.training.orpo import train_orpo

    return train_orpo(cfg, ctx)


@stage_type("rm", RMStageConfig, "reward model (sequence classification) with held-out pairwise accuracy",
            estimate=estimate)
def run_rm(cfg: RMStageConfig, ctx: StageContext) -> dict[str, str]:
    from meditune.training.rm import train_rm

    return train_rm(cfg, ctx)


@stage_type("rs", RSStageConfig, "rejection sampling: sample k, keep top-K by score, SFT; rounds",
            estimate=estimate)
def run_rs(cfg: RSStageConfig, ctx: StageContext) -> dict[str, str]:
    from meditune.training.rs import train_rs

    return train_rs(cfg, ctx)


@stage_type("idpo", IDPOStageConfig, "iterative DPO: sample n, DPO on best vs worst; rounds", estimate=estimate)
def run_idpo(cfg: IDPOStageConfig, ctx: StageContext) -> dict[str, str]:
    from meditune.training.idpo import train_idpo

    return train_idpo(cfg, ctx)
