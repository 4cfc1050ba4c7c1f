"""The multiple-choice evaluation engine: settings, item loading, running a strategy (meditune.evaluation.strategies:
direct, cot, ...) and writing results.json + samples.jsonl."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from meditune.distributed import current
from meditune.errors import ConfigError, InputError
from meditune.evaluation.calibration import add_to_results, mcqa_calibration
from meditune.evaluation.generative import DEFAULT_STOP
from meditune.evaluation.results import build_results, write_outputs
from meditune.evaluation.strategies import StrategyContext, get_strategy
from meditune.evaluation.strategies.direct import PARTIAL, PARTIAL_KEY
from meditune.evaluation.tasks import Task, get_task
from meditune.io import iter_jsonl
from meditune.model_ref import DEFAULT_SPEC, ModelRef, ModelRefOwner, model_ref_field
from meditune.prompts import Template, choice_strings, get_template
from meditune.records import MCQItem, read_records
from meditune.shards import remove_shard

log = logging.getLogger(__name__)


class MCQAOptions(ModelRefOwner):
    """Settings of one multiple-choice evaluation (shared by the CLI and the `eval_mcqa` stage)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model_defaults = {"model": None, "device": "auto", "dtype": "auto", "trust_remote_code": False}
    model_keys_after = "stop"

    model: ModelRef = model_ref_field()
    data: str = Field(description="data source spec or path to an MCQItem JSONL")
    task: str | None = Field(None, description="a registered task (medqa_4options, medmcqa, pubmedqa, mmlu_medical, "
                             "kormedmcqa, cmmlu_medical, headqa: its loader, template and metrics), or just the "
                             "name in results.json; default: the data file stem")
    template: str | None = Field(None, description="medqa | medmcqa | pubmedqa | mmlu | kormedmcqa | cmmlu | generic "
                                 "| continuation, or a format string with {question}; default: the task's, else "
                                 "generic")
    shots: int = Field(0, ge=0, description="number of few-shot examples (first n)")
    fewshot_data: str | None = Field(None, description="source of few-shot examples (default: the eval data)")
    chat_template: bool = Field(False, description="apply the model's chat template")
    system_prompt: str | None = Field(None, description="system prompt; 'model-default' keeps the template's own "
                                      "(default: none)")
    mode: Literal["loglik", "generative"] | None = Field(None, description="default: the template's")
    choices: Literal["letters", "full"] | None = Field(None, description="default: the template's")
    per_token: bool = Field(False, description="also report acc_per_token")
    strategy: str = Field("direct", description="direct, or a strategy of meditune.evaluation.strategies (cot, "
                          "self-consistency, knn-fewshot, medprompt)")
    strategy_options: dict[str, Any] = Field(default_factory=dict, description="options of the strategy")
    limit: int | None = Field(None, ge=1, description="evaluate only the first N items")
    batch_size: int = Field(16, ge=1, description="most questions per forward pass / prompts per generate call")
    max_batch_tokens: int | None = Field(None, ge=16, description="loglik: most tokens per forward (default: 2048 "
                                         "on CPU, 32768 on GPU)")
    engine: Literal["auto", "transformers"] = Field("auto", description="loglik: 'auto' scores a Llama-"
                                                    "architecture model in float32 on CPU with meditune's plain "
                                                    "torch forward (meditune.plain_llama: same numbers to ~1e-5, "
                                                    "no transformers import), any other with transformers; "
                                                    "'transformers' always with transformers")
    max_length: int | None = Field(None, ge=8, description="context window (default: the model's)")
    max_new_tokens: int = Field(32, ge=1, description="generative mode: tokens to generate")
    stop: list[str] | None = Field(None, description="generative mode: stop strings (default: lm-eval's kormedmcqa "
                                   "list without '.': Q:, </s>, <|im_end|>, a blank line)")
    seed: int = Field(0, description="seed (bootstrap, sampling strategies)")


# ---------------------------------------------------------------------------------------------- loading items

