"""The registry of stage types a recipe can use.

A stage type is a pydantic config model (a subclass of StageConfig) plus a function
`run(config, ctx) -> dict[str, str]` that writes its outputs under ctx.stage_dir and returns them by name
(the first is the stage's main output, what "@stage" refers to). Modules register their stage types with
the @stage_type decorator; STAGE_MODULES lists the modules imported to fill the registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict

from meditune.io import child, directory_name
from meditune.model_ref import FLAT_KEYS, ModelRef

# One module per family of stage types; each registers its types when imported.
STAGE_MODULES = [
    "meditune.data.stage",
    "meditune.generation.stage",
    "meditune.prefs.stage",
    "meditune.training.stage",
    "meditune.merging.stage",
    "meditune.evaluation.stage",
    "meditune.report.stage",
]


# Recipe-wide settings and their values when there is no recipe (the Recipe schema's defaults); None: the
# stage's own default stays (batch_size: a stage that sets none keeps its own).
RECIPE_DEFAULTS: dict[str, Any] = {"model": "default", "seed": 0, "device": "auto", "dtype": "auto",
                                   "trust_remote_code": False, "system_prompt": None, "batch_size": None}
MODEL_DEFAULTS = ("model", "seed", "device", "dtype", "trust_remote_code", "system_prompt")  # training stages
# Stages that generate or score at inference (generate, evaluations, rationales) also take the batch size: their
# `batch_size` counts prompts (or questions) per batch. A training stage's `batch_size` is its optimizer batch,
# sized with the model's training memory, so training stages (sft ... grpo, rs/idpo rollouts) keep their own.
INFERENCE_DEFAULTS = (*MODEL_DEFAULTS, "batch_size")
# what a generator or judge reference takes (its system prompt and sampling are its own)
BACKEND_DEFAULTS = ("model", "device", "dtype", "trust_remote_code", "batch_size")

# A name that becomes a directory (stage and recipe names): letters, digits, '_' and '-'.
DirectoryName = Annotated[str, AfterValidator(directory_name)]


class StageConfig(BaseModel):
    """Fields every stage has. Subclasses add their own; unknown keys are errors.

    `recipe_defaults` names the recipe-wide settings (keys of RECIPE_DEFAULTS: MODEL_DEFAULTS, or
    INFERENCE_DEFAULTS for a stage whose batch_size is an inference batch) the stage takes when it leaves them
    unset; a stage whose model/backend references live deeper says where in `recipe_default_targets`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    recipe_defaults: ClassVar[tuple[str, ...]] = ()

    name: DirectoryName  # the stage's directory inside the run directory: no '/', '.', '..' or absolute paths
    type: str

    def recipe_default_targets(self) -> list[tuple[BaseModel, tuple[str, ...]]]:
        """(model, recipe-wide keys it takes) pairs that apply_recipe_defaults fills."""
        return default_targets(self, self.recipe_defaults)


def default_targets(config: BaseModel, keys: tuple[str, ...]) -> list[tuple[BaseModel, tuple[str, ...]]]:
    """Where recipe-wide `keys` go in a config: model, device, dtype and trust_remote_code into its model
    reference (`config.model`, a ModelRef), the others into the config itself."""
    ref = getattr(config, "model", None)
    if not isinstance(ref, ModelRef):
        return [(config, keys)]
    return [(ref, tuple(k for k in keys if k in FLAT_KEYS)),
            (config, tuple(k for k in keys if k not in FLAT_KEYS))]


def recipe_setting(recipe: Any, key: str) -> Any:
    """A recipe-wide setting by its flat key (model, device, ... read from the recipe's model reference)."""
    if recipe is None:
        return None
    if key in FLAT_KEYS:
        return getattr(recipe.model, FLAT_KEYS[key])
    return getattr(recipe, key, None)


