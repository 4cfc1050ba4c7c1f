"""The `report` stage: report.html over everything that ran before it in the run directory."""

from __future__ import annotations

from pathlib import Path

from meditune.io import write_text
from meditune.report.collect import load_stages
from meditune.report.html import render
from meditune.stages import StageConfig, StageContext, stage_type


class ReportConfig(StageConfig):
    title: str | None = None
    compare: list[tuple[str, str]] = []  # (before, after) stage names; default: matching evaluation stages
    pair_samples: int = 20


def build_report(run_dir: Path, out: Path, *, title: str, recipe: dict, order: list[str] | None = None,
                 compare: list[tuple[str, str]] | None = None, pair_samples: int = 20) -> Path:
    """Write report.html for a run directory."""
    stages = [s for s in load_stages(run_dir, order) if s.dir != out.parent]
    write_text(out, render(title, recipe, stages, compare=compare or None, pair_samples=pair_samples))
    return out


@stage_type("report", ReportConfig, "self-contained report.html of the run", depends_on_all=True)
def run_report(cfg: ReportConfig, ctx: StageContext) -> dict[str, str]:
    recipe = ctx.recipe.model_dump(include={"name", "description", "model", "seed"})
    order = [s.name for s in ctx.recipe.stages]
    out = build_report(ctx.run_dir, ctx.stage_dir / "report.html", title=cfg.title or f"meditune: {ctx.recipe.name}",
                       recipe=recipe, order=order, compare=[tuple(p) for p in cfg.compare],
                       pair_samples=cfg.pair_samples)
    # also at the top of the run directory, where users look for it
    top = ctx.run_dir / "report.html"
    write_text(top, out.read_text(encoding="utf-8"))
    return {"report": str(out)}
