"""A KV cache for decoding one chunk at a time without copying the whole cache at each step.

transformers' ``DynamicCache`` appends a step's keys and values with ``torch.cat``, which
copies every cached position of every layer: decoding L tokens copies O(L^2) positions.
:class:`GrowingLayer` keeps them in a buffer with room to spare, writes new positions in
place and returns views; the buffer grows by a fixed factor when full, so each position
is copied a bounded number of times. The keys and values attention sees are the same
numbers, so outputs do not change (tested).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedConfig
from transformers.cache_utils import DynamicLayer

GROWTH = 1.25  # the buffer's new capacity when full, times the positions needed: at most 25% unused memory
MIN_SPARE = 64  # positions of room added at least, so short decodes grow rarely


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer whose keys/values are views of a larger buffer."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.length = 0
        self._key_buffer = self._value_buffer = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self._key_buffer is None or end > self._key_buffer.shape[-2]:
            self._reserve(key_states, value_states, max(int(end * GROWTH), end + MIN_SPARE))
        self._key_buffer[..., self.length : end, :] = key_states
        self._value_buffer[..., self.length : end, :] = value_states
        self._set_length(end)
        return self.keys, self.values

    def _reserve(self, key_states: torch.Tensor, value_states: torch.Tensor, capacity: int) -> None:
        """A buffer of ``capacity`` positions holding what is cached so far."""
        keys = key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1]))
        values = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]))
        if self.length:
            keys[..., : self.length, :] = self.keys
            values[..., : self.length, :] = self.values
        self._key_buffer, self._value_buffer = keys, values

    def _set_length(self, length: int) -> None:
        self.length = length
        self.keys = self._key_buffer[..., :length, :]
        self.values = self._value_buffer[..., :length, :]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows ``indices`` (rows that finished leave the batch); capacity is kept."""
        if self.is_initialized and self.length:
            self._key_buffer = self._key_buffer[indices]
            self._value_buffer = self._value_buffer[indices]
            self._set_length(self.length)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of positions to remove, not {tokens_to_remove}")
        if tokens_to_remove and self.is_initialized:
            self._set_length(max(0, self.length + tokens_to_remove))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized and self.length:
            self._key_buffer = self._key_buffer.repeat_interleave(repeats, dim=0)
            self._value_buffer = self._value_buffer.repeat_interleave(repeats, dim=0)
            self._set_length(self.length)

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        self.length = 0
        super().reset()


def decoding_cache(config: PreTrainedConfig) -> DynamicCache:
    """``DynamicCache(config=config)`` with its full-attention layers growing in place (sliding-window and
    other special layers are left as transformers builds them)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
