"""End-to-end runs of the open evaluations with ScriptedBackend: results layout, CIs, breakdowns, behaviours."""

from __future__ import annotations

import json
import re

import pytest

from meditune.errors import ConfigError, InputError
from meditune.evaluation.bias import BiasOptions, evaluate_bias
from meditune.evaluation.hallucination import HallucinationOptions, evaluate_hallucination
from meditune.evaluation.ner import NEROptions, evaluate_ner, render_entities
from meditune.evaluation.openqa import OpenQAOptions, evaluate_openqa
from meditune.evaluation.pairwise import PairwiseOptions, evaluate_pairwise
from meditune.evaluation.results import load_samples
from meditune.evaluation.safety import SafetyOptions, evaluate_safety
from meditune.evaluation.toxicity import ToxicityOptions, evaluate_toxicity
from meditune.generation.base import ScriptedBackend
from meditune.io import read_json

REFUSE = "I'm sorry, but I can't help with that."


def _results(paths):
    res = read_json(paths["results"])
    task = next(iter(res["results"]))
    return res, res["results"][task], res["meditune"]


def _check_ci(summary):
    assert summary["n"] > 0
    assert summary["ci_low"] <= summary["value"] <= summary["ci_high"]


def _user(req):
    return req.messages[-1]["content"]


def test_openqa_perfect_and_empty_answers(tmp_path):
    from meditune.data import load_source

    refs = {it.id: it.reference for it in load_source("sample:longform")}
    perfect = ScriptedBackend(lambda req, i: refs[req.id])
    res, row, med = _results(evaluate_openqa(OpenQAOptions(data="sample:longform", limit=8), tmp_path / "a",
                                             backend=perfect))
    assert row["bleu4,none"] == pytest.approx(100) and row["rougeL,none"] == pytest.approx(100)
    assert row["corpus_bleu4,none"] == pytest.approx(100)
    assert med["n"] == 8 and "bleu1_ci_low,none" in row
    assert set(med["by_category"]) >= {"bleu1", "rouge2"}
    _check_ci(next(iter(med["by_category"]["rouge1"].values())))
    samples = load_samples(res_path := tmp_path / "a" / "results.json")
    assert res_path.exists() and samples[0]["answer"] == refs[samples[0]["id"]]
    silent = ScriptedBackend(lambda req, i: "")
    _, row, _ = _results(evaluate_openqa(OpenQAOptions(data="sample:longform", limit=8), tmp_path / "b",
                                         backend=silent))
    assert row["bleu1,none"] == 0 and row["rouge1,none"] == 0


def test_openqa_dialogue_uses_last_assistant_turn(tmp_path):
    chats = tmp_path / "chats.jsonl"
    chats.write_text("\n".join(json.dumps({"id": f"c{i}", "messages": [
        {"role": "user", "content": "头痛怎么办"}, {"role": "assistant", "content": "多休息，必要时就医。"}]},
        ensure_ascii=False) for i in range(3)) + "\n", encoding="utf-8")
    seen = []
    backend = ScriptedBackend(lambda req, i: seen.append(req.messages) or "多休息。")
    _, row, _ = _results(evaluate_openqa(OpenQAOptions(data=str(chats)), tmp_path / "o", backend=backend))
    assert seen[0] == [{"role": "user", "content": "头痛怎么办"}]
    # hyp 多休息 (3 chars) vs ref 多休息必要时就医 (8 chars): p1 = 1, BP = exp(1 - 8/3)
    assert row["bleu1,none"] == pytest.approx(100 * 2.718281828459045 ** (1 - 8 / 3))


def test_ner_run_scores_crafted_outputs(tmp_path):
    from meditune.data import load_source

    items = {it.id: it for it in load_source("sample:ner")}

    def answer(req, i):
        it = next(it for it in items.values() if it.text in _user(req))
        ents = {}
        for e in it.entities[:-1]:  # miss the last entity of every sentence
            ents.setdefault(e.type, []).append(e.text)
        return "```json\n" + json.dumps(ents, ensure_ascii=False) + "\n```"

    res, row, med = _results(evaluate_ner(NEROptions(data="sample:ner", limit=10), tmp_path, backend=ScriptedBackend(
        answer)))
    docs = [items[s["id"]] for s in load_samples(tmp_path / "results.json")]
    gold = sum(len(d.entities) for d in docs)
    assert row["micro_precision,none"] == pytest.approx(1.0)
    assert row["micro_recall,none"] == pytest.approx((gold - len(docs)) / gold)
    assert set(med["by_category"]["f1"]) == {"疾病和诊断", "影像检查", "实验室检验", "手术", "药物", "解剖部位"}
    _check_ci(med["metrics"]["micro_f1"])


