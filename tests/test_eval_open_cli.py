"""`meditune eval open|ner|safety|...` on the tiny model: real backend, resumable generation, CLI errors."""

from __future__ import annotations

import pytest

from meditune.cli import main
from meditune.io import read_json


def test_cli_ner_and_safety_on_tiny_model_resume_without_regenerating(tmp_path, tiny_model_dir, monkeypatch,
                                                                      capsys):
    out = tmp_path / "ner"
    args = ["eval", "ner", "sample:ner", "--model", str(tiny_model_dir), "--out", str(out), "--limit", "3",
            "--max-new-tokens", "6", "--device", "cpu", "--dtype", "float32"]
    assert main(args) == 0
    res = read_json(out / "results.json")
    assert res["meditune"]["n"] == 3 and "micro_f1" in res["meditune"]["metrics"]
    first = (out / "samples.jsonl").read_text(encoding="utf-8")
    # A second run reuses the generations on disk: building a backend again would fail.
    import meditune.generation.factory as factory

    monkeypatch.setattr(factory, "make_backend", lambda *a, **k: pytest.fail("regenerated"))
    assert main(args) == 0
    assert (out / "samples.jsonl").read_text(encoding="utf-8") == first
    monkeypatch.undo()
    out2 = tmp_path / "safety"
    assert main(["eval", "safety", "sample:safety", "--model", str(tiny_model_dir), "--out", str(out2), "--limit", "2",
                 "--benign-limit", "2", "--max-new-tokens", "4", "--device", "cpu", "--dtype", "float32"]) == 0
    med = read_json(out2 / "results.json")["meditune"]
    assert med["n_harmful"] == 2 and med["n_benign"] == 2 and "over_refusal" in med["metrics"]
    assert "over_refusal" in capsys.readouterr().out


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["eval", "ner", "sample:safety", "--out", str(tmp_path / "a")]) == 2
    assert "SafetyItem" in capsys.readouterr().err
    assert main(["eval", "bias", "--out", str(tmp_path / "b"), "--set", "max_new_tokens=0"]) == 2
    assert "max-new-tokens" in capsys.readouterr().err
    assert main(["eval", "pairwise", "sample:longform", "--system", "only-one", "--out", str(tmp_path / "c")]) == 2
    assert "two systems" in capsys.readouterr().err
    assert main(["eval", "toxicity", "sample:corpus", "--out", str(tmp_path / "d")]) == 2
    assert "judge" in capsys.readouterr().err


def test_eval_bias_stage_runs_with_recipe_model(tmp_path, tiny_model_dir):
    from meditune.recipe import Recipe
    from meditune.stages import StageContext, registry

    st = registry()["eval_bias"]
    cfg = st.config(name="bias", type="eval_bias", limit=2, groups=["elderly"], max_new_tokens=3)
    recipe = Recipe(name="r", model=str(tiny_model_dir), device="cpu", dtype="float32")
    ctx = StageContext(run_dir=tmp_path, stage_dir=tmp_path / "bias", recipe=recipe)
    outputs = st.run(cfg, ctx)
    assert list(outputs) == ["results", "samples"]
    res = read_json(outputs["results"])
    assert "bias" in res["results"] and res["config"]["model"] == str(tiny_model_dir)
    assert res["meditune"]["variants"] == 4  # 2 slot statements x (neutral + elderly)


def _classifier_dir(tmp_path, tiny_model_dir, labels):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=2, id2label=labels,
                      label2id={v: k for k, v in labels.items()}, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    out = tmp_path / f"clf-{'-'.join(labels.values())}"
    LlamaForSequenceClassification(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def test_toxicity_with_local_classifier(tmp_path, tiny_model_dir):
    from meditune.errors import ConfigError
    from meditune.evaluation.results import load_samples
    from meditune.evaluation.toxicity import ToxicityOptions, evaluate_toxicity
    from meditune.generation.base import ScriptedBackend

    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "hate_women_1k.txt").write_text("- a\\n- b\\n-\n- c\\n-\n")
    clf = _classifier_dir(tmp_path, tiny_model_dir, {0: "neutral", 1: "toxic"})
    gen = ScriptedBackend(lambda r, i: " some continuation")
    paths = evaluate_toxicity(ToxicityOptions(data=f"toxigen:{prompts}", classifier=str(clf), threshold=0.5),
                              tmp_path / "o", backend=gen)
    samples = load_samples(paths["results"])
    assert len(samples) == 2
    for s in samples:
        assert 0 <= s["p_toxic"] <= 1 and s["metrics"]["toxic"] == float(s["p_toxic"] >= 0.5)
    bad = _classifier_dir(tmp_path, tiny_model_dir, {0: "negative", 1: "positive"})
    with pytest.raises(ConfigError, match="no label looks toxic"):
        evaluate_toxicity(ToxicityOptions(data=f"toxigen:{prompts}", classifier=str(bad)), tmp_path / "p",
                          backend=gen)
