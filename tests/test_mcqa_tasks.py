"""The task registry: a named task binds loader, template and metrics (lm-eval's protocol); unknown names stay
labels."""

from __future__ import annotations

import json

import pytest

from meditune.errors import InputError
from meditune.evaluation.mcqa import MCQAOptions, evaluate_mcqa, load_items
from meditune.evaluation.tasks import TASKS, get_task
from meditune.io import read_json, read_jsonl

LM_EVAL_NAMES = {"medqa_4options", "medmcqa", "pubmedqa", "kormedmcqa"}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from meditune.models import load_model

    return load_model(str(tiny_model_dir), device="cpu", dtype="float32")


def test_registered_tasks_bind_a_loader_a_template_and_metrics():
    from meditune.data import loaders
    from meditune.prompts import TEMPLATES

    assert set(TASKS) == LM_EVAL_NAMES | {"mmlu_medical", "cmmlu_medical", "headqa"}
    for t in TASKS.values():
        assert t.loader in loaders() and t.template in TEMPLATES and t.metrics, t.name
    assert get_task("sample_mcq_en") is None and get_task(None) is None
    assert TASKS["kormedmcqa"].metrics == ("exact_match",) and TASKS["pubmedqa"].metrics == ("acc",)


def write_mmlu(dir_):
    dir_.mkdir()
    (dir_ / "anatomy_test.csv").write_text("Which bone is in the arm?,Femur,Humerus,Tibia,Fibula,B\n"
                                           "Which organ pumps blood?,Heart,Liver,Lung,Kidney,A\n")
    (dir_ / "astronomy_test.csv").write_text("Which planet is red?,Venus,Mars,Earth,Moon,B\n")
    return dir_


def test_a_task_reads_a_plain_path_with_its_loader_and_keeps_its_subjects(tmp_path):
    data = write_mmlu(tmp_path / "mmlu")
    items = load_items(str(data), task=TASKS["mmlu_medical"])
    assert [it.subject for it in items] == ["anatomy", "anatomy"]
    with pytest.raises(Exception):  # noqa: B017 - without the task, a header-less CSV is not a known layout
        load_items(str(data / "anatomy_test.csv"))
    with pytest.raises(InputError, match="mmlu_medical subjects"):
        load_items(str(data / "astronomy_test.csv"), task=TASKS["mmlu_medical"])


def test_task_gives_lm_evals_protocol(tmp_path, tiny, tiny_model_dir):
    pqa = tmp_path / "pqa.json"
    pqa.write_text(json.dumps({str(i): {"QUESTION": f"Does drug {i} work?", "CONTEXTS": [f"Trial {i} found it."],
                                        "final_decision": ["yes", "no", "maybe"][i % 3]} for i in range(4)}))
    paths = evaluate_mcqa(MCQAOptions(data=str(pqa), task="pubmedqa", device="cpu"), tmp_path / "out",
                          model=str(tiny_model_dir), preloaded=tiny)
    res = read_json(paths["results"])
    samples = read_jsonl(paths["samples"])
    assert list(res["results"]) == ["pubmedqa"]
    assert set(res["meditune"]["metrics"]) == {"acc"}  # lm-eval reports acc only for pubmedqa
    assert res["configs"]["pubmedqa"]["lm_eval_equivalent"] == "pubmedqa"
    assert [m["metric"] for m in res["configs"]["pubmedqa"]["metric_list"]] == ["acc"]
    assert res["meditune"]["protocol"]["template"] == "pubmedqa" and res["meditune"]["protocol"]["choices"] == "full"
    assert samples[0]["prompt"].startswith("Abstract: Trial 0 found it.\nQuestion: Does drug 0 work?")
    assert samples[0]["continuations"] == [" yes", " no", " maybe"]


def test_an_explicit_template_wins_and_unknown_tasks_are_labels(tmp_path, tiny, tiny_model_dir):
    data = write_mmlu(tmp_path / "mmlu")
    paths = evaluate_mcqa(MCQAOptions(data=str(data), task="mmlu_medical", template="generic", device="cpu"),
                          tmp_path / "a", model=str(tiny_model_dir), preloaded=tiny)
    assert read_jsonl(paths["samples"])[0]["prompt"].startswith("Question: Which bone")
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"id": "q", "question": "Q?", "options": ["a", "b"], "answer": 0}) + "\n")
    res = read_json(evaluate_mcqa(MCQAOptions(data=str(items), task="my_label", device="cpu"), tmp_path / "b",
                                  model=str(tiny_model_dir), preloaded=tiny)["results"])
    assert list(res["results"]) == ["my_label"] and set(res["meditune"]["metrics"]) == {"acc", "acc_norm"}
    assert res["meditune"]["protocol"]["template"] == "generic"


def test_recipe_stage_takes_a_task():
    from meditune.recipe import parse_recipe

    r = parse_recipe({"name": "t", "stages": [{"name": "medqa", "type": "eval_mcqa", "data": "x.jsonl",
                                               "task": "medqa_4options"}]})
    assert r.stages[0].task == "medqa_4options" and r.stages[0].template is None
