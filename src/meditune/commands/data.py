"""`meditune data list | inspect | convert | validate | overlap`."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from meditune.errors import ConfigError

console = Console()
data_app = typer.Typer(no_args_is_help=True, help="Load, inspect, convert and check datasets "
                                                  "(source specs: NAME:PATH, sample:NAME, hub:ORG/NAME[:SPLIT], PATH).")

OPTION_HELP = "loader option KEY=VALUE (repeatable; values parsed as YAML), e.g. n_options=4"
FIELD_HELP = "field mapping RECORD_FIELD=COLUMN for generic files (repeatable); options=A,B,C,D for columns"


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def loader_options(options: list[str] | None, fields: list[str] | None, kind: str | None = None) -> dict[str, Any]:
    """Loader keyword options from repeated --option / --field flags."""
    from meditune.recipe import parse_value

    out: dict[str, Any] = {}
    for item in options or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE")
        out[key.strip()] = parse_value(value)
    if fields:
        mapping: dict[str, Any] = {}
        for item in fields:
            key, sep, value = item.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise ConfigError(f"--field {item!r}: expected RECORD_FIELD=COLUMN")
            mapping[key.strip()] = [c.strip() for c in value.split(",")] if "," in value else value.strip()
        out["fields"] = mapping
    if kind:
        out["kind"] = kind
    return out


@data_app.command("list")
def list_() -> None:
    """Registered loaders (with their options) and the bundled sample files."""
    from meditune.data.registry import loaders
    from meditune.data.sample import sample_names

    table = Table(title="loaders (use as NAME:PATH; a directory reads every matching file)")
    for col in ("name", "records", "description", "options"):
        table.add_column(col, overflow="fold")
    for ld in sorted(loaders().values(), key=lambda ld: (ld.kind == "auto", ld.kind, ld.name)):
        table.add_row(ld.name, ld.kind, ld.description, ", ".join(ld.options))
    console.print(table)
    console.print("bundled samples: " + (", ".join(f"sample:{n}" for n in sample_names()) or "(none)"))


@data_app.command("inspect")
def inspect(source: str = typer.Argument(..., help="source spec"),
            option: list[str] = typer.Option(None, "--option", "-o", help=OPTION_HELP),
            field: list[str] = typer.Option(None, "--field", "-f", help=FIELD_HELP),
            kind: str = typer.Option(None, help="record type for generic files"),
            examples: int = typer.Option(3, help="examples to show"),
            as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Counts, languages, option-count histogram, answer distribution, lengths and examples of a source."""
    from meditune.data.registry import load_source
    from meditune.data.stats import describe

    records = load_source(source, **loader_options(option, field, kind))
    stats = describe(records, examples=examples)
    if as_json:
        typer.echo(json.dumps(stats, ensure_ascii=False, indent=2))
        return
    table = Table(title=escape(source), show_header=False)
    for key, value in stats.items():
        if key != "examples":
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            table.add_row(escape(key), escape(text))
    console.print(table)
    for ex in stats["examples"]:
        console.print_json(json.dumps(ex, ensure_ascii=False))


@data_app.command("convert")
def convert(source: str = typer.Argument(..., help="source spec"),
            to: str = typer.Option(..., "--to", help="output file (.jsonl) or directory (--format hf)"),
            fmt: str = typer.Option("records", "--format", help="records | trl | hf"),
            option: list[str] = typer.Option(None, "--option", "-o", help=OPTION_HELP),
            field: list[str] = typer.Option(None, "--field", "-f", help=FIELD_HELP),
            kind: str = typer.Option(None, help="record type for generic files"),
            limit: int = typer.Option(None, help="keep the first N items")) -> None:
    """Load a source and write it as our JSONL records, TRL JSONL, or a HF datasets directory (atomically)."""
    from meditune.data.export import save_hf, write_trl
    from meditune.data.registry import load_source
    from meditune.io import check_output_dir, check_output_file
    from meditune.records import write_records

    if fmt not in ("records", "trl", "hf"):
        raise ConfigError(f"--format {fmt!r}: one of records, trl, hf")
    (check_output_dir if fmt == "hf" else check_output_file)(to, "--to")
    records = load_source(source, **loader_options(option, field, kind))
    if limit is not None:
        records = records[:limit]
    if fmt == "records":
        n = write_records(to, records)
    elif fmt == "trl":
        n = write_trl(to, records)
    else:
        save_hf(records, to)
        n = len(records)
    console.print(f"wrote {n} items to {to} ({fmt})", markup=False, highlight=False, soft_wrap=True)


