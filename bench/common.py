"""What every bench script needs: where the shared data is, the CPU thread setting, and (for the benches that run
a recipe and report a before/after effect) running it, the load average, and one effect with its CIs."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

EFFECT_HEADER = ("| effect | data (n) | protocol | before [95% CI] | after [95% CI] | difference [95% CI] | wall time |\n"
                 "|---|---|---|---|---|---|---|")


def ready(threads: int) -> bool:
    """Apply --threads (0 = torch's default); False (after saying so) when ../shared/data is absent."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} not present")
        return False
    return True


def load_average() -> str:
    """The 1/5/15-minute load averages, as `uptime` prints them (wall times mean little without them)."""
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def effect_parser(doc: str, out: str) -> argparse.ArgumentParser:
    """An effect bench's parser: its docstring's first paragraph as description, and --out."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(out))
    return ap


def effect_args(ap: argparse.ArgumentParser, trained: str, tiny: dict[str, int]) -> None:
    """The options every effect bench has besides its sizes: --max-steps (of the `trained` stage), --model,
    --seed, --threads, --set, and --tiny (these sizes and 2 training steps: an end-to-end check)."""
    ap.add_argument("--max-steps", type=int, default=0, help=f"> 0: stop {trained} after this many steps")
    ap.add_argument("--model", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="further recipe overrides (KEY=VALUE)")
    sizes = {**tiny, "max_steps": 2}
    ap.add_argument("--tiny", action="store_true",
                    help=", ".join(f"{k.replace('_', '-')} {v}" for k, v in sizes.items()) + "; numbers mean nothing")
    ap.set_defaults(tiny_sizes=sizes)


def begin(args: argparse.Namespace) -> bool:
    """--tiny sizes, threads and shared data (ready), the load average at the start, the output directory;
    False: skip."""
    if args.tiny:
        for key, value in args.tiny_sizes.items():
            setattr(args, key, value)
    if not ready(args.threads):
        return False
    print(f"start: {load_average()}")
    args.out.mkdir(parents=True, exist_ok=True)
    return True


def print_effects(*rows: list[str]) -> None:
    """The effect table: EFFECT_HEADER, then one row per list of cells."""
    print(EFFECT_HEADER)
    for cells in rows:
        print("| " + " | ".join(cells) + " |")


def build_recipe(data: dict[str, Any], overrides: list[str]) -> Any:
    """A recipe from a mapping built in code, with --set KEY=VALUE overrides (validated as a recipe file is)."""
    from meditune.recipe import apply_overrides, parse_recipe

    return parse_recipe(apply_overrides(data, overrides) if overrides else data, data["name"])


def run_stages(recipe: Any, run_dir: Path, only: list[str] | None = None) -> tuple[dict[str, Any], float]:
    """Run (or resume) the recipe's stages in run_dir; the finished stages by name and this call's wall seconds."""
    from meditune.pipeline import Pipeline
    from meditune.report.collect import load_stages

    t0 = time.time()
    Pipeline(recipe, run_dir).run(only=only)
    wall = time.time() - t0
    return {s.name: s for s in load_stages(run_dir, [s.name for s in recipe.stages])}, wall


def stage_minutes(stages: dict[str, Any]) -> str:
    """Total and per-stage minutes from the manifests (true even when some stages were reused from disk)."""
    total = sum(s.manifest.get("duration_s", 0) for s in stages.values()) / 60
    return f"{total:.1f} min (" + ", ".join(f"{n} {s.manifest.get('duration_s', 0) / 60:.1f}"
                                            for n, s in stages.items()) + ")"


def with_ci(m: dict[str, Any], signed: bool = False) -> str:
    """'0.123 [0.100, 0.150]' from a metric dict with value (or diff), ci_low and ci_high."""
    sign = "+" if signed else ""
    value = m["diff"] if "diff" in m else m["value"]
    return f"{value:{sign}.3f} [{m['ci_low']:{sign}.3f}, {m['ci_high']:{sign}.3f}]"


def paired(before: Any, after: Any, metric: str) -> dict[str, Any]:
    """after - before of one per-item metric over the common items (paired bootstrap, report.collect)."""
    from meditune.report.collect import paired_diffs

    rows = [d for d in paired_diffs(before, after) if d["metric"] == metric]
    if not rows:
        raise SystemExit(f"metric {metric!r} is not in both {before.name} and {after.name}")
    return rows[0]


def train_line(stage: Any) -> str:
    """Examples, steps, s/step and first/last loss of a training stage (its train_summary.json)."""
    path = stage.outputs.get("summary")
    if not path or not Path(path).is_file():
        return f"{stage.name}: no train_summary.json"
    s = json.loads(Path(path).read_text(encoding="utf-8"))
    m = s.get("metrics", {})
    loss = (f", loss {m['first_loss']:.3f} -> {m['last_loss']:.3f}" if "first_loss" in m and "last_loss" in m
            else "")
    return (f"{stage.name}: {s['train_examples']} examples, {s['steps']} steps, {s['s_per_step']:.1f} s/step"
            f"{loss}")
