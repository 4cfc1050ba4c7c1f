"""The multiple-choice evaluation engine: config, item loading, the `direct` strategy (log-likelihood or
generative), the strategy registry other strategies plug into, resumable sample shards, and the outputs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from meditune.errors import ConfigError, InputError
from meditune.evaluation.prompts import PromptBuilder, Template, get_template, pick_shots
from meditune.evaluation.results import build_results, write_outputs
from meditune.io import append_jsonl, hash_obj, iter_jsonl, read_json, write_json, write_jsonl
from meditune.records import LETTERS, MCQItem, read_records

log = logging.getLogger(__name__)

PARTIAL = "samples.partial.jsonl"
PARTIAL_KEY = "samples.partial.key.json"


class MCQAOptions(BaseModel):
    """Settings of one multiple-choice evaluation (shared by the CLI and the `eval_mcqa` stage)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(None, description="model spec; default: the recipe's model")
    data: str = Field(description="data source spec or path to an MCQItem JSONL")
    task: str | None = Field(None, description="task name in results.json; default: the data file stem")
    template: str = "generic"
    shots: int = Field(0, ge=0)
    fewshot_data: str | None = None
    chat_template: bool = False
    system_prompt: str | None = None  # None = no system prompt; "model-default" = the template's own
    mode: Literal["loglik", "generative"] | None = None  # default: the template's
    choices: Literal["letters", "full"] | None = None  # default: the template's
    per_token: bool = False
    strategy: str = "direct"
    strategy_options: dict[str, Any] = Field(default_factory=dict)
    limit: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)
    max_batch_tokens: int | None = Field(None, ge=16)  # loglik: tokens per forward; None = by device
    max_length: int | None = Field(None, ge=8)
    max_new_tokens: int = Field(32, ge=1)
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    seed: int = 0


# ---------------------------------------------------------------------------------------------- loading items

def load_items(spec: str, *, what: str = "data") -> list[MCQItem]:
    """MCQItems from a meditune.data source spec, or from an MCQItem JSONL file."""
    try:
        return _load_items(spec, what)
    except InputError as e:
        if e.field == "(record)" and "answer index" in e.reason:  # name the field a record validator checked
            raise InputError(e.reason, file=e.file, line=e.line, field="answer") from None
        raise


def _looks_like_mcq_jsonl(path: Path) -> bool:
    for _, obj in iter_jsonl(path, tolerate_torn_tail=True):
        return isinstance(obj, dict) and {"id", "question", "options", "answer"} <= set(obj)
    return False


def _load_items(spec: str, what: str) -> list[MCQItem]:
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".jsonl" and _looks_like_mcq_jsonl(path):
        return _check_items(read_records(path, MCQItem), spec)  # type: ignore[arg-type]
    try:
        from meditune.data import load_source  # type: ignore[attr-defined]
    except ImportError:
        if path.is_file():
            return _check_items(read_records(path, MCQItem), spec)  # type: ignore[arg-type]
        raise ConfigError(f"{what} {spec!r}: not an MCQItem JSONL file (and meditune.data has no load_source)") from None
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


# ----------------------------------------------------------------------------------------- strategy registry

@dataclass
class StrategyContext:
    """What a strategy gets: the items, the settings, the model (lazily) and a place for resumable work."""

    items: list[MCQItem]
    fewshot_items: list[MCQItem]
    config: MCQAOptions
    template: Template
    work_dir: Path
    model_spec: str
    extra_results: dict[str, Any] = field(default_factory=dict)
    _loaded: tuple[Any, Any] | None = field(default=None, repr=False)

    @property
    def seed(self) -> int:
        return self.config.seed

    def model_and_tokenizer(self) -> tuple[Any, Any]:
        """(model, tokenizer) of the evaluated model, loaded once."""
        if self._loaded is None:
            from meditune.models import load_model

            self._loaded = load_model(self.model_spec, device=self.config.device, dtype=self.config.dtype,
                                      trust_remote_code=self.config.trust_remote_code)
        return self._loaded

    def backend(self) -> Any:
        """The project's generation Backend (meditune.generation, `transformers`) on the evaluated model."""
        from meditune.generation.base import BackendConfig
        from meditune.generation.factory import make_backend

        model, tok = self.model_and_tokenizer()
        cfg = self.config
        backend = make_backend(BackendConfig(model=self.model_spec, system_prompt=cfg.system_prompt,
                                             device=cfg.device, dtype=cfg.dtype,
                                             trust_remote_code=cfg.trust_remote_code, batch_size=cfg.batch_size),
                               model=model, tokenizer=tok)
        if cfg.max_length:  # prompts that do not fit come back as "error" generations (see the backend)
            backend.context = min(backend.context, cfg.max_length)
        return backend

    def sample(self, item: MCQItem, doc_id: int, pred: int | None, metrics: dict[str, float],
               **extra: Any) -> dict[str, Any]:
        """A standard sample record (see docs/evaluation-mcqa.md)."""
        return {"doc_id": doc_id, "id": item.id, "subject": item.subject, "gold": item.answer,
                "gold_letter": LETTERS[item.answer], "pred": pred,
                "pred_letter": LETTERS[pred] if pred is not None else None, "metrics": metrics, **extra}


