"""The `direct` strategy: ask for the answer directly, without reasoning. The one implementation of direct
answering, in three named variants (VARIANTS), each a prompt from meditune.prompts and a reading of the answer:

  loglik       lm-eval's multiple_choice: the log-likelihood of each option after the task template (acc,
               acc_norm; lm-eval's numbers)
  generative   lm-eval's generate_until: a greedy answer to the task template, its letter by the `lm_eval`
               protocol of meditune.letters (exact_match)
  letter_only  a chat turn asking for the letter only (template `letter_only`), greedy, `answer_tokens` tokens,
               the letter by `letter_or_answer_line`, unparseable answers re-asked: `run_strategy("direct", ...)`,
               run by the strategy runner beside the CoT family so that their costs compare like for like

The MCQA engine (`meditune eval mcqa --strategy direct`) runs loglik or generative (its `--mode`), resumable from
an append-only shard of finished samples.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meditune.distributed import current
from meditune.errors import ConfigError
from meditune.evaluation.loglik import BatchHooks
from meditune.evaluation.strategies.context import StrategyContext
from meditune.evaluation.strategies.registry import register_strategy
from meditune.io import hash_obj
from meditune.letters import parse_choice
from meditune.prompts import PromptBuilder, Template, pick_shots, render_mcq
from meditune.records import MCQItem
from meditune.shards import Shard

log = logging.getLogger(__name__)

PARTIAL = "samples.partial.jsonl"
PARTIAL_KEY = "samples.partial.key.json"


@dataclass(frozen=True)
class DirectVariant:
    """One way of asking directly: its prompt (a meditune.prompts template; None = the task's template, rendered
    as lm-eval does by PromptBuilder), how the answer is read (a meditune.letters protocol; None = the options'
    log-likelihood, nothing is parsed) and how results describe that reading."""

    name: str
    template: str | None
    parse: str | None
    parse_rule: str


VARIANTS: dict[str, DirectVariant] = {v.name: v for v in [
    DirectVariant("loglik", None, None, "argmax of the options' log-likelihood"),
    DirectVariant("generative", None, "lm_eval", "lm-eval's letter cascade (meditune.letters lm_eval)"),
    DirectVariant("letter_only", "letter_only", "letter_or_answer_line", "leading letter or last 'Answer: X'"),
]}
RUNNER_VARIANT = "letter_only"  # what run_strategy("direct", ...) asks (chat requests, beside the CoT family)


def variant_protocol(variant: str) -> dict[str, str]:
    """How a results file names a variant and its reading of the answer."""
    return {"variant": variant, "parse": VARIANTS[variant].parse_rule}


def direct_messages(item: MCQItem, variant: str = RUNNER_VARIANT) -> list[dict[str, str]]:
    """The prompt of a chat variant (letter_only): one user turn asking for the letter only, no reasoning."""
    template = VARIANTS[variant].template
    if template is None:
        raise ValueError(f"the {variant} variant renders the task's template (PromptBuilder), not a chat turn")
    return [{"role": "user", "content": render_mcq(item, template)}]


def parse_direct_answer(text: str, n_options: int, variant: str = RUNNER_VARIANT) -> int | None:
    """0-based index of the option a direct answer names under the variant's protocol, else None
    (letter_only: "C", "(C)", "C. Ceftriaxone", or the last "Answer: X"; generative: lm-eval's cascade)."""
    protocol = VARIANTS[variant].parse
    if protocol is None:
        raise ValueError(f"the {variant} variant reads no generated answer")
    return parse_choice(text, n_options, protocol)


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
    """Score every item directly: log-likelihood of each option, or greedy generation + letter extraction.

    Batches are formed within fixed pools of `pool_size(cfg)` items (longest first, by tokens), and each batch's
    samples are appended to the shard as soon as it finishes, so a killed run loses at most the batches in
    flight and a resumed run re-runs only unfinished batches, formed exactly as before (same numbers). Under
    several ranks (meditune.distributed) batches go round robin to the ranks and the samples are gathered.
    """
    if options:
        raise ConfigError(f"strategy 'direct' takes no options, got {sorted(options)}")
    cfg = ctx.config
    ranks = current(cfg.model.device)  # before the model loads: a rank's "cuda" is its own GPU
    mode = cfg.mode or ctx.template.mode
    model, tok = ctx.scoring_model_and_tokenizer() if mode == "loglik" else ctx.model_and_tokenizer()
    builder = _builder(ctx, tok)
    # finished samples of an interrupted run, valid only for the same settings (key)
    shard = Shard(ctx.work_dir / PARTIAL, identity={"key": direct_run_key(cfg, ctx.model_spec, ctx.template, mode)},
                  identity_path=ctx.work_dir / PARTIAL_KEY, on_mismatch="reset", ranks=ranks)
    done = shard.done
    resumed = sum(1 for it in ctx.items if it.id in done)
    if resumed:
        log.info("resuming: %d samples already on disk", resumed)
    pool = pool_size(cfg)
    batch_no = itertools.count()  # the same on every rank: every rank plans every pool that is not finished
    t0, scored = time.time(), 0
    todo = resumed < len(ctx.items)
    backend = ctx.backend() if mode == "generative" and todo else None  # one backend: its weight packing is reused
    for start in range(0, len(ctx.items), pool):
        part = list(enumerate(ctx.items[start:start + pool], start))
        if all(it.id in done for _, it in part):
            continue
        rendered = [builder.render(it, pick_shots(it, ctx.fewshot_items, cfg.shots)) for _, it in part]

        def run(indices: list[int], part: list[tuple[int, MCQItem]] = part) -> bool:
            return ranks.owns(next(batch_no)) and any(part[i][1].id not in done for i in indices)

        def keep(indices: list[int], results: list[Any], part: list[tuple[int, MCQItem]] = part,
                 rendered: list[Any] = rendered) -> None:
            nonlocal scored
            make = _loglik_sample if mode == "loglik" else _generative_sample
            shard.add([make(ctx, part[i], rendered[i], r) for i, r in zip(indices, results, strict=True)
                       if part[i][1].id not in done])
            scored += len(indices)

        hooks = BatchHooks(run, keep)
        if mode == "loglik":
            _score_loglik(ctx, model, tok, rendered, hooks)
        else:
            _score_generative(ctx, backend, rendered, hooks)
        log.info("mcqa: %d/%d items (%.1f items/s)", min(start + pool, len(ctx.items)), len(ctx.items),
                 scored / max(1e-9, time.time() - t0))
    done = shard.merge()
    samples = [done[it.id] for it in ctx.items]
    ctx.extra_results["mode"] = mode
    return samples


def pool_size(cfg: Any) -> int:
    """Items whose batches are planned together (sorted by length within the pool); the resumable unit is one
    batch, not the pool."""
    return max(128, cfg.batch_size * 16)


def _score_loglik(ctx: StrategyContext, model: Any, tok: Any, rendered: list[Any], hooks: BatchHooks) -> None:
    from meditune.evaluation.loglik import LoglikRequest, LoglikScorer

    scorer = LoglikScorer(model, tok, batch_size=ctx.config.batch_size, max_length=ctx.config.max_length,
                          max_tokens=ctx.config.max_batch_tokens)
    scorer.score([LoglikRequest(r.context, r.continuations) for r in rendered], hooks=hooks)


def _loglik_sample(ctx: StrategyContext, doc: tuple[int, MCQItem], r: Any, sc: Any) -> dict[str, Any]:
    doc_id, item = doc
    pred = _argmax(sc.loglik)
    pred_norm = _argmax([ll / len(c) for ll, c in zip(sc.loglik, r.choices, strict=True)])
    metrics = {"acc": float(pred == item.answer), "acc_norm": float(pred_norm == item.answer)}
    extra: dict[str, Any] = {}
    if ctx.config.per_token:
        pred_tok = _argmax([ll / n for ll, n in zip(sc.loglik, sc.n_tokens, strict=True)])
        metrics["acc_per_token"] = float(pred_tok == item.answer)
        extra["pred_per_token"] = pred_tok
    return ctx.sample(item, doc_id, pred, metrics, pred_norm=pred_norm, prompt=r.context,
                      continuations=r.continuations, loglik=sc.loglik, is_greedy=sc.is_greedy,
                      continuation_tokens=sc.n_tokens, context_tokens=sc.context_tokens,
                      truncated_tokens=sc.truncated_tokens, **extra)


def _score_generative(ctx: StrategyContext, backend: Any, rendered: list[Any], hooks: BatchHooks) -> None:
    from meditune.evaluation.generative import DEFAULT_STOP, generate_texts

    cfg = ctx.config
    generate_texts(backend, [r.context for r in rendered], max_new_tokens=cfg.max_new_tokens,
                   stop=DEFAULT_STOP if cfg.stop is None else cfg.stop, max_length=cfg.max_length,
                   batch_size=cfg.batch_size, hooks=hooks)


def _generative_sample(ctx: StrategyContext, doc: tuple[int, MCQItem], r: Any, o: Any) -> dict[str, Any]:
    doc_id, item = doc
    pred = parse_direct_answer(o.text, len(item.options), "generative")
    return ctx.sample(item, doc_id, pred, {"exact_match": float(pred == item.answer)}, prompt=r.context,
                      response=o.text, parsed=pred is not None, completion_tokens=o.completion_tokens,
                      finish_reason=o.finish_reason, truncated_tokens=o.truncated_tokens,
                      cached_tokens=o.cached_tokens)
