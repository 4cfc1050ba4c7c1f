"""The `report` stage: report.html over everything that ran before it in the run directory."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from meditune.io import write_text
from meditune.report.collect import load_stages
from meditune.report.html import render
from meditune.stages import StageConfig, StageContext, stage_type


class Headline(BaseModel):
    """One line of the report's lead story: a metric of two evaluation stages, before and after."""

    model_config = ConfigDict(extra="forbid")

    before: str
    after: str
    metric: str
    label: str | None = None  # what the metric means, in words (default: the metric name)


class ReportConfig(StageConfig):
    title: str | None = None
    compare: list[tuple[str, str]] = []  # (before, after) stage names; default: matching evaluation stages
    headline: list[Headline] = []  # the lead story, "What changed": the metrics the regime is about
    pair_samples: int = 20


def build_report(run_dir: Path, out: Path, *, title: str, recipe: dict, order: list[str] | None = None,
                 compare: list[tuple[str, str]] | None = None, headline: list[Headline] | None = None,
                 pair_samples: int = 20) -> Path:
    """Write report.html for a run directory."""
    stages = [s for s in load_stages(run_dir, order) if s.dir != out.parent]
    write_text(out, render(title, recipe, stages, compare=compare or None, pair_samples=pair_samples,
                           headline=[h.model_dump() for h in headline or []]))
    return out


@stage_type("report", ReportConfig, "self-contained report.html of the run", depends_on_all=True)
def run_report(cfg: ReportConfig, ctx: StageContext) -> dict[str, str]:
    recipe = ctx.recipe.model_dump(include={"name", "description", "model", "seed"})
    order = [s.name for s in ctx.recipe.stages]
    out = build_report(ctx.run_dir, ctx.stage_dir / "report.html", title=cfg.title or f"meditune: {ctx.recipe.name}",
                       recipe=recipe, order=order, compare=[tuple(p) for p in cfg.compare],
                       headline=cfg.headline, pair_samples=cfg.pair_samples)
    # also at the top of the run directory, where users look for it
    top = ctx.run_dir / "report.html"
    write_text(top, out.read_text(encoding="utf-8"))
    return {"report": str(out)}
