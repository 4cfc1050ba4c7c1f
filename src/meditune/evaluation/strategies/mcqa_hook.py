"""Plugs the CoT family (runner.py) into `meditune eval mcqa --strategy ...` (the registry in registry.py)."""

from __future__ import annotations

from typing import Any

from meditune.evaluation.results import STRATEGY_SECTION, strategy_row_metrics
from meditune.evaluation.strategies.context import StrategyContext
from meditune.evaluation.strategies.registry import register_strategy
from meditune.evaluation.strategies.runner import run_strategy

DESCRIPTIONS = {
    "cot": "zero/few-shot chain of thought ending in 'Answer: X' (last answer parsed, bounded retries)",
    "self-consistency": "sampled CoTs (3 fixed exemplars from the CoT bank by default), majority vote",
    "knn-fewshot": "k nearest solved training items as CoT exemplars, least to most similar",
    "medprompt": "knn-fewshot + choice shuffling over r runs + majority vote",
}


def run_from_context(name: str, ctx: StrategyContext, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Run strategy `name` for the MCQA engine and return its standard sample dicts."""
    opts = {"seed": ctx.seed, "model_label": ctx.model_spec, **options}
    if name in ("cot", "self-consistency") and ctx.config.shots and "shots" not in options:
        opts["shots"] = ctx.config.shots  # `--shots N` means N fixed CoT exemplars from the bank
    # Training items for the CoT bank: only an explicit few-shot source, never the evaluated items themselves.
    train = ctx.fewshot_items if ctx.config.fewshot_data else None
    res = run_strategy(name, ctx.items, ctx.backend(), opts, ctx.work_dir, train_items=train, save=False)
    ctx.extra_results.update({k: res.metrics[k] for k in STRATEGY_SECTION})
    ctx.extra_results["mode"] = "generative"
    samples = []
    for doc_id, (item, row) in enumerate(zip(ctx.items, res.predictions, strict=True)):
        last = row["runs"][0]["samples"][-1]["text"] if row["runs"] and row["runs"][0]["samples"] else ""
        samples.append(ctx.sample(item, doc_id, row["pred"], strategy_row_metrics(row),
                                  parsed=row["pred"] is not None, response=last, votes=row["votes"],
                                  tie=row["tie"], retries=row["retries"],
                                  completion_tokens=row["completion_tokens"], wall_s=row["wall_s"],
                                  runs=row["runs"]))
    return samples


def _register(name: str) -> None:
    @register_strategy(name, DESCRIPTIONS[name])
    def _run(ctx: StrategyContext, options: dict[str, Any]) -> list[dict[str, Any]]:
        return run_from_context(name, ctx, options)


for _name in DESCRIPTIONS:
    _register(_name)
