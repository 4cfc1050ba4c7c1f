"""Loaders: encoding hints that fit the file's language, warnings and errors for data that loads but is wrong."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from meditune.data import load_source
from meditune.data.checks import validate_source
from meditune.data.common import paired_high_bytes, suggest_encoding
from meditune.errors import InputError

BAD = Path(__file__).parent / "bad_inputs"
KOREAN = "고혈압 환자에게 가장 먼저 권하는 생활 습관 교정은 무엇인가? 염분 제한과 운동이다."
CHINESE = "高血压患者首先应该改变哪种生活方式？限制食盐摄入和规律运动。"
FRENCH = "Quel médicament traite l'hypertension artérielle ? Le régime hyposodé aide aussi."


@pytest.mark.parametrize(("text", "encoding", "script", "expected"), [
    (KOREAN, "cp949", "ko", "cp949"),
    (KOREAN, "cp949", None, "cp949"),  # never "gb18030", although GB18030 decodes these bytes too
    (KOREAN, "euc-kr", None, "cp949"),
    (CHINESE, "gb18030", "zh", "gb18030"),
    (CHINESE, "gb18030", None, "gb18030"),
    (FRENCH, "latin-1", None, "cp1252"),
    (FRENCH, "latin-1", "latin", "cp1252"),
])
def test_suggested_encoding_decodes_to_the_expected_script(text, encoding, script, expected):
    raw = text.encode(encoding)
    assert suggest_encoding(raw, script)[0] == expected
    assert raw.decode(expected) == text


def test_no_suggestion_of_the_wrong_family():
    assert suggest_encoding(KOREAN.encode("cp949"), "zh") is None or \
        suggest_encoding(KOREAN.encode("cp949"), "zh")[0] != "cp949"
    assert suggest_encoding(FRENCH.encode("latin-1"), "ko") is None
    assert suggest_encoding(CHINESE.encode("gb18030"), "ko") is None
    assert paired_high_bytes(FRENCH.encode("latin-1")) < 0.2 and paired_high_bytes(KOREAN.encode("cp949")) == 1


def test_korean_file_hint_and_garbled_decoding_refused():
    with pytest.raises(InputError) as e:
        load_source(f"kormedmcqa:{BAD}/kormedmcqa_cp949.csv")
    assert "encoding=cp949" in str(e.value) and "gb18030" not in str(e.value)
    with pytest.raises(InputError, match="not Korean"):  # following a wrong hint is caught, not mislabelled
        load_source(f"kormedmcqa:{BAD}/kormedmcqa_cp949.csv", encoding="gb18030")
    items = load_source(f"kormedmcqa:{BAD}/kormedmcqa_cp949.csv", encoding="cp949")
    assert items[0].language == "ko" and items[0].question.startswith("고혈압")


def test_latin1_file_hint():
    with pytest.raises(InputError) as e:
        load_source(f"medqa_us:{BAD}/medqa_latin1.jsonl")
    assert "encoding=cp1252" in str(e.value) and "gb18030" not in str(e.value)
    assert load_source(f"medqa_us:{BAD}/medqa_latin1.jsonl", encoding="cp1252")[0].options[1] == "paracétamol"


def test_duplicate_options_warn_once_per_file(caplog):
    with caplog.at_level(logging.WARNING):
        items = load_source(f"medqa_us:{BAD}/medqa_duplicate_options.jsonl")
    assert len(items) == 3
    warnings = [r.getMessage() for r in caplog.records if "same text" in r.getMessage()]
    assert len(warnings) == 1 and "2 item(s)" in warnings[0] and "first at line 2" in warnings[0]


def test_preference_with_equal_sides_is_an_error():
    with pytest.raises(InputError) as e:
        load_source(f"ultrafeedback:{BAD}/preference_same_sides.jsonl")
    assert (e.value.line, e.value.field) == (2, "rejected")
    assert str(e.value.file).endswith("preference_same_sides.jsonl")


def test_equal_sides_in_our_own_records_file(tmp_path):
    from meditune.training.data import PREF_KINDS, load_records

    pref = {"id": "p", "prompt": [{"role": "user", "content": "q"}], "chosen": "same", "rejected": "same"}
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(pref) + "\n")
    for load in (lambda: load_source(str(path)), lambda: load_records(str(path), PREF_KINDS)):
        with pytest.raises(InputError, match="chosen and rejected are the same text"):
            load()


@pytest.mark.parametrize("name", ["empty.jsonl", "blank_lines.jsonl"])
def test_empty_source_is_an_error(name):
    with pytest.raises(InputError, match="no items"):
        load_source(str(BAD / name))


def test_filter_that_keeps_nothing_is_an_error(tmp_path):
    path = tmp_path / "medmcqa.json"
    row = {"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 1, "choice_type": "multi"}
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(InputError, match="no items"):
        load_source(f"medmcqa:{path}", single_only=True)


def test_validate_source_collects_errors_in_file_order():
    found = validate_source(f"medqa_us:{BAD}/medqa_three_errors.jsonl")
    assert len(found.records) == 3 and not found.capped  # the good lines 1, 3 and 5
    assert [(e.line, e.field) for e in found.errors] == [(2, "answer_idx"), (4, "question"), (6, None)]
    ok = validate_source("sample:mcq")
    assert ok.records and not ok.errors
