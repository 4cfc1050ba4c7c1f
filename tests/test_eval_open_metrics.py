"""Metric functions of the open evaluations against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from meditune.evaluation.bias import parse_likert, stigma_score
from meditune.evaluation.ner import (
    CCKS_TYPES,
    counts,
    map_spans,
    micro_scores,
    ner_prompt,
    parse_entities,
    prf,
    render_entities,
)
from meditune.evaluation.openqa import corpus_bleu, rouge, sentence_bleu, text_metrics, tokenize
from meditune.evaluation.pairwise import (
    bradley_terry_elo,
    combine_orders,
    elo_with_ci,
    online_elo,
    parse_pairwise_verdict,
)
from meditune.scoring.refusal import keyword_refusal, parse_refusal

# ------------------------------------------------------------------------------------------ tokenisation


def test_tokenize_zh_ko_en():
    assert tokenize("患者胸痛。") == ["患", "者", "胸", "痛"]
    assert tokenize("흉통이 있습니다") == ["흉", "통", "이", "있", "습", "니", "다"]
    assert tokenize("흉통이 있습니다", "eojeol") == ["흉통이", "있습니다"]
    assert tokenize("Chest PAIN, 2 days!") == ["chest", "pain", "2", "days"]
    assert tokenize("CT示肺炎 pneumonia") == ["ct", "示", "肺", "炎", "pneumonia"]


# ------------------------------------------------------------------------------------------ BLEU / ROUGE

def test_bleu_en_hand_computed():
    # 3 of 3 unigrams match, hyp 3 vs ref 6 tokens: BP = exp(1 - 6/3) = e^-1.
    assert sentence_bleu("the cat sat", ["the cat sat on the mat"], 1) == pytest.approx(100 * math.exp(-1))
    # identical strings: every order 100
    assert sentence_bleu("fever and cough for two days", ["Fever and cough, for two days."], 4) == pytest.approx(100)


def test_bleu_rouge_zh_hand_computed():
    m = text_metrics("胸痛三天", ["胸痛两天"])
    # unigrams: 胸 痛 天 match of 4 -> 0.75; bigrams: 胸痛 of 3 -> 1/3; equal lengths: BP = 1
    assert m["bleu1"] == pytest.approx(75.0)
    assert m["bleu2"] == pytest.approx(100 * math.sqrt(0.75 * (1 / 3)))
    assert m["rouge1"] == pytest.approx(75.0)
    assert m["rouge2"] == pytest.approx(100 / 3)
    assert m["rougeL"] == pytest.approx(75.0)  # LCS 胸痛天 = 3


def test_bleu_rouge_ko_hand_computed():
    # syllables: hyp 두 통 이 있 다 (5), ref 두 통 이 심 하 다 (6)
    m = text_metrics("두통이 있다", ["두통이 심하다"])
    p1 = 4 / 5
    assert m["bleu1"] == pytest.approx(100 * p1 * math.exp(1 - 6 / 5))
    r1_p, r1_r = 4 / 5, 4 / 6
    assert m["rouge1"] == pytest.approx(100 * 2 * r1_p * r1_r / (r1_p + r1_r))
    # bigrams: 두통 통이 match of hyp 4 (두통 통이 이있 있다) and ref 5
    assert m["rouge2"] == pytest.approx(100 * 2 * (2 / 4) * (2 / 5) / (2 / 4 + 2 / 5))
    # eojeol tokens: only 두통이 matches of 2 words each -> P = R = 0.5
    assert rouge("두통이 있다", ["두통이 심하다"], korean="eojeol")["rouge1"] == pytest.approx(50.0)


def test_rouge_en_and_best_reference():
    r = rouge("the cat sat", ["the cat sat on the mat", "a dog"])
    assert r["rouge1"] == pytest.approx(100 * 2 * 1 * 0.5 / 1.5)
    assert r["rouge2"] == pytest.approx(100 * 2 * 1 * 0.4 / 1.4)


def test_corpus_bleu_matches_sacrebleu_and_has_ci():
    from sacrebleu.metrics import BLEU

    hyps = ["the cat sat on a mat", "hello there friend", "chest pain"]
    refs = ["the cat sat on the mat", "hello there my friend", "chest pain radiating"]
    got = corpus_bleu(hyps, refs, 2, resamples=200)
    want = BLEU(tokenize="none", max_ngram_order=2).corpus_score(hyps, [refs]).score
    assert got["value"] == pytest.approx(want)
    assert got["ci_low"] <= got["value"] <= got["ci_high"] and got["n"] == 3


# ------------------------------------------------------------------------------------------ NER

def test_ner_parsing_formats():
    assert parse_entities('好的\n```json\n{"疾病": ["胃癌"], "drug": "阿司匹林", "手术": []}\n```') == [
        ("疾病和诊断", "胃癌"), ("药物", "阿司匹林")]
    assert parse_entities('[{"type": "影像检查", "entity": "腹部CT"}] 以上') == [("影像检查", "腹部CT")]
    assert parse_entities("疾病和诊断：胃癌、高血压\n药物: 阿司匹林\n- 腹部CT (影像检查)\n右下腹 - 解剖部位\n其他：无") == [
        ("疾病和诊断", "胃癌"), ("疾病和诊断", "高血压"), ("药物", "阿司匹林"), ("影像检查", "腹部CT"),
        ("解剖部位", "右下腹")]
    assert parse_entities("I don't know") == []


def test_ner_answer_cut_by_max_new_tokens_keeps_its_complete_entities():
    full = render_entities([("疾病和诊断", "胃癌"), ("疾病和诊断", "高血压"), ("影像检查", "胸部CT"),
                            ("药物", 'a "quoted" 药'), ("药物", "奥美拉唑")])
    cut = full[:full.index("奥美") + 1]  # stopped inside the last string
    assert parse_entities(cut) == [("疾病和诊断", "胃癌"), ("疾病和诊断", "高血压"), ("影像检查", "胸部CT"),
                                   ("药物", 'a "quoted" 药')]
    # cut inside a key, right after one, and before any complete entity
    assert parse_entities(full[:full.index("药物") + 1]) == [("疾病和诊断", "胃癌"), ("疾病和诊断", "高血压"),
                                                             ("影像检查", "胸部CT")]
    assert parse_entities('{"疾病和诊断": ["胃癌", "高') == [("疾病和诊断", "胃癌")]
    assert parse_entities('{"疾病和诊断": ["胃') == []
    # a complete object still wins over anything after it
    assert parse_entities(full + ' {"手术": ["x') == parse_entities(full)


def test_ner_render_then_parse_gives_the_entities_back():
    x = [("疾病和诊断", "胃癌"), ("疾病和诊断", "高血压"), ("实验室检验", "CA19-9"), ("药物", 'a "quoted" 药'),
         ("解剖部位", "胃")]
    out = render_entities(x)
    assert parse_entities(out) == x
    # the format the prompt asks for: one JSON object, all six types as keys, empty lists included
    assert json.loads(out) == {"疾病和诊断": ["胃癌", "高血压"], "影像检查": [], "实验室检验": ["CA19-9"], "手术": [],
                               "药物": ['a "quoted" 药'], "解剖部位": ["胃"]}
    assert list(json.loads(out)) == list(CCKS_TYPES)
    # repeated mentions are written once; entities come out grouped by type in CCKS order, in input order
    assert parse_entities(render_entities([("解剖部位", "胃"), ("药物", "奥美拉唑"), ("解剖部位", "胃")])) == [
        ("药物", "奥美拉唑"), ("解剖部位", "胃")]
    assert parse_entities(render_entities([])) == []
    with pytest.raises(ValueError, match="'症状' is not one of"):
        render_entities([("症状", "头痛")])


def test_ner_render_round_trip_on_ccks_gold(shared_data):
    """Every CCKS-2019 document's gold entities survive render -> parse, except strings the parser trims (a
    leading or trailing space, quote or full stop: 0.6% of the entities)."""
    from meditune.data import load_source

    trim = "\"'“”‘’[]【】。."
    docs = [it for split in ("train", "dev")
            for it in load_source(f"ccks:{shared_data / 'ccks2019_ner' / f'{split}.json'}")]
    stable = [it for it in docs if all(e.text.strip().strip(trim).strip() == e.text for e in it.entities)]
    assert len(stable) > 0.9 * len(docs)
    for it in stable:
        gold = [(e.type, e.text) for e in sorted(it.entities, key=lambda e: (e.start, e.end))]
        want = list(dict.fromkeys(sorted(gold, key=lambda g: CCKS_TYPES.index(g[0]))))
        assert parse_entities(render_entities(gold)) == want, it.id


def test_ner_prompt_fills_the_text_and_keeps_the_example_braces():
    p = ner_prompt("患者头痛。")
    assert p.endswith("文本：患者头痛。\n输出：") and '输出：{"疾病和诊断": ["胃癌"]' in p
    assert ner_prompt("x", "T {text} {json}") == "T x {json}"


def test_ner_f1_on_crafted_predictions():
    text = "患者胃癌术后，胃癌复发，口服奥美拉唑。胃部不适。"
    gold = {(2, 4, "疾病和诊断"), (7, 9, "疾病和诊断"), (14, 18, "药物"), (19, 20, "解剖部位")}
    pred, unmapped = map_spans(text, [("解剖部位", "胃"), ("疾病和诊断", "胃癌"), ("药物", "阿莫西林"),
                                      ("手术", "复发")])
    # 胃癌 placed first at both mentions; 胃 only where it is not inside 胃癌
    assert pred == {(2, 4, "疾病和诊断"), (7, 9, "疾病和诊断"), (19, 20, "解剖部位"), (9, 11, "手术")}
    assert unmapped == [("药物", "阿莫西林")]
    tp, fp, fn = counts(gold, pred, len(unmapped))
    assert (tp, fp, fn) == (3, 2, 1)  # fp: 复发 as 手术 + the unmapped drug; fn: 奥美拉唑
    p, r, f = prf(tp, fp, fn)
    assert (p, r) == (pytest.approx(3 / 5), pytest.approx(3 / 4)) and f == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert counts(gold, pred, 0, "药物") == (0, 0, 1)
    first, _ = map_spans(text, [("疾病和诊断", "胃癌")], mode="first")
    assert first == {(2, 4, "疾病和诊断")}
    # micro over two documents sums counts before dividing
    micro = micro_scores(np.array([[2, 3, 1], [1, 0, 0]]), resamples=50)
    assert micro["precision"]["value"] == pytest.approx(3 / 6)
    assert micro["recall"]["value"] == pytest.approx(3 / 4)


# ------------------------------------------------------------------------------------------ pairwise / Elo

def test_verdict_parsing_and_order_combination():
    assert parse_pairwise_verdict("Reasoning... [[A]] hmm, final [[B]]") == "B"
    assert parse_pairwise_verdict("Final verdict: Assistant A") == "A"
    assert parse_pairwise_verdict("Answer B is clearly better.") == "B"
    assert parse_pairwise_verdict("[[C]]") == "tie"
    assert parse_pairwise_verdict("Both are equally good, it's a tie.") == "tie"
    assert parse_pairwise_verdict("B") == "B"
    assert parse_pairwise_verdict("I like both answers") is None
    assert combine_orders("A", "B") == (1.0, True)  # x first: A wins; y first: B (= x) wins
    assert combine_orders("A", "A") == (0.5, False)  # always the first answer: position bias cancels
    assert combine_orders(None, "B") == (1.0, False)
    assert combine_orders(None, None) == (None, False)


def test_online_elo_known_tournament():
    r = online_elo([("a", "b", 1.0)], k=32)
    assert r == {"a": 1016.0, "b": 984.0}
    r = online_elo([("a", "b", 1.0), ("b", "a", 1.0)], k=32)
    e_b = 1 / (1 + 10 ** ((1016 - 984) / 400))
    assert r["b"] == pytest.approx(984 + 32 * (1 - e_b))
    assert r["a"] == pytest.approx(1016 - 32 * (1 - e_b))


def test_bradley_terry_known_tournament():
    # a beats b 3 times, b beats a once: strength ratio 3 -> rating gap 400 log10(3), mean 1000
    r = bradley_terry_elo([("a", "b", 1.0)] * 3 + [("b", "a", 1.0)], prior=0)
    assert r["a"] - r["b"] == pytest.approx(400 * math.log10(3), abs=1e-6)
    assert (r["a"] + r["b"]) / 2 == pytest.approx(1000)
    # ties count half: 1 win + 2 ties vs 0 -> 2:1 ratio
    r = bradley_terry_elo([("a", "b", 1.0), ("a", "b", 0.5), ("a", "b", 0.5)], prior=0)
    assert r["a"] - r["b"] == pytest.approx(400 * math.log10(2), abs=1e-6)


def test_elo_bootstrap_ranks_dominant_player_with_ci():
    battles = [("strong", "mid", 1.0), ("mid", "weak", 1.0), ("strong", "weak", 1.0), ("weak", "strong", 0.5)] * 8
    r = elo_with_ci(battles, rounds=100, seed=1)
    assert r["strong"]["value"] > r["mid"]["value"] > r["weak"]["value"]
    for v in r.values():
        assert v["ci_low"] <= v["value"] <= v["ci_high"] and v["n"] > 0
    assert r["strong"]["ci_low"] > r["weak"]["ci_high"]


# ------------------------------------------------------------------------------------------ safety / bias parsing

def test_refusal_classification():
    assert keyword_refusal("I'm sorry, but I can't help with that request.")
    assert keyword_refusal("I cannot provide instructions for this.")
    assert keyword_refusal("抱歉，我不能提供这类信息。")
    assert keyword_refusal("")
    assert not keyword_refusal("The maximum daily dose of acetaminophen for adults is 4 g.")
    assert not keyword_refusal("Take it with food. " * 30 + "I can't stress enough: see a doctor.")
    assert parse_refusal("REFUSAL") is True and parse_refusal("Compliance.") is False
    assert parse_refusal("Refusal or Compliance") is None  # a judge echoing both options decided nothing
    assert parse_refusal("Refuse or Compliant") is None
    assert parse_refusal("1. Refuse") is True
    assert parse_refusal("unclear") is None


def test_likert_parsing_and_reverse_scoring():
    scale = ["strongly disagree", "disagree", "neutral", "agree", "strongly agree"]
    assert parse_likert("4", scale) == 4
    assert parse_likert("2. disagree", scale) == 2
    assert parse_likert("I strongly disagree with this.", scale) == 1
    assert parse_likert("My answer is: 5", scale) == 5
    assert parse_likert("Agree.", scale) == 4
    assert parse_likert("9", scale) is None and parse_likert("", scale) is None
    assert stigma_score(5, 5, reverse=False) == 5 and stigma_score(5, 5, reverse=True) == 1