StrategyFn = Callable[[StrategyContext, dict[str, Any]], list[dict[str, Any]]]


@dataclass
class Strategy:
    name: str
    run: StrategyFn
    description: str


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str, description: str = "") -> Callable[[StrategyFn], StrategyFn]:
    """Decorator registering `run(ctx, options) -> samples` as an MCQA strategy."""

    def deco(fn: StrategyFn) -> StrategyFn:
        STRATEGIES[name] = Strategy(name, fn, description)
        return fn

    return deco


def get_strategy(name: str) -> Strategy:
    """A registered strategy (imports meditune.evaluation.strategies to fill the registry)."""
    if name not in STRATEGIES:
        try:
            import meditune.evaluation.strategies  # noqa: F401  (registers its strategies)
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("meditune.evaluation.strategies"):
                raise
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; available: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]


# ------------------------------------------------------------------------------------------- direct strategy

def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # first index on ties, as numpy


class _Shard:
    """Append-only samples of an interrupted run, valid only for the same settings (key)."""

    def __init__(self, work_dir: Path, key: str):
        self.path, self.key_path = work_dir / PARTIAL, work_dir / PARTIAL_KEY
        work_dir.mkdir(parents=True, exist_ok=True)
        self.done: dict[str, dict[str, Any]] = {}
        if self.path.exists() and self.key_path.exists() and read_json(self.key_path).get("key") == key:
            for _, obj in iter_jsonl(self.path, tolerate_torn_tail=True):
                self.done[obj["id"]] = obj
            write_jsonl(self.path, self.done.values())  # drop a torn last line before appending
            if self.done:
                log.info("resuming: %d samples already on disk", len(self.done))
        else:
            self.path.unlink(missing_ok=True)
            write_json(self.key_path, {"key": key})

    def add(self, samples: list[dict[str, Any]]) -> None:
        append_jsonl(self.path, samples)
        for s in samples:
            self.done[s["id"]] = s


def direct_run_key(cfg: MCQAOptions, model_spec: str, template: Template, mode: str) -> str:
    """What a resumable shard must match: every setting that changes a sample (not batch size or limit)."""
    return hash_obj({"config": cfg.model_dump(exclude={"batch_size", "max_batch_tokens", "limit"}), "mode": mode,
                     "model": model_spec, "model_files": _model_stamp(model_spec), "template": template.text})


def _model_stamp(model_spec: str) -> list[tuple[str, int, int]]:
    """Names, sizes and mtimes of a local model directory's files: a model rewritten in place is a new key."""
    p = Path(model_spec).expanduser()
    if not p.is_dir():
        return []
    return sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in p.iterdir() if f.is_file())


def _builder(ctx: StrategyContext, tokenizer: Any) -> PromptBuilder:
    cfg = ctx.config
    return PromptBuilder(ctx.template, cfg.choices or ctx.template.choices, chat=cfg.chat_template,
                         tokenizer=tokenizer, system_prompt=cfg.system_prompt)


