"""`meditune train`: filled in by its issue; see docs/architecture.md."""

from __future__ import annotations

import typer

train_app = typer.Typer(no_args_is_help=True, help="train (not yet implemented).")


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
