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
from meditune.stages import RECIPE_DEFAULTS, StageConfig, StageContext, apply_recipe_defaults, stage_type

EVAL_DEFAULTS = tuple(RECIPE_DEFAULTS)  # an evaluation takes every recipe-wide setting it leaves unset


def effective_options(config: StageConfig, options_cls: type, recipe: Any, *, task_is_name: bool = True) -> Any:
    """The stage's options with unset recipe-wide settings taken from the recipe (apply_recipe_defaults); an
    unset task is the stage name (task_is_name)."""
    values = apply_recipe_defaults(config, recipe).model_dump(exclude={"name", "type"})
    if task_is_name and not values.get("task"):
        values["task"] = config.name
    return options_cls.model_validate(values)


# ------------------------------------------------------------------------------------------ multiple choice

class MCQAStageConfig(StageConfig, MCQAOptions):
    """eval_mcqa stage: every option of `meditune eval mcqa` (see docs/evaluation-mcqa.md)."""

    recipe_defaults = EVAL_DEFAULTS


def estimate_mcqa(config: MCQAStageConfig, recipe: Any) -> dict[str, Any]:
    """Work of a dry run: items and forward passes."""
    try:
        n = len(load_items(config.data, task=get_task(config.task)))
    except Exception as e:  # noqa: BLE001 - a dry run reports, it does not fail on data a previous stage will write
        return {"items": f"unknown ({type(e).__name__})"}
    n = min(n, config.limit) if config.limit else n
    return {"items": n, "mode": config.mode or "template default", "strategy": config.strategy}


@stage_type("eval_mcqa", MCQAStageConfig, "multiple-choice evaluation (log-likelihood or generative), "
            "lm-eval compatible results with CIs", estimate=estimate_mcqa)
def run_eval_mcqa(config: MCQAStageConfig, ctx: StageContext) -> dict[str, str]:
    """Evaluate and write results.json + samples.jsonl in the stage directory."""
    # an unset task is only the results' name (a stage named like a registered task does not switch protocol)
    opts = effective_options(config, MCQAOptions, ctx.recipe, task_is_name=False)
    return evaluate_mcqa(opts, ctx.stage_dir, label=config.name)


# ------------------------------------------------------------------------------------------------ open ended

class OpenQAStageConfig(StageConfig, OpenQAOptions):
    """eval_open stage: the options of `meditune eval open` (see docs/evaluation-open.md)."""

    recipe_defaults = EVAL_DEFAULTS


class PairwiseStageConfig(StageConfig, PairwiseOptions):
    """eval_pairwise stage: the options of `meditune eval pairwise`."""

    recipe_defaults = EVAL_DEFAULTS


class HallucinationStageConfig(StageConfig, HallucinationOptions):
    """eval_hallucination stage: the options of `meditune eval hallucination`."""

    recipe_defaults = EVAL_DEFAULTS


class NERStageConfig(StageConfig, NEROptions):
    """eval_ner stage: the options of `meditune eval ner`."""

    recipe_defaults = EVAL_DEFAULTS


class SafetyStageConfig(StageConfig, SafetyOptions):
    """eval_safety stage: the options of `meditune eval safety`."""

    recipe_defaults = EVAL_DEFAULTS


class ToxicityStageConfig(StageConfig, ToxicityOptions):
    """eval_toxicity stage: the options of `meditune eval toxicity`."""

    recipe_defaults = EVAL_DEFAULTS


class BiasStageConfig(StageConfig, BiasOptions):
    """eval_bias stage: the options of `meditune eval bias`."""

    recipe_defaults = EVAL_DEFAULTS


def estimate_open(config: Any, recipe: Any) -> dict[str, Any]:
    """Items of a dry run (unknown when the data is an earlier stage's output)."""
    from meditune.data import load_source

    try:
        n = len(load_source(config.data))
    except Exception as e:  # noqa: BLE001 - a dry run reports, it does not fail on data not written yet
        return {"items": f"unknown ({type(e).__name__})"}
    n = min(n, config.limit) if config.limit else n
    out: dict[str, Any] = {"items": n, "max_new_tokens": config.max_new_tokens}
    if isinstance(config, BiasOptions):
        out["generations"] = f"up to {n * (1 + len(config.groups))} (swap variants)"
    if isinstance(config, PairwiseOptions):
        k = len(config.systems)
        out["judge_calls"] = n * k * (k - 1)
    return out


@stage_type("eval_open", OpenQAStageConfig, "open QA / dialogue answers vs references: BLEU-1/2/4, ROUGE-1/2/L "
            "with CIs", estimate=estimate_open)
def run_eval_open(config: OpenQAStageConfig, ctx: StageContext) -> dict[str, str]:
    """Run eval_open and write results.json + samples.jsonl in the stage directory."""
    return evaluate_openqa(effective_options(config, OpenQAOptions, ctx.recipe), ctx.stage_dir)


@stage_type("eval_pairwise", PairwiseStageConfig, "pairwise judge of 2+ systems in both orders: win rates, Elo "
            "with bootstrap CIs", estimate=estimate_open)
def run_eval_pairwise(config: PairwiseStageConfig, ctx: StageContext) -> dict[str, str]:
    """Run eval_pairwise and write results.json + samples.jsonl in the stage directory."""
    return evaluate_pairwise(effective_options(config, PairwiseOptions, ctx.recipe), ctx.stage_dir)


@stage_type("eval_hallucination", HallucinationStageConfig, "DAHL score and must-have / nice-to-have coverage",
            estimate=estimate_open)
def run_eval_hallucination(config: HallucinationStageConfig, ctx: StageContext) -> dict[str, str]:
    """Run eval_hallucination and write results.json + samples.jsonl in the stage directory."""
    return evaluate_hallucination(effective_options(config, HallucinationOptions, ctx.recipe), ctx.stage_dir)


@stage_type("eval_ner", NERStageConfig, "prompted clinical NER: exact span+type P/R/F1", estimate=estimate_open)
def run_eval_ner(config: NERStageConfig, ctx: StageContext) -> dict[str, str]:
    """Run eval_ner and write results.json + samples.jsonl in the stage directory."""
    return evaluate_ner(effective_options(config, NEROptions, ctx.recipe), ctx.stage_dir)


@stage_type("eval_safety", SafetyStageConfig, "harmful-compliance per category, over-refusal on benign questions, "
            "harmfulness", estimate=estimate_open)
def run_eval_safety(config: SafetyStageConfig, ctx: StageContext) -> dict[str, str]:
    """Run eval_safety and write results.json + samples.jsonl in the stage directory."""
    return evaluate_safety(effective_options(config, SafetyOptions, ctx.recipe), ctx.stage_dir)


@stage_type("eval_toxicity", ToxicityStageConfig, "ToxiGen-style continuation toxicity by group",
            estimate=estimate_open)
def run_eval_toxicity(config: ToxicityStageConfig, ctx: StageContext) -> dict[str, str]:
    """Run eval_toxicity and write results.json + samples.jsonl in the stage directory."""
    return evaluate_toxicity(effective_options(config, ToxicityOptions, ctx.recipe), ctx.stage_dir)


@stage_type("eval_bias", BiasStageConfig, "attitude-scale bias probe with demographic swaps", estimate=estimate_open)
def run_eval_bias(config: BiasStageConfig, ctx: StageContext) -> dict[str, str]:
    """Run eval_bias and write results.json + samples.jsonl in the stage directory."""
    return evaluate_bias(effective_options(config, BiasOptions, ctx.recipe), ctx.stage_dir)
