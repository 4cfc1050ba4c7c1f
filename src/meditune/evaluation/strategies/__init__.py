"""MCQA inference strategies: direct, CoT, self-consistency, kNN few-shot and Medprompt (choice-shuffle ensemble).

Entry point: `run_strategy(name, items, backend, options, out_dir)`; see docs/evaluation-strategies.md.
Importing this package also registers cot, self-consistency, knn-fewshot and medprompt with
`meditune eval mcqa --strategy` (meditune.evaluation.mcqa's registry).
"""

from meditune.evaluation.strategies.options import (
    STRATEGY_NAMES,
    StrategyOptions,
    check_strategy,
    parse_options,
)
from meditune.evaluation.strategies.runner import StrategyResult, run_strategy

try:
    from meditune.evaluation.strategies import mcqa_hook  # noqa: F401  (registers with the MCQA engine)
except ModuleNotFoundError as e:  # the MCQA engine is optional for using run_strategy directly
    if e.name != "meditune.evaluation.mcqa":
        raise

__all__ = ["STRATEGY_NAMES", "StrategyOptions", "StrategyResult", "check_strategy", "parse_options",
           "run_strategy"]
