"""`meditune eval mcqa` (multiple-choice evaluation) and `meditune eval compare A B` (paired difference)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from meditune.errors import ConfigError


def _parse_strategy_options(pairs: list[str]) -> dict[str, Any]:
    from meditune.recipe import parse_value

    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"--strategy-option {p!r}: expected key=value")
        k, v = p.split("=", 1)
        out[k.strip()] = parse_value(v)
    return out


def _fmt(summary: dict[str, Any]) -> str:
    return f"{summary['value']:.4f}  [{summary['ci_low']:.4f}, {summary['ci_high']:.4f}]"


def mcqa(
    data: str = typer.Argument(..., help="Data source spec or MCQItem JSONL."),
    model: str = typer.Option("default", "--model", "-m", help="Model spec (default, dir, adapter, .gguf, hub id)."),
    out: Path = typer.Option(Path("runs/eval-mcqa"), "--out", "-o", help="Output directory."),
    task: str = typer.Option(None, help="Task name in results.json (default: data file stem)."),
    template: str = typer.Option("generic", help="medqa|medmcqa|pubmedqa|mmlu|kormedmcqa|cmmlu|generic|"
                                                 "continuation, or a format string with {question}."),
    shots: int = typer.Option(0, help="Number of few-shot examples (first n)."),
    fewshot_data: str = typer.Option(None, help="Source of few-shot examples (default: the eval data)."),
    chat: bool = typer.Option(False, "--chat/--no-chat", help="Apply the model's chat template."),
    system_prompt: str = typer.Option(None, help="System prompt; 'model-default' keeps the template's own."),
    mode: str = typer.Option(None, help="loglik | generative (default: the template's)."),
    choices: str = typer.Option(None, help="letters | full (default: the template's)."),
    per_token: bool = typer.Option(False, help="Also report acc_per_token."),
    strategy: str = typer.Option("direct", help="direct, or a strategy of meditune.evaluation.strategies."),
    strategy_option: list[str] = typer.Option([], "--strategy-option", help="key=value for the strategy."),
    limit: int = typer.Option(None, help="Evaluate only the first N items."),
    batch_size: int = typer.Option(16, help="Most questions per forward pass / prompts per generate call."),
    max_batch_tokens: int = typer.Option(None, help="Loglik: most tokens per forward (default: 2048 on CPU, "
                                                     "32768 on GPU)."),
    max_length: int = typer.Option(None, help="Context window (default: the model's)."),
    max_new_tokens: int = typer.Option(32, help="Generative mode: tokens to generate."),
    device: str = typer.Option("auto", help="cpu | cuda | auto."),
    dtype: str = typer.Option("auto", help="float32 | bfloat16 | auto."),
    trust_remote_code: bool = typer.Option(False, help="Allow model code from the hub."),
    seed: int = typer.Option(0, help="Seed (bootstrap, sampling strategies)."),
) -> None:
    """Evaluate a model on multiple-choice questions (lm-eval compatible numbers, shared-prefix speed)."""
    from pydantic import ValidationError

    from meditune.evaluation.mcqa import MCQAOptions, evaluate_mcqa
    from meditune.io import check_output_dir, read_json

    try:
        opts = MCQAOptions(model=model, data=data, task=task, template=template, shots=shots,
                           fewshot_data=fewshot_data, chat_template=chat, system_prompt=system_prompt, mode=mode,
                           choices=choices, per_token=per_token, strategy=strategy,
                           strategy_options=_parse_strategy_options(strategy_option), limit=limit,
                           batch_size=batch_size, max_batch_tokens=max_batch_tokens, max_length=max_length,
                           max_new_tokens=max_new_tokens,
                           device=device, dtype=dtype, trust_remote_code=trust_remote_code, seed=seed)
    except ValidationError as e:
        first = e.errors()[0]
        raise ConfigError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    check_output_dir(out, "--out")
    paths = evaluate_mcqa(opts, out)
    res = read_json(paths["results"])
    _print_results(res)
    typer.echo(f"results: {paths['results']}\nsamples: {paths['samples']}")


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
    eval_app.command("mcqa")(mcqa)
    eval_app.command("compare")(compare)
