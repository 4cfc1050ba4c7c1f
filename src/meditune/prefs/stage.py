"""Registers the `prefs` stage type (see meditune.prefs.build for what it does)."""

from __future__ import annotations

from typing import Any

from meditune.prefs.build import PrefsStageConfig, build_preferences
from meditune.stages import StageContext, apply_recipe_defaults, stage_type, upstream_count


def estimate(cfg: PrefsStageConfig, recipe: Any) -> dict[str, Any]:
    """Questions (or the earlier stage they come from), generations and scorer calls a dry run prints."""
    samples = sum(g.samples or cfg.collection.samples for g in cfg.generators if g.backend != "reference")
    n = upstream_count(cfg.questions, cfg.limit) or cfg.limit or "all"
    gens = n * samples if isinstance(n, int) else f"{samples} per question"
    if any(g.answers != "all" for g in cfg.generators):  # some answer only the harmful or only the benign items
        gens = f"at most {gens}"
    return {"questions": n, "generators": len(cfg.generators), "generations": gens, "scorer": cfg.scorer.type,
            "pairing": cfg.pairing.policy, "translation": cfg.translation.target_language if cfg.translation else None}


@stage_type("prefs", PrefsStageConfig, "preference pairs from N generators' answers scored by DAHL or another "
                                       "scorer (KoMeP-style), with a datacard", estimate=estimate, all_ranks=True)
def run(cfg: PrefsStageConfig, ctx: StageContext) -> dict[str, str]:
    """Build the preference dataset into the stage directory (resumes collection and scoring from disk)."""
    return build_preferences(apply_recipe_defaults(cfg, ctx.recipe), ctx.stage_dir, seed=ctx.seed)
