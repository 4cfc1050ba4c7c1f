"""`meditune run [RECIPE]`: run a recipe's stages with skip/resume."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()


def register(app: typer.Typer) -> None:
    app.command("run")(run)


def run(
    recipe: str = typer.Argument("quickstart", help="Recipe file, or the name of a bundled recipe."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: a.b=c (stage keys by stage name)."),
    force: list[str] = typer.Option([], "--force", help="Re-run this stage even if unchanged ('all' for all)."),
    from_stage: str = typer.Option(None, "--from", help="Start at this stage (it re-runs; earlier ones skip)."),
    only: list[str] = typer.Option([], "--only", help="Run only this stage (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan with estimated work; run nothing."),
    run_dir: Path = typer.Option(None, "--run-dir", help="Run directory (default runs/<recipe name>)."),
) -> None:
    """Run a recipe: stages in order, finished unchanged stages skipped, crashed ones resumed."""
    from meditune.distributed import env_ranks
    from meditune.pipeline import Pipeline
    from meditune.recipe import bundled_recipe, load_recipe

    path = Path(recipe) if Path(recipe).exists() or recipe.endswith((".yaml", ".yml")) else bundled_recipe(recipe)
    rec = load_recipe(path, set_)
    pipe = Pipeline(rec, run_dir)
    plan = pipe.plan(only=only or None, from_stage=from_stage, force=force or None)
    table = Table(title=escape(f"{rec.name}: {pipe.run_dir}"))
    for col in ("stage", "type", "action", "why", "estimated work"):
        table.add_column(col)
    for item in plan:
        est = ", ".join(f"{k}={v}" for k, v in (item.estimate or {}).items())
        table.add_row(item.stage.name, item.stage.type, item.action, escape(item.reason), escape(est))
    main = env_ranks().is_main  # under torchrun every rank runs the pipeline; rank 0 speaks
    if main:
        console.print(table)
    if dry_run:
        return
    pipe.run(only=only or None, from_stage=from_stage, force=force or None)
    if not main:
        return
    if pipe.skipped:
        console.print(f"skipped (finished, unchanged): {', '.join(pipe.skipped)}", markup=False)
    console.print(f"[green]done[/]: {escape(str(pipe.run_dir))}")
