"""`meditune eval open|pairwise|ner|hallucination|safety|toxicity|bias` (docs/evaluation-open.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from meditune.errors import ConfigError

MODEL = typer.Option("default", "--model", "-m", help="Model spec (default, dir, adapter, .gguf, hub id).")
LIMIT = typer.Option(None, help="Evaluate only the first N items.")
JUDGE = typer.Option(None, help="Judge model spec, or a map such as '{backend: openai, model: M, base_url: U}'.")
SYSTEM = typer.Option(None, help="System prompt; 'model-default' keeps the template's own.")
BATCH = typer.Option(16, help="Generation batch size.")
DEVICE = typer.Option("auto", help="cpu | cuda | auto.")
DTYPE = typer.Option("auto", help="float32 | bfloat16 | auto.")
SEED = typer.Option(0, help="Seed (sampling, bootstrap).")
TASK = typer.Option(None, help="Task name in results.json.")
SET = typer.Option([], "--set", help="Any other option as key=value (see docs/evaluation-open.md).")


def _judge(text: str | None) -> Any:
    from meditune.recipe import parse_value

    if text and text.strip().startswith("{"):
        value = parse_value(text)
        if not isinstance(value, dict):
            raise ConfigError(f"--judge {text!r}: expected a map like '{{backend: openai, model: M}}'")
        return value
    return text


def _run(module: str, options: str, fn: str, out: Path, values: dict[str, Any], sets: list[str]) -> None:
    """Validate options (errors name the flag), evaluate, print the metrics table."""
    import importlib

    from pydantic import ValidationError

    from meditune.io import read_json
    from meditune.recipe import parse_value

    mod = importlib.import_module(f"meditune.evaluation.{module}")
    for pair in sets:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        values[key.strip().replace("-", "_")] = parse_value(value)
    values = {k: v for k, v in values.items() if v is not None}
    try:
        opts = getattr(mod, options).model_validate(values)
    except ValidationError as e:
        first = e.errors()[0]
        raise ConfigError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    paths = getattr(mod, fn)(opts, out)
    print_results(read_json(paths["results"]))
    typer.echo(f"results: {paths['results']}\nsamples: {paths['samples']}")


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


def open_qa(
    data: str = typer.Argument(..., help="LongFormItem/Chat source: medlfqa:..., liveqa:..., cmb_clin:..., cmd:..."),
    model: str = MODEL, out: Path = typer.Option(Path("runs/eval-open"), "--out", "-o"), limit: int = LIMIT,
    max_new_tokens: int = typer.Option(256, help="Answer length."), korean: str = typer.Option(
        "syllable", help="Korean tokens: syllable | eojeol."), system_prompt: str = SYSTEM, batch_size: int = BATCH,
    device: str = DEVICE, dtype: str = DTYPE, seed: int = SEED, task: str = TASK, set_: list[str] = SET,
) -> None:
    """Open QA / dialogue: BLEU-1/2/4 and ROUGE-1/2/L against reference answers."""
    _run("openqa", "OpenQAOptions", "evaluate_openqa", out, dict(
        data=data, model=model, limit=limit, max_new_tokens=max_new_tokens, korean=korean, system_prompt=system_prompt,
        batch_size=batch_size, device=device, dtype=dtype, seed=seed, task=task), set_)


def pairwise(
    data: str = typer.Argument(..., help="Questions (LongFormItem, Chat or SafetyItem source)."),
    system: list[str] = typer.Option(..., "--system", "-s", help="A system: model spec, NAME=model-spec, or "
                                                                  "NAME=answers.jsonl|results.json (repeat, 2 or more)."),
    judge: str = typer.Option("default", help="Judge model spec or map."),
    out: Path = typer.Option(Path("runs/eval-pairwise"), "--out", "-o"), limit: int = LIMIT,
    max_new_tokens: int = typer.Option(256, help="Answer length."), elo: str = typer.Option("bt", help="bt | online."),
    system_prompt: str = SYSTEM, batch_size: int = BATCH, device: str = DEVICE, dtype: str = DTYPE,
    seed: int = SEED, task: str = TASK, set_: list[str] = SET,
) -> None:
    """Pairwise judge in both orders: win rates and Elo ratings with bootstrap CIs."""
    systems: list[Any] = []
    for s in system:
        name, _, spec = s.partition("=") if "=" in s else (s, "", s)
        systems.append({"name": name, "answers": spec} if spec.endswith((".jsonl", ".json")) else {"name": name, "model": spec})
    _run("pairwise", "PairwiseOptions", "evaluate_pairwise", out, dict(
        data=data, systems=systems, judge=_judge(judge), limit=limit, max_new_tokens=max_new_tokens, elo=elo,
        system_prompt=system_prompt, batch_size=batch_size, device=device, dtype=dtype, seed=seed, task=task), set_)


def ner(
    data: str = typer.Argument(..., help="NERItem source, e.g. ccks:path/to/dev.json or sample:ner."),
    model: str = MODEL, out: Path = typer.Option(Path("runs/eval-ner"), "--out", "-o"), limit: int = LIMIT,
    max_new_tokens: int = typer.Option(256), system_prompt: str = SYSTEM, batch_size: int = BATCH,
    device: str = DEVICE, dtype: str = DTYPE, seed: int = SEED, task: str = TASK, set_: list[str] = SET,
) -> None:
    """Prompted clinical NER (CCKS-2019 types): exact span+type micro and per-type P/R/F1."""
    _run("ner", "NEROptions", "evaluate_ner", out, dict(
        data=data, model=model, limit=limit, max_new_tokens=max_new_tokens, system_prompt=system_prompt,
        batch_size=batch_size, device=device, dtype=dtype, seed=seed, task=task), set_)


def hallucination(
    data: str = typer.Argument(..., help="LongFormItem source (medlfqa:..., dahl:..., sample:longform)."),
    model: str = MODEL, judge: str = JUDGE, out: Path = typer.Option(Path("runs/eval-hallucination"), "--out", "-o"),
    limit: int = LIMIT, splitter: str = typer.Option("auto", help="auto | judge | sentences."),
    verifier: str = typer.Option("auto", help="auto | judge | grounded_judge | embedding."),
    coverage: str = typer.Option("auto", help="auto | judge | embedding | off."),
    max_new_tokens: int = typer.Option(256), system_prompt: str = SYSTEM, batch_size: int = BATCH,
    device: str = DEVICE, dtype: str = DTYPE, seed: int = SEED, task: str = TASK, set_: list[str] = SET,
) -> None:
    """DAHL hallucination score and must-have / nice-to-have statement coverage."""
    _run("hallucination", "HallucinationOptions", "evaluate_hallucination", out, dict(
        data=data, model=model, judge=_judge(judge), limit=limit, splitter=splitter, verifier=verifier,
        coverage=coverage, max_new_tokens=max_new_tokens, system_prompt=system_prompt, batch_size=batch_size,
        device=device, dtype=dtype, seed=seed, task=task), set_)


def safety(
    data: str = typer.Argument(..., help="Harmful requests (medsafetybench:..., sample:safety)."),
    model: str = MODEL, judge: str = JUDGE, benign: str = typer.Option("sample:benign", help="Benign questions "
                                                                                             "('' to skip)."),
    out: Path = typer.Option(Path("runs/eval-safety"), "--out", "-o"), limit: int = LIMIT,
    benign_limit: int = typer.Option(None), classifier: str = typer.Option("auto", help="auto | judge | keyword."),
    max_new_tokens: int = typer.Option(256), system_prompt: str = SYSTEM, batch_size: int = BATCH,
    device: str = DEVICE, dtype: str = DTYPE, seed: int = SEED, task: str = TASK, set_: list[str] = SET,
) -> None:
    """Harmful-compliance rate per category, over-refusal on benign questions, judge harmfulness 1-5."""
    _run("safety", "SafetyOptions", "evaluate_safety", out, dict(
        data=data, model=model, judge=_judge(judge), benign=benign or None, limit=limit, benign_limit=benign_limit,
        classifier=classifier, max_new_tokens=max_new_tokens, system_prompt=system_prompt, batch_size=batch_size,
        device=device, dtype=dtype, seed=seed, task=task), set_)


def toxicity(
    data: str = typer.Argument(..., help="ToxiGen prompts (toxigen:path/to/prompts)."),
    model: str = MODEL, judge: str = JUDGE, classifier: str = typer.Option(
        None, help="Sequence-classification model directory (else the judge)."),
    out: Path = typer.Option(Path("runs/eval-toxicity"), "--out", "-o"), limit: int = LIMIT,
    max_new_tokens: int = typer.Option(48), batch_size: int = BATCH, device: str = DEVICE, dtype: str = DTYPE,
    seed: int = SEED, task: str = TASK, set_: list[str] = SET,
) -> None:
    """Continuation toxicity rate by target group (raw prompts, no chat template)."""
    _run("toxicity", "ToxicityOptions", "evaluate_toxicity", out, dict(
        data=data, model=model, judge=_judge(judge), classifier=classifier, limit=limit,
        max_new_tokens=max_new_tokens, batch_size=batch_size, device=device, dtype=dtype, seed=seed, task=task), set_)


def bias(
    data: str = typer.Argument("sample:attitude", help="AttitudeItem source."),
    model: str = MODEL, out: Path = typer.Option(Path("runs/eval-bias"), "--out", "-o"), limit: int = LIMIT,
    group: list[str] = typer.Option([], "--group", "-g", help="Swap group (repeat); default: 8 groups."),
    system_prompt: str = SYSTEM, batch_size: int = BATCH, device: str = DEVICE, dtype: str = DTYPE,
    seed: int = SEED, task: str = TASK, set_: list[str] = SET,
) -> None:
    """Attitude-scale bias probe: stigma per item, dimension and group; group minus neutral with CIs."""
    _run("bias", "BiasOptions", "evaluate_bias", out, dict(
        data=data, model=model, limit=limit, groups=group or None, system_prompt=system_prompt,
        batch_size=batch_size, device=device, dtype=dtype, seed=seed, task=task), set_)


def register(eval_app: typer.Typer) -> None:
    """Add this module's commands to `meditune eval`."""
    eval_app.command("open")(open_qa)
    eval_app.command("pairwise")(pairwise)
    eval_app.command("ner")(ner)
    eval_app.command("hallucination")(hallucination)
    eval_app.command("safety")(safety)
    eval_app.command("toxicity")(toxicity)
    eval_app.command("bias")(bias)
