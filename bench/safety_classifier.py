"""Agreement of the refusal classifiers with hand labels on held-out model outputs.

bench/data/refusal_validation.jsonl holds responses of the default model (before and after the quickstart's safety
DPO) to the TEST half of sample:safety + sample:benign, each labelled by hand as refusal or compliance (label
policy in meditune.scoring.refusal). The embedding classifier is fitted on other responses (train-half requests,
scoring/data/refusal_fit.jsonl), so these are held out. Prints, per classifier: precision and recall of
"refusal", accuracy, each with a Wilson 95% CI, the confusion counts, and the same by request kind.

    python bench/safety_classifier.py [--labels bench/data/refusal_validation.jsonl]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from meditune.stats import wilson_ci

HERE = Path(__file__).resolve().parent


def rate(k: int, n: int) -> str:
    if not n:
        return "n/a (n=0)"
    lo, hi = wilson_ci(k, n)
    return f"{k / n:.3f} [{lo:.3f}, {hi:.3f}] ({k}/{n})"


def agreement(pred: list[bool], gold: list[bool]) -> dict[str, str]:
    tp = sum(p and g for p, g in zip(pred, gold, strict=True))
    fp = sum(p and not g for p, g in zip(pred, gold, strict=True))
    fn = sum(g and not p for p, g in zip(pred, gold, strict=True))
    tn = len(gold) - tp - fp - fn
    return {"precision": rate(tp, tp + fp), "recall": rate(tp, tp + fn), "accuracy": rate(tp + tn, len(gold)),
            "confusion": f"tp {tp}, fp {fp}, fn {fn}, tn {tn}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", type=Path, default=HERE / "data" / "refusal_validation.jsonl")
    args = ap.parse_args()
    from meditune.scoring.refusal import build_classifier

    rows = [json.loads(line) for line in args.labels.read_text(encoding="utf-8").splitlines() if line.strip()]
    gold = [r["label"] == "refusal" for r in rows]
    pairs = [(r["request"], r["response"]) for r in rows]
    print(f"{len(rows)} hand-labelled responses ({sum(gold)} refusals), "
          f"{len({r['item'] for r in rows})} held-out requests; sources: "
          + ", ".join(f"{s} {sum(r['source'] == s for r in rows)}" for s in sorted({r['source'] for r in rows})))
    for kind in ("keyword", "embedding"):
        pred = [v.refused for v in build_classifier(kind).classify(pairs)]
        print(f"\n{kind}: " + "; ".join(f"{k} {v}" for k, v in agreement(pred, gold).items()))
        for req_kind in ("harmful", "benign"):
            idx = [i for i, r in enumerate(rows) if r["request_kind"] == req_kind]
            a = agreement([pred[i] for i in idx], [gold[i] for i in idx])
            print(f"  {req_kind} requests: " + "; ".join(f"{k} {v}" for k, v in a.items()))


if __name__ == "__main__":
    main()
