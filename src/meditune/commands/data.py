"""`meditune data`: filled in by its issue; see docs/architecture.md."""

from __future__ import annotations

import typer

data_app = typer.Typer(no_args_is_help=True, help="data (not yet implemented).")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
