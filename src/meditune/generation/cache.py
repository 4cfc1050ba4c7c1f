"""An on-disk cache of generations keyed by (model, request content, sampling params incl. seed and n).

Layout: a directory of append-only JSONL shards `entries-<time>-<pid>.jsonl`, one per writing process
(meditune.shards.ShardDir), so concurrent writers never interleave and a write killed mid-line leaves a torn tail
only at the end of its own shard (skipped on read). The request id is not part of the key: the same chat with the same params is the
same work whatever it is called.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meditune.generation.base import Backend, BackendConfig, Generation, GenerationRequest
from meditune.io import hash_obj
from meditune.shards import ShardDir


def model_key(cfg: BackendConfig) -> dict[str, Any]:
    """What identifies a generator: backend, model (with a signature of its files) and prompt policy."""
    key: dict[str, Any] = {"backend": cfg.backend, "model": cfg.model.spec, "system_prompt": cfg.system_prompt}
    if cfg.backend == "openai":
        key["base_url"] = cfg.base_url
        return key
    key["dtype"] = cfg.model.dtype
    key["files"] = _files_signature(cfg.model.spec)
    return key


def _files_signature(spec: str) -> str | None:
    """Names, sizes and mtimes of the model's files: retraining into the same directory changes the key."""
    from meditune.models import resolve

    try:
        rm = resolve(spec)
    except Exception:  # noqa: BLE001 - an unresolvable spec fails later, where the model is loaded
        return None
    sig = []
    for part in (rm, rm.base):
        if part is None or not Path(part.path).is_dir():
            continue
        for p in sorted(Path(part.path).iterdir()):
            if p.is_file():
                st = p.stat()
                sig.append((str(p), st.st_size, st.st_mtime_ns))
    return hash_obj(sig) if sig else None


def request_key(model: dict[str, Any], req: GenerationRequest) -> str:
    """The cache key of a request for a model."""
    return hash_obj({"model": model, "messages": req.messages, "prompt": req.prompt,
                     "params": req.params.to_dict()})


class GenerationCache:
    """Generations by key, loaded from every shard at open; new entries go to this process's own shard."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._shards = ShardDir(self.root, prefix="entries", key="key")  # one writer file per process

    def __len__(self) -> int:
        return len(self._shards.done)

    def get(self, key: str, request_id: str) -> list[Generation] | None:
        """The cached generations of a key, relabelled with `request_id`; None on a miss."""
        entry = self._shards.done.get(key)
        if entry is None:
            return None
        return [Generation(request_id=request_id, **{k: v for k, v in g.items() if k != "request_id"})
                for g in entry["generations"]]

    def put(self, items: Sequence[tuple[str, list[Generation]]]) -> None:
        """Store generations (one fsynced append for the whole batch)."""
        rows = []
        for key, gens in items:
            dicts = [{k: v for k, v in g.to_dict().items() if k != "request_id"} for g in gens]
            if any(g["finish_reason"] == "error" for g in dicts):
                continue  # errors are not results: retry them next time
            rows.append({"key": key, "generations": dicts})
        self._shards.add(rows)


class CachedBackend:
    """Wraps a backend: cache hits are answered from disk, misses go to the backend in one call."""

    def __init__(self, backend: Backend, cache: GenerationCache, model: dict[str, Any]):
        self.backend, self.cache, self.model = backend, cache, model
        self.name = backend.name
        self.hits = self.misses = 0

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Generation]]:
        """Generations of every request, from the cache where possible."""
        keys = [request_key(self.model, r) for r in requests]
        out: list[list[Generation] | None] = [self.cache.get(k, r.id) for k, r in zip(keys, requests, strict=True)]
        todo = [i for i, g in enumerate(out) if g is None]
        self.hits += len(requests) - len(todo)
        self.misses += len(todo)
        if todo:
            fresh = self.backend.generate([requests[i] for i in todo])
            for i, gens in zip(todo, fresh, strict=True):
                out[i] = gens
            self.cache.put([(keys[i], out[i]) for i in todo])  # type: ignore[misc]
        return out  # type: ignore[return-value]
