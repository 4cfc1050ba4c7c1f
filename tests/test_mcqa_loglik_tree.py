"""Tree scoring (questions packed into one sequence, attention per question under a tree mask) equals a naive
full-sequence forward per option."""

from __future__ import annotations

import pytest

from meditune.evaluation.loglik import LoglikRequest, LoglikScorer, naive_score
from meditune.evaluation.loglik_tree import packed_inputs, tree_mask_works, tree_row, tree_targets
from meditune.prompts import PromptBuilder, get_template
from meditune.records import MCQItem

# Uneven question and option lengths (1 to ~15 tokens), so batches are padded and option segments differ.
ITEMS = [
    MCQItem(id="a", question="Which organ secretes insulin?", options=["Liver", "Pancreas", "Kidney", "Spleen"],
            answer=1),
    MCQItem(id="b", question="A 45-year-old man has crushing chest pain radiating to the left arm for two hours "
            "with sweating and nausea. Which test should be done first?",
            options=["ECG", "Serum troponin I measured twice, three hours apart", "Chest X-ray", "CT angiography "
                     "of the coronary arteries with contrast"], answer=0),
    MCQItem(id="c", question="Drug of choice for anaphylaxis?", options=["Epinephrine", "Diphenhydramine"],
            answer=0),
    MCQItem(id="d", question="다음 중 인슐린을 분비하는 장기는?", options=["간", "췌장", "신장", "비장", "폐"], answer=1),
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from meditune.models import load_model

    return load_model(str(tiny_model_dir), device="cpu", dtype="float32")


def _requests(tok, choices: str, chat: bool) -> list[LoglikRequest]:
    builder = PromptBuilder(get_template("medqa"), choices, chat=chat, tokenizer=tok, system_prompt=None)
    return [LoglikRequest(r.context, r.continuations) for r in (builder.render(it) for it in ITEMS)]


def _assert_close(fast, ref, tol):
    for f, r in zip(fast, ref, strict=True):
        assert f.n_tokens == r.n_tokens
        assert f.is_greedy == r.is_greedy
        for a, b in zip(f.loglik, r.loglik, strict=True):
            assert abs(a - b) < tol, (a, b)


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("choices", ["letters", "full"])
@pytest.mark.parametrize("batch_size,max_tokens", [(1, None), (3, None), (16, 60)])
def test_tree_equals_naive(tiny, choices, chat, batch_size, max_tokens):
    model, tok = tiny
    reqs = _requests(tok, choices, chat)
    scorer = LoglikScorer(model, tok, batch_size=batch_size, method="tree", max_tokens=max_tokens)
    fast = scorer.score(reqs)
    _assert_close(fast, naive_score(model, tok, reqs), 5e-5)  # float32 sums in another order: ~1e-5 on long options
    if choices == "full":
        assert len({n for s in fast for n in s.n_tokens}) > 2  # uneven option lengths were exercised


def test_auto_picks_tree_for_llama_sdpa_and_eager(tiny, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model, tok = tiny
    assert LoglikScorer(model, tok).resolved_method() == "tree"
    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    assert LoglikScorer(eager, tok).resolved_method() == "tree"
    reqs = _requests(tok, "full", False)
    _assert_close(LoglikScorer(eager, tok, batch_size=4).score(reqs), naive_score(model, tok, reqs), 1e-5)


class _OwnAttention:
    """A model wrapper whose config is not the model's: switching its attention implementation changes nothing,
    as with models whose attention does not go through transformers' AttentionInterface."""

    def __init__(self, model):
        import copy

        self.inner, self.config = model, copy.deepcopy(model.config)

    @property
    def device(self):
        return self.inner.device

    @property
    def dtype(self):
        return self.inner.dtype

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, input_ids=None, attention_mask=None, logits_to_keep=0, **kwargs):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep,
                          **kwargs)


def test_model_without_attention_interface_falls_back_to_two_pass(tiny):
    model, tok = tiny
    broken = _OwnAttention(model)
    assert not tree_mask_works(broken)
    scorer = LoglikScorer(broken, tok, batch_size=3)
    assert scorer.resolved_method() == "two-pass"
    reqs = _requests(tok, "full", False)
    _assert_close(scorer.score(reqs), naive_score(model, tok, reqs), 1e-4)
    assert model.config._attn_implementation == "sdpa"  # the switch is undone after every forward


