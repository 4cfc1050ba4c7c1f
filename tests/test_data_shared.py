"""Item counts of every real dataset in ../shared/data equal those in its README / SOURCE.txt (skipped when absent)."""

from __future__ import annotations

from collections import Counter

import pytest

from meditune.data import load_source
from meditune.errors import InputError

pytestmark = pytest.mark.shared

# (spec relative to ../shared/data, expected items, where the number comes from)
COUNTS = [
    ("medqa_us:medqa_us/US/dev.jsonl", 1272, "README: dev 1272 (5 options)"),
    ("medqa_us:medqa_us/US/4_options/phrases_no_exclude_dev.jsonl", 1272, "README: dev 1272 (4 options)"),
    ("medqa_mainland:medqa_mainland/Mainland/dev.jsonl", 3425, "README: dev 3425"),
    ("medqa_mainland:medqa_mainland/Mainland/4_options/dev.jsonl", 3425, "README: dev 3425"),
    ("medqa_taiwan:medqa_taiwan/Taiwan/dev.jsonl", 1412, "README: dev 1412"),
    ("medqa_taiwan:medqa_taiwan/Taiwan/tw_translated_jsonl/en/dev-2en.jsonl", 1412, "README: + translations"),
    ("medqa_taiwan:medqa_taiwan/Taiwan/tw_translated_jsonl/zh/dev-2zh.jsonl", 1412, "README: + translations"),
    ("medmcqa:medmcqa/dev_first500.json", 500, "README: first 500 lines"),
    ("pubmedqa:pubmedqa/pqal_trainval.json", 500, "README: 500 PQA-L items outside test"),
    ("mmlu:mmlu_medical/dev_reformatted", 30, "README: 5-shot dev files, 6 subjects"),
    ("cmmlu:cmmlu_medical/dev", 50, "README: dev (5 each), 10 subjects"),
    ("kormedmcqa:kormedmcqa/doctor/train.csv", 1890, "HF card (SOURCE: counts match)"),
    ("kormedmcqa:kormedmcqa/doctor/valid.csv", 164, "HF card dev"),
    ("kormedmcqa:kormedmcqa/nurse/train.csv", 582, "HF card"),
    ("kormedmcqa:kormedmcqa/nurse/valid.csv", 291, "HF card dev"),
    ("kormedmcqa:kormedmcqa/pharm/train.csv", 632, "HF card"),
    ("kormedmcqa:kormedmcqa/pharm/valid.csv", 300, "HF card dev"),
    ("kormedmcqa:kormedmcqa/dentist/train.csv", 297, "HF card"),
    ("kormedmcqa:kormedmcqa/dentist/valid.csv", 304, "HF card dev"),
    ("headqa:headqa/es/train_HEAD.json", 2657, "HEAD-QA paper: train 2657"),
    ("headqa:headqa/es/dev_HEAD.json", 1366, "HEAD-QA paper: dev 1366"),
    ("headqa:headqa/en/train_HEAD_EN.json", 2657, "HEAD-QA paper: train 2657"),
    ("headqa:headqa/en/dev_HEAD_EN.json", 1366, "HEAD-QA paper: dev 1366"),
    ("dahl:dahl/questions.csv", 8573, "README: 8,573 questions"),
    ("medlfqa:medlfqa/healthsearch_qa_test.jsonl", 3173, "README: 1263 empty rows; HealthSearchQA has 3,173"),
    ("medlfqa:medlfqa/live_qa_test.jsonl", 104, "LiveQA test: 104 questions"),
    ("medlfqa:medlfqa/medication_qa_test.jsonl", 690, "MedicationQA: 690 rows"),
    ("liveqa:liveqa_medical/TREC-2017-LiveQA-Medical-Test.xml", 104, "SOURCE: 104 test questions"),
    ("liveqa:liveqa_medical/TREC-2017-LiveQA-Medical-Test-Questions-w-summaries.xml", 104, "same questions"),
    ("liveqa:liveqa_medical/TREC-2017-LiveQA-Medical-Train-1.xml", 200, "Readme: 200 NLM questions"),
    ("liveqa:liveqa_medical/TREC-2017-LiveQA-Medical-Train-2.xml", 246, "Readme: 246 NLM questions"),
    ("medicationqa:medicationqa/MedInfo2019-QA-Medications.xlsx", 690, "README: 690 rows"),
    ("healthsearchqa:healthsearchqa/test.jsonl", 3173, "README: 3,173"),
    ("medsafetybench:medsafetybench/train", 900, "README: train 900"),
    ("medsafetybench:medsafetybench/med_harm_llama3", 74374, "MedSafetyBench README: 74,374 requests"),
    ("sharegpt:general_dpo_zh/dpo_zh_500.jsonl", 500, "README: 500"),
    ("cmd:cmd_chinese_medical_dialogue/样例_内科5000-6000.csv", 7644, "README: 7,644 pairs"),
    ("cmd:cmd_chinese_medical_dialogue/内科.txt", 4048, "README: 4,048 pairs"),
    ("ccks:ccks2019_ner/train.json", 600, "README: train 600"),
    ("ccks:ccks2019_ner/dev.json", 400, "README: dev 400"),
    ("cmb_clin:cmb/CMB-Clin/CMB-test-qa.json", 208, "74 cases (README), 208 questions"),
    ("toxigen:toxigen/prompts", 31000, "README: 1000 lines per prompt file, 31 files"),
]


@pytest.mark.parametrize("spec,expected,why", COUNTS, ids=[c[0].split(":", 1)[1] for c in COUNTS])
def test_counts(shared_data, spec, expected, why):
    name, rel = spec.split(":", 1)
    assert len(load_source(f"{name}:{shared_data / rel}")) == expected, why


