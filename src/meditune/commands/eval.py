"""`meditune eval ...`: mcqa and compare (commands/eval_mcqa.py), open/pairwise/ner/hallucination/safety/toxicity/
bias (commands/eval_open.py)."""

from __future__ import annotations

import importlib

import typer

HELP = "Evaluate models: multiple choice, open QA, NER, safety, bias."
MCQA_COMMANDS = ("mcqa", "compare")
OPEN_COMMANDS = ("open", "pairwise", "ner", "hallucination", "safety", "toxicity", "bias")


def register(app: typer.Typer, only: str | None = None) -> None:
    """Add `meditune eval` with its commands (`only`: just the module of that sub-command, when it is known)."""
    eval_app = typer.Typer(no_args_is_help=True, help=HELP)
    modules = ["eval_mcqa"] if only in MCQA_COMMANDS else ["eval_open"] if only in OPEN_COMMANDS else \
        ["eval_mcqa", "eval_open"]
    for name in modules:
        importlib.import_module(f"meditune.commands.{name}").register(eval_app)
    app.add_typer(eval_app, name="eval")
