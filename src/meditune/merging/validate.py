"""Checks before merging: same architecture, same tensors, same shapes; vocabulary mismatches named."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from meditune.errors import ConfigError, InputError
from meditune.io import read_json
from meditune.merging.io import TensorInfo

# A model whose config ties the output head to the embeddings stores only the embeddings.
TIED_ALIASES = {"lm_head.weight": "model.embed_tokens.weight"}


class Source(Protocol):
    config: dict[str, Any]

    def names(self) -> list[str]: ...
    def info(self, name: str) -> TensorInfo: ...
    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor: ...


@dataclass
class Input:
    """A merge input: its label (the spec the user wrote), where it lives, and its tensors."""

    label: str
    source: Any  # Source
    config_index: int  # position in the config (stable seed for DARE masks); -1 for an unlisted base

    def lookup(self, name: str) -> str | None:
        """The stored tensor name that provides `name` (following tied-embedding aliases), or None."""
        if name in self.source.tensors:
            return name
        alias = TIED_ALIASES.get(name)
        if alias and alias in self.source.tensors and self.source.config.get("tie_word_embeddings", True):
            return alias
        return None


def check_architecture(inputs: list[Input]) -> None:
    """All inputs must share model_type and architectures (from their config.json)."""
    ref = inputs[0]
    for inp in inputs[1:]:
        for key in ("model_type", "architectures"):
            a, b = ref.source.config.get(key), inp.source.config.get(key)
            if a is not None and b is not None and a != b:
                raise ConfigError(f"architecture mismatch: config.json '{key}' is {a!r} in {ref.label} "
                                  f"but {b!r} in {inp.label}; only models of one architecture can be merged")


def vocab_size(inp: Input) -> int | None:
    v = inp.source.config.get("vocab_size")
    return int(v) if isinstance(v, int) else None


def is_vocab_mismatch(inputs: list[Input], name: str) -> bool:
    """Shapes differ only in dim 0, and each input's dim 0 is its config's vocab_size."""
    shapes = [inp.source.info(inp.lookup(name)).shape for inp in inputs]
    if any(len(s) != len(shapes[0]) or s[1:] != shapes[0][1:] or not s for s in shapes):
        return False
    return all(vocab_size(inp) == s[0] for inp, s in zip(inputs, shapes, strict=True))


def check_tensors(inputs: list[Input], resize_vocab: bool, target_vocab: int | None) -> tuple[list[str], set[str]]:
    """Output tensor names (reference order) and the names of vocabulary tensors needing a resize.

    Raises InputError naming the tensor for a missing tensor or a shape mismatch, and for a vocabulary
    size mismatch unless resize_vocab is set.
    """
    ref = inputs[0]
    names = list(ref.source.names())
    if "lm_head.weight" not in names and any("lm_head.weight" in i.source.tensors for i in inputs[1:]):
        names.append("lm_head.weight")  # some input has an untied head: the output needs one too
    seen = set(names)
    for inp in inputs[1:]:
        for n in inp.source.names():
            if n not in seen:
                raise InputError(f"tensor {n!r} is in {inp.label} but not in {ref.label}; the models' "
                                 "architectures differ", file=inp.label, line=n)
    resized: set[str] = set()
    for name in names:
        for inp in inputs:
            if inp.lookup(name) is None:
                raise InputError(f"tensor {name!r} is missing from {inp.label} (present in "
                                 f"{ref.label if ref.lookup(name) else 'another input'})", file=inp.label, line=name)
        shapes = {inp.label: inp.source.info(inp.lookup(name)).shape for inp in inputs}
        if len(set(shapes.values())) == 1:
            if target_vocab is not None and resize_vocab and is_vocab_mismatch(inputs, name) \
                    and next(iter(shapes.values()))[0] != target_vocab:
                resized.add(name)
            continue
        listing = ", ".join(f"{k}: {tuple(v)}" for k, v in shapes.items())
        if is_vocab_mismatch(inputs, name):
            if resize_vocab:
                resized.add(name)
                continue
            sizes = ", ".join(f"{i.label}: {vocab_size(i)}" for i in inputs)
            raise InputError(f"vocabulary size mismatch on tensor {name!r} ({sizes}); set resize_vocab: true "
                             "to pad/truncate to the tokenizer source's vocabulary (this assumes the tokenizers "
                             "agree on their shared ids)", line=name)
        raise InputError(f"shape mismatch on tensor {name!r}: {listing}", line=name)
    return names, resized


def _id_to_token(tok_dir: Path) -> dict[int, str] | None:
    """id -> token from a tokenizer.json (vocab and added tokens), or None when there is none."""
    path = tok_dir / "tokenizer.json"
    if not path.exists():
        return None
    data = read_json(path)
    vocab = (data.get("model") or {}).get("vocab")
    table = {int(i): t for t, i in vocab.items()} if isinstance(vocab, dict) else {}
    table.update({int(a["id"]): a["content"] for a in data.get("added_tokens") or []})
    return table


def check_shared_ids(tok_dirs: dict[str, Path], source: str) -> None:
    """Before resizing: every tokenizer must map the ids they share to the same tokens as the source's."""
    ref = _id_to_token(tok_dirs[source])
    if ref is None:
        return
    for label, d in tok_dirs.items():
        other = _id_to_token(d) if label != source else None
        if not other:
            continue
        for i in sorted(set(ref) & set(other)):
            if ref[i] != other[i]:
                raise InputError(f"resize_vocab: the tokenizers of {source} and {label} disagree at id {i} "
                                 f"({ref[i]!r} vs {other[i]!r}); padding/truncating rows is only right when "
                                 "they share their ids (tokens added at the end)", file=d / "tokenizer.json",
                                 line=f"id {i}")
