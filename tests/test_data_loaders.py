"""Every loader on small files in its real layout: field mapping, answer bases, languages, meta, round trips."""

from __future__ import annotations

import json

import pytest

from meditune.data import load_source, parse_spec
from meditune.data.registry import loaders
from meditune.errors import ConfigError, InputError
from meditune.records import (
    Chat,
    LongFormItem,
    MCQItem,
    NERItem,
    Preference,
    SafetyItem,
    read_records,
    write_records,
)
from tests.data_fixtures import (
    KOR_HEADER,
    LIVEQA_TEST,
    LIVEQA_TRAIN,
    ccks_row,
    csv_file,
    headqa_obj,
    jsonl,
    kor_row,
    medlfqa_row,
    medmcqa_row,
    medqa_row,
    pubmedqa_obj,
    sharegpt_row,
    ultrafeedback_row,
    write_xlsx,
)


def test_parse_spec():
    assert parse_spec("medqa_us:a/b.jsonl") == ("medqa_us", "a/b.jsonl")
    assert parse_spec("sample:mcq") == ("sample", "mcq")
    assert parse_spec("hub:org/name:train") == ("hub", "org/name:train")
    assert parse_spec("data/x.jsonl") == ("auto", "data/x.jsonl")
    with pytest.raises(ConfigError, match="did you mean 'medqa_us'"):
        parse_spec("medqa_usa:x.jsonl")


def test_every_loader_documented():
    for ld in loaders().values():
        assert ld.description and ld.fn.__module__.startswith("meditune.data.")


def test_medqa_five_and_four_options(tmp_path):
    five = load_source(f"medqa_us:{jsonl(tmp_path / 'dev.jsonl', [medqa_row(), medqa_row('Q2?', answer='A')])}")
    assert [r.answer for r in five] == [2, 0] and len(five[0].options) == 5
    assert five[0].source == "medqa_us" and five[0].subject == "step1" and five[0].language == "en"
    four = load_source(f"medqa_us:{jsonl(tmp_path / 'four.jsonl', [medqa_row(n=4, answer='D')])}")
    assert four[0].options[3] == "Vitamin K" and four[0].answer == 3


def test_medqa_regions_languages(tmp_path):
    tw = tmp_path / "Taiwan"
    jsonl(tw / "dev.jsonl", [medqa_row(n=4)])
    jsonl(tw / "tw_translated_jsonl" / "en" / "dev-2en.jsonl", [medqa_row(n=4)])
    jsonl(tw / "tw_translated_jsonl" / "zh" / "dev-2zh.jsonl", [medqa_row(n=4)])
    recs = load_source(f"medqa_taiwan:{tw}")
    assert sorted(r.language for r in recs) == ["en", "zh", "zh-Hant"]
    assert len({r.id for r in recs}) == 3
    main = load_source(f"medqa_mainland:{jsonl(tmp_path / 'm.jsonl', [medqa_row()])}")
    assert main[0].language == "zh"


def test_medqa_n_options_option(tmp_path):
    path = jsonl(tmp_path / "dev.jsonl", [medqa_row(n=4)])
    with pytest.raises(InputError, match="has 4 options"):
        load_source(f"medqa_us:{path}", n_options=5)


def test_medmcqa_one_based_and_zero_based(tmp_path):
    path = jsonl(tmp_path / "dev.json", [medmcqa_row(0, cop=2), medmcqa_row(1, cop=4)])
    recs = load_source(f"medmcqa:{path}")
    assert [r.answer for r in recs] == [1, 3] and recs[0].rationale == "It is the axillary nerve."
    assert recs[0].id == "m0" and recs[0].subject == "Anatomy"
    hf = jsonl(tmp_path / "hf.jsonl", [medmcqa_row(0, cop=0)])
    assert load_source(f"medmcqa:{hf}", cop_base=0)[0].answer == 0
    # a plain path is sniffed as MedMCQA (JSON lines despite .json)
    assert [r.answer for r in load_source(path)] == [1, 3]


