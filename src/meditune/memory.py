"""Giving memory back between stages, and the allocator mode that makes CPU training steps fast.

After a stage, the pipeline calls `release_stage_memory()`: Python's cycles are collected (the models the
stage loaded through meditune.models.load_shared_model go with their last user, the sentence embedders' too),
CUDA's cached blocks released, and glibc asked to return free heap pages to the OS (malloc_trim), so the next
stage starts from a small RSS instead of the previous stage's high-water mark.

`training_allocator()`: a training step on CPU frees and re-allocates the same logits-sized buffers every step;
glibc serves allocations above its mmap threshold with fresh mmaps, so each step re-faults (zeroes) those pages.
With mmap off and trimming off (what `GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...`
does for a whole process) the buffers are reused from the heap instead. We set the same two options with
mallopt only while a trainer runs, and trim afterwards, so generation and evaluation stages keep glibc's
defaults (docs/cost.md says how to measure what each costs and saves, per stage). A GLIBC_TUNABLES malloc setting
in the environment wins: the user chose the allocator, we leave it alone.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from meditune.models import release_held

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536  # glibc's defaults
TRAINING_TRIM_THRESHOLD = 2**31 - 1  # the largest mallopt takes (an int): no trim while training


@lru_cache(maxsize=1)
def glibc() -> Any:
    """The C library when it is glibc (has malloc_trim and mallopt), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
        libc.malloc_trim, libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def user_tunes_malloc() -> bool:
    """Whether the environment already sets glibc malloc tunables (then we do not change the allocator)."""
    return "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def trim_heap() -> bool:
    """Return free heap memory to the OS (glibc malloc_trim); False where not glibc."""
    libc = glibc()
    return bool(libc is not None and libc.malloc_trim(0))


def release_stage_memory() -> None:
    """Collect garbage (models the stage shared go with their last user), release CUDA's cache and trim the heap."""
    release_held()
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    trim_heap()


@contextmanager
def training_allocator() -> Iterator[bool]:
    """While open: glibc keeps freed memory in the heap (no mmap, no trim), as the training steps want; then
    glibc's defaults again and a trim. Yields whether the mode is on (glibc, no user tunables)."""
    libc = glibc()
    if libc is None or user_tunes_malloc():
        yield False
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, TRAINING_TRIM_THRESHOLD)
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        trim_heap()
