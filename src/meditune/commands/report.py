"""`meditune report RUN_DIR`: (re)build report.html of a run directory."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def report(
    run_dir: Path = typer.Argument(..., help="A run directory (runs/<name>)."),
    out: Path = typer.Option(None, "--out", help="Output file (default RUN_DIR/report.html)."),
    title: str = typer.Option(None, "--title"),
    pair_samples: int = typer.Option(20, "--pair-samples", help="Preference pairs shown."),
) -> None:
    """Write a self-contained report.html for a run directory."""
    from meditune.errors import ConfigError
    from meditune.report.stage import build_report

    if not run_dir.is_dir() or not list(run_dir.glob("*/manifest.json")):
        raise ConfigError(f"{run_dir} is not a run directory (no */manifest.json)")
    from meditune.io import read_json

    manifests = [read_json(m) for m in sorted(run_dir.glob("*/manifest.json"))]
    recipe = next((m["recipe"] for m in manifests if isinstance(m.get("recipe"), dict)), {"name": run_dir.name})
    path = build_report(run_dir, out or run_dir / "report.html",
                        title=title or f"meditune: {recipe.get('name', run_dir.name)}",
                        recipe=recipe, pair_samples=pair_samples)
    console.print(f"wrote {path}", markup=False, highlight=False)
