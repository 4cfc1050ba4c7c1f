"""The MCQA strategies by name: what `meditune eval mcqa --strategy NAME` and the eval_mcqa stage run.

A strategy is `run(ctx: StrategyContext, options) -> samples`, registered with @register_strategy. The built-in
ones (direct.py, mcqa_hook.py) register when meditune.evaluation.strategies is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meditune.errors import ConfigError
from meditune.evaluation.strategies.context import StrategyContext

StrategyFn = Callable[[StrategyContext, dict[str, Any]], list[dict[str, Any]]]


@dataclass
class Strategy:
    """A named strategy with its one-line description."""

    name: str
    run: StrategyFn
    description: str


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str, description: str = "") -> Callable[[StrategyFn], StrategyFn]:
    """Decorator registering `run(ctx, options) -> samples` as an MCQA strategy."""

    def deco(fn: StrategyFn) -> StrategyFn:
        STRATEGIES[name] = Strategy(name, fn, description)
        return fn

    return deco


def get_strategy(name: str) -> Strategy:
    """A registered strategy (the package's __init__ imports every built-in one, so they are all here)."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; available: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]
