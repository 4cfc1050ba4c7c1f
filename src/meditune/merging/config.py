"""The merge configuration: mergekit-compatible YAML (models, base_model, merge_method, parameters, dtype).

A parameter value is a scalar, a gradient (a list interpolated over the layers: layer i of L gets
t = i / (L - 1); tensors outside the layers get t = 0, as in mergekit), or a list of conditions
`{filter: substring-of-tensor-name, value: ...}` where the first matching filter wins.
Per-model parameters override the top-level ones, which override the method's defaults.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from meditune.errors import ConfigError

Scalar = bool | int | float | str


class Condition(BaseModel):
    """A parameter value applied to tensors whose name contains `filter` (all tensors when absent)."""

    model_config = ConfigDict(extra="forbid")
    filter: str | None = None
    value: Scalar | list[Scalar]


ParameterValue = Scalar | list[Scalar] | Condition | list[Condition]


class ModelEntry(BaseModel):
    """One input model: a spec (default, dir, .gguf, adapter dir, hub id, "@stage") and its parameters."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str
    parameters: dict[str, ParameterValue] = Field(default_factory=dict)


class MergeSpec(BaseModel):
    """What to merge and how; the same keys as a mergekit config where both have them."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True)

    merge_method: str = Field(validation_alias=AliasChoices("merge_method", "method"))
    models: list[ModelEntry]
    base_model: str | None = None
    parameters: dict[str, ParameterValue] = Field(default_factory=dict)
    dtype: Literal["float32", "bfloat16", "float16", "float64"] | None = None  # inputs are cast to it
    out_dtype: Literal["float32", "bfloat16", "float16", "float64"] | None = None  # default: dtype or inputs'
    tokenizer_source: str | None = None  # "base", a model spec from the list, or None (base, else first)
    resize_vocab: bool = False  # pad/truncate embedding rows to the tokenizer source's vocabulary
    seed: int | None = None  # DARE masks; None = the recipe seed (stage) or 0 (CLI)
    shard_size: str | int = "2GB"

    @field_validator("models", mode="before")
    @classmethod
    def _models_as_strings(cls, v: Any) -> Any:
        # `models: [a, b]` is shorthand for `models: [{model: a}, {model: b}]`
        if isinstance(v, list):
            return [{"model": m} if isinstance(m, str) else m for m in v]
        return v


def evaluate(value: ParameterValue, tensor: str, t: float) -> Any:
    """Resolve a parameter value for one tensor at layer position t (mergekit's rules)."""
    if isinstance(value, Condition):
        value = [value]
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        if not value:
            return None
        if all(isinstance(e, Condition) for e in value):
            for cond in value:
                if cond.filter in (None, "*") or cond.filter in tensor:
                    return evaluate(cond.value, tensor, t)
            return None
        if all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in value):
            scaled = t * (len(value) - 1)
            i0 = int(scaled)
            i1 = min(len(value) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * value[i0] + frac * value[i1]
        return value[int(t * (len(value) - 1))]  # discrete values: pick, do not interpolate
    raise ConfigError(f"unexpected parameter value {value!r}")


def load_merge_config(path: str | Path) -> MergeSpec:
    """Read and validate a merge YAML; errors name the file and key."""
    from meditune.recipe import read_yaml

    return parse_merge_config(read_yaml(path, "merge config"), str(path))


def parse_merge_config(data: Any, source: str = "merge config") -> MergeSpec:
    """Validate a merge config mapping."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a merge config must be a YAML mapping")
    try:
        return MergeSpec.model_validate(data)
    except ValidationError as e:
        errors = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")  # a typo explains the rest
        first = errors[0]
        key = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            valid = sorted(MergeSpec.model_fields) if len(first["loc"]) == 1 else sorted(ModelEntry.model_fields)
            close = difflib.get_close_matches(str(first["loc"][-1]), valid, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
            raise ConfigError(f"{source}: unknown key '{key}'; {hint}") from None
        raise ConfigError(f"{source}: '{key}': {first['msg']}") from None
