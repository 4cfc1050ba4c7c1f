"""Optional translation of preference pairs by a generator model, keeping the original alongside."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from meditune.generation.base import Backend, BackendConfig, GenerationRequest, SamplingParams
from meditune.records import Message, Preference
from meditune.scoring.llm import ask

LANGUAGE_NAMES = {"ko": "Korean", "en": "English", "zh": "Chinese", "ja": "Japanese", "es": "Spanish",
                  "de": "German", "fr": "French"}
TRANSLATE_SYSTEM = "You are a professional medical translator."
TRANSLATE_TEMPLATE = ("Translate the following text from {src} to {dst}. Keep medical terms accurate. "
                      "Output only the translation.\n\n{text}")


class TranslationConfig(BaseModel):
    """Translate prompt, chosen and rejected into `target_language` with `translator` (temperature 0)."""

    model_config = ConfigDict(extra="forbid")

    target_language: str = "ko"
    translator: BackendConfig = Field(default_factory=BackendConfig)
    max_new_tokens: int = 512
    retries: int = 1


def translate_pairs(prefs: Sequence[Preference], backend: Backend, cfg: TranslationConfig
                    ) -> tuple[list[Preference], int]:
    """(translated pairs, number dropped because a translation came back empty or failed)."""
    params = SamplingParams(temperature=0.0, max_new_tokens=cfg.max_new_tokens)
    reqs, slots = [], []
    for p in prefs:
        src = LANGUAGE_NAMES.get(p.language, p.language)
        dst = LANGUAGE_NAMES.get(cfg.target_language, cfg.target_language)
        texts = [m.content for m in p.prompt] + [p.chosen, p.rejected]
        for k, text in enumerate(texts):
            reqs.append(GenerationRequest(f"{p.id}/tr{k}", [
                {"role": "system", "content": TRANSLATE_SYSTEM},
                {"role": "user", "content": TRANSLATE_TEMPLATE.format(src=src, dst=dst, text=text)}], params))
        slots.append(len(texts))
    replies = ask(backend, reqs, retries=cfg.retries)
    out, failed, pos = [], 0, 0
    for p, n in zip(prefs, slots, strict=True):
        got = [(r or "").strip() for r in replies[pos:pos + n]]
        pos += n
        if not all(got):
            failed += 1
            continue
        original = {"language": p.language, "prompt": [m.model_dump() for m in p.prompt], "chosen": p.chosen,
                    "rejected": p.rejected}
        prompt = [Message(role=m.role, content=t) for m, t in zip(p.prompt, got[:-2], strict=True)]
        out.append(p.model_copy(update={
            "prompt": prompt, "chosen": got[-2], "rejected": got[-1], "language": cfg.target_language,
            "provenance": {**p.provenance, "original": original}}))
    return out, failed