def test_pairwise_position_bias_cancels_and_better_system_wins(tmp_path):
    qs = "sample:longform"

    def judge_prefers_good(req, i):
        text = _user(req)
        a = text.split("[Answer A]")[1].split("[End of Answer A]")[0]
        return "Reasoning. [[A]]" if "GOOD" in a else "Reasoning. [[B]]"

    systems = {"good": ScriptedBackend(lambda r, i: "GOOD answer"), "bad": ScriptedBackend(lambda r, i: "meh"),
               "worse": ScriptedBackend(lambda r, i: "nothing")}
    opts = PairwiseOptions(data=qs, limit=6, systems=["good", "bad", "worse"], judge="scripted", elo_rounds=50)
    res, row, med = _results(evaluate_pairwise(opts, tmp_path / "p", judge=ScriptedBackend(judge_prefers_good),
                                               system_backends=systems))
    elo = med["by_category"]["elo"]
    assert elo["good"]["value"] > elo["bad"]["value"] and elo["good"]["value"] > elo["worse"]["value"]
    assert med["by_category"]["win_rate"]["good"]["value"] > 0.5
    # a judge that always picks the first answer gives only ties: no system ahead
    always_a = ScriptedBackend(lambda r, i: "[[A]]")
    res, row, med = _results(evaluate_pairwise(opts, tmp_path / "q", judge=always_a, system_backends=systems))
    assert med["by_category"]["win_rate"]["good"]["value"] == pytest.approx(0.5)
    assert row["position_consistency,none"] == 0


def test_pairwise_reads_answer_files_and_names_missing_ids(tmp_path):
    from meditune.data import load_source

    ids = [it.id for it in load_source("sample:longform")][:3]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"id": i, "answer": "long detailed"}) + "\n" for i in ids))
    b.write_text("".join(json.dumps({"id": i, "generations": [{"text": "x"}]}) + "\n" for i in ids[:2]))
    opts = PairwiseOptions(data="sample:longform", limit=3, judge="j", elo_rounds=20,
                           systems=[{"name": "A", "answers": str(a)}, {"name": "B", "answers": str(b)}])
    with pytest.raises(InputError, match=re.escape(ids[2])):
        evaluate_pairwise(opts, tmp_path / "o", judge=ScriptedBackend(lambda r, i: "[[A]]"))
    with pytest.raises(ConfigError, match="two systems"):
        evaluate_pairwise(PairwiseOptions(data="sample:longform", systems=["m"], judge="j"), tmp_path / "z",
                          judge=ScriptedBackend(lambda r, i: ""))


def test_safety_refuse_everything_scores_badly_on_over_refusal(tmp_path):
    opts = SafetyOptions(data="sample:safety", limit=18, benign="sample:benign", benign_limit=12)
    res, row, med = _results(evaluate_safety(opts, tmp_path / "r", backend=ScriptedBackend(lambda r, i: REFUSE)))
    assert row["harmful_compliance,none"] == 0
    assert row["over_refusal,none"] == 1.0
    assert row["safety_balance,none"] == pytest.approx(0.5)
    assert row["harmful_compliance_n,none"] == 18 and row["over_refusal_n,none"] == 12
    from meditune.report.collect import metric_rows  # the report reads these rows with their own n and CI

    by_name = {r.metric: r for r in metric_rows("safety", res)}
    assert by_name["over_refusal"].n == 12 and by_name["harmful_compliance"].n == 18
    assert res["higher_is_better"]["safety"]["over_refusal"] is False
    assert set(med["by_category"]["harmful_compliance"]) == {"1", "2", "3", "4"}
    comply = ScriptedBackend(lambda r, i: "Sure, here is exactly how to do it.")
    _, row2, _ = _results(evaluate_safety(opts, tmp_path / "c", backend=comply))
    assert row2["harmful_compliance,none"] == 1.0 and row2["over_refusal,none"] == 0
    ideal = ScriptedBackend(lambda r, i: REFUSE if r.id.startswith("harmful/") else "The usual dose is 1 g.")
    _, row3, med3 = _results(evaluate_safety(opts, tmp_path / "i", backend=ideal))
    assert row3["safety_balance,none"] == 1.0
    _check_ci(med3["metrics"]["safety_balance"])


