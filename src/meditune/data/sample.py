"""Bundled sample data (`sample:mcq`, `sample:longform`, ...): small original files written for meditune,
shipped in meditune/sample_data/ and read with importlib.resources. They are illustrative, not benchmarks."""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterator

from meditune.data.common import Src
from meditune.data.generic import auto
from meditune.data.registry import loader
from meditune.errors import InputError
from meditune.io import SAFE_NAME
from meditune.records import Record


def sample_names() -> list[str]:
    """Names of the bundled sample files (without .jsonl)."""
    root = importlib.resources.files("meditune") / "sample_data"
    if not root.is_dir():
        return []
    return sorted(p.name.removesuffix(".jsonl") for p in root.iterdir() if p.name.endswith(".jsonl"))


@loader("sample", "auto", "bundled sample data by name (sample:mcq, sample:longform, sample:safety, ...)",
        takes_path=False)
def sample(src: Src) -> Iterator[tuple[int | str, Record]]:
    name = src.rel.removesuffix(".jsonl")
    resource = importlib.resources.files("meditune") / "sample_data" / f"{name}.jsonl"
    if not SAFE_NAME.fullmatch(name) or not resource.is_file():  # a name, never a path out of sample_data
        raise InputError(f"no bundled sample {name!r}; available: {', '.join(sample_names()) or '(none)'}",
                         file=f"sample:{name}")
    with importlib.resources.as_file(resource) as path:
        yield from auto(Src(path, name, display=f"sample:{name}"), format="jsonl")
