"""`meditune eval open|pairwise|ner|hallucination|safety|toxicity|bias` (docs/evaluation-open.md)."""

from __future__ import annotations

from typing import Any

import typer

from meditune.commands.options import config_command, out_option
from meditune.errors import ConfigError
from meditune.io import read_json


def _judge(text: str) -> Any:
    """--judge: a model spec, or a map such as '{backend: openai, model: M, base_url: U}'."""
    from meditune.recipe import parse_value

    if text.strip().startswith("{"):
        value = parse_value(text)
        if not isinstance(value, dict):
            raise ConfigError(f"--judge {text!r}: expected a map like '{{backend: openai, model: M}}'")
        return value
    return text


def _systems(specs: list[str]) -> list[Any]:
    """--system: a model spec, NAME=model-spec, or NAME=answers.jsonl|results.json."""
    systems: list[Any] = []
    for s in specs:
        name, _, spec = s.partition("=") if "=" in s else (s, "", s)
        systems.append({"name": name, "answers": spec} if spec.endswith((".jsonl", ".json"))
                       else {"name": name, "model": spec})
    return systems


def _fmt(s: dict[str, Any]) -> str:
    return f"{s['value']:.4g}  [{s['ci_low']:.4g}, {s['ci_high']:.4g}]  n={s['n']}"


def print_results(res: dict[str, Any]) -> None:
    """Overall metrics and the by_category breakdowns, each with its 95% CI and n."""
    from rich.console import Console
    from rich.table import Table

    med, console = res["meditune"], Console()
    table = Table(title=f"{next(iter(res['results']))}  (n={med['n']}, 95% CI)")
    table.add_column("metric")
    table.add_column("value  [95% CI]  n")
    for m, s in med["metrics"].items():
        table.add_row(m, _fmt(s))
    console.print(table)
    for metric, groups in (med.get("by_category") or {}).items():
        if groups:
            t = Table(title=f"{metric} by group")
            t.add_column("group")
            t.add_column("value  [95% CI]  n")
            for g, s in groups.items():
                t.add_row(str(g), _fmt(s))
            console.print(t)


# command -> (module, options class, evaluate function, default output, data help, summary)
COMMANDS: dict[str, tuple[str, str, str, str, str]] = {
    "open": ("openqa", "OpenQAOptions", "evaluate_openqa", "runs/eval-open",
             "Open QA / dialogue: BLEU-1/2/4 and ROUGE-1/2/L against reference answers."),
    "pairwise": ("pairwise", "PairwiseOptions", "evaluate_pairwise", "runs/eval-pairwise",
                 "Pairwise judge in both orders: win rates and Elo ratings with bootstrap CIs."),
    "ner": ("ner", "NEROptions", "evaluate_ner", "runs/eval-ner",
            "Prompted clinical NER (CCKS-2019 types): exact span+type micro and per-type P/R/F1."),
    "hallucination": ("hallucination", "HallucinationOptions", "evaluate_hallucination", "runs/eval-hallucination",
                      "DAHL hallucination score and must-have / nice-to-have statement coverage."),
    "safety": ("safety", "SafetyOptions", "evaluate_safety", "runs/eval-safety",
               "Harmful-compliance rate per category, over-refusal on benign questions, judge harmfulness 1-5."),
    "toxicity": ("toxicity", "ToxicityOptions", "evaluate_toxicity", "runs/eval-toxicity",
                 "Continuation toxicity rate by target group (raw prompts, no chat template)."),
    "bias": ("bias", "BiasOptions", "evaluate_bias", "runs/eval-bias",
             "Attitude-scale bias probe: stigma per item, dimension and group; group minus neutral with CIs."),
}


def open_command(name: str) -> Any:
    """`meditune eval NAME`, its options those of the evaluation's options class (its stage's config)."""
    import importlib

    module, options, fn, out, doc = COMMANDS[name]
    mod = importlib.import_module(f"meditune.evaluation.{module}")

    def run(opts: Any, extras: dict[str, Any]) -> None:
        from meditune.distributed import current
        from meditune.io import check_output_dir

        check_output_dir(extras["out"], "--out")
        paths = getattr(mod, fn)(opts, extras["out"])
        if not current().is_main:  # under torchrun rank 0 wrote the files and prints them
            return
        print_results(read_json(paths["results"]))
        typer.echo(f"results: {paths['results']}\nsamples: {paths['samples']}")

    return config_command(
        getattr(mod, options), run, argument="data", doc=doc, extra=[out_option(out)],
        decls={"model": ("--model", "-m"), "systems": ("--system", "-s"), "groups": ("--group", "-g")},
        defaults={"model": "default", "judge": "default"} if name == "pairwise" else {"model": "default"},
        convert={"judge": (str, _judge, "judge model spec, or a map such as '{backend: openai, model: M, "
                                        "base_url: U}'"),
                 "systems": (list[str], _systems, "a system: model spec, NAME=model-spec, or "
                                                  "NAME=answers.jsonl|results.json (repeat, 2 or more)")})


def register(eval_app: typer.Typer) -> None:
    """Add this module's commands to `meditune eval`."""
    for name in COMMANDS:
        eval_app.command(name)(open_command(name))
