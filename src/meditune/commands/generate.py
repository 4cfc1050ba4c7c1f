"""`meditune generate DATA` (cached, resumable generation over a dataset) and `meditune serve MODEL`."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from meditune.commands.options import config_command

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_command())
    app.command("serve")(serve)


def _run_generate(stage: Any, extras: dict[str, Any]) -> None:
    """Generate the stage's requests into the job directory --out (cached, resumable)."""
    from meditune.distributed import current
    from meditune.generation.cache import GenerationCache, model_key
    from meditune.generation.factory import make_backend
    from meditune.generation.job import run_job
    from meditune.generation.sampling import check_params
    from meditune.generation.stage import backend_config_of, sampling_of, stage_requests
    from meditune.io import check_output_dir, removed_on_error
    from meditune.models import cache_dir as models_cache

    check_output_dir(extras["out"], "--out")
    cfg, params = backend_config_of(stage, None), sampling_of(stage, None)
    check_params(params, "command line")
    requests = stage_requests(stage, None)
    cache = GenerationCache(extras["cache_dir"] or models_cache() / "generations") if stage.cache else None
    ranks = current(cfg.model.device)  # under torchrun: every rank generates its share, rank 0 writes
    with removed_on_error(extras["out"]):  # bad input (a request, the model, the key): nothing is left in OUT
        result = run_job(requests, lambda: make_backend(cfg), extras["out"], model=model_key(cfg), label=cfg.label,
                         unit_size=stage.unit_size, cache=cache, progress=extras["progress"], ranks=ranks)
    if not ranks.is_main:
        return
    console.print(f"{result.records} items -> {result.path} (generated {result.generated}, cached {result.cached}, "
                  f"resumed {result.resumed}; {result.completion_tokens} tokens, "
                  f"{result.tokens_per_second:.1f} tok/s)", highlight=False)


def generate_command() -> Any:
    """`meditune generate`, its options those of the `generate` stage's config."""
    from meditune.generation.stage import GenerateStageConfig

    p = inspect.Parameter
    extra = [
        p("out", p.KEYWORD_ONLY, annotation=Path, default=typer.Option(
            ..., "--out", "-o", help="Job directory (re-run the same command to resume).")),
        p("cache_dir", p.KEYWORD_ONLY, annotation=Path, default=typer.Option(
            None, "--cache-dir", help="Generation cache (default: $MEDITUNE_CACHE/generations).")),
        p("progress", p.KEYWORD_ONLY, annotation=bool, default=typer.Option(True, "--progress/--no-progress")),
    ]
    return config_command(
        GenerateStageConfig, _run_generate, argument="data", fixed={"name": "generate", "type": "generate"},
        doc="Generate n completions per item into OUT/generations.jsonl; a killed run resumes where it stopped.",
        decls={"model": ("--model", "-m"), "system_prompt": ("--system",)}, extra=extra)


def serve(
    model: str = typer.Argument("default", help="Model spec: default | file.gguf | directory | org/name."),
    port: int = typer.Option(8000, "--port", "-p"),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (0.0.0.0 exposes it to the network)."),
    served_name: str = typer.Option(None, "--served-name", help="Model name clients use (default: MODEL)."),
    system: str = typer.Option(None, "--system", help="System prompt policy (default: none)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Most requests batched together."),
    backend: str = typer.Option("transformers", "--backend", help="transformers | vllm."),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
    max_tokens_limit: int = typer.Option(2048, "--max-tokens-limit", min=1,
                                         help="Most tokens one request may generate (also capped by the model's "
                                              "context); larger max_tokens get a 400."),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", min=1,
                                       help="Largest request body; larger ones get a 413."),
    api_key_env: str = typer.Option(None, "--api-key-env",
                                    help="Environment variable holding the API key clients must send "
                                         "(Authorization: Bearer KEY)."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback --host without an API key."),
    fault: list[str] = typer.Option(None, "--fault", hidden=True,
                                    help="Testing: fail the first requests, KIND:COUNT[:SECONDS] with KIND "
                                         "500 | 429 | slow | malformed (repeatable)."),
) -> None:
    """Serve a local model over an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models)."""
    from meditune.errors import ConfigError
    from meditune.generation.base import BackendConfig
    from meditune.generation.factory import make_backend
    from meditune.generation.server import FaultPlan, ServerLimits, check_exposure
    from meditune.generation.server import serve as run_server

    if backend not in ("transformers", "vllm"):
        raise ConfigError(f"--backend {backend!r}: serve runs a local model (transformers or vllm)")
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env) or None
        if api_key is None:
            raise ConfigError(f"--api-key-env {api_key_env}: the environment variable is not set or empty")
    check_exposure(host, api_key, insecure)  # before loading the model
    limits = ServerLimits(max_tokens=max_tokens_limit, max_body_bytes=max_body_bytes)
    plan = FaultPlan.parse(fault) if fault else None
    cfg = BackendConfig(backend=backend, model=model, system_prompt=system, device=device, dtype=dtype,
                        trust_remote_code=trust_remote_code, batch_size=batch_size)
    with console.status(f"loading {escape(model)} ..."):
        be = make_backend(cfg)
    name = served_name or model
    console.print(f"serving {name!r} at http://{host}:{port}/v1 (Ctrl-C stops)", highlight=False, markup=False)
    run_server(be, name, host=host, port=port, max_batch=batch_size, faults=plan, limits=limits, api_key=api_key,
               insecure=insecure)