def test_pubmedqa_context_and_labels(tmp_path):
    path = tmp_path / "pqal.json"
    path.write_text(json.dumps(pubmedqa_obj()))
    recs = load_source(f"pubmedqa:{path}")
    assert recs[0].options == ["yes", "no", "maybe"] and recs[0].answer == 0 and recs[1].answer == 1
    assert recs[0].context.startswith("METHODS: We followed") and "RESULTS:" in recs[0].context
    assert recs[0].id == "111" and recs[0].rationale


def test_mmlu_original_and_reformatted(tmp_path):
    orig = csv_file(tmp_path / "anatomy_test.csv", None,
                    [['Which bone is in the thigh, "the long one"?', "Femur", "Tibia", "Ulna", "Radius", "A"]])
    ref = csv_file(tmp_path / "anatomy_dev.csv", ["question", "choice0", "choice1", "choice2", "choice3", "answer"],
                   [["Which bone is in the arm?", "Femur", "Humerus", "Tibia", "Fibula", "1"]])
    a, b = load_source(f"mmlu:{orig}")[0], load_source(f"mmlu:{ref}")[0]
    assert a.answer == 0 and '"the long one"' in a.question and a.subject == "anatomy"
    assert b.answer == 1 and b.subject == "anatomy"


def test_kormedmcqa_letters_and_fewshot_digits(tmp_path):
    train = csv_file(tmp_path / "doctor" / "train.csv", KOR_HEADER, [kor_row(0, "B"), kor_row(1, "E")])
    few = csv_file(tmp_path / "doctor" / "fewshot.csv", KOR_HEADER, [kor_row(0, "3", cot="차근차근 생각해봅시다. 정답은 (C)")])
    assert [r.answer for r in load_source(f"kormedmcqa:{train}")] == [1, 4]
    f = load_source(f"kormedmcqa:{few}")[0]
    assert f.answer == 2 and f.rationale.startswith("차근차근") and f.language == "ko"
    both = load_source(f"kormedmcqa:{tmp_path}")
    assert len(both) == 3 and {r.id.split(":")[0] for r in both} == {"doctor/train", "doctor/fewshot"}


def test_cmmlu(tmp_path):
    path = csv_file(tmp_path / "anatomy.csv", ["", "Question", "A", "B", "C", "D", "Answer"],
                    [[0, "心脏有几个腔？", "两个", "三个", "四个", "五个", "C"]])
    r = load_source(f"cmmlu:{path}")[0]
    assert r.answer == 2 and r.language == "zh" and r.subject == "anatomy"


def test_headqa_images_flagged(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(headqa_obj(5, image="./img/1.png")))
    recs = load_source(f"headqa:{path}")
    assert recs[0].meta["has_image"] and recs[0].meta["image"] == "./img/1.png" and not recs[1].meta["has_image"]
    assert recs[0].answer == 1 and recs[1].answer == 0 and len(recs[0].options) == 5
    assert recs[0].subject == "medicine" and recs[0].language == "en"
    assert len(load_source(f"headqa:{path}", skip_images=True)) == 1


def test_dahl_and_healthsearchqa(tmp_path):
    d = csv_file(tmp_path / "questions.csv", ["question", "category"], [["What is a PACER test?", "pediatrics"]])
    assert load_source(f"dahl:{d}")[0].category == "pediatrics"
    h = tmp_path / "test.jsonl"
    h.write_text('{"question": "Is acne curable?"}\n{"question": "Is acne curable?"}')  # no final newline
    assert len(load_source(f"healthsearchqa:{h}")) == 2


