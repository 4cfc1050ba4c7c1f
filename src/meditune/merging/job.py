"""One output tensor's inputs, read lazily a chunk of rows at a time."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class TensorJob:
    """One output tensor's inputs: `read(i, start, stop)` returns rows of input i in the compute dtype."""

    name: str
    shape: tuple[int, ...]
    chunks: list[tuple[int, int]]
    read: Callable[[int, int, int], torch.Tensor]
    n_inputs: int
    base: int | None  # index of the base model among the inputs
    seed: int = 0
    input_ids: list[int] = field(default_factory=list)  # stable per-model ids (position in the config)

    def generator(self, i: int) -> torch.Generator:
        """A generator seeded by (seed, tensor name, model): masks do not depend on merge order or resume."""
        mid = self.input_ids[i] if self.input_ids else i
        digest = hashlib.sha256(f"{self.seed}|{self.name}|{mid}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))

    def delta(self, i: int, start: int, stop: int) -> torch.Tensor:
        """Rows of input i minus the base's: its task vector."""
        return self.read(i, start, stop) - self.read(self.base, start, stop)

    def others(self) -> list[int]:
        """The inputs other than the base, in config order."""
        return [i for i in range(self.n_inputs) if i != self.base]
