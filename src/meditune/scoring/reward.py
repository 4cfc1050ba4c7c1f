"""The one reward-model scorer: AutoModelForSequenceClassification over the rendered (prompt, answer) chat.

Used by the `reward` scorer (prefs, `meditune score`), by rs/idpo rollouts (`reward_model:`) and by the `rm` stage's
held-out pairwise accuracy (on the model being trained, passed in memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meditune.cost import count_tokens
from meditune.scoring.base import Score, ScoreInput, empty_score


class RewardScorer:
    """Reward = the model's single logit (or logit[1] - logit[0] for a 2-label classifier); higher is better,
    unbounded scale. A full model directory or a PEFT adapter directory (merged into its base)."""

    name = "reward"
    value_range = None

    def __init__(self, model: str | Path, *, device: str = "auto", batch_size: int = 8, max_length: int = 1024,
                 system_prompt: str | None = None, trust_remote_code: bool = False,
                 loaded: tuple[Any, Any] | None = None):
        self.spec, self.device, self.batch_size, self.max_length = str(model), device, batch_size, max_length
        self.system_prompt, self.trust_remote_code = system_prompt, trust_remote_code
        self._loaded = loaded  # (model, tokenizer) already in memory, e.g. the rm stage's model in training

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from meditune.models import load_classifier

            self._loaded = load_classifier(self.spec, device=self.device, trust_remote_code=self.trust_remote_code,
                                           what="reward model")
        return self._loaded

    def rewards(self, prompts: Sequence[list[dict[str, str]]], responses: Sequence[str]) -> list[float]:
        """One reward per (prompt messages, response)."""
        return [r for r, _ in self._rewards(prompts, responses)]

    __call__ = rewards

    def _rewards(self, prompts: Sequence[list[dict[str, str]]],
                 responses: Sequence[str]) -> list[tuple[float, int]]:
        """(reward, tokens read) per (prompt messages, response)."""
        import torch

        from meditune.chat import render_chat

        model, tok = self._load()
        tok.padding_side = "right"
        texts = [render_chat(tok, [*p, {"role": "assistant", "content": r}], system_prompt=self.system_prompt,
                             add_generation_prompt=False) for p, r in zip(prompts, responses, strict=True)]
        out: list[tuple[float, int]] = []
        for start in range(0, len(texts), self.batch_size):
            enc = tok(texts[start:start + self.batch_size], return_tensors="pt", padding=True, truncation=True,
                      max_length=self.max_length, add_special_tokens=False).to(model.device)
            with torch.no_grad():
                logits = model(**enc).logits.float()
            vals = logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]
            out += zip(vals.cpu().tolist(), enc["attention_mask"].sum(1).tolist(), strict=True)
            count_tokens("scored", int(enc["attention_mask"].sum()))
        return out

    def score(self, items: Sequence[ScoreInput]) -> list[Score]:
        """Scores of answers to single-turn questions (empty answers are unscorable)."""
        out: list[Score | None] = [empty_score() if not it.answer.strip() else None for it in items]
        live = [i for i, s in enumerate(out) if s is None]
        got = self._rewards([[{"role": "user", "content": items[i].question}] for i in live],
                            [items[i].answer for i in live])
        for i, (value, n_tok) in zip(live, got, strict=True):
            out[i] = Score(float(value), evidence={"tokens": int(n_tok), "truncated": int(n_tok) >= self.max_length})
        return out  # type: ignore[return-value]
