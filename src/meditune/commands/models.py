"""`meditune models list|show|pull`."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

console = Console()
models_app = typer.Typer(no_args_is_help=True, help="Resolve, inspect and fetch models.")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


@models_app.command("list")
def list_() -> None:
    """The default model and the models converted into the cache."""
    from meditune.models import cache_dir, list_models

    table = Table(title=f"models (cache: {cache_dir()})")
    for col in ("spec", "what", "cached"):
        table.add_column(col)
    for row in list_models():
        table.add_row(row["spec"], row["what"], "yes" if row["cached"] else "no (converted on first use)")
    console.print(table)


@models_app.command("show")
def show(model: str = typer.Argument("default", help="default | file.gguf | directory | org/name")) -> None:
    """Architecture, parameter count, context length and chat template of a model."""
    from meditune.models import describe_model

    d = describe_model(model)
    table = Table(show_header=False, title=f"model {model}")
    for key in ("kind", "path", "architecture", "model_type", "parameters", "dtype", "layers", "hidden_size",
                "vocab_size", "context_length"):
        val = d.get(key)
        if key == "parameters":
            val = f"{val:,} ({val / 1e6:.1f}M)"
        table.add_row(key, str(val))
    console.print(table)
    console.print("chat template:")
    console.print(Syntax(d["chat_template"] or "(none)", "jinja", word_wrap=True))


@models_app.command("pull")
def pull(model: str = typer.Argument(..., help="default | file.gguf | org/name")) -> None:
    """Make a model available offline: convert GGUF into the cache, or download a hub model (safetensors)."""
    from pathlib import Path

    from meditune.models import hub_snapshot, resolve

    if model != "default" and not model.endswith(".gguf") and not Path(model).exists():
        path = hub_snapshot(model, download=True)
    else:
        path = resolve(model).path
    console.print(f"{model}: {path}", markup=False, highlight=False)
