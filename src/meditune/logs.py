"""Logging to the console (rich) and to files in run directories."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_console(verbose: bool = False) -> None:
    """Rich console logging for the CLI (INFO, or DEBUG with --verbose)."""
    from rich.logging import RichHandler

    root = logging.getLogger()
    if any(getattr(h, "_meditune_console", False) for h in root.handlers):
        return
    handler = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
    handler._meditune_console = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub", "datasets", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def log_to_file(path: str | os.PathLike):
    """Also write all log records to `path` (appending) while inside the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
