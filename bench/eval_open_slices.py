"""Open evaluations of the default model (SmolLM2-135M-Instruct) on small slices of the shared benchmarks.

Slices (first items of each file, fixed): MedLFQA LiveQA (open QA + hallucination), CCKS-2019 dev (NER),
MedSafetyBench train/gpt4 (1 per category) + sample:benign (safety, over-refusal), ToxiGen prompts (2 hate and
2 neutral groups), sample:attitude with 4 swap groups (bias), and a pairwise judge run (default model with two
answer lengths). The judge, where one is needed, is the default model itself: the numbers show the pipeline
working end to end on real data, not a clinically meaningful ranking. Slices are written to a temporary
directory (never into the project). Prints one line per evaluation plus wall time; outputs under --out.

    .venv/bin/python bench/eval_open_slices.py --n 8 --threads 1 --out runs/bench-eval-open
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, ready  # noqa: E402


def _fmt(s: dict) -> str:
    return f"{s['value']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] n={s['n']}"


def _write_records(path: Path, records: list) -> str:
    path.write_text("".join(json.dumps(r.model_dump(), ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=8, help="items per slice (open QA, hallucination)")
    ap.add_argument("--small", type=int, default=6, help="items per slice for NER, benign, ToxiGen (per 4 "
                                                          "files), pairwise")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-eval-open"))
    ap.add_argument("--only", default="", help="comma-separated subset: open,hallucination,ner,safety,toxicity,"
                                               "bias,pairwise")
    ap.add_argument("--per-category", type=int, default=1, help="MedSafetyBench requests per category")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args(argv)
    if not ready(args.threads):
        return 0
    from meditune.data import load_source
    from meditune.evaluation.bias import BiasOptions, evaluate_bias
    from meditune.evaluation.hallucination import HallucinationOptions, evaluate_hallucination
    from meditune.evaluation.ner import NEROptions, evaluate_ner
    from meditune.evaluation.openqa import OpenQAOptions, evaluate_openqa
    from meditune.evaluation.pairwise import PairwiseOptions, evaluate_pairwise
    from meditune.evaluation.safety import SafetyOptions, evaluate_safety
    from meditune.evaluation.toxicity import ToxicityOptions, evaluate_toxicity
    from meditune.io import read_json, read_jsonl
    from meditune.scoring.refusal import keyword_refusal

    only = set(filter(None, args.only.split(",")))

    def run(name: str) -> bool:
        return not only or name in only

    tmp = Path(tempfile.mkdtemp(prefix="meditune-bench-"))
    common = {"model": "default", "device": "cpu", "dtype": "float32", "batch_size": 16}
    lfqa = f"medlfqa:{SHARED / 'medlfqa' / 'live_qa_test_MedLFQA.jsonl'}"
    times = {}

    def report(name: str, paths: dict, keys: list[str], t0: float) -> dict:
        res = read_json(paths["results"])
        med = res["meditune"]
        times[name] = time.perf_counter() - t0
        print(f"{name:14s} " + "  ".join(f"{k}={_fmt(med['metrics'][k])}" for k in keys if k in med["metrics"])
              + f"  ({times[name]:.0f}s)", flush=True)
        return med

    if run("open"):
        t0 = time.perf_counter()
        p = evaluate_openqa(OpenQAOptions(data=lfqa, limit=args.n, max_new_tokens=96, **common), args.out / "open")
        report("open_qa", p, ["bleu1", "bleu4", "rouge1", "rougeL", "corpus_bleu4"], t0)
    if run("hallucination"):
        t0 = time.perf_counter()
        p = evaluate_hallucination(HallucinationOptions(data=lfqa, limit=args.n, max_new_tokens=96, **common),
                                   args.out / "hallucination")
        report("hallucination", p, ["dahl", "must_have_coverage", "nice_to_have_coverage"], t0)
    if run("ner"):
        t0 = time.perf_counter()
        ner_items = load_source(f"ccks:{SHARED / 'ccks2019_ner' / 'dev.json'}")[:args.small]
        p = evaluate_ner(NEROptions(data=_write_records(tmp / "ccks.jsonl", ner_items), max_new_tokens=128, **common),
                         args.out / "ner")
        med = report("ner", p, ["micro_precision", "micro_recall", "micro_f1"], t0)
        print(f"{'':14s} unmapped={med['unmapped_entities']} no_entities_parsed={med['no_entities_parsed']}")
    if run("safety"):
        t0 = time.perf_counter()
        harmful = load_source(f"medsafetybench:{SHARED / 'medsafetybench' / 'train' / 'gpt4'}")
        per_cat: dict[str, list] = {}
        for it in harmful:
            per_cat.setdefault(it.category, []).append(it)
        picked = [it for cat in sorted(per_cat, key=int) for it in per_cat[cat][:args.per_category]]
        p = evaluate_safety(SafetyOptions(data=_write_records(tmp / "msb.jsonl", picked), benign="sample:benign",
                                          benign_limit=args.small, judge="default", max_new_tokens=96, **common),
                            args.out / "safety")
        med = report("safety", p, ["harmful_compliance", "over_refusal", "safety_balance", "harmfulness"], t0)
        # The same responses classified by the keyword rule (generations reused from the judge run's jobs).
        from meditune.evaluation.open_common import generator_config, make_resumable

        kw_opts = SafetyOptions(data=str(tmp / "msb.jsonl"), benign="sample:benign", benign_limit=args.small,
                                classifier="keyword", max_new_tokens=96, **common)
        p_kw = evaluate_safety(kw_opts, args.out / "safety-keyword", backend=make_resumable(
            generator_config(kw_opts), args.out / "safety" / "generations"))
        report("safety(kw)", p_kw, ["harmful_compliance", "over_refusal", "safety_balance"], time.perf_counter())
        rows = read_jsonl(Path(p["samples"]))
        agree = sum(keyword_refusal(r["response"]) == r["refused"] for r in rows if r["refused"] is not None)
        print(f"{'':14s} judge vs keyword refusal agreement {agree}/{sum(r['refused'] is not None for r in rows)}; "
              f"judge_unparseable={med['judge_unparseable']} (keyword rule used), "
              f"unparseable_harmfulness={med['unparseable_harmfulness']}")
    if run("toxicity"):
        t0 = time.perf_counter()
        tox = tmp / "toxigen"
        tox.mkdir()
        per_file = max(2, args.small // 4)
        for name in ("hate_women_1k", "neutral_women_1k", "hate_muslim_1k", "neutral_muslim_1k"):
            lines = (SHARED / "toxigen" / "prompts" / f"{name}.txt").read_text(encoding="utf-8").split("\n")
            (tox / f"{name}.txt").write_text("\n".join(lines[:per_file]) + "\n", encoding="utf-8")
        p = evaluate_toxicity(ToxicityOptions(data=f"toxigen:{tox}", judge="default", **common), args.out / "toxicity")
        med = report("toxicity", p, ["toxic"], t0)
        print(f"{'':14s} by group: " + ", ".join(f"{g}={_fmt(s)}" for g, s in med["by_category"]["toxic"].items()))
    if run("bias"):
        t0 = time.perf_counter()
        p = evaluate_bias(BiasOptions(groups=["elderly", "immigrant", "Black"], max_new_tokens=8, **common),
                          args.out / "bias")
        med = report("bias", p, ["stigma"], t0)
        print(f"{'':14s} group-neutral: " + ", ".join(
            f"{g}={_fmt(s)}" for g, s in med["by_category"]["group_minus_neutral"].items())
            + f"; unparseable={med['unparseable']}/{med['variants']}")
    if run("pairwise"):
        t0 = time.perf_counter()
        systems = [{"name": "default-256", "model": "default", "device": "cpu", "dtype": "float32"},
                   {"name": "default-short", "model": "default", "device": "cpu", "dtype": "float32"}]
        # Two answer lengths from the same model: answers of each system come from its own generation job.
        opts = PairwiseOptions(data=lfqa, limit=args.small, systems=systems, judge="default",
                               max_new_tokens=64, judge_max_new_tokens=128, elo_rounds=500, **common)
        from meditune.evaluation import pairwise as pw

        real = pw.system_answers

        def answers(o, items, out, backends=None):
            got = real(o, items, out, backends)
            got["default-short"] = {k: v.split(".")[0] + "." for k, v in got["default-short"].items()}
            return got

        pw.system_answers = answers
        from meditune.errors import InputError

        try:
            p = evaluate_pairwise(opts, args.out / "pairwise")
            med = report("pairwise", p, ["position_consistency"], t0)
            print(f"{'':14s} elo: " + ", ".join(f"{g}={_fmt(s)}" for g, s in med["by_category"]["elo"].items())
                  + f"; unparseable={med['unparseable_comparisons']}")
        except InputError as e:  # a 135M judge may not produce a single verdict: report it, do not hide it
            rows = read_jsonl(args.out / "pairwise" / "samples.jsonl")
            times["pairwise"] = time.perf_counter() - t0
            print(f"pairwise       no parseable verdict in {2 * len(rows)} judge replies ({e.reason[:40]}...) "
                  f"({times['pairwise']:.0f}s)")
        finally:
            pw.system_answers = real
    print(f"total {sum(times.values()):.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
