"""ModelRef: which model a config loads, on which device, in which dtype, with or without the hub's model code.

A config that loads a model holds one `model: ModelRef` field (through the ModelRefOwner mixin). In code the
reference is nested (`cfg.model.spec`, `cfg.model.device`); in recipes, flags and `--set` the flat keys users have
always written (`model: NAME`, `device: cpu`, `dtype: float32`, `trust_remote_code: true`) still work, and so does
the nested mapping (`model: {spec: NAME, device: cpu}`). A config's canonical dump (what the pipeline fingerprints
and writes to manifests) stays the flat form, with the keys, defaults and key order it had before the reference
was nested, so run directories made before stay up to date.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator
from pydantic_core import PydanticCustomError

# flat key of a config -> field of ModelRef (the recipe-wide settings of the same names fill them)
FLAT_KEYS = {"model": "spec", "device": "device", "dtype": "dtype", "trust_remote_code": "trust_remote_code"}
# dtype names meditune.models.pick_dtype understands -> the torch dtype they name
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}
DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")
DEFAULT_SPEC = "default"  # the embedded default model (meditune.models.resolve)
REQUIRED = ...  # in ModelRefOwner.model_defaults: the config has no default for this key


class ModelRef(BaseModel):
    """Which model, on which device, in which dtype, with or without the hub's model code (None: the recipe's)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    spec: str | None = Field(None, description="model spec: default, a directory (full model or adapter), a .gguf, "
                             "a hub id, '@stage', or the model name for backend openai; unset: the recipe's")
    device: str | None = Field(None, description="cpu | cuda | cuda:N | mps | auto; unset: the recipe's")
    dtype: str | None = Field(None, description="float32 | bfloat16 | float16 | auto; unset: the recipe's")
    trust_remote_code: bool | None = Field(None, description="allow model code from the hub; unset: the recipe's")

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str | None) -> str | None:
        if v is not None and not DEVICE.fullmatch(v):
            raise ValueError(f"unknown device {v!r}: use auto, cpu, cuda, cuda:N, mps or xpu")
        return v

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, v: str | None) -> str | None:
        if v is not None and v != "auto" and v not in DTYPES:
            raise ValueError(f"unknown dtype {v!r}: use auto, float32, bfloat16 or float16")
        return v

    def filled(self, defaults: dict[str, Any]) -> ModelRef:
        """A copy whose unset (or None) fields take `defaults` (by flat key) and still count as unset, so the
        recipe's settings reach them (meditune.stages.apply_recipe_defaults): None means "the recipe's"."""
        given = {f for f in self.model_fields_set if getattr(self, f) is not None}
        values = {f: getattr(self, f) if f in given else defaults.get(k) for k, f in FLAT_KEYS.items()}
        return ModelRef.model_construct(_fields_set=given, **values)

    @property
    def spec_or_default(self) -> str:
        """The spec to load: an unset spec (no recipe value either) means the embedded default model."""
        return self.spec or DEFAULT_SPEC

    def with_spec(self, spec: str | None) -> ModelRef:
        """The same settings for another model (a trained policy, a resolved spec)."""
        return self.model_copy(update={"spec": spec})

    def inheriting(self, other: ModelRef, fields: tuple[str, ...]) -> ModelRef:
        """A copy whose unset `fields` take `other`'s values (a judge runs where the evaluated model runs)."""
        return self.model_copy(update={f: getattr(other, f) for f in fields if f not in self.model_fields_set})

    def flat(self, keys: tuple[str, ...], *, exclude_unset: bool = False) -> dict[str, Any]:
        """The flat keys of this reference (model, device, dtype, trust_remote_code) among `keys`."""
        return {k: getattr(self, FLAT_KEYS[k]) for k in keys
                if not exclude_unset or FLAT_KEYS[k] in self.model_fields_set}


