"""`meditune generate`: filled in by its issue; see docs/architecture.md."""

from __future__ import annotations

import typer

generate_app = typer.Typer(no_args_is_help=True, help="generate (not yet implemented).")


def register(app: typer.Typer) -> None:
    app.add_typer(generate_app, name="generate")
