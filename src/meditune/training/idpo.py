"""Iterative DPO (Med42-v2 / Snorkel): per round, sample n responses per prompt from the current policy, rank
them with a scorer, and run DPO on best vs worst; and multi-stage DPO (Aloe: general data, then safety data)."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from meditune.errors import ConfigError
from meditune.io import write_json
from meditune.records import Message, Preference
from meditune.stages import StageContext
from meditune.training.common import settings
from meditune.training.dpo import DPOStageConfig, train_dpo
from meditune.training.outputs import is_main_process
from meditune.training.rollouts import RolloutOptions, ScoreFn
from meditune.training.rounds import RoundPlan, run_rounds, train_from

log = logging.getLogger(__name__)


class IDPOStageConfig(DPOStageConfig, RolloutOptions):
    """Options of the `idpo` stage (data: prompts)."""

    rounds: int = Field(2, ge=1)
    n: int = Field(4, ge=2, description="samples per prompt")
    min_margin: float = Field(0.0, ge=0.0, description="best - worst score must exceed this to make a pair")


def best_vs_worst(rows: list[dict[str, Any]], min_margin: float, round_no: int) -> list[Preference]:
    """One pair per prompt: the best-scored sample as chosen, the worst as rejected (ties skipped)."""
    pairs = []
    for r in rows:
        scored = [(s, i) for i, s in enumerate(r["scores"]) if s is not None and r["responses"][i].strip()]
        if len(scored) < 2:
            continue
        best, worst = max(scored, key=lambda x: (x[0], -x[1])), min(scored, key=lambda x: (x[0], x[1]))
        if best[0] - worst[0] <= min_margin or r["responses"][best[1]] == r["responses"][worst[1]]:
            continue
        pairs.append(Preference(id=f"{r['id']}-r{round_no}", prompt=[Message(**m) for m in r["messages"]],
                                chosen=r["responses"][best[1]], rejected=r["responses"][worst[1]],
                                chosen_score=best[0], rejected_score=worst[0],
                                provenance={"round": round_no, "chosen_sample": best[1],
                                            "rejected_sample": worst[1], "method": "idpo best-vs-worst"}))
    return pairs


def train_idpo(cfg: IDPOStageConfig, ctx: StageContext, *, score_fn: ScoreFn | None = None,
               backend: Any = None) -> dict[str, str]:
    """Run the rounds of iterative DPO; returns the last round's model, all pairs and per-round results."""
    plan = RoundPlan(stage="idpo", samples=cfg.n, select=lambda rows, rnd: best_vs_worst(rows, cfg.min_margin, rnd),
                     describe=lambda pairs: {"pairs": len(pairs)},
                     nothing_selected="idpo round {round}: no prompt had samples with different scores; raise n or "
                                      "temperature, or lower min_margin",
                     records_file="pairs.jsonl", train=train_dpo, round_update={"eval_fraction": 0.0})
    return run_rounds(cfg, ctx, plan, score_fn=score_fn, backend=backend)


def train_multistage_dpo(cfg: DPOStageConfig, ctx: StageContext) -> dict[str, str]:
    """DPO on each dataset of cfg.data in order (Aloe: general preferences, then safety), each from the last."""
    if not isinstance(cfg.data, list) or len(cfg.data) < 2:
        raise ConfigError("multi-stage DPO needs a list of at least two datasets in 'data'")
    s = settings(cfg, ctx.recipe)
    policy, parts, outs = s.model.spec, [], {}
    for i, data in enumerate(cfg.data, start=1):
        outs, policy = train_from(train_dpo, cfg, ctx, ctx.stage_dir / f"part_{i}", policy,
                                  last=i == len(cfg.data), update={"data": data})
        parts.append({"part": i, "data": data, "model": outs["model"], "summary": outs["summary"]})
    if is_main_process():
        write_json(ctx.stage_dir / "results.json", {"stage": "dpo", "multi_stage": parts})
    return {"model": outs["model"], **{k: v for k, v in outs.items() if k != "model"},
            "results": str(ctx.stage_dir / "results.json")}
