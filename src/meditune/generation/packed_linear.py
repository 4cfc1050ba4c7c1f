"""MKL weights packed once per batch size, for the decoding steps of a float32 model on CPU.

Why: a decoding step of a batch multiplies a few rows (one per sequence) by every weight matrix. On CPU a
float32 `nn.Linear` goes to MKL sgemm, which for 16 rows first copies the whole weight into its internal panel
layout on every call; at 16 rows that copy costs about half as much again as the product itself (most of all
for the 49152 x 576 LM head), while one row goes to a copy-free matrix-vector kernel. MKL can pack a weight once
for a given row count (cblas_sgemm_pack, exposed as `torch.ops.mkl._mkl_reorder_linear_weight` / `_mkl_linear`,
the ops torch.compile uses for frozen CPU linears) and then skips the per-call copy.

Exactness: for some shapes and row counts MKL's plain call uses a different kernel than its packed one, and the
results then differ in the last bits (SmolLM2-135M: equal at 16 rows, not at 4 or 8). A layer is therefore
packed only when its packed product reproduces the plain one bit for bit on a random probe of that many rows
(torch.equal); the others keep `F.linear`, so outputs are exactly those of the unpacked model. An input with
another row count (the prefill) falls back to the plain product inside `_mkl_linear`.

Memory: a packing holds MKL's panel copy of every exact layer, at least as large as those layers' float32 weights
(SmolLM2-135M has 513 MiB of Linear weights, the tied lm_head included). At most `max_packings` packings that hold
memory are kept per model (least recently used dropped first; docs/cost.md says how to measure the trade-off); a
row count where no layer packs exactly is remembered for free. Models whose Linear weights exceed `max_bytes` are
not packed. Backends on the same model share one PackedLinears (`packed_linears_of`), hence one set of packings.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB of float32 Linear weights: models up to ~500M parameters
DEFAULT_MAX_PACKINGS = 1  # packings holding memory kept per model (each ~1-2x the Linear weights)


def mkl_packing_available() -> bool:
    """Whether this torch build has MKL's packed sgemm ops (x86 builds with MKL)."""
    import torch

    try:
        return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")
    except (AttributeError, RuntimeError):
        return False


def _version(tensor: Any) -> int:
    """The in-place version counter of a tensor; -1 for inference-mode tensors, which have none (and which
    cannot be updated in place outside inference mode anyway)."""
    try:
        return tensor._version
    except RuntimeError:
        return -1


class PackedLinears:
    """The float32 CPU `nn.Linear` layers of a model, packed for the row count of the current decoding step.

    `installed()` routes the layers' forward through the packed product for the duration of a batch and restores
    the plain modules afterwards, so the model is untouched outside our generation calls.
    """

    def __init__(self, model: Any, max_bytes: int = DEFAULT_MAX_BYTES, max_packings: int = DEFAULT_MAX_PACKINGS):
        import torch

        self.layers = [m for m in model.modules() if type(m) is torch.nn.Linear
                       and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"]
        self.layer_bytes = sum(m.weight.numel() * 4 for m in self.layers)
        self.max_bytes = max_bytes
        self.max_packings = max_packings
        self.enabled = bool(self.layers) and self.layer_bytes <= max_bytes and mkl_packing_available()
        self.rows: int | None = None
        self.current: list[Any] = []  # per layer: packed weight, or None where packing is not exact
        self._cache: dict[tuple[Any, ...], list[Any]] = {}  # (rows, threads, weights) -> packing, most recent last

    def pack(self, rows: int) -> None:
        """Use packed weights for inputs of `rows` rows from now on (packed on first use, then reused)."""
        import torch

        if not self.enabled:
            return
        # MKL may pick its kernels by thread count; the weights' identity and version counters make a packing
        # stale when a weight is replaced or updated in place (e.g. an optimizer step between generate calls)
        weights = tuple((m.weight.data_ptr(), _version(m.weight)) for m in self.layers)
        if any(k[2] != weights for k in self._cache):
            self._cache.clear()  # packings of older weights are never valid again
        key = (rows, torch.get_num_threads(), weights)
        packing = self._cache.pop(key, None)
        if packing is None:
            packing = self._pack(rows, make_room=self._make_room)
        self._cache[key] = packing
        self.current, self.rows = packing, rows

    def _make_room(self) -> None:
        """Drop the least recently used packings that hold memory, leaving room for one more (called when a new
        packing keeps its first layer, so a row count where nothing packs exactly evicts nothing)."""
        held = [k for k, p in self._cache.items() if any(x is not None for x in p)]
        for k in held[:max(0, len(held) - self.max_packings + 1)]:
            del self._cache[k]
        self.current = []  # the evicted packing may be the current one: it is replaced when pack() returns

    def _pack(self, rows: int, make_room: Any = None) -> list[Any]:
        import torch
        import torch.nn.functional as F

        gen = torch.Generator().manual_seed(rows)
        packing = []
        with torch.inference_mode():
            for m in self.layers:
                weight = m.weight.detach()
                packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)
                probe = torch.randn(rows, weight.shape[1], generator=gen)
                exact = torch.equal(torch.ops.mkl._mkl_linear(probe, packed, weight, m.bias, rows),
                                    F.linear(probe, weight, m.bias))
                if exact and make_room is not None and not any(x is not None for x in packing):
                    make_room()
                packing.append(packed if exact else None)
        return packing

    @contextmanager
    def installed(self) -> Iterator[PackedLinears]:
        if not self.enabled:
            yield self
            return
        for i, layer in enumerate(self.layers):
            layer.forward = self._forward_of(i)
        try:
            yield self
        finally:
            for layer in self.layers:
                layer.__dict__.pop("forward", None)
            self.current, self.rows = [], None

    def packings_held(self) -> int:
        """How many packings holding memory are kept (at most max_packings)."""
        return sum(any(x is not None for x in p) for p in self._cache.values())

    def _forward_of(self, i: int) -> Any:
        import torch
        import torch.nn.functional as F

        layer = self.layers[i]
        mkl_linear = torch.ops.mkl._mkl_linear

        def forward(x: Any) -> Any:
            packed = self.current[i] if self.current else None
            if packed is None or x.dtype != torch.float32:
                return F.linear(x, layer.weight, layer.bias)
            return mkl_linear(x, packed, layer.weight, layer.bias, self.rows)

        return forward


_BY_MODEL: weakref.WeakKeyDictionary[Any, PackedLinears] = weakref.WeakKeyDictionary()


def packed_linears_of(model: Any) -> PackedLinears:
    """The one PackedLinears of a model: every backend on shared weights uses (and bounds) the same packings."""
    packed = _BY_MODEL.get(model)
    if packed is None:
        packed = _BY_MODEL[model] = PackedLinears(model)
    return packed
