"""The `trl:` mapping of a training stage: any field of the stage's TRL config dataclass, passed through.

Checked when the recipe (or `--set`/`--config` of `meditune train`) is validated, before anything runs: an
unknown key is an error naming the closest valid field.

Precedence: a `trl:` value wins over what meditune would set. When the same setting is also given through
meditune's own option (e.g. `beta: 0.2` and `trl: {beta: 0.3}`), that is an error, not a warning: two values
for one setting in one config make the run depend on a precedence rule the reader has to know, and the error
costs nothing because it is raised before the run starts. Keys that meditune must own (output_dir: every stage
writes into its stage directory) are rejected.
"""

from __future__ import annotations

import dataclasses
import difflib
from functools import lru_cache
from typing import Any

from meditune.errors import ConfigError

# TRL config field -> the meditune option that sets it (only options the stage has count)
MEDITUNE_OPTION = {
    "learning_rate": "learning_rate", "num_train_epochs": "epochs", "max_steps": "max_steps",
    "per_device_train_batch_size": "batch_size", "per_device_eval_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "warmup_steps": "warmup_ratio", "lr_scheduler_type": "lr_scheduler",
    "weight_decay": "weight_decay", "max_grad_norm": "max_grad_norm",
    "activation_checkpointing": "activation_checkpointing", "gradient_checkpointing": "activation_checkpointing",
    "activation_checkpointing_kwargs": "checkpoint_every", "gradient_checkpointing_kwargs": "checkpoint_every",
    "seed": "seed", "data_seed": "seed", "logging_steps": "logging_steps", "save_steps": "save_steps",
    "report_to": "report_to", "max_length": "max_length", "packing": "packing", "packing_strategy": "packing_strategy",
    "beta": "beta", "loss_type": "loss_type", "label_smoothing": "label_smoothing",
    "precompute_ref_log_probs": "precompute_ref", "max_completion_length": "max_completion_length",
    "center_rewards_coefficient": "center_rewards_coefficient", "num_generations": "num_generations",
    "temperature": "temperature", "top_p": "top_p", "use_vllm": "use_vllm", "vllm_mode": "vllm_mode",
    "loss_weights": "loss_weights", "reward_weights": "rewards",
}
RESERVED = {"output_dir": "meditune writes every stage into its stage directory"}


def import_orpo() -> tuple[type, type]:
    """(ORPOConfig, ORPOTrainer) from whichever path this TRL version uses."""
    try:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    except ImportError:
        try:
            from trl import ORPOConfig, ORPOTrainer  # TRL < 1.0
        except ImportError:
            import trl

            raise ConfigError(f"ORPO is not available in TRL {trl.__version__} (looked in trl.experimental.orpo "
                              "and trl); install a TRL version in meditune's supported range") from None
    return ORPOConfig, ORPOTrainer


def config_class(name: str) -> type:
    """The TRL config dataclass by name (ORPOConfig from wherever this TRL version keeps it)."""
    if name == "ORPOConfig":
        return import_orpo()[0]
    import trl

    return getattr(trl, name)


@lru_cache(maxsize=16)
def config_fields(name: str) -> tuple[str, ...]:
    """Names of the fields a TRL config dataclass accepts."""
    return tuple(f.name for f in dataclasses.fields(config_class(name)) if f.init)


def unknown_key_error(name: str, keys: list[str]) -> str | None:
    """The error for the first key that is not a field of the TRL config (None when all are valid)."""
    fields = config_fields(name)
    for key in keys:
        if key in RESERVED:
            return f"'{key}' cannot be set: {RESERVED[key]}"
        if key not in fields:
            import trl

            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f"; see the fields of trl.{name}"
            return f"unknown {name} option '{key}' (TRL {trl.__version__}){hint}"
    return None


def conflict_error(trl: dict[str, Any], options: dict[str, Any], explicit: set[str]) -> str | None:
    """The error for a `trl:` key whose meditune option was also set explicitly (None when there is none)."""
    for key in trl:
        opt = MEDITUNE_OPTION.get(key)
        if opt in options and opt in explicit:
            return (f"trl.{key} and the stage option '{opt}' set the same thing; keep one of them (a trl: value "
                    f"otherwise wins over meditune's default for '{opt}')")
    return None


def with_trl(cfg: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the TRL config: meditune's, then the stage's `trl:` mapping on top."""
    return {**kwargs, **getattr(cfg, "trl", {})}
