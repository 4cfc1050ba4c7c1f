"""Iterative DPO (Med42-v2 / Snorkel): per round, sample n responses per prompt from the current policy, rank
them with a scorer, and run DPO on best vs worst; and multi-stage DPO (Aloe: general data, then safety data)."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from meditune.errors import ConfigError
from meditune.io import write_json, write_jsonl
from meditune.records import Message, Preference
from meditune.stages import StageContext
from meditune.training.common import settings
from meditune.training.data import load_records
from meditune.training.dpo import DPOStageConfig, train_dpo
from meditune.training.outputs import is_main_process
from meditune.training.rollouts import (
    PROMPT_KINDS,
    RolloutOptions,
    ScoreFn,
    make_score_fn,
    prompt_item,
    rollouts,
    score_summary,
)
from meditune.training.runner import finished_outputs

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


def _next_policy(outs: dict[str, str]) -> str:
    return outs.get("merged", outs["model"])


def train_idpo(cfg: IDPOStageConfig, ctx: StageContext, *, score_fn: ScoreFn | None = None,
               backend: Any = None) -> dict[str, str]:
    """Run the rounds of iterative DPO; returns the last round's model, all pairs and per-round results."""
    s = settings(cfg, ctx.recipe)
    datas = cfg.data if isinstance(cfg.data, list) else [cfg.data]
    items = [prompt_item(r) for d in datas for r in load_records(d, PROMPT_KINDS)]
    score_fn = score_fn or make_score_fn(cfg, s.system_prompt, s.device)
    policy, results, pairs_all, outs = s.model, [], [], {}
    for rnd in range(1, cfg.rounds + 1):
        rdir = ctx.stage_dir / f"round_{rnd}"
        rows = rollouts(rdir, policy, items, cfg.n, cfg, score_fn, seed=s.seed + rnd, system_prompt=s.system_prompt,
                        device=s.device, dtype=s.dtype, backend=backend)
        pairs = best_vs_worst(rows, cfg.min_margin, rnd)
        summary = {"round": rnd, "prompts": len(items), "samples": score_summary(rows), "pairs": len(pairs)}
        results.append(summary)
        if not pairs:
            raise ConfigError(f"idpo round {rnd}: no prompt had samples with different scores; raise n or "
                              "temperature, or lower min_margin")
        if is_main_process():
            write_jsonl(rdir / "pairs.jsonl", pairs)
        pairs_all += pairs
        last = rnd == cfg.rounds
        round_cfg = cfg.model_copy(update={"model": policy, "eval_fraction": 0.0,
                                           "save_merged": cfg.save_merged or (cfg.method == "lora" and not last)})
        outs = finished_outputs(rdir) or train_dpo(round_cfg, StageContext(ctx.run_dir, rdir, ctx.recipe, ctx.outputs), records=pairs)
        policy = _next_policy(outs)
        log.info("idpo round %d: %s", rnd, summary)
    if is_main_process():
        write_jsonl(ctx.stage_dir / "pairs.jsonl", pairs_all)
        write_json(ctx.stage_dir / "results.json", {"stage": "idpo", "rounds": results})
    return {"model": outs["model"], **{k: v for k, v in outs.items() if k != "model"},
            "dataset": str(ctx.stage_dir / "pairs.jsonl"), "results": str(ctx.stage_dir / "results.json")}


def train_multistage_dpo(cfg: DPOStageConfig, ctx: StageContext) -> dict[str, str]:
    """DPO on each dataset of cfg.data in order (Aloe: general preferences, then safety), each from the last."""
    if not isinstance(cfg.data, list) or len(cfg.data) < 2:
        raise ConfigError("multi-stage DPO needs a list of at least two datasets in 'data'")
    s = settings(cfg, ctx.recipe)
    policy, parts, outs = s.model, [], {}
    for i, data in enumerate(cfg.data, start=1):
        last = i == len(cfg.data)
        part_cfg = cfg.model_copy(update={"model": policy, "data": data,
                                          "save_merged": cfg.save_merged or (cfg.method == "lora" and not last)})
        pdir = ctx.stage_dir / f"part_{i}"
        outs = finished_outputs(pdir) or train_dpo(part_cfg, StageContext(ctx.run_dir, pdir, ctx.recipe,
                                                                           ctx.outputs))
        parts.append({"part": i, "data": data, "model": outs["model"], "summary": outs["summary"]})
        policy = _next_policy(outs)
    if is_main_process():
        write_json(ctx.stage_dir / "results.json", {"stage": "dpo", "multi_stage": parts})
    return {"model": outs["model"], **{k: v for k, v in outs.items() if k != "model"},
            "results": str(ctx.stage_dir / "results.json")}
