"""Hugging Face datasets: `hub:org/name[:split]` by id (datasets.load_dataset), or `hub:/local/dir[:split]` for a
directory written by `save_to_disk` (datasets.load_from_disk) or holding data files.

Rows become records like a plain file does: our own record schema, a known benchmark layout (MedQA, MedMCQA with
HF's 0-based `cop`, TRL preference/SFT columns, ...), or a `fields` mapping.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meditune.data.common import Src
from meditune.data.export import DICT_FIELDS
from meditune.data.generic import auto, sniff
from meditune.data.registry import loader, loaders
from meditune.errors import InputError
from meditune.io import write_jsonl
from meditune.records import Record

OPTIONS = {
    "fields": "mapping record field -> column (as for plain files)",
    "kind": "record type to build (default: detected)",
    "answer_base": "0 or 1: base of integer answers (default 0)",
    "config": "dataset configuration (subset) name",
    "revision": "git revision of the hub dataset",
    "cop_base": "MedMCQA-layout rows: base of `cop` (default 0, as in HF copies)",
}


def open_dataset(target: str, config: str | None = None, revision: str | None = None):
    """A datasets.Dataset for `name[:split]`: a save_to_disk directory, a local data directory, or a hub id."""
    import datasets

    name, _, split = target.partition(":")
    path = Path(name).expanduser()
    where = f"hub:{target}"
    try:
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            ds: Any = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(str(path) if path.is_dir() else name, config,
                                       split=split or None, revision=revision)
    except Exception as e:  # datasets raises many types (offline, missing, bad config)
        raise InputError(f"cannot load dataset: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                         file=where) from None
    if isinstance(ds, (datasets.DatasetDict, dict)):
        splits = list(ds)
        if split:
            if split not in ds:
                raise InputError(f"no split {split!r}; splits: {splits}", file=where, field="split")
            ds = ds[split]
        elif len(splits) == 1:
            ds = ds[splits[0]]
        else:
            raise InputError(f"several splits {splits}: choose one with hub:{name}:SPLIT", file=where,
                             field="split")
    if isinstance(ds, datasets.IterableDataset):
        ds = list(ds)
    return ds


def _decode_dicts(row: dict[str, Any]) -> dict[str, Any]:
    # datasets written by meditune (export.to_hf_dataset) hold meta/provenance as JSON strings
    for key in DICT_FIELDS:
        value = row.get(key)
        if isinstance(value, str) and value.startswith("{"):
            try:
                row[key] = json.loads(value)
            except json.JSONDecodeError:
                pass
    return row


@loader("hub", "auto", "Hugging Face dataset by id (hub:org/name[:split]) or a save_to_disk directory",
        options=OPTIONS, takes_path=False)
def hub(src: Src, fields: dict[str, Any] | None = None, kind: str | None = None, answer_base: int = 0,
        config: str | None = None, revision: str | None = None,
        cop_base: int = 0) -> Iterator[tuple[int | str, Record]]:
    target = src.rel
    ds = open_dataset(target, config, revision)
    display = f"hub:{target}"
    rel = target.rstrip("/").split("/")[-1].replace(":", "-")
    with tempfile.TemporaryDirectory(prefix="meditune-hub-") as tmp:
        # rows go through the same JSONL code path as files, so every layout and check applies unchanged
        path = Path(tmp) / f"{rel}.jsonl"
        write_jsonl(path, (_decode_dicts(dict(row)) for row in ds))
        local = Src(path, rel, display=display)
        name = None if fields or kind else sniff(local, "jsonl")
        if name == "medmcqa":
            records = list(loaders()["medmcqa"].fn(local, cop_base=cop_base))
        elif name == "_choices":
            records = list(auto(local, fields={"options": "choices"}, kind="mcq", format="jsonl"))
        elif name is not None:
            records = list(loaders()[name].fn(local))
        else:
            records = list(auto(local, fields=fields, kind=kind, format="jsonl", answer_base=answer_base))
    yield from records
