"""CPU tiling of TRL's fused LM head (training/lm_head.py): the TRL internals it sets exist in the pinned TRL,
and tiles smaller than the batch plus label-only scoring give the same log-probs and gradients."""

from __future__ import annotations

import torch

from meditune.training import lm_head


def fused_outputs(model, ids, labels):
    out = model(input_ids=ids, labels=labels, fused_lm_head=True, use_cache=False)
    grads = torch.autograd.grad(out.log_probs.sum() + 0.1 * out.entropy.sum(), list(model.parameters()))
    return out, grads


def test_cpu_tiles_give_the_same_log_probs_and_gradients(monkeypatch):
    import trl.kernels.chunked_logprob as kernel
    import trl.trainer.utils as utils
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    ids = torch.randint(0, 300, (3, 20))
    labels = ids.masked_fill(torch.arange(20) < 8, -100)  # a prompt part without labels
    ref, ref_grads = fused_outputs(model, ids, labels)
    for module, name in ((kernel, "TOKEN_CHUNK_SIZE"), (utils, "_CHUNKED_LOGPROB_CHUNK_SIZE"), (utils, "_use_triton")):
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    monkeypatch.setattr(lm_head, "_applied", [])
    monkeypatch.setattr(lm_head, "CPU_TOKEN_TILE", 16)  # 36 labelled tokens: 3 token tiles
    monkeypatch.setattr(lm_head, "CPU_VOCAB_TILE", 128)  # 300 columns: 3 vocabulary tiles
    assert lm_head.tune_for_cpu()  # the TRL names it sets are all there
    assert kernel.TOKEN_CHUNK_SIZE == 16 and utils._CHUNKED_LOGPROB_CHUNK_SIZE == 128
    assert utils._use_triton(torch.device("cpu"))  # label-only scoring on CPU
    out, grads = fused_outputs(model, ids, labels)
    for name in ("log_probs", "entropy", "mean_logits", "is_top1"):
        torch.testing.assert_close(getattr(out, name).float(), getattr(ref, name).float(), atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


def test_dpo_checkpoints_every_third_layer_by_default(tmp_path):
    from meditune.recipe import Recipe
    from meditune.training.common import settings, trainer_kwargs
    from meditune.training.dpo import DPOStageConfig
    from meditune.training.sft import SFTStageConfig

    recipe = Recipe(name="t", model="default")
    dpo = DPOStageConfig(name="d", type="dpo", data="-", device="cpu")
    kw = trainer_kwargs(dpo, settings(dpo, recipe), tmp_path, default_lr=1e-5)
    assert kw["activation_checkpointing"] and kw["activation_checkpointing_kwargs"] == {"every_n_layers": 3}
    sft = SFTStageConfig(name="s", type="sft", data="-", device="cpu")
    kw = trainer_kwargs(sft, settings(sft, recipe), tmp_path, default_lr=1e-5)
    assert not kw["activation_checkpointing"] and kw["activation_checkpointing_kwargs"] is None
