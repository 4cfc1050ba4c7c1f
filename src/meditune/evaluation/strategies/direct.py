"""The `direct` strategy: the log-likelihood of each option (acc, acc_norm; lm-eval's numbers) or a greedy
answer's letter (generative), resumable from an append-only shard of finished samples."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from meditune.errors import ConfigError
from meditune.evaluation.strategies.context import StrategyContext
from meditune.evaluation.strategies.registry import register_strategy
from meditune.io import hash_obj
from meditune.prompts import PromptBuilder, Template, pick_shots
from meditune.records import MCQItem
from meditune.shards import Shard

log = logging.getLogger(__name__)

PARTIAL = "samples.partial.jsonl"
PARTIAL_KEY = "samples.partial.key.json"


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # first index on ties, as numpy


def direct_run_key(cfg: Any, model_spec: str, template: Template, mode: str) -> str:
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
    # finished samples of an interrupted run, valid only for the same settings (key)
    shard = Shard(ctx.work_dir / PARTIAL, identity={"key": direct_run_key(cfg, ctx.model_spec, ctx.template, mode)},
                  identity_path=ctx.work_dir / PARTIAL_KEY, on_mismatch="reset")
    if shard.done:
        log.info("resuming: %d samples already on disk", len(shard.done))
    todo = [(i, it) for i, it in enumerate(ctx.items) if it.id not in shard.done]
    chunk = max(128, cfg.batch_size * 16)  # the resumable unit; batches are formed within a chunk
    t0, done = time.time(), len(ctx.items) - len(todo)
    backend = ctx.backend() if mode == "generative" and todo else None  # one backend: its weight packing is reused
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        rendered = [builder.render(it, pick_shots(it, ctx.fewshot_items, cfg.shots)) for _, it in part]
        if mode == "loglik":
            samples = _score_loglik(ctx, model, tok, part, rendered)
        else:
            samples = _score_generative(ctx, backend, part, rendered)
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


def _score_generative(ctx: StrategyContext, backend: Any, part: list[tuple[int, MCQItem]],
                      rendered: list[Any]) -> list[dict[str, Any]]:
    from meditune.evaluation.generative import DEFAULT_STOP, extract_choice, generate_texts

    cfg = ctx.config
    outs = generate_texts(backend, [r.context for r in rendered], max_new_tokens=cfg.max_new_tokens,
                          stop=DEFAULT_STOP if cfg.stop is None else cfg.stop, max_length=cfg.max_length)
    samples = []
    for (doc_id, item), r, o in zip(part, rendered, outs, strict=True):
        pred = extract_choice(o.text, len(item.options))
        samples.append(ctx.sample(item, doc_id, pred, {"exact_match": float(pred == item.answer)},
                                  prompt=r.context, response=o.text, parsed=pred is not None,
                                  completion_tokens=o.completion_tokens, finish_reason=o.finish_reason,
                                  truncated_tokens=o.truncated_tokens, cached_tokens=o.cached_tokens))
    return samples
