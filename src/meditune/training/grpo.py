"""GRPO: reinforcement learning with verifiable rewards on multiple-choice questions (TRL's GRPOTrainer).

Each step samples `num_generations` completions per prompt (the model reasons, then answers "Answer: X"),
scores them with the stage's rewards (training/mcq_reasoning.py) and updates the policy on the group-normalised
advantages, with a KL penalty to the starting model (`beta`). Generation runs through TRL: `model.generate` on
CPU (and by default on GPU), or vLLM with `use_vllm: true` (`vllm_mode: colocate` shares the training GPU,
`server` talks to `trl vllm-serve`). LoRA: the reference for the KL term is the model with the adapter disabled.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from meditune.chat import with_system
from meditune.errors import ConfigError
from meditune.io import write_json
from meditune.records import MCQItem
from meditune.stages import StageContext
from meditune.stats import bootstrap_ci
from meditune.training.common import (
    TrainOptions,
    base_model_dir,
    load_causal_lm,
    lora_config,
    make_dataset,
    settings,
    trainer_kwargs,
)
from meditune.training.data import load_records, planned_steps, split_eval
from meditune.training.mcq_reasoning import DEFAULT_REWARDS, RewardSpec, reasoning_messages, reward_functions
from meditune.training.outputs import CurvesCallback, is_main_process
from meditune.training.runner import train_and_save
from meditune.training.trl_options import with_trl

log = logging.getLogger(__name__)


class GRPOStageConfig(TrainOptions):
    """Options of the `grpo` stage (data: MCQ items; batch_size counts completions per micro-batch, not prompts)."""

    trl_config: ClassVar[str] = "GRPOConfig"

    rewards: list[RewardSpec] = Field(default_factory=lambda: [r.model_copy() for r in DEFAULT_REWARDS],
                                      min_length=1)
    num_generations: int = Field(4, ge=2, description="completions per prompt (the group of GRPO)")
    max_completion_length: int = Field(256, ge=1)
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    # KL coefficient. TRL's default is 0 (no reference pass); 0.04 (DeepSeekMath) keeps the policy near the start
    # and makes the KL curve meaningful. With LoRA the reference costs one forward with the adapter disabled.
    beta: float = Field(0.04, ge=0.0)
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    # a step samples batch_size x grad_accum completions at once (TRL's generation batch) and trains on them in
    # micro-batches of batch_size: activation memory grows with batch_size x (prompt + completion) tokens
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _groups_fit(self) -> GRPOStageConfig:
        if (self.batch_size * self.grad_accum) % self.num_generations:
            raise ValueError(f"batch_size * grad_accum ({self.batch_size * self.grad_accum}) must be a multiple of "
                             f"num_generations ({self.num_generations}): a step holds whole groups")
        if self.max_completion_length >= self.max_length:
            raise ValueError(f"max_completion_length ({self.max_completion_length}) must be below max_length "
                             f"({self.max_length}), which bounds prompt + completion")
        return self


def grpo_row(item: MCQItem, tokenizer: Any, system_prompt: str | None) -> dict[str, Any]:
    """A TRL conversational prompt row, with what the rewards read (gold, options, question)."""
    msgs = with_system(reasoning_messages(item), tokenizer, system_prompt)
    return {"prompt": msgs, "id": item.id, "question": msgs[-1]["content"], "options": list(item.options),
            "gold": item.answer, "n_options": len(item.options)}


def prompt_rows(items: list[MCQItem], tokenizer: Any, system_prompt: str | None, budget: int) -> list[dict]:
    """Rows whose rendered prompt fits in `budget` tokens (longer ones are dropped with a warning)."""
    rows, dropped = [], 0
    for it in items:
        row = grpo_row(it, tokenizer, system_prompt)
        ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)
        n = len(ids["input_ids"] if isinstance(ids, dict) else ids)
        if n > budget:
            dropped += 1
            continue
        rows.append(row)
    if dropped:
        log.warning("dropped %d of %d prompts longer than max_length - max_completion_length (%d tokens)",
                    dropped, len(items), budget)
    if not rows:
        raise ConfigError(f"no prompt fits in {budget} tokens; raise max_length or lower max_completion_length")
    return rows


def load_items(data: str | list[str]) -> list[MCQItem]:
    """MCQ items of one or several sources (JSONL or source specs)."""
    return [r for d in (data if isinstance(data, list) else [data]) for r in load_records(d, (MCQItem,))]


def reward_summary(rows: list[dict[str, Any]], names: list[str], window: int = 5) -> dict[str, Any]:
    """Mean of each logged reward over the first and the last `window` steps, with bootstrap CIs over steps."""
    out: dict[str, Any] = {"window_steps": window}
    for key in ["reward", *[f"rewards/{n}/mean" for n in names], "parse_rate", "kl", "completions/mean_length"]:
        vals = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if not vals:
            continue
        first, last = vals[:window], vals[-window:]
        out[key] = {"first": sum(first) / len(first), "first_ci95": list(bootstrap_ci(first)),
                    "last": sum(last) / len(last), "last_ci95": list(bootstrap_ci(last)), "steps": len(vals)}
    return out


def build_grpo_trainer(cfg: GRPOStageConfig, s: Any, ctx: StageContext, model: Any, tok: Any,
                       train_rows: list[dict], eval_rows: list[dict], curves: Any):
    """A TRL GRPOTrainer with meditune's rewards, the stage's options and its `trl:` mapping."""
    from trl import GRPOConfig, GRPOTrainer

    funcs, weights = reward_functions(cfg.rewards)
    kwargs = trainer_kwargs(cfg, s, ctx.stage_dir, default_lr=2e-5 if cfg.method == "lora" else 1e-6,
                            has_eval=bool(eval_rows))
    args = GRPOConfig(**with_trl(cfg, dict(
        **kwargs, num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature, top_p=cfg.top_p, beta=cfg.beta, reward_weights=weights,
        use_vllm=cfg.use_vllm, vllm_mode=cfg.vllm_mode, log_completions=False)))
    return GRPOTrainer(model=model, reward_funcs=funcs, args=args,
                       train_dataset=make_dataset(train_rows, ctx.stage_dir, "train"),
                       eval_dataset=make_dataset(eval_rows, ctx.stage_dir, "eval") if eval_rows else None,
                       processing_class=tok, peft_config=lora_config(cfg), callbacks=[curves])


def train_grpo(cfg: GRPOStageConfig, ctx: StageContext) -> dict[str, str]:
    """Run GRPO on MCQ prompts; returns the stage outputs (model, curves, summary, results)."""
    s = settings(cfg, ctx.recipe)
    base_dir, base_spec = base_model_dir(s.model, ctx.stage_dir)
    model, tok = load_causal_lm(base_dir, s)
    budget = cfg.max_length - cfg.max_completion_length
    rows = prompt_rows(load_items(cfg.data), tok, s.system_prompt, budget)
    if cfg.eval_data:
        train_rows, eval_rows = rows, prompt_rows(load_items(cfg.eval_data), tok, s.system_prompt, budget)
    else:
        train_rows, eval_rows = split_eval(rows, cfg.eval_fraction, s.seed)
    curves = CurvesCallback(ctx.stage_dir)
    trainer = build_grpo_trainer(cfg, s, ctx, model, tok, train_rows, eval_rows, curves)
    funcs = trainer.reward_funcs
    outs, summary = train_and_save(trainer, tok, cfg, s, ctx.stage_dir, stage="grpo", base_spec=base_spec,
                                   curves=curves, n_train=len(train_rows), n_eval=len(eval_rows))
    if is_main_process():
        results = {"stage": "grpo", "rewards": [r.model_dump() for r in cfg.rewards],
                   "curves": reward_summary(curves.rows, [f.__name__ for f in funcs]),
                   "generation": "vllm/" + cfg.vllm_mode if cfg.use_vllm else "transformers (TRL)", "train": summary}
        write_json(ctx.stage_dir / "results.json", results)
    return {"model": outs["model"], **{k: v for k, v in outs.items() if k != "model"},
            "results": str(ctx.stage_dir / "results.json")}


def estimate(cfg: GRPOStageConfig, recipe: Any) -> dict[str, Any]:
    """Optimizer steps, prompts and sampled completions (per process, world size 1)."""
    per_step = cfg.batch_size * cfg.grad_accum  # completions per optimizer step
    m, steps = planned_steps(cfg, lambda n: n * cfg.num_generations / per_step)
    return {"steps": steps, "examples": m, "generations": steps * per_step if steps is not None else None,
            "prompts_per_step": per_step // cfg.num_generations}
