"""Stage types of the open-ended evaluations: eval_open, eval_pairwise, eval_hallucination, eval_ner,
eval_safety, eval_toxicity, eval_bias. Each stage's config = the options of its `meditune eval ...` command;
model and recipe-wide settings default to the recipe's; outputs {"results", "samples"} in the stage dir."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from meditune.stages import StageConfig, StageContext, stage_type

# Recipe-wide settings a stage inherits unless its config sets them.
INHERITED = ("system_prompt", "device", "dtype", "trust_remote_code", "seed")

# stage type -> (module, options class, evaluate function, description)
KINDS: dict[str, tuple[str, str, str, str]] = {
    "eval_open": ("openqa", "OpenQAOptions", "evaluate_openqa",
                  "open QA / dialogue answers vs references: BLEU-1/2/4, ROUGE-1/2/L with CIs"),
    "eval_pairwise": ("pairwise", "PairwiseOptions", "evaluate_pairwise",
                      "pairwise judge of 2+ systems in both orders: win rates, Elo with bootstrap CIs"),
    "eval_hallucination": ("hallucination", "HallucinationOptions", "evaluate_hallucination",
                           "DAHL score and must-have / nice-to-have coverage"),
    "eval_ner": ("ner", "NEROptions", "evaluate_ner", "prompted clinical NER: exact span+type P/R/F1"),
    "eval_safety": ("safety", "SafetyOptions", "evaluate_safety",
                    "harmful-compliance per category, over-refusal on benign questions, harmfulness"),
    "eval_toxicity": ("toxicity", "ToxicityOptions", "evaluate_toxicity",
                      "ToxiGen-style continuation toxicity by group"),
    "eval_bias": ("bias", "BiasOptions", "evaluate_bias",
                  "attitude-scale bias probe with demographic swaps"),
}


def _module(name: str) -> Any:
    return importlib.import_module(f"meditune.evaluation.{name}")


def effective_options(config: StageConfig, options_cls: type, recipe: Any) -> Any:
    """The stage's options with unset recipe-wide settings (and model) taken from the recipe."""
    values = config.model_dump(exclude={"name", "type"})
    for key in INHERITED:
        if key not in config.model_fields_set and recipe is not None and hasattr(recipe, key):
            values[key] = getattr(recipe, key)
    if not values.get("model") and recipe is not None and getattr(recipe, "model", None):
        values["model"] = recipe.model
    if not values.get("task"):
        values["task"] = config.name
    return options_cls.model_validate(values)


def _estimate(module: str) -> Callable[[Any, Any], dict[str, Any]]:
    def estimate(config: Any, recipe: Any) -> dict[str, Any]:
        """Items of a dry run (unknown when the data is an earlier stage's output)."""
        from meditune.data import load_source

        try:
            n = len(load_source(config.data))
        except Exception as e:  # noqa: BLE001 - a dry run reports, it does not fail on data not written yet
            return {"items": f"unknown ({type(e).__name__})"}
        n = min(n, config.limit) if config.limit else n
        out: dict[str, Any] = {"items": n, "max_new_tokens": config.max_new_tokens}
        if module == "bias":
            out["generations"] = f"up to {n * (1 + len(config.groups))} (swap variants)"
        if module == "pairwise":
            k = len(config.systems)
            out["judge_calls"] = n * k * (k - 1)
        return out

    return estimate


def _register(type_name: str, module: str, options: str, fn_name: str, description: str) -> None:
    options_cls = getattr(_module(module), options)
    config_cls = type(f"{options}Stage", (StageConfig, options_cls), {
        "__doc__": f"{type_name} stage: the options of `meditune eval` (see docs/evaluation-open.md)."})

    def run(config: Any, ctx: StageContext) -> dict[str, str]:
        opts = effective_options(config, options_cls, ctx.recipe)
        return getattr(_module(module), fn_name)(opts, ctx.stage_dir)

    run.__doc__ = f"Run {type_name} and write results.json + samples.jsonl in the stage directory."
    stage_type(type_name, config_cls, description, estimate=_estimate(module))(run)


for _type, (_mod, _opts, _fn, _desc) in KINDS.items():
    _register(_type, _mod, _opts, _fn, _desc)
