"""Shared-prefix log-likelihood scoring equals naive per-option scoring; lm-eval tokenisation rules."""

from __future__ import annotations

import pytest

from meditune.evaluation.loglik import LoglikRequest, LoglikScorer, TokenEncoder, naive_score

REQUESTS = [
    LoglikRequest("Question: Which organ secretes insulin?\nA. Liver\nB. Pancreas\nAnswer:",
                  [" Liver", " The pancreas, specifically beta cells", " B", " A"]),
    LoglikRequest("Short:  ", ["yes", "no", "maybe, it depends on the dose"]),  # trailing spaces move over
    LoglikRequest("Q: 다음 중 옳은 것은?\nA. 간\nB. 췌장\n정답：", [" A", " B"]),
    LoglikRequest("Question: A 45-year-old man has crushing chest pain radiating to the left arm for two hours. "
                  "Which test first?\nAnswer:", [" ECG", " Troponin", " Chest X-ray of the thorax", " CT"]),
    LoglikRequest("", [" unconditional continuation", " x"]),  # empty context: conditioned on BOS, as lm-eval
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from meditune.models import load_model

    return load_model(str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.mark.parametrize("method", ["tree", "two-pass"])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_shared_prefix_equals_naive(tiny, batch_size, method):
    model, tok = tiny
    fast = LoglikScorer(model, tok, batch_size=batch_size, method=method).score(REQUESTS)
    ref = naive_score(model, tok, REQUESTS)
    for f, r in zip(fast, ref, strict=True):
        assert len(f.loglik) == len(r.loglik)
        for a, b in zip(f.loglik, r.loglik, strict=True):
            assert abs(a - b) < 1e-4
        assert f.is_greedy == r.is_greedy
        assert f.n_tokens == r.n_tokens


def test_scores_are_not_degenerate(tiny):
    model, tok = tiny
    res = LoglikScorer(model, tok, batch_size=4).score(REQUESTS)
    lls = [x for r in res for x in r.loglik]
    assert all(x < 0 for x in lls)
    assert len({round(x, 3) for x in lls}) > len(lls) // 2  # different options get different scores


def test_encode_pair_moves_trailing_space(tiny):
    _, tok = tiny
    enc = TokenEncoder(tok)
    ctx, cont = enc.encode_pair("Answer: ", "yes")
    assert ctx == tok.encode("Answer:")
    assert cont == tok.encode("Answer: yes")[len(ctx):]
    ctx2, cont2 = enc.encode_pair("Answer:", " yes")
    assert (ctx, cont) == (ctx2, cont2)


def test_left_truncation_is_counted_and_matches_naive(tiny):
    model, tok = tiny
    long_ctx = "Question: " + "the patient reports pain " * 60 + "\nAnswer:"
    req = [LoglikRequest(long_ctx, [" yes", " no, not at all"])]
    scorer = LoglikScorer(model, tok, batch_size=2, max_length=64)
    (res,) = scorer.score(req)
    assert res.truncated_tokens > 0
    assert res.context_tokens + max(res.n_tokens) - 1 <= 64
    # the longest option sees exactly what lm-eval would feed it
    (ref,) = naive_score(model, tok, req, max_length=64)
    longest = max(range(2), key=lambda i: res.n_tokens[i])
    assert abs(res.loglik[longest] - ref.loglik[longest]) < 1e-4


def test_continuation_longer_than_window_is_an_error(tiny):
    from meditune.errors import ConfigError

    model, tok = tiny
    with pytest.raises(ConfigError, match="exceeds the window"):
        LoglikScorer(model, tok, max_length=8).score([LoglikRequest("Q:", [" a b c d e f g h i j k l m"])])
