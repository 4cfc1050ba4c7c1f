"""The round loop of rejection sampling and iterative DPO, and the model chain they share with multi-stage DPO.

A round samples from the current policy, scores, selects training records (rs: the top-k samples; idpo: best
vs worst pairs), trains on them, and the next round starts from the model it wrote. Every round lives in its own
directory, so a killed stage resumes: finished rounds are reused, rollouts are read back from disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meditune.errors import ConfigError
from meditune.io import write_json, write_jsonl
from meditune.stages import StageContext
from meditune.training.common import TrainOptions, settings
from meditune.training.data import load_records
from meditune.training.outputs import is_main_process
from meditune.training.rollouts import (
    PROMPT_KINDS,
    ScoreFn,
    make_score_fn,
    prompt_item,
    rollouts,
    score_summary,
)
from meditune.training.runner import finished_outputs

log = logging.getLogger(__name__)

# (stage config, context, records or None) -> outputs of a training run (train_sft / train_dpo)
TrainFn = Callable[..., dict[str, str]]


def train_from(train: TrainFn, cfg: TrainOptions, ctx: StageContext, out_dir: Path, policy: str, *, last: bool,
               update: dict[str, Any] | None = None, **kwargs: Any) -> tuple[dict[str, str], str]:
    """Train cfg on top of `policy` in out_dir (or reuse a finished run there); returns (outputs, next policy).

    A LoRA run that is not the last also writes merged weights: the next one samples from them and trains on top.
    """
    merged = cfg.save_merged or (cfg.method == "lora" and not last)
    run_cfg = cfg.model_copy(update={"model": cfg.model.with_spec(policy), "save_merged": merged, **(update or {})})
    outs = finished_outputs(out_dir) or train(run_cfg, StageContext(ctx.run_dir, out_dir, ctx.recipe, ctx.outputs),
                                              **kwargs)
    return outs, outs.get("merged", outs["model"])


@dataclass
class RoundPlan:
    """What makes rs and idpo differ inside the same loop."""

    stage: str  # "rs" / "idpo"
    samples: int  # responses sampled per prompt
    select: Callable[[list[dict[str, Any]], int], list[Any]]  # (scored rollouts, round) -> training records
    describe: Callable[[list[Any]], dict[str, Any]]  # selected records -> this round's result entries
    nothing_selected: str  # error message; {round} is filled in
    records_file: str  # name of the selected records in each round dir and the stage dir
    train: TrainFn
    round_update: dict[str, Any]  # config changes for each round's training run


def run_rounds(cfg: Any, ctx: StageContext, plan: RoundPlan, *, score_fn: ScoreFn | None = None,
               backend: Any = None) -> dict[str, str]:
    """Run cfg.rounds rounds; returns the last round's model, all selected records and per-round results."""
    s = settings(cfg, ctx.recipe)
    datas = cfg.data if isinstance(cfg.data, list) else [cfg.data]
    items = [prompt_item(r) for d in datas for r in load_records(d, PROMPT_KINDS)]
    score_fn = score_fn or make_score_fn(cfg, s.system_prompt, s.model.device)
    policy, results, selected_all, outs = s.model.spec, [], [], {}
    for rnd in range(1, cfg.rounds + 1):
        rdir = ctx.stage_dir / f"round_{rnd}"
        rows = rollouts(rdir, s.model.with_spec(policy), items, plan.samples, cfg, score_fn,
                        seed=s.seed + rnd, system_prompt=s.system_prompt, backend=backend)
        selected = plan.select(rows, rnd)
        results.append({"round": rnd, "prompts": len(items), "samples": score_summary(rows),
                        **plan.describe(selected)})
        if not selected:
            raise ConfigError(plan.nothing_selected.format(round=rnd))
        if is_main_process():
            write_jsonl(rdir / plan.records_file, selected)
        selected_all += selected
        outs, policy = train_from(plan.train, cfg, ctx, rdir, policy, last=rnd == cfg.rounds,
                                  update=plan.round_update, records=selected)
        log.info("%s round %d: %s", plan.stage, rnd, results[-1])
    if is_main_process():
        write_jsonl(ctx.stage_dir / plan.records_file, selected_all)
        write_json(ctx.stage_dir / "results.json", {"stage": plan.stage, "rounds": results})
    return {"model": outs["model"], **{k: v for k, v in outs.items() if k != "model"},
            "dataset": str(ctx.stage_dir / plan.records_file), "results": str(ctx.stage_dir / "results.json")}
