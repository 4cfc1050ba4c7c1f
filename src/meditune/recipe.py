"""Recipes: YAML validated by pydantic, `--set a.b=c` overrides, errors that name the key and suggest a fix."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from meditune.errors import ConfigError
from meditune.model_ref import ModelRef, ModelRefOwner, flat_loc, model_ref_field
from meditune.stages import DirectoryName, StageConfig, registry


class Recipe(ModelRefOwner):
    """A whole run: recipe-wide settings and the list of stages."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model_defaults = {"model": "default", "device": "auto", "dtype": "auto", "trust_remote_code": False}
    model_keys_after = "seed"

    name: DirectoryName  # runs/<name>
    description: str = ""
    model: ModelRef = model_ref_field("the model every stage uses unless it names its own (ModelRef)")
    seed: int = 0
    system_prompt: str | None = None
    # prompts (or questions) per batch of every stage that generates or scores at inference and sets none
    # (generate, evaluations, rationales, prefs generators and judge); training batches stay the stages' own
    batch_size: int | None = None
    run_dir: str | None = None
    stages: list[StageConfig] = Field(default_factory=list)

    @field_validator("batch_size", mode="before")
    @classmethod
    def _positive_batch_size(cls, v: Any) -> Any:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"must be a positive whole number (prompts per batch), got {v!r}")
        return v

    @model_validator(mode="after")
    def _unique_stage_names(self) -> Recipe:
        seen = set()
        for s in self.stages:
            if s.name in seen:
                raise ValueError(f"two stages are named {s.name!r}")
            seen.add(s.name)
        return self

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"no stage named {name!r}; stages: {', '.join(s.name for s in self.stages)}")

    def resolved_run_dir(self, base: Path | None = None) -> Path:
        return Path(self.run_dir) if self.run_dir else (base or Path("runs")) / self.name


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(valid))}"


# YAML line of each key path: ("stages", 0, "seed") -> 7. Built from the recipe text; --set keys have none.
Lines = dict[tuple, int]


def yaml_lines(text: str) -> Lines:
    """1-based line of every mapping key and list item of a YAML document, by its path."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    out: Lines = {}

    def walk(node: Any, path: tuple) -> None:
        out.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = path + (k.value,)
                out[key] = k.start_mark.line + 1
                walk(v, key)
                out[key] = k.start_mark.line + 1  # the key's own line, not its value's
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, path + (i,))

    if root is not None:
        walk(root, ())
    return out


def _line_of(lines: Lines | None, path: tuple, shortest: int = 0) -> int | None:
    """The line of the deepest prefix of `path` (at least `shortest` long) that the YAML text has."""
    if not lines:
        return None
    for end in range(len(path), shortest - 1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def _owner_fields(model: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the model that owns the last key of `loc` (to suggest one for a misspelt key)."""
    owner: Any = model
    for part in loc[:-1]:
        f = getattr(owner, "model_fields", {}).get(part)
        ann = getattr(f, "annotation", None) if f else None
        owner = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if owner is None:
            break
    return list(owner.model_fields) if owner is not None else []


def validation_problems(err: ValidationError, model: type[BaseModel], where: str, source: str,
                        lines: Lines | None = None, base: tuple = ()) -> list[str]:
    """One line per validation error: `SOURCE:LINE: 'key': message` (the line when the YAML text is known)."""
    out = []
    for e in err.errors():
        # a model reference's setting is named as written: nested in the YAML, else by its flat key (`device`)
        at_loc = e["loc"] if lines and base + tuple(e["loc"]) in lines else flat_loc(e["loc"])
        loc = [str(p) for p in at_loc]
        key = ".".join(loc)
        if e["type"] == "extra_forbidden":
            valid = _owner_fields(model, loc)
            msg = f"unknown key '{where}{key}'" + (_suggest(loc[-1], valid) if valid else "")
        else:
            text = e["msg"].removeprefix("Value error, ")
            at = f"{where}{key}" if key else where.rstrip(".")  # a model-level check names its stage
            msg = f"'{at}': {text}" if at else text
        # a missing key is reported at its mapping; any other at its key, or not at all when --set gave it
        shortest = 0 if e["type"] == "missing" else len(base) + 1
        line = _line_of(lines, base + tuple(at_loc), shortest)
        out.append(f"{source}:{line}: {msg}" if line is not None else f"{source}: {msg}")
    return out