def load_items(spec: str, *, what: str = "data", task: Task | None = None) -> list[MCQItem]:
    """MCQItems from a meditune.data source spec, or from an MCQItem JSONL file; a task reads a plain path with
    its loader and keeps its subjects."""
    try:
        items = _load_items(spec, what, task.loader if task else None)
    except InputError as e:
        if e.field == "(record)" and "answer index" in e.reason:  # name the field a record validator checked
            raise InputError(e.reason, file=e.file, line=e.line, field="answer") from None
        raise
    if task and task.subjects:
        items = [it for it in items if it.subject in task.subjects]
        if not items:
            raise InputError(f"no items of the {task.name} subjects ({', '.join(task.subjects)})", file=spec)
    return items


def _looks_like_mcq_jsonl(path: Path) -> bool:
    for _, obj in iter_jsonl(path, tolerate_torn_tail=True):
        return isinstance(obj, dict) and {"id", "question", "options", "answer"} <= set(obj)
    return False


def _load_items(spec: str, what: str, loader: str | None) -> list[MCQItem]:
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".jsonl" and _looks_like_mcq_jsonl(path):
        return _check_items(read_records(path, MCQItem), spec)  # type: ignore[arg-type]
    from meditune.data import load_source, parse_spec

    if loader and parse_spec(spec)[0] == "auto":
        spec = f"{loader}:{spec}"
    records = list(load_source(spec))
    records = [r[1] if isinstance(r, tuple) else r for r in records]
    bad = [r for r in records if not isinstance(r, MCQItem)]
    if bad:
        raise InputError(f"{what} holds {type(bad[0]).__name__} records, not multiple-choice items", file=spec)
    return _check_items(records, spec)


def _check_items(items: list[MCQItem], spec: str) -> list[MCQItem]:
    if not items:
        raise InputError("no items", file=spec)
    seen: set[str] = set()
    for i, it in enumerate(items, start=1):
        if it.id in seen:
            raise InputError(f"duplicate id {it.id!r}", file=spec, line=f"item {i}", field="id")
        seen.add(it.id)
        # records validate themselves; re-check what would silently corrupt a score if bypassed
        if any(not o.strip() for o in it.options):
            raise InputError("empty option", file=spec, line=f"item {i}", field="options")
        if not 0 <= it.answer < len(it.options):
            raise InputError(f"answer {it.answer} out of range for {len(it.options)} options", file=spec,
                             line=f"item {i}", field="answer")
    return items


# ------------------------------------------------------------------------------------------------ the engine

def _task_config(task: str, cfg: MCQAOptions, template: Template, mode: str,
                 registered: Task | None) -> dict[str, Any]:
    choices = cfg.choices or template.choices
    generative = mode == "generative"
    return {
        "task": task,
        "output_type": "generate_until" if generative else "multiple_choice",
        "doc_to_text": template.text,
        "doc_to_choice": "letters A.." if choices == "letters" else "option texts",
        "description": template.description,
        "target_delimiter": "" if cfg.chat_template else " ",
        "fewshot_delimiter": "\n\n",
        "num_fewshot": cfg.shots,
        "fewshot_config": {"sampler": "first_n", "source": cfg.fewshot_data or "eval data minus the item"},
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                        for m in _metric_names(cfg, mode, registered)],
        **({"generation_kwargs": {"until": list(DEFAULT_STOP if cfg.stop is None else cfg.stop),
                                  "do_sample": False, "max_gen_toks": cfg.max_new_tokens}} if generative else {}),
        "lm_eval_equivalent": registered.lm_eval if registered else template.lm_eval_task,
        "metadata": {"version": 1.0},
    }


def _metric_names(cfg: MCQAOptions, mode: str, registered: Task | None) -> list[str]:
    """The direct strategy's metrics; a registered task keeps only what lm-eval reports for it."""
    names = ["exact_match"] if mode == "generative" else ["acc", "acc_norm"] + (["acc_per_token"] if cfg.per_token
                                                                              else [])
    if registered is None:
        return names
    return [m for m in names if m in registered.metrics or m == "acc_per_token"]


