"""SFT then DPO on the real default model (SmolLM2-135M-Instruct), a few LoRA steps each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meditune.recipe import Recipe
from meditune.stages import StageContext
from meditune.training.toy import write_toy


@pytest.mark.slow
def test_sft_then_dpo_on_default_model(tmp_path, default_model_dir):
    from meditune.chat import render_chat
    from meditune.models import load_model
    from meditune.training.dpo import DPOStageConfig, train_dpo
    from meditune.training.sft import SFTStageConfig, train_sft

    chats, prefs = write_toy(tmp_path / "data", 8)
    recipe = Recipe(name="it", model="default")
    common = dict(batch_size=4, max_steps=3, max_length=64, device="cpu", learning_rate=1e-3)
    sft = train_sft(SFTStageConfig(name="sft", type="sft", data=str(chats), **common),
                    StageContext(tmp_path, tmp_path / "sft", recipe))
    ls = json.loads(Path(sft["summary"]).read_text())["metrics"]
    assert ls["last_loss"] < ls["first_loss"]
    dpo = train_dpo(DPOStageConfig(name="dpo", type="dpo", data=str(prefs), model=sft["model"], **common),
                    StageContext(tmp_path, tmp_path / "dpo", recipe))
    m = json.loads(Path(dpo["summary"]).read_text())["metrics"]
    assert m["first_loss"] == pytest.approx(0.6931, abs=0.01) and m["last_loss"] < m["first_loss"]
    model, tok = load_model(dpo["model"], device="cpu")  # adapter on the merged SFT model
    ids = tok(render_chat(tok, [{"role": "user", "content": "What dose for fever?"}]), return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