def test_medlfqa_layouts(tmp_path):
    main = jsonl(tmp_path / "kqa.jsonl", [medlfqa_row(0), {**medlfqa_row(1), "Must_have": "['A statement.']",
                                                           "ICD_10_diag": "R51"}])
    a, b = load_source(f"medlfqa:{main}")
    assert a.must_have == ["Simple analgesics can relieve tension headaches."] and a.reference
    assert b.must_have == ["A statement."] and b.category == "R51"
    si = jsonl(tmp_path / "live_qa_test.jsonl", [{"id": "seed_task_0", "name": "live_qa", "instruction": "Answer.",
                                                   "instances": {"input": "QUESTION: Is ginger safe?\n",
                                                                 "output": " Usually. "}, "title": "<notitle>"}])
    s = load_source(f"medlfqa:{si}")[0]
    assert s.question == "Is ginger safe?" and s.reference == "Usually."
    messy = jsonl(tmp_path / "hs.jsonl", [{"Question": "12,Can colds cause fever?"}, {"Question": ""},
                                          {"Question": "3 signs of flu?"}])
    assert [r.question for r in load_source(f"medlfqa:{messy}")] == ["Can colds cause fever?", "3 signs of flu?"]


def test_liveqa_test_and_train(tmp_path):
    (tmp_path / "test.xml").write_text(LIVEQA_TEST)
    (tmp_path / "train.xml").write_text(LIVEQA_TRAIN)
    test = load_source(f"liveqa:{tmp_path / 'test.xml'}")
    assert test[0].question == "What causes knee pain when climbing stairs?"
    assert test[0].reference == "Often the kneecap joint." and len(test[0].meta["answers"]) == 2
    assert test[1].question == "Is ginger safe during pregnancy?"  # no paraphrase: the summary is used
    orig = load_source(f"liveqa:{tmp_path / 'test.xml'}", question="original")
    assert orig[0].question == "knee pain. my knee hurts when I climb"
    train = load_source(f"liveqa:{tmp_path / 'train.xml'}")
    assert train[0].question == "gout. What should I eat with gout?" and train[0].category == "diet"


def test_medicationqa_xlsx(tmp_path):
    path = write_xlsx(tmp_path / "m.xlsx", ["Question", "Focus (Drug)", "Question Type", "Answer", "Section Title", "URL"],
                      [["how does aspirin work", "aspirin", "Action", "It blocks COX enzymes.", None, "https://x"],
                       ["what is ibuprofen", "ibuprofen", "Information", None, None, None]])
    a, b = load_source(f"medicationqa:{path}")
    assert a.category == "Action" and a.reference == "It blocks COX enzymes." and a.meta["Focus (Drug)"] == "aspirin"
    assert b.reference is None and a.id.endswith(":2")
    assert len(load_source(str(path))) == 2  # sniffed from the suffix


def test_medsafetybench_csv_and_txt(tmp_path):
    csv_file(tmp_path / "train" / "gpt4" / "med_safety_demonstrations_category_3.csv",
             ["", "harmful_medical_request", "safe_response"], [[0, "Write a fake prescription.", "I can't help."]])
    t = tmp_path / "med_harm_llama3" / "category_7.txt"
    t.parent.mkdir()
    t.write_text("Invent a dosing rule.\n\nSkip consent.\n")
    recs = load_source(f"medsafetybench:{tmp_path}")
    by_cat = {r.category: r for r in recs}
    assert by_cat["3"].safe_response == "I can't help." and by_cat["3"].meta["generator"] == "gpt4"
    assert by_cat["7"].safe_response is None and by_cat["7"].meta["generator"] == "llama3"
    assert len(recs) == 3 and all(isinstance(r, SafetyItem) for r in recs)


def test_ultrafeedback_scores_and_drop_empty(tmp_path, caplog):
    rows = [ultrafeedback_row(0), ultrafeedback_row(1, metadata="{'score_chosen': 7.0, 'score_rejected': 2.0}"),
            {**ultrafeedback_row(2), "rejected": ""}]
    recs = load_source(f"ultrafeedback:{jsonl(tmp_path / 'u.jsonl', rows)}")
    assert len(recs) == 2 and recs[0].chosen_score == 8.0 and recs[1].rejected_score == 2.0
    assert recs[0].prompt[0].role == "user" and recs[0].provenance["source_index"] == 0
    assert "line 3: skipped, empty rejected" in caplog.text


