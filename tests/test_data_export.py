"""Export to TRL formats (accepted by TRL's data utilities), HF datasets round trip, hub loading offline."""

from __future__ import annotations

import pytest

from meditune.data import load_source
from meditune.data.export import from_hf_rows, save_hf, to_hf_dataset, to_trl, write_trl
from meditune.errors import InputError
from meditune.records import Chat, LongFormItem, MCQItem, Preference, SafetyItem, TextItem, read_records

MCQ = MCQItem(id="q1", question="Which vitamin prevents scurvy?", options=["A", "C", "D", "K"], answer=1,
              rationale="Scurvy is vitamin C deficiency.", meta={"exam": "x", "n": 1})
PREF = Preference(id="p1", prompt=[{"role": "system", "content": "Be careful."},
                                   {"role": "user", "content": "Can I double my insulin dose?"}],
                  chosen="Do not change doses without your clinician.", rejected="Sure.", chosen_score=0.9,
                  rejected_score=0.1, provenance={"generator": "a"})
CHAT = Chat(id="c1", system="You are a nurse.", messages=[{"role": "user", "content": "Hi"},
                                                          {"role": "assistant", "content": "Hello"}])


def test_trl_formats_accepted_by_trl(default_model_dir):
    from transformers import AutoTokenizer
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    rows = to_trl([MCQ, PREF, CHAT, LongFormItem(id="l", question="What is BMI?", reference="A ratio."),
                   SafetyItem(id="s", request="Forge a note.", safe_response="I can't help with that.")])
    for row in rows:
        assert is_conversational(row)
        out = maybe_apply_chat_template(row, tok)
        assert all(isinstance(v, str) and v for v in out.values())
    pref = maybe_apply_chat_template(rows[1], tok)
    assert set(pref) == {"prompt", "chosen", "rejected"}
    assert "Can I double my insulin dose?" in pref["prompt"] and "Do not change doses" in pref["chosen"]
    assert "Answer: B. C" in maybe_apply_chat_template(rows[0], tok)["text"]
    assert not is_conversational(to_trl([TextItem(id="t", text="Raw corpus text.")])[0])


def test_trl_sft_needs_a_target():
    with pytest.raises(InputError, match="no reference answer"):
        to_trl([LongFormItem(id="l", question="q")])


def test_trl_jsonl_loads_as_dataset(tmp_path):
    import datasets

    write_trl(tmp_path / "prefs.jsonl", [PREF, PREF.model_copy(update={"id": "p2"})])
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "prefs.jsonl"), split="train")
    assert ds.column_names == ["prompt", "chosen", "rejected"] and ds[0]["chosen"][0]["role"] == "assistant"


def test_hf_round_trip_and_hub_offline(tmp_path):
    ds = to_hf_dataset([MCQ, MCQ.model_copy(update={"id": "q2", "meta": {}})])
    assert from_hf_rows(ds, "mcq") == [MCQ, MCQ.model_copy(update={"id": "q2", "meta": {}})]
    save_hf([MCQ], tmp_path / "ds")
    assert load_source(f"hub:{tmp_path / 'ds'}") == [MCQ.model_copy(update={"source": None})]


