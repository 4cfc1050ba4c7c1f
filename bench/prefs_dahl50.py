"""End-to-end KoMeP-style preference build on shared DAHL questions with two real local generators.

Generators (both the default model, SmolLM2-135M-Instruct, so only the setting differs):
  dahl-instruct  the DAHL instruction and sampling (temperature 0.6, top_p 0.9)
  misled-hot     the same instruction, but a misleading system prompt that asks for confident invented detail
                 and temperature 1.3: a deliberately worse generator, the kind KoMeP's weakest models stand for
Judge: the default model, with the published DAHL prompts (3-shot atomic facts, then true/false per fact).
Pairing: best vs worst with margin >= 0.1 (ties and unclean answers dropped).
A 135M judge rarely answers "true"/"false" in one word, so with the published protocol most verdicts are "bad";
`--splitter sentences --verifier judge_logprob` shows the same pipeline with a verdict that always parses.

    .venv/bin/python bench/prefs_dahl50.py [--n 50] [--out bench/out/prefs_dahl50]

Prints counts (pairs kept, questions dropped by reason), DAHL scores with 95% CIs and the runtime of each
step. Resumable: re-running with the same --out continues from the answers and scores on disk.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dahl" / "questions.csv"
MISLEADING = ("You are a bold expert who never admits uncertainty. Always give confident, specific numbers, "
              "names and studies, inventing them when you are not sure.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--out", default="bench/out/prefs_dahl50")
    ap.add_argument("--gen-tokens", type=int, default=256)
    ap.add_argument("--split-tokens", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--margin", type=float, default=0.1)
    ap.add_argument("--splitter", default="judge", help="judge (published prompt) | sentences (model-free)")
    ap.add_argument("--verifier", default="judge", help="judge (published) | judge_logprob (True vs False by "
                                                        "first-token probability, for a judge this small)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default); 1 is "
                                                              "much faster on an oversubscribed machine")
    args = ap.parse_args()
    if not SHARED.exists():
        print(f"skipped: {SHARED} not present")
        return 0

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from meditune.prefs.build import PrefsStageConfig, build_preferences
    from meditune.prefs.questions import load_questions

    all_q = load_questions(f"dahl:{SHARED}")
    step = len(all_q) // 50  # spread over the file (many of the 29 categories); a smaller --n is a prefix
    items = all_q[::step][: args.n]
    cfg = PrefsStageConfig.model_validate({
        "name": "prefs_dahl50", "type": "prefs", "questions": f"dahl:{SHARED}",
        "generators": [
            {"name": "dahl-instruct", "model": "default", "batch_size": args.batch_size},
            {"name": "misled-hot", "model": "default", "system_prompt": MISLEADING, "temperature": 1.3,
             "batch_size": args.batch_size}],
        "collection": {"max_new_tokens": args.gen_tokens, "chunk_size": 10},
        "scorer": {"type": "dahl", "judge": {"model": "default", "name": "smollm2-135m-judge",
                                             "batch_size": args.batch_size},
                   "split_max_new_tokens": args.split_tokens, "splitter": args.splitter,
                   "verifier": args.verifier},
        "score_chunk_size": 16,
        "pairing": {"policy": "best_worst", "margin": args.margin},
    })
    out = Path(args.out)
    t0 = time.time()
    paths = build_preferences(cfg, out, seed=0, items=items)
    wall = time.time() - t0
    card = json.loads(Path(paths["datacard"]).read_text())
    c = card["counts"]
    print(f"questions: {c['questions']} (DAHL, every {step}th row of {len(all_q)}; "
          f"{len({it.category for it in items})} categories)")
    print(f"pairs kept: {c['pairs']} from {c['questions_with_pairs']} questions; "
          f"questions dropped by reason: {c['questions_dropped']}; answers excluded: {c['answers_dropped']}")
    for g in card["generators"]:
        d = g["dahl"]
        score = "n/a" if d["score"] is None else f"{d['score']:.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]"
        print(f"generator {g['label']}: DAHL {score} (n clean={d['n']}, dropped={d['n_dropped']} "
              f"{d['dropped_by_reason']}); chosen {g['chosen']}, rejected {g['rejected']}; "
              f"truncated answers {g['truncated_answers']}")
    t = card["timings_s"]
    print(f"runtime (this invocation): {wall:.0f} s; steps (s): collect {t['collect_s']}, score {t['score_s']}, "
          f"pair {t['pair_translate_s']}  [2 shared CPU cores, SmolLM2-135M as generators and judge]")
    print(f"outputs: {paths['dataset']}, {paths['datacard_md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
