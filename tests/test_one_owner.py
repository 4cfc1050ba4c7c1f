"""One owner per concept: every part that needs a concept goes through its one implementation.

Each test swaps the owner's implementation (monkeypatch) and checks that every former caller follows, so a
caller that kept a private copy fails here.
"""

from __future__ import annotations

import pytest

from meditune.records import MCQItem

PUBMEDQA_LIKE = MCQItem(id="p1", question="Does aspirin prevent stroke?", options=["yes", "no", "maybe"], answer=0,
                        context="BACKGROUND: A trial of 200 patients.\nRESULTS: Fewer strokes.")


# ------------------------------------------------------------------------------------------ MCQ rendering

def mcq_prompts_of_every_part(item: MCQItem) -> dict[str, str]:
    """The MCQ text each part sends for an item: (training, generation, prefs, strategies, evaluation)."""
    from meditune.data.export import to_trl_sft
    from meditune.evaluation.strategies.cot import cot_messages, direct_messages
    from meditune.generation.inputs import record_messages
    from meditune.prefs.questions import question_text
    from meditune.prompts import PromptBuilder, get_template
    from meditune.training.rollouts import prompt_item

    return {
        "training export (chat_turn)": to_trl_sft(item)["messages"][0]["content"],
        "generation requests (chat_turn)": record_messages(item)[0]["content"],
        "rs/idpo rollouts (rollout)": prompt_item(item).messages[0]["content"],
        "prefs collection (prefs_question)": question_text(item),
        "cot strategies (cot)": cot_messages(item)[-1]["content"],
        "letter-only strategy (letter_only)": direct_messages(item)[-1]["content"],
        "evaluation (pubmedqa)": PromptBuilder(get_template("pubmedqa"), "full").render(item).context,
    }


def test_every_part_renders_mcqs_through_meditune_prompts(monkeypatch):
    from meditune import prompts

    monkeypatch.setattr(prompts.Template, "render_question", lambda self, item: f"<{self.name}:{item.id}>")
    for part, text in mcq_prompts_of_every_part(PUBMEDQA_LIKE).items():
        template = part.split("(")[1].rstrip(")")
        assert text == f"<{template}:p1>", part


def test_the_same_item_gives_the_same_prompt_in_training_generation_and_prefs():
    from meditune.prompts import render_mcq

    got = mcq_prompts_of_every_part(PUBMEDQA_LIKE)
    assert got["training export (chat_turn)"] == got["generation requests (chat_turn)"] \
        == render_mcq(PUBMEDQA_LIKE, "chat_turn")
    for part, text in got.items():
        # every part shows the abstract (prefs used to drop item.context: PubMedQA questions lost their abstract)
        assert "A trial of 200 patients." in text, part
        assert "Does aspirin prevent stroke?" in text, part
    assert got["prefs collection (prefs_question)"] == (
        "Context: BACKGROUND: A trial of 200 patients.\nRESULTS: Fewer strokes.\n\n"
        "Does aspirin prevent stroke?\nA. yes\nB. no\nC. maybe")


@pytest.mark.parametrize("template", ["chat_turn", "rollout", "prefs_question", "cot", "letter_only"])
def test_chat_variants_without_context_have_no_context_block(template):
    from meditune.prompts import render_mcq

    item = PUBMEDQA_LIKE.model_copy(update={"context": None})
    text = render_mcq(item, template)
    assert "Context" not in text and text.lstrip().startswith("Does aspirin")
