"""The `eval_mcqa` stage: multiple-choice evaluation of a model (default: the recipe's, or "@stage")."""

from __future__ import annotations

from typing import Any

from meditune.evaluation.mcqa import MCQAOptions, evaluate_mcqa
from meditune.stages import StageConfig, StageContext, stage_type

# Recipe-wide settings a stage inherits unless its config sets them.
INHERITED = ("system_prompt", "device", "dtype", "trust_remote_code", "seed")


class MCQAStageConfig(StageConfig, MCQAOptions):
    """eval_mcqa stage: every option of `meditune eval mcqa` (see docs/evaluation-mcqa.md)."""


def effective_options(config: MCQAStageConfig, recipe: Any) -> MCQAOptions:
    """The stage's options with unset recipe-wide settings taken from the recipe."""
    values = config.model_dump(exclude={"name", "type"})
    for key in INHERITED:
        if key not in config.model_fields_set and recipe is not None and hasattr(recipe, key):
            values[key] = getattr(recipe, key)
    if not config.model and recipe is not None:
        values["model"] = recipe.model
    return MCQAOptions.model_validate(values)


def estimate(config: MCQAStageConfig, recipe: Any) -> dict[str, Any]:
    """Work of a dry run: items and forward passes."""
    from meditune.evaluation.mcqa import load_items

    try:
        n = len(load_items(config.data))
    except Exception as e:  # a dry run reports, it does not fail on data that a previous stage will write
        return {"items": f"unknown ({type(e).__name__})"}
    n = min(n, config.limit) if config.limit else n
    return {"items": n, "mode": config.mode or "template default", "strategy": config.strategy}


@stage_type("eval_mcqa", MCQAStageConfig, "multiple-choice evaluation (log-likelihood or generative), "
            "lm-eval compatible results with CIs", estimate=estimate)
def run_eval_mcqa(config: MCQAStageConfig, ctx: StageContext) -> dict[str, str]:
    """Evaluate and write results.json + samples.jsonl in the stage directory."""
    opts = effective_options(config, ctx.recipe)
    if not config.task:
        opts.task = config.name
    return evaluate_mcqa(opts, ctx.stage_dir)
