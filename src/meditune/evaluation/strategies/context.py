"""What an MCQA strategy gets from the engine: items, settings, the model (loaded once) and a work directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meditune.model_ref import ModelRef
from meditune.prompts import Template
from meditune.records import LETTERS, MCQItem


@dataclass
class StrategyContext:
    """What a strategy gets: the items, the settings, the model (lazily) and a place for resumable work."""

    items: list[MCQItem]
    fewshot_items: list[MCQItem]
    config: Any  # meditune.evaluation.mcqa.MCQAOptions
    template: Template
    work_dir: Path
    model_spec: str
    extra_results: dict[str, Any] = field(default_factory=dict)
    _loaded: tuple[Any, Any] | None = field(default=None, repr=False)

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def model_ref(self) -> ModelRef:
        """The evaluated model: the config's reference with its spec resolved to model_spec."""
        return self.config.model.with_spec(self.model_spec)

    def model_and_tokenizer(self) -> tuple[Any, Any]:
        """(model, tokenizer) of the evaluated model, loaded once (shared with generation backends on it)."""
        if self._loaded is None:
            from meditune.models import load_shared_model

            self._loaded = load_shared_model(self.model_ref)
        return self._loaded

    def scoring_model_and_tokenizer(self) -> tuple[Any, Any]:
        """(model, tokenizer) for log-likelihood scoring: the loaded pair when there is one, else, with engine
        'auto', meditune.plain_llama's where it reproduces the model (models.load_scoring_model)."""
        if self._loaded is not None or self.config.engine == "transformers":
            return self.model_and_tokenizer()
        from meditune.models import load_scoring_model

        return load_scoring_model(self.model_ref, chat=self.config.chat_template)

    def backend(self) -> Any:
        """The project's generation Backend (meditune.generation, `transformers`) on the evaluated model."""
        from meditune.generation.base import BackendConfig
        from meditune.generation.factory import make_backend

        model, tok = self.model_and_tokenizer()
        cfg = self.config
        backend = make_backend(BackendConfig(model=self.model_ref, system_prompt=cfg.system_prompt,
                                             batch_size=cfg.batch_size), model=model, tokenizer=tok)
        if cfg.max_length:  # prompts that do not fit come back as "error" generations (see the backend)
            backend.context = min(backend.context, cfg.max_length)
        return backend

    def sample(self, item: MCQItem, doc_id: int, pred: int | None, metrics: dict[str, float],
               **extra: Any) -> dict[str, Any]:
        """A standard sample record (see docs/evaluation-mcqa.md)."""
        return {"doc_id": doc_id, "id": item.id, "subject": item.subject, "gold": item.answer,
                "gold_letter": LETTERS[item.answer], "pred": pred,
                "pred_letter": LETTERS[pred] if pred is not None else None, "metrics": metrics, **extra}