def _format_error(err: ValidationError, model: type[BaseModel], where: str, source: str,
                  lines: Lines | None = None, base: tuple = ()) -> ConfigError:
    """A ConfigError listing every problem of a validation error, one line each."""
    return ConfigError("\n".join(validation_problems(err, model, where, source, lines, base)))


def _stage_problems(raw: Any, index: int, source: str, lines: Lines | None) -> tuple[StageConfig | None, list[str]]:
    """(the validated stage, []) or (None, its problems)."""
    where = f"stages[{index}]."
    line = _line_of(lines, ("stages", index))
    at = f"{source}:{line}" if line is not None else source
    if not isinstance(raw, dict):
        return None, [f"{at}: 'stages[{index}]' must be a mapping with at least 'name' and 'type'"]
    types = registry()
    t = raw.get("type")
    if t is None:
        return None, [f"{at}: 'stages[{index}]' has no 'type'; one of: {', '.join(sorted(types))}"]
    if t not in types:
        at = f"{source}:{_line_of(lines, ('stages', index, 'type'))}" if lines else source
        return None, [f"{at}: unknown stage type '{t}' in stages[{index}]" + _suggest(str(t), list(types))]
    raw = {"name": t, **raw}
    cfg_model = types[t].config
    try:
        return cfg_model.model_validate(raw), []
    except ValidationError as e:
        return None, validation_problems(e, cfg_model, where, source, lines, ("stages", index))


def parse_stage(raw: Any, index: int, source: str, lines: Lines | None = None) -> StageConfig:
    """Validate one stage dict against the config model of its type."""
    stage, problems = _stage_problems(raw, index, source, lines)
    if problems:
        raise ConfigError("\n".join(problems))
    return stage  # type: ignore[return-value]


