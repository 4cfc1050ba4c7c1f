"""Answer, judge, reward and combined scorers, and the scorer registry."""

from __future__ import annotations

import pytest

from meditune.errors import ConfigError
from meditune.generation.base import ScriptedBackend
from meditune.model_ref import ModelRef
from meditune.scoring.answer import AnswerScorer, extract_choice
from meditune.scoring.base import Score, ScoreInput
from meditune.scoring.combine import CombinedScorer
from meditune.scoring.judge import JudgeScorer, parse_judge_score
from meditune.scoring.registry import build_scorer, parse_scorer_config

OPTS = ["Aspirin", "Ibuprofen", "Paracetamol", "Morphine"]


@pytest.mark.parametrize("text,expected", [
    ("Answer: C", 2), ("The answer is (B).", 1), ("B. Ibuprofen, because ...", 1), ("D", 3),
    ("I would pick option A here", 0), ("It is paracetamol.", 2), ("the answer is b", 1),
    ("A or B, hard to say", None), ("No idea.", None), ("Aspirin or morphine", None),
])
def test_extract_choice(text, expected):
    assert extract_choice(text, OPTS)[0] == expected


def test_answer_scorer():
    items = [ScoreInput("1", "q", "Answer: C", options=OPTS, gold=2),
             ScoreInput("2", "q", "Answer: A", options=OPTS, gold=2),
             ScoreInput("3", "q", "no idea", options=OPTS, gold=2),
             ScoreInput("4", "q", "", options=OPTS, gold=2),
             ScoreInput("5", "q", "Answer: A")]
    s = AnswerScorer().score(items)
    assert [x.value for x in s] == [1.0, 0.0, None, None, None]
    assert [x.reason for x in s] == [None, None, "unparseable", "empty", "not_mcq"]
    assert s[0].evidence == {"extracted": "C", "gold": "C", "how": "answer_cue"}


@pytest.mark.parametrize("reply,expected", [
    ("Score: 7", 7.0), ("**Score:** 9/10", 9.0), ("[[4]]", 4.0), ("I rate it 8 out of 10.", 8.0),
    ("Rating = 3", 3.0), ("6", 6.0), ("Score: 11", None), ("It has 3 errors in 2 places", None),
    ("excellent", None), (None, None), ("Score: 0", None),
])
def test_parse_judge_score(reply, expected):
    assert parse_judge_score(reply) == expected


def test_judge_scorer_uses_rubric_and_parses():
    replies = {"good": "Score: 9", "meh": "I'd say 5/10.", "odd": "great answer!"}
    backend = ScriptedBackend(lambda r, i: next(v for k, v in replies.items() if f"ANSWER: {k}" in
                                                r.messages[-1]["content"]))
    scorer = JudgeScorer(backend, rubric="RUBRIC-XYZ: grade it.")
    s = scorer.score([ScoreInput(k, "q", k) for k in ("good", "meh", "odd")] + [ScoreInput("e", "q", " ")])
    assert [x.value for x in s] == [9.0, 5.0, None, None]
    assert [x.reason for x in s] == [None, None, "unparseable", "empty"]
    assert len(backend.calls) == 3 and backend.calls[0].messages[-1]["content"].startswith("RUBRIC-XYZ")
    assert backend.calls[0].params.temperature == 0.0


class Fixed:
    def __init__(self, name, values, value_range, clean=None):
        self.name, self.values, self.value_range = name, values, value_range
        self.clean = clean or [True] * len(values)

    def score(self, items):
        return [Score(v, c, None if c else "unparseable") for v, c in zip(self.values, self.clean, strict=True)]