def flat_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A validation error's location in the flat form: (..., 'model', 'device') -> (..., 'device'),
    (..., 'model', 'spec') -> (..., 'model')."""
    for i in range(len(loc) - 1):
        if loc[i] == "model" and loc[i + 1] in ModelRef.model_fields:
            key = "model" if loc[i + 1] == "spec" else loc[i + 1]
            return (*loc[:i], key, *loc[i + 2:])
    return tuple(loc)


def model_ref_field(description: str = "the model this config loads (ModelRef)") -> Any:
    """The `model` field of a ModelRefOwner (its unset settings take the owner's model_defaults)."""
    return Field(default_factory=ModelRef, validate_default=True, description=description)


class ModelRefOwner(BaseModel):
    """Mixin of a config with one `model: ModelRef = model_ref_field()`: folds the flat keys into it on input and
    writes them back flat on output.

    model_defaults: the flat keys this config takes and the value each has when unset (REQUIRED: none);
    model_keys_after: the field after which device, dtype and trust_remote_code are written in the canonical
    dump (the key order manifests have always had); None: right after `model`. In model_dump, `include` and
    `exclude` name the flat keys (`include={"model"}` is the spec alone)."""

    model_defaults: ClassVar[dict[str, Any]] = {"model": None, "device": None, "dtype": None,
                                                "trust_remote_code": None}
    model_keys_after: ClassVar[str | None] = None

    @model_validator(mode="before")
    @classmethod
    def _fold_flat_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        flat = {k: data[k] for k in cls.model_defaults if k != "model" and k in data}
        if not flat:
            return data
        ref = data.get("model")
        if isinstance(ref, ModelRef):
            ref = ref.model_dump(exclude_unset=True)
        elif isinstance(ref, dict):
            ref = dict(ref)
        else:
            ref = {} if "model" not in data else {"spec": ref}
        for k, v in flat.items():
            if FLAT_KEYS[k] in ref:
                raise ValueError(f"{k!r} is given twice: as '{k}' and as 'model.{FLAT_KEYS[k]}'; keep one")
            ref[FLAT_KEYS[k]] = v
        return {**{k: v for k, v in data.items() if k not in flat}, "model": ref}

    @field_validator("model", mode="before", check_fields=False)
    @classmethod
    def _spec_as_string(cls, v: Any) -> Any:
        return {"spec": v} if v is None or isinstance(v, str) else v

    @field_validator("model", check_fields=False)
    @classmethod
    def _own_defaults(cls, v: ModelRef) -> ModelRef:
        taken = {FLAT_KEYS[k] for k in cls.model_defaults}
        if extra := [f for f in FLAT_KEYS.values() if f in v.model_fields_set - taken]:
            raise ValueError(f"this config takes no {extra[0]!r} (it takes {', '.join(cls.model_defaults)})")
        if any(d is REQUIRED and getattr(v, FLAT_KEYS[k]) is None for k, d in cls.model_defaults.items()):
            raise PydanticCustomError("missing", "Field required")
        return v.filled({k: d for k, d in cls.model_defaults.items() if d is not REQUIRED})

    @model_serializer(mode="wrap")
    def _flat_model_keys(self, handler: Any, info: Any) -> dict[str, Any]:
        out = handler(self)
        if not isinstance(out, dict):
            return out
        keys = tuple(k for k in self.model_defaults
                     if (info.include is None or k in info.include) and (info.exclude is None or k not in info.exclude))
        flat = self.model.flat(keys, exclude_unset=info.exclude_unset)
        if info.exclude_none:
            flat = {k: v for k, v in flat.items() if v is not None}
        spec = {k: flat.pop(k) for k in ("model",) if k in flat}
        anchor = self.model_keys_after or "model"
        placed: dict[str, Any] = {}
        for k, v in out.items():
            if k == "model":
                placed.update(spec)
            else:
                placed[k] = v
            if k == anchor:
                placed.update(flat)
        if "model" not in out:
            placed.update(spec)
        if anchor not in out:
            placed.update(flat)
        return placed
