"""Prefix caching in the transformers backend: shared prompt prefixes are computed once, outputs do not change."""

from __future__ import annotations

import pytest

from meditune.generation.base import BackendConfig, Generation, GenerationRequest, SamplingParams
from meditune.generation.prefix_cache import (
    PrefixKV,
    PrefixStore,
    call_shares,
    common_prefix_len,
    plan_batch,
    shared_with_later,
)

EXEMPLARS = [("A 45-year-old man has crushing chest pain radiating to the left arm. Which test first?",
              "An ECG is fast and shows ST elevation. Answer: B"),
             ("Which vitamin deficiency causes scurvy in sailors on long voyages?",
              "Scurvy comes from a lack of vitamin C. Answer: C")]
QUESTIONS = ["Which drug lowers blood pressure?\nA. Lisinopril\nB. Insulin\nC. Heparin",
             "What causes anemia in chronic kidney disease?\nA. Low erythropoietin\nB. High iron\nC. Fever",
             "Hi"]


def shots_chat(question: str) -> list[dict[str, str]]:
    msgs = []
    for q, a in EXEMPLARS:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return msgs + [{"role": "user", "content": question}]


def shuffled(question: str, run: int) -> str:
    """The question with its option lines rotated (medprompt's choice shuffling)."""
    head, *opts = question.split("\n")
    opts = opts[run % len(opts):] + opts[:run % len(opts)] if opts else opts
    return "\n".join([head, *opts])


def requests(**params) -> list[GenerationRequest]:
    """Three questions x two option orders behind the same exemplars, one with 2 samples, and an unrelated one."""
    reqs = [GenerationRequest(f"q{i}#run{r}", shots_chat(shuffled(q, r)),
                              SamplingParams(n=2 if i == 1 else 1, **params))
            for i, q in enumerate(QUESTIONS) for r in range(2)]
    return reqs + [GenerationRequest("other", [{"role": "user", "content": "Name a symptom of flu."}],
                                     SamplingParams(**params))]


@pytest.fixture(scope="module")
def backends(tiny_model_dir):
    from meditune.generation.factory import make_backend

    cached = make_backend(BackendConfig(model=str(tiny_model_dir), batch_size=3, device="cpu"))
    plain = make_backend(BackendConfig(model=str(tiny_model_dir), batch_size=3, device="cpu", prefix_cache=False),
                         model=cached.model, tokenizer=cached.tokenizer)
    return cached, plain


def texts(out: list[list[Generation]]) -> list[list[tuple[str, int, str]]]:
    return [[(g.text, g.completion_tokens, g.finish_reason) for g in gens] for gens in out]


@pytest.mark.parametrize("params", [{"temperature": 0.0, "max_new_tokens": 12},
                                    {"temperature": 1.0, "top_p": 0.9, "seed": 11, "max_new_tokens": 12}],
                         ids=["greedy", "sampled"])
def test_cached_prefixes_give_the_uncached_generations(backends, params):
    cached, plain = backends
    reqs = requests(**params)
    before = cached.prefill_tokens_saved
    got = cached.generate(reqs)
    assert texts(got) == texts(plain.generate(reqs))
    saved = cached.prefill_tokens_saved - before
    exemplar_block = common_prefix_len(cached.prompt_ids(reqs[0]), cached.prompt_ids(reqs[2]))
    # 7 rows behind one exemplar block, in batches of 3: at most one row per call computes it
    assert exemplar_block > 60 and saved >= 6 * exemplar_block
    assert sum(g.cached_tokens for gens in got for g in gens) == saved
    assert all(g.prompt_tokens == len(cached.prompt_ids(r)) for r, gens in zip(reqs, got, strict=True) for g in gens)
    assert got[-1][0].cached_tokens == 0  # shares nothing


def test_split_prefill_logits_match_the_plain_prefill(backends):
    """The split layout (prefix KV right-aligned, padding between prefix and suffix) gives the unsplit logits."""
    import torch

    from meditune.generation.transformers_backend import _Row

    cached, _ = backends
    reqs = requests(max_new_tokens=4)
    rows = [_Row(i, 0, cached.prompt_ids(r), r.params, 4) for i, r in enumerate(reqs)]
    with torch.inference_mode():
        prompts = [r.prompt for r in rows]
        plan = plan_batch(prompts, call_shares(prompts), PrefixStore())
        assert plan is not None and plan.saved > 0 and plan.suffix < max(len(r.prompt) for r in rows)
        split, mask, pos, _ = cached._split_prefill(rows, plan, PrefixStore(), 4)
        plain = torch.cat([cached._forward(input_ids=torch.tensor([r.prompt])) for r in rows])
    assert torch.allclose(split, plain, atol=1e-5, rtol=0)
    assert pos[:, -1].tolist() == [len(r.prompt) - 1 for r in rows]
    assert mask.sum(-1).tolist() == [len(r.prompt) for r in rows]


