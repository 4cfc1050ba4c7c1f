"""kNN few-shot retrieval: embed questions, return the k nearest training items ordered least to most similar."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from meditune.io import hash_obj
from meditune.records import MCQItem

log = logging.getLogger(__name__)

EmbedFn = Callable[[list[str]], np.ndarray]


def embed_cached(embed: EmbedFn, texts: list[str], cache_dir: str | Path | None, model_id: str) -> np.ndarray:
    """Embeddings of texts, stored as safetensors under cache_dir keyed by model and texts."""
    if cache_dir is None:
        return embed(texts)
    from safetensors.numpy import load_file, save

    from meditune.io import atomic_write

    path = Path(cache_dir) / f"embeddings-{hash_obj([model_id, texts])[:16]}.safetensors"
    if path.exists():
        return load_file(path)["embeddings"]
    vecs = embed(texts)
    with atomic_write(path, "wb") as f:
        f.write(save({"embeddings": np.ascontiguousarray(vecs, dtype=np.float32)}))
    return vecs


def normalise_question(text: str) -> str:
    """Case-folded question with collapsed whitespace: what counts as an exact duplicate."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def embedding_text(item: MCQItem) -> str:
    """What is embedded for retrieval: the question (as in Medprompt), with its context when present."""
    return f"{item.context}\n{item.question}" if item.context else item.question


class KNNIndex:
    """Nearest-neighbour search over embedded training items by cosine similarity."""

    def __init__(self, items: Sequence[MCQItem], embeddings: np.ndarray):
        if len(items) != len(embeddings):
            raise ValueError(f"{len(items)} items but {len(embeddings)} embeddings")
        self.items = list(items)
        self.embeddings = np.asarray(embeddings, dtype=np.float32)
        self._keys = [normalise_question(it.question) for it in self.items]

    @classmethod
    def build(cls, items: Sequence[MCQItem], embed: EmbedFn, *, cache_dir: str | Path | None = None,
              model_id: str = "") -> KNNIndex:
        """Embed the items' questions and index them."""
        texts = [embedding_text(it) for it in items]
        vecs = embed_cached(embed, texts, cache_dir, model_id) if texts else np.zeros((0, 1), np.float32)
        return cls(items, vecs)

    def neighbours(self, query: MCQItem, query_embedding: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(index, similarity) of the k nearest items, least similar first, exact duplicates excluded.

        Ties in similarity are broken by index (earlier training item ranks as nearer), so results are stable.
        """
        if k <= 0 or not self.items:
            return []
        sims = self.embeddings @ np.asarray(query_embedding, dtype=np.float32)
        qkey = normalise_question(query.question)
        # Stable sort on -similarity: the nearest first, ties by training order.
        ranked = [int(i) for i in np.argsort(-sims, kind="stable") if self._keys[int(i)] != qkey][:k]
        return [(i, float(sims[i])) for i in reversed(ranked)]


def retrieve(index: KNNIndex, queries: Sequence[MCQItem], embed: EmbedFn, k: int) -> list[list[tuple[int, float]]]:
    """Neighbours of every query (embedded in one batch)."""
    if not queries:
        return []
    vecs = embed([embedding_text(q) for q in queries])
    return [index.neighbours(q, v, k) for q, v in zip(queries, vecs, strict=True)]
