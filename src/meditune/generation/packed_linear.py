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

Memory: packed copies are kept per row count (least recently used dropped first) up to `max_bytes` in all, about one
copy of the model's Linear weights each; models whose Linear weights exceed `max_bytes` are not packed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB of float32 Linear weights: models up to ~500M parameters


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

    def __init__(self, model: Any, max_bytes: int = DEFAULT_MAX_BYTES):
        import torch

        self.layers = [m for m in model.modules() if type(m) is torch.nn.Linear
                       and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"]
        self.layer_bytes = sum(m.weight.numel() * 4 for m in self.layers)
        self.max_bytes = max_bytes
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
            while self._cache and (len(self._cache) + 1) * self.layer_bytes > self.max_bytes:
                self._cache.pop(next(iter(self._cache)))  # evict the least recently used packing
            packing = self._pack(rows)
        self._cache[key] = packing
        self.current, self.rows = packing, rows

    def _pack(self, rows: int) -> list[Any]:
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
