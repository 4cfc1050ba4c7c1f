"""`meditune score ANSWERS.jsonl`: score answers with dahl | judge | answer | reward (or a YAML scorer config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    app.command("score")(score)


def read_answers(path: Path) -> list[tuple[Any, str]]:
    """(ScoreInput, group) per line of {id, question, answer, references?|must_have?, options?, gold?, model?}."""
    from meditune.errors import InputError
    from meditune.io import iter_jsonl
    from meditune.scoring.base import ScoreInput

    out, seen = [], set()
    for line, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise InputError("expected a JSON object", file=path, line=line)
        for key in ("id", "question", "answer"):
            if not isinstance(row.get(key), str):
                raise InputError("missing or not a string", file=path, line=line, field=key)
        if row["id"] in seen:
            raise InputError(f"duplicate id {row['id']!r}", file=path, line=line, field="id")
        seen.add(row["id"])
        refs = row.get("references", row.get("must_have", []))
        if isinstance(refs, str):
            refs = [refs]
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise InputError("expected a list of strings", file=path, line=line, field="references")
        options, gold = row.get("options"), row.get("gold")
        if options is not None and (not isinstance(options, list) or not isinstance(gold, int)
                                    or not 0 <= gold < len(options)):
            raise InputError("options needs a list and gold a 0-based index into it", file=path, line=line,
                             field="gold")
        out.append((ScoreInput(row["id"], row["question"], row["answer"], references=refs, options=options,
                               gold=gold), str(row.get("model", row.get("generator", "all")))))
    return out


def score(
    answers: Path = typer.Argument(..., help="JSONL: {id, question, answer, references?, options?, gold?, model?}."),
    scorer: str = typer.Option("dahl", "--scorer", "-s", help="dahl | judge | answer | reward."),
    config: Path = typer.Option(None, "--config", help="YAML scorer config (any type, incl. combine)."),
    judge: str = typer.Option("default", "--judge", help="Judge model (dahl, judge)."),
    splitter: str = typer.Option("judge", "--splitter", help="dahl: judge | sentences."),
    verifier: str = typer.Option("judge", "--verifier", help="dahl: judge | grounded_judge | embedding | judge_logprob."),
    threshold: float = typer.Option(0.7, "--threshold", help="Embedding verifier: cosine threshold."),
    reward_model: str = typer.Option(None, "--reward-model", help="Reward model directory (reward)."),
    out: Path = typer.Option(None, "--out", "-o", help="Scores JSONL (default: ANSWERS.scores.jsonl)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Answers per scorer call (and per append)."),
) -> None:
    """Score every answer (score + evidence per line); prints per-model means with n and 95% CIs."""
    from meditune.errors import ConfigError
    from meditune.prefs.datacard import mean_ci
    from meditune.recipe import read_yaml
    from meditune.scoring.base import Score
    from meditune.scoring.dahl import dahl_model_score
    from meditune.scoring.registry import build_scorer, parse_scorer_config
    from meditune.shards import Shard

    if config is not None:
        raw = read_yaml(config, "scorer config")
    else:
        raw = {"type": scorer}
        if scorer == "dahl":
            raw |= {"judge": {"model": judge}, "splitter": splitter, "verifier": verifier, "threshold": threshold}
        elif scorer == "judge":
            raw["judge"] = {"model": judge}
        elif scorer == "reward":
            if not reward_model:
                raise ConfigError("--scorer reward needs --reward-model DIR")
            raw["model"] = reward_model
    cfg = parse_scorer_config(raw, where=str(config) if config else "--scorer")
    rows = read_answers(answers)
    shard = Shard(out or answers.with_suffix(".scores.jsonl"))  # scores of an earlier (killed) run are kept
    done = shard.done
    todo = [(it, g) for it, g in rows if it.id not in done]
    if todo:
        sc = build_scorer(cfg)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            shard.add([{"id": it.id, "model": g, **s.to_dict()}
                       for (it, g), s in zip(chunk, sc.score([it for it, _ in chunk]), strict=True)])
    by_group: dict[str, list[Score]] = {}
    for it, g in rows:
        by_group.setdefault(g, []).append(Score.from_dict(done[it.id]))
    for g, scores in by_group.items():
        if cfg.type == "dahl":
            m = dahl_model_score(scores)
            val = "n/a" if m["score"] is None else f"{m['score']:.4f}"
            console.print(f"{g}: DAHL {val} 95% CI [{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}] n={m['n']} "
                          f"(dropped {m['n_dropped']}: {m['dropped_by_reason'] or 'none'})", markup=False)
        else:
            vals = [s.value for s in scores if s.clean and s.value is not None]
            m = mean_ci(vals)
            val = "n/a" if m["mean"] is None else f"{m['mean']:.4f}"
            console.print(f"{g}: {cfg.type} mean {val} 95% CI [{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}] n={m['n']} "
                          f"(unscored {len(scores) - len(vals)})", markup=False)
    console.print(f"scores: {shard.path}", markup=False, highlight=False)
