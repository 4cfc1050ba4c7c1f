"""Training data preparation, configs, registry and error messages (no training: fast)."""

from __future__ import annotations

import json
import sys

import pytest
from pydantic import ValidationError

from meditune.errors import ConfigError, InputError
from meditune.records import Chat, Message, Preference
from meditune.training.data import (
    PREF_KINDS,
    SFT_KINDS,
    corpus_texts,
    load_records,
    mix_general,
    preference_row,
    record_messages,
    split_eval,
    tokenize_chat,
)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _masked_text(tok, row):
    return tok.decode([t for t, m in zip(row["input_ids"], row["assistant_masks"], strict=True) if m])


def test_assistant_mask_covers_only_assistant_turns(tok):
    msgs = [{"role": "user", "content": "Is aspirin an NSAID?"}, {"role": "assistant", "content": "Yes, it is."},
            {"role": "user", "content": "And paracetamol?"}, {"role": "assistant", "content": "No."}]
    row = tokenize_chat(tok, msgs, None, 512)
    masked = _masked_text(tok, row)
    assert "Yes, it is." in masked and "No." in masked
    assert "aspirin" not in masked and "paracetamol" not in masked and "user" not in masked
    assert masked.count("<|im_end|>") == 2  # the end-of-turn token is learned, so the model stops
    full = tok.decode(row["input_ids"])
    assert "SmolLM" not in full  # the template's default system prompt is not injected silently


def test_system_prompt_is_applied_and_not_learned(tok):
    row = tokenize_chat(tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
                        "You are a careful medical assistant.", 512)
    assert "careful medical assistant" in tok.decode(row["input_ids"])
    assert "careful" not in _masked_text(tok, row)


def test_truncation_keeps_mask_aligned(tok):
    msgs = [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "short"}]
    row = tokenize_chat(tok, msgs, None, 16)
    assert len(row["input_ids"]) == len(row["assistant_masks"]) == 16
    assert 1 not in row["assistant_masks"]


def test_preference_row_is_trl_conversational(tok):
    rec = Preference(id="p", prompt=[Message(role="user", content="Q?")], chosen="good", rejected="bad")
    row = preference_row(rec, tok, None)
    assert row["chosen"] == [{"role": "assistant", "content": "good"}]
    assert row["rejected"] == [{"role": "assistant", "content": "bad"}]
    assert row["prompt"][-1] == {"role": "user", "content": "Q?"}
    assert row["prompt"][0] == {"role": "system", "content": ""}  # blocks SmolLM2's injected default
    assert preference_row(rec, tok, "Be safe.")["prompt"][0]["content"] == "Be safe."


def test_mix_general_hits_the_ratio():
    med, gen = list(range(100)), [f"g{i}" for i in range(200)]
    mixed = mix_general(med, gen, 0.265, seed=0)
    n_gen = sum(isinstance(x, str) for x in mixed)
    assert n_gen == 36 and len(mixed) == 136  # 36 / 136 = 26.5 %
    assert mix_general(med, gen, 0.265, seed=0) == mixed  # seeded
    with pytest.raises(ConfigError, match="general_data has only 10"):
        mix_general(med, gen[:10], 0.265, seed=0)


def test_load_records_errors_name_file_line_and_field(tmp_path):
    p = tmp_path / "d.jsonl"
    good = Chat(id="a", messages=[Message(role="user", content="q"), Message(role="assistant", content="a")])
    p.write_text(good.model_dump_json() + "\n" + json.dumps({"id": "b", "messages": []}) + "\n")
    with pytest.raises(InputError) as e:
        load_records(str(p), SFT_KINDS)
    assert e.value.line == 2 and e.value.field == "messages" and str(p) in str(e.value)
    p.write_text(good.model_dump_json() + "\n")
    with pytest.raises(InputError, match="this stage takes Preference") as e:
        load_records(str(p), PREF_KINDS)
    assert e.value.line == 1
    p.write_text(good.model_dump_json() + "\n{oops\n")
    with pytest.raises(InputError, match="invalid JSON") as e:
        load_records(str(p), SFT_KINDS)
    assert e.value.line == 2


def test_record_messages_rejects_chat_without_assistant():
    rec = Chat(id="x", messages=[Message(role="user", content="q")])
    with pytest.raises(InputError, match="no assistant turn"):
        record_messages(rec)


def test_corpus_texts_formats_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("doc one\n\ndoc two\n")
    assert corpus_texts(str(tmp_path / "a.txt")) == ["doc one", "doc two"]
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(InputError) as e:
        corpus_texts(str(bad))
    assert e.value.line == 2 and e.value.field == "text"


def test_split_eval_is_seeded_and_disjoint():
    tr, ev = split_eval(list(range(20)), 0.1, seed=1)
    assert len(ev) == 2 and not set(tr) & set(ev) and split_eval(list(range(20)), 0.1, seed=1) == (tr, ev)


def test_orpo_import_path_guarded(monkeypatch):
    from meditune.training.trl_options import import_orpo

    cfg_cls, trainer_cls = import_orpo()
    assert trainer_cls.__module__.startswith("trl.experimental.orpo")  # where TRL 1.x keeps ORPO
    monkeypatch.setitem(sys.modules, "trl.experimental.orpo", None)  # as if TRL moved or dropped it
    with pytest.raises(ConfigError, match="ORPO is not available"):
        import_orpo()


def test_every_stage_type_is_registered_with_estimates(tmp_path):
    from meditune.recipe import Recipe
    from meditune.stages import registry

    reg = registry()
    assert {"cpt", "sft", "dpo", "orpo", "rm", "rs", "idpo"} <= set(reg)
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n" * 10)
    est = reg["sft"].estimate(reg["sft"].config(name="s", type="sft", data=str(data), batch_size=4, epochs=2),
                              Recipe(name="r"))
    assert est == {"steps": 6, "examples": 10}
    est = reg["rs"].estimate(reg["rs"].config(name="r", type="rs", data=str(data), k=4, top_k=2, rounds=2),
                             Recipe(name="r"))
    assert est["generations"] == 80 and est["steps"] == 10


def test_stage_config_errors():
    from meditune.training.dpo import DPOStageConfig
    from meditune.training.rs import RSStageConfig

    with pytest.raises(ValidationError, match="unknown DPO loss_type"):
        DPOStageConfig(name="d", type="dpo", data="x", loss_type="sigmoidd")
    with pytest.raises(ValidationError, match="top_k"):
        RSStageConfig(name="r", type="rs", data="x", k=2, top_k=3)
    with pytest.raises(ValidationError, match="extra"):
        DPOStageConfig(name="d", type="dpo", data="x", betta=0.1)


def test_cli_bad_option_exits_2_with_suggestion(capsys):
    from meditune.cli import main

    assert main(["train", "dpo", "--data", "x.jsonl", "--out", "/tmp/never", "--set", "betaa=0.2"]) == 2
    assert "did you mean 'beta'" in capsys.readouterr().err
