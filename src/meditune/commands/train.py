"""`meditune train cpt|sft|dpo|orpo|rm|rs|idpo|grpo`: run one training stage on its own, outside a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

console = Console()
train_app = typer.Typer(no_args_is_help=True,
                        help="Train: continued pre-training, SFT, DPO, ORPO, reward model, rejection sampling, "
                             "iterative DPO, GRPO (TRL + PEFT).")

STAGES = {
    "cpt": "Continued pre-training on raw text (.txt, a directory of .txt, or JSONL with 'text'), packed.",
    "sft": "Supervised fine-tuning on chats; loss on assistant tokens only; LoRA or full.",
    "dpo": "DPO on preference pairs; LoRA uses the adapter-off model as reference; several --data run in sequence.",
    "orpo": "ORPO on preference pairs (no reference model).",
    "rm": "Reward model (sequence classification) with held-out pairwise accuracy.",
    "rs": "Rejection sampling: sample k per prompt, score, keep the top-K, SFT; --set rounds=N.",
    "idpo": "Iterative DPO: sample n per prompt, DPO on best vs worst; --set rounds=N.",
    "grpo": "GRPO on MCQ prompts (reason, then 'Answer: X'); rewards: correctness, format, any scorer.",
}


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")


FLAGS = {"data": "--data", "method": "--method", "max_steps": "--max-steps", "epochs": "--epochs",
         "learning_rate": "--lr", "batch_size": "--batch-size", "system_prompt": "--system-prompt"}


def stage_config(stage: str, name: str, fields: dict[str, Any], config_file: Path | None, overrides: list[str]):
    """The stage config from a YAML mapping, command-line fields and --set key=value overrides."""
    from meditune.recipe import config_from
    from meditune.stages import registry

    return config_from(registry()[stage].config, fields=fields, config_file=config_file, sets=overrides,
                       fixed={"name": name, "type": stage}, flags=FLAGS)


def _make_command(stage: str, help_text: str):
    def command(
        data: list[str] = typer.Option(..., "--data", "-d", help="Training data: a JSONL of records or a source "
                                       "spec (repeat for several; dpo: runs them in sequence)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output directory (a killed run resumes here)."),
        model: str = typer.Option("default", "--model", "-m", help="Base model: default | dir | adapter dir | "
                                  "file.gguf | org/name."),
        method: str = typer.Option(None, "--method", help="lora | full"),
        max_steps: int = typer.Option(None, "--max-steps", help="Optimizer steps (overrides --epochs)."),
        epochs: float = typer.Option(None, "--epochs"),
        lr: float = typer.Option(None, "--lr", help="Learning rate (default depends on stage and method)."),
        batch_size: int = typer.Option(None, "--batch-size"),
        system_prompt: str = typer.Option(None, "--system-prompt", help="System prompt for every example."),
        seed: int = typer.Option(0, "--seed"),
        config: Path = typer.Option(None, "--config", "-c", help="YAML mapping of stage options."),
        set_: list[str] = typer.Option([], "--set", help="Any stage option: key=value (repeatable)."),
    ) -> None:
        from meditune.io import check_output_dir, removed_on_error
        from meditune.logs import log_to_file
        from meditune.recipe import Recipe
        from meditune.stages import StageContext, registry

        fields = {"data": data[0] if len(data) == 1 else data, "method": method, "max_steps": max_steps,
                  "epochs": epochs, "learning_rate": lr, "batch_size": batch_size, "system_prompt": system_prompt}
        cfg = stage_config(stage, stage, fields, config, set_)
        recipe = Recipe(name=f"train-{stage}", model=model, seed=seed)
        check_output_dir(out, "--out")
        # bad data or settings found while training starts: nothing (not even train.log) stays in OUT
        with removed_on_error(out):
            out.mkdir(parents=True, exist_ok=True)
            ctx = StageContext(run_dir=out, stage_dir=out, recipe=recipe)
            with log_to_file(out / "train.log"):
                outs = registry()[stage].run(cfg, ctx)
        for name, path in outs.items():
            console.print(f"{name}: {path}", markup=False, highlight=False)

    command.__doc__ = help_text
    return command


for _stage, _help in STAGES.items():
    train_app.command(_stage, help=_help)(_make_command(_stage, _help))
