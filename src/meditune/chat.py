"""Chat-template rendering with explicit control of the system prompt.

Some templates (SmolLM2's among them) insert their own default system prompt when the conversation has none.
meditune never lets that happen silently: `system_prompt=None` means "no system prompt", rendered as an empty
system turn only when the template would otherwise inject its default; a string sets the system prompt;
MODEL_DEFAULT keeps whatever the template does.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

MODEL_DEFAULT = "model-default"
_PROBE = "\x00meditune-probe\x00"


def _injects_default_system(tokenizer: Any) -> bool:
    return _injects_cached(tokenizer.chat_template or "", id(tokenizer), tokenizer)


@lru_cache(maxsize=32)
def _injects_cached(template: str, _tok_id: int, tokenizer: Any) -> bool:
    if not template:
        return False
    bare = tokenizer.apply_chat_template([{"role": "user", "content": _PROBE}], tokenize=False)
    empty = tokenizer.apply_chat_template([{"role": "system", "content": ""},
                                           {"role": "user", "content": _PROBE}], tokenize=False)
    # A template that adds text before the user turn beyond an empty system turn injects a default.
    return len(bare.split(_PROBE)[0]) > len(empty.split(_PROBE)[0])


def with_system(messages: list[dict[str, str]], tokenizer: Any, system_prompt: str | None) -> list[dict[str, str]]:
    """Messages with the system prompt policy applied (see module docstring)."""
    msgs = list(messages)
    if msgs and msgs[0]["role"] == "system" or system_prompt == MODEL_DEFAULT:
        return msgs
    if system_prompt:
        return [{"role": "system", "content": system_prompt}, *msgs]
    if _injects_default_system(tokenizer):
        return [{"role": "system", "content": ""}, *msgs]
    return msgs


def render_chat(tokenizer: Any, messages: list[dict[str, str]], *, system_prompt: str | None = None,
                add_generation_prompt: bool = True) -> str:
    """Render messages to prompt text with the model's chat template and our system-prompt policy."""
    if not tokenizer.chat_template:
        # Base models without a template: a plain, documented fallback format.
        text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in
                       with_system(messages, tokenizer, system_prompt))
        return text + ("Assistant:" if add_generation_prompt else "")
    return tokenizer.apply_chat_template(with_system(messages, tokenizer, system_prompt), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