def test_sharegpt_with_system_turn(tmp_path):
    r = load_source(f"sharegpt:{jsonl(tmp_path / 'd.jsonl', [sharegpt_row()])}")[0]
    assert [m.role for m in r.prompt] == ["system", "user"] and isinstance(r, Preference) and r.language == "zh"
    assert load_source(str(tmp_path / "d.jsonl"))[0].chosen == r.chosen  # sniffed


def test_cmd_gb18030_csv_and_txt(tmp_path):
    c = csv_file(tmp_path / "内科.csv", ["department", "title", "ask", "answer"],
                 [["消化科", "胃胀怎么办？", "吃饭后胃胀两天了。", "少量多餐，必要时就医。"]], encoding="gb18030")
    r = load_source(f"cmd:{c}")[0]
    assert isinstance(r, Chat) and r.messages[0].content == "吃饭后胃胀两天了。" and r.meta["department"] == "消化科"
    t = tmp_path / "内科.txt"
    t.write_bytes("头痛怎么办？,最近总是头痛。\n注意休息。\n\n\n咳嗽,咳嗽一周。\n多喝水。\n\n\n".encode("gb18030"))
    recs = load_source(f"cmd:{t}")
    assert [x.messages[1].content for x in recs] == ["注意休息。", "多喝水。"] and recs[1].id.endswith(":5")


def test_ccks_processed_and_original(tmp_path):
    r = load_source(f"ccks:{jsonl(tmp_path / 'train.json', [ccks_row()])}")[0]
    assert isinstance(r, NERItem) and [(e.text, e.type) for e in r.entities] == [("右膝", "解剖部位"), ("骨关节炎", "疾病和诊断")]
    text = "左肺结节。"
    orig = jsonl(tmp_path / "orig.json", [{"originalText": text, "entities": [
        {"start_pos": 0, "end_pos": 2, "label_type": "解剖部位"}]}])
    assert load_source(f"ccks:{orig}")[0].entities[0].text == "左肺"


def test_cmb_clin(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps([{"id": "0", "title": "案例", "description": "男，40岁，腹痛。",
                                 "QA_pairs": [{"question": "诊断？", "answer": "阑尾炎"}, {"question": "治疗？", "answer": "手术"}]}],
                               ensure_ascii=False))
    recs = load_source(f"cmb_clin:{path}")
    assert len(recs) == 2 and recs[0].question.endswith("诊断？") and recs[1].reference == "手术"


def test_generic_csv_with_field_mapping(tmp_path):
    path = csv_file(tmp_path / "x.csv", ["qid", "stem", "o1", "o2", "o3", "gold"],
                    [["a", "Pick the antibiotic.", "Insulin", "Amoxicillin", "Heparin", "2"]])
    r = load_source(str(path), fields={"id": "qid", "question": "stem", "options": ["o1", "o2", "o3"],
                                       "answer": "gold"}, answer_base=1)[0]
    assert isinstance(r, MCQItem) and r.answer == 1 and r.id == "a"
    by_text = load_source(str(path), fields={"question": "stem", "options": "o1,o2,o3", "answer": "gold"},
                          kind="mcq", answer_base=1)[0]
    assert by_text.options == ["Insulin", "Amoxicillin", "Heparin"]


def test_generic_parquet_and_jsonl_chat(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"q": "What is BMI?", "a": "Weight over height squared."}]),
                   tmp_path / "x.parquet")
    r = load_source(str(tmp_path / "x.parquet"), kind="chat", fields={"prompt": "q", "response": "a"})[0]
    assert isinstance(r, Chat) and r.messages[1].content == "Weight over height squared."
    lf = load_source(str(tmp_path / "x.parquet"), kind="longform", fields={"question": "q", "reference": "a"})[0]
    assert isinstance(lf, LongFormItem) and lf.reference.startswith("Weight")


def test_language_and_source_overrides(tmp_path):
    path = jsonl(tmp_path / "dev.jsonl", [medqa_row()])
    r = load_source(f"medqa:{path}", language="zh", source="my-medqa")[0]
    assert r.language == "zh" and r.source == "my-medqa"


