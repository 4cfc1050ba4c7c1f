"""DAHL score: prompts as published, fact splitting, verdict parsing, scoring, clean/dropped handling."""

from __future__ import annotations

import pytest

from meditune.generation.base import Generation, GenerationRequest, ScriptedBackend
from meditune.scoring.base import ScoreInput
from meditune.scoring.dahl import (
    ATOMIC_SYSTEM,
    DAHL_INSTRUCTION,
    VERIFY_SYSTEM,
    DahlScorer,
    JudgeSplitter,
    JudgeVerifier,
    SentenceSplitter,
    atomic_prompt,
    dahl_model_score,
    parse_facts,
    parse_verdict,
    split_sentences,
    strip_prompt_echo,
)


def user_text(req: GenerationRequest) -> str:
    return req.messages[-1]["content"]


def fake_judge(req: GenerationRequest, _i: int) -> str:
    """Splits like a perfect judge; verifies facts mentioning 'true'/'false'/'maybe'/'silent' by keyword."""
    text = user_text(req)
    if text.startswith("Please split"):
        body = text.rsplit("TEXT: ", 1)[1].split("\nSEPARATED SENTENCES:")[0]
        return "\n".join(split_sentences(body))
    fact = text.split("\n", 1)[1]
    if "maybe" in fact:
        return "True or false, it depends."
    if "silent" in fact:
        return "I cannot say."
    return "True." if "true" in fact else "FALSE"


def test_parse_verdict_as_published():
    assert parse_verdict("True") == "true"
    assert parse_verdict("  TRUE.") == "true"
    assert parse_verdict("False") == "false"
    assert parse_verdict("false!") == "false"
    assert parse_verdict("True or False") == "bad"  # both words -> bad
    assert parse_verdict("false, not true") == "bad"
    assert parse_verdict("Partially correct") == "bad"
    assert parse_verdict("") == "bad"
    assert parse_verdict(None) == "bad"  # failed call after the retry
    assert parse_verdict("untrue") == "true"  # published substring test, kept for comparability


def test_atomic_prompt_is_the_published_three_shot_prompt():
    p = atomic_prompt("Aspirin inhibits COX-1.")
    assert p.startswith("Please split the sentences in the following text into smaller sentences which contain "
                        "just one single fact. If the last sentence is incomplete, just ignore the last sentence")
    assert p.count("TEXT: ") == 4 and p.count("SEPARATED SENTENCES: ") == 4
    assert "SEPARATED SENTENCES: She is a student.\nHe is a teacher.\n" in p
    assert "The symptons include headache." in p  # the original's typo, kept verbatim
    assert p.endswith("TEXT: Aspirin inhibits COX-1.\nSEPARATED SENTENCES: \n    ")
    assert atomic_prompt("a {brace} text").endswith("TEXT: a {brace} text\nSEPARATED SENTENCES: \n    ")


def test_parse_facts_lines_markers_and_echo():
    out = "SEPARATED SENTENCES: Insulin lowers glucose.\n\n- The pancreas makes insulin.\n2. Type 1 is autoimmune.\n"
    assert parse_facts(out) == ["Insulin lowers glucose.", "The pancreas makes insulin.", "Type 1 is autoimmune."]
    assert parse_facts("A is B.\\nC is D.") == ["A is B.", "C is D."]  # a literal backslash-n as in the shots
    assert parse_facts("A is B.\nTEXT: invented example\nSEPARATED SENTENCES: X.") == ["A is B."]
    assert parse_facts("  \n \n") == []


def test_split_sentences_drops_incomplete_last():
    text = "Aspirin inhibits COX. It reduces fever! Is it safe? It can cause bleed"
    assert split_sentences(text) == ["Aspirin inhibits COX.", "It reduces fever!", "Is it safe?"]
    assert split_sentences(text, drop_incomplete_last=False)[-1] == "It can cause bleed"
    assert split_sentences("1. First fact.\n2. Second fact.") == ["First fact.", "Second fact."]


def test_strip_prompt_echo():
    q = "What does insulin do?"
    assert strip_prompt_echo(f"{DAHL_INSTRUCTION} {q} It lowers glucose.", q) == "It lowers glucose."


def test_judge_requests_match_published_prompts():
    backend = ScriptedBackend(fake_judge)
    item = ScoreInput("a1", "Q?", "This is true. That is false.")
    scorer = DahlScorer(JudgeSplitter(backend), JudgeVerifier(backend))
    [s] = scorer.score([item])
    split_req, *verify_reqs = backend.calls
    assert split_req.messages[0] == {"role": "system", "content": ATOMIC_SYSTEM}
    assert split_req.params.temperature == 0.0
    assert [r.messages for r in verify_reqs] == [
        [{"role": "system", "content": VERIFY_SYSTEM},
         {"role": "user", "content": "Is this true or false? Answer in one word.\nThis is true."}],
        [{"role": "system", "content": VERIFY_SYSTEM},
         {"role": "user", "content": "Is this true or false? Answer in one word.\nThat is false."}]]
    assert s.value == 0.5 and s.clean and s.evidence["n_facts"] == 2


