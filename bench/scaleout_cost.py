"""Per-item costs of the KoMeP recipe's generation-heavy stages, measured at small n, and the full-scale estimate.

Measures, on this machine and with the given model (default: SmolLM2-135M-Instruct, the recipe's default):
  collect   one DAHL answer (the DAHL instruction, temperature 0.6, top_p 0.9, up to 256 new tokens, batch 16)
  score     DAHL scoring of one answer with the same model as judge (published protocol: 3-shot atomic-fact split,
            then one true/false verdict per fact)
  mcqa      one KorMedMCQA-style item with the recipe's `kormedmcqa` template (generative, as lm-eval)
  load      loading the model once (every rank pays it)
then extrapolates to KoMeP at full scale (8,573 DAHL questions x 5 generators, 3 MCQA evaluations) for 1..N ranks,
assuming the items split evenly (units >> ranks; meditune.distributed) and per-item costs that do not depend on n.
Training (DPO/ORPO) and rank-0-only stages are not in the estimate.

Timings are only meaningful on a quiet machine: the script prints the load average before and after and says
when it was above 2.5.

    .venv/bin/python bench/scaleout_cost.py [--n 16] [--mcqa-n 48] [--threads 2] [--ranks 1,2,8,16]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED  # noqa: E402

KOMEP_QUESTIONS, KOMEP_GENERATORS, KOMEP_EVALS = 8573, 5, 3  # published run; the recipe evaluates base, DPO, ORPO
LOADS = KOMEP_GENERATORS + 1 + KOMEP_EVALS  # model loads per rank: each generator, the judge, each evaluation
QUIET_LOAD = 2.5


def timed(fn):
    """(result, wall seconds, CPU seconds of this process) of fn()."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--n", type=int, default=16, help="DAHL questions answered and scored (one batch of 16)")
    ap.add_argument("--mcqa-n", type=int, default=48, help="KorMedMCQA-style items evaluated")
    ap.add_argument("--eval-items", type=int, default=2500, help="items of one full MCQA evaluation to extrapolate "
                                                                  "to (KorMedMCQA's four test sets: about 2.5k)")
    ap.add_argument("--gen-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--ranks", default="1,2,8,16", help="rank counts to extrapolate to")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    from meditune.evaluation.mcqa import MCQAOptions, evaluate_mcqa
    from meditune.generation.base import BackendConfig
    from meditune.models import load_model
    from meditune.prefs.build import score_answers
    from meditune.prefs.collect import CollectSettings, GeneratorConfig, collect
    from meditune.prefs.questions import load_questions
    from meditune.scoring.registry import DahlConfig, build_scorer, default_backend_factory

    dahl = SHARED / "dahl" / "questions.csv"
    spec = f"dahl:{dahl}" if dahl.exists() else "sample:longform"
    items = load_questions(spec)
    items = items[:: max(1, len(items) // args.n)][: args.n]  # spread over the file's categories
    kor = SHARED / "kormedmcqa" / "doctor" / "valid.csv"
    mcq_spec = f"kormedmcqa:{kor}" if kor.exists() else "sample:mcq"

    _, load_s, _ = timed(lambda: load_model(args.model, device=args.device))
    backends = default_backend_factory()  # one model per config, loaded once (load time counted above)
    gen = GeneratorConfig(model=args.model, name="dahl-instruct", batch_size=16, device=args.device)
    backends(gen.backend_config())
    judge = BackendConfig(model=args.model, name="judge", batch_size=16, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        settings = CollectSettings(max_new_tokens=args.gen_tokens, chunk_size=16)
        answers, gen_s, gen_cpu = timed(lambda: collect(items, [gen], settings, out / "answers", backends))
        rows = answers["dahl-instruct"]
        tokens = sum(r["completion_tokens"] for r in rows)
        scorer = build_scorer(DahlConfig(judge=judge), backends)
        backends(judge)
        by_id = {it.id: it for it in items}
        scores, score_s, score_cpu = timed(lambda: score_answers(by_id, rows, scorer, out / "scores.jsonl", 16))
        clean = sum(1 for s in scores.values() if s.clean)
        mcqa = MCQAOptions(model=args.model, data=mcq_spec, template="kormedmcqa", limit=args.mcqa_n,
                           batch_size=16, device=args.device)
        _, mcqa_s, mcqa_cpu = timed(lambda: evaluate_mcqa(mcqa, out / "mcqa"))
    load_after = os.getloadavg()[0]

    per_answer, per_score, per_item = gen_s / len(rows), score_s / len(rows), mcqa_s / args.mcqa_n
    print(f"model {args.model}; threads {args.threads or 'default'}; load average {load_before:.2f} before, "
          f"{load_after:.2f} after" + ("  ** NOT QUIET: timings are not trustworthy **"
                                       if max(load_before, load_after) > QUIET_LOAD else ""))
    print(f"questions {spec} (n={len(rows)}), mcqa {mcq_spec} (n={args.mcqa_n})")
    print(f"load     {load_s:8.2f} s once per rank")
    print(f"collect  {per_answer:8.2f} s/answer  ({tokens / len(rows):.0f} tokens/answer, CPU {gen_cpu / len(rows):.2f} "
          "s/answer)")
    print(f"score    {per_score:8.2f} s/answer  (DAHL, same model as judge; {clean}/{len(rows)} clean; CPU "
          f"{score_cpu / len(rows):.2f} s/answer)")
    print(f"mcqa     {per_item:8.2f} s/item    (kormedmcqa template; CPU {mcqa_cpu / args.mcqa_n:.2f} s/item)")
    answers_total = KOMEP_QUESTIONS * KOMEP_GENERATORS
    work = {"collect": answers_total * per_answer, "score": answers_total * per_score,
            "mcqa": KOMEP_EVALS * args.eval_items * per_item}
    total = sum(work.values())
    print(f"\nKoMeP full scale: {answers_total:,} answers collected and scored, {KOMEP_EVALS} x {args.eval_items:,} MCQA "
          f"items: {total / 3600:.1f} h of work on one process like this one "
          f"(collect {work['collect'] / 3600:.1f} h, score {work['score'] / 3600:.1f} h, "
          f"mcqa {work['mcqa'] / 3600:.1f} h)")
    print(f"ranks  wall (h)   [work / ranks + {LOADS} model loads per rank; even split; training not included]")
    for r in (int(x) for x in args.ranks.split(",")):
        print(f"{r:5d}  {(total / r + LOADS * load_s) / 3600:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
