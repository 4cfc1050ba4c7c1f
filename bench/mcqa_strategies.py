"""Bench: MCQA inference strategies on MedQA-US dev with the default model (accuracy/cost trade-off).

Compares direct (zero-shot, letter only) vs cot (zero-shot CoT) vs self-consistency (3 fixed CoT exemplars,
sampled CoTs, majority vote) vs medprompt (kNN CoT exemplars + choice-shuffle ensemble + vote); knn-fewshot is
reported from medprompt's run 0 (original order, greedy: exactly the knn-fewshot request). The CoT bank is
self-generated on a disjoint slice of the same dev file (its last --bank-items items), kept only when correct.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/mcqa_strategies.py --threads 1   # 100 items: ~130k tokens generated
    .venv/bin/python bench/mcqa_strategies.py --n 16 --bank-items 16         # quick smoke run

Prefix caching (shared exemplar prefixes computed once, docs/generation.md) against the backend without it, on
medprompt only, the bank shared between the two runs (prefill tokens are machine-independent; times are not):
    .venv/bin/python bench/mcqa_strategies.py --strategies medprompt --out bench/out/mp-cached \
        --bank bench/out/bank.jsonl
    .venv/bin/python bench/mcqa_strategies.py --strategies medprompt --out bench/out/mp-plain \
        --bank bench/out/bank.jsonl --no-prefix-cache

Cost is dominated by generated tokens (self-consistency and medprompt ~3x cot). On a 2-core CPU shared by many
jobs, expect only a few tokens/s: the run reported in the issue used --n 30 --bank-items 24 --max-new-tokens 56
--retry-extra-tokens 24 --k 2 --shots 2 --samples 3 --runs 3 --threads 1 (see docs/evaluation-strategies.md).

Every strategy resumes from bench/out/ (rerunning reuses finished chunks). Reads ../shared/data (skips if absent).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEDQA = ROOT.parent / "shared" / "data" / "medqa_us" / "US" / "4_options" / "phrases_no_exclude_dev.jsonl"


def load_medqa(path: Path):
    """MedQA-US 4-option JSONL rows as MCQItems (question, options dict A-D, answer_idx letter)."""
    from meditune.errors import InputError
    from meditune.io import iter_jsonl
    from meditune.records import MCQItem

    items = []
    for line, row in iter_jsonl(path):
        try:
            letters = sorted(row["options"])
            items.append(MCQItem(id=f"medqa-us-dev-{line}", question=row["question"],
                                 options=[row["options"][k] for k in letters],
                                 answer=letters.index(row["answer_idx"]), subject=row.get("meta_info"),
                                 source="medqa_us/4_options/dev"))
        except (KeyError, ValueError) as e:
            raise InputError(f"bad MedQA row: {e}", file=path, line=line) from None
    return items


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="evaluated items (the first n of the dev file)")
    ap.add_argument("--bank-items", type=int, default=48, help="training items tried for the CoT bank")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--samples", type=int, default=3, help="self-consistency samples")
    ap.add_argument("--runs", type=int, default=3, help="medprompt shuffled runs")
    ap.add_argument("--k", type=int, default=3, help="medprompt retrieved exemplars")
    ap.add_argument("--shots", type=int, default=3, help="self-consistency fixed exemplars")
    ap.add_argument("--max-retries", type=int, default=1)
    ap.add_argument("--retry-extra-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0 = torch default); 1 is much faster on a CPU shared by many jobs")
    ap.add_argument("--strategies", default="direct,cot,medprompt,self-consistency")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "mcqa_strategies")
    ap.add_argument("--bank", type=Path, default=None, help="CoT bank file (default: OUT/cot_bank.jsonl); share one "
                    "between runs that compare settings")
    ap.add_argument("--no-prefix-cache", action="store_true", help="prefill every prompt in full (the backend "
                    "before prefix caching)")
    args = ap.parse_args()
    if not MEDQA.exists():
        print(f"skip: {MEDQA} not found")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    from meditune.evaluation.strategies import run_strategy
    from meditune.generation.base import BackendConfig
    from meditune.generation.factory import make_backend
    from meditune.io import write_json
    from meditune.stats import paired_bootstrap

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    items = load_medqa(MEDQA)
    evaluated = items[: args.n]
    train = items[-args.bank_items:]  # the END of the same dev file: disjoint from the evaluated head
    if args.n + args.bank_items > len(items):
        raise SystemExit(f"--n + --bank-items must be <= {len(items)} so the bank stays disjoint")
    t0 = time.perf_counter()
    backend = make_backend(BackendConfig(model="default", batch_size=args.batch_size, device="cpu",
                                         prefix_cache=not args.no_prefix_cache))
    load_s = time.perf_counter() - t0
    base = {"max_new_tokens": args.max_new_tokens, "max_retries": args.max_retries, "samples": args.samples,
            "runs": args.runs, "k": args.k, "bank_path": str(args.bank or args.out / "cot_bank.jsonl"), "chunk_size": 16,
            "retry_extra_tokens": args.retry_extra_tokens}
    from meditune.evaluation.strategies.options import parse_options
    from meditune.evaluation.strategies.runner import prepare_bank

    t = time.perf_counter()  # the bank is built once, up front, so its cost is not charged to one strategy
    bank_obj = prepare_bank(backend, parse_options(base), args.out, train)
    bank_s = time.perf_counter() - t
    results = {}
    for name in args.strategies.split(","):
        opts = dict(base, shots=args.shots if name == "self-consistency" else 0)
        t = time.perf_counter()
        res = run_strategy(name, evaluated, backend, opts, args.out / name, train_items=train)
        results[name] = res
        m = res.metrics
        print(f"{name}: acc {m['accuracy']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}] n={m['n']} "
              f"tokens={m['cost']['completion_tokens']} answer_s={m['cost']['answer_wall_s']:.0f} "
              f"unparsed={m['parse']['failure_rate']:.1%} retries={m['parse']['retries']} "
              f"prompt_tokens={m['cost']['prompt_tokens']} prefilled={m['cost']['prefill_tokens']} "
              f"saved={m['cost']['prefill_tokens_saved']} (wall {time.perf_counter() - t:.0f}s)", flush=True)

    rows = []
    for name, res in results.items():
        m = res.metrics
        rows.append((name, m["accuracy"], m["ci_low"], m["ci_high"], m["n"], m["cost"]["completion_tokens"],
                     m["cost"]["answer_wall_s"], m["cost"]["setup_wall_s"], m["parse"]["failure_rate"],
                     m["parse"]["retries"], [float(r["correct"]) for r in res.predictions],
                     m["cost"]["prefill_tokens"], m["cost"]["prefill_tokens_saved"]))
    if "medprompt" in results:  # knn-fewshot = run 0 of medprompt (original order, greedy, same exemplars)
        preds = results["medprompt"].predictions
        first = [r["runs"][0]["samples"][0] for r in preds]
        corr = [float(s["answer"] == r["gold"]) for s, r in zip(first, preds, strict=True)]
        from meditune.stats import bootstrap_ci

        lo, hi = bootstrap_ci(corr)
        toks = sum(s["completion_tokens"] for s in first)
        frac = toks / max(1, results["medprompt"].metrics["cost"]["completion_tokens"])
        rows.append(("knn-fewshot*", sum(corr) / len(corr), lo, hi, len(corr), toks,
                     results["medprompt"].metrics["cost"]["answer_wall_s"] * frac, 0.0,
                     sum(s["answer"] is None for s in first) / len(first), sum(s["retries"] for s in first), corr,
                     sum(s["prompt_tokens"] - s.get("cached_tokens", 0) for s in first),
                     sum(s.get("cached_tokens", 0) for s in first)))

    ref = rows[0]
    print(f"\nMedQA-US 4-option dev, first {args.n} items, model=default (SmolLM2-135M-Instruct), CPU, "
          f"batch {args.batch_size}, CoT max_new_tokens={args.max_new_tokens}, retries<={args.max_retries}")
    bank = bank_obj.summary()
    print(f"CoT bank: the last {args.bank_items} dev items (disjoint from the evaluated ones), {bank['kept']}/"
          f"{bank['attempted']} rationales kept, {bank['completion_tokens']} tokens, {bank_s:.0f}s "
          f"({bank['reused_from_disk']} attempts reused from disk)")
    hdr = (f"{'strategy':18} {'acc':>6} {'95% CI':>15} {'n':>4} {'gen tokens':>10} {'x tokens':>8} "
           f"{'answer s':>8} {'x time':>7} {'setup s':>7} {'unparsed':>8} {'retries':>7} {'prefilled':>10} "
           f"{'saved':>9} {'diff vs ' + ref[0]:>24}")
    print(hdr)
    table = []
    for r in rows:
        d = paired_bootstrap(ref[10], r[10])
        print(f"{r[0]:18} {r[1]:6.3f} [{r[2]:.3f}, {r[3]:.3f}] {r[4]:4d} {r[5]:10d} {r[5] / max(1, ref[5]):8.1f} "
              f"{r[6]:8.1f} {r[6] / max(1e-9, ref[6]):7.1f} {r[7]:7.1f} {r[8]:8.1%} {r[9]:7d} {r[11]:10d} "
              f"{r[12]:9d} {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]")
        table.append({"strategy": r[0], "accuracy": r[1], "ci": [r[2], r[3]], "n": r[4], "completion_tokens": r[5],
                      "answer_wall_s": r[6], "setup_wall_s": r[7], "parse_failure_rate": r[8], "retries": r[9],
                      "prefill_tokens": r[11], "prefill_tokens_saved": r[12],
                      "paired_diff_vs_first": d})
    print(f"prefix caching {'off' if args.no_prefix_cache else 'on'}; prefilled = prompt tokens computed, saved = "
          "prompt tokens served from a shared prefix's KV")
    print("* knn-fewshot is medprompt's run 0 (original option order), not a separate run; 'x' = ratio to the "
          f"first row; setup = embedding + retrieval (bank built once above); model load {load_s:.1f}s")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "summary.json", {"args": {k: str(v) for k, v in vars(args).items()}, "bank": bank,
                                           "bank_wall_s": bank_s, "model_load_s": load_s, "rows": table})
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
