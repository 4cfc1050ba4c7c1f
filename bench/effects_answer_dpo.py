"""Preference pairs from verifiable answers: does DPO on the model's own right-vs-wrong reasoning move its MCQ
accuracy on other questions?

Data (../shared/data/headqa/en, read only; nothing is copied into the project):
  pair questions  HEAD-QA (English) train, --questions drawn at random (seed), questions with an image left out.
                  A train split: no evaluation meditune reports uses it; any item sharing a word 13-gram with
                  HEAD-QA dev is dropped first (the data stage's decontamination).
  evaluation      HEAD-QA (English) dev, --mcq drawn at random (seed), no image: other exams (2015-2016 against
                  2013-2014), so disjoint from the pair questions.
Pipeline (KoMeP's `prefs` stage with the `answer` scorer): the model answers every pair question --samples times,
sampled (temperature 0.8, top_p 0.95, --max-new-tokens), with its reasoning: the prompt is exactly the CoT
strategy's (`collection.question_template: cot`: question, options, "Think step by step, then finish with a final
line of the form "Answer: X""). The `answer` scorer marks each answer right (1) or wrong (0); an answer naming no
option (or several) is dropped; best_worst pairing with margin 1 keeps one right-over-wrong pair per question
whose samples include both. DPO with LoRA in the quickstart's settings (beta 0.1, loss_type [sigmoid, sft],
learning rate 1e-4, 2 epochs, batch 4), max_length 512; the pair prompt is the chat the answers came from.
Evaluation: `eval_mcqa --strategy cot` (the same prompt, greedy, the same --max-new-tokens, no retry: an
unparseable answer counts as wrong), accuracy before and after with the paired bootstrap CI of the difference;
the parse failure rate is reported too, since part of any change can be the answer format.
All settings were fixed a priori (the quickstart's DPO, the CoT strategy's prompt, sizes from the CPU budget),
none tuned on the evaluated items.

    python bench/effects_answer_dpo.py --out bench/out/effects_dpo [--threads 2]     # full run (~25 min)
    python bench/effects_answer_dpo.py --tiny --out bench/out/effects_dpo_tiny        # 8 questions, 2 steps
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common
from common import SHARED, paired, with_ci

HEADQA_TRAIN = f"headqa:{SHARED / 'headqa' / 'en' / 'train_HEAD_EN.json'}"
HEADQA_DEV = f"headqa:{SHARED / 'headqa' / 'en' / 'dev_HEAD_EN.json'}"
LICENSES = {"headqa": "HEAD-QA terms (cite the source; no denaturalisation)"}


def recipe_data(args: argparse.Namespace) -> dict:
    evaluation = {"type": "eval_mcqa", "data": "@mcq", "task": "headqa_en_dev_cot", "strategy": "cot",
                  "strategy_options": {"max_new_tokens": args.max_new_tokens, "max_retries": 0},
                  "batch_size": 16}
    dpo = {"name": "dpo", "type": "dpo", "data": "@prefs", "method": "lora", "beta": 0.1,
           "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0], "learning_rate": 1.0e-4, "epochs": 2,
           "batch_size": 4, "max_length": 512}
    if args.max_steps:
        dpo["max_steps"] = args.max_steps
    no_images = {"skip_images": True}
    return {"name": "effects_answer_dpo", "model": args.model, "seed": args.seed, "system_prompt": None, "stages": [
        {"name": "questions", "type": "data", "source": HEADQA_TRAIN, "options": no_images,
         "decontaminate": HEADQA_DEV, "sample": args.questions},
        {"name": "mcq", "type": "data", "source": HEADQA_DEV, "options": no_images, "sample": args.mcq},
        {"name": "mcq_before", **evaluation},
        {"name": "prefs", "type": "prefs", "questions": "@questions",
         "generators": [{"name": "model", "samples": args.samples, "temperature": 0.8, "top_p": 0.95,
                         "max_new_tokens": args.max_new_tokens}],
         "collection": {"question_template": "cot", "instruction": "", "chunk_size": 32},
         "scorer": {"type": "answer"},
         "pairing": {"policy": "best_worst", "margin": 1.0},
         "prompt_with_instruction": True,
         "licenses": LICENSES},
        dpo,
        {"name": "mcq_after", "model": "@dpo", **evaluation},
        {"name": "report", "type": "report", "title": "DPO on the model's own right-vs-wrong CoT answers: HEAD-QA "
                                                      "accuracy before and after",
         "compare": [["mcq_before", "mcq_after"]]}]}


def pairs_summary(stages: dict) -> tuple[int, str]:
    """(pairs, a line: questions, decontamination, the model's sampled CoT accuracy, drops by reason)."""
    card = json.loads(Path(stages["prefs"].outputs["datacard"]).read_text(encoding="utf-8"))
    stats = json.loads(Path(stages["questions"].outputs["stats"]).read_text(encoding="utf-8"))
    c, gen = card["counts"], card["generators"][0]
    s = gen["score"]
    accuracy = (f"{s['mean']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] over {s['n']} parsed answers"
                if s.get("n") else "no parsed answer")
    line = (f"pairs: {c['pairs']} from {c['questions']} questions (dropped by reason: {c['questions_dropped']}; "
            f"answers excluded: {c['answers_dropped']}); questions stage counts: {stats.get('counts')}; sampled "
            f"CoT accuracy on the pair questions {accuracy} of {gen['answers']} answers "
            f"({gen['truncated_answers']} cut at max_new_tokens)")
    return c["pairs"], line


def main() -> int:
    ap = common.effect_parser(__doc__, "bench/out/effects_dpo")
    ap.add_argument("--questions", type=int, default=160, help="pair questions (HEAD-QA en train, random)")
    ap.add_argument("--samples", type=int, default=4, help="sampled answers per question")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="reasoning length, collection and evaluation")
    ap.add_argument("--mcq", type=int, default=200, help="HEAD-QA en dev items evaluated (random)")
    common.effect_args(ap, "DPO", {"questions": 8, "max_new_tokens": 48, "mcq": 6})
    args = ap.parse_args()
    if not common.begin(args):
        return 0
    recipe = common.build_recipe(recipe_data(args), args.set)
    names = [s.name for s in recipe.stages]
    # up to the pairs first: with no pair there is nothing to train, and the datacard says why
    stages, wall = common.run_stages(recipe, args.out / "run", only=names[:names.index("prefs") + 1])
    n_pairs, line = pairs_summary(stages)
    print(line)
    if not n_pairs:
        print(f"no preference pair: nothing to train (see the drop reasons above); end: {common.load_average()}")
        return 1
    stages, wall2 = common.run_stages(recipe, args.out / "run")
    before, after = stages["mcq_before"], stages["mcq_after"]
    mb, ma = before.results["meditune"]["metrics"]["acc"], after.results["meditune"]["metrics"]["acc"]
    d, parse = paired(before, after, "acc"), paired(before, after, "parse_failure")
    common.print_effects([f"CoT accuracy after DPO on {n_pairs} own right-vs-wrong CoT pairs (HEAD-QA en train "
                          "questions)", f"HEAD-QA en dev, random {d['n']}",
                          f"cot strategy, greedy, {args.max_new_tokens} tokens, no retry, unparseable = wrong; "
                          "paired bootstrap", with_ci(mb), with_ci(ma), with_ci(d, signed=True),
                          common.stage_minutes(stages)])
    print(f"parse failures: {parse['before']:.3f} -> {parse['after']:.3f}, difference {with_ci(parse, signed=True)}")
    print(common.train_line(stages["dpo"]))
    print(f"this invocation {(wall + wall2) / 60:.1f} min; end: {common.load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
