"""The reasoning recipe (rationale SFT -> GRPO) on MedQA-US dev with the default model, measured: the GRPO reward
curve, s/step, held-out accuracy (direct and chain of thought) and held-out reward before/after with paired CIs.

    python bench/grpo_reasoning.py --out /tmp/grpo_bench [--train 60 --heldout 80 --tokens 96 --threads 1]

Training prompts and held-out questions are disjoint slices of a seeded shuffle of MedQA-US 4-option dev (read
from ../shared/data, never copied into the project). Re-running with the same --out reuses finished stages.
The held-out reward is the GRPO reward (1 x correct + 0.2 x format, the recipe's weights) of each greedy CoT
answer of the evaluations before and after, paired per question.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import SHARED, ready  # noqa: E402

MEDQA = SHARED / "medqa_us" / "US" / "4_options" / "phrases_no_exclude_dev.jsonl"


def overrides(a: argparse.Namespace) -> list[str]:
    cot = f"{{max_new_tokens: {a.tokens}, max_retries: 0}}"
    return [f"mcq.source=medqa_us:{MEDQA}", "mcq.language=null", "mcq.shuffle=true",
            f"mcq.limit={a.train + a.heldout}", f"mcq.eval_size={a.heldout}",
            f"cot_before.strategy_options={cot}", f"cot_after.strategy_options={cot}",
            f"cot_before.batch_size={a.gen_batch}", f"cot_after.batch_size={a.gen_batch}",
            f"rationales.max_new_tokens={a.tokens}", f"rationales.batch_size={a.gen_batch}",
            f"grpo.max_completion_length={a.tokens}", f"grpo.batch_size={a.grpo_batch}",
            f"grpo.grad_accum={a.grad_accum}", f"grpo.max_steps={a.steps}",
            f"grpo.num_generations={a.generations}", f"grpo.learning_rate={a.lr}", "device=cpu"] + a.set


def heldout_rewards(results_path: str, items: dict[str, int]) -> tuple[list[float], list[float]]:
    """Per question (in file order): the GRPO reward of its CoT answer, and whether it parsed."""
    from meditune.evaluation.results import load_samples
    from meditune.training.mcq_reasoning import DEFAULT_REWARDS, reward_functions

    samples = load_samples(results_path)
    funcs, weights = reward_functions(DEFAULT_REWARDS)
    texts = [[{"role": "assistant", "content": s.get("response") or ""}] for s in samples]
    cols = {"gold": [s["gold"] for s in samples], "n_options": [items[s["id"]] for s in samples]}
    per_func = [f([None] * len(texts), texts, **cols) for f in funcs]
    reward = [sum(w * r[k] for w, r in zip(weights, per_func, strict=True)) for k in range(len(texts))]
    return reward, [float(s.get("parsed", False)) for s in samples]


def curves(path: Path) -> list[dict[str, float]]:
    keys = ["step", "reward", "rewards/correct/mean", "rewards/format/mean", "parse_rate", "kl",
            "completions/mean_length", "loss", "step_time"]
    with open(path) as f:
        return [{k: float(r[k]) for k in keys if r.get(k)} for r in csv.DictReader(f) if r.get("reward")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train", type=int, default=60)
    ap.add_argument("--heldout", type=int, default=80)
    ap.add_argument("--tokens", type=int, default=96, help="CoT / completion token budget")
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--grpo-batch", type=int, default=4, help="completions per GRPO micro-batch")
    ap.add_argument("--grad-accum", type=int, default=4, help="micro-batches per GRPO step (sampled together)")
    ap.add_argument("--steps", type=int, default=10, help="GRPO optimizer steps (-1: one epoch)")
    ap.add_argument("--gen-batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], help="more recipe overrides")
    a = ap.parse_args()
    if not ready(a.threads):
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from meditune.evaluation.results import compare
    from meditune.io import iter_jsonl, read_json, write_json
    from meditune.pipeline import Pipeline
    from meditune.recipe import bundled_recipe, load_recipe
    from meditune.stats import bootstrap_ci, paired_bootstrap

    recipe = load_recipe(bundled_recipe("reasoning"), overrides(a))
    load_before = os.getloadavg()
    t0, cpu0 = time.time(), resource.getrusage(resource.RUSAGE_SELF)
    out = Pipeline(recipe, a.out).run()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    items = {obj["id"]: len(obj["options"]) for _, obj in iter_jsonl(out["mcq"]["eval"])}
    summary: dict = {"settings": vars(a) | {"out": str(a.out)}, "load_before": load_before,
                     "load_after": os.getloadavg(), "wall_s": round(time.time() - t0, 1),
                     "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1),
                     "stage_s": {s.name: read_json(a.out / s.name / "manifest.json").get("duration_s")
                                 for s in recipe.stages}}
    summary["rationales"] = read_json(out["rationales"]["results"])["bank"]
    summary["sft"] = read_json(out["sft"]["summary"])
    grpo = read_json(out["grpo"]["results"])
    summary["grpo"] = {"train": grpo["train"], "curves": grpo["curves"], "steps": curves(Path(out["grpo"]["curves"]))}
    for proto in ("direct", "cot"):
        cmp = compare(out[f"{proto}_before"]["results"], out[f"{proto}_after"]["results"], "acc")
        summary[f"{proto}_acc"] = cmp["metrics"]["acc"] | {"n": cmp["n_common"]}
    (rb, pb), (ra, pa) = (heldout_rewards(out[f"cot_{w}"]["results"], items) for w in ("before", "after"))
    summary["heldout_reward"] = {"before": sum(rb) / len(rb), "before_ci": bootstrap_ci(rb),
                                 "after": sum(ra) / len(ra), "after_ci": bootstrap_ci(ra),
                                 "paired": paired_bootstrap(rb, ra)}
    summary["heldout_parse_rate"] = {"before": sum(pb) / len(pb), "after": sum(pa) / len(pa),
                                     "paired": paired_bootstrap(pb, pa)}
    write_json(a.out / "bench_summary.json", summary)
    print(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
