"""The preference build end to end on scripted backends: prompts, outputs, datacard, resume, translation."""

from __future__ import annotations

import json

import pytest

from meditune.errors import ConfigError
from meditune.generation.base import GenerationRequest, ScriptedBackend
from meditune.io import read_jsonl, write_jsonl
from meditune.prefs.build import PrefsStageConfig, build_preferences
from meditune.records import Preference, read_records
from meditune.scoring.dahl import DAHL_INSTRUCTION, split_sentences

QUESTIONS = [
    {"id": "q1", "question": "What does insulin do?", "source": "dahl"},
    {"id": "q2", "question": "What is metformin?", "source": "dahl"},
    {"id": "q3", "question": "Tie question?", "source": "dahl"},
    {"id": "q4", "question": "Empty question?", "source": "dahl"},
    {"id": "q5", "question": "Which letter?", "source": "medlfqa"},
]
ANSWERS = {  # (good generator, bad generator)
    "q1": ("Insulin is true. Glucose is true.", "Insulin is false. Glucose is true."),
    "q2": ("Metformin is true.", "Metformin is false."),
    "q3": ("Both is true.", "Both is true, said differently."),
    "q4": ("Something is true.", ""),
    "q5": ("Y is true.", "X is false."),
}


def generator(which: int):
    def respond(req: GenerationRequest, _i: int) -> str:
        q = next(q for q in QUESTIONS if q["question"] in req.messages[-1]["content"])
        return ANSWERS[q["id"]][which]
    return respond


def judge(req: GenerationRequest, _i: int) -> str:
    text = req.messages[-1]["content"]
    if text.startswith("Please split"):
        return "\n".join(split_sentences(text.rsplit("TEXT: ", 1)[1].split("\nSEPARATED SENTENCES:")[0]))
    if text.startswith("Translate"):
        return "[ko] " + text.split("\n\n", 1)[1]
    return "True" if "true" in text.split("\n", 1)[1] else "False"


class Backends:
    """Backend factory for tests: scripted generators and judge; records every request per model label."""

    def __init__(self, fail: bool = False):
        self.fail, self.made, self.backends = fail, [], {}

    def __call__(self, cfg):
        if self.fail:
            raise AssertionError(f"backend {cfg.label} should not be needed: everything is on disk")
        self.made.append(cfg)
        fn = {"good": generator(0), "bad": generator(1)}.get(cfg.label, judge)
        return self.backends.setdefault(cfg.label, ScriptedBackend(fn))


def config(tmp_path, **over) -> PrefsStageConfig:
    qfile = tmp_path / "questions.jsonl"
    write_jsonl(qfile, QUESTIONS)
    return PrefsStageConfig.model_validate({
        "name": "prefs", "questions": str(qfile),
        "generators": [{"name": "good", "model": "default"},
                       {"name": "bad", "model": "default", "temperature": 1.2, "samples": 1}],
        "scorer": {"type": "dahl", "judge": {"name": "judge"}}, **over})


def test_build_outputs_pairs_and_datacard(tmp_path):
    backends = Backends()
    out = build_preferences(config(tmp_path), tmp_path / "run", backends=backends)
    prefs = read_records(out["dataset"], Preference)
    assert [p.provenance["question_id"] for p in prefs] == ["q1", "q2", "q5"]
    p1 = prefs[0]
    assert p1.chosen == ANSWERS["q1"][0] and p1.rejected == ANSWERS["q1"][1]
    assert (p1.chosen_score, p1.rejected_score) == (1.0, 0.5)
    assert p1.prompt[0].content == "What does insulin do?"  # the question alone; the instruction is provenance
    trl = read_jsonl(out["trl"])
    assert trl[0] == {"prompt": [{"role": "user", "content": "What does insulin do?"}],
                      "chosen": [{"role": "assistant", "content": ANSWERS["q1"][0]}],
                      "rejected": [{"role": "assistant", "content": ANSWERS["q1"][1]}]}
    card = json.loads(open(out["datacard"]).read())
    c = card["counts"]
    assert (c["questions"], c["questions_with_pairs"], c["pairs"]) == (5, 3, 3)
    assert c["questions_dropped"] == {"empty": 1, "tie": 1} and c["answers_dropped"] == {"empty": 1}
    good, bad = card["generators"]
    assert good["dahl"]["score"] == 1.0 and good["dahl"]["n"] == 5 and good["chosen"] == 3
    assert bad["dahl"]["n"] == 4 and bad["dahl"]["dropped_by_reason"] == {"empty": 1} and bad["rejected"] == 3
    assert bad["dahl"]["score"] == pytest.approx((0.5 + 0 + 1 + 0) / 4)
    assert sum(good["histogram"]["counts"]) == 5 and good["histogram"]["edges"][0] == 0.0
    assert sum(card["margin_histogram"]["counts"]) == 3
    assert {s["source"]: s["license"] for s in card["sources"]}["dahl"].startswith("no license file")
    assert card["judge"] == "judge" and card["language"] == "en"
    md = open(out["datacard_md"]).read()
    assert "| good | default | transformers | 5 | 5 |" in md and "| tie | 1 |" in md
    scores = read_jsonl(out["scores"])
    assert len(scores) == 10 and {s["generator"] for s in scores} == {"good", "bad"}