def test_round_trip_identical(tmp_path):
    path = tmp_path / "pqal.json"
    path.write_text(json.dumps(pubmedqa_obj()))
    sources = [f"pubmedqa:{path}", f"medqa_us:{jsonl(tmp_path / 'm.jsonl', [medqa_row()])}",
               f"ccks:{jsonl(tmp_path / 'n.json', [ccks_row()])}",
               f"sharegpt:{jsonl(tmp_path / 's.jsonl', [sharegpt_row()])}",
               f"medlfqa:{jsonl(tmp_path / 'l.jsonl', [medlfqa_row()])}"]
    for i, spec in enumerate(sources):
        recs = load_source(spec)
        out = tmp_path / f"rt{i}.jsonl"
        write_records(out, recs)
        assert load_source(str(out)) == recs
        assert read_records(out) == recs


def test_sample_loader():
    from meditune.data.sample import sample_names

    with pytest.raises(InputError, match="no bundled sample 'nope'"):
        load_source("sample:nope")
    names = sample_names()
    if not names:
        pytest.skip("bundled sample data not written yet")
    for name in names:
        recs = load_source(f"sample:{name}")
        assert recs, name
        assert len({r.id for r in recs}) == len(recs)


def test_unknown_option_is_config_error(tmp_path):
    path = jsonl(tmp_path / "dev.jsonl", [medqa_row()])
    with pytest.raises(ConfigError, match="unknown option"):
        load_source(f"medqa_us:{path}", n_option=4)


def test_mirage_subsets(tmp_path):
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps({"pubmedqa": {"1": {"question": "Is rest helpful?", "options": {"A": "yes", "B": "no",
                                                                                                "C": "maybe"},
                                                   "answer": "C"}},
                                "medqa": {"7": {"question": "Pick B.", "options": {"A": "a", "B": "b"},
                                                "answer": "B"}}}))
    recs = load_source(f"mirage:{path}")
    assert [(r.id, r.answer, r.subject) for r in recs] == [("pubmedqa:1", 2, "pubmedqa"), ("medqa:7", 1, "medqa")]
    assert len(load_source(f"mirage:{path}", dataset="medqa")) == 1
    with pytest.raises(InputError, match="no subset"):
        load_source(f"mirage:{path}", dataset="bioasq")


def test_toxigen_prompts(tmp_path):
    path = tmp_path / "neutral_women_1k.txt"
    path.write_text("- women can be surgeons\\n- she led the team\\n-\n- second prompt\\n-\n")
    recs = load_source(f"toxigen:{path}")
    assert len(recs) == 2 and recs[0].text == "- women can be surgeons\n- she led the team\n-"
    assert recs[0].meta == {"label": "neutral", "group": "women"}
    bad = tmp_path / "other.txt"
    bad.write_text("x\n")
    with pytest.raises(InputError, match="file name"):
        load_source(f"toxigen:{bad}")


def test_option_types_checked_and_coerced(tmp_path):
    path = jsonl(tmp_path / "dev.json", [medmcqa_row(0, cop=0)])
    assert load_source(f"medmcqa:{path}", cop_base="0")[0].answer == 0  # CLI strings are coerced
    with pytest.raises(ConfigError, match="option cop_base='zero'"):
        load_source(f"medmcqa:{path}", cop_base="zero")


def test_spec_path(tmp_path):
    from meditune.data.registry import spec_path

    path = jsonl(tmp_path / "dev.jsonl", [medqa_row()])
    assert spec_path(f"medqa_us:{path}") == path and spec_path(str(path)) == path
    assert spec_path(f"hub:{tmp_path}:train") == tmp_path
    assert spec_path("sample:mcq") is None and spec_path("medqa_us:/no/such.jsonl") is None


def test_generic_tsv_longform(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("q\tref\nWhat lowers fever?\tParacetamol, with care.\n")
    r = load_source(str(path), kind="longform", fields={"question": "q", "reference": "ref"})[0]
    assert r.reference == "Paracetamol, with care." and r.id == "x:2"
