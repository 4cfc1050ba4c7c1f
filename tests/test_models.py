"""Model resolution: the embedded default (GGUF -> cached safetensors), local dirs, adapters, hub ids; chat policy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from meditune.chat import MODEL_DEFAULT, render_chat
from meditune.errors import ConfigError
from meditune.models import load_model, load_tokenizer, pick_dtype, resolve


def test_default_resolves_to_cached_safetensors(default_model_dir):
    rm = resolve("default")
    assert rm.kind == "default" and (default_model_dir / "model.safetensors").exists()
    src = json.loads((default_model_dir / "meditune_source.json").read_text())
    assert src["gguf"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and len(src["sha256"]) == 64
    assert "chat_template" in (default_model_dir / "tokenizer_config.json").read_text() or \
        (default_model_dir / "chat_template.jinja").exists()
    assert not list(default_model_dir.glob("*.bin"))  # safetensors only


def test_local_dir_and_errors(tmp_path, tiny_model_dir):
    assert resolve(str(tiny_model_dir)).kind == "local"
    with pytest.raises(ConfigError, match="no config.json"):
        resolve(str(tmp_path))
    with pytest.raises(ConfigError, match="GGUF file not found"):
        resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(ConfigError, match="cannot resolve"):
        resolve("not a model")


def test_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rm = resolve("some-org/not-cached-model")
    assert rm.kind == "hub"
    with pytest.raises(ConfigError, match="models pull some-org/not-cached-model"):
        load_model(rm)


def test_adapter_dir_resolves_its_base(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    (adapter / "meditune_base.json").write_text(json.dumps({"base": str(tiny_model_dir)}))
    rm = resolve(str(adapter))
    assert rm.kind == "adapter" and rm.base.path == str(tiny_model_dir)
    merged, tok = load_model(rm, device="cpu")
    plain, _ = load_model(str(tiny_model_dir), device="cpu")
    q_merged = merged.model.layers[0].self_attn.q_proj.weight
    q_plain = plain.model.layers[0].self_attn.q_proj.weight
    assert q_merged.shape == q_plain.shape and not bool((q_merged == q_plain).all())
    assert tok.pad_token is not None


def test_dtype_choice():
    import torch

    assert pick_dtype("auto", "cpu") == torch.float32
    assert pick_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ConfigError, match="unknown dtype"):
        pick_dtype("int3", "cpu")


def test_system_prompt_policy(default_model_dir):
    tok = load_tokenizer(str(default_model_dir))
    msgs = [{"role": "user", "content": "What is hypertension?"}]
    assert "SmolLM" in render_chat(tok, msgs, system_prompt=MODEL_DEFAULT)  # the template's own default
    none = render_chat(tok, msgs, system_prompt=None)
    assert "SmolLM" not in none and none.startswith("<|im_start|>system\n<|im_end|>")
    custom = render_chat(tok, msgs, system_prompt="You are a careful physician.")
    assert "You are a careful physician." in custom and "SmolLM" not in custom
    explicit = [{"role": "system", "content": "S"}, *msgs]
    assert render_chat(tok, explicit, system_prompt="ignored").count("<|im_start|>system") == 1


@pytest.mark.slow
def test_gguf_file_spec_converts_into_cache(tmp_path, monkeypatch):
    from meditune.models import default_gguf_path

    monkeypatch.setenv("MEDITUNE_CACHE", str(tmp_path / "cache"))
    rm = resolve(str(default_gguf_path()))
    assert rm.kind == "gguf" and (tmp_path / "cache" / "models").is_dir()
    assert resolve(str(default_gguf_path())).path == rm.path  # second time: from the cache


@pytest.mark.slow
def test_cli_models_show_default():
    r = subprocess.run([sys.executable, "-m", "meditune.cli", "models", "show", "default"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "LlamaForCausalLM" in r.stdout and "134,515,008" in r.stdout and "134.5M" in r.stdout
    assert "im_start" in r.stdout  # the chat template


@pytest.mark.slow
def test_cli_chat_answers(tmp_path):
    r = subprocess.run([sys.executable, "-m", "meditune.cli", "chat", "default", "--max-new-tokens", "24"],
                       input="What organ pumps blood?\n/exit\n", capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    reply = r.stdout.split("model>", 1)[1].strip()
    assert len(reply.split()) >= 3