def test_generation_prompt_really_contains_the_instruction(tmp_path):
    """Public-code bug 2: its HF script sent the word 'instruction' instead of the instruction."""
    backends = Backends()
    build_preferences(config(tmp_path), tmp_path / "run", backends=backends)
    good_calls = backends.backends["good"].calls
    assert len(good_calls) == 5
    for req in good_calls:
        q = next(q for q in QUESTIONS if q["id"] == req.id)
        assert req.messages[-1]["content"].startswith(DAHL_INSTRUCTION + "\n" + q["question"])
        assert (req.params.temperature, req.params.top_p, req.params.max_new_tokens) == (0.6, 0.9, 256)
    assert backends.backends["bad"].calls[0].params.temperature == 1.2  # per-generator override
    sys_cfg = config(tmp_path, collection={"instruction_placement": "system"})
    b2 = Backends()
    build_preferences(sys_cfg, tmp_path / "run2", backends=b2)
    assert b2.backends["good"].calls[0].messages == [{"role": "system", "content": DAHL_INSTRUCTION},
                                                     {"role": "user", "content": "What does insulin do?"}]


def test_resume_uses_disk_and_repairs_a_torn_tail(tmp_path):
    run = tmp_path / "run"
    first = build_preferences(config(tmp_path), run, backends=Backends())
    before = open(first["dataset"]).read()
    again = build_preferences(config(tmp_path), run, backends=Backends(fail=True))  # nothing regenerated
    assert open(again["dataset"]).read() == before
    answers = run / "answers" / "bad.jsonl"
    raw = answers.read_bytes()
    answers.write_bytes(raw[: raw.rstrip(b"\n").rfind(b"\n") + 1] + b'{"id": "q5|bad|0", "tex')  # killed write
    scores = run / "scores.jsonl"
    scores.write_bytes(scores.read_bytes()[:-20])
    backends = Backends()
    resumed = build_preferences(config(tmp_path), run, backends=backends)
    assert [r.id for r in backends.backends["bad"].calls] == ["q5"]
    assert "good" not in backends.backends
    assert open(resumed["dataset"]).read() == before
    assert len(read_jsonl(answers)) == 5


def test_translation_keeps_the_original(tmp_path):
    cfg = config(tmp_path, translation={"target_language": "ko", "translator": {"name": "translator"}})
    out = build_preferences(cfg, tmp_path / "run", backends=Backends())
    prefs = read_records(out["dataset"], Preference)
    assert len(prefs) == 3 and all(p.language == "ko" for p in prefs)
    assert prefs[0].chosen == "[ko] " + ANSWERS["q1"][0]
    assert prefs[0].prompt[0].content == "[ko] What does insulin do?"
    assert prefs[0].provenance["original"]["chosen"] == ANSWERS["q1"][0]
    assert prefs[0].provenance["original"]["language"] == "en"
    card = json.loads(open(out["datacard"]).read())
    assert card["translation"]["translated"] == 3 and card["translation"]["failed"] == 0
    assert card["language"] == "ko"


def test_config_errors_name_the_key(tmp_path):
    from meditune.recipe import parse_recipe

    with pytest.raises(ConfigError, match="generators"):
        parse_recipe({"name": "r", "stages": [{"type": "prefs", "questions": "x.jsonl", "generators": []}]})
    with pytest.raises(ConfigError, match="pairing.polcy"):
        parse_recipe({"name": "r", "stages": [{"type": "prefs", "questions": "x.jsonl",
                                               "generators": [{"model": "default"}], "pairing": {"polcy": "x"}}]})
    with pytest.raises(Exception, match="distinct names"):
        config(tmp_path, generators=[{"model": "default"}, {"model": "default"}])


