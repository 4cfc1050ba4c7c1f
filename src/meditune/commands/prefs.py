"""`meditune prefs build`: a preference dataset from several generators' answers scored by DAHL (or another scorer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
prefs_app = typer.Typer(no_args_is_help=True, help="Automated preference data (KoMeP-style): collect answers from "
                                                   "N generators, score them, pair them, write a datacard.")


def register(app: typer.Typer) -> None:
    app.add_typer(prefs_app, name="prefs")


def parse_generator(text: str) -> dict[str, Any]:
    """'MODEL' or 'NAME=MODEL' -> a generator config mapping."""
    name, sep, model = text.partition("=")
    return {"name": name.strip(), "model": model.strip()} if sep else {"model": text.strip()}


def build_config(config: Path | None, overrides: dict[str, Any], sets: list[str]) -> Any:
    """The prefs stage config from an optional YAML file, command-line options and --set KEY=VALUE."""
    from meditune.prefs.build import PrefsStageConfig
    from meditune.recipe import config_from

    return config_from(PrefsStageConfig, fields=overrides, config_file=config, sets=sets,
                       base={"name": "prefs", "type": "prefs"})


@prefs_app.command("build")
def build(
    config: Path = typer.Argument(None, help="YAML with the prefs settings (the `prefs` stage's keys)."),
    questions: str = typer.Option(None, "--questions", "-q", help="Source spec, e.g. dahl:path/questions.csv."),
    generator: list[str] = typer.Option(None, "--generator", "-g", help="MODEL or NAME=MODEL (repeatable)."),
    judge: str = typer.Option(None, "--judge", help="Judge model spec for the dahl/judge scorers."),
    scorer: str = typer.Option(None, "--scorer", help="dahl | judge | answer (reward/combine: use a config)."),
    policy: str = typer.Option(None, "--policy", help="best_worst | best_random_below | all_pairs."),
    margin: float = typer.Option(None, "--margin", help="Minimum chosen - rejected score."),
    limit: int = typer.Option(None, "--limit", help="Only the first N questions."),
    samples: int = typer.Option(None, "--samples", help="Answers per generator and question."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Generator answer length (DAHL: 256)."),
    sets: list[str] = typer.Option(None, "--set", help="KEY=VALUE override, e.g. scorer.verifier=embedding."),
    out: Path = typer.Option(Path("runs/prefs"), "--out", "-o", help="Output directory (re-run to resume)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Collect, score, pair and document a preference dataset; prints the counts and where the files are."""
    from meditune.distributed import current
    from meditune.errors import ConfigError
    from meditune.io import read_json
    from meditune.prefs.build import build_preferences

    over: dict[str, Any] = {"questions": questions, "limit": limit, "pairing.policy": policy,
                            "pairing.margin": margin, "collection.samples": samples,
                            "collection.max_new_tokens": max_new_tokens}
    if generator:
        over["generators"] = [parse_generator(g) for g in generator]
    if scorer:
        over["scorer"] = {"type": scorer}
    cfg_raw = build_config(config, over, sets or [])
    if judge:
        if not hasattr(cfg_raw.scorer, "judge"):
            raise ConfigError(f"--judge: the {cfg_raw.scorer.type!r} scorer uses no judge")
        cfg_raw.scorer.judge.model.spec = judge
    paths = build_preferences(cfg_raw, out, seed=seed)
    if not current().is_main:  # under torchrun rank 0 wrote the files and prints them
        return
    card = read_json(paths["datacard"])
    c = card["counts"]
    table = Table(title=f"preference pairs: {c['pairs']} from {c['questions_with_pairs']} of {c['questions']} "
                        "questions")
    for col in ("generator", "answers", "clean", "mean score [95% CI]", "chosen", "rejected"):
        table.add_column(col)
    for g in card["generators"]:
        m = g["score"]
        ci = "n/a" if m["mean"] is None else f"{m['mean']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"
        table.add_row(escape(g["label"]), str(g["answers"]), str(m["n"]), ci, str(g["chosen"]), str(g["rejected"]))
    console.print(table)
    console.print(f"questions dropped: {c['questions_dropped'] or 'none'}; answers excluded: "
                  f"{c['answers_dropped'] or 'none'}", markup=False)
    for name in ("dataset", "trl", "datacard_md"):
        console.print(f"{name}: {paths[name]}", markup=False)
