"""The registry of stage types a recipe can use.

A stage type is a pydantic config model (a subclass of StageConfig) plus a function
`run(config, ctx) -> dict[str, str]` that writes its outputs under ctx.stage_dir and returns them by name
(the first is the stage's main output, what "@stage" refers to). Modules register their stage types with
the @stage_type decorator; STAGE_MODULES lists the modules imported to fill the registry.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict

from meditune.io import child, directory_name

log = logging.getLogger(__name__)

# One module per family of stage types; each registers its types when imported.
STAGE_MODULES = [
    "meditune.data.stage",
    "meditune.generation.stage",
    "meditune.prefs.stage",
    "meditune.training.stages",
    "meditune.merging.stage",
    "meditune.evaluation.mcqa_stage",
    "meditune.evaluation.open_stages",
    "meditune.report.stage",
]


# A name that becomes a directory (stage and recipe names): letters, digits, '_' and '-'.
DirectoryName = Annotated[str, AfterValidator(directory_name)]


class StageConfig(BaseModel):
    """Fields every stage has. Subclasses add their own; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: DirectoryName  # the stage's directory inside the run directory: no '/', '.', '..' or absolute paths
    type: str


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


REGISTRY: dict[str, StageType] = {}
_loaded = False


def stage_type(type_name: str, config: type[StageConfig], description: str,
               estimate: Callable[[Any, Any], dict[str, Any]] | None = None, depends_on_all: bool = False):
    """Decorator registering `run(config, ctx)` as the stage type `type_name`."""

    def deco(fn):
        REGISTRY[type_name] = StageType(type_name, config, fn, description, estimate, depends_on_all)
        return fn

    return deco


def registry() -> dict[str, StageType]:
    """All registered stage types (imports STAGE_MODULES once)."""
    global _loaded
    if not _loaded:
        for mod in STAGE_MODULES:
            try:
                importlib.import_module(mod)
            except ModuleNotFoundError as e:
                if e.name and mod.startswith(e.name):
                    log.debug("stage module %s not present", mod)
                    continue
                raise
        _loaded = True
    return REGISTRY
