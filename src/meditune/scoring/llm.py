"""Calling a judge model: batched requests with one retry, failures as None (never an exception per item)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from meditune.generation.base import Backend, GenerationRequest

log = logging.getLogger(__name__)


def ask(backend: Backend, requests: Sequence[GenerationRequest], *, retries: int = 1,
        retry_delay_s: float = 0.0) -> list[str | None]:
    """First completion text of each request; None where the call failed after `retries` retries."""
    out: list[str | None] = [None] * len(requests)
    todo = list(range(len(requests)))
    for attempt in range(retries + 1):
        if not todo:
            break
        if attempt and retry_delay_s:
            time.sleep(retry_delay_s)  # the published code sleeps before its one retry
        try:
            gens = backend.generate([requests[i] for i in todo])
        except Exception as e:  # noqa: BLE001 - any backend failure counts as a failed call, as published
            log.warning("judge call failed (attempt %d/%d): %s", attempt + 1, retries + 1, e)
            continue
        still = []
        for i, g in zip(todo, gens, strict=True):
            if g and g[0].finish_reason != "error":
                out[i] = g[0].text
            else:
                still.append(i)
        todo = still
    return out
