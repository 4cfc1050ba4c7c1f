"""Merging from the CLI and in recipes, and LoRA adapters as merge inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from meditune.cli import main
from meditune.merging.config import parse_merge_config
from meditune.merging.merge import run_merge
from meditune.pipeline import Pipeline
from meditune.recipe import load_recipe


def load_dir(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def lora_adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter with non-zero B (so it changes the model) and peft's own merged weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def make(name: str, **kw):
        torch.manual_seed(1)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                         init_lora_weights=False, **kw)
        peft_model = get_peft_model(model, cfg)
        with torch.no_grad():
            for pname, param in peft_model.named_parameters():
                if "modules_to_save" in pname:
                    param += 0.1  # a trained copy differs from the base's module
        out = tmp_path_factory.mktemp(name)
        peft_model.save_pretrained(out)
        merged = {k: v.detach().clone() for k, v in peft_model.merge_and_unload().state_dict().items()}
        return out, merged

    return make


@pytest.mark.parametrize("kind", ["lora", "rslora", "dora"])
def test_lora_adapter_is_merged_into_its_base_first(lora_adapter, tiny_model_dir, tmp_path, kind):
    adapter, expected = lora_adapter(kind, use_rslora=kind == "rslora", use_dora=kind == "dora",
                                     modules_to_save=["model.norm"] if kind == "lora" else None)
    out = tmp_path / "out"
    run_merge(parse_merge_config({"merge_method": "linear", "models": [str(adapter)]}), out)
    got = load_dir(out)
    changed = 0
    for k, v in got.items():
        torch.testing.assert_close(v, expected[k], rtol=0, atol=1e-5)
        changed += "q_proj" in k
    assert changed == 2 and (out / "tokenizer.json").exists()
    if kind == "lora":  # the modules_to_save copy replaced the base's tensor
        base = load_dir(tiny_model_dir)["model.norm.weight"]
        torch.testing.assert_close(got["model.norm.weight"], base + 0.1)


def test_lora_with_base_in_task_arithmetic(lora_adapter, tiny_model_dir, tmp_path):
    adapter, expected = lora_adapter("lora-ta")
    out = tmp_path / "out"
    cfg = {"merge_method": "task_arithmetic", "base_model": str(tiny_model_dir),
           "models": [{"model": str(adapter), "parameters": {"weight": 0.5}}]}
    run_merge(parse_merge_config(cfg), out)
    base, got = load_dir(tiny_model_dir), load_dir(out)
    k = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(got[k], base[k] + 0.5 * (expected[k] - base[k]), rtol=0, atol=1e-6)


def test_cli_merge_and_errors(tiny_model_dir, tmp_path, capsys):
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(yaml.safe_dump({"merge_method": "linear", "models": [str(tiny_model_dir), str(tiny_model_dir)],
                                   "dtype": "bfloat16"}))
    out = tmp_path / "merged"
    assert main(["merge", str(cfg), "--out", str(out)]) == 0
    assert json.loads((out / "meditune_merge.json").read_text())["tensors"] > 0
    assert load_dir(out)["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert main(["merge", str(cfg), "--out", str(out)]) == 2  # exists: needs --force
    assert "--force" in capsys.readouterr().err
    assert main(["merge", str(cfg), "--out", str(out), "--force"]) == 0
    cfg.write_text("merge_method: linear\nmodels: [default]\nweights: 1\n")
    assert main(["merge", str(cfg), "--out", str(tmp_path / "x")]) == 2
    assert "unknown key 'weights'" in capsys.readouterr().err


def test_cli_merge_model_stock_and_a_della_range_error(tiny_model_dir, tmp_path, capsys):
    ft = shutil.copytree(tiny_model_dir, tmp_path / "ft")
    g = torch.Generator().manual_seed(0)
    tuned = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in load_dir(tiny_model_dir).items()}
    save_file(tuned, ft / "model.safetensors", metadata={"format": "pt"})
    twin = shutil.copytree(ft, tmp_path / "twin")
    cfg = tmp_path / "stock.yaml"
    cfg.write_text(yaml.safe_dump({"merge_method": "model_stock", "base_model": str(tiny_model_dir),
                                   "models": [str(ft), str(twin)], "parameters": {"filter_wise": True}}))
    out = tmp_path / "stock"
    assert main(["merge", str(cfg), "--out", str(out)]) == 0
    assert json.loads((out / "meditune_merge.json").read_text())["method"] == "model_stock"
    got = load_dir(out)
    for k, v in tuned.items():  # identical task vectors: cos 1, t = 2 cos / (1 + cos) = 1, the models' average
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6)
    cfg.write_text(yaml.safe_dump({"merge_method": "della", "base_model": str(tiny_model_dir), "models": [str(ft)],
                                   "parameters": {"density": 0.9, "epsilon": 0.15}}))
    assert main(["merge", str(cfg), "--out", str(tmp_path / "della")]) == 2
    err = capsys.readouterr().err
    assert "'epsilon' 0.15 with 'density' 0.9" in err and "Traceback" not in err
    assert not (tmp_path / "della").exists()


def test_merge_stage_in_a_recipe_with_stage_refs(tiny_model_dir, tmp_path):
    stages = [
        {"name": "avg", "type": "merge", "merge_method": "linear", "models": [str(tiny_model_dir)] * 2},
        {"name": "ta", "type": "merge", "method": "task_arithmetic",
         "models": [{"model": "@avg", "parameters": {"weight": 2.0}}]},
    ]
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump({"name": "m", "run_dir": str(tmp_path / "run"), "model": str(tiny_model_dir),
                                   "stages": stages}))
    recipe = load_recipe(rec)
    plan = Pipeline(recipe).plan()
    assert plan[1].estimate == {"method": "task_arithmetic", "models": 2}
    outs = Pipeline(recipe).run()
    ta = Path(outs["ta"]["model"])
    summary = json.loads((ta / "meditune_merge.json").read_text())
    assert summary["base_model"] == str(tiny_model_dir)  # the recipe's model is the default base
    base, got = load_dir(tiny_model_dir), load_dir(ta)
    for k in base:  # avg == base, so base + 2 * (avg - base) == base
        torch.testing.assert_close(got[k], base[k], rtol=0, atol=1e-6)
