"""`meditune merge`: filled in by its issue; see docs/architecture.md."""

from __future__ import annotations

import typer

merge_app = typer.Typer(no_args_is_help=True, help="merge (not yet implemented).")


def register(app: typer.Typer) -> None:
    app.add_typer(merge_app, name="merge")
