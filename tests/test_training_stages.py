"""Every training stage on the tiny random model: a toy task it can learn, outputs on disk, loadable models."""

from __future__ import annotations

import csv
import gc
import json
from pathlib import Path

import pytest

from meditune.recipe import Recipe
from meditune.stages import StageContext
from meditune.training.toy import write_toy

FAST = dict(batch_size=4, device="cpu", logging_steps=1, max_length=64)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy(tmp_path_factory.mktemp("toy"), 16)


def ctx_for(tmp_path: Path, model: Path, name: str) -> StageContext:
    return StageContext(run_dir=tmp_path, stage_dir=tmp_path / name, recipe=Recipe(name="t", model=str(model)))


def losses(stage_dir: Path, key: str = "loss") -> list[float]:
    with open(stage_dir / "curves.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def assert_learned(stage_dir: Path, min_drop: float, key: str = "loss") -> None:
    ls = losses(stage_dir, key)
    assert len(ls) >= 4
    assert sum(ls[:2]) / 2 - sum(ls[-2:]) / 2 > min_drop, ls  # the toy task is being learned


def assert_saved(model_dir: str, lora: bool) -> None:
    d = Path(model_dir)
    assert (d / ("adapter_model.safetensors" if lora else "model.safetensors")).exists()
    assert not list(d.glob("*.bin")) and not list(d.glob("*.pt"))  # safetensors only
    assert "{%" in json.loads((d / "tokenizer_config.json").read_text()).get("chat_template", "") or \
        (d / "chat_template.jinja").exists()
    assert "Intended use" in (d / "README.md").read_text()
    if lora:
        assert json.loads((d / "meditune_base.json").read_text())["base"]
    assert list((d.parent / "tensorboard").glob("events.*"))


def test_sft_lora_learns_and_saves_loadable_adapter(tmp_path, tiny_model_dir, toy):
    from meditune.models import load_model
    from meditune.training.sft import SFTStageConfig, train_sft

    cfg = SFTStageConfig(name="sft", type="sft", data=str(toy[0]), max_steps=8, learning_rate=1e-2, save_merged=True,
                         **FAST)
    outs = train_sft(cfg, ctx_for(tmp_path, tiny_model_dir, "sft"))
    assert_learned(tmp_path / "sft", 0.5)
    assert_saved(outs["model"], lora=True)
    assert (Path(outs["merged"]) / "model.safetensors").exists()
    model, tok = load_model(outs["model"], device="cpu")  # meditune_base.json finds the base
    assert model.config.num_hidden_layers == 2 and tok.chat_template
    summary = json.loads(Path(outs["summary"]).read_text())
    assert summary["steps"] == 8 and summary["world_size"] == 1 and summary["train_examples"] == 16


def test_sft_full_with_packing_and_general_mix(tmp_path, tiny_model_dir, toy):
    from meditune.records import Chat, Message, write_records
    from meditune.training.sft import SFTStageConfig, train_sft

    general = tmp_path / "general.jsonl"
    write_records(general, [Chat(id=f"g{i}", messages=[Message(role="user", content=f"Say {i}"),
                                                      Message(role="assistant", content=f"{i}")])
                            for i in range(10)])
    cfg = SFTStageConfig(name="sft", type="sft", data=str(toy[0]), method="full", packing=True, max_steps=6,
                         learning_rate=3e-3, general_data=str(general), general_ratio=0.2, **FAST)
    outs = train_sft(cfg, ctx_for(tmp_path, tiny_model_dir, "sft"))
    assert json.loads(Path(outs["summary"]).read_text())["train_examples"] == 20  # 16 + 4 general (20 %)
    assert_learned(tmp_path / "sft", 1.0)
    assert_saved(outs["model"], lora=False)


def test_cpt_packs_raw_text_and_learns(tmp_path, tiny_model_dir):
    from meditune.training.cpt import CPTStageConfig, train_cpt

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join("Hypertension is high blood pressure." for _ in range(40)))
    cfg = CPTStageConfig(name="cpt", type="cpt", data=str(corpus), max_steps=6, learning_rate=3e-3, **FAST)
    outs = train_cpt(cfg, ctx_for(tmp_path, tiny_model_dir, "cpt"))
    assert_learned(tmp_path / "cpt", 1.0)
    assert_saved(outs["model"], lora=False)


