"""DPO pairs packed as one row per pair (training/shared_prompt.py): same log-probs and gradients as TRL's
[chosen; rejected] rows, fewer tokens, and a fallback for batches that are not pairs."""

from __future__ import annotations

import pytest
import torch

from meditune.training.shared_prompt import pack_pairs, shared_prompt_forward

FIELDS = ("log_probs", "entropy", "mean_logits", "is_top1", "label_mask")


@pytest.fixture(scope="module")
def lora_model():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    # a non-zero adapter, so the gradients reach LoRA weights through every path
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                            init_lora_weights=False))


def pair_batch(prompts: list[int], chosen: list[int], rejected: list[int], length: int, same_prompt: bool = True):
    """TRL's DPO layout: rows [chosen_1..B, rejected_1..B], each prompt + completion flushed left and padded."""
    b = len(prompts)
    ids = torch.zeros(2 * b, length, dtype=torch.long)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for i in range(b):
        prompt = torch.randint(1, 300, (prompts[i],))
        for row, n in ((i, chosen[i]), (b + i, rejected[i])):
            p = prompt if same_prompt or row < b else torch.randint(1, 300, (prompts[i],))
            full = torch.cat([p, torch.randint(1, 300, (n,))])[:length]
            ids[row, :len(full)], mask[row, :len(full)] = full, 1
            labels[row, prompts[i]:len(full)] = full[prompts[i]:]
    return ids, mask, labels


def forward_and_grads(model, ids, mask, labels):
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, use_cache=False)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.log_probs.sum() + 0.1 * out.entropy.sum(), params)
    return out, grads


def test_packed_pairs_give_the_same_log_probs_and_gradients(lora_model):
    torch.manual_seed(1)
    # one pair is cut by the row length (max_length truncation), one has a longer rejected than chosen answer
    ids, mask, labels = pair_batch([5, 7, 3], [6, 10, 2], [9, 4, 14], length=16)
    base = lora_model.get_base_model()
    plain = base.forward
    ref, ref_grads = forward_and_grads(lora_model, ids, mask, labels)
    base.forward = packed_forward = shared_prompt_forward(plain)
    try:
        out, grads = forward_and_grads(lora_model, ids, mask, labels)  # through PEFT, as TRL calls it
    finally:
        base.forward = plain
    assert packed_forward.packed_calls == 1
    for name in FIELDS:
        assert getattr(out, name).shape == getattr(ref, name).shape == (6, 15)
        torch.testing.assert_close(getattr(out, name).float(), getattr(ref, name).float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)
    packed = pack_pairs(ids, mask, labels)
    # each pair is prompt + chosen + 1 + rejected tokens instead of two rows that both hold the prompt
    assert packed.input_ids.shape == (3, 7 + 9 + 1 + 4)
    assert int((packed.labels != -100).sum()) == int((labels != -100).sum())


def test_pairs_without_a_shared_prompt_run_unpacked(lora_model):
    torch.manual_seed(2)
    ids, mask, labels = pair_batch([4, 6], [5, 3], [2, 7], length=14, same_prompt=False)
    assert pack_pairs(ids, mask, labels) is None
    assert pack_pairs(ids[:3], mask[:3], labels[:3]) is None  # an odd number of rows is no pair batch
    base = lora_model.get_base_model()
    plain = base.forward
    ref = plain(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    packed_forward = shared_prompt_forward(plain)
    out = packed_forward(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    torch.testing.assert_close(out.log_probs, ref.log_probs)
    assert packed_forward.packed_calls == 0


def test_dpo_trainer_runs_pairs_packed(tmp_path, tiny_model_dir):
    from meditune.recipe import Recipe
    from meditune.stages import StageContext
    from meditune.training.common import load_causal_lm, settings
    from meditune.training.dpo import DPOStageConfig, build_dpo_trainer, preference_rows
    from meditune.training.outputs import CurvesCallback
    from meditune.training.toy import toy_preferences

    ctx = StageContext(tmp_path, tmp_path / "dpo", Recipe(name="t", model=str(tiny_model_dir)))
    cfg = DPOStageConfig(name="dpo", type="dpo", data="-", batch_size=4, max_length=64, device="cpu", max_steps=1)
    s = settings(cfg, ctx.recipe)
    model, tok = load_causal_lm(str(tiny_model_dir), s)
    rows = preference_rows(toy_preferences(4), tok, None)
    trainer = build_dpo_trainer(cfg, s, ctx, model, tok, rows, [], CurvesCallback(tmp_path))
    forward = trainer.model.get_base_model().forward
    assert forward.meditune_shared_prompt and forward.packed_calls == 1  # the reference pass over 4 pairs
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    assert pack_pairs(batch["input_ids"], batch["attention_mask"], labels) is not None
    # the reference log-probs were precomputed packed; they match an unpacked reference pass
    with torch.no_grad(), trainer.model.disable_adapter():
        unpacked = forward.unpacked(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    labels=labels, fused_lm_head=True).log_probs.sum(dim=1)
    expected = torch.tensor([trainer.train_dataset[i]["ref_chosen_logps"] for i in range(4)] +
                            [trainer.train_dataset[i]["ref_rejected_logps"] for i in range(4)])
    torch.testing.assert_close(unpacked, expected, atol=1e-4, rtol=1e-5)