def test_hub_local_dataset_dict_with_split_and_layouts(tmp_path):
    import datasets

    rows = [{"question": "Which nerve?", "opa": "Radial", "opb": "Axillary", "opc": "Median", "opd": "Ulnar",
             "cop": 1, "id": "x1", "subject_name": "Anatomy"}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "validation": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    recs = load_source(f"hub:{tmp_path / 'dd'}:validation")
    assert recs[0].answer == 1  # HF copies of MedMCQA are 0-based
    with pytest.raises(InputError, match="several splits"):
        load_source(f"hub:{tmp_path / 'dd'}")
    with pytest.raises(InputError, match="no split 'test'"):
        load_source(f"hub:{tmp_path / 'dd'}:test")
    sft = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    datasets.Dataset.from_list(sft).save_to_disk(str(tmp_path / "sft"))
    chat = load_source(f"hub:{tmp_path / 'sft'}")[0]
    assert isinstance(chat, Chat) and chat.id.endswith(":1")
    mapped = [{"q": "Is water wet?", "label": "yes"}]
    datasets.Dataset.from_list(mapped).save_to_disk(str(tmp_path / "m"))
    lf = load_source(f"hub:{tmp_path / 'm'}", kind="longform", fields={"question": "q", "reference": "label"})[0]
    assert lf.reference == "yes"


def test_hub_bad_row_names_dataset_and_row(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"question": "q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 9,
                                 "id": "1"}]).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(InputError) as err:
        load_source(f"hub:{tmp_path / 'bad'}")
    assert str(err.value.file) == f"hub:{tmp_path / 'bad'}" and err.value.line == 1 and err.value.field == "cop"


def test_hub_unknown_id_offline_is_input_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="cannot load dataset"):
        load_source("hub:no-such-org/no-such-dataset-meditune:train")


def test_convert_cli_writes_atomically(tmp_path):
    from meditune.cli import main

    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "1", "question": "q", "options": ["a", "b"], "answer": 1}\n')
    out = tmp_path / "out" / "trl.jsonl"
    assert main(["data", "convert", str(good), "--to", str(out), "--format", "trl"]) == 0
    assert out.exists() and '"messages"' in out.read_text()
    assert main(["data", "convert", str(good), "--to", str(tmp_path / "hfdir"), "--format", "hf"]) == 0
    assert load_source(f"hub:{tmp_path / 'hfdir'}")[0].answer == 1
    before = out.read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + '{"id": "2", "question": "q", "options": ["a", "b"], "answer": 5}\n')
    assert main(["data", "convert", str(bad), "--to", str(out)]) == 2
    assert out.read_text() == before  # untouched: nothing partial written
    assert sorted(p.name for p in out.parent.iterdir()) == ["trl.jsonl"]  # no temp files left
    assert main(["data", "validate", str(good)]) == 0
    assert main(["data", "validate", str(bad)]) == 2
    rec = main(["data", "convert", str(good), "--to", str(tmp_path / "r.jsonl")])
    assert rec == 0 and read_records(tmp_path / "r.jsonl")[0].answer == 1


def test_hub_local_data_files_directory(tmp_path):
    d = tmp_path / "files"
    d.mkdir()
    (d / "train.jsonl").write_text('{"question": "Q?", "options": {"A": "a", "B": "b"}, "answer": "b", '
                                   '"answer_idx": "B"}\n')
    recs = load_source(f"hub:{d}:train")
    assert isinstance(recs[0], MCQItem) and recs[0].answer == 1  # MedQA layout recognised in hub rows


def test_hub_layouts_of_common_hf_datasets(tmp_path):
    import datasets

    def save(name, rows):
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / name))
        return load_source(f"hub:{tmp_path / name}")

    mmlu = save("mmlu", [{"question": "Which is a vitamin?", "subject": "nutrition", "choices": ["C", "Fe", "Na", "K"],
                          "answer": 0}])
    assert mmlu[0].options == ["C", "Fe", "Na", "K"] and mmlu[0].answer == 0 and mmlu[0].subject == "nutrition"
    kor = save("kor", [{"subject": "nurse", "year": 2022, "period": 1, "q_number": 3, "question": "가장 적절한 것은?",
                        "A": "가", "B": "나", "C": "다", "D": "라", "E": "마", "answer": 4, "cot": ""}])
    assert kor[0].answer == 3 and kor[0].language == "ko" and kor[0].rationale is None
    pub = save("pub", [{"pubid": 5, "question": "Does it work?", "context": {"contexts": ["It did."],
                                                                             "labels": ["RESULTS"]},
                        "long_answer": "Yes.", "final_decision": "maybe"}])
    assert pub[0].answer == 2 and pub[0].context == "RESULTS: It did." and pub[0].id == "5"
