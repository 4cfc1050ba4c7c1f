"""`meditune score`: filled in by its issue; see docs/architecture.md."""

from __future__ import annotations

import typer

score_app = typer.Typer(no_args_is_help=True, help="score (not yet implemented).")


def register(app: typer.Typer) -> None:
    app.add_typer(score_app, name="score")