def _causal_lms_alive() -> list:
    from transformers import PreTrainedModel

    gc.collect()  # whole causal LMs only (their inner LlamaModel is a PreTrainedModel too)
    return [o for o in gc.get_objects() if isinstance(o, PreTrainedModel) and type(o).__name__.endswith("ForCausalLM")]


def test_dpo_lora_has_no_reference_copy_and_learns(tmp_path, tiny_model_dir, toy):
    from meditune.training.common import load_causal_lm, settings
    from meditune.training.data import PREF_KINDS, load_records
    from meditune.training.dpo import DPOStageConfig, build_dpo_trainer, preference_rows, train_dpo
    from meditune.training.outputs import CurvesCallback

    cfg = DPOStageConfig(name="dpo", type="dpo", data=str(toy[1]), max_steps=6, learning_rate=1e-2, **FAST)
    ctx = ctx_for(tmp_path, tiny_model_dir, "probe")
    s = settings(cfg, ctx.recipe)
    before = len(_causal_lms_alive())
    model, tok = load_causal_lm(str(tiny_model_dir), s)
    n_params = sum(p.numel() for p in model.parameters())
    rows = preference_rows(load_records(str(toy[1]), PREF_KINDS), tok, None)
    trainer = build_dpo_trainer(cfg, s, ctx, model, tok, rows, [], CurvesCallback(tmp_path))
    assert trainer.ref_model is None  # the reference is the policy with its adapter disabled
    alive = _causal_lms_alive()
    assert len(alive) - before == 1  # one full model in memory, not two
    in_memory = {id(p): p.numel() for m in alive for p in m.parameters()}
    assert sum(in_memory.values()) < 1.1 * n_params  # base + small LoRA, no second copy of the weights
    del trainer, model
    outs = train_dpo(cfg, ctx_for(tmp_path, tiny_model_dir, "dpo"))
    ls = losses(tmp_path / "dpo")
    assert abs(ls[0] - 0.6931) < 0.01 and ls[-1] < 0.5, ls  # starts at log 2 (policy == reference), then learns
    assert_saved(outs["model"], lora=True)


def test_dpo_full_precomputes_reference(tmp_path, tiny_model_dir, toy):
    from meditune.training.dpo import DPOStageConfig, train_dpo

    cfg = DPOStageConfig(name="dpo", type="dpo", data=str(toy[1]), method="full", max_steps=6, learning_rate=1e-3,
                         beta=0.2, loss_type="ipo", **FAST)
    outs = train_dpo(cfg, ctx_for(tmp_path, tiny_model_dir, "dpo"))
    assert_learned(tmp_path / "dpo", 0.05)
    assert_saved(outs["model"], lora=False)


def test_multistage_dpo_chains_parts(tmp_path, tiny_model_dir, toy):
    from meditune.models import resolve
    from meditune.training.dpo import DPOStageConfig
    from meditune.training.stage import run_dpo

    cfg = DPOStageConfig(name="dpo", type="dpo", data=[str(toy[1]), str(toy[1])], max_steps=2, learning_rate=1e-2,
                         **FAST)
    outs = run_dpo(cfg, ctx_for(tmp_path, tiny_model_dir, "dpo"))
    parts = json.loads(Path(outs["results"]).read_text())["multi_stage"]
    assert [p["part"] for p in parts] == [1, 2]
    assert resolve(outs["model"]).base.path == str(tmp_path / "dpo" / "part_1" / "merged")  # part 2 starts at 1


def test_orpo_learns(tmp_path, tiny_model_dir, toy):
    from meditune.training.orpo import ORPOStageConfig, train_orpo

    cfg = ORPOStageConfig(name="orpo", type="orpo", data=str(toy[1]), method="full", max_steps=6, learning_rate=3e-3,
                          **FAST)
    outs = train_orpo(cfg, ctx_for(tmp_path, tiny_model_dir, "orpo"))
    assert_learned(tmp_path / "orpo", 0.5)
    assert_saved(outs["model"], lora=False)