def apply_recipe_defaults(config: StageConfig, recipe: Any) -> StageConfig:
    """The one place recipe-wide settings reach a stage: each key a stage (or a model/backend reference inside it)
    takes and leaves unset or null gets the recipe's value (RECIPE_DEFAULTS without a recipe; a None there keeps
    the stage's own default); an empty system_prompt means none. Returns a copy; applying it twice changes
    nothing."""
    config = config.model_copy(deep=True)
    for target, keys in config.recipe_default_targets():
        for key in keys:
            field = FLAT_KEYS[key] if isinstance(target, ModelRef) else key
            if field not in type(target).model_fields:
                continue
            if field not in target.model_fields_set or getattr(target, field) is None:
                value = recipe_setting(recipe, key)
                value = RECIPE_DEFAULTS[key] if value is None else value
                if value is not None:  # nothing recipe-wide (batch_size unset): the stage's own default stays
                    setattr(target, field, value)
            if key == "system_prompt" and target.system_prompt == "":
                target.system_prompt = None  # "" = explicitly none, even when the recipe sets one
    return config


def upstream_refs(value: Any) -> list[str]:
    """Stage names referenced as "@stage" or "@stage.output" anywhere inside a config value."""
    if isinstance(value, str) and value.startswith("@"):
        return [value[1:].split(".", 1)[0]]
    if isinstance(value, dict):
        return [r for v in value.values() for r in upstream_refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in upstream_refs(v)]
    return []


def from_upstream(value: Any) -> str | None:
    """"from @stage" when a config value names outputs of earlier stages that a dry run cannot read yet (what an
    estimate prints instead of a count), else None."""
    refs = list(dict.fromkeys(upstream_refs(value)))
    return "from " + ", ".join(f"@{r}" for r in refs) if refs else None


def upstream_count(value: Any, limit: int | None = None) -> str | None:
    """What a dry run prints for a count read from an earlier stage's output: "from @stage", or "at most N,
    from @stage" under a limit; None when the value names no earlier stage."""
    src = from_upstream(value)
    if src is None:
        return None
    return f"at most {limit}, {src}" if limit else src


@dataclass
class StageContext:
    """What a running stage gets: where to write, recipe-wide settings and upstream outputs."""

    run_dir: Path
    stage_dir: Path
    recipe: Any  # meditune.recipe.Recipe
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)  # finished stages' outputs by name
    dry_run: bool = False

    @property
    def seed(self) -> int:
        return self.recipe.seed

    def path(self, name: str) -> Path:
        """A path inside this stage's directory (a name that would leave it is a ConfigError)."""
        return child(self.stage_dir, name)


@dataclass
class StageType:
    type: str
    config: type[StageConfig]
    run: Callable[[Any, StageContext], dict[str, str]]
    description: str
    estimate: Callable[[Any, Any], dict[str, Any]] | None = None  # (config, recipe) -> work estimate
    depends_on_all: bool = False  # e.g. the report: re-runs when any earlier stage's outputs change
    # Under torchrun: every rank runs the stage, which splits its work (meditune.distributed); otherwise rank 0
    # runs it alone while the other ranks wait.
    all_ranks: bool = False


REGISTRY: dict[str, StageType] = {}
_loaded = False


def stage_type(type_name: str, config: type[StageConfig], description: str,
               estimate: Callable[[Any, Any], dict[str, Any]] | None = None, depends_on_all: bool = False,
               all_ranks: bool = False):
    """Decorator registering `run(config, ctx)` as the stage type `type_name` (all_ranks: see StageType)."""

    def deco(fn):
        REGISTRY[type_name] = StageType(type_name, config, fn, description, estimate, depends_on_all, all_ranks)
        return fn

    return deco


def registry() -> dict[str, StageType]:
    """All registered stage types (imports STAGE_MODULES once)."""
    global _loaded
    if not _loaded:
        for mod in STAGE_MODULES:
            importlib.import_module(mod)
        _loaded = True
    return REGISTRY