@register_strategy("direct", "the answer's log-likelihood (acc, acc_norm) or a greedy answer's letter")
def run_direct(ctx: StrategyContext, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Score every item directly: log-likelihood of each option, or greedy generation + letter extraction."""
    if options:
        raise ConfigError(f"strategy 'direct' takes no options, got {sorted(options)}")
    cfg = ctx.config
    model, tok = ctx.model_and_tokenizer()
    builder = _builder(ctx, tok)
    mode = cfg.mode or ctx.template.mode
    shard = _Shard(ctx.work_dir, direct_run_key(cfg, ctx.model_spec, ctx.template, mode))
    todo = [(i, it) for i, it in enumerate(ctx.items) if it.id not in shard.done]
    chunk = max(128, cfg.batch_size * 16)  # the resumable unit; batches are formed within a chunk
    t0, done = time.time(), len(ctx.items) - len(todo)
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        rendered = [builder.render(it, pick_shots(it, ctx.fewshot_items, cfg.shots)) for _, it in part]
        if mode == "loglik":
            samples = _score_loglik(ctx, model, tok, part, rendered)
        else:
            samples = _score_generative(ctx, model, tok, part, rendered)
        shard.add(samples)
        done += len(part)
        log.info("mcqa: %d/%d items (%.1f items/s)", done, len(ctx.items),
                 (done - (len(ctx.items) - len(todo))) / max(1e-9, time.time() - t0))
    samples = [shard.done[it.id] for it in ctx.items]
    ctx.extra_results["mode"] = mode
    return samples


def _score_loglik(ctx: StrategyContext, model: Any, tok: Any, part: list[tuple[int, MCQItem]],
                  rendered: list[Any]) -> list[dict[str, Any]]:
    from meditune.evaluation.loglik import LoglikRequest, LoglikScorer

    scorer = LoglikScorer(model, tok, batch_size=ctx.config.batch_size, max_length=ctx.config.max_length,
                          max_tokens=ctx.config.max_batch_tokens)
    scores = scorer.score([LoglikRequest(r.context, r.continuations) for r in rendered])
    out = []
    for (doc_id, item), r, sc in zip(part, rendered, scores, strict=True):
        pred = _argmax(sc.loglik)
        pred_norm = _argmax([ll / len(c) for ll, c in zip(sc.loglik, r.choices, strict=True)])
        metrics = {"acc": float(pred == item.answer), "acc_norm": float(pred_norm == item.answer)}
        extra: dict[str, Any] = {}
        if ctx.config.per_token:
            pred_tok = _argmax([ll / n for ll, n in zip(sc.loglik, sc.n_tokens, strict=True)])
            metrics["acc_per_token"] = float(pred_tok == item.answer)
            extra["pred_per_token"] = pred_tok
        out.append(ctx.sample(item, doc_id, pred, metrics, pred_norm=pred_norm, prompt=r.context,
                              continuations=r.continuations, loglik=sc.loglik, is_greedy=sc.is_greedy,
                              continuation_tokens=sc.n_tokens, context_tokens=sc.context_tokens,
                              truncated_tokens=sc.truncated_tokens, **extra))
    return out


def _score_generative(ctx: StrategyContext, model: Any, tok: Any, part: list[tuple[int, MCQItem]],
                      rendered: list[Any]) -> list[dict[str, Any]]:
    from meditune.evaluation.generative import extract_choice, generate_texts

    outs = generate_texts(model, tok, [r.context for r in rendered], max_new_tokens=ctx.config.max_new_tokens,
                          batch_size=ctx.config.batch_size, max_length=ctx.config.max_length)
    samples = []
    for (doc_id, item), r, o in zip(part, rendered, outs, strict=True):
        pred = extract_choice(o.text, len(item.options))
        samples.append(ctx.sample(item, doc_id, pred, {"exact_match": float(pred == item.answer)},
                                  prompt=r.context, response=o.text, parsed=pred is not None,
                                  completion_tokens=o.completion_tokens, finish_reason=o.finish_reason,
                                  truncated_tokens=o.truncated_tokens))
    return samples


# ------------------------------------------------------------------------------------------------ the engine

def _task_config(task: str, cfg: MCQAOptions, template: Template, mode: str) -> dict[str, Any]:
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
        "metric_list": ([{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]
                        if generative else
                        [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                         for m in ["acc", "acc_norm"] + (["acc_per_token"] if cfg.per_token else [])]),
        **({"generation_kwargs": {"until": "see meditune.evaluation.generative.DEFAULT_STOP",
                                  "do_sample": False, "max_gen_toks": cfg.max_new_tokens}} if generative else {}),
        "lm_eval_equivalent": template.lm_eval_task,
        "metadata": {"version": 1.0},
    }


def evaluate_mcqa(cfg: MCQAOptions, out_dir: str | Path, *, model: str | None = None,
                  preloaded: tuple[Any, Any] | None = None) -> dict[str, str]:
    """Run one evaluation and write results.json + samples.jsonl under out_dir; returns their paths.

    `model` is the fallback spec when cfg.model is unset; `preloaded` = (model, tokenizer) already in memory.
    """
    started = time.time()
    out = Path(out_dir)
    template = get_template(cfg.template)
    model_spec = cfg.model or model or "default"
    items = load_items(cfg.data)
    n_original = len(items)
    items = items[: cfg.limit] if cfg.limit else items
    pool = load_items(cfg.fewshot_data, what="fewshot_data") if cfg.fewshot_data else items
    if cfg.shots and len(pool) < cfg.shots + (0 if cfg.fewshot_data else 1):
        raise ConfigError(f"shots={cfg.shots} but the few-shot pool has only {len(pool)} items")
    task = cfg.task or Path(cfg.data).stem
    strategy = get_strategy(cfg.strategy)
    ctx = StrategyContext(items, pool, cfg, template, out, model_spec, _loaded=preloaded)
    samples = strategy.run(ctx, dict(cfg.strategy_options))
    if len(samples) != len(items):
        raise RuntimeError(f"strategy {cfg.strategy!r} returned {len(samples)} samples for {len(items)} items")
    mode = ctx.extra_results.pop("mode", cfg.mode or template.mode)
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
    run_config = {"model": "meditune-hf", "model_args": f"pretrained={model_spec},dtype={cfg.dtype}",
                  "model_spec": model_spec, "batch_size": cfg.batch_size, "device": cfg.device,
                  "limit": cfg.limit, "seed": cfg.seed, "data": cfg.data, "options": cfg.model_dump(mode="json")}
    if extra["truncated"]:
        log.warning("%d items were longer than the context window and left-truncated", extra["truncated"])
    results = build_results(task, samples, task_config=_task_config(task, cfg, template, mode),
                            run_config=run_config, protocol=protocol, n_original=n_original,
                            num_fewshot=cfg.shots, extra=extra, seed=cfg.seed, started=started)
    paths = write_outputs(out, results, samples)
    (out / PARTIAL).unlink(missing_ok=True)  # finished: the shard is now in samples.jsonl
    (out / PARTIAL_KEY).unlink(missing_ok=True)
    return paths
