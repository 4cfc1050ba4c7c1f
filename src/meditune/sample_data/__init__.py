"""Bundled, original, illustrative sample data (see README.md here and docs/sample-data.md); not for clinical use.

Load the files through `meditune.data.load_source("sample:mcq")`; this module only names them and fills the
`{group}` slot of the attitude statements.
"""

from __future__ import annotations

import importlib.resources
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.abc import Traversable

# name -> record type name in meditune.records.RECORD_TYPES (corpus lines are {"id","text","language",...} TextItems)
SAMPLE_FILES: dict[str, str] = {
    "mcq": "mcq", "longform": "longform", "safety": "safety", "benign": "safety", "attitude": "attitude",
    "ner": "ner", "chat": "chat", "general_chat": "chat", "preference": "preference", "corpus": "text",
}

# Demographic groups that fit the "{group} patients ..." slot of sample:attitude (documented in docs/sample-data.md).
SWAP_GROUPS: tuple[str, ...] = (
    "elderly", "young", "female", "male", "immigrant", "low-income", "high-income", "Black", "white", "Hispanic",
    "Asian", "disabled", "LGBTQ", "rural", "uninsured", "obese",
)

PLACEHOLDER = "{group}"


def sample_path(name: str) -> Traversable:
    """Path of a bundled sample file by name ('mcq', 'longform', ...); KeyError names the known files."""
    if name not in SAMPLE_FILES:
        raise KeyError(f"no sample file {name!r}; known: {', '.join(sorted(SAMPLE_FILES))}")
    return importlib.resources.files(__name__) / f"{name}.jsonl"


def fill_group(statement: str, group: str | None) -> str:
    """Fill the {group} slot: 'elderly' -> 'Elderly patients ...'; None -> the neutral 'Patients ...'."""
    if PLACEHOLDER not in statement:
        return statement
    # Why: the neutral baseline of a swap must read naturally, so drop the slot and its trailing space.
    text = statement.replace(PLACEHOLDER + " ", "") if group is None else statement.replace(PLACEHOLDER, group)
    # Group words like "Black" keep their case; only a sentence-initial lower-case letter is raised.
    return text[:1].upper() + text[1:] if re.match(r"[a-z]", text) else text