def test_stage_is_registered_with_an_estimate(tmp_path):
    from meditune.stages import registry

    st = registry()["prefs"]
    cfg = config(tmp_path, limit=5)
    assert st.estimate(cfg, None)["generations"] == 10


def test_mcq_questions_show_their_options_and_can_use_the_answer_scorer(tmp_path):
    from meditune.records import MCQItem

    items = [MCQItem(id="m1", question="Which letter?", options=["x", "y"], answer=1, source="medqa_us"),
             MCQItem(id="m2", question="Pick one?", options=["x", "y"], answer=0, source="medqa_us")]
    replies = {"good": "Answer: B", "bad": "Answer: A"}

    def backends(cfg):
        return ScriptedBackend(lambda r, i: replies[cfg.label] if "Which" in r.messages[-1]["content"]
                               else "Answer: A")

    cfg = config(tmp_path, scorer={"type": "answer"})
    out = build_preferences(cfg, tmp_path / "run", backends=backends, items=items)
    [p] = read_records(out["dataset"], Preference)
    assert p.prompt[0].content == "Which letter?\nA. x\nB. y"
    assert (p.chosen, p.rejected, p.chosen_score, p.rejected_score) == ("Answer: B", "Answer: A", 1.0, 0.0)
    card = json.loads(open(out["datacard"]).read())
    assert card["counts"]["questions_dropped"] == {"tie": 1}
    assert {s["source"]: s["license"] for s in card["sources"]}["medqa_us"].startswith("unknown")


def test_question_template_cot_builds_pairs_on_the_cot_strategy_prompt(tmp_path):
    """With `question_template: cot` and no instruction, generators and pair prompts get exactly the chat the CoT
    evaluation strategy sends, so DPO trains on the prompt it is evaluated with."""
    from meditune.evaluation.strategies.cot import cot_messages
    from meditune.records import MCQItem

    items = [MCQItem(id="m1", question="Which letter?", options=["x", "y", "z"], answer=1, source="headqa")]
    seen = []

    def backends(cfg):
        return ScriptedBackend(lambda r, i: seen.append(r.messages) or ("Answer: B" if cfg.label == "good"
                                                                         else "Answer: C"))

    cfg = config(tmp_path, scorer={"type": "answer"}, prompt_with_instruction=True,
                 collection={"question_template": "cot", "instruction": ""})
    out = build_preferences(cfg, tmp_path / "run", backends=backends, items=items)
    want = cot_messages(items[0])
    assert want[-1]["content"].endswith('"Answer: X", where X is the letter of the correct option (A, B, C).')
    assert seen == [want, want]
    [p] = read_records(out["dataset"], Preference)
    assert [m.model_dump(exclude_none=True) for m in p.prompt] == want and p.chosen == "Answer: B"
    # answers collected under the default template are not reused for another one
    with pytest.raises(ConfigError, match="good.config.json"):
        build_preferences(config(tmp_path, scorer={"type": "answer"}), tmp_path / "run", backends=backends,
                          items=items)
    with pytest.raises(ValueError, match="unknown template 'cott'"):
        config(tmp_path, collection={"question_template": "cott"})


def test_resuming_under_another_config_is_refused(tmp_path):
    build_preferences(config(tmp_path), tmp_path / "run", backends=Backends())
    changed = config(tmp_path, generators=[{"name": "good", "model": "default", "temperature": 0.1},
                                           {"name": "bad", "model": "default"}])
    with pytest.raises(ConfigError, match="good.config.json"):
        build_preferences(changed, tmp_path / "run", backends=Backends())
    other_scorer = config(tmp_path, scorer={"type": "dahl", "judge": {"name": "judge"}, "splitter": "sentences"})
    with pytest.raises(ConfigError, match="scores.config.json"):
        build_preferences(other_scorer, tmp_path / "run", backends=Backends())


def test_generators_and_judge_inherit_the_recipe_model_when_unset():
    from meditune.prefs.build import PrefsStageConfig
    from meditune.recipe import Recipe
    from meditune.stages import apply_recipe_defaults

    cfg = PrefsStageConfig.model_validate({"name": "p", "type": "prefs", "questions": "sample:longform",
                                           "generators": [{"name": "a"}, {"name": "b", "model": "other/model"}]})
    recipe = Recipe(name="r", model="org/big", device="cuda", dtype="bf16")
    cfg = apply_recipe_defaults(cfg, recipe)
    assert [g.model.spec for g in cfg.generators] == ["org/big", "other/model"]
    assert cfg.scorer.judge.model.spec == "org/big" and cfg.generators[0].model.device == "cuda"
