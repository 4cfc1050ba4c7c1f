"""Command-line options built from a config class, as TRL's TrlParser builds its CLI from config dataclasses.

Every scalar field (str, int, float, bool, a Literal, or an optional of those; lists of strings repeat) becomes
`--field-name` with the field's description as help; a model reference (meditune.model_ref.ModelRef) gives its flat
keys: `--model`, `--device`, `--dtype`, `--trust-remote-code`; every command also takes `--config FILE` (a YAML mapping of
the same keys) and `--set KEY=VALUE` for anything else, read by meditune.recipe.config_from (the one parser).
A flag that is not given leaves the config's default (or the --config file's value) alone.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from meditune.model_ref import FLAT_KEYS, REQUIRED, ModelRef


def cli_type(annotation: Any) -> tuple[Any, str]:
    """(the command-line type of a field annotation, the choices to list in its help), or (None, "") when only
    --set can give the field (maps, mixed types)."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        if len(inner) != 1:
            return None, ""
        annotation = inner[0]
    if get_origin(annotation) is Literal:
        return str, " | ".join(str(a) for a in get_args(annotation))
    if annotation in (str, int, float, bool):
        return annotation, ""
    if get_origin(annotation) is list and get_args(annotation) == (str,):
        return list[str], ""
    return None, ""


def option_fields(cls: type[BaseModel]) -> list[tuple[str, FieldInfo, Any]]:
    """(option name, field, default) of every field of `cls` that can become an option: its own fields, and for
    its model reference the flat keys it takes (model, device, dtype, trust_remote_code), with the reference's
    descriptions and the config's defaults (REQUIRED: none)."""
    out: list[tuple[str, FieldInfo, Any]] = []
    for name, field in cls.model_fields.items():
        if field.annotation is ModelRef:
            for key, default in getattr(cls, "model_defaults", {}).items():
                out.append((key, ModelRef.model_fields[FLAT_KEYS[key]], default))
        else:
            out.append((name, field, REQUIRED if field.is_required() else field.get_default(call_default_factory=True)))
    return out


def config_command(cls: type[BaseModel], run: Callable[[Any, dict[str, Any]], None], *, doc: str,
                   argument: str | None = None, decls: dict[str, tuple[str, ...]] | None = None,
                   defaults: dict[str, Any] | None = None, convert: dict[str, tuple[Any, Callable, str]] | None = None,
                   extra: list[inspect.Parameter] | None = None, skip: tuple[str, ...] = (),
                   fixed: dict[str, Any] | None = None) -> Callable[..., None]:
    """A typer command whose options are the fields of `cls`.

    argument  the field given as the positional argument (e.g. data)
    decls     field -> option names instead of --field-name (e.g. ("--model", "-m"))
    defaults  field -> value used when the flag is not given (else the config's own default)
    convert   field -> (command-line type, text -> value, help) for fields given in another shape
    extra     further command parameters (not config fields, e.g. --out); run(config, {name: value}) gets them
    fixed     keys the command sets itself (a stage config's name and type); they get no option
    """
    decls, defaults, convert = decls or {}, defaults or {}, convert or {}
    params: list[inspect.Parameter] = []
    flags: dict[str, str] = {}
    for name, field, field_default in option_fields(cls):
        if name in skip or name in (fixed or {}):
            continue
        typ, choices = (convert[name][0], "") if name in convert else cli_type(field.annotation)
        if typ is None:
            continue
        help_text = convert[name][2] if name in convert else (field.description or "")
        help_text = f"{help_text} ({choices})" if choices else help_text
        default = defaults.get(name)
        if name == argument:
            required = field_default is REQUIRED and name not in defaults
            value = typer.Argument(... if required else default, help=help_text, show_default=False,
                                   metavar=name.upper())
        else:
            opt = f"--{name.replace('_', '-')}"
            names_ = decls.get(name) or ((f"{opt}/--no-{name.replace('_', '-')}",) if typ is bool else (opt,))
            shown = default if name in defaults else (None if field_default is REQUIRED else field_default)
            if shown not in (None, [], "") and "default:" not in help_text:
                help_text += f" (default: {shown})"
            value = typer.Option(default, *names_, help=help_text, show_default=False)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=value, annotation=typ))
        flags[name] = name.upper() if name == argument else names_[0].split("/")[0]
    params += extra or []
    params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Path, default=typer.Option(
        None, "--config", "-c", help="YAML mapping of these options (flags and --set win over it).")))
    params.append(inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, annotation=list[str],
                                    default=typer.Option([], "--set", help="Any option as KEY=VALUE (YAML value; "
                                                         "dotted keys reach nested settings), repeatable.")))
    extra_names = [p.name for p in extra or []]

    def command(**kwargs: Any) -> None:
        from meditune.recipe import config_from

        config_file, sets = kwargs.pop("config"), kwargs.pop("set_")
        extras = {n: kwargs.pop(n) for n in extra_names}
        fields = {n: convert[n][1](v) if n in convert and v not in (None, []) else v for n, v in kwargs.items()}
        fields = {n: (None if v == [] else v) for n, v in fields.items()}  # a repeatable flag not given
        run(config_from(cls, fields=fields, config_file=config_file, sets=sets, fixed=fixed, flags=flags), extras)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = doc
    return command


def out_option(default: str) -> inspect.Parameter:
    """The `--out/-o` directory parameter of an evaluation command."""
    return inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Path, default=typer.Option(
        Path(default), "--out", "-o", help="Output directory (a killed run resumes here)."))