def test_safety_judge_classification_and_harmfulness(tmp_path):
    def judge(req, i):
        text = _user(req)
        if "Rate the response" in text:
            return "Score: 5" if "Sure" in text else "Score: 1"
        if req.id.startswith("refusal/benign/"):
            return "Refusal or Compliance"  # unclear: the keyword rule decides
        return "COMPLIANCE" if "Sure" in text else "REFUSAL"

    answers = ScriptedBackend(lambda r, i: "Sure." if r.id.endswith(("001", "002", "003")) else REFUSE)
    opts = SafetyOptions(data="sample:safety", limit=10, benign="sample:benign", benign_limit=5, judge="j")
    res, row, med = _results(evaluate_safety(opts, tmp_path, backend=answers, judge=ScriptedBackend(judge)))
    assert row["harmful_compliance,none"] == pytest.approx(3 / 10)
    assert row["harmfulness,none"] == pytest.approx((3 * 5 + 7 * 1) / 10)
    assert med["protocol"]["classifier"].startswith("judge")
    # benign 001-003 answered "Sure." (keyword: not refused), 004-005 with REFUSE (keyword: refused)
    assert med["judge_unparseable"] == 5 and row["over_refusal,none"] == pytest.approx(2 / 5)
    with pytest.raises(ConfigError, match="judge"):
        evaluate_safety(SafetyOptions(data="sample:safety", classifier="judge"), tmp_path / "x",
                        backend=answers)


def test_toxicity_by_group_with_judge(tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for label, group in (("hate", "asian"), ("neutral", "women")):
        (prompts / f"{label}_{group}_1k.txt").write_text(
            "\n".join(f"- statement {k} about {group}\\n- another one\\n-" for k in range(4)) + "\n")
    gen = ScriptedBackend(lambda r, i: " they are awful\n- more" if "asian" in r.prompt else " they are kind")
    judge = ScriptedBackend(lambda r, i: "YES" if "awful" in _user(r) else "NO")
    res, row, med = _results(evaluate_toxicity(ToxicityOptions(data=f"toxigen:{prompts}", judge="j"), tmp_path / "o",
                                               backend=gen, judge=judge))
    assert gen.calls[0].prompt is not None and gen.calls[0].messages == []  # raw prompt, no chat template
    assert med["by_category"]["toxic"]["asian"]["value"] == 1.0
    assert med["by_category"]["toxic"]["women"]["value"] == 0.0
    assert row["toxic,none"] == pytest.approx(0.5)
    assert load_samples(tmp_path / "o" / "results.json")[0]["continuation"] in ("they are awful", "they are kind")


def test_bias_reverse_scoring_and_group_difference(tmp_path):
    def answer(req, i):
        text = _user(req)
        return "5" if "elderly patients" in text.lower() else "3"  # agrees more when the statement names the elderly

    opts = BiasOptions(groups=["elderly", "young"])
    res, row, med = _results(evaluate_bias(opts, tmp_path, backend=ScriptedBackend(answer)))
    diff = med["by_category"]["group_minus_neutral"]
    # swap items: 14, of which some are reverse scored: +2 for forward items, -2 for reversed ones
    samples = load_samples(tmp_path / "results.json")
    swap_items = {s["item_id"]: s["reverse_scored"] for s in samples if s["swap"]}
    expected = sum(-2 if rev else 2 for rev in swap_items.values()) / len(swap_items)
    assert diff["elderly"]["value"] == pytest.approx(expected)
    assert diff["young"]["value"] == pytest.approx(0)
    assert med["by_category"]["stigma_by_group"]["neutral"]["n"] == len(swap_items)
    assert set(med["by_category"]["stigma_by_dimension"]) >= {"authoritarianism", "pain credibility"}
    assert row["stigma,none"] == pytest.approx(3.0)  # neutral and slot-free statements all answered 3


def test_hallucination_with_scripted_judge(tmp_path):
    def judge(req, i):
        text = _user(req)
        if "SEPARATED SENTENCES" in text:
            return "Fact one.\nFact two.\nFact three."
        if "Does the answer above state" in text:
            return "YES" if "Chest pain" in text.split("Statement:")[1] else "NO"
        return "True" if "Fact one" in text or "Fact two" in text else "False"

    opts = HallucinationOptions(data="sample:longform", limit=4, judge="j")
    res, row, med = _results(evaluate_hallucination(opts, tmp_path, backend=ScriptedBackend(lambda r, i: "An answer."),
                                                    judge=ScriptedBackend(judge)))
    assert row["dahl,none"] == pytest.approx(2 / 3)
    assert 0 <= row["must_have_coverage,none"] <= 1 and "nice_to_have_coverage,none" in row
    s = load_samples(tmp_path / "results.json")[0]
    assert s["dahl"]["evidence"]["n_facts"] == 3 and s["coverage"]["must_have"][0]["covered"] is True
    assert med["protocol"]["splitter"] == "judge" and med["protocol"]["verifier"] == "judge"


def test_wrong_record_kind_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="SafetyItem"):
        evaluate_ner(NEROptions(data="sample:safety"), tmp_path, backend=ScriptedBackend(lambda r, i: ""))
    with pytest.raises(ConfigError, match="judge"):
        evaluate_toxicity(ToxicityOptions(data="sample:corpus"), tmp_path, backend=ScriptedBackend(lambda r, i: ""))


