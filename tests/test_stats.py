"""meditune.stats: Wilson intervals for any confidence, bootstrap CIs."""

from __future__ import annotations

import pytest

from meditune.stats import bootstrap_ci, paired_bootstrap, wilson_ci


def test_wilson_known_values():
    lo, hi = wilson_ci(5, 10)
    assert lo == pytest.approx(0.236593, abs=1e-6) and hi == pytest.approx(0.763407, abs=1e-6)
    assert wilson_ci(0, 10)[0] == pytest.approx(0.0, abs=1e-12) and wilson_ci(10, 10)[1] == pytest.approx(1.0)


def test_wilson_uses_the_normal_quantile_for_any_confidence():
    # z = 1.281552 for 80 %, 2.326348 for 98 %: not the 95 % value of a lookup table's fallback
    lo80, hi80 = wilson_ci(30, 100, confidence=0.80)
    lo95, hi95 = wilson_ci(30, 100, confidence=0.95)
    lo98, hi98 = wilson_ci(30, 100, confidence=0.98)
    assert hi80 - lo80 < hi95 - lo95 < hi98 - lo98
    assert lo80 == pytest.approx(0.244890, abs=1e-5) and hi98 == pytest.approx(0.414609, abs=1e-5)
    with pytest.raises(ValueError):
        wilson_ci(1, 2, confidence=1.0)


def test_bootstrap_cis_bracket_the_mean():
    vals = [1, 0, 1, 1, 0, 1, 0, 1]
    lo, hi = bootstrap_ci(vals)
    assert lo <= sum(vals) / len(vals) <= hi
    d = paired_bootstrap([0] * 8, vals)
    assert d["diff"] == pytest.approx(0.625) and d["ci_low"] <= d["diff"] <= d["ci_high"]
