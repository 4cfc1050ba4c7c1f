"""The transformers backend on the tiny random model: batching, seeds, stop strings, finish reasons."""

from __future__ import annotations

import pytest

from meditune.errors import ConfigError
from meditune.generation.base import BackendConfig, GenerationRequest, SamplingParams
from meditune.generation.sampling import sample_seed, truncate_at_stop


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    from meditune.generation.factory import make_backend

    return make_backend(BackendConfig(model=str(tiny_model_dir), batch_size=4, device="cpu"))


def chat(rid: str, text: str, **params) -> GenerationRequest:
    return GenerationRequest(rid, [{"role": "user", "content": text}], SamplingParams(**params))


QUESTIONS = ["What is the normal resting heart rate of an adult?",
             "Name a drug for hypertension.",
             "Hi",
             "Describe the symptoms of type 2 diabetes in detail, including early and late signs, please."]


def test_greedy_batched_equals_transformers_generate(backend):
    import torch

    reqs = [chat(f"q{i}", q, max_new_tokens=12) for i, q in enumerate(QUESTIONS)]
    out = backend.generate(reqs)
    assert [g[0].request_id for g in out] == [r.id for r in reqs]
    tok, model = backend.tokenizer, backend.model
    for req, gens in zip(reqs, out, strict=True):
        enc = tok(backend.prompt_text(req), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            ref = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        ref_ids = ref[0, enc["input_ids"].shape[1]:].tolist()
        ref_ids = [t for t in ref_ids if t not in backend.eos_ids]
        assert gens[0].text == tok.decode(ref_ids, skip_special_tokens=True)
        assert gens[0].prompt_tokens == enc["input_ids"].shape[1]
        assert gens[0].completion_tokens == len(ref[0]) - enc["input_ids"].shape[1]


def test_rows_finishing_at_different_steps_match_their_runs_alone(backend):
    # 8 rows ending after 1..15 tokens: finished rows idle in the batch, then the last two are compacted
    reqs = [chat(f"r{i}", QUESTIONS[i % 4] + " " * (i // 4), max_new_tokens=1 + 2 * i) for i in range(8)]
    reqs.append(chat("sampled", QUESTIONS[0], temperature=1.0, seed=5, max_new_tokens=14))
    backend.batch_size = 9
    try:
        together = backend.generate(reqs)
    finally:
        backend.batch_size = 4
    for req, gens in zip(reqs, together, strict=True):
        alone = backend.generate([req])[0][0]
        assert (gens[0].text, gens[0].completion_tokens, gens[0].finish_reason) == \
            (alone.text, alone.completion_tokens, alone.finish_reason)
    assert [g[0].completion_tokens for g in together[:8]] == [1 + 2 * i for i in range(8)]


def test_sampling_reproducible_and_independent_of_batch(backend):
    req = chat("s", QUESTIONS[0], temperature=1.0, top_p=0.9, n=3, seed=7, max_new_tokens=10)
    alone = backend.generate([req])[0]
    mixed = backend.generate([chat("x", QUESTIONS[3], temperature=0.7, max_new_tokens=6), req,
                              chat("y", QUESTIONS[2], max_new_tokens=3)])[1]
    assert [g.text for g in alone] == [g.text for g in mixed]
    assert [g.index for g in alone] == [0, 1, 2]
    assert len({g.text for g in alone}) == 3  # n samples differ
    other_seed = backend.generate([chat("s", QUESTIONS[0], temperature=1.0, top_p=0.9, n=3, seed=8,
                                        max_new_tokens=10)])[0]
    assert [g.text for g in other_seed] != [g.text for g in alone]


def test_samples_of_a_request_share_one_prefill(backend, monkeypatch):
    """n samples are prefilled once and the cache rows copied: same outputs as a prefill per sample."""
    reqs = [chat("s", QUESTIONS[0], temperature=1.0, n=3, seed=3, max_new_tokens=8),
            chat("t", QUESTIONS[3], temperature=0.8, n=2, seed=4, max_new_tokens=8)]
    rows_fed = []
    forward = type(backend)._forward

    def counting(self, **inputs):
        rows_fed.append(inputs["input_ids"].shape)
        return forward(self, **inputs)

    monkeypatch.setattr(type(backend), "_forward", counting)
    monkeypatch.setattr(backend, "prefix_cache", False)  # the plain prefill's own sharing of a request's samples
    saved = backend.prefill_tokens_saved
    shared = backend.generate(reqs)
    prefill_rows = [shape[0] for shape in rows_fed if shape[1] > 1]
    assert prefill_rows == [2, 1]  # 5 samples in batches of 4: [t, t, s, s] prefills 2 rows, then [s] 1
    prompt = {r.id: len(backend.prompt_ids(r)) for r in reqs}
    assert backend.prefill_tokens_saved - saved == prompt["t"] + prompt["s"]  # the second t and the second s
    assert sum(g.cached_tokens for gens in shared for g in gens) == prompt["t"] + prompt["s"]
    monkeypatch.setattr(type(backend), "_prefill_sources", staticmethod(lambda batch: list(range(len(batch)))))
    per_sample = backend.generate(reqs)
    assert [[g.text for g in r] for r in shared] == [[g.text for g in r] for r in per_sample]


def test_stop_string_truncates_and_stops(backend):
    # sampled (fixed seed) so the random model writes varied text; the same seed replays the same tokens
    base = backend.generate([chat("a", QUESTIONS[1], max_new_tokens=24, temperature=1.0, seed=3)])[0][0]
    assert base.finish_reason == "length" and base.completion_tokens == 24
    start = next(i for i, ch in enumerate(base.text) if i >= len(base.text) // 3 and not ch.isspace())
    stop = base.text[start:start + 2]
    cut = backend.generate([chat("a", QUESTIONS[1], max_new_tokens=24, temperature=1.0, seed=3,
                                 stop=(stop,))])[0][0]
    assert cut.text == base.text[:base.text.find(stop)]
    assert cut.finish_reason == "stop"
    assert cut.completion_tokens < 24  # generation stopped early, not just truncated


def test_raw_prompt_and_system_prompt_policy(backend, tiny_model_dir):
    from meditune.generation.transformers_backend import TransformersBackend

    chat_text = backend.prompt_text(chat("c", "hello"))
    assert "SmolLM" not in chat_text  # the template's injected default is suppressed
    raw = GenerationRequest("r", prompt="The patient", params=SamplingParams(max_new_tokens=4))
    assert backend.prompt_text(raw) == "The patient"
    g = backend.generate([raw])[0][0]
    assert g.prompt_tokens == len(backend.tokenizer("The patient")["input_ids"])
    sys_backend = TransformersBackend(BackendConfig(model=str(tiny_model_dir), system_prompt="Be brief."),
                                      model=backend.model, tokenizer=backend.tokenizer)
    assert "Be brief." in sys_backend.prompt_text(chat("c", "hello"))


def test_invalid_requests_and_context_overflow(backend):
    with pytest.raises(ConfigError, match="request 'bad': n must be >= 1"):
        backend.generate([chat("bad", "x", n=0)])
    with pytest.raises(ConfigError, match="top_p"):
        backend.generate([chat("bad", "x", top_p=0)])
    with pytest.raises(ConfigError, match="messages or prompt"):
        backend.generate([GenerationRequest("empty")])
    long = GenerationRequest("long", prompt="word " * 1100, params=SamplingParams(max_new_tokens=4))
    out = backend.generate([long, chat("ok", "hi", max_new_tokens=2)])
    assert out[0][0].finish_reason == "error" and out[0][0].text == ""
    assert out[1][0].completion_tokens == 2
    assert backend.generate([]) == []


def test_helpers():
    assert truncate_at_stop("abc. def\nghi", ["\n", "."]) == ("abc", True)
    assert truncate_at_stop("abc", ["x"]) == ("abc", False)
    assert sample_seed(1, 0) != sample_seed(1, 1) != sample_seed(2, 0)
    assert sample_seed(1, 0) == sample_seed(1, 0) < 2 ** 63


@pytest.mark.slow
def test_default_model_answers_and_batches_like_alone():
    from meditune.generation import make_backend

    be = make_backend(BackendConfig(model="default", device="cpu", batch_size=4))
    reqs = [chat("fr", "What is the capital of France?", max_new_tokens=12),
            chat("bp", "In one sentence, what is hypertension?", max_new_tokens=12)]
    batched = be.generate(reqs)
    assert "Paris" in batched[0][0].text and batched[0][0].finish_reason == "stop"
    assert be.generate([reqs[1]])[0][0].text == batched[1][0].text
