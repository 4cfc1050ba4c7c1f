"""`make_backend(cfg)`: the one way to get a generation backend from a BackendConfig."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from meditune.errors import ConfigError
from meditune.generation.base import Backend, BackendConfig


def backend_config(cfg: BackendConfig | dict[str, Any] | str) -> BackendConfig:
    """Coerce a BackendConfig, a dict of its fields or a bare model spec into a BackendConfig."""
    if isinstance(cfg, BackendConfig):
        return cfg
    if isinstance(cfg, str):
        return BackendConfig(model=cfg)
    try:
        return BackendConfig.model_validate(cfg)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"backend config: '{key}': {first['msg']}") from None


def make_backend(cfg: BackendConfig | dict[str, Any] | str, **kwargs: Any) -> Backend:
    """Build the backend named by cfg.backend (transformers, vllm or openai); kwargs go to its constructor."""
    cfg = backend_config(cfg)
    if cfg.backend == "transformers":
        from meditune.generation.transformers_backend import TransformersBackend

        return TransformersBackend(cfg, **kwargs)
    if cfg.backend == "vllm":
        from meditune.generation.vllm_backend import VLLMBackend

        return VLLMBackend(cfg, **kwargs)
    if cfg.backend == "openai":
        from meditune.generation.openai_backend import OpenAIBackend

        return OpenAIBackend(cfg, **kwargs)
    raise ConfigError(f"unknown backend {cfg.backend!r}: use transformers, vllm or openai")
