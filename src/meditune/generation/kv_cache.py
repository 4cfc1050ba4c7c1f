"""A KV cache that is written in place instead of grown by concatenation.

transformers' DynamicCache appends each step with `torch.cat`, which copies the whole cache of every layer on
every decoding step: O(length) memory traffic per token, a few percent of a step at batch 16 and growing with
the answer length. Our batches know their final length up front (longest prompt + max_new_tokens), so each
full-attention layer gets buffers of that capacity once and a step writes only its new position. The attention
sees a view of the filled part with exactly the values DynamicCache would hold, so outputs are unchanged.
Layers of other kinds (sliding window, linear attention) keep transformers' own classes.
"""

from __future__ import annotations

from typing import Any


def preallocated_cache(config: Any, capacity: int) -> Any:
    """A DynamicCache for `config` whose full-attention layers hold up to `capacity` positions without copying."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    layer_class = _layer_class()
    cache = DynamicCache(config=config)
    if cache.layer_class_to_replicate is DynamicLayer:  # no per-layer types in the config: layers appear lazily
        cache.layer_class_to_replicate = lambda: layer_class(capacity)
    cache.layers = [layer_class(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def full_attention_only(config: Any) -> bool:
    """Whether every layer of the model's cache keeps its whole history as plain keys and values (our preallocated
    layers): what reusing a prefix's cache across rows needs (no sliding window, no recurrent state)."""
    try:
        cache = preallocated_cache(config, 1)
    except (ValueError, TypeError, KeyError, AttributeError):
        return False
    layer_class = _layer_class()
    return all(type(layer) is layer_class for layer in cache.layers) and (
        bool(cache.layers) or cache.layer_class_to_replicate is not None)


_LAYER_CLASS: Any = None


def _layer_class() -> Any:
    """Defined on first use so that importing this module does not import torch/transformers."""
    global _LAYER_CLASS
    if _LAYER_CLASS is not None:
        return _LAYER_CLASS
    import torch
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A DynamicLayer backed by buffers of fixed capacity; `keys`/`values` are views of the filled part."""

        def __init__(self, capacity: int):
            super().__init__()
            self.capacity = capacity
            self.length = 0

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            self.dtype, self.device = key_states.dtype, key_states.device
            batch, heads = key_states.shape[:2]
            self._keys = key_states.new_empty((batch, heads, self.capacity, key_states.shape[-1]))
            self._values = value_states.new_empty((batch, heads, self.capacity, value_states.shape[-1]))
            self.length = 0
            self.is_initialized = True

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            if end > self.capacity:  # never expected (capacity is the batch's final length); stay correct anyway
                self._grow(max(end, 2 * self.capacity))
            self._keys[:, :, self.length:end].copy_(key_states)
            self._values[:, :, self.length:end].copy_(value_states)
            self.length = end
            self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
            return self.keys, self.values

        def _grow(self, capacity: int) -> None:
            keys, values = self._keys, self._values
            self.capacity = capacity
            self._keys = keys.new_empty((*keys.shape[:2], capacity, keys.shape[-1]))
            self._values = values.new_empty((*values.shape[:2], capacity, values.shape[-1]))
            self._keys[:, :, :self.length].copy_(keys[:, :, :self.length])
            self._values[:, :, :self.length].copy_(values[:, :, :self.length])

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized:
                self._keys, self._values = self._keys[indices], self._values[indices]
                self.keys, self.values = self._keys[:, :, :self.length], self._values[:, :, :self.length]

        def reset(self) -> None:
            self.length = 0
            super().reset()

        def crop(self, tokens_to_remove: int) -> None:
            super().crop(tokens_to_remove)  # validates the argument and trims the views
            if self.is_initialized:
                self.length = self.keys.shape[-2]

    _LAYER_CLASS = PreallocatedLayer
    return _LAYER_CLASS
