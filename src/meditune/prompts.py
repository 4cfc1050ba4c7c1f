"""The one rendering of a multiple-choice item as a prompt: named templates (lm-eval's task prompts, the chat
turns meditune's training, preference and strategy code send) and lm-eval's context/continuation rendering.

`render_mcq(item, template)` is the question text every part sends (data export, generation requests, rs/idpo
rollouts, preference collection, CoT strategies); `PromptBuilder` adds shots, the task description and the chat
template the way lm-eval's `fewshot_context` + `construct_requests` do, so log-likelihoods compare number for
number.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from meditune.chat import MODEL_DEFAULT, render_chat
from meditune.errors import ConfigError
from meditune.records import MCQItem

ChoicesMode = Literal["letters", "full"]
TARGET_DELIMITER = " "  # lm-eval's default target_delimiter
FEWSHOT_DELIMITER = "\n\n"  # lm-eval's default fewshot_delimiter
PLACEHOLDERS = ("question", "options", "context", "subject")  # what a custom template may use


@dataclass(frozen=True)
class Template:
    """How one question is written: a format string over {question} {options} {context} {subject}, plus
    {letters} ("A, B, C, D") and {context_block} (`context_block` filled in, only when the item has a context)."""

    name: str
    text: str
    description: str = ""  # goes first (plain) or into the system turn (chat), as lm-eval's `description`
    choices: ChoicesMode = "letters"
    mode: Literal["loglik", "generative"] = "loglik"
    strip: tuple[str, ...] = ()  # fields written .strip()ped (lm-eval's mmlu/cmmlu/kormedmcqa strip the question)
    context_block: str = ""  # e.g. "Context: {context}\n\n": what {context_block} becomes for an item with context
    lm_eval_task: str | None = None  # the lm-eval task whose prompt this reproduces

    def render_question(self, item: MCQItem) -> str:
        """The question block of one item (no shots, no description, no chat template)."""
        def part(field: str, value: str) -> str:
            return value.strip() if field in self.strip else value

        question = part("question", item.question)
        options = "\n".join(f"{letter}. {part('options', opt)}" for letter, opt in zip(item.letters, item.options,
                                                                                      strict=True))
        context = part("context", item.context or "")
        block = self.context_block.format(context=context) if item.context else ""
        try:
            return self.text.format(question=question, options=options, context=context, subject=_subject(item),
                                    letters=", ".join(item.letters), context_block=block)
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"template {self.name!r}: bad placeholder {e}; use {{question}}, {{options}}, "
                              "{context}, {subject} (double braces for literal ones)") from None

    def render_description(self, item: MCQItem) -> str:
        """The task description for this item's subject ("" when the template has none)."""
        return self.description.format(subject=_subject(item)) if self.description else ""


def _subject(item: MCQItem) -> str:
    subject = item.meta.get("subject_name") or item.subject or "medicine"
    return str(subject).replace("_", " ")


COT_INSTRUCTION = ("Think step by step, then finish with a final line of the form \"Answer: X\", where X is the "
                   "letter of the correct option ({letters}).")
LETTER_ONLY_INSTRUCTION = "Reply with the letter of the correct option only ({letters})."
_STRIPPED = ("question", "options", "context")

TEMPLATES: dict[str, Template] = {
    t.name: t for t in [
        # lm-eval's task prompts (log-likelihood parity, see docs/evaluation-mcqa.md)
        Template("medqa", "Question: {question}\n{options}\nAnswer:", lm_eval_task="medqa_4options"),
        Template("medmcqa", "Question: {question}\nChoices:\n{options}\nAnswer:", lm_eval_task="medmcqa"),
        Template("pubmedqa", "Abstract: {context}\nQuestion: {question}\nAnswer:", choices="full",
                 lm_eval_task="pubmedqa"),
        Template("mmlu", "{question}\n{options}\nAnswer:", strip=("question",),
                 description="The following are multiple choice questions (with answers) about {subject}.\n\n",
                 lm_eval_task="mmlu_<subject>"),
        Template("kormedmcqa", "{question}\n{options}\n정답：", strip=("question",), mode="generative",
                 lm_eval_task="kormedmcqa_<doctor|nurse|pharm|dentist>"),
        Template("cmmlu", "{question}\n{options}\n答案：", strip=("question",),
                 description="以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n",
                 lm_eval_task="cmmlu_<subject>"),
        Template("generic", "Question: {question}\n{options}\nAnswer:"),
        Template("continuation", "Question: {question}\nAnswer:", choices="full",
                 lm_eval_task="mmlu_continuation_<subject>"),
        # the user turns meditune sends to chat models
        Template("chat_turn", "{context_block}{question}\n\n{options}", strip=("question",),
                 context_block="Context: {context}\n\n"),  # SFT export and generation requests
        Template("rollout", "{context_block}{question}\n\n{options}\n\nAnswer with the letter of the correct "
                 "option, then explain.", context_block="{context}\n\n"),  # rs / idpo sampling prompts
        Template("prefs_question", "{context_block}{question}\n{options}",
                 context_block="Context: {context}\n\n"),  # preference collection, scoring and pair prompts
        Template("cot", "{context_block}{question}\n\n{options}\n\n" + COT_INSTRUCTION, strip=_STRIPPED,
                 context_block="{context}\n\n", mode="generative"),  # CoT strategies (PROMPT_VERSION cot-v1)
        Template("letter_only", "{context_block}{question}\n\n{options}\n\n" + LETTER_ONLY_INSTRUCTION,
                 strip=_STRIPPED, context_block="{context}\n\n", mode="generative"),
    ]
}


