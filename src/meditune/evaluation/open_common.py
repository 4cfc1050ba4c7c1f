"""What every open-ended evaluation shares: options, resumable generation, record loading, CI breakdowns and
the results JSON + samples JSONL (the MCQA format of meditune.evaluation.results)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from meditune.errors import ConfigError, InputError
from meditune.evaluation.results import FILTER, build_results, metric_summary, write_outputs
from meditune.generation.base import Backend, BackendConfig, Generation, GenerationRequest
from meditune.io import hash_obj
from meditune.model_ref import ModelRef, ModelRefOwner, model_ref_field
from meditune.records import Record

log = logging.getLogger(__name__)


class OpenEvalOptions(ModelRefOwner):
    """Settings every open-ended evaluation has: what to evaluate, on which data, with which judge."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model_defaults = {"model": None, "device": "auto", "dtype": "auto", "trust_remote_code": False}
    model_keys_after = "system_prompt"

    model: ModelRef = model_ref_field()
    data: str = Field(description="data source spec (meditune.data.load_source) or a records JSONL")
    task: str | None = Field(None, description="task name in results.json; default: the command/stage name")
    limit: int | None = Field(None, ge=1, description="evaluate only the first N items")
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint (backend openai)")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    system_prompt: str | None = Field(None, description="system prompt; 'model-default' keeps the template's own "
                                      "(default: none)")
    batch_size: int = Field(16, ge=1, description="generation batch size")
    max_new_tokens: int = Field(256, ge=1, description="answer length")
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    seed: int = Field(0, description="seed (sampling, bootstrap)")
    judge: str | dict[str, Any] | None = Field(
        None, description="judge model spec, or BackendConfig fields ({backend, model, base_url, ...})")
    judge_max_new_tokens: int = Field(128, ge=1)


def generator_config(opts: OpenEvalOptions) -> BackendConfig:
    """The BackendConfig of the evaluated model (an unset spec: 'default')."""
    return BackendConfig(backend=opts.backend, model=opts.model, system_prompt=opts.system_prompt,
                         batch_size=opts.batch_size, base_url=opts.base_url, api_key_env=opts.api_key_env)


def judge_config(opts: OpenEvalOptions) -> BackendConfig | None:
    """The judge's BackendConfig (None when no judge is configured)."""
    from meditune.generation.factory import backend_config

    if opts.judge is None or opts.judge == "":
        return None
    cfg = backend_config(opts.judge)
    if isinstance(opts.judge, str):  # a bare spec inherits where the evaluated model runs
        cfg = cfg.model_copy(update={"model": cfg.model.inheriting(opts.model, ("device", "dtype")),
                                     "batch_size": opts.batch_size})
    return cfg


class ResumableBackend:
    """A Backend whose every call is a resumable generation job on disk (meditune.generation.job).

    Why: judges are called from inside scorers (DAHL splits, then verifies); wrapping the backend makes each of
    those calls resumable after a kill without the scorers knowing. The inner backend is built on first need.
    """

    def __init__(self, make: Callable[[], Backend], work_dir: Path, model: dict[str, Any], label: str):
        self._make, self.work_dir, self.model, self.label = make, Path(work_dir), model, label
        self._inner: Backend | None = None
        self.name = f"resumable:{label}"

    def _backend(self) -> Backend:
        if self._inner is None:
            self._inner = self._make()
        return self._inner

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Generation]]:
        from meditune.generation.job import run_job

        if not requests:
            return []
        key = hash_obj([r.to_dict() for r in requests])[:16]
        job_dir = self.work_dir / f"{_slug(self.label)}-{key}"
        # under several ranks each generates its share and every rank gets all rows back (meditune.distributed)
        result = run_job(list(requests), self._backend, job_dir, model=self.model, label=self.label,
                         progress=False)
        rows = {obj["id"]: obj for obj in result.rows or []}
        return [[Generation(r.id, g["index"], g["text"], g.get("prompt_tokens", 0), g.get("completion_tokens", 0),
                            g.get("finish_reason", "stop")) for g in rows[r.id]["generations"]] for r in requests]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[-40:] or "model"


def make_resumable(cfg: BackendConfig, work_dir: Path) -> ResumableBackend:
    """A ResumableBackend over make_backend(cfg), jobs under work_dir."""
    from meditune.generation.cache import model_key
    from meditune.generation.factory import make_backend

    return ResumableBackend(lambda: make_backend(cfg), work_dir, model_key(cfg), cfg.label)


