"""The `rationales` stage: the model's own chain-of-thought on training MCQs, kept when it reaches the gold
answer, written as Chat records for SFT (the first stage of the reasoning recipe: SFT on correct rationales,
then GRPO). The attempts are the CoT bank of evaluation/strategies/cot_bank.py, so a killed run resumes."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from meditune.errors import ConfigError
from meditune.io import write_json
from meditune.model_ref import ModelRef, ModelRefOwner, model_ref_field
from meditune.records import Chat, Message, write_records
from meditune.stages import INFERENCE_DEFAULTS, StageConfig, StageContext, apply_recipe_defaults
from meditune.training.data import count_examples
from meditune.training.mcq_reasoning import reasoning_messages

log = logging.getLogger(__name__)


class RationalesStageConfig(StageConfig, ModelRefOwner):
    """Options of the `rationales` stage (data: MCQ items with gold answers); model, seed, device, dtype,
    trust_remote_code, system_prompt and batch_size (a generation batch) left unset (or null) are the recipe's
    (apply_recipe_defaults)."""

    recipe_defaults = INFERENCE_DEFAULTS
    model_keys_after = "batch_size"

    model: ModelRef = model_ref_field()  # the spec accepts "@stage"
    data: str | list[str]
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0, description="0: greedy, one rationale per item")
    max_retries: int = Field(0, ge=0, description="re-asks of an answer without a parseable 'Answer: X'")
    batch_size: int = Field(16, ge=1)
    system_prompt: str | None = None  # "" = none
    seed: int | None = None


def rationale_chats(entries: list[Any]) -> list[Chat]:
    """Chat records: the reasoning prompt of each item, then its kept rationale as the assistant turn."""
    return [Chat(id=f"{e.item.id}-rationale",
                 messages=[*(Message(**m) for m in reasoning_messages(e.item)),
                           Message(role="assistant", content=e.rationale)],
                 meta={"source_item": e.item.id})
            for e in entries]


def run_rationales(cfg: RationalesStageConfig, ctx: StageContext, backend: Any = None) -> dict[str, str]:
    """Build the CoT bank on the items and write the kept rationales as dataset.jsonl."""
    from meditune.evaluation.strategies.cot import RetryPolicy
    from meditune.evaluation.strategies.cot_bank import build_cot_bank
    from meditune.generation.base import BackendConfig
    from meditune.training.grpo import load_items

    cfg = apply_recipe_defaults(cfg, ctx.recipe)
    items = load_items(cfg.data)
    if backend is None:
        from meditune.generation.factory import make_backend

        backend = make_backend(BackendConfig(model=cfg.model, system_prompt=cfg.system_prompt,
                                             batch_size=cfg.batch_size))
    bank = build_cot_bank(items, backend, ctx.stage_dir / "cot_bank.jsonl", model=cfg.model.spec,
                          max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed,
                          policy=RetryPolicy(max_retries=cfg.max_retries), chunk_size=cfg.batch_size)
    if not bank.entries:
        raise ConfigError(f"stage {cfg.name!r}: none of {bank.attempted} rationales reached the gold answer, so "
                          "there is nothing to fine-tune on; use more items, more max_new_tokens or a stronger model")
    dataset = ctx.path("dataset.jsonl")
    write_records(dataset, rationale_chats(bank.entries))
    write_json(ctx.path("results.json"), {"stage": "rationales", "bank": bank.summary(),
                                          "protocol": {"prompt": "cot (evaluation/strategies/cot.py), zero-shot",
                                                       "temperature": cfg.temperature,
                                                       "max_new_tokens": cfg.max_new_tokens,
                                                       "kept": "rationales whose last 'Answer: X' is gold"}})
    log.info("rationales: kept %d of %d", bank.kept, bank.attempted)
    return {"dataset": str(dataset), "results": str(ctx.path("results.json")), "bank": str(bank.path)}


def estimate(cfg: RationalesStageConfig, recipe: Any) -> dict[str, Any]:
    """Items and generations of a dry run."""
    n = count_examples(cfg.data)
    return {"items": n, "generations": n, "max_new_tokens": cfg.max_new_tokens}