def render_mcq(item: MCQItem, template: str | Template = "chat_turn") -> str:
    """The text of one MCQ item under a named (or given) template: the one MCQ rendering every part calls."""
    return (template if isinstance(template, Template) else get_template(template)).render_question(item)


def get_template(spec: str) -> Template:
    """A template by name, or a custom one from a format string containing {question}."""
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    if "{question}" in spec:
        names = {n for _, n, _, _ in string.Formatter().parse(spec) if n}
        unknown = names - set(PLACEHOLDERS)
        if unknown:
            raise ConfigError(f"custom template: unknown placeholder(s) {sorted(unknown)}; "
                              "use {question}, {options}, {context}, {subject}")
        return Template("custom", spec, choices="letters" if "{options}" in spec else "full")
    raise ConfigError(f"unknown template {spec!r}: one of {', '.join(TEMPLATES)}, or a format string "
                      "containing {question}")


@dataclass
class RenderedQuestion:
    """What gets scored: the context text and one continuation per option (lm-eval request arguments)."""

    context: str
    continuations: list[str]
    choices: list[str]  # the choice strings without delimiter (lm-eval acc_norm divides by their length)


def choice_strings(item: MCQItem, mode: ChoicesMode) -> list[str]:
    """The strings scored for each option: letters ("A") or the option texts."""
    return item.letters if mode == "letters" else list(item.options)


@dataclass
class PromptBuilder:
    """Renders items to contexts and continuations with a template, shots and chat-template policy."""

    template: Template
    choices: ChoicesMode
    chat: bool = False
    tokenizer: Any = None
    system_prompt: str | None = None  # None, a string, or chat.MODEL_DEFAULT

    def __post_init__(self) -> None:
        if self.chat and self.tokenizer is None:
            raise ConfigError("chat_template=true needs the model's tokenizer")

    def user_text(self, item: MCQItem, shots: Sequence[MCQItem] = ()) -> str:
        """Shots then the question, as one text (lm-eval's single-turn collapse)."""
        parts = []
        for shot in shots:
            answer = choice_strings(shot, self.choices)[shot.answer]
            parts.append(self.template.render_question(shot) + TARGET_DELIMITER + answer + FEWSHOT_DELIMITER)
        parts.append(self.template.render_question(item))
        return "".join(parts)

    def system_text(self, item: MCQItem) -> str:
        """lm-eval's system turn: system instruction and description joined by the fewshot delimiter."""
        explicit = self.system_prompt if self.system_prompt not in (None, MODEL_DEFAULT) else None
        return _maybe_delimit(explicit, self.template.render_description(item), FEWSHOT_DELIMITER)

    def context(self, item: MCQItem, shots: Sequence[MCQItem] = ()) -> str:
        """The full prompt text before the answer."""
        system = self.system_text(item)
        user = self.user_text(item, shots)
        if not self.chat:
            return system + user
        if system:
            return render_chat(self.tokenizer, [{"role": "system", "content": system},
                                                {"role": "user", "content": user}])
        policy = MODEL_DEFAULT if self.system_prompt == MODEL_DEFAULT else None
        return render_chat(self.tokenizer, [{"role": "user", "content": user}], system_prompt=policy)

    def render(self, item: MCQItem, shots: Sequence[MCQItem] = ()) -> RenderedQuestion:
        """Context + continuations; with a chat template lm-eval drops the target delimiter."""
        choices = choice_strings(item, self.choices)
        delim = "" if self.chat else TARGET_DELIMITER
        return RenderedQuestion(self.context(item, shots), [delim + c for c in choices], choices)


def _maybe_delimit(prefix: str | None, suffix: str | None, delimiter: str) -> str:
    """lm-eval's maybe_delimit: join with the delimiter unless whitespace already separates them."""
    if not prefix:
        return suffix or ""
    if not suffix:
        return prefix
    return prefix + suffix if prefix[-1].isspace() or suffix[0].isspace() else prefix + delimiter + suffix


def pick_shots(item: MCQItem, pool: Sequence[MCQItem], k: int) -> list[MCQItem]:
    """The first k pool items other than the item itself (lm-eval's first_n sampler)."""
    if k <= 0:
        return []
    return [s for s in pool[: k + 1] if s.id != item.id][:k]
