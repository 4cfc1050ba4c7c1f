"""Calibration of multiple-choice answers: how far a model's confidence can be trusted.

Confidence sources (one per scoring an evaluation has):
- `acc`: softmax over the options' summed log-likelihoods (the scores `acc` ranks by).
- `acc_norm`: softmax over log-likelihood / characters of the choice (the scores `acc_norm` ranks by); a
  confidence score rather than a model probability, reported because acc_norm is often the headline metric.
- `votes`: self-consistency (or medprompt) vote shares: votes for an option / all samples of the item, so an
  unparseable sample lowers every option's share.
The prediction is the scoring's own (argmax / majority vote); an item without a prediction has confidence 0.

Metrics, each with a 95 % percentile-bootstrap CI over items (meditune.stats):
- `ece`: expected calibration error over 10 equal-width confidence bins [0, 0.1), ..., [0.9, 1.0]:
  sum over bins of (items in bin / n) * |accuracy in bin - mean confidence in bin|.
- `brier`: mean over items of sum over options (p_option - 1[option is gold])^2 (0 is perfect, 2 the worst).
- `selective50`, `selective80`: accuracy on the 50 % / 80 % of items with the highest confidence.
- `aurc`: area under the risk-coverage curve, mean over k = 1..n of the error rate of the k most confident items.
Ties in confidence are broken by expectation (each tied item counts with its tie group's mean accuracy), so
selective accuracy and AURC do not depend on item order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from meditune.records import LETTERS
from meditune.stats import bootstrap_ci, bootstrap_statistic

BINS = 10
COVERAGES = (0.5, 0.8)
LOWER_IS_BETTER = ("ece", "brier", "aurc")
SOURCES = {
    "acc": "softmax over the options' summed log-likelihoods",
    "acc_norm": "softmax over log-likelihood / characters of each choice (acc_norm's scores)",
    "votes": "vote share: votes for the option / all samples of the item (unparsed samples vote for none)",
}


@dataclass
class Forecast:
    """One item: a confidence per option, the gold option and the predicted one (None: no answer)."""

    probs: list[float]
    gold: int
    pred: int | None

    @property
    def confidence(self) -> float:
        return self.probs[self.pred] if self.pred is not None else 0.0

    @property
    def correct(self) -> bool:
        return self.pred == self.gold

    @property
    def brier(self) -> float:
        return sum((p - float(i == self.gold)) ** 2 for i, p in enumerate(self.probs))


def softmax(scores: Sequence[float]) -> list[float]:
    """Probabilities proportional to exp(score), computed stably."""
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # first index on ties, as the MCQA engine


def loglik_forecasts(samples: Sequence[dict[str, Any]], choice_chars: Sequence[Sequence[int]] | None = None
                     ) -> list[Forecast]:
    """Forecasts from log-likelihood samples; with choice_chars (characters per option) the acc_norm scores."""
    out = []
    for k, s in enumerate(samples):
        scores = list(s["loglik"])
        if choice_chars is not None:
            scores = [ll / max(1, n) for ll, n in zip(scores, choice_chars[k], strict=True)]
        out.append(Forecast(softmax(scores), int(s["gold"]), _argmax(scores)))
    return out


def vote_forecasts(samples: Sequence[dict[str, Any]], n_options: Sequence[int]) -> list[Forecast]:
    """Forecasts from vote counts ({letter: votes}) over all samples of each item (its `runs`)."""
    out = []
    for s, n in zip(samples, n_options, strict=True):
        total = sum(len(run.get("samples", [])) for run in s.get("runs", [])) or sum(s["votes"].values())
        probs = [s["votes"].get(LETTERS[i], 0) / total if total else 0.0 for i in range(n)]
        out.append(Forecast(probs, int(s["gold"]), s.get("pred")))
    return out


def _expected_errors(conf: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Errors sorted by confidence (highest first), each replaced by its tie group's mean error."""
    order = np.argsort(-conf, kind="stable")
    c, e = conf[order], err[order]
    group = np.concatenate([[0], np.cumsum(c[1:] != c[:-1])])
    means = np.bincount(group, weights=e) / np.bincount(group)
    return means[group]


