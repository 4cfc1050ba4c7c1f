"""Calibration metrics on constructed cases with known values, and their place in MCQA results.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from meditune.evaluation.calibration import (
    Forecast,
    aurc,
    calibration,
    ece,
    loglik_forecasts,
    mcqa_calibration,
    reliability_bins,
    selective_accuracy,
    softmax,
    vote_forecasts,
)


def two_option(conf: float, correct: bool) -> Forecast:
    """Predicts option 0 with probability conf; gold is 0 when correct, else 1."""
    return Forecast([conf, 1.0 - conf], 0 if correct else 1, 0)


def test_perfectly_calibrated_has_zero_ece_and_known_brier():
    fs = [two_option(0.8, i < 8) for i in range(10)]
    res = calibration(fs)
    assert res["metrics"]["ece"]["value"] == pytest.approx(0.0, abs=1e-12)
    # correct: 0.2^2 + 0.2^2 = 0.08; wrong: 0.8^2 + 0.8^2 = 1.28; (8 * 0.08 + 2 * 1.28) / 10
    assert res["metrics"]["brier"]["value"] == pytest.approx(0.32)
    assert res["accuracy"] == pytest.approx(0.8) and res["mean_confidence"] == pytest.approx(0.8)


def test_overconfident_ece_and_brier():
    fs = [two_option(1.0, i % 2 == 0) for i in range(10)]
    res = calibration(fs)
    assert res["metrics"]["ece"]["value"] == pytest.approx(0.5)
    assert res["metrics"]["brier"]["value"] == pytest.approx(1.0)  # 0 when right, 2 when wrong
    assert res["bins"][-1]["n"] == 10  # confidence 1.0 falls in the last bin [0.9, 1.0]


def test_two_bin_ece_by_hand():
    conf = np.array([0.95] * 4 + [0.55] * 4)
    correct = np.array([1, 1, 1, 1, 1, 0, 0, 0], dtype=float)
    # 0.5 * |1 - 0.95| + 0.5 * |0.25 - 0.55|
    assert ece(conf, correct) == pytest.approx(0.175)
    bins = reliability_bins(conf, correct)
    assert [b["n"] for b in bins] == [0, 0, 0, 0, 0, 4, 0, 0, 0, 4]
    assert bins[5]["accuracy"] == pytest.approx(0.25) and bins[9]["confidence"] == pytest.approx(0.95)
    assert bins[0]["accuracy"] is None


def test_selective_accuracy_and_aurc_known_rankings():
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    good = np.array([1, 1, 1, 0], dtype=float)  # the wrong answer is the least confident
    assert selective_accuracy(conf, good, 0.5) == 1.0
    assert selective_accuracy(conf, good, 0.8) == 0.75  # ceil(0.8 * 4) = 4 items, all of them
    assert selective_accuracy(conf, good, 0.75) == 1.0  # the 3 most confident
    assert aurc(conf, good) == pytest.approx((0 + 0 + 0 + 1 / 4) / 4)
    bad = good[::-1].copy()  # the wrong answer is the most confident
    assert selective_accuracy(conf, bad, 0.5) == 0.5
    assert aurc(conf, bad) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_ties_are_broken_by_expectation_not_order():
    conf = np.full(4, 0.5)
    a = np.array([1, 1, 0, 0], dtype=float)
    b = a[::-1].copy()
    for x in (a, b):
        assert selective_accuracy(conf, x, 0.5) == pytest.approx(0.5)
        assert aurc(conf, x) == pytest.approx(0.5)


def test_bootstrap_cis_bracket_the_value():
    rng = np.random.default_rng(1)
    fs = [two_option(float(c), bool(rng.random() < c)) for c in rng.uniform(0.5, 1.0, 200)]
    res = calibration(fs)
    for name, m in res["metrics"].items():
        assert m["ci_low"] <= m["value"] + 1e-9 and m["value"] <= m["ci_high"] + 1e-9, name
        assert m["ci_high"] > m["ci_low"], name


def test_loglik_and_vote_forecasts():
    s = {"gold": 1, "loglik": [-2.0, -1.0, -3.0]}
    (f,) = loglik_forecasts([s])
    assert f.pred == 1 and f.correct and f.confidence == pytest.approx(softmax([-2.0, -1.0, -3.0])[1])
    # acc_norm divides by characters: -2/1 = -2 beats -1/... only when the choice is long
    (g,) = loglik_forecasts([s], [[1, 10, 1]])
    assert g.pred == 1 and math.isclose(sum(g.probs), 1.0)
    (h,) = loglik_forecasts([s], [[4, 1, 4]])
    assert h.pred == 0  # -0.5 > -1.0
    runs = [{"samples": [{}] * 5}]
    (v,) = vote_forecasts([{"gold": 0, "pred": 0, "votes": {"A": 3, "B": 1}, "runs": runs}], [4])
    assert v.probs == [0.6, 0.2, 0.0, 0.0] and v.confidence == 0.6  # one unparsed sample of 5
    (u,) = vote_forecasts([{"gold": 0, "pred": None, "votes": {}, "runs": runs}], [4])
    assert u.confidence == 0.0 and not u.correct and u.brier == 1.0


def test_sources_follow_the_samples():
    loglik = [{"gold": 0, "loglik": [-1.0, -2.0]}, {"gold": 1, "loglik": [-1.0, -2.0]}]
    assert set(mcqa_calibration(loglik, [2, 2], [[1, 1], [1, 1]])) == {"acc", "acc_norm"}
    single = [{"gold": 0, "pred": 0, "votes": {"A": 1}, "runs": [{"samples": [{}]}]}]
    assert mcqa_calibration(single, [2]) == {}  # one sample per item: a vote share says nothing
    greedy = [{"gold": 0, "pred": 0, "metrics": {}}]
    assert mcqa_calibration(greedy, [2]) == {}


def test_results_json_carries_calibration(tmp_path: Path, tiny_model_dir):
    from meditune.evaluation.mcqa import MCQAOptions, evaluate_mcqa

    cfg = MCQAOptions(data="sample:mcq", limit=12, template="generic", choices="full", device="cpu", batch_size=4)
    paths = evaluate_mcqa(cfg, tmp_path, model=str(tiny_model_dir))
    res = json.loads(Path(paths["results"]).read_text())
    task = next(iter(res["results"]))
    vals = res["results"][task]
    for key in ("acc_ece", "acc_brier", "acc_selective50", "acc_selective80", "acc_aurc", "acc_norm_ece"):
        assert 0.0 <= vals[f"{key},none"] <= 2.0
        assert vals[f"{key}_ci_low,none"] <= vals[f"{key},none"] + 1e-9 <= vals[f"{key}_ci_high,none"] + 2e-9
    assert res["higher_is_better"][task]["acc_ece"] is False and res["higher_is_better"][task]["acc"] is True
    cal = res["meditune"]["calibration"]
    assert sum(b["n"] for b in cal["acc"]["bins"]) == 12 and cal["acc"]["n"] == 12
    # the calibration's accuracy is the engine's acc: same argmax
    assert cal["acc"]["accuracy"] == pytest.approx(vals["acc,none"])
    assert cal["acc_norm"]["accuracy"] == pytest.approx(vals["acc_norm,none"])


def test_self_consistency_results_carry_vote_calibration(tmp_path: Path, tiny_model_dir, monkeypatch):
    from meditune.evaluation.mcqa import MCQAOptions, evaluate_mcqa
    from meditune.generation.base import ScriptedBackend

    # samples 0 and 1 answer A, sample 2 answers B: every item's winner A has a vote share of 2/3
    monkeypatch.setattr("meditune.generation.factory.make_backend",
                        lambda cfg, **kw: ScriptedBackend(lambda req, i: f"So.\nAnswer: {'AAB'[i % 3]}"))
    cfg = MCQAOptions(data="sample:mcq", limit=6, strategy="self-consistency", device="cpu",
                      strategy_options={"samples": 3, "shots": 0, "max_new_tokens": 8, "max_retries": 0})
    res = json.loads(Path(evaluate_mcqa(cfg, tmp_path, model=str(tiny_model_dir))["results"]).read_text())
    cal = res["meditune"]["calibration"]["votes"]
    assert cal["mean_confidence"] == pytest.approx(2 / 3) and cal["n"] == 6
    task = next(iter(res["results"]))
    acc = res["results"][task]["acc,none"]
    assert res["results"][task]["votes_ece,none"] == pytest.approx(abs(acc - 2 / 3))  # one bin holds every item
    assert "acc_ece,none" not in res["results"][task]