def test_scoring_clean_and_dropped():
    backend = ScriptedBackend(fake_judge)
    items = [
        ScoreInput("all-true", "Q1", "A is true. B is true. C is true."),
        ScoreInput("mixed", "Q2", "A is true. B is false. C is false. D is true."),
        ScoreInput("both-words", "Q3", "A is true. B is maybe. C is false."),
        ScoreInput("no-word", "Q4", "A is silent. B is true."),
        ScoreInput("empty", "Q5", "   "),
        ScoreInput("incomplete-only", "Q6", "This sentence never ends"),
    ]
    scores = DahlScorer(JudgeSplitter(backend), JudgeVerifier(backend)).score(items)
    by = dict(zip([i.id for i in items], scores, strict=True))
    assert (by["all-true"].value, by["all-true"].clean) == (1.0, True)
    assert (by["mixed"].value, by["mixed"].clean) == (0.5, True)
    # a 'bad' verdict counts as not true, and makes the answer unclean
    assert by["both-words"].value == pytest.approx(1 / 3) and not by["both-words"].clean
    assert by["both-words"].reason == "unparseable" and by["both-words"].evidence["n_bad"] == 1
    assert by["no-word"].value == 0.5 and not by["no-word"].clean
    assert by["empty"].value is None and by["empty"].reason == "empty"
    assert by["incomplete-only"].value is None and by["incomplete-only"].reason == "no_facts"
    m = dahl_model_score(scores)
    assert m["score"] == pytest.approx(0.75) and m["n"] == 2 and m["n_dropped"] == 4
    assert m["dropped_by_reason"] == {"unparseable": 2, "empty": 1, "no_facts": 1}
    assert m["ci95"][0] <= 0.75 <= m["ci95"][1]


def test_verifier_checks_each_answers_own_facts():
    """Public-code bug 1 (undefined loop variable): each answer's verdicts must be of its own facts, all once."""
    backend = ScriptedBackend(fake_judge)
    items = [ScoreInput(f"a{k}", "Q", " ".join(["X is true."] * k + ["Y is false."] * (3 - k) + ["Z is false."]))
             for k in range(4)]
    scores = DahlScorer(JudgeSplitter(backend), JudgeVerifier(backend)).score(items)
    assert [s.value for s in scores] == [0.0, 0.25, 0.5, 0.75]
    verify_calls = [r for r in backend.calls if user_text(r).startswith("Is this")]
    assert len(verify_calls) == 16  # 4 facts x 4 answers, each verified exactly once
    for s in scores:
        assert [f["verdict"] for f in s.evidence["facts"]] == [
            "true" if "true" in f["fact"] else "false" for f in s.evidence["facts"]]


class FlakyBackend:
    """Fails the first call, then behaves like the fake judge; counts calls."""

    name = "flaky"

    def __init__(self, failures: int):
        self.failures, self.calls = failures, 0

    def generate(self, requests):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("API down")
        return [[Generation(r.id, 0, fake_judge(r, 0))] for r in requests]


def test_api_failure_retried_once_then_bad():
    item = ScoreInput("a", "Q", "A is true. B is true.")
    ok = DahlScorer(SentenceSplitter(), JudgeVerifier(FlakyBackend(failures=1))).score([item])[0]
    assert ok.value == 1.0 and ok.clean  # one failure, retried
    bad = DahlScorer(SentenceSplitter(), JudgeVerifier(FlakyBackend(failures=2))).score([item])[0]
    assert bad.value == 0.0 and not bad.clean and bad.evidence["n_bad"] == 2
    assert all(f["error"] == "judge_error" for f in bad.evidence["facts"])
    split_failed = DahlScorer(JudgeSplitter(FlakyBackend(failures=2)), JudgeVerifier(FlakyBackend(0))).score([item])
    assert split_failed[0].reason == "judge_error" and split_failed[0].value is None


def test_grounded_judge_sends_references():
    backend = ScriptedBackend(lambda r, i: "True")
    item = ScoreInput("a", "Q", "Metformin lowers glucose.", references=["Metformin is first-line in T2D."])
    no_ref = ScoreInput("b", "Q", "Metformin lowers glucose.")
    s, s_no = DahlScorer(SentenceSplitter(), JudgeVerifier(backend, grounded=True)).score([item, no_ref])
    assert s.clean and s.value == 1.0
    assert "- Metformin is first-line in T2D." in user_text(backend.calls[0])
    assert user_text(backend.calls[0]).endswith("Answer in one word.\nMetformin lowers glucose.")
    assert len(backend.calls) == 1  # nothing to ground against: no call, verdict bad
    assert not s_no.clean and s_no.evidence["facts"][0]["error"] == "no_reference"
