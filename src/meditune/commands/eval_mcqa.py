"""Filled in by its issue."""

from __future__ import annotations

import typer


def register(eval_app: typer.Typer) -> None:
    """Add this module's commands to `meditune eval`."""