def test_rm_reports_heldout_pairwise_accuracy(tmp_path, tiny_model_dir, toy):
    from meditune.scoring.reward import RewardScorer
    from meditune.training.rm import RMStageConfig, train_rm

    cfg = RMStageConfig(name="rm", type="rm", data=str(toy[1]), method="full", max_steps=6, learning_rate=1e-3,
                        eval_fraction=0.25,
                        **FAST)
    outs = train_rm(cfg, ctx_for(tmp_path, tiny_model_dir, "rm"))
    assert_learned(tmp_path / "rm", 0.1)
    acc = json.loads(Path(outs["results"]).read_text())["heldout"]
    assert acc["n"] == 4 and acc["value"] == 1.0 and acc["ci95"][0] > 0.3 and acc["protocol"]
    scorer = RewardScorer(outs["model"], device="cpu")
    good, bad = scorer([[{"role": "user", "content": "What dose for fever?"}]] * 2,
                       ["Please ask a doctor.", "Take ten pills now."])
    assert good > bad


def _length_score(items, responses):
    return [float(len(r)) for r in responses]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    return write_toy(tmp_path_factory.mktemp("prompts"), 8)[0]


def test_rs_rounds_keep_top_k_and_chain_models(tmp_path, tiny_model_dir, prompts):
    from meditune.models import load_model
    from meditune.training.rs import RSStageConfig, train_rs

    cfg = RSStageConfig(name="rs", type="rs", data=str(prompts), k=3, top_k=1, rounds=2, max_new_tokens=4,
                        max_steps=2, learning_rate=1e-2, **FAST)
    outs = train_rs(cfg, ctx_for(tmp_path, tiny_model_dir, "rs"), score_fn=_length_score)
    res = json.loads(Path(outs["results"]).read_text())["rounds"]
    assert [r["selected"] for r in res] == [8, 8]
    for r in (tmp_path / "rs" / "round_1" / "rollouts.jsonl").read_text().splitlines():
        row = json.loads(r)
        assert len(row["responses"]) == 3
    sel = [json.loads(x) for x in (tmp_path / "rs" / "round_1" / "selected.jsonl").read_text().splitlines()]
    assert all(s["meta"]["score"] == max(_length_score(None, json.loads(r)["responses"])) for s, r in
               zip(sel, (tmp_path / "rs" / "round_1" / "rollouts.jsonl").read_text().splitlines(), strict=True))
    load_model(outs["model"], device="cpu")  # round 2's adapter sits on round 1's merged model


def test_idpo_pairs_best_vs_worst_per_round(tmp_path, tiny_model_dir, prompts):
    from meditune.training.idpo import IDPOStageConfig, train_idpo

    cfg = IDPOStageConfig(name="idpo", type="idpo", data=str(prompts), n=3, rounds=2, max_new_tokens=4,
                          max_steps=2, learning_rate=1e-2, **FAST)
    outs = train_idpo(cfg, ctx_for(tmp_path, tiny_model_dir, "idpo"), score_fn=_length_score)
    pairs = [json.loads(x) for x in Path(outs["dataset"]).read_text().splitlines()]
    assert pairs and all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    assert {p["provenance"]["round"] for p in pairs} == {1, 2}
    assert (tmp_path / "idpo" / "round_1" / "merged" / "model.safetensors").exists()


def test_killed_run_resumes_from_checkpoint(tmp_path, tiny_model_dir, toy, monkeypatch):
    from meditune.training.outputs import CurveLog
    from meditune.training.sft import SFTStageConfig, train_sft

    def killed_at_step_3(self, args, state, control, **kw):
        if state.global_step == 3:
            raise KeyboardInterrupt("killed")

    cfg = SFTStageConfig(name="sft", type="sft", data=str(toy[0]), max_steps=4, save_steps=2, learning_rate=1e-3,
                         **FAST)
    monkeypatch.setattr(CurveLog, "on_step_end", killed_at_step_3, raising=False)
    with pytest.raises(KeyboardInterrupt):
        train_sft(cfg, ctx_for(tmp_path, tiny_model_dir, "sft"))
    assert (tmp_path / "sft" / "checkpoints" / "checkpoint-2").is_dir()
    monkeypatch.undo()
    outs = train_sft(cfg, ctx_for(tmp_path, tiny_model_dir, "sft"))
    with open(tmp_path / "sft" / "curves.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("loss")]
    assert steps == [3, 4]  # continued from checkpoint-2, not from scratch
    assert json.loads(Path(outs["summary"]).read_text())["steps"] == 4