def test_ultrafeedback_train_drops_two_empty_pairs(shared_data, caplog):
    # README: train 1000 rows; rows 479 (empty rejected) and 834 (empty chosen) cannot train a preference model;
    # rows 307, 656, 911 and 998 have chosen == rejected: an error unless drop_identical=true skips them
    path = shared_data / "ultrafeedback_subset/train_clean.jsonl"
    with pytest.raises(InputError, match="line 307: field 'rejected'.*drop_identical=true"):
        load_source(f"ultrafeedback:{path}")
    recs = load_source(f"ultrafeedback:{path}", drop_identical=True)
    assert len(recs) == 994 and caplog.text.count("skipped, empty") == 2
    assert "skipped 4 pair(s) whose chosen equals rejected (first at line 307)" in caplog.text
    assert all(r.chosen_score is not None for r in recs)


def test_ultrafeedback_eval_has_one_identical_pair(shared_data):
    # README: eval 200 rows; row 44 has chosen == rejected
    path = shared_data / "ultrafeedback_subset/eval_clean.jsonl"
    with pytest.raises(InputError, match="line 44: field 'rejected'"):
        load_source(f"ultrafeedback:{path}")
    assert len(load_source(f"ultrafeedback:{path}", drop_identical=True)) == 199


def test_details_of_real_formats(shared_data):
    us5 = load_source(f"medqa_us:{shared_data / 'medqa_us/US/dev.jsonl'}")
    us4 = load_source(f"medqa_us:{shared_data / 'medqa_us/US/4_options/phrases_no_exclude_dev.jsonl'}")
    assert {len(r.options) for r in us5} == {5} and {len(r.options) for r in us4} == {4}
    assert us5[0].options[us5[0].answer] == us4[0].options[us4[0].answer]  # same question, same answer text
    med = load_source(f"medmcqa:{shared_data / 'medmcqa/dev_first500.json'}")
    assert Counter(r.answer for r in med).keys() <= {0, 1, 2, 3} and med[0].answer == 0  # cop 1 -> A
    few = load_source(f"kormedmcqa:{shared_data / 'kormedmcqa'}")
    fewshot = [r for r in few if r.id.split(":")[0].endswith("fewshot")]
    assert len(fewshot) == 20 and all(r.rationale for r in fewshot)
    assert sorted(Counter(r.answer for r in fewshot if r.id.startswith("doctor/")).keys()) == [0, 1, 2, 3, 4]
    head = load_source(f"headqa:{shared_data / 'headqa/es/dev_HEAD.json'}")
    assert sum(r.meta["has_image"] for r in head) == 30
    ccks = load_source(f"ccks:{shared_data / 'ccks2019_ner/train.json'}")
    assert sum(len(r.entities) for r in ccks) == 10311
    live = load_source(f"liveqa:{shared_data / 'liveqa_medical/TREC-2017-LiveQA-Medical-Train-1.xml'}")
    assert sum(len(r.meta["answers"]) for r in live) == 388  # Readme: 388 question-answer pairs
    hs = load_source(f"healthsearchqa:{shared_data / 'healthsearchqa/test.jsonl'}")
    assert len({r.question for r in hs}) == 3156  # README: 3156 unique
    cmb = load_source(f"cmb_clin:{shared_data / 'cmb/CMB-Clin/CMB-test-qa.json'}")
    assert len({r.meta["case"] for r in cmb}) == 74  # README: 74 cases
    pub = load_source(f"pubmedqa:{shared_data / 'pubmedqa/pqal_trainval.json'}")
    assert all(r.context and r.options == ["yes", "no", "maybe"] for r in pub)


def test_plain_paths_are_sniffed(shared_data):
    assert len(load_source(shared_data / "medmcqa/dev_first500.json")) == 500
    assert len(load_source(shared_data / "pubmedqa/pqal_trainval.json")) == 500
    assert len(load_source(shared_data / "headqa/en/dev_HEAD_EN.json")) == 1366
    assert len(load_source(shared_data / "general_dpo_zh/dpo_zh_500.jsonl")) == 500
    assert len(load_source(shared_data / "kormedmcqa/nurse/valid.csv")) == 291


SAMPLE_VS_REAL = [
    ("mcq", ["medqa_us:medqa_us/US/dev.jsonl", "medqa_mainland:medqa_mainland/Mainland/dev.jsonl",
             "medqa_taiwan:medqa_taiwan/Taiwan/dev.jsonl", "kormedmcqa:kormedmcqa", "cmmlu:cmmlu_medical/dev",
             "medmcqa:medmcqa/dev_first500.json", "mmlu:mmlu_medical/dev_reformatted", "headqa:headqa/en",
             "pubmedqa:pubmedqa/pqal_trainval.json"]),
    ("longform", ["dahl:dahl/questions.csv", "medlfqa:medlfqa/kqa_golden_test_MedLFQA.jsonl",
                  "healthsearchqa:healthsearchqa/test.jsonl", "liveqa:liveqa_medical/TREC-2017-LiveQA-Medical-Test.xml"]),
    ("safety", ["medsafetybench:medsafetybench/train"]),
]


@pytest.mark.parametrize("sample,real", SAMPLE_VS_REAL, ids=[s for s, _ in SAMPLE_VS_REAL])
def test_bundled_samples_share_no_text_with_benchmarks(shared_data, sample, real):
    from meditune.data.overlap import find_overlap
    from meditune.data.sample import sample_names

    if sample not in sample_names():
        pytest.skip(f"sample:{sample} not bundled")
    mine = load_source(f"sample:{sample}")
    for spec in real:
        name, rel = spec.split(":", 1)
        report = find_overlap(mine, load_source(f"{name}:{shared_data / rel}"), n=13)
        assert report.train_flagged == 0, (spec, report.flagged[:3])
