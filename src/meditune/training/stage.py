"""Registers the training stage types: cpt, sft, dpo, orpo, rm, rs, idpo, grpo, and rationales (SFT data)."""

from __future__ import annotations

import math
from typing import Any

from meditune.stages import StageContext, stage_type, upstream_count
from meditune.training.cpt import CPTStageConfig, train_cpt
from meditune.training.data import planned_steps
from meditune.training.dpo import DPOStageConfig, train_dpo
from meditune.training.grpo import GRPOStageConfig, train_grpo
from meditune.training.grpo import estimate as grpo_estimate
from meditune.training.idpo import IDPOStageConfig, train_idpo, train_multistage_dpo
from meditune.training.orpo import ORPOStageConfig, train_orpo
from meditune.training.rationales import RationalesStageConfig, run_rationales
from meditune.training.rationales import estimate as rationales_estimate
from meditune.training.rm import RMStageConfig, train_rm
from meditune.training.rs import RSStageConfig, train_rs
from meditune.training.sft import SFTStageConfig, train_sft


def estimate(cfg: Any, recipe: Any) -> dict[str, Any]:
    """Optimizer steps and examples a training stage will run (per process, world size 1); for data an earlier
    stage will write, where it comes from."""
    src = upstream_count(cfg.data)
    if src is not None:
        per = f"{cfg.epochs:g} epoch(s) at batch {cfg.batch_size}x{cfg.grad_accum}"
        out: dict[str, Any] = {"examples": src, "steps": cfg.max_steps if cfg.max_steps > 0 else per}
        if isinstance(cfg, (RSStageConfig, IDPOStageConfig)):
            out["rounds"] = cfg.rounds
        return out
    m, steps = planned_steps(cfg, lambda n: math.ceil(n / cfg.batch_size) / cfg.grad_accum)
    out = {"steps": steps, "examples": m}
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


def run_dpo(cfg: DPOStageConfig, ctx: StageContext) -> dict[str, str]:
    """DPO on one dataset, or on each of a list in sequence (multi-stage DPO)."""
    if isinstance(cfg.data, list) and len(cfg.data) > 1:
        return train_multistage_dpo(cfg, ctx)
    return train_dpo(cfg, ctx)


# stage type -> (config, run, description)
STAGES = {
    "cpt": (CPTStageConfig, train_cpt, "continued pre-training on raw text, packed"),
    "sft": (SFTStageConfig, train_sft, "supervised fine-tuning, loss on assistant turns (LoRA or full)"),
    "dpo": (DPOStageConfig, run_dpo, "DPO (LoRA: adapter-off reference; full: precomputed reference); a list of "
            "datasets runs them in sequence"),
    "orpo": (ORPOStageConfig, train_orpo, "ORPO preference optimisation (no reference model)"),
    "rm": (RMStageConfig, train_rm, "reward model (sequence classification) with held-out pairwise accuracy"),
    "rs": (RSStageConfig, train_rs, "rejection sampling: sample k, keep top-K by score, SFT; rounds"),
    "idpo": (IDPOStageConfig, train_idpo, "iterative DPO: sample n, DPO on best vs worst; rounds"),
    "grpo": (GRPOStageConfig, train_grpo, "GRPO on MCQ prompts: reasoning then 'Answer: X', rewards from meditune "
             "scorers (LoRA or full; vLLM optional)"),
    "rationales": (RationalesStageConfig, run_rationales, "the model's own chain-of-thought on MCQs, kept when "
                   "correct, as SFT chats"),
}
# stage types whose work is not "examples / batch" (the others use `estimate` above)
ESTIMATES = {"grpo": grpo_estimate, "rationales": rationales_estimate}
# one process each, rank 0 only, until they learn to split across ranks (docs/scaleout.md)
SINGLE_RANK = {"grpo", "rationales"}
for _type, (_config, _run, _description) in STAGES.items():
    # the others: DDP / split rollouts
    stage_type(_type, _config, _description, estimate=ESTIMATES.get(_type, estimate),
               all_ranks=_type not in SINGLE_RANK)(_run)