def test_stage_types_registered_with_recipe_defaults():
    from meditune.evaluation.stage import effective_options
    from meditune.stages import registry

    reg = registry()
    for name in ("eval_open", "eval_pairwise", "eval_hallucination", "eval_ner", "eval_safety", "eval_toxicity",
                 "eval_bias"):
        assert name in reg
    st = reg["eval_safety"]
    cfg = st.config(name="safety", type="eval_safety", data="sample:safety")

    from meditune.recipe import Recipe

    recipe = Recipe(name="r", model="my-model", seed=7, device="cpu", dtype="float32")
    opts = effective_options(cfg, SafetyOptions, recipe)
    assert opts.model.spec == "my-model" and opts.model.device == "cpu" and opts.seed == 7 and opts.task == "safety"
    assert st.estimate(cfg, recipe)["items"] == 144
    with pytest.raises(Exception, match="extra|not permitted"):
        st.config(name="s", type="eval_safety", data="x", bogus=1)


def test_safety_without_benign_set_reports_no_over_refusal(tmp_path):
    opts = SafetyOptions(data="sample:safety", limit=4, benign=None)
    res, row, med = _results(evaluate_safety(opts, tmp_path, backend=ScriptedBackend(lambda r, i: REFUSE)))
    assert "over_refusal" not in med["metrics"] and "safety_balance" not in med["metrics"]
    assert row["harmful_compliance,none"] == 0 and med["n_benign"] == 0


def test_pairwise_on_two_eval_open_runs(tmp_path):
    paths = {}
    for name, text in (("long", "A long and complete answer."), ("short", "No.")):
        paths[name] = evaluate_openqa(OpenQAOptions(data="sample:longform", limit=3), tmp_path / name,
                                      backend=ScriptedBackend(lambda r, i, t=text: t))["results"]
    judge = ScriptedBackend(lambda r, i: "[[A]]" if "[Answer A]\nA long" in _user(r) else "[[B]]")
    opts = PairwiseOptions(data="sample:longform", limit=3, judge="j", elo_rounds=20,
                           systems=[{"name": n, "answers": p} for n, p in paths.items()])
    _, row, med = _results(evaluate_pairwise(opts, tmp_path / "pw", judge=judge))
    assert med["by_category"]["win_rate"]["long"]["value"] == 1.0 and row["position_consistency,none"] == 1.0


def test_ner_gold_fed_back_scores_near_one_on_ccks_dev(shared_data, tmp_path):
    """The ceiling the span mapping imposes on real CCKS annotations (measured 0.980 on all 400 dev docs)."""
    from meditune.data import load_source

    spec = f"ccks:{shared_data / 'ccks2019_ner' / 'dev.json'}"
    by_text = {it.text: it for it in load_source(spec)}

    def oracle(req, i):
        it = by_text[_user(req).rsplit("文本：", 1)[1].rsplit("\n输出：", 1)[0]]
        return render_entities((e.type, e.text) for e in it.entities)

    _, row, _ = _results(evaluate_ner(NEROptions(data=spec, limit=100), tmp_path, backend=ScriptedBackend(oracle)))
    assert row["micro_recall,none"] > 0.98 and row["micro_precision,none"] > 0.93
