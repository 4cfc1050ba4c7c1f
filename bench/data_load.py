"""Loader throughput on the real files in ../shared/data, next to a peer reading the same bytes without validation.

Peers: `datasets.load_dataset("json"/"csv")` (Arrow, no per-item checks; cache disabled by a fresh cache dir)
and `pandas.read_csv`. meditune validates every item (types, answer range, option counts, duplicate ids) and
builds pydantic records, so the ratio is the price of validation. Also times the 13-gram overlap check.

    .venv/bin/python bench/data_load.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    import datasets
    import pandas as pd

    from meditune.data import load_source
    from meditune.data.overlap import find_overlap

    datasets.disable_progress_bars()
    if not SHARED.is_dir():
        raise SystemExit("../shared/data is absent")
    cases = [
        ("MedQA US dev (JSONL)", f"medqa_us:{SHARED / 'medqa_us/US/dev.jsonl'}",
         lambda c: datasets.load_dataset("json", data_files=str(SHARED / "medqa_us/US/dev.jsonl"), split="train",
                                         cache_dir=c)),
        ("MedQA Mainland dev (JSONL)", f"medqa_mainland:{SHARED / 'medqa_mainland/Mainland/dev.jsonl'}",
         lambda c: datasets.load_dataset("json", data_files=str(SHARED / "medqa_mainland/Mainland/dev.jsonl"),
                                         split="train", cache_dir=c)),
        ("DAHL questions (CSV)", f"dahl:{SHARED / 'dahl/questions.csv'}",
         lambda c: pd.read_csv(SHARED / "dahl/questions.csv")),
        ("KorMedMCQA doctor train (CSV)", f"kormedmcqa:{SHARED / 'kormedmcqa/doctor/train.csv'}",
         lambda c: pd.read_csv(SHARED / "kormedmcqa/doctor/train.csv")),
    ]
    print(f"{'file':32} {'items':>6} {'meditune s':>11} {'peer s':>8} {'meditune/peer':>14}  peer")
    for label, spec, peer in cases:
        t_ours, recs = timed(lambda spec=spec: load_source(spec))
        with tempfile.TemporaryDirectory() as cache:
            t_peer, _ = timed(lambda peer=peer, cache=cache: peer(tempfile.mkdtemp(dir=cache)))
        peer_name = "datasets.load_dataset" if "JSONL" in label else "pandas.read_csv"
        print(f"{label:32} {len(recs):6d} {t_ours:11.3f} {t_peer:8.3f} {t_ours / t_peer:14.2f}  {peer_name}")
    t, big = timed(lambda: load_source(f"medsafetybench:{SHARED / 'medsafetybench/med_harm_llama3'}"), repeat=1)
    print(f"MedSafetyBench llama3 requests: {len(big)} items in {t:.2f} s ({len(big) / t:,.0f} items/s)")
    train = load_source(f"medqa_us:{SHARED / 'medqa_us/US/4_options/phrases_no_exclude_dev.jsonl'}")
    evaluation = load_source(f"medqa_us:{SHARED / 'medqa_us/US/dev.jsonl'}")
    t, report = timed(lambda: find_overlap(train, evaluation), repeat=1)
    s = report.summary()
    print(f"overlap MedQA-US 4-option dev vs 5-option dev: {s['train_flagged']}/{s['train_items']} flagged "
          f"({s['exact_question_matches']} exact) in {t:.2f} s")


if __name__ == "__main__":
    main()