def parse_recipe(data: Any, source: str = "recipe", lines: Lines | None = None) -> Recipe:
    """Validate a recipe mapping (already loaded from YAML); every problem is reported at once, one per line."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe must be a YAML mapping")
    stages_raw = data.get("stages", [])
    problems: list[str] = []
    stages: list[StageConfig] = []
    if not isinstance(stages_raw, list):
        problems.append(f"{source}: 'stages' must be a list")
        stages_raw = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(stages_raw):
        stage, found = _stage_problems(raw, i, source, lines)
        problems += found
        if stage is None:
            continue
        if stage.name in seen:
            line = _line_of(lines, ("stages", i, "name")) or _line_of(lines, ("stages", i))
            at = f"{source}:{line}" if line is not None else source
            problems.append(f"{at}: two stages are named {stage.name!r} (stages[{seen[stage.name]}] and "
                            f"stages[{i}])")
        seen.setdefault(stage.name, i)
        stages.append(stage)
    top = {k: v for k, v in data.items() if k != "stages"}
    recipe = None
    try:
        recipe = Recipe.model_validate({**top, "stages": []})
    except ValidationError as e:
        problems += validation_problems(e, Recipe, "", source, lines)
    if problems:
        problems.sort(key=lambda p: int(m.group(1)) if (m := re.match(rf"{re.escape(source)}:(\d+):", p)) else 0)
        raise ConfigError("\n".join(problems))
    recipe.stages = stages  # type: ignore[union-attr]
    return recipe  # type: ignore[return-value]


def parse_value(text: str) -> Any:
    """A `--set` value: YAML scalars/lists/maps (so 0.1 is a float and [a, b] a list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def set_key(data: dict[str, Any], key: str, value: Any, *, where: str = "--set") -> None:
    """Set a dotted key (`pairing.margin`) in a nested mapping, creating mappings on the way; a stage of a recipe
    is addressed by its name (`dpo.beta` or `stages.dpo.beta`), an entry of a list by its index
    (`prefs.generators.1.temperature`); a top-level key may be written with dashes (`max-new-tokens`, as its flag)."""
    parts = key.strip().split(".")
    if parts[0] == "stages" and len(parts) > 1:
        parts = parts[1:]
    target: Any = data
    stage_names = {s.get("name", s.get("type")): s for s in data.get("stages", []) if isinstance(s, dict)}
    if len(parts) > 1 and parts[0] in stage_names and parts[0] not in data:
        target = stage_names[parts[0]]
        parts = parts[1:]
    for p in parts[:-1]:
        if isinstance(target, list):
            target = target[_list_index(target, p, key, where)]
            continue
        if not isinstance(target, dict):
            raise ConfigError(f"{where} {key}: {p!r} is not a mapping")
        target = target.setdefault(p, {})
    if isinstance(target, list):
        target[_list_index(target, parts[-1], key, where)] = value
        return
    if not isinstance(target, dict):
        raise ConfigError(f"{where} {key}: {parts[-2]!r} is not a mapping")
    target[parts[-1].replace("-", "_") if len(parts) == 1 and target is data else parts[-1]] = value


def _list_index(items: list[Any], part: str, key: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(f"{where} {key}: {part!r} is not an index of a list of {len(items)} entries")
    return int(part)


def apply_overrides(data: dict[str, Any], overrides: list[str], *, flag: str = "--set") -> dict[str, Any]:
    """Apply `a.b=c` overrides (YAML values): the one parser of KEY=VALUE options (recipes, stage configs,
    strategy options)."""
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"{flag} {ov!r}: expected key=value")
        key, value = ov.split("=", 1)
        set_key(data, key, parse_value(value), where=flag)
    return data


def validate_config(model: type[BaseModel], raw: Any, source: str, *, flags: dict[str, str] | None = None) -> Any:
    """`model` validated from `raw`; an error names the key (with a suggestion for typos), or the command-line
    flag (field -> flag in `flags`, e.g. max_new_tokens -> --max-new-tokens) that gave it."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = flat_loc(first["loc"])
        key = str(loc[0]) if loc else ""
        if flags and key in flags and len(loc) == 1 and first["type"] != "extra_forbidden":
            raise ConfigError(f"{flags[key]}: {first['msg']}") from None
        raise _format_error(e, model, "", source) from None


def config_from(model: type[BaseModel], *, fields: dict[str, Any], config_file: str | Path | None = None,
                sets: list[str] | None = None, fixed: dict[str, Any] | None = None, base: dict[str, Any] | None = None,
                flags: dict[str, str] | None = None) -> Any:
    """The one way a command builds its config: `base` keys, a YAML mapping (--config), the command's flags
    (`fields`, None = not given; dotted keys reach nested settings), --set KEY=VALUE, then `fixed` keys."""
    raw: Any = read_yaml(config_file, "config file") if config_file is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_file}: expected a mapping of options")
    raw = {**(base or {}), **raw}
    for key, value in fields.items():
        if value is not None:
            set_key(raw, key, value, where="option")
    raw = apply_overrides(raw, sets or [])
    raw.update(fixed or {})
    flags = flags if flags is not None else {k: f"--{k.replace('_', '-')}" for k in fields if "." not in k}
    return validate_config(model, raw, str(config_file or "command line"), flags=flags)


def read_yaml(path: str | Path, what: str = "recipe") -> Any:
    """Parse a YAML file; a missing file or a syntax error is a ConfigError naming the file and line."""
    return read_yaml_lines(path, what)[0]


def read_yaml_lines(path: str | Path, what: str = "recipe") -> tuple[Any, Lines]:
    """(parsed YAML, line of every key path) of a file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}" if not path.exists() else f"{what} {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    try:
        return yaml.safe_load(text) or {}, yaml_lines(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: invalid YAML: {getattr(e, 'problem', e)}") from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe file."""
    data, lines = read_yaml_lines(path)
    if overrides:
        data = apply_overrides(data, overrides)
    return parse_recipe(data, str(path), lines)


def bundled_recipe(name: str) -> Path:
    """Path of a recipe shipped with the package (recipes/ in a checkout, else package data)."""
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "recipes" / f"{name}.yaml", here.parent / "recipes" / f"{name}.yaml"):
        if cand.exists():
            return cand
    raise ConfigError(f"no bundled recipe named {name!r}")
