"""Strategy mechanics without a model: shuffling, voting, answer parsing, bounded retries."""

from __future__ import annotations

import itertools

import pytest

from meditune.evaluation.strategies.cot import (
    RetryPolicy,
    cot_messages,
    generate_parsed,
    parse_cot_answer,
)
from meditune.evaluation.strategies.direct import parse_direct_answer
from meditune.evaluation.strategies.shuffle import option_orders, shuffled_item, to_original
from meditune.evaluation.strategies.vote import majority_vote
from meditune.generation.base import GenerationRequest, SamplingParams, ScriptedBackend
from meditune.letters import trim_rationale
from tests.strategies_helpers import knows_marked, make_item, shown_options


def test_every_shuffle_maps_the_answer_back():
    item = make_item(0, right=2)
    for order in itertools.permutations(range(4)):
        shown = shuffled_item(item, list(order))
        assert shown.options[shown.answer] == item.options[item.answer]
        assert [shown.options[p] for p in range(4)] == [item.options[j] for j in order]
        for pos in range(4):  # any answer on the shown item maps to the option with the same text
            assert item.options[to_original(pos, list(order))] == shown.options[pos]
    assert to_original(None, [1, 0]) is None


def test_option_orders_distinct_seeded_and_identity_first():
    orders = option_orders(4, 5, seed=3, item_id="x")
    assert orders[0] == [0, 1, 2, 3]
    assert len({tuple(o) for o in orders}) == 5
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
    assert orders == option_orders(4, 5, seed=3, item_id="x")
    assert orders != option_orders(4, 5, seed=4, item_id="x")
    no_id = option_orders(4, 5, seed=3, item_id="x", keep_original_first=False)
    assert len({tuple(o) for o in no_id}) == 5
    # 2 options have 2 orders: more runs cycle through them
    assert option_orders(2, 4, seed=0, item_id="y") == [[0, 1], [1, 0], [0, 1], [1, 0]]


def test_shuffled_item_rejects_bad_order():
    with pytest.raises(ValueError, match="permutation"):
        shuffled_item(make_item(0), [0, 1, 1, 2])


@pytest.mark.parametrize("answers, winner, tie", [
    ([2, 2, 1, 0, 2], 2, False),
    ([1, 3, 3, 1], 1, True),            # tie: 1 was seen first
    ([None, 3, None, 0, 0, 3], 3, True),  # None does not vote; 3 seen before 0
    ([None, None], None, False),
    ([0], 0, False),
])
def test_majority_vote(answers, winner, tie):
    v = majority_vote(answers)
    assert (v.winner, v.tie) == (winner, tie)
    assert sum(v.counts.values()) == sum(a is not None for a in answers)


@pytest.mark.parametrize("text, expected", [
    ("Reasoning... Answer: C", 2),
    ("Answer: A\nOn second thought the answer is (B).", 1),   # the LAST answer counts
    ("**Answer:** [D]", 3),
    ("Answer: Ceftriaxone", None),                              # a word, not a letter
    ("Answer: E", None),                                        # not an option of a 4-option item
    ("Answer: B then Answer: E", 1),                            # last VALID answer
    ("no conclusion", None),
])
def test_parse_cot_answer(text, expected):
    assert parse_cot_answer(text, 4) == expected


def test_parse_direct_answer_and_trim():
    assert parse_direct_answer("C. Ceftriaxone", 4) == 2
    assert parse_direct_answer(" (B)", 4) == 1
    assert parse_direct_answer("A 21-year-old... Answer: D", 4) == 0  # a leading letter wins in direct mode
    assert parse_direct_answer("Hmm", 4) is None
    assert trim_rationale("Because X.\nAnswer: B\nExtra chatter", 4) == "Because X.\nAnswer: B"
    assert trim_rationale("nothing", 4) is None


def test_cot_prompt_shows_options_and_shots():
    item, shot = make_item(0), make_item(1)
    msgs = cot_messages(item, [(shot, "why\nAnswer: B")])
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert shown_options(GenerationRequest("r", msgs)) == dict(zip("ABCD", item.options, strict=True))
    assert "Answer: X" in msgs[-1]["content"]


def test_retries_are_bounded_counted_and_hotter_and_longer():
    seen: list[SamplingParams] = []

    def never_answers(req, i):
        seen.append(req.params)
        return "I cannot decide between these options"

    backend = ScriptedBackend(never_answers)
    base = SamplingParams(temperature=0.0, max_new_tokens=50)
    out = generate_parsed(backend, [GenerationRequest("q", [{"role": "user", "content": "?"}], base)], [4],
                          policy=RetryPolicy(max_retries=3, temperature_step=0.05, extra_tokens=10))
    (smp,) = out[0]
    assert smp.answer is None and smp.retries == 3
    assert len(backend.calls) == 4  # first try + exactly 3 retries
    assert [round(p.temperature, 2) for p in seen] == [0.0, 0.05, 0.1, 0.15]
    assert [p.max_new_tokens for p in seen] == [50, 60, 70, 80]
    assert smp.completion_tokens == 4 * len("I cannot decide between these options".split())


def test_retry_recovers_only_the_failed_samples():
    def answers_when_warm(req, i):
        if req.params.temperature > 0 or i == 1:
            return knows_marked(req, i)
        return "hmm"

    backend = ScriptedBackend(answers_when_warm)
    req = GenerationRequest("q", [{"role": "user", "content": cot_messages(make_item(0, right=3))[0]["content"]}],
                            SamplingParams(n=3))
    (samples,) = generate_parsed(backend, [req], [4], policy=RetryPolicy(max_retries=2))
    assert [s.answer for s in samples] == [3, 3, 3]
    assert [s.retries for s in samples] == [1, 0, 1]
    assert len(backend.calls) == 3  # 1 request with n=3, then one retry for each of the 2 failed samples
    assert len({c.params.seed for c in backend.calls[1:]}) == 2  # retries of different samples differ


def test_no_retries_when_disabled():
    backend = ScriptedBackend(lambda r, i: "?")
    (s,), = generate_parsed(backend, [GenerationRequest("q", [], SamplingParams())], [4],
                            policy=RetryPolicy(max_retries=0))
    assert s.answer is None and s.retries == 0 and len(backend.calls) == 1