def test_combined_scorer_normalises_and_weights():
    dahl = Fixed("dahl", [1.0, 0.5, 0.2, None], (0.0, 1.0), [True, True, False, True])
    judge = Fixed("judge", [10.0, 1.0, 5.5, 3.0], (1.0, 10.0))
    s = CombinedScorer([(dahl, 3.0), (judge, 1.0)]).score([ScoreInput(str(i), "q", "a") for i in range(4)])
    assert s[0].value == pytest.approx(1.0)
    assert s[1].value == pytest.approx((3 * 0.5 + 0) / 4)
    assert s[2].value == pytest.approx((3 * 0.2 + 0.5) / 4) and not s[2].clean
    assert s[3].value is None
    assert CombinedScorer([(dahl, 1.0)]).value_range == (0.0, 1.0)
    assert CombinedScorer([(Fixed("reward", [1.0] * 4, None), 1.0)]).value_range is None


def test_registry_builds_by_name_and_rejects_bad_config():
    cfg = parse_scorer_config({"type": "combine", "parts": [
        {"weight": 2, "scorer": {"type": "dahl", "splitter": "sentences", "verifier": "grounded_judge"}},
        {"scorer": {"type": "judge", "rubric": "be strict"}}]})
    backend = ScriptedBackend(lambda r, i: "Score: 5" if "Score" in r.messages[-1]["content"] else "True")
    scorer = build_scorer(cfg, backends=lambda bc: backend)
    [s] = scorer.score([ScoreInput("a", "q", "A is B.", references=["A is B."])])
    assert s.value == pytest.approx((2 * 1.0 + (5 - 1) / 9) / 3)
    with pytest.raises(ConfigError, match="scorer"):
        parse_scorer_config({"type": "dahl", "verifer": "judge"})
    with pytest.raises(ConfigError):
        parse_scorer_config({"type": "nope"})


def test_reward_scorer_on_a_tiny_classifier(tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from meditune.scoring.reward import RewardScorer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = LlamaConfig.from_pretrained(tiny_model_dir, num_labels=1)
    cfg.pad_token_id = tok.pad_token_id
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    scorer = RewardScorer(str(tmp_path), device="cpu", batch_size=2)
    items = [ScoreInput("a", "What is insulin?", "A hormone."), ScoreInput("b", "What is insulin?", ""),
             ScoreInput("c", "Q", "A much longer answer about insulin and glucose."),
             ScoreInput("a2", "What is insulin?", "A hormone.")]
    s = scorer.score(items)
    assert s[1].reason == "empty" and s[1].value is None
    assert isinstance(s[0].value, float) and s[0].value == pytest.approx(s[3].value, abs=1e-5)  # padding-invariant
    assert s[0].value != s[2].value
    with pytest.raises(ConfigError):
        RewardScorer(str(tmp_path / "missing")).score(items)


def test_logprob_verifier_always_gives_a_verdict(tiny_model_dir):
    from meditune.scoring.logprob_verifier import LogprobJudgeVerifier

    v = LogprobJudgeVerifier(ModelRef(spec=str(tiny_model_dir), device="cpu"), batch_size=2)
    item = ScoreInput("a", "q", "")
    facts = ["Insulin lowers glucose.", "The moon is made of cheese.", "Aspirin is an NSAID."]
    got = v.verify([(item, f) for f in facts])
    assert [verdict for verdict, _ in got] == ["true" if ev["p_true"] > 0.5 else "false" for _, ev in got]
    assert all(0.0 <= ev["p_true"] <= 1.0 and ev["mass"] > 0 for _, ev in got)
    again = v.verify([(item, facts[1])])  # alone in its batch: same verdict and probability (padding-invariant)
    assert again[0][0] == got[1][0] and again[0][1]["p_true"] == pytest.approx(got[1][1]["p_true"], abs=1e-3)
    cfg = parse_scorer_config({"type": "dahl", "splitter": "sentences", "verifier": "judge_logprob",
                               "judge": {"model": str(tiny_model_dir), "device": "cpu"}})
    [s] = build_scorer(cfg, backends=lambda bc: pytest.fail("no generation backend needed")).score(
        [ScoreInput("x", "q", "Insulin lowers glucose. Aspirin is an NSAID.")])
    assert s.clean and s.evidence["n_facts"] == 2 and s.evidence["verifier"] == "judge_logprob"
