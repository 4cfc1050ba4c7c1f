"""The evaluation stage types: eval_mcqa, eval_open, eval_pairwise, eval_hallucination, eval_ner, eval_safety,
eval_toxicity, eval_bias. Each stage's config is the options of its `meditune eval ...` command; the model and
recipe-wide settings default to the recipe's; outputs {"results", "samples"} in the stage dir."""

from __future__ import annotations

from typing import Any

from meditune.evaluation.bias import BiasOptions, evaluate_bias
from meditune.evaluation.hallucination import HallucinationOptions, evaluate_hallucination
from meditune.evaluation.mcqa import MCQAOptions, evaluate_mcqa, load_items
from meditune.evaluation.ner import NEROptions, evaluate_ner
from meditune.evaluation.openqa import OpenQAOptions, evaluate_openqa
from meditune.evaluation.pairwise import PairwiseOptions, evaluate_pairwise
from meditune.evaluation.safety import SafetyOptions, evaluate_safety
from meditune.evaluation.tasks import get_task
from meditune.evaluation.toxicity import ToxicityOptions, evaluate_toxicity
from meditune.stages import (
    INFERENCE_DEFAULTS,
    StageConfig,
    StageContext,
    apply_recipe_defaults,
    stage_type,
    upstream_count,
)


class EvalStageConfig(StageConfig):
    """Base of the evaluation stage configs: an evaluation takes every recipe-wide setting it leaves unset (its
    batch_size included)."""

    recipe_defaults = INFERENCE_DEFAULTS


def effective_options(config: StageConfig, options_cls: type, recipe: Any, *, task_is_name: bool = True) -> Any:
    """The stage's options with unset recipe-wide settings taken from the recipe (apply_recipe_defaults); an
    unset task is the stage name (task_is_name)."""
    values = apply_recipe_defaults(config, recipe).model_dump(exclude={"name", "type"})
    if task_is_name and not values.get("task"):
        values["task"] = config.name
    return options_cls.model_validate(values)


# ------------------------------------------------------------------------------------------ multiple choice

class MCQAStageConfig(EvalStageConfig, MCQAOptions):
    """eval_mcqa stage: every option of `meditune eval mcqa` (see docs/evaluation-mcqa.md)."""


def estimate_mcqa(config: MCQAStageConfig, recipe: Any) -> dict[str, Any]:
    """Work of a dry run: items (or the earlier stage they come from), mode and strategy."""
    items: Any = upstream_count(config.data, config.limit)
    if items is None:
        try:
            n = len(load_items(config.data, task=get_task(config.task)))
        except Exception as e:  # noqa: BLE001 - a dry run reports, it does not fail on unreadable data
            return {"items": f"unknown ({type(e).__name__}: {e})"}
        items = min(n, config.limit) if config.limit else n
    return {"items": items, "mode": config.mode or "template default", "strategy": config.strategy}


@stage_type("eval_mcqa", MCQAStageConfig, "multiple-choice evaluation (log-likelihood or generative), "
            "lm-eval compatible results with CIs", estimate=estimate_mcqa, all_ranks=True)
def run_eval_mcqa(config: MCQAStageConfig, ctx: StageContext) -> dict[str, str]:
    """Evaluate and write results.json + samples.jsonl in the stage directory."""
    # an unset task is only the results' name (a stage named like a registered task does not switch protocol)
    opts = effective_options(config, MCQAOptions, ctx.recipe, task_is_name=False)
    return evaluate_mcqa(opts, ctx.stage_dir, label=config.name)


# ------------------------------------------------------------------------------------------------ open ended

class OpenQAStageConfig(EvalStageConfig, OpenQAOptions):
    """eval_open stage: the options of `meditune eval open` (see docs/evaluation-open.md)."""


class PairwiseStageConfig(EvalStageConfig, PairwiseOptions):
    """eval_pairwise stage: the options of `meditune eval pairwise`."""


class HallucinationStageConfig(EvalStageConfig, HallucinationOptions):
    """eval_hallucination stage: the options of `meditune eval hallucination`."""


class NERStageConfig(EvalStageConfig, NEROptions):
    """eval_ner stage: the options of `meditune eval ner`."""


class SafetyStageConfig(EvalStageConfig, SafetyOptions):
    """eval_safety stage: the options of `meditune eval safety`."""


class ToxicityStageConfig(EvalStageConfig, ToxicityOptions):
    """eval_toxicity stage: the options of `meditune eval toxicity`."""


class BiasStageConfig(EvalStageConfig, BiasOptions):
    """eval_bias stage: the options of `meditune eval bias`."""


def estimate_open(config: Any, recipe: Any) -> dict[str, Any]:
    """Items of a dry run (or the earlier stage they come from), and what they cost per item."""
    from meditune.data import load_source

    src = upstream_count(config.data, config.limit)
    n: int | None = None
    if src is None:
        try:
            n = len(load_source(config.data))
        except Exception as e:  # noqa: BLE001 - a dry run reports, it does not fail on unreadable data
            return {"items": f"unknown ({type(e).__name__}: {e})"}
        n = min(n, config.limit) if config.limit else n
    out: dict[str, Any] = {"items": src or n, "max_new_tokens": config.max_new_tokens}
    if isinstance(config, BiasOptions):
        variants = 1 + len(config.groups)
        out["generations"] = f"up to {n * variants}" if n is not None else f"up to {variants} per item"
        out["generations"] += " (swap variants)"
    if isinstance(config, PairwiseOptions):
        k = len(config.systems)
        out["judge_calls"] = n * k * (k - 1) if n is not None else f"{k * (k - 1)} per item"
    if isinstance(config, SafetyOptions) and config.benign:
        out["benign_items"] = upstream_count(config.benign, config.benign_limit) or config.benign_limit or "all"
    return out


# stage type -> (config, options, evaluate, description)
OPEN_STAGES = {
    "eval_open": (OpenQAStageConfig, OpenQAOptions, evaluate_openqa,
                  "open QA / dialogue answers vs references: BLEU-1/2/4, ROUGE-1/2/L with CIs"),
    "eval_pairwise": (PairwiseStageConfig, PairwiseOptions, evaluate_pairwise,
                      "pairwise judge of 2+ systems in both orders: win rates, Elo with bootstrap CIs"),
    "eval_hallucination": (HallucinationStageConfig, HallucinationOptions, evaluate_hallucination,
                           "DAHL score and must-have / nice-to-have coverage"),
    "eval_ner": (NERStageConfig, NEROptions, evaluate_ner, "prompted clinical NER: exact span+type P/R/F1"),
    "eval_safety": (SafetyStageConfig, SafetyOptions, evaluate_safety,
                    "harmful-compliance per category, over-refusal on benign questions, harmfulness"),
    "eval_toxicity": (ToxicityStageConfig, ToxicityOptions, evaluate_toxicity,
                      "ToxiGen-style continuation toxicity by group"),
    "eval_bias": (BiasStageConfig, BiasOptions, evaluate_bias, "attitude-scale bias probe with demographic swaps"),
}


def _register_open(type_name: str, config: type[StageConfig], options: type, evaluate: Any, description: str) -> None:
    def run(cfg: Any, ctx: StageContext) -> dict[str, str]:
        return evaluate(effective_options(cfg, options, ctx.recipe), ctx.stage_dir)

    run.__doc__ = f"Run {type_name} and write results.json + samples.jsonl in the stage directory."
    stage_type(type_name, config, description, estimate=estimate_open, all_ranks=True)(run)


for _type, _row in OPEN_STAGES.items():
    _register_open(_type, *_row)
