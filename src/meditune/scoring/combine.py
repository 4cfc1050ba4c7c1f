"""Weighted combinations of scorers, each part rescaled to [0, 1] by its known range when it has one."""

from __future__ import annotations

from collections.abc import Sequence

from meditune.scoring.base import Score, ScoreInput, Scorer


def normalise(value: float, value_range: tuple[float, float] | None) -> float:
    """Value mapped to [0, 1] by (low, high); unbounded scales (reward models) pass through unchanged."""
    if value_range is None:
        return value
    lo, hi = value_range
    return (value - lo) / (hi - lo) if hi > lo else 0.0


class CombinedScorer:
    """sum(w * normalised part) / sum(w); None when any part is None; clean only when every part is clean."""

    name = "combine"

    def __init__(self, parts: Sequence[tuple[Scorer, float]]):
        if not parts:
            raise ValueError("a combined scorer needs at least one part")
        self.parts = list(parts)
        bounded = all(s.value_range is not None for s, _ in self.parts)
        self.value_range = (0.0, 1.0) if bounded else None

    def score(self, items: Sequence[ScoreInput]) -> list[Score]:
        per_part = [scorer.score(items) for scorer, _ in self.parts]
        total_w = sum(w for _, w in self.parts)
        out = []
        for k in range(len(items)):
            scores = [p[k] for p in per_part]
            ev = {f"{s.name}#{j}": {"weight": w, **sc.to_dict()}
                  for j, ((s, w), sc) in enumerate(zip(self.parts, scores, strict=True))}
            missing = next((sc for sc in scores if sc.value is None), None)
            clean = all(sc.clean for sc in scores)
            reason = next((sc.reason for sc in scores if not sc.clean or sc.value is None), None)
            if missing is not None:
                out.append(Score(None, clean=False, reason=missing.reason or "unscored", evidence=ev))
                continue
            value = sum(w * normalise(sc.value, s.value_range)
                        for (s, w), sc in zip(self.parts, scores, strict=True)) / total_w
            out.append(Score(value, clean=clean, reason=reason, evidence=ev))
        return out
