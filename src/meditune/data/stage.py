"""The `data` stage: load one or more sources, filter, sample, decontaminate and split into JSONL record files.

`split: test` keeps only the records whose `meta.split` is "test" (the bundled safety / benign samples carry a
fixed train/test split by id); a record without `meta.split` is an error, since keeping it could leak a training
item into an evaluation.

Outputs: `dataset` (main, JSONL records), `eval` (when a split is asked for) and `stats` (stats.json: counts
per step, the decontamination report and `describe` statistics of the dataset).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from meditune.data.overlap import filter_train, find_overlap
from meditune.data.registry import load_source, parse_spec
from meditune.data.stats import describe
from meditune.errors import ConfigError, InputError
from meditune.io import SAFE_NAME, write_json
from meditune.records import RECORD_TYPES, Record, kind_name, write_records
from meditune.stages import StageConfig, StageContext, apply_recipe_defaults, stage_type, upstream_count

log = logging.getLogger(__name__)


class DataStageConfig(StageConfig):
    """Sources, filters, sampling, decontamination and split of the data stage; seed unset = the recipe's."""

    recipe_defaults = ("seed",)
    source: str | list[str] = Field(description="source spec(s); several are concatenated")
    options: dict[str, Any] = Field(default_factory=dict, description="loader options for every source")
    kind: str | None = Field(None, description="required record type (mcq, chat, preference, ...)")
    split: str | None = Field(None, min_length=1, description="keep only records whose meta.split equals this "
                              "(e.g. train, test); every record must have meta.split")
    language: str | list[str] | None = Field(None, description="keep only these languages")
    sample: int | None = Field(None, ge=1, description="random sample of this many items (seeded)")
    limit: int | None = Field(None, ge=1, description="keep the first N items (after sampling/shuffling)")
    shuffle: bool = False
    seed: int | None = Field(None, description="default: the recipe's seed")
    eval_fraction: float | None = Field(None, gt=0, lt=1, description="hold out this fraction as `eval`")
    eval_size: int | None = Field(None, ge=1, description="hold out this many items as `eval`")
    decontaminate: str | list[str] | None = Field(None, description="drop items overlapping these sources")
    ngram: int = Field(13, ge=1, description="n of the n-gram overlap used by decontaminate")

    @model_validator(mode="after")
    def _check(self) -> DataStageConfig:
        if self.eval_fraction is not None and self.eval_size is not None:
            raise ValueError("set eval_fraction or eval_size, not both")
        if self.kind is not None and self.kind not in RECORD_TYPES:
            raise ValueError(f"kind must be one of {', '.join(RECORD_TYPES)}")
        return self