@data_app.command("validate")
def validate(source: str = typer.Argument(..., help="source spec (NAME:PATH, sample:NAME, hub:..., PATH)"),
             option: list[str] = typer.Option(None, "--option", "-o", help=OPTION_HELP),
             field: list[str] = typer.Option(None, "--field", "-f", help=FIELD_HELP),
             kind: str = typer.Option(None, help="record type (generic files; for records files the expected "
                                                 "type, default: detected from line 1)"),
             max_errors: int = typer.Option(50, "--max-errors", min=1, help="stop after this many errors")) -> None:
    """Check every item of a source (schema, answer ranges, spans, duplicate ids, encoding); report all errors
    found (up to --max-errors) and exit 2 when there is any."""
    from meditune.data.checks import validate_source
    from meditune.errors import print_error
    from meditune.records import RECORD_TYPES, kind_name

    if kind is not None and kind not in RECORD_TYPES:
        raise ConfigError(f"--kind {kind!r}: one of {', '.join(RECORD_TYPES)}")
    # our own records files detect their type; --kind maps generic files (with --field) to a type
    found = validate_source(source, cap=max_errors, **loader_options(option, field, kind if field else None))
    for warning in found.warnings:
        print_error(warning, label="warning:")
    if found.errors:
        for e in found.errors:
            print_error(str(e))
        n = len(found.errors)
        total = f"at least {n} errors (stopped after the first {n})" if found.capped else \
            f"{n} error{'s' if n > 1 else ''}"
        print_error(f"{source}: {total}", label="invalid:")
        raise typer.Exit(2)
    records = found.records or []
    kinds = sorted({kind_name(type(r)) for r in records})
    if kind is not None and kinds != [kind]:
        raise ConfigError(f"{source}: expected {kind} records, found {', '.join(kinds)}")
    console.print(f"{source}: {len(records)} valid {', '.join(kinds)} records", markup=False, highlight=False,
                  soft_wrap=True)


@data_app.command("overlap")
def overlap(train: str = typer.Argument(..., help="training source spec"),
            eval_: str = typer.Argument(..., metavar="EVAL", help="evaluation source spec"),
            n: int = typer.Option(13, "--n", help="n-gram length"),
            min_shared: int = typer.Option(1, help="n-grams an item must share to be flagged"),
            question_only: bool = typer.Option(False, help="compare questions only (not options/answers)"),
            write_filtered: str = typer.Option(None, help="write the training items that do not overlap here"),
            show: int = typer.Option(10, help="overlapping items to list"),
            as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Contamination check: normalised n-gram overlap and exact-question matches between two sources."""
    from meditune.data.overlap import filter_train, find_overlap
    from meditune.data.registry import load_source
    from meditune.records import write_records

    train_recs, eval_recs = load_source(train), load_source(eval_)
    report = find_overlap(train_recs, eval_recs, n=n, min_shared=min_shared, use_full_text=not question_only)
    summary = report.summary()
    if write_filtered:
        kept = filter_train(train_recs, report)
        write_records(write_filtered, kept)
        summary["filtered_written"] = {"path": write_filtered, "items": len(kept)}
    if as_json:
        typer.echo(json.dumps({**summary, "flagged": report.flagged}, ensure_ascii=False, indent=2))
        return
    table = Table(title=f"overlap ({n}-grams)", show_header=False)
    table.add_row("train", escape(train))
    table.add_row("eval", escape(eval_))
    for key, value in summary.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    for f in report.flagged[:show]:
        console.print(f"  {f['train_id']} ~ {', '.join(f['eval_ids'][:3])} (shared {f['shared_ngrams']}"
                      f"{', exact question' if f['exact_question'] else ''})", highlight=False, markup=False)
