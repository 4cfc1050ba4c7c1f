"""The `generate` stage: sample n completions per item of a dataset with any backend, cached and resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from meditune.errors import ConfigError
from meditune.generation.base import BackendConfig, GenerationRequest, SamplingParams
from meditune.stages import StageConfig, StageContext, stage_type

# Settings a stage inherits from the recipe unless it sets them itself.
RECIPE_DEFAULTS = ("model", "system_prompt", "device", "dtype", "trust_remote_code")


class GenerateStageConfig(StageConfig):
    """Which data, which generator (BackendConfig fields), and how to sample."""

    data: str = Field(description="JSONL of requests or records, '@stage', or a data source spec")
    limit: int | None = Field(None, ge=1)
    # generator (see BackendConfig); model/system_prompt/device/dtype/trust_remote_code default to the recipe's
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    # None = the recipe's setting (the pipeline re-validates configs, so "unset" cannot be told apart otherwise)
    model: str | None = None
    label: str | None = None
    system_prompt: str | None = None  # None = the recipe's; "" = no system prompt; "model-default"; or the text
    device: str | None = None
    dtype: str | None = None
    trust_remote_code: bool | None = None
    batch_size: int = Field(16, ge=1)
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    allow_insecure_http: bool = False  # see BackendConfig
    max_concurrency: int = Field(8, ge=1)
    max_retries: int = Field(5, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    # sampling
    n: int = Field(1, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1)
    seed: int | None = None  # default: the recipe seed
    stop: list[str] = Field(default_factory=list)
    # job
    unit_size: int = Field(64, ge=1)
    cache: bool = True  # share generations across stages of the run (run_dir/cache/generations)


def backend_config_of(config: GenerateStageConfig, recipe: Any) -> BackendConfig:
    """The BackendConfig of a stage, with recipe-wide defaults for fields the stage does not set."""
    vals = {k: getattr(config, k) for k in BackendConfig.model_fields if k in type(config).model_fields}
    vals["name"] = config.label
    for k in RECIPE_DEFAULTS:
        if vals[k] is None:
            inherited = getattr(recipe, k, None) if recipe is not None else None
            vals[k] = inherited if inherited is not None or k == "system_prompt" else BackendConfig.model_fields[k].default
    if vals["system_prompt"] == "":
        vals["system_prompt"] = None  # explicitly none, even when the recipe sets one
    return BackendConfig(**vals)


def sampling_of(config: GenerateStageConfig, recipe: Any) -> SamplingParams:
    """The stage's sampling params (seed defaults to the recipe seed)."""
    seed = config.seed if config.seed is not None else getattr(recipe, "seed", 0)
    return SamplingParams(temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens,
                          n=config.n, seed=seed, stop=tuple(config.stop))


def stage_requests(config: GenerateStageConfig, recipe: Any) -> list[GenerationRequest]:
    """The requests of a stage: a JSONL file (requests or records) or any meditune.data source spec."""
    from meditune.generation.inputs import load_requests, requests_from_objects

    defaults = sampling_of(config, recipe)
    path = Path(config.data)
    if path.is_file() and path.suffix in (".jsonl", ".json", ""):
        return load_requests(path, defaults, config.limit)
    try:
        from meditune.data import load_source
    except ImportError:
        raise ConfigError(f"generate stage {config.name!r}: data {config.data!r} is not a JSONL file") from None
    records = load_source(config.data)
    if config.limit is not None:
        records = records[:config.limit]
    return requests_from_objects(list(enumerate(records, start=1)), config.data, defaults)


def estimate(config: GenerateStageConfig, recipe: Any) -> dict[str, Any]:
    """Work of a dry run: items and generations (counts the data when it is a readable file)."""
    try:
        items: int | None = len(stage_requests(config, recipe))
    except Exception:  # noqa: BLE001 - upstream outputs do not exist yet in a dry run
        items = config.limit
    return {"items": items, "generations": items * config.n if items is not None else None,
            "max_new_tokens": config.max_new_tokens, "backend": config.backend}


@stage_type("generate", GenerateStageConfig, "sample n completions per item with a generation backend",
            estimate=estimate)
def run_generate(config: GenerateStageConfig, ctx: StageContext) -> dict[str, str]:
    """Generate into ctx.stage_dir; a killed stage resumes from its shards."""
    from meditune.generation.cache import GenerationCache, model_key
    from meditune.generation.factory import make_backend
    from meditune.generation.job import run_job
    from meditune.io import write_json

    cfg = backend_config_of(config, ctx.recipe)
    requests = stage_requests(config, ctx.recipe)
    cache = GenerationCache(ctx.run_dir / "cache" / "generations") if config.cache else None
    result = run_job(requests, lambda: make_backend(cfg), ctx.stage_dir, model=model_key(cfg), label=cfg.label,
                     unit_size=config.unit_size, cache=cache, progress=True)
    write_json(ctx.path("summary.json"), {"backend": cfg.backend, "model": cfg.label, **result.to_dict()})
    return {"generations": str(result.path), "shards": str(result.shards), "summary": str(ctx.path("summary.json"))}
