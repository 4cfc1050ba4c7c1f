"""`meditune merge CONFIG.yaml [--out DIR]`: merge models as a mergekit-style YAML describes."""

from __future__ import annotations

from pathlib import Path

import typer


def merge(
    config: Path = typer.Argument(..., help="Merge YAML (mergekit-compatible keys: models, base_model, "
                                            "merge_method, parameters, dtype, tokenizer_source)."),
    out: Path = typer.Option(None, "--out", "-o", help="Output model directory (default: merged/CONFIG-NAME)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
    seed: int = typer.Option(0, "--seed", help="Seed of DARE's random masks when the config sets none."),
) -> None:
    """Merge models tensor by tensor into a sharded safetensors model directory."""
    from rich.console import Console

    from meditune.errors import ConfigError
    from meditune.merging.config import load_merge_config
    from meditune.merging.merge import run_merge

    spec = load_merge_config(config)
    out = out or Path("merged") / config.stem
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"output directory {out} exists and is not empty; pass --force to replace it")
    summary = run_merge(spec, out, seed=seed, progress=True)
    Console().print(f"merged {len(summary['models'])} models with {summary['method']}: {summary['tensors']} "
                    f"tensors in {summary['shards']} shard(s), {summary['seconds']:.1f} s -> {out}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("merge")(merge)
