"""Training curves as charts grouped by scale: loss, rewards and accuracies, KL, completion length."""

from __future__ import annotations

from collections.abc import Sequence

from meditune.report import charts

# (chart title, does a curve name belong to it); a curve goes to the first group that takes it
GROUPS = (
    ("KL to the reference", lambda k: k == "kl" or k.endswith("/kl")),
    ("completion length (tokens)", lambda k: k.startswith("completions/") and k.endswith("_length")),
    ("rewards, accuracy and parse rate", lambda k: "reward" in k or "accuracy" in k or k == "parse_rate"),
    ("loss", lambda k: "loss" in k),
)


def wanted(name: str) -> bool:
    """A curve the report draws (spreads such as reward_std and bookkeeping values are left out)."""
    if name.endswith(("/std", "_std")) or name.startswith("frac_"):
        return False
    return any(take(name) for _, take in GROUPS)


def curve_charts(stage: str, curves: dict[str, Sequence[tuple[float, float]]]) -> list[str]:
    """One line chart per group that has curves (a single chart when everything is loss)."""
    out = []
    left = dict(curves)
    for title, take in GROUPS:
        group = {k: v for k, v in left.items() if take(k)}
        for k in group:
            del left[k]
        if group:
            out.append(charts.line_chart(f"{stage}: {title}", group, y_label="value"))
    return out
