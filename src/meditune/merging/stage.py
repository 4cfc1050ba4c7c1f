"""The `merge` stage: merge models (which may be "@stage" outputs) into one model directory."""

from __future__ import annotations

from typing import Any

from meditune.merging.config import MergeSpec
from meditune.stages import StageConfig, StageContext, stage_type

NO_DEFAULT_BASE = {"linear", "nuslerp"}  # methods that do not need a base (torch-free: dry runs stay light)


class MergeStageConfig(StageConfig, MergeSpec):
    """A merge config (as for `meditune merge`) inside a recipe; base_model defaults to the recipe's model."""


def estimate(config: MergeStageConfig, recipe: Any) -> dict[str, Any]:
    """What a dry run prints: the method and how many models are merged."""
    base = config.base_model or (recipe.model.spec if config.merge_method not in NO_DEFAULT_BASE else None)
    n = len(config.models) + int(bool(base) and base not in [m.model for m in config.models]
                                 and config.merge_method != "linear")
    return {"method": config.merge_method, "models": n}


@stage_type("merge", MergeStageConfig, "merge models (linear, slerp, nuslerp, task_arithmetic, ties, dare_*, "
            "breadcrumbs*, della*, model_stock)", estimate=estimate)
def run_merge_stage(config: MergeStageConfig, ctx: StageContext) -> dict[str, str]:
    """Merge into <stage_dir>/model; a killed merge resumes from its finished shards."""
    from meditune.merging.merge import run_merge
    from meditune.merging.methods import get_method

    spec = MergeSpec.model_validate(config.model_dump(exclude={"name", "type"}))
    if spec.base_model is None and get_method(spec.merge_method).needs_base:
        spec.base_model = ctx.recipe.model.spec
    out = ctx.path("model")
    run_merge(spec, out, seed=ctx.seed, progress=True)
    return {"model": str(out)}
