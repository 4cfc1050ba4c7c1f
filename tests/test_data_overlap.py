"""Contamination check: planted duplicates are found, disjoint files report zero, --write-filtered works."""

from __future__ import annotations

import json
import random

from meditune.cli import main
from meditune.data import load_source
from meditune.data.overlap import filter_train, find_overlap, ngrams, normalise, tokens
from meditune.records import MCQItem, write_records

WORDS = ("patient fever cough chest pain renal hepatic cardiac dose tablet infusion biopsy lesion nerve muscle "
         "artery vein bone skin lung kidney liver brain spleen colon gastric thyroid adrenal insulin glucose "
         "sodium potassium calcium anemia platelet culture rash edema syncope murmur wheeze").split()


def invented_items(prefix: str, n: int, seed: int) -> list[MCQItem]:
    rng = random.Random(seed)
    return [MCQItem(id=f"{prefix}{i}", question=" ".join(rng.choice(WORDS) for _ in range(25)) + "?",
                    options=[f"{prefix}-opt{i}-{k}" for k in range(4)], answer=i % 4) for i in range(n)]


def test_normalisation_and_tokens():
    assert normalise("The  Patient's FEVER, (39°C)!") == "the patient s fever 39 c"
    assert tokens("患者发热") == ["患", "者", "发", "热"]  # Han characters are single tokens
    assert ngrams(["a", "b"], 13) == {("a", "b")}  # short text: one gram of all tokens


def test_planted_duplicates_found_and_filtered(tmp_path):
    train, evaluation = invented_items("t", 60, 1), invented_items("e", 30, 2)
    planted = {"t3": "e5", "t10": "e0", "t42": "e29"}
    for tid, eid in planted.items():
        i = int(tid[1:])
        e = next(x for x in evaluation if x.id == eid)
        # same question, re-cased and re-punctuated: still caught after normalisation
        train[i] = train[i].model_copy(update={"question": e.question.upper().replace("?", " ?!")})
    # and one that shares only a 13-word passage inside a longer question
    e7 = next(x for x in evaluation if x.id == "e7")
    train[20] = train[20].model_copy(update={"question": "Background: " + " ".join(e7.question.split()[5:18])
                                             + " then something else entirely"})
    report = find_overlap(train, evaluation, n=13)
    flagged = {f["train_id"]: f for f in report.flagged}
    assert set(flagged) == {"t3", "t10", "t42", "t20"}
    assert flagged["t3"]["eval_ids"] == ["e5"] and flagged["t3"]["exact_question"]
    assert not flagged["t20"]["exact_question"] and flagged["t20"]["shared_ngrams"] == 1
    assert report.summary()["eval_contaminated"] == 4
    assert len(filter_train(train, report)) == 56

    write_records(tmp_path / "train.jsonl", train)
    write_records(tmp_path / "eval.jsonl", evaluation)
    out = tmp_path / "clean.jsonl"
    assert main(["data", "overlap", str(tmp_path / "train.jsonl"), str(tmp_path / "eval.jsonl"),
                 "--write-filtered", str(out)]) == 0
    clean = load_source(str(out))
    assert len(clean) == 56 and not {"t3", "t10", "t42", "t20"} & {r.id for r in clean}
    assert find_overlap(clean, evaluation).train_flagged == 0


def test_disjoint_files_report_zero(tmp_path, capsys):
    write_records(tmp_path / "a.jsonl", invented_items("a", 40, 3))
    write_records(tmp_path / "b.jsonl", invented_items("b", 40, 4))
    assert main(["data", "overlap", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["train_flagged"] == 0 and out["eval_contaminated"] == 0 and out["exact_question_matches"] == 0
    assert out["train_items"] == 40 and out["ngram"] == 13


def test_chinese_overlap_by_characters():
    q = "男，50岁。吃海鲜后夜间突发左足第一跖趾关节剧烈疼痛1天，最可能的诊断是"  # invented
    a = [MCQItem(id="a", question=q, options=["痛风", "感染"], answer=0, language="zh")]
    b = [MCQItem(id="b", question="病例：" + q[3:20] + "。请选择。", options=["x", "y"], answer=0, language="zh")]
    assert find_overlap(a, b, n=13, use_full_text=False).train_flagged == 1


def test_ngrams_do_not_span_options():
    # same two short option names side by side, different questions: not contamination
    a = [MCQItem(id="a", question="咳铁锈色痰最常见于哪种肺炎？", options=["肺炎链球菌肺炎", "金黄色葡萄球菌肺炎", "其他"],
                 answer=0, language="zh")]
    b = [MCQItem(id="b", question="婴儿气促两周，最可能的诊断？", options=["衣原体肺炎", "肺炎链球菌肺炎", "金黄色葡萄球菌肺炎"],
                 answer=0, language="zh")]
    assert find_overlap(a, b).train_flagged == 0
    assert find_overlap(a, a).train_flagged == 1
