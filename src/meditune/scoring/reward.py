"""A trained reward model's score: AutoModelForSequenceClassification over the rendered (question, answer) chat."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from meditune.errors import ConfigError
from meditune.scoring.base import Score, ScoreInput, empty_score


class RewardScorer:
    """Reward = the model's single logit (or logit[1] - logit[0] for a 2-label classifier); unbounded scale."""

    name = "reward"
    value_range = None

    def __init__(self, model: str, *, device: str = "auto", batch_size: int = 8, max_length: int = 1024,
                 system_prompt: str | None = None, trust_remote_code: bool = False):
        self.spec, self.device, self.batch_size, self.max_length = model, device, batch_size, max_length
        self.system_prompt, self.trust_remote_code = system_prompt, trust_remote_code
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            from meditune.models import pick_device

            path = Path(self.spec)
            if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
                raise ConfigError(f"reward model {self.spec!r}: not a model directory (no config.json)")
            dev = pick_device(self.device)
            if (path / "adapter_config.json").exists():
                from peft import AutoPeftModelForSequenceClassification

                model = AutoPeftModelForSequenceClassification.from_pretrained(
                    path, trust_remote_code=self.trust_remote_code).merge_and_unload()
            else:
                model = AutoModelForSequenceClassification.from_pretrained(
                    path, use_safetensors=True, trust_remote_code=self.trust_remote_code)
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=self.trust_remote_code)
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            if model.config.pad_token_id is None:
                model.config.pad_token_id = tok.pad_token_id
            self._loaded = (model.to(dev).eval(), tok, dev)
        return self._loaded

    def score(self, items: Sequence[ScoreInput]) -> list[Score]:
        import torch

        from meditune.chat import render_chat

        model, tok, dev = self._load()
        out: list[Score | None] = [empty_score() if not it.answer.strip() else None for it in items]
        live = [i for i, s in enumerate(out) if s is None]
        for start in range(0, len(live), self.batch_size):
            idx = live[start:start + self.batch_size]
            texts = [render_chat(tok, [{"role": "user", "content": items[i].question},
                                       {"role": "assistant", "content": items[i].answer}],
                                 system_prompt=self.system_prompt, add_generation_prompt=False) for i in idx]
            enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length,
                      add_special_tokens=False).to(dev)
            with torch.no_grad():
                logits = model(**enc).logits.float()
            vals = logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]
            for i, v, n_tok in zip(idx, vals.tolist(), enc["attention_mask"].sum(1).tolist(), strict=True):
                out[i] = Score(float(v), evidence={"tokens": int(n_tok),
                                                   "truncated": int(n_tok) >= self.max_length})
        return out  # type: ignore[return-value]
