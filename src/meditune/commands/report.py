"""`meditune report`: filled in by its issue; see docs/architecture.md."""

from __future__ import annotations

import typer

report_app = typer.Typer(no_args_is_help=True, help="report (not yet implemented).")


def register(app: typer.Typer) -> None:
    app.add_typer(report_app, name="report")