def evaluate_mcqa(cfg: MCQAOptions, out_dir: str | Path, *, model: str | None = None,
                  preloaded: tuple[Any, Any] | None = None, label: str | None = None) -> dict[str, str]:
    """Run one evaluation and write results.json + samples.jsonl under out_dir; returns their paths.

    `model` is the fallback spec when cfg.model.spec is unset; `preloaded` = (model, tokenizer) already in memory;
    `label` names the results when cfg.task is unset (default: the data file stem).
    """
    started = time.time()
    out = Path(out_dir)
    registered = get_task(cfg.task)
    cfg = cfg.model_copy(update={"template": cfg.template or (registered.template if registered else "generic"),
                                 "task": cfg.task or label})
    template = get_template(cfg.template)
    model_spec = cfg.model.spec or model or DEFAULT_SPEC
    items = load_items(cfg.data, task=registered)
    n_original = len(items)
    items = items[: cfg.limit] if cfg.limit else items
    pool = load_items(cfg.fewshot_data, what="fewshot_data", task=registered) if cfg.fewshot_data else items
    if cfg.shots and len(pool) < cfg.shots + (0 if cfg.fewshot_data else 1):
        raise ConfigError(f"shots={cfg.shots} but the few-shot pool has only {len(pool)} items")
    task = cfg.task or Path(cfg.data).stem
    strategy = get_strategy(cfg.strategy)
    ctx = StrategyContext(items, pool, cfg, template, out, model_spec, _loaded=preloaded)
    samples = strategy.run(ctx, dict(cfg.strategy_options))
    if len(samples) != len(items):
        raise RuntimeError(f"strategy {cfg.strategy!r} returned {len(samples)} samples for {len(items)} items")
    mode = ctx.extra_results.pop("mode", cfg.mode or template.mode)
    if registered and cfg.strategy == "direct":  # report what lm-eval reports for the task
        keep = set(_metric_names(cfg, mode, registered))
        samples = [{**s, "metrics": {k: v for k, v in s["metrics"].items() if k in keep}} for s in samples]
    protocol = {
        "strategy": cfg.strategy, "mode": mode, "template": template.name, "choices": cfg.choices or template.choices,
        "shots": cfg.shots, "chat_template": cfg.chat_template, "system_prompt": cfg.system_prompt,
        "normalisation": ({"acc": "sum of log-probs", "acc_norm": "log-prob / characters of the choice (lm-eval)",
                           **({"acc_per_token": "log-prob / continuation tokens"} if cfg.per_token else {})}
                          if mode == "loglik" else {"exact_match": "extracted letter == gold letter"}),
        "truncation": "left (oldest context tokens dropped), counted in 'truncated'",
    }
    extra: dict[str, Any] = {"truncated": sum(1 for s in samples if s.get("truncated_tokens", 0) > 0)}
    if mode == "generative" or any("parsed" in s for s in samples):
        extra["unparseable"] = sum(1 for s in samples if s.get("parsed") is False)
    if ctx.extra_results:
        extra["strategy"] = ctx.extra_results
    run_config = {"model": "meditune-hf", "model_args": f"pretrained={model_spec},dtype={cfg.model.dtype}",
                  "model_spec": model_spec, "batch_size": cfg.batch_size, "device": cfg.model.device,
                  "limit": cfg.limit, "seed": cfg.seed, "data": cfg.data, "options": cfg.model_dump(mode="json")}
    if extra["truncated"]:
        log.warning("%d items were longer than the context window and left-truncated", extra["truncated"])
    results = build_results(task, samples, task_config=_task_config(task, cfg, template, mode, registered),
                            run_config=run_config, protocol=protocol, n_original=n_original,
                            num_fewshot=cfg.shots, extra=extra, seed=cfg.seed, started=started)
    choices = cfg.choices or template.choices
    chars = None
    if mode == "loglik" and (registered is None or "acc_norm" in registered.metrics):  # calibrate what is reported
        chars = [[len(c) for c in choice_strings(it, choices)] for it in items]
    add_to_results(results, task, mcqa_calibration(samples, [len(it.options) for it in items], chars))
    paths = write_outputs(out, results, samples)  # under several ranks: rank 0, with every rank's samples
    if current().is_main:
        remove_shard(out / PARTIAL, out / PARTIAL_KEY)  # finished: the shard is now in samples.jsonl
    return paths
