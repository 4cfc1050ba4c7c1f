"""The `meditune` command. Each command group lives in meditune/commands/<group>.py and registers itself."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

import click
import typer
from rich.console import Console

from meditune.errors import MeditunError, os_error_message, print_error

HELP = "Build safer, more accurate medical LLMs, and prove what each step did."
console = Console(stderr=True)

# The first word of a command line -> the module that registers that command (each defines register(app)). A run
# imports only its own command's module (and `eval` only the module of its sub-command): the others' imports
# (configs of every stage, their libraries) are start-up time a run does not need.
COMMANDS = {
    "run": "meditune.commands.run",
    "models": "meditune.commands.models",
    "chat": "meditune.commands.chat",
    "data": "meditune.commands.data",
    "generate": "meditune.commands.generate",
    "serve": "meditune.commands.generate",
    "score": "meditune.commands.score",
    "prefs": "meditune.commands.prefs",
    "train": "meditune.commands.train",
    "merge": "meditune.commands.merge",
    "eval": "meditune.commands.eval",
    "report": "meditune.commands.report",
}
COMMAND_MODULES = list(dict.fromkeys(COMMANDS.values()))


def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    from meditune.logs import setup_console

    setup_console(verbose)


def build_app(argv: Sequence[str] | None = None) -> typer.Typer:
    """The `meditune` typer app: every command, or (given a command line naming a known command) only that one."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help=HELP)
    app.callback()(_main)
    words = [w for w in argv or () if not w.startswith("-")]  # the only global option, -v, takes no value
    only = argv is not None and bool(words) and words[0] in COMMANDS
    for name in [COMMANDS[words[0]]] if only else COMMAND_MODULES:
        module = importlib.import_module(name)
        if name == "meditune.commands.eval":
            module.register(app, only=words[1] if only and len(words) > 1 else None)
        else:
            module.register(app)
    return app


def __getattr__(name: str) -> Any:
    """`meditune.cli.app`: the app with every command, built on first use."""
    if name == "app":
        global _APP
        if _APP is None:
            _APP = build_app()
        return _APP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_APP: typer.Typer | None = None


def _click_flavours() -> list:
    """The click modules whose exceptions can reach us: click, and the copy typer 0.29 bundles."""
    mods = [click]
    try:
        from typer import _click as bundled  # typer 0.29 vendors click
    except ImportError:
        bundled = None
    if bundled is not None and bundled is not click:
        mods.append(bundled)
    return mods


_CLICK = _click_flavours()
CLICK_ERRORS = tuple(m.exceptions.ClickException for m in _CLICK)
# Exit/Abort live in click.exceptions, or in typer.exceptions when typer bundles its own click
EXITS = tuple({typer.Exit, *(m.exceptions.Exit for m in _CLICK if hasattr(m.exceptions, "Exit"))})
ABORTS = tuple({typer.Abort, *(m.exceptions.Abort for m in _CLICK if hasattr(m.exceptions, "Abort"))})
HELP_ERRORS = tuple(m.exceptions.NoArgsIsHelpError for m in _CLICK
                    if hasattr(m.exceptions, "NoArgsIsHelpError"))


def usage_error_line(e: Exception) -> str:
    """Click's message for a usage error on one line, with the command whose --help to read."""
    msg = " ".join(e.format_message().split())  # type: ignore[attr-defined]
    ctx = getattr(e, "ctx", None)
    return f"{msg} (see '{ctx.command_path} --help')" if ctx is not None else msg


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one clear line and exit 2, never a traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        rv = build_app(argv)(args=argv, standalone_mode=False, prog_name="meditune")
        return rv if isinstance(rv, int) else 0
    except MeditunError as e:
        print_error(str(e))
        return 2
    except EXITS as e:
        return e.exit_code
    except ABORTS:
        console.print("aborted")
        return 130
    except HELP_ERRORS as e:  # `meditune train` with no sub-command: the group's help
        e.show()
        return 2
    except CLICK_ERRORS as e:
        print_error(usage_error_line(e))
        return 2
    except OSError as e:
        message = os_error_message(e)
        if message is None:
            raise
        print_error(message)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
