"""Malformed input: every case raises InputError naming the file, the line (or row/key) and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meditune.data import load_source
from meditune.errors import InputError
from tests.data_fixtures import (
    KOR_HEADER,
    ccks_row,
    headqa_obj,
    kor_row,
    medlfqa_row,
    medmcqa_row,
    medqa_row,
    sharegpt_row,
    ultrafeedback_row,
    write_xlsx,
)


def lines(*objs) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)) + "\n" for o in objs)


def rows_csv(header: list, *rows: list) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


M = medqa_row
KOR = rows_csv(KOR_HEADER, kor_row(0))
MSB = ["", "harmful_medical_request", "safe_response"]

# (case id, loader, file name, content, message fragment, line/key, field)
CASES = [
    ("medqa-broken-json", "medqa_us", "d.jsonl", lines(M(), '{"question": "x", '), "invalid JSON", 2, None),
    ("medqa-not-object", "medqa_us", "d.jsonl", lines([1, 2]), "expected a JSON object", 1, None),
    ("medqa-missing-question", "medqa_us", "d.jsonl", lines({k: v for k, v in M().items() if k != "question"}),
     "missing", 1, "question"),
    ("medqa-empty-question", "medqa_us", "d.jsonl", lines({**M(), "question": "  "}), "empty", 1, "question"),
    ("medqa-options-not-dict", "medqa_us", "d.jsonl", lines({**M(), "options": ["a", "b"]}), "expected dict", 1,
     "options"),
    ("medqa-answer-out-of-range", "medqa_us", "d.jsonl", lines(M(n=4, answer="D") | {"answer_idx": "E"}),
     "out of range", 1, "answer_idx"),
    ("medqa-answer-not-letter", "medqa_us", "d.jsonl", lines({**M(), "answer_idx": "AB"}), "answer letter", 1,
     "answer_idx"),
    ("medqa-empty-option", "medqa_us", "d.jsonl", lines({**M(), "options": {**M()["options"], "B": ""}}), "empty",
     1, "options.B"),
    ("medqa-mixed-4-5", "medqa_us", "d.jsonl", lines(M(n=5), M(n=4)), "mixed 4/5", 2, "options"),
    ("medqa-option-keys", "medqa_us", "d.jsonl", lines({**M(), "options": {"A": "x", "C": "y"}}), "in order", 1,
     "options"),
    ("medqa-answer-text-mismatch", "medqa_us", "d.jsonl", lines({**M(), "answer": "Vitamin Q"}), "differs", 1,
     "answer"),
    ("medqa-wrong-encoding", "medqa_us", "d.jsonl", lines(M()).encode() + lines(M("维生素？")).encode("gb18030"),
     "cannot decode", 2, None),
    ("medmcqa-duplicate-id", "medmcqa", "d.json", lines(medmcqa_row(1), medmcqa_row(1)), "duplicate id", 2, "id"),
    ("medmcqa-cop-too-big", "medmcqa", "d.json", lines(medmcqa_row(cop=5)), "out of range", 1, "cop"),
    ("medmcqa-cop-zero-1based", "medmcqa", "d.json", lines(medmcqa_row(cop=0)), "1-based", 1, "cop"),
    ("medmcqa-cop-missing", "medmcqa", "d.json", lines({k: v for k, v in medmcqa_row().items() if k != "cop"}),
     "integer answer", 1, "cop"),
    ("medmcqa-empty-option", "medmcqa", "d.json", lines({**medmcqa_row(), "opc": ""}), "empty", 1, "opc"),
    ("pubmedqa-bad-decision", "pubmedqa", "p.json",
     json.dumps({"1": {"QUESTION": "q?", "CONTEXTS": ["c"], "final_decision": "perhaps"}}), "yes", "key 1",
     "final_decision"),
    ("pubmedqa-contexts-type", "pubmedqa", "p.json",
     json.dumps({"1": {"QUESTION": "q?", "CONTEXTS": 3, "final_decision": "yes"}}), "expected", "key 1", "CONTEXTS"),
    ("pubmedqa-missing-question", "pubmedqa", "p.json",
     json.dumps({"7": {"CONTEXTS": ["c"], "final_decision": "yes"}}), "missing", "key 7", "QUESTION"),
    ("pubmedqa-top-level-list", "pubmedqa", "p.json", "[]", "keyed by PMID", None, None),
    ("mmlu-five-columns", "mmlu", "a_test.csv", "q,a,b,c,A\n", "6 columns", 1, None),
    ("mmlu-letter-out-of-range", "mmlu", "a_test.csv", "q,a,b,c,d,E\n", "out of range", 1, "answer"),
    ("mmlu-reformatted-index", "mmlu", "a_dev.csv", "question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,7\n",
     "out of range", 2, "answer"),
    ("kor-digit-out-of-range", "kormedmcqa", "fewshot.csv", rows_csv(KOR_HEADER, kor_row(0, "6")), "out of range",
     2, "answer"),
    ("kor-bad-letter", "kormedmcqa", "train.csv", rows_csv(KOR_HEADER, kor_row(0, "F")), "out of range", 2,
     "answer"),
    ("kor-missing-column", "kormedmcqa", "train.csv", rows_csv(KOR_HEADER[:10] + KOR_HEADER[11:], kor_row(0)[:12]),
     "lacks column", 1, "E"),
    ("kor-extra-field", "kormedmcqa", "train.csv", KOR + "1,doctor,2020,1,2,q,a,b,c,d,e,f,B,\n", "fields", 3, None),
    ("kor-empty-option", "kormedmcqa", "train.csv", rows_csv(KOR_HEADER, kor_row(0)[:8] + ["", "수술", "전원", "B", ""]),
     "option C is empty", 2, "options"),
    ("cmmlu-bad-answer", "cmmlu", "x.csv", rows_csv(["", "Question", "A", "B", "C", "D", "Answer"],
                                                    [0, "q", "a", "b", "c", "d", "Z"]), "out of range", 2, "Answer"),
    ("headqa-ra-unknown", "headqa", "h.json", json.dumps(headqa_obj() | {"exams": {"E": {
        **headqa_obj()["exams"]["Cuaderno_2099_1_M"], "data": [{**headqa_obj()["exams"]["Cuaderno_2099_1_M"]["data"][0],
                                                              "ra": "9"}]}}}), "not one of", "exams.E.data[0]", "ra"),
    ("headqa-no-exams", "headqa", "h.json", json.dumps({"version": "1"}), "exams", None, "exams"),
    ("headqa-answer-no-text", "headqa", "h.json", json.dumps(headqa_obj() | {"exams": {"E": {
        "data": [{"qid": "1", "qtext": "q", "ra": "1", "answers": [{"aid": 1, "atext": "a"}, {"aid": 2}]}]}}}),
     "atext", "exams.E.data[0]", "answers[1]"),
    ("medlfqa-must-have-type", "medlfqa", "m.jsonl", lines({**medlfqa_row(), "Must_have": 3}), "list", 1,
     "Must_have"),
    ("medlfqa-missing-question", "medlfqa", "m.jsonl", lines({"Free_form_answer": "x", "Must_have": []}),
     "missing", 1, "Question"),
    ("liveqa-bad-xml", "liveqa", "l.xml", "<NLM-QUESTIONS>\n<NLM-QUESTION>\n</NLM-QUESTIONS>\n", "invalid XML", 3,
     None),
    ("liveqa-no-questions", "liveqa", "l.xml", "<Other></Other>", "no NLM-QUESTION", None, None),
    ("medicationqa-not-xlsx", "medicationqa", "m.xlsx", "not a workbook", "not a readable .xlsx", None, None),
    ("msb-missing-column", "medsafetybench", "med_safety_demonstrations_category_1.csv",
     rows_csv(["", "request", "safe_response"], [0, "x", "y"]), "lacks column", 1, "harmful_medical_request"),
    ("msb-empty-request", "medsafetybench", "med_safety_demonstrations_category_1.csv",
     rows_csv(MSB, [0, " ", "y"]), "request is empty", 2, "request"),
    ("uf-bad-metadata", "ultrafeedback", "u.jsonl", lines({**ultrafeedback_row(), "metadata": "{oops"}),
     "dict literal", 1, "metadata"),
    ("uf-missing-chosen", "ultrafeedback", "u.jsonl",
     lines({k: v for k, v in ultrafeedback_row().items() if k != "chosen"}), "missing", 1, "chosen"),
    ("uf-score-not-number", "ultrafeedback", "u.jsonl",
     lines(ultrafeedback_row(metadata={"score_chosen": "high"})), "not a number", 1, "metadata.score_chosen"),
    ("sharegpt-unknown-speaker", "sharegpt", "s.jsonl",
     lines(sharegpt_row([{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}])), "unknown speaker",
     1, "conversations[1].from"),
    ("sharegpt-ends-with-answer", "sharegpt", "s.jsonl",
     lines(sharegpt_row([{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}])), "end with a human",
     1, "conversations"),
    ("ccks-span-outside", "ccks", "c.json", lines(ccks_row(spans=((2, 40, "解剖部位"),))), "outside text", 1,
     "entity_list[0]"),
    ("ccks-end-inclusive-mistake", "ccks", "c.json",
     lines({"text": "右膝痛", "entity_list": [{"entity_index": {"begin": 0, "end": 1}, "entity_type": "解剖部位",
                                              "entity": "右膝"}]}), "end-exclusive", 1, "entity_list[0].entity"),
    ("ccks-missing-index", "ccks", "c.json", lines({"text": "右膝痛", "entity_list": [{"entity_type": "x"}]}),
     "span field", 1, "entity_list[0]"),
    ("cmd-utf8-as-gb18030", "cmd", "c.csv", "department,title,ask,answer\n科,题,问,答\n".encode("gb18030")
     + "科,题,问,答\n".encode()[:-1] + b"\xff\n", "cannot decode", 3, None),
    ("cmd-missing-answer-column", "cmd", "c.csv", "department,title,ask\n科,题,问\n".encode("gb18030"),
     "lacks column", 1, "answer"),
    ("cmd-txt-block-without-comma", "cmd", "c.txt", "标题没有逗号\n回答\n\n\n".encode("gb18030"), "title,question",
     1, None),
    ("records-answer-out-of-range", "auto", "r.jsonl",
     lines({"id": "1", "question": "q", "options": ["a", "b"], "answer": 1},
           {"id": "2", "question": "q", "options": ["a", "b"], "answer": 7}), "out of range", 2, "(record)"),
    ("records-empty-options", "auto", "r.jsonl",
     lines({"id": "1", "question": "q", "options": ["a", "b"], "answer": 1},
           {"id": "2", "question": "q", "options": [], "answer": 0}), "at least 2 options", 2, "options"),
    ("records-typo-field", "auto", "r.jsonl",
     lines({"id": "1", "question": "q", "options": ["a", "b"], "answer": 1},
           {"id": "2", "question": "q", "options": ["a", "b"], "answer": 0, "subjcet": "x"}), "Extra inputs", 2,
     "subjcet"),
    ("records-duplicate-id", "auto", "r.jsonl",
     lines({"id": "1", "question": "q", "options": ["a", "b"], "answer": 1},
           {"id": "1", "question": "q2", "options": ["a", "b"], "answer": 0}), "duplicate id", 2, "id"),
    ("records-ner-span", "auto", "r.jsonl",
     lines({"id": "1", "text": "abc", "entities": []},
           {"id": "2", "text": "abc", "entities": [{"start": 1, "end": 2, "type": "x", "text": "c"}]}), "!=", 2,
     "(record)"),
    ("generic-answer-not-option", "auto", "g.csv", "stem,o1,o2,gold\nq,a,b,zzz\n", "text of one option", 2, "gold"),
    ("generic-parquet-corrupt", "auto", "g.parquet", b"PAR1 not really", "Parquet", None, None),
    ("generic-unknown-layout", "auto", "g.jsonl", lines({"foo": 1}), "cannot tell the record type", 1, None),
]


def _write(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _options(case_id: str) -> dict:
    if case_id == "generic-answer-not-option":
        return {"fields": {"question": "stem", "options": ["o1", "o2"], "answer": "gold"}, "kind": "mcq"}
    return {}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_names_file_line_field(tmp_path, case):
    case_id, loader, name, content, fragment, line, field = case
    path = _write(tmp_path, name, content)
    spec = str(path) if loader == "auto" else f"{loader}:{path}"
    with pytest.raises(InputError) as err:
        load_source(spec, **_options(case_id))
    e = err.value
    assert fragment in str(e), str(e)
    assert str(path) in str(e.file), f"file not named: {e}"
    assert e.line == line, f"line {e.line!r} != {line!r}: {e}"
    assert e.field == field, f"field {e.field!r} != {field!r}: {e}"


def test_enough_cases():
    assert len(CASES) >= 40


def test_medicationqa_errors_name_row_and_column(tmp_path):
    path = write_xlsx(tmp_path / "m.xlsx", ["Question", "Answer"], [["ok?", "yes"], [None, "orphan answer"]])
    with pytest.raises(InputError) as err:
        load_source(f"medicationqa:{path}")
    assert (err.value.line, err.value.field) == ("row 3", "Question")
    bad_header = write_xlsx(tmp_path / "h.xlsx", ["Q", "Answer"], [["x", "y"]])
    with pytest.raises(InputError, match="lacks column") as err:
        load_source(f"medicationqa:{bad_header}")
    assert err.value.field == "Question"


@pytest.mark.parametrize("loader,name,content", [
    ("medqa_us", "d.jsonl", b"\xef\xbb\xbf" + json.dumps(medqa_row()).encode() + b"\n"),
    ("kormedmcqa", "train.csv", b"\xef\xbb\xbf" + KOR.encode()),
    ("auto", "r.jsonl", b"\xef\xbb\xbf" + json.dumps({"id": "1", "question": "q", "options": ["a", "b"],
                                                      "answer": 1}).encode()),
])
def test_utf8_bom_is_accepted(tmp_path, loader, name, content):
    path = _write(tmp_path, name, content)
    recs = load_source(str(path) if loader == "auto" else f"{loader}:{path}")
    assert len(recs) == 1


def test_missing_file_and_empty_directory(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_source(f"medqa_us:{tmp_path / 'nope.jsonl'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no files matching"):
        load_source(f"kormedmcqa:{tmp_path / 'empty'}")
