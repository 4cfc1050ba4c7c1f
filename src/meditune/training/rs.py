"""Rejection sampling (ChiMed-GPT): per round, sample k responses per prompt from the current policy, score
them (reward model or any meditune scorer), keep the top-K per prompt and fine-tune on them (SFT)."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field, model_validator

from meditune.errors import ConfigError
from meditune.io import write_json, write_jsonl
from meditune.records import Chat, Message
from meditune.stages import StageContext
from meditune.training.common import settings
from meditune.training.data import load_records
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
from meditune.training.sft import SFTStageConfig, train_sft

log = logging.getLogger(__name__)


class RSStageConfig(SFTStageConfig, RolloutOptions):
    """Options of the `rs` stage (data: prompts as Chat / LongForm / MCQ / Preference / Safety records)."""

    k: int = Field(4, ge=1, description="samples per prompt")
    top_k: int = Field(1, ge=1, description="best samples kept per prompt")
    min_score: float | None = None  # keep only samples scoring at least this

    @model_validator(mode="after")
    def _top_k_le_k(self) -> RSStageConfig:
        if self.top_k > self.k:
            raise ValueError(f"top_k ({self.top_k}) must not exceed k ({self.k})")
        return self


def select_top(rows: list[dict[str, Any]], top_k: int, min_score: float | None, round_no: int) -> list[Chat]:
    """The top_k scored responses of each prompt (ties keep sample order), as Chat records for SFT."""
    out = []
    for r in rows:
        scored = [(s, i) for i, s in enumerate(r["scores"]) if s is not None and (min_score is None or s >= min_score)]
        for s, i in sorted(scored, key=lambda x: (-x[0], x[1]))[:top_k]:
            msgs = [Message(**m) for m in r["messages"]] + [Message(role="assistant", content=r["responses"][i])]
            out.append(Chat(id=f"{r['id']}-r{round_no}-s{i}", messages=msgs,
                            meta={"score": s, "round": round_no, "sample": i}))
    return out


def train_rs(cfg: RSStageConfig, ctx: StageContext, *, score_fn: ScoreFn | None = None,
             backend: Any = None) -> dict[str, str]:
    """Run the rounds; returns the last round's model with the selected samples and per-round results."""
    s = settings(cfg, ctx.recipe)
    datas = cfg.data if isinstance(cfg.data, list) else [cfg.data]
    items = [prompt_item(r) for d in datas for r in load_records(d, PROMPT_KINDS)]
    score_fn = score_fn or make_score_fn(cfg, s.system_prompt, s.device)
    policy, results, selected_all, outs = s.model, [], [], {}
    for rnd in range(1, cfg.rounds + 1):
        rdir = ctx.stage_dir / f"round_{rnd}"
        rows = rollouts(rdir, policy, items, cfg.k, cfg, score_fn, seed=s.seed + rnd, system_prompt=s.system_prompt,
                        device=s.device, dtype=s.dtype, backend=backend)
        chosen = select_top(rows, cfg.top_k, cfg.min_score, rnd)
        if not chosen:
            raise ConfigError(f"round {rnd}: no sample passed selection (min_score={cfg.min_score})")
        if is_main_process():
            write_jsonl(rdir / "selected.jsonl", chosen)
        selected_all += chosen
        last = rnd == cfg.rounds
        # later rounds sample from this round's model, so a LoRA round also writes merged weights
        round_cfg = cfg.model_copy(update={"model": policy,
                                           "save_merged": cfg.save_merged or (cfg.method == "lora" and not last)})
        outs = finished_outputs(rdir) or train_sft(round_cfg, StageContext(ctx.run_dir, rdir, ctx.recipe, ctx.outputs), records=chosen)
        policy = outs.get("merged", outs["model"])
        results.append({"round": rnd, "prompts": len(items), "samples": score_summary(rows),
                        "selected": len(chosen),
                        "selected_mean_score": sum(c.meta["score"] for c in chosen) / len(chosen)})
        log.info("rs round %d: %s", rnd, results[-1])
    if is_main_process():
        write_jsonl(ctx.stage_dir / "selected.jsonl", selected_all)
        write_json(ctx.stage_dir / "results.json", {"stage": "rs", "rounds": results})
    return {"model": outs["model"], **{k: v for k, v in outs.items() if k != "model"},
            "dataset": str(ctx.stage_dir / "selected.jsonl"), "results": str(ctx.stage_dir / "results.json")}