def test_prefixes_are_kept_across_calls_only_when_asked(backends):
    cached, plain = backends
    reqs = requests(temperature=0.0, max_new_tokens=3)
    first, again = reqs[:2], reqs[2:4]  # the same exemplars in two separate calls
    block = common_prefix_len(cached.prompt_ids(first[0]), cached.prompt_ids(again[0]))

    def saved_by(call) -> int:
        before = cached.prefill_tokens_saved
        call()
        return cached.prefill_tokens_saved - before

    separate = saved_by(lambda: (cached.generate(first), cached.generate(again)))
    with cached.keep_prefixes():
        kept = saved_by(lambda: (cached.generate(first), cached.generate(again)))
        assert cached._store is not None and cached._store.bytes > 0
    assert cached._store is None  # released after the block
    assert kept >= separate + block
    assert texts(cached.generate(again)) == texts(plain.generate(again))


def test_plan_shares_the_longest_prefix_and_leaves_unrelated_rows_alone():
    shared = list(range(100, 140))
    prompts = [shared + [1, 2, 3], shared + [4, 5], list(range(500, 530)), shared[:20] + [9] * 10]
    plan = plan_batch(prompts, call_shares(prompts), PrefixStore())
    assert plan is not None
    # suffix width 10: the first two pad 7 and 8 columns, the third computes its first 20 tokens on its own
    assert plan.suffix == 10 and plan.prefix_len == [40, 40, 20, 20]
    assert plan.cached == [0, 40, 0, 20]  # the 4th shares only the first 20: a slice of the first row's KV
    assert [(len(m.tokens) - m.base_len, m.keep) for m in plan.materialise] == [(40, True), (20, False)]
    assert plan.slots < plan.plain_slots
    nothing = [list(range(30)), list(range(1, 31))]
    assert plan_batch(nothing, call_shares(nothing), PrefixStore()) is None
    short = [list(range(8)) + [1], list(range(8)) + [2]]  # 8 tokens in common: below MIN_SHARED
    assert plan_batch(short, call_shares(short), PrefixStore()) is None
    # a prefix shared with a prompt of another batch of the call is computed as such (and kept for it)
    later = plan_batch(prompts[:1], [40], PrefixStore())
    assert later is not None and later.prefix_len == [40] and later.materialise[0].keep


def test_store_reuses_slices_and_stays_within_its_bound():
    import torch

    def kv(tokens: list[int]) -> PrefixKV:
        t = torch.zeros((1, 2, len(tokens), 4))
        return PrefixKV(tokens, [(t, t.clone())])

    store = PrefixStore(max_bytes=kv(list(range(50))).nbytes * 2)
    store.add(kv(list(range(40))))
    assert store.longest(list(range(30)) + [7])[1] == 30
    store.add(kv(list(range(20))))  # contained in a held prefix: not kept twice
    assert len(store.entries) == 1
    store.add(kv(list(range(45))))  # extends the held one: replaces it
    assert [len(e.tokens) for e in store.entries.values()] == [45]
    store.add(kv(list(range(200, 250))))
    store.add(kv(list(range(300, 350))))  # over the bound: the least recently used goes
    assert store.bytes <= store.max_bytes and store.longest(list(range(45)))[1] == 0
    prompts = [list(range(200, 250)) + [1], list(range(600, 700))]
    plan = plan_batch(prompts, call_shares(prompts), store)
    assert plan is not None and plan.cached == [50, 0] and [m.keep for m in plan.materialise] == [False]


def test_common_prefix_len():
    assert common_prefix_len([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_len([1, 2], [1, 2, 3]) == 2
    assert common_prefix_len([], [1]) == 0
    assert common_prefix_len(list(range(1000)), list(range(999)) + [0]) == 999


def test_generation_records_leave_out_the_cached_count():
    g = Generation("r", 0, "x", 10, 2, "stop", cached_tokens=8)
    assert "cached_tokens" not in g.to_dict() and g == Generation("r", 0, "x", 10, 2, "stop")


def test_a_prefix_that_later_batches_share_is_computed_and_kept_even_when_this_batch_alone_would_not_pay():
    import torch

    shots = list(range(100, 160))
    prompts = [shots + list(range(k, k + 60)) for k in (1000, 2000, 3000, 4000)]  # one shot block, long questions
    later = shared_with_later(prompts, [0, 0, 1, 1])
    assert later == [False, True, False, False]  # the group's last member of batch 0 meets batch 1 in sorted order
    assert shared_with_later(prompts, [0, 0, 0, 0]) == [False] * 4
    first = plan_batch(prompts[:2], call_shares(prompts)[:2], PrefixStore(), later=later[:2])
    alone = plan_batch(prompts[:2], call_shares(prompts)[:2], PrefixStore())
    assert alone is not None and not alone.pays_off  # two rows: the extra forward costs more than it saves
    assert first is not None and first.serves_later and first.pays_off and first.materialise[0].keep
    store = PrefixStore()
    t = torch.zeros((1, 2, len(shots), 4))
    store.add(PrefixKV(shots, [(t, t.clone())]))  # once held, nothing is left to serve
    held = plan_batch(prompts[:2], call_shares(prompts)[:2], store, later=later[:2])
    assert held is not None and not held.serves_later