def _as_list(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def load_all(specs: list[str], options: dict[str, Any]) -> list[Record]:
    """Concatenate sources; a repeated id in a later source gets the suffix '#<source index>'."""
    out: list[Record] = []
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        for rec in load_source(spec, **options):
            if rec.id in seen:  # type: ignore[attr-defined]
                rec.id = f"{rec.id}#{i}"  # type: ignore[attr-defined]
            seen.add(rec.id)  # type: ignore[attr-defined]
            out.append(rec)
    kinds = sorted({kind_name(type(r)) for r in out})
    if len(kinds) > 1:
        raise ConfigError(f"sources {specs} give records of several types {kinds}; use one stage per type")
    return out


def keep_split(records: list[Record], split: str, specs: list[str]) -> list[Record]:
    """Records whose meta.split equals `split`; one without meta.split is an error (it might be a training item)."""
    for rec in records:
        meta = getattr(rec, "meta", None)
        if not isinstance(meta, dict) or meta.get("split") in (None, ""):
            item = getattr(rec, "id", "?")
            raise InputError(f"item {item!r} has no meta.split, so `split: {split}` cannot tell whether it belongs "
                             "there", file=", ".join(specs), field="meta.split")
    kept = [r for r in records if r.meta["split"] == split]  # type: ignore[attr-defined]
    if records and not kept:
        found = sorted({str(r.meta["split"]) for r in records})  # type: ignore[attr-defined]
        raise ConfigError(f"split: no item of {', '.join(specs)} has meta.split {split!r} (found: {', '.join(found)})")
    return kept


def select(records: list[Record], cfg: DataStageConfig, seed: int, counts: dict[str, int]) -> list[Record]:
    """Language filter, decontamination, sampling/shuffling and limit, recording counts after each step."""
    langs = _as_list(cfg.language)
    if langs:
        records = [r for r in records if getattr(r, "language", None) in langs]
        counts["after_language"] = len(records)
    if cfg.kind and records and kind_name(type(records[0])) != cfg.kind:
        raise ConfigError(f"stage {cfg.name!r}: expected {cfg.kind} records, got {kind_name(type(records[0]))}")
    rng = random.Random(seed)
    if cfg.sample is not None and cfg.sample < len(records):
        records = rng.sample(records, cfg.sample)
    elif cfg.shuffle:
        records = records[:]
        rng.shuffle(records)
    if cfg.limit is not None:
        records = records[: cfg.limit]
    counts["selected"] = len(records)
    return records


@stage_type("data", DataStageConfig, "load sources into a JSONL record file (filter, sample, decontaminate, "
            "split)", estimate=lambda cfg, recipe: estimate(cfg))
def run_data(cfg: DataStageConfig, ctx: StageContext) -> dict[str, str]:
    cfg = apply_recipe_defaults(cfg, ctx.recipe)
    seed = cfg.seed
    specs = _as_list(cfg.source)
    records = load_all(specs, cfg.options)
    counts: dict[str, int] = {"loaded": len(records)}
    if cfg.split is not None:
        records = keep_split(records, cfg.split, specs)
        counts["after_split"] = len(records)
    decontam: dict[str, Any] | None = None
    against = _as_list(cfg.decontaminate)
    if against:
        reference: list[Record] = [r for spec in against for r in load_source(spec)]
        report = find_overlap(records, reference, n=cfg.ngram)
        records = filter_train(records, report)
        counts["after_decontamination"] = len(records)
        decontam = {"against": against, **report.summary(), "dropped_ids": [f["train_id"] for f in report.flagged]}
        log.info("decontamination dropped %d of %d items", report.train_flagged, report.train_items)
    records = select(records, cfg, seed, counts)
    outputs: dict[str, str] = {}
    n_eval = (round(len(records) * cfg.eval_fraction) if cfg.eval_fraction
              else min(cfg.eval_size, len(records)) if cfg.eval_size else 0)
    train, held = records, []
    if n_eval:
        shuffled = records[:]
        random.Random(seed + 1).shuffle(shuffled)
        held_ids = {r.id for r in shuffled[:n_eval]}  # type: ignore[attr-defined]
        held = [r for r in records if r.id in held_ids]  # type: ignore[attr-defined]
        train = [r for r in records if r.id not in held_ids]  # type: ignore[attr-defined]
    if not train:
        raise ConfigError(f"stage {cfg.name!r}: no items left (counts: {counts})")
    dataset = ctx.path("dataset.jsonl")
    write_records(dataset, train)
    outputs["dataset"] = str(dataset)
    if n_eval:
        eval_path = ctx.path("eval.jsonl")
        write_records(eval_path, held)
        outputs["eval"] = str(eval_path)
    counts.update({"dataset": len(train), "eval": len(held)})
    stats = {"sources": specs, "seed": seed, "counts": counts, "decontamination": decontam,
             "describe": describe(train, examples=2)}
    write_json(ctx.path("stats.json"), stats)
    outputs["stats"] = str(ctx.path("stats.json"))
    return outputs


def _count_lines(lines: Iterable[str | bytes], split: str | None) -> int | None:
    """Non-empty JSONL lines, or with `split` those whose meta.split equals it (None when that is not known)."""
    lines = [line for line in lines if line.strip()]
    if split is None:
        return len(lines)
    try:
        splits = [(json.loads(line).get("meta") or {}).get("split") for line in lines]
    except (ValueError, AttributeError):
        return None
    return None if None in splits else splits.count(split)


def count_items(spec: str, split: str | None = None) -> int | None:
    """Item count of a source (of one meta.split) when it is cheap to know (JSONL files, bundled samples)."""
    name, target = parse_spec(spec)
    if name == "sample":
        import importlib.resources

        if not SAFE_NAME.fullmatch(target.removesuffix(".jsonl")):
            return None
        path = importlib.resources.files("meditune") / "sample_data" / f"{target.removesuffix('.jsonl')}.jsonl"
        if not path.is_file():
            return None
        return _count_lines(path.read_text(encoding="utf-8").splitlines(), split)
    p = Path(target)
    if p.is_file() and p.suffix in (".jsonl", ".ndjson") and name in ("auto", "medqa", "medqa_us",
                                                                       "medqa_mainland", "medqa_taiwan"):
        with open(p, "rb") as f:
            return _count_lines(f, split)
    return None


def estimate(cfg: DataStageConfig) -> dict[str, Any]:
    """Items the stage will write, when countable without parsing (or where they come from)."""
    src = upstream_count(cfg.source, cfg.limit or cfg.sample)
    if src is not None:
        return {"items": src}
    total = 0
    for spec in _as_list(cfg.source):
        try:
            n = count_items(spec, cfg.split)
        except ConfigError:
            n = None
        if n is None:
            return {"items": cfg.limit or cfg.sample or "unknown"}
        total += n
    for cap in (cfg.sample, cfg.limit):
        if cap is not None:
            total = min(total, cap)
    return {"items": total}
