"""The transformers backend's speed-ups change no numbers: MKL-packed linears and the preallocated KV cache."""

from __future__ import annotations

import pytest

from meditune.generation.kv_cache import preallocated_cache
from meditune.generation.packed_linear import PackedLinears, mkl_packing_available

needs_mkl = pytest.mark.skipif(not mkl_packing_available(), reason="torch built without MKL packed sgemm")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from meditune.models import load_model

    return load_model(str(tiny_model_dir), device="cpu", dtype="float32")


def batch_inputs(tokenizer, texts):
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return enc["input_ids"], enc["attention_mask"], pos


TEXTS = ["The patient has a fever", "Aspirin", "Chest pain radiating to the left arm since", "Hi"]


def decode(model, cache, ids, mask, pos, steps, drop_after=None):
    """Greedy prefill + `steps` decoding steps; returns every step's last-position logits."""
    import torch

    out = []
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                       use_cache=True).logits[:, -1]
        last = pos[:, -1]
        for step in range(steps):
            out.append(logits)
            nxt = logits.argmax(-1)
            if step == drop_after:  # rows 0 and 2 stay, as when the other rows finish
                sel = torch.tensor([0, 2])
                cache.batch_select_indices(sel)
                mask, last, nxt = mask[sel], last[sel], nxt[sel]
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=-1)
            last = last + 1
            logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None],
                           past_key_values=cache, use_cache=True).logits[:, -1]
    return out


def test_preallocated_cache_gives_the_dynamic_cache_logits(tiny):
    import torch
    from transformers import DynamicCache

    model, tok = tiny
    ids, mask, pos = batch_inputs(tok, TEXTS)
    ref = decode(model, DynamicCache(config=model.config), ids, mask, pos, 8, drop_after=3)
    # capacity too small on purpose for the second run: the layer must grow and stay exact
    for capacity in (ids.shape[1] + 8, ids.shape[1] + 2):
        cache = preallocated_cache(model.config, capacity)
        got = decode(model, cache, ids, mask, pos, 8, drop_after=3)
        assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
        assert cache.get_seq_length() == ids.shape[1] + 8
        assert type(cache.layers[0]).__name__ == "PreallocatedLayer"


@needs_mkl
def test_packed_linears_are_bit_identical_and_restored(tiny):
    import torch
    from transformers import DynamicCache

    model, tok = tiny
    ids, mask, pos = batch_inputs(tok, TEXTS)
    ref = decode(model, DynamicCache(config=model.config), ids, mask, pos, 6)
    packed = PackedLinears(model)
    assert packed.enabled and len(packed.layers) == 2 * 7 + 1  # q k v o gate up down per layer + LM head
    with packed.installed():
        packed.pack(len(TEXTS))
        assert all("forward" in layer.__dict__ for layer in packed.layers)
        assert len(packed.current) == len(packed.layers)  # a packed weight or None (inexact here) per layer
        got = decode(model, DynamicCache(config=model.config), ids, mask, pos, 6)
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
    assert not any("forward" in layer.__dict__ for layer in packed.layers)  # the model is plain again


@needs_mkl
def test_packed_linear_with_bias_and_other_row_counts():
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.ReLU(), torch.nn.Linear(96, 32, bias=False))
    packed = PackedLinears(net)
    with torch.inference_mode():
        for rows in (5, 1, 7):
            x = torch.randn(rows, 48)
            ref = net(x)
            with packed.installed():
                packed.pack(5)  # 1 and 7 rows take the plain fallback inside _mkl_linear
                got = net(x)
            assert torch.equal(ref, got)


def test_packing_is_skipped_for_large_or_non_float32_models():
    import torch

    net = torch.nn.Linear(64, 64)
    assert not PackedLinears(net, max_bytes=64 * 64 * 4 - 1).enabled
    assert not PackedLinears(net.to(torch.bfloat16)).enabled
    disabled = PackedLinears(net, max_bytes=0)
    with disabled.installed():
        disabled.pack(4)
        assert disabled.rows is None and "forward" not in net.__dict__


@needs_mkl
def test_packing_follows_weights_updated_in_place(tiny):
    """A weight changed after packing (an optimizer step between generate calls) must not use the old packing."""
    import copy

    import torch
    from transformers import DynamicCache

    model, tok = tiny
    model = copy.deepcopy(model)
    ids, mask, pos = batch_inputs(tok, TEXTS)
    packed = PackedLinears(model)
    with packed.installed():
        packed.pack(len(TEXTS))
    with torch.no_grad():
        for layer in packed.layers:
            layer.weight.mul_(1.5)  # in place, as an optimizer does
    ref = decode(model, DynamicCache(config=model.config), ids, mask, pos, 6)
    with packed.installed():
        packed.pack(len(TEXTS))
        got = decode(model, DynamicCache(config=model.config), ids, mask, pos, 6)
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
    assert len(packed._cache) == 1  # the stale packing was dropped
