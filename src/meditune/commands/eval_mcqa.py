"""`meditune eval mcqa` (multiple-choice evaluation) and `meditune eval compare A B` (paired difference)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from meditune.commands.options import config_command, out_option


def _fmt(summary: dict[str, Any]) -> str:
    return f"{summary['value']:.4f}  [{summary['ci_low']:.4f}, {summary['ci_high']:.4f}]"


def _run_mcqa(opts: Any, extras: dict[str, Any]) -> None:
    """Evaluate, print the metrics table and where the files are."""
    from meditune.distributed import current
    from meditune.evaluation.mcqa import evaluate_mcqa
    from meditune.io import check_output_dir, read_json

    check_output_dir(extras["out"], "--out")
    paths = evaluate_mcqa(opts, extras["out"])
    if not current().is_main:  # under torchrun rank 0 wrote the files and prints them
        return
    _print_results(read_json(paths["results"]))
    typer.echo(f"results: {paths['results']}\nsamples: {paths['samples']}")


def _strategy_options(pairs: list[str]) -> dict[str, Any]:
    from meditune.recipe import apply_overrides

    return apply_overrides({}, pairs, flag="--strategy-option")


def mcqa_command() -> Any:
    """`meditune eval mcqa`, its options those of MCQAOptions (the eval_mcqa stage's config)."""
    from meditune.evaluation.mcqa import MCQAOptions

    return config_command(
        MCQAOptions, _run_mcqa, argument="data",
        doc="Evaluate a model on multiple-choice questions (lm-eval compatible numbers, shared-prefix speed).",
        decls={"model": ("--model", "-m"), "chat_template": ("--chat/--no-chat",),
               "strategy_options": ("--strategy-option",)}, defaults={"model": "default"},
        convert={"strategy_options": (list[str], _strategy_options, "key=value for the strategy (repeatable).")},
        extra=[out_option("runs/eval-mcqa")])


def _print_results(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    med = res["meditune"]
    table = Table(title=f"{next(iter(res['results']))}  (n={med['n']}, 95% bootstrap CI)")
    table.add_column("subject")
    names = list(med["metrics"])
    for m in names:
        table.add_column(m)
    table.add_row("all", *[_fmt(med["metrics"][m]) for m in names])
    for subj, ms in med.get("breakdown", {}).items():
        table.add_row(f"{subj} (n={next(iter(ms.values()))['n']})", *[_fmt(ms[m]) if m in ms else "" for m in names])
    Console().print(table)
    notes = [f"{k}: {med[k]}" for k in ("truncated", "unparseable") if k in med]
    if notes:
        typer.echo("  ".join(notes))


def compare(
    a: Path = typer.Argument(..., help="results.json of run A."),
    b: Path = typer.Argument(..., help="results.json of run B."),
    metric: str = typer.Option(None, help="Only this metric."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    json_out: Path = typer.Option(None, "--json", help="Also write the comparison as JSON."),
) -> None:
    """Difference B - A on common items with a paired bootstrap 95% CI and p-value."""
    from rich.console import Console
    from rich.table import Table

    from meditune.evaluation.results import compare as compare_runs
    from meditune.io import write_json

    cmp = compare_runs(a, b, metric, seed=seed)
    table = Table(title=f"B - A on {cmp['n_common']} common items (paired bootstrap, 95% CI)")
    for col in ("metric", "A", "B", "B - A", "95% CI", "p"):
        table.add_column(col)
    for m, r in cmp["metrics"].items():
        table.add_row(m, f"{r['a']:.4f}", f"{r['b']:.4f}", f"{r['diff']:+.4f}",
                      f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]", f"{r['p_value']:.3f}")
    Console().print(table)
    if cmp["only_a"] or cmp["only_b"]:
        typer.echo(f"items only in A: {cmp['only_a']}, only in B: {cmp['only_b']} (excluded)")
    if json_out:
        write_json(json_out, cmp)


def register(eval_app: typer.Typer) -> None:
    """Add this module's commands to `meditune eval`."""
    eval_app.command("mcqa")(mcqa_command())
    eval_app.command("compare")(compare)
