"""Memory: one copy of a model's weights per process for its inference users, bounded packings, freed heap."""

from __future__ import annotations

import gc
import weakref

import pytest

from meditune.generation.base import BackendConfig, GenerationRequest, SamplingParams
from meditune.generation.factory import make_backend
from meditune.generation.packed_linear import PackedLinears
from meditune.models import load_model, load_shared_model, shared_keys


def backend(model_dir, **kw):
    return make_backend(BackendConfig(**{"model": str(model_dir), "device": "cpu", "dtype": "float32", **kw}))


def test_two_generators_on_the_same_model_spec_share_one_set_of_weights(tiny_model_dir):
    careful = backend(tiny_model_dir, system_prompt="Be careful.", name="careful", pack_weights=True)
    degraded = backend(tiny_model_dir, system_prompt="Be bold.", name="degraded", batch_size=4, pack_weights=True)
    assert careful.model is degraded.model
    assert {p.data_ptr() for p in careful.model.parameters()} == {p.data_ptr() for p in degraded.model.parameters()}
    assert careful.packed_linears is not None and careful.packed_linears is degraded.packed_linears  # one set
    # the spec written another way (a trailing slash) is the same weights
    again = load_shared_model(str(tiny_model_dir) + "/", device="cpu", dtype="float32")[0]
    assert again is careful.model
    # another dtype is another copy
    half = backend(tiny_model_dir, dtype="bfloat16")
    assert half.model is not careful.model
    # the weights go with their last user
    ref = weakref.ref(careful.model)
    del careful, degraded, again, half
    gc.collect()
    # (the tokenizer may live on in other caches, e.g. chat's template probe: it is small; the weights are not)
    assert ref() is None and not [k for k in shared_keys() if k[0] == "causal-lm" and str(tiny_model_dir) in str(k)]


def test_shared_weights_generate_what_a_private_copy_generates(tiny_model_dir):
    req = [GenerationRequest("q", [{"role": "user", "content": "What lowers fever?"}],
                             SamplingParams(temperature=0.8, max_new_tokens=6, n=2, seed=3))]
    shared_out = [g.text for g in backend(tiny_model_dir).generate(req)[0]]
    model, tok = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    private = make_backend(BackendConfig(model=str(tiny_model_dir), device="cpu", dtype="float32"), model=model,
                           tokenizer=tok)
    assert private.model is not backend(tiny_model_dir).model
    assert [g.text for g in private.generate(req)[0]] == shared_out


def test_judge_and_generator_on_one_model_share_it(tiny_model_dir):
    from meditune.scoring.registry import default_backend_factory

    backends = default_backend_factory()
    gen = backends(BackendConfig(model=str(tiny_model_dir), device="cpu", dtype="float32", name="gen"))
    judge = backends(BackendConfig(model=str(tiny_model_dir), device="cpu", dtype="float32", name="judge",
                                   system_prompt="You are a strict judge.", batch_size=8))
    assert gen is not judge and gen.model is judge.model


def test_packings_kept_are_bounded_and_inexact_row_counts_cost_nothing(monkeypatch):
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    packed = PackedLinears(net, max_packings=1)
    packed.enabled = True  # the bookkeeping is what is tested: packing itself is faked
    built = []

    def fake_pack(rows, make_room):  # rows >= 4 pack exactly (hold memory); fewer rows never do
        built.append(rows)
        if rows < 4:
            return [None, None]
        make_room()
        return [object(), None]

    monkeypatch.setattr(packed, "_pack", fake_pack)
    for rows in (16, 3, 16, 8, 3, 2, 8):
        packed.pack(rows)
        assert packed.packings_held() <= 1
    # 16 stays while an inexact count (3) is used; 8 replaces 16; 3 is remembered; 8 is still held at the end
    assert built == [16, 3, 8, 2]
    two = PackedLinears(net, max_packings=2)
    two.enabled = True
    monkeypatch.setattr(two, "_pack", fake_pack)
    built.clear()
    for rows in (16, 8, 16, 4, 16):
        two.pack(rows)
    assert built == [16, 8, 4] and two.packings_held() == 2


def test_release_stage_memory_returns_freed_heap_to_the_os():
    from meditune.cost import current_rss_mb
    from meditune.memory import glibc, release_stage_memory, training_allocator, user_tunes_malloc

    if glibc() is None or current_rss_mb() is None or user_tunes_malloc():
        pytest.skip("needs glibc, /proc and the default allocator settings")
    release_stage_memory()  # free pages earlier work left in the heap would be reused without raising RSS
    with training_allocator() as on:
        assert on
        before = current_rss_mb()
        blocks = [bytearray(b"\x01" * (8 << 20)) for _ in range(30)]  # 240 MiB from the heap (no mmap now)
        held = current_rss_mb()
        del blocks
        gc.collect()
        kept = current_rss_mb()  # trimming is off while training: the heap keeps the pages
    assert held - before > 200 and kept - before > 150
    release_stage_memory()
    assert current_rss_mb() - before < 60


def test_an_embedder_built_per_call_loads_its_model_once_per_stage(monkeypatch, tmp_path):
    import sentence_transformers

    from meditune import embeddings
    from meditune.memory import release_stage_memory

    loads = []

    class FakeSentenceModel:
        def __init__(self, path, **kw):
            loads.append(path)

        def encode(self, texts, **kw):
            return [[1.0, 0.0] for _ in texts]

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", FakeSentenceModel)
    for _ in range(3):  # as the refusal classifier does: a new Embedder on each call
        embeddings.Embedder(str(tmp_path))(["a fact"])
    assert len(loads) == 1
    release_stage_memory()  # the stage ends: nobody holds the model any more
    assert not [k for k in shared_keys() if str(tmp_path) in str(k)]
    embeddings.Embedder(str(tmp_path))(["a fact"])
    assert len(loads) == 2


def test_weight_packing_is_opt_in_and_changes_no_output(tiny_model_dir):
    """Packing costs a copy of the weights per row count (docs/cost.md), so a backend packs only when asked; the
    answers are the same either way."""
    plain = backend(tiny_model_dir)
    assert plain.packed_linears is None
    reqs = [GenerationRequest(id=f"r{i}", prompt=p, params=SamplingParams(max_new_tokens=6, temperature=0.0))
            for i, p in enumerate(["The heart", "Aspirin is", "A fever of 39 C in a child"])]
    packed = backend(tiny_model_dir, pack_weights=True)
    assert packed.packed_linears is not None
    assert [g[0].text for g in plain.generate(reqs)] == [g[0].text for g in packed.generate(reqs)]
