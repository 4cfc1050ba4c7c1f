"""The `meditune` command. Each command group lives in meditune/commands/<group>.py and registers itself."""

from __future__ import annotations

import importlib
import sys

import click
import typer
from rich.console import Console

from meditune.errors import MeditunError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Build safer, more accurate medical LLMs, and prove what each step did.")
console = Console(stderr=True)

# One module per command group; each defines register(app).
COMMAND_MODULES = [
    "meditune.commands.run",
    "meditune.commands.models",
    "meditune.commands.chat",
    "meditune.commands.data",
    "meditune.commands.generate",
    "meditune.commands.score",
    "meditune.commands.prefs",
    "meditune.commands.train",
    "meditune.commands.merge",
    "meditune.commands.eval",
    "meditune.commands.report",
]

for _mod in COMMAND_MODULES:
    importlib.import_module(_mod).register(app)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    from meditune.logs import setup_console

    setup_console(verbose)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one clear line and exit 2, never a traceback."""
    try:
        rv = app(args=argv, standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except MeditunError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, markup=True, soft_wrap=True)
        return 2
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        console.print("aborted")
        return 130
    except click.ClickException as e:
        e.show()
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
