"""`meditune prefs`: filled in by its issue; see docs/architecture.md."""

from __future__ import annotations

import typer

prefs_app = typer.Typer(no_args_is_help=True, help="prefs (not yet implemented).")


def register(app: typer.Typer) -> None:
    app.add_typer(prefs_app, name="prefs")
