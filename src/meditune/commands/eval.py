"""`meditune eval ...`: mcqa (commands/eval_mcqa.py) and open/ner/hallucination/safety/bias/toxicity
(commands/eval_open.py)."""

from __future__ import annotations

import typer

eval_app = typer.Typer(no_args_is_help=True, help="Evaluate models: multiple choice, open QA, NER, safety, bias.")


def register(app: typer.Typer) -> None:
    from meditune.commands import eval_mcqa, eval_open

    eval_mcqa.register(eval_app)
    eval_open.register(eval_app)
    app.add_typer(eval_app, name="eval")