def backends(opts: OpenEvalOptions, out_dir: Path, backend: Backend | None = None,
             judge: Backend | None = None, need_judge: bool = False) -> tuple[Backend, Backend | None]:
    """(evaluated model backend, judge backend or None); given backends (tests) are used as they are."""
    gen_cfg = generator_config(opts)
    gen = backend or make_resumable(gen_cfg, out_dir / "generations")
    if judge is None:
        jcfg = judge_config(opts)
        if jcfg is not None:
            # The same model and settings as the evaluated one: share the backend, load weights once.
            same = backend is None and jcfg.model_dump(exclude={"name"}) == gen_cfg.model_dump(exclude={"name"})
            judge = gen if same else make_resumable(jcfg, out_dir / "judge")
    if need_judge and judge is None:
        raise ConfigError("this evaluation needs a judge: set 'judge' (a model spec such as 'default', or "
                          "{backend: openai, model: ..., base_url: ...})")
    return gen, judge


def load_records(spec: str, kinds: tuple[type[Record], ...], *, limit: int | None = None,
                 what: str = "data") -> list[Any]:
    """Records of the given kinds from a data source spec; errors name the source, item and field."""
    from meditune.data import load_source

    records = list(load_source(spec))
    if not records:
        raise InputError("no items", file=spec)
    seen: set[str] = set()
    for i, r in enumerate(records, start=1):
        if not isinstance(r, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise InputError(f"{what} holds {type(r).__name__} records, expected {names}", file=spec,
                             line=f"item {i}")
        if r.id in seen:
            raise InputError(f"duplicate id {r.id!r}", file=spec, line=f"item {i}", field="id")
        seen.add(r.id)
    return records[:limit] if limit else records


def first_texts(gens: list[list[Generation]]) -> list[tuple[str, str]]:
    """(text, finish_reason) of each request's first generation ('' and 'error' when there is none)."""
    return [(g[0].text, g[0].finish_reason) if g else ("", "error") for g in gens]


# ------------------------------------------------------------------------------------------------ summaries

def by_group(samples: Iterable[dict[str, Any]], metric: str, key: Callable[[dict[str, Any]], Any], *,
             binary: bool = False, seed: int = 0) -> dict[str, dict[str, Any]]:
    """{group: summary} of one per-sample metric, groups from key(sample) (None groups are skipped)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        g = key(s)
        v = s.get("metrics", {}).get(metric)
        if g is not None and v is not None:
            groups[str(g)].append(float(v))
    return {g: metric_summary(v, seed, binary=binary) for g, v in sorted(groups.items())}


def finish(out_dir: str | Path, task: str, samples: list[dict[str, Any]], *, protocol: dict[str, Any],
           run_config: dict[str, Any], by_category: dict[str, dict[str, dict[str, Any]]] | None = None,
           overrides: dict[str, dict[str, Any]] | None = None, lower_is_better: Sequence[str] = (),
           extra: dict[str, Any] | None = None, n_original: int | None = None, seed: int = 0,
           started: float | None = None) -> dict[str, str]:
    """Build results.json (MCQA layout) from samples, add breakdowns and corpus-level metrics, write both files.

    `overrides` replaces or adds whole-set metrics that are not means of per-sample values (micro F1, Elo).
    """
    results = build_results(task, samples, task_config={"task": task, "output_type": "generate_until",
                                                        "metadata": {"version": 1.0}},
                            run_config=run_config, protocol=protocol, n_original=n_original,
                            extra={"by_category": by_category or {}, **(extra or {})}, seed=seed, started=started)
    med, row = results["meditune"], results["results"][task]
    for name, s in (overrides or {}).items():
        if not s.get("n"):
            continue  # nothing measured (e.g. no benign set): leave the metric out rather than write NaN
        med["metrics"][name] = s
        row[f"{name},{FILTER}"] = s["value"]
        row[f"{name}_stderr,{FILTER}"] = s.get("stderr", float("nan"))
        row[f"{name}_ci_low,{FILTER}"] = s["ci_low"]
        row[f"{name}_ci_high,{FILTER}"] = s["ci_high"]
    for name, s in med["metrics"].items():
        row[f"{name}_n,{FILTER}"] = s["n"]  # metrics differ in n (harmful vs benign items): the report reads this
    results["higher_is_better"][task] = {m: m not in lower_is_better for m in med["metrics"]}
    return write_outputs(out_dir, results, samples)  # rank 0 only under several ranks


def run_config_of(opts: OpenEvalOptions, backend: Backend) -> dict[str, Any]:
    """The `config` block of results.json (no secrets: only the name of the key's environment variable)."""
    cfg = opts.model_dump()
    cfg["backend_name"] = getattr(backend, "name", type(backend).__name__)
    return cfg
