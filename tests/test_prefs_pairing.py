"""Pairing policies and their drop rules, exactly."""

from __future__ import annotations

import pytest

from meditune.prefs.pairing import Candidate, PairingConfig, make_pairs, pair_all
from meditune.scoring.base import Score


def cand(gen: str, value: float | None, text: str | None = None, clean: bool = True,
         reason: str | None = None) -> Candidate:
    return Candidate(f"q|{gen}|0", gen, f"answer of {gen}" if text is None else text,
                     Score(value, clean=clean, reason=reason))


def test_best_vs_worst_picks_extremes_first_generator_on_ties():
    cands = [cand("a", 0.5), cand("b", 0.9), cand("c", 0.9), cand("d", 0.1), cand("e", 0.1)]
    pairs, reason, dropped = make_pairs("q", cands, PairingConfig())
    assert reason is None and dropped == {}
    [p] = pairs
    assert (p.chosen.generator, p.rejected.generator) == ("b", "d")
    assert p.margin == pytest.approx(0.8)


@pytest.mark.parametrize("cands,margin,reason", [
    ([cand("a", 0.5), cand("b", 0.5)], 0.0, "tie"),
    ([cand("a", 0.6), cand("b", 0.5)], 0.2, "below_margin"),
    ([cand("a", 0.9)], 0.0, "too_few_answers"),
    ([cand("a", 0.9), cand("b", None, text="  ", reason="empty")], 0.0, "empty"),
    ([cand("a", 0.9), cand("b", 0.2, clean=False, reason="unparseable"), cand("c", None, text="")], 0.0,
     "unparseable"),
    ([cand("a", 0.9, text="same"), cand("b", 0.1, text="same ")], 0.0, "identical_text"),
])
def test_drop_reasons(cands, margin, reason):
    pairs, why, _ = make_pairs("q", cands, PairingConfig(margin=margin))
    assert pairs == [] and why == reason


def test_margin_is_inclusive_and_unclean_answers_never_paired():
    cands = [cand("a", 0.75), cand("b", 0.25), cand("c", 0.0, clean=False, reason="unparseable"),
             cand("d", None, reason="judge_error", clean=False)]
    pairs, reason, dropped = make_pairs("q", cands, PairingConfig(margin=0.5))
    assert reason is None and [(p.chosen.generator, p.rejected.generator) for p in pairs] == [("a", "b")]
    assert dropped == {"unparseable": 2}


def test_best_vs_random_below_threshold():
    cands = [cand("a", 0.9), cand("b", 0.4), cand("c", 0.3), cand("d", 0.7)]
    cfg = PairingConfig(policy="best_random_below", threshold=0.5, seed=3)
    picks = {make_pairs(f"q{k}", cands, cfg)[0][0].rejected.generator for k in range(40)}
    assert picks == {"b", "c"}  # never d (above the threshold), both below-threshold answers drawn
    again = [make_pairs(f"q{k}", cands, cfg)[0][0].rejected.generator for k in range(10)]
    assert again == [make_pairs(f"q{k}", cands, cfg)[0][0].rejected.generator for k in range(10)]  # seeded
    _, reason, _ = make_pairs("q", [cand("a", 0.9), cand("b", 0.6)], cfg)
    assert reason == "no_rejected_below_threshold"


def test_all_pairs_above_margin_sorted_by_margin():
    cands = [cand("a", 1.0), cand("b", 0.6), cand("c", 0.5), cand("d", 0.5)]
    pairs, reason, _ = make_pairs("q", cands, PairingConfig(policy="all_pairs", margin=0.3))
    got = [(p.chosen.generator, p.rejected.generator) for p in pairs]
    assert got == [("a", "c"), ("a", "d"), ("a", "b")]  # c-d tie and b-c (0.1) excluded
    capped, _, _ = make_pairs("q", cands, PairingConfig(policy="all_pairs", margin=0.3, max_pairs_per_question=1))
    assert len(capped) == 1


def test_pair_all_counts_every_question_by_reason():
    groups = {
        "q1": [cand("a", 0.9), cand("b", 0.1)],
        "q2": [cand("a", 0.5), cand("b", 0.5)],
        "q3": [cand("a", 0.9), cand("b", None, text="", reason="empty", clean=False)],
        "q4": [cand("a", 0.9), cand("b", 0.8)],
        "q5": [cand("a", 0.3, clean=False, reason="unparseable"), cand("b", 0.1)],
    }
    res = pair_all(groups, PairingConfig(margin=0.2))
    assert res["questions"] == 5 and res["questions_with_pairs"] == 1 and len(res["pairs"]) == 1
    assert res["questions_dropped"] == {"below_margin": 1, "empty": 1, "tie": 1, "unparseable": 1}
    assert sum(res["questions_dropped"].values()) + res["questions_with_pairs"] == res["questions"]
    assert res["answers_dropped"] == {"empty": 1, "unparseable": 1}
