"""The `generate` stage: sample n completions per item of a dataset with any backend, cached and resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from meditune.generation.base import BackendConfig, GenerationRequest, SamplingParams
from meditune.model_ref import ModelRef, ModelRefOwner, model_ref_field
from meditune.stages import (
    INFERENCE_DEFAULTS,
    StageConfig,
    StageContext,
    apply_recipe_defaults,
    stage_type,
    upstream_count,
)


class GenerateStageConfig(StageConfig, ModelRefOwner):
    """Which data, which generator (BackendConfig fields), and how to sample; model, system_prompt, device, dtype,
    trust_remote_code, seed and batch_size left unset (or null) are the recipe's
    (meditune.stages.apply_recipe_defaults)."""

    recipe_defaults = INFERENCE_DEFAULTS
    model_keys_after = "system_prompt"

    data: str = Field(description="JSONL of requests ({id, messages | prompt, params?}) or records, '@stage', or a "
                      "data source spec (NAME:PATH, sample:NAME)")
    limit: int | None = Field(None, ge=1, description="only the first N items")
    # generator (see BackendConfig)
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    model: ModelRef = model_ref_field()
    label: str | None = Field(None, description="the generator's name in outputs (default: the model)")
    system_prompt: str | None = Field(None, description="system prompt (default: the recipe's, else none; \"\" = none; "
                                      "'model-default' keeps the template's)")
    batch_size: int = Field(16, ge=1, description="most requests batched together")
    tensor_parallel_size: int | None = Field(None, ge=1, description="GPUs a vLLM engine shards the model over "
                                             "(backend vllm; within one rank, see docs/scaleout.md)")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint (backend openai)")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the key")
    allow_insecure_http: bool = Field(False, description="send the key over plain http to a non-loopback "
                                      "host (see BackendConfig)")
    max_concurrency: int = Field(8, ge=1, description="requests in flight (backend openai)")
    max_retries: int = Field(5, ge=0, description="retries of a failed request (backend openai)")
    timeout_s: float = Field(120.0, gt=0, description="seconds per request (backend openai)")
    # sampling
    n: int = Field(1, ge=1, description="samples per item")
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1)
    seed: int | None = Field(None, description="sampling seed (default: the recipe seed, else 0)")
    stop: list[str] = Field(default_factory=list, description="stop string (repeatable)")
    # job
    unit_size: int = Field(64, ge=1, description="requests per work unit (resume granularity)")
    cache: bool = Field(True, description="read and write the generation cache (a stage: the run's, "
                        "run_dir/cache/generations)")


def backend_config_of(config: GenerateStageConfig, recipe: Any) -> BackendConfig:
    """The BackendConfig of a stage, with recipe-wide defaults for fields the stage does not set."""
    config = apply_recipe_defaults(config, recipe)
    vals = {k: getattr(config, k) for k in BackendConfig.model_fields if k in type(config).model_fields}
    return BackendConfig(**{**vals, "name": config.label})  # `name` is the stage's; the generator's is `label`


def sampling_of(config: GenerateStageConfig, recipe: Any) -> SamplingParams:
    """The stage's sampling params (seed defaults to the recipe seed)."""
    config = apply_recipe_defaults(config, recipe)
    return SamplingParams(temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens,
                          n=config.n, seed=config.seed, stop=tuple(config.stop))


def stage_requests(config: GenerateStageConfig, recipe: Any) -> list[GenerationRequest]:
    """The requests of a stage: a JSONL file (requests or records) or any meditune.data source spec."""
    from meditune.generation.inputs import load_requests, requests_from_objects

    defaults = sampling_of(config, recipe)
    path = Path(config.data)
    if path.is_file() and path.suffix in (".jsonl", ".json", ""):
        return load_requests(path, defaults, config.limit)
    from meditune.data import load_source

    records = load_source(config.data)
    if config.limit is not None:
        records = records[:config.limit]
    return requests_from_objects(list(enumerate(records, start=1)), config.data, defaults)


def estimate(config: GenerateStageConfig, recipe: Any) -> dict[str, Any]:
    """Work of a dry run: items and generations (counts the data when it is readable, else says where from)."""
    src = upstream_count(config.data, config.limit)
    if src is not None:
        return {"items": src, "generations": f"{config.n} per item", "max_new_tokens": config.max_new_tokens,
                "backend": config.backend}
    try:
        items: int | None = len(stage_requests(config, recipe))
    except Exception:  # noqa: BLE001 - a dry run reports, it does not fail on unreadable data
        items = config.limit
    return {"items": items if items is not None else "unknown",
            "generations": items * config.n if items is not None else None,
            "max_new_tokens": config.max_new_tokens, "backend": config.backend}


@stage_type("generate", GenerateStageConfig, "sample n completions per item with a generation backend",
            estimate=estimate, all_ranks=True)
def run_generate(config: GenerateStageConfig, ctx: StageContext) -> dict[str, str]:
    """Generate into ctx.stage_dir; a killed stage resumes from its shards."""
    from meditune.distributed import current
    from meditune.generation.cache import GenerationCache, model_key
    from meditune.generation.factory import make_backend
    from meditune.generation.job import run_job
    from meditune.io import write_json

    cfg = backend_config_of(config, ctx.recipe)
    requests = stage_requests(config, ctx.recipe)
    cache = GenerationCache(ctx.run_dir / "cache" / "generations") if config.cache else None
    ranks = current(cfg.model.device)  # under torchrun every rank generates its units (meditune.distributed)
    result = run_job(requests, lambda: make_backend(cfg), ctx.stage_dir, model=model_key(cfg), label=cfg.label,
                     unit_size=config.unit_size, cache=cache, progress=True, ranks=ranks)
    if ranks.is_main:
        write_json(ctx.path("summary.json"), {"backend": cfg.backend, "model": cfg.label, **result.to_dict()})
    return {"generations": str(result.path), "shards": str(result.shards), "summary": str(ctx.path("summary.json"))}
