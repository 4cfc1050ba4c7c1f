"""Rejection sampling (ChiMed-GPT): per round, sample k responses per prompt from the current policy, score
them (reward model or any meditune scorer), keep the top-K per prompt and fine-tune on them (SFT)."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field, model_validator

from meditune.records import Chat, Message
from meditune.stages import StageContext
from meditune.training.rollouts import RolloutOptions, ScoreFn
from meditune.training.rounds import RoundPlan, run_rounds
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

    def describe(chosen: list[Chat]) -> dict[str, Any]:
        mean = sum(c.meta["score"] for c in chosen) / len(chosen) if chosen else None
        return {"selected": len(chosen), "selected_mean_score": mean}

    plan = RoundPlan(stage="rs", samples=cfg.k, describe=describe,
                     select=lambda rows, rnd: select_top(rows, cfg.top_k, cfg.min_score, rnd),
                     nothing_selected=f"round {{round}}: no sample passed selection (min_score={cfg.min_score})",
                     records_file="selected.jsonl", train=train_sft, round_update={})
    return run_rounds(cfg, ctx, plan, score_fn=score_fn, backend=backend)
