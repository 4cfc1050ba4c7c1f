"""`meditune eval`: filled in by its issue; see docs/architecture.md."""

from __future__ import annotations

import typer

eval_app = typer.Typer(no_args_is_help=True, help="eval (not yet implemented).")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