def test_sliding_window_longer_questions_go_two_pass(tiny, monkeypatch):
    from meditune.evaluation import loglik_tree

    model, tok = tiny
    reqs = _requests(tok, "full", False)
    calls = []
    two_pass = LoglikScorer._score_two_pass
    monkeypatch.setattr(LoglikScorer, "_score_two_pass", lambda self, enc, *rest: (calls.append(len(enc)),
                                                                                    two_pass(self, enc, *rest)))
    monkeypatch.setattr(loglik_tree, "sliding_window", lambda m: 40)
    scorer = LoglikScorer(model, tok, method="tree")
    rows = [len(tree_row(*scorer.encoder.encode_request(r)).ids) for r in reqs]
    _assert_close(scorer.score(reqs), naive_score(model, tok, reqs), 1e-5)
    assert calls == [sum(n > 40 for n in rows)] and 0 < calls[0] < len(reqs)


def test_unsupported_attention_feature_falls_back_mid_run(tiny, monkeypatch):
    from meditune.evaluation import loglik_tree

    model, tok = tiny
    reqs = _requests(tok, "full", False)
    real = loglik_tree.score_tree_batch
    seen = []

    def second_fails(m, rows):
        seen.append(len(rows))
        if len(seen) == 2:
            raise loglik_tree.TreeAttentionUnsupported("soft-capping")
        return real(m, rows)

    monkeypatch.setattr(loglik_tree, "score_tree_batch", second_fails)
    out = LoglikScorer(model, tok, batch_size=1, method="tree").score(reqs)
    _assert_close(out, naive_score(model, tok, reqs), 1e-5)
    assert len(seen) == 2


def test_tree_mask_layout():
    import torch

    rows = [tree_row([1, 2, 3], [[4, 5, 6], [7, 8]]), tree_row([9], [[10], [11, 12]])]
    assert rows[0].ids == [1, 2, 3, 4, 5, 7]
    assert rows[0].positions == [0, 1, 2, 3, 4, 3]  # every option restarts at len(context)
    assert rows[1].ids == [9, 11] and rows[1].positions == [0, 1]
    inp, segments = packed_inputs(rows, dtype=torch.float32, device="cpu")
    assert inp["input_ids"].tolist() == [[1, 2, 3, 4, 5, 7, 9, 11]]  # packed: no padding
    assert inp["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3, 0, 1]]
    assert [(s, n) for s, n, _ in segments] == [(0, 6), (6, 2)]
    seen = segments[0][2][0, 0] == 0
    # row 0: option 2's token (index 5) sees the context and itself, not option 1's tokens (3, 4)
    assert seen[5].tolist() == [True, True, True, False, False, True]
    assert seen[4].tolist() == [True, True, True, True, True, False]
    assert (segments[1][2][0, 0] == 0).tolist() == [[True, False], [True, True]]
    assert inp["logits_to_keep"].tolist() == [[False, False, True, True, True, True, True, True]]
    flat, target, option = tree_targets(rows)
    assert target == [4, 5, 6, 7, 8, 10, 11, 12]
    assert option == [0, 0, 0, 1, 1, 2, 3, 3]
    # option 1 of row 0 is scored at kept logits 0 (last context token) and 3 (its own token 7)
    assert flat == [0, 1, 2, 0, 3, 4, 4, 5]


def test_truncated_long_context_matches_naive_on_tree(tiny):
    model, tok = tiny
    long_ctx = "Question: " + "the patient reports pain " * 60 + "\nAnswer:"
    req = [LoglikRequest(long_ctx, [" yes", " no, not at all"]), LoglikRequest("Q: short?\nA:", [" a", " b c"])]
    (res, short) = LoglikScorer(model, tok, batch_size=2, max_length=64, method="tree").score(req)
    assert res.truncated_tokens > 0 and short.truncated_tokens == 0
    ref = naive_score(model, tok, req, max_length=64)
    longest = max(range(2), key=lambda i: res.n_tokens[i])
    assert abs(res.loglik[longest] - ref[0].loglik[longest]) < 1e-5
    _assert_close([short], [ref[1]], 1e-5)


def test_token_budget_batches():
    from meditune.evaluation.loglik_tree import token_budget_batches

    lengths = [100, 98, 95, 60, 59, 58, 57, 10]
    assert token_budget_batches(lengths, max_rows=3, max_tokens=10_000) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert token_budget_batches(lengths, max_rows=8, max_tokens=200) == [[0, 1], [2, 3], [4, 5, 6, 7]]
    assert token_budget_batches([300, 10], max_rows=8, max_tokens=250) == [[0], [1]]  # an over-long row runs alone
    assert token_budget_batches(lengths, max_rows=1, max_tokens=10_000) == [[i] for i in range(len(lengths))]