def ece(conf: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error over equal-width confidence bins."""
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    gap = np.bincount(idx, weights=correct - conf, minlength=bins)  # per bin: n * (accuracy - confidence)
    return float(np.abs(gap).sum() / len(conf))


def selective_accuracy(conf: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    """Accuracy on the ceil(coverage * n) most confident items."""
    k = max(1, math.ceil(coverage * len(conf) - 1e-9))
    errs = _expected_errors(conf, 1.0 - correct)
    return float(1.0 - errs[:k].sum() / k)


def aurc(conf: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve (mean error rate of the top-k items over k = 1..n)."""
    errs = _expected_errors(conf, 1.0 - correct)
    return float((np.cumsum(errs) / np.arange(1, len(errs) + 1)).mean())


def reliability_bins(conf: np.ndarray, correct: np.ndarray, bins: int = BINS) -> list[dict[str, Any]]:
    """Per bin: edges, item count, accuracy and mean confidence (None when empty)."""
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        out.append({"low": b / bins, "high": (b + 1) / bins, "n": int(m.sum()),
                    "accuracy": float(correct[m].mean()) if m.any() else None,
                    "confidence": float(conf[m].mean()) if m.any() else None})
    return out


def calibration(forecasts: Sequence[Forecast], *, seed: int = 0) -> dict[str, Any]:
    """Every calibration metric with its bootstrap CI, plus the reliability bins."""
    conf = np.array([f.confidence for f in forecasts], dtype=float)
    correct = np.array([float(f.correct) for f in forecasts], dtype=float)
    briers = [f.brier for f in forecasts]
    stats: dict[str, Any] = {}

    def entry(value: float, ci: tuple[float, float]) -> dict[str, float]:
        return {"value": value, "ci_low": ci[0], "ci_high": ci[1]}

    stats["ece"] = entry(ece(conf, correct), bootstrap_statistic(lambda i: ece(conf[i], correct[i]), len(conf),
                                                                 seed=seed))
    stats["brier"] = entry(float(np.mean(briers)), bootstrap_ci(briers, seed=seed))
    for cov in COVERAGES:
        stats[f"selective{round(cov * 100)}"] = entry(
            selective_accuracy(conf, correct, cov),
            bootstrap_statistic(lambda i, c=cov: selective_accuracy(conf[i], correct[i], c), len(conf), seed=seed))
    stats["aurc"] = entry(aurc(conf, correct), bootstrap_statistic(lambda i: aurc(conf[i], correct[i]),
                                                                   len(conf), seed=seed))
    return {"n": len(forecasts), "accuracy": float(correct.mean()) if len(correct) else float("nan"),
            "mean_confidence": float(conf.mean()) if len(conf) else float("nan"), "metrics": stats,
            "bins": reliability_bins(conf, correct)}


def mcqa_calibration(samples: Sequence[dict[str, Any]], n_options: Sequence[int],
                     choice_chars: Sequence[Sequence[int]] | None = None) -> dict[str, dict[str, Any]]:
    """Calibration per confidence source an MCQA run has: acc / acc_norm (log-likelihoods), votes (samples)."""
    out: dict[str, dict[str, Any]] = {}
    if samples and all("loglik" in s for s in samples):
        out["acc"] = calibration(loglik_forecasts(samples))
        if choice_chars is not None:
            out["acc_norm"] = calibration(loglik_forecasts(samples, choice_chars))
    elif samples and all(isinstance(s.get("votes"), dict) for s in samples) and \
            any(sum(len(r.get("samples", [])) for r in s.get("runs", [])) > 1 for s in samples):
        out["votes"] = calibration(vote_forecasts(samples, n_options))
    for source, res in out.items():
        res["confidence_source"] = SOURCES[source]
    return out


def add_to_results(results: dict[str, Any], task: str, cal: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Put calibration into an lm-eval-layout results dict: `<source>_<metric>,none` keys with CI companions,
    higher_is_better entries, and the full detail (bins, protocol) under meditune.calibration."""
    if not cal:
        return results
    task_results = results["results"][task]
    better = results.setdefault("higher_is_better", {}).setdefault(task, {})
    for source, res in cal.items():
        for metric, v in res["metrics"].items():
            name = f"{source}_{metric}"
            task_results[f"{name},none"] = v["value"]
            task_results[f"{name}_ci_low,none"] = v["ci_low"]
            task_results[f"{name}_ci_high,none"] = v["ci_high"]
            better[name] = metric not in LOWER_IS_BETTER
    results.setdefault("meditune", {})["calibration"] = {
        **cal, "protocol": {"bins": f"{BINS} equal-width confidence bins", "coverages": list(COVERAGES),
                            "ties": "broken by expectation (tie-group mean accuracy)",
                            "ci": "percentile bootstrap over items, 95%, 2000 resamples, seed 0"}}
    return results
