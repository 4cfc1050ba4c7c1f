"""MCQA inference strategies: direct, CoT, self-consistency, kNN few-shot and Medprompt (choice-shuffle ensemble).

`get_strategy(name)` is what the MCQA engine (`meditune eval mcqa --strategy NAME`) runs; importing this package
registers every built-in strategy (registry.py). `run_strategy(name, items, backend, options, out_dir)` runs the
CoT family on any generation backend; see docs/evaluation-strategies.md.
"""

from meditune.evaluation.strategies import direct, mcqa_hook  # noqa: F401  (register the built-in strategies)
from meditune.evaluation.strategies.context import StrategyContext
from meditune.evaluation.strategies.options import (
    STRATEGY_NAMES,
    StrategyOptions,
    check_strategy,
    parse_options,
)
from meditune.evaluation.strategies.registry import STRATEGIES, Strategy, get_strategy, register_strategy
from meditune.evaluation.strategies.runner import StrategyResult, run_strategy

__all__ = ["STRATEGIES", "STRATEGY_NAMES", "Strategy", "StrategyContext", "StrategyOptions", "StrategyResult",
           "check_strategy", "get_strategy", "parse_options", "register_strategy", "run_strategy"]
