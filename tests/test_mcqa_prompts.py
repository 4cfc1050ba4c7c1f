"""Prompt templates match lm-eval's task prompts; continuations, shots, chat rendering; answer extraction."""

from __future__ import annotations

import pytest

from meditune.errors import ConfigError
from meditune.evaluation.strategies.direct import parse_direct_answer
from meditune.generation.sampling import truncate_at_stop
from meditune.prompts import PromptBuilder, get_template, pick_shots
from meditune.records import MCQItem


def item(i=0, q="Which organ secretes insulin?", opts=("Liver", "Pancreas", "Kidney", "Spleen"), ans=1, **kw):
    return MCQItem(id=f"q{i}", question=q, options=list(opts), answer=ans, **kw)


def test_medqa_template_matches_lm_eval_function():
    from lm_eval.tasks.medqa.preprocess_medqa import doc_to_text

    it = item()
    doc = {"sent1": it.question, **{f"ending{i}": o for i, o in enumerate(it.options)}}
    assert get_template("medqa").render_question(it) == doc_to_text(doc)


def test_medmcqa_template_matches_lm_eval_function():
    from lm_eval.tasks.medmcqa.utils_medmcqa import doc_to_text

    it = item()
    doc = {"question": it.question, "opa": "Liver", "opb": "Pancreas", "opc": "Kidney", "opd": "Spleen"}
    assert get_template("medmcqa").render_question(it) == doc_to_text(doc)


def test_pubmedqa_template_matches_lm_eval_function():
    from lm_eval.tasks.pubmedqa.preprocess_pubmedqa import doc_to_text

    it = item(q="Does X help?", opts=("yes", "no", "maybe"), ans=0, context="Line one.\nLine two.")
    assert get_template("pubmedqa").render_question(it) == doc_to_text(
        {"CONTEXTS": ["Line one.", "Line two."], "QUESTION": "Does X help?"})
    r = PromptBuilder(get_template("pubmedqa"), "full").render(it)
    assert r.continuations == [" yes", " no", " maybe"]


def test_kormedmcqa_and_mmlu_templates():
    it = item(q="  다음 중 옳은 것은? ", opts=("가", "나", "다", "라", "마"), ans=2)
    assert get_template("kormedmcqa").render_question(it) == "다음 중 옳은 것은?\nA. 가\nB. 나\nC. 다\nD. 라\nE. 마\n정답："
    b = PromptBuilder(get_template("mmlu"), "letters")
    ctx = b.context(item(subject="clinical_knowledge"))
    assert ctx.startswith("The following are multiple choice questions (with answers) about clinical knowledge.\n\n")
    assert ctx.endswith("D. Spleen\nAnswer:")


def test_letters_and_full_continuations():
    it = item()
    assert PromptBuilder(get_template("medqa"), "letters").render(it).continuations == [" A", " B", " C", " D"]
    full = PromptBuilder(get_template("medqa"), "full").render(it)
    assert full.continuations == [" Liver", " Pancreas", " Kidney", " Spleen"]
    assert full.choices == ["Liver", "Pancreas", "Kidney", "Spleen"]


def test_shots_like_lm_eval_plain_text():
    pool = [item(i, q=f"Question {i}?", ans=i % 4) for i in range(4)]
    b = PromptBuilder(get_template("medqa"), "letters")
    shots = pick_shots(pool[1], pool, 2)
    assert [s.id for s in shots] == ["q0", "q2"]  # the item itself is never its own shot
    ctx = b.context(pool[1], shots)
    first = get_template("medqa").render_question(pool[0])
    assert ctx.startswith(first + " A\n\n")
    assert ctx.count("Answer:") == 3 and ctx.endswith("Answer:")


def test_chat_rendering_system_policy(default_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    it = item()
    no_sys = PromptBuilder(get_template("medqa"), "letters", chat=True, tokenizer=tok).render(it)
    assert "SmolLM" not in no_sys.context and no_sys.continuations[0] == "A"  # no delimiter in chat mode
    lm_eval_like = PromptBuilder(get_template("medqa"), "letters", chat=True, tokenizer=tok,
                                 system_prompt="model-default").context(it)
    assert "You are a helpful AI assistant named SmolLM" in lm_eval_like
    assert lm_eval_like.endswith("<|im_start|>assistant\n")
    custom = PromptBuilder(get_template("mmlu"), "letters", chat=True, tokenizer=tok,
                           system_prompt="Be precise.").context(item(subject="anatomy"))
    assert "<|im_start|>system\nBe precise.\n\nThe following are multiple choice questions" in custom


def test_custom_template_and_errors():
    t = get_template("Q: {question}\n{options}\nA:")
    assert t.render_question(item()).startswith("Q: Which organ")
    with pytest.raises(ConfigError, match="unknown placeholder"):
        get_template("Q: {question} {foo}")
    with pytest.raises(ConfigError, match="unknown template"):
        get_template("medqaa")


@pytest.mark.parametrize("text,n,expected", [
    (" B", 4, 1),
    ("Answer: C", 4, 2),
    ("The answer is (D). Because A is wrong", 4, 3),
    ("정답： B", 5, 1),
    ("정답은 E입니다.", 5, 4),
    ("答案：A", 4, 0),
    ("C. Ceftriaxone", 4, 2),
    ("I think it is B, not A.", 4, 0),  # last standalone letter, as lm-eval's cascade
    ("Answer: Ceftriaxone", 4, None),  # a word starting with C is not the letter C
    ("E", 4, None),  # not one of this item's letters
    ("no idea", 4, None),
    ("", 4, None),
])
def test_generative_direct_answer_letter(text, n, expected):
    assert parse_direct_answer(text, n, "generative") == expected


def test_truncate_at_stop():
    assert truncate_at_stop("B\n\nQ: next", ["\n\n", "Q:"]) == ("B", True)
    assert truncate_at_stop("B", ["\n\n"]) == ("B", False)
