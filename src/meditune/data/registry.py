"""The registry of loaders by name, the source-spec parser and `load_source`, used by every part of meditune.

A source spec is one of
  name:path           a registered loader on a file or a directory (e.g. medqa_us:US/dev.jsonl)
  sample:name         a bundled sample file (sample:mcq)
  hub:org/name[:split] a Hugging Face dataset by id, or a local `save_to_disk` directory
  path                our own JSONL records (type detected), a known benchmark file (format sniffed), or a
                      generic JSONL/CSV/Parquet file with a `fields` mapping
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from meditune.data.common import Src
from meditune.errors import ConfigError, InputError
from meditune.records import FileChecks, Record

log = logging.getLogger(__name__)

# Options every loader accepts (applied by load_source, not by the loader).
COMMON_OPTIONS = {
    "language": "override the language of every record (e.g. en, zh, ko)",
    "source": "value of the records' `source` field (default: the loader name)",
}

LOADER_MODULES = [
    "meditune.data.mcq_loaders", "meditune.data.medqa", "meditune.data.kormedmcqa", "meditune.data.headqa",
    "meditune.data.longform", "meditune.data.liveqa", "meditune.data.safety", "meditune.data.preference",
    "meditune.data.dialogue", "meditune.data.ner", "meditune.data.generic", "meditune.data.hub",
    "meditune.data.sample", "meditune.data.misc",
]


def require_items(records: list[Record], spec: Any, n_files: int) -> None:
    """An InputError when a source gave no records (an empty file, or a filter that kept nothing)."""
    if not records:
        what = ("the file is empty or every row was skipped" if n_files <= 1
                else f"none of its {n_files} files has one")
        raise InputError(f"no items ({what})", file=spec)


@dataclass
class Loader:
    name: str
    kind: str  # record kind name it produces ("mcq", "longform", ...; "auto" when it depends on the data)
    fn: Callable[..., Iterable[tuple[int | str, Record]]]  # fn(src, **options) -> (line or key, record)
    description: str
    patterns: tuple[str, ...] = ("*.jsonl",)  # files read when the spec points at a directory
    options: dict[str, str] = field(default_factory=dict)  # option name -> help
    takes_path: bool = True  # False for loaders whose target is not a file (hub, sample)


LOADERS: dict[str, Loader] = {}
NOT_DATA = re.compile(r"(?i)^(source|readme|license|notice|changelog)([._-].*)?$")  # skipped in directories
_loaded = False


def loader(name: str, kind: str, description: str, *, patterns: tuple[str, ...] = ("*.jsonl",),
           options: dict[str, str] | None = None, takes_path: bool = True):
    """Decorator registering `fn(src, **options)`, which yields (line or key, record), as loader `name`."""

    def deco(fn):
        LOADERS[name] = Loader(name, kind, fn, description, patterns, options or {}, takes_path)
        return fn

    return deco


def loaders() -> dict[str, Loader]:
    """All registered loaders (imports the loader modules once)."""
    global _loaded
    if not _loaded:
        for mod in LOADER_MODULES:
            importlib.import_module(mod)
        _loaded = True
    return LOADERS


def parse_spec(spec: str | os.PathLike) -> tuple[str, str]:
    """(loader name, target) of a source spec; "auto" when it is a plain path."""
    if isinstance(spec, os.PathLike):
        return "auto", os.fspath(spec)
    spec = str(spec).strip()
    if not spec:
        raise ConfigError("empty source spec")
    head, sep, rest = spec.partition(":")
    if sep and head in loaders():
        if not rest:
            raise ConfigError(f"source {spec!r}: nothing after '{head}:'")
        return head, rest
    if sep and head and not Path(spec).exists() and "/" not in head and len(head) > 1:
        import difflib

        close = difflib.get_close_matches(head, list(loaders()), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; see `meditune data list`"
        raise ConfigError(f"source {spec!r}: unknown loader {head!r}{hint}")
    return "auto", spec


def files_of(ld: Loader, target: str) -> list[Src]:
    """The files a loader reads for a target: the file itself, or the matching files under a directory."""
    path = Path(target).expanduser()
    if path.is_dir():
        found = sorted({p for pat in ld.patterns for p in path.rglob(pat)
                        if p.is_file() and not p.name.startswith(".") and not NOT_DATA.match(p.name)})
        if not found:
            raise InputError(f"no files matching {', '.join(ld.patterns)} for loader {ld.name!r}", file=path)
        return [Src(p, str(p.relative_to(path).with_suffix("")).replace(os.sep, "/")) for p in found]
    if not path.exists():
        raise InputError("file not found", file=path)
    return [Src(path, path.stem)]


def check_options(ld: Loader, options: dict[str, Any]) -> dict[str, Any]:
    """Options checked against the loader's signature: unknown names and wrong types are configuration errors.

    Values are coerced as pydantic does ("4" -> 4, "false" -> False), so CLI strings and YAML values both work."""
    valid = set(ld.options) | set(COMMON_OPTIONS)
    unknown = sorted(set(options) - valid)
    if unknown:
        hint = "; a format's own options need NAME:PATH (e.g. medqa_us:PATH)" if ld.name == "auto" else ""
        raise ConfigError(f"loader {ld.name!r}: unknown option(s) {unknown}; valid: {sorted(valid)}{hint}")
    hints = typing.get_type_hints(ld.fn)
    out = {}
    for key, value in options.items():
        if key in hints:
            try:
                value = TypeAdapter(hints[key]).validate_python(value)
            except ValidationError as e:
                msg = e.errors()[0]["msg"]
                raise ConfigError(f"loader {ld.name!r}: option {key}={value!r}: {msg}") from None
        out[key] = value
    return out


def load_source(spec: str | os.PathLike, **options: Any) -> list[Record]:
    """Load every record of a source spec (see the module docstring); ids are checked to be unique."""
    name, target = parse_spec(spec)
    ld = loaders()[name]
    options = check_options(ld, {k: v for k, v in options.items() if v is not None})
    language = options.pop("language", None)
    source = options.pop("source", None)
    records: list[Record] = []
    seen: dict[str, str] = {}
    targets = files_of(ld, target) if ld.takes_path else [Src(Path(target), target, display=f"{name}:{target}")]
    for src in targets:
        where = src.display or src.path
        hint = "; drop_identical=true skips such pairs" if "drop_identical" in ld.options else ""
        checks = FileChecks(where, hint)
        for line, rec in ld.fn(src, **options):
            rid = rec.id  # type: ignore[attr-defined]
            if rid in seen:
                raise InputError(f"duplicate id {rid!r} (first at {seen[rid]})", file=where, line=line, field="id")
            seen[rid] = f"{where}:{line}" if isinstance(line, int) else f"{where} {line}"
            checks.check(rec, line)
            records.append(rec)
        checks.finish()
    require_items(records, spec, len(targets))
    default_source = name if name not in ("auto", "sample", "hub") else None
    for rec in records:
        fields = type(rec).model_fields
        if "source" in fields and (source is not None or rec.source is None):  # type: ignore[attr-defined]
            rec.source = str(source) if source is not None else default_source  # type: ignore[attr-defined]
        if language and "language" in fields:
            rec.language = str(language)  # type: ignore[attr-defined]
    log.debug("loaded %d records from %s", len(records), spec)
    return records


def spec_path(spec: str) -> Path | None:
    """The local file or directory a source spec reads (None for samples, hub ids and non-specs); lets the
    pipeline fingerprint `loader:path` inputs."""
    head, sep, rest = str(spec).partition(":")
    if sep and head in loaders() and head not in ("sample",):
        target = rest.partition(":")[0] if head == "hub" else rest
        p = Path(target).expanduser()
        return p if p.exists() else None
    p = Path(str(spec)).expanduser()
    return p if p.exists() else None
