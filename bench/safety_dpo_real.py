"""The quickstart's safety regime on real data: does it make the default model decline harmful medical requests
while it keeps answering real consumer health questions and keeps its MCQ accuracy?

Data (../shared/data, read only; nothing is copied into the project):
  harmful, train   MedSafetyBench train/gpt4: requests with their safe responses, --per-category per AMA category
  harmful, test    MedSafetyBench med_harm_llama3: other requests (another generator), --test-per-category each;
                   any that shares a word 8-gram with a train request is dropped (a disjoint part)
  benign, train    MedicationQA: real consumer medication questions with their answers (the chosen answers)
  benign, test     HealthSearchQA: real consumer health questions (over-refusal)
  MCQ guard        MedQA-US 4-option dev, the first --mcq items (never trained on)
The run is the quickstart recipe (recipes/quickstart.yaml) with its data stages pointed at these files, so the
generators, the refusal classifier, the pairing, DPO and the evaluations are exactly the quickstart's.
Prints (a) harmful compliance, (b) over-refusal, (c) MCQ accuracy before and after with paired 95% CIs, the
pair counts and the wall time.

    python bench/safety_dpo_real.py --out bench/out/safety_real [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from common import SHARED, load_average, paired, ready, run_stages, stage_minutes


def ngrams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def first_sentences(text: str, limit: int = 600) -> str:
    """A long reference answer cut at a sentence end near `limit` characters (chosen answers stay answer-sized)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = max(text.rfind(". ", 0, limit), text.rfind("? ", 0, limit))
    return text[:cut + 1] if cut > 100 else text[:limit]


def build_data(work: Path, per_category: int, test_per_category: int, benign_train: int, benign_test: int,
               seed: int) -> dict[str, int]:
    """Write train.jsonl and test.jsonl (SafetyItem records) under work/; returns counts."""
    from meditune.data import load_source
    from meditune.records import SafetyItem, write_records

    rng = random.Random(seed)
    msb = SHARED / "medsafetybench"
    train_h, test_h = [], []
    for cat in range(1, 10):
        rows = load_source(f"medsafetybench:{msb}/train/gpt4/med_safety_demonstrations_category_{cat}.csv")
        train_h += rng.sample([r for r in rows if r.safe_response], per_category)
    seen = set().union(*(ngrams(r.request) for r in train_h))
    for cat in range(1, 10):
        rows = [r for r in load_source(f"medsafetybench:{msb}/med_harm_llama3/category_{cat}.txt")
                if len(r.request) > 30 and not ngrams(r.request) & seen]
        test_h += rng.sample(rows, test_per_category)
    mqa = [r for r in load_source(f"medicationqa:{SHARED}/medicationqa") if r.reference]
    hsq = load_source(f"healthsearchqa:{SHARED}/healthsearchqa/test.jsonl")
    benign_tr = [SafetyItem(id=f"mqa-{r.id}", request=r.question, safe_response=first_sentences(r.reference),
                            harmful=False, category="medication", source="medicationqa")
                 for r in rng.sample(mqa, benign_train)]
    benign_te = [SafetyItem(id=f"hsq-{r.id}", request=r.question, harmful=False, category="consumer",
                            source="healthsearchqa") for r in rng.sample(hsq, benign_test)]
    write_records(work / "train.jsonl", train_h + benign_tr)
    write_records(work / "test.jsonl", test_h + benign_te)
    return {"harmful_train": len(train_h), "harmful_test": len(test_h), "benign_train": len(benign_tr),
            "benign_test": len(benign_te)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/out/safety_real"))
    ap.add_argument("--per-category", type=int, default=8)
    ap.add_argument("--test-per-category", type=int, default=8)
    ap.add_argument("--benign-train", type=int, default=72)
    ap.add_argument("--benign-test", type=int, default=72)
    ap.add_argument("--mcq", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="further recipe overrides (KEY=VALUE)")
    args = ap.parse_args()
    if not ready(args.threads):
        return
    from meditune.recipe import bundled_recipe, load_recipe

    print(f"start: {load_average()}")
    args.out.mkdir(parents=True, exist_ok=True)
    counts = build_data(args.out, args.per_category, args.test_per_category, args.benign_train, args.benign_test,
                        args.seed)
    medqa = SHARED / "medqa_us" / "US" / "4_options" / "phrases_no_exclude_dev.jsonl"
    overrides = [f"safety_train.source={args.out / 'train.jsonl'}", "safety_train.split=null",
                 f"safety_test.source={args.out / 'test.jsonl'}", "safety_test.split=null",
                 f"mcq.source=medqa:{medqa}", "mcq.language=null", f"mcq.limit={args.mcq}",
                 "mcq_before.task=medqa_us_dev", "mcq_after.task=medqa_us_dev",
                 "report.title=Safety DPO on real data (MedSafetyBench, MedicationQA, HealthSearchQA, MedQA-US)",
                 *args.set]
    recipe = load_recipe(bundled_recipe("quickstart"), overrides)
    stages, wall = run_stages(recipe, args.out / "run")
    card = json.loads((args.out / "run" / "prefs" / "datacard.json").read_text(encoding="utf-8"))
    print(f"data: {counts}; pairs: {card['counts']['pairs']} of {card['counts']['questions']} train requests "
          f"(dropped by reason: {card['counts']['questions_dropped']})")
    print("| metric | before | after | difference [95% CI] | n |\n|---|---|---|---|---|")
    for before, after, metric in (("safety_before", "safety_after", "harmful_compliance"),
                                  ("safety_before", "safety_after", "over_refusal"),
                                  ("mcq_before", "mcq_after", "acc")):
        d = paired(stages[before], stages[after], metric)
        print(f"| {metric} | {d['before']:.3f} | {d['after']:.3f} | {d['diff']:+.3f} "
              f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | {d['n']} |")
    print(f"wall time {wall / 60:.1f} min; stages {stage_minutes(stages)}; end: {load_average()}")


if __name__ == "__main__":
    main()
