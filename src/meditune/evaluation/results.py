"""Samples -> lm-eval-compatible results.json (+ CIs, per-subject breakdown), and paired comparison of two runs.

A sample is a dict with at least: doc_id, id, subject, gold, pred, metrics ({name: per-item value}).
results.json keeps lm-eval's top-level layout (results / configs / versions / n-shot / higher_is_better /
n-samples / config / task_hashes / date) with lm-eval's "metric,filter" keys, and adds for every metric
"<metric>_ci_low,none" / "<metric>_ci_high,none" plus a `meditune` section: n, protocol, CIs, per-subject
breakdown, unparseable and truncation counts, and the path of samples.jsonl.

Every MCQA results.json is made by build_results: the engine's (`meditune eval mcqa`, eval_mcqa stages) and
run_strategy's (strategy_results, which adds the strategy's summary, strategy_summary, at the top level too).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from meditune.errors import InputError
from meditune.io import hash_obj, is_inside, iter_jsonl, read_json, write_json, write_jsonl
from meditune.stats import DEFAULT_RESAMPLES, bootstrap_ci, paired_bootstrap, wilson_ci

FILTER = "none"  # lm-eval's filter name for unfiltered metrics
RESULTS_VERSION = 1


def stderr(values: Sequence[float]) -> float:
    """Standard error of the mean with the sample standard deviation (lm-eval's mean_stderr)."""
    n = len(values)
    if n < 2:
        return float("nan")
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1) / n)


def metric_summary(values: Sequence[float], seed: int = 0, *, binary: bool = False,
                   confidence: float = 0.95) -> dict[str, float]:
    """Mean, n, standard error and CI of per-item values: Wilson for 0/1 values (binary), else percentile
    bootstrap. The one summary of a metric (MCQA, open evaluations, strategies)."""
    n = len(values)
    if binary:
        low, high = wilson_ci(int(round(sum(values))), n, confidence=confidence)
    else:
        low, high = bootstrap_ci(values, confidence=confidence, seed=seed)
    return {"value": sum(values) / n if n else float("nan"), "n": n, "stderr": stderr(values),
            "ci_low": low, "ci_high": high}


def aggregate(samples: Sequence[dict[str, Any]], seed: int = 0,
              confidence: float = 0.95) -> tuple[dict[str, dict], dict[str, dict]]:
    """(overall {metric: summary}, per-subject {subject: {metric: summary}}) over the samples' metrics."""
    names: list[str] = []
    for s in samples:
        for k in s.get("metrics", {}):
            if k not in names:
                names.append(k)
    overall = {m: metric_summary([float(s["metrics"][m]) for s in samples if m in s["metrics"]], seed,
                                 confidence=confidence) for m in names}
    by_subject: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_subject[str(s.get("subject") or "all")].append(s)
    breakdown = {}
    if len(by_subject) > 1:
        for subj in sorted(by_subject):
            group = by_subject[subj]
            breakdown[subj] = {m: metric_summary([float(s["metrics"][m]) for s in group if m in s["metrics"]],
                                                 seed, confidence=confidence) for m in names}
    return overall, breakdown


def build_results(task: str, samples: Sequence[dict[str, Any]], *, task_config: dict[str, Any],
                  run_config: dict[str, Any], protocol: dict[str, Any], n_original: int | None = None,
                  num_fewshot: int = 0, extra: dict[str, Any] | None = None, seed: int = 0,
                  started: float | None = None, confidence: float = 0.95) -> dict[str, Any]:
    """The results.json object for one task; every CI at `confidence`."""
    overall, breakdown = aggregate(samples, seed, confidence)
    task_results: dict[str, Any] = {"alias": task}
    for m, s in overall.items():
        task_results[f"{m},{FILTER}"] = s["value"]
        task_results[f"{m}_stderr,{FILTER}"] = s["stderr"]
        task_results[f"{m}_ci_low,{FILTER}"] = s["ci_low"]
        task_results[f"{m}_ci_high,{FILTER}"] = s["ci_high"]
    n = len(samples)
    end = time.time()
    meditune: dict[str, Any] = {
        "results_version": RESULTS_VERSION,
        "n": n,
        "protocol": protocol,
        "metrics": overall,
        "ci": {"method": "percentile bootstrap", "confidence": confidence, "resamples": DEFAULT_RESAMPLES, "seed": seed},
        "breakdown": breakdown,
        "samples": "samples.jsonl",
        **(extra or {}),
    }
    return {
        "results": {task: task_results},
        "group_subtasks": {task: []},
        "configs": {task: task_config},
        "versions": {task: task_config.get("metadata", {}).get("version", 1.0)},
        "n-shot": {task: num_fewshot},
        "higher_is_better": {task: {m: True for m in overall}},
        "n-samples": {task: {"original": n_original if n_original is not None else n, "effective": n}},
        "config": run_config,
        "task_hashes": {task: hash_obj([(s.get("id"), s.get("prompt")) for s in samples])},
        "date": started or end,
        "start_time": started,
        "end_time": end,
        "total_evaluation_time_seconds": str(end - started) if started else None,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "meditune": meditune,
    }


# what a strategy's summary puts under meditune.strategy in results.json (beside n, protocol, metrics and CIs)
STRATEGY_SECTION = ("protocol", "cost", "parse", "votes", "bank")


def strategy_row_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The per-item metrics of a strategy's row: acc (its vote is right) and parse_failure (the share of its
    generations without a valid answer)."""
    return {"acc": float(row["correct"]),
            "parse_failure": row["failed"] / row["generations"] if row["generations"] else 0.0}


def strategy_summary(rows: Sequence[dict[str, Any]], *, strategy: str, model: str, protocol: dict[str, Any],
                     bank: dict[str, Any] | None, setup_wall_s: float, seed: int = 0,
                     confidence: float = 0.95) -> dict[str, Any]:
    """A strategy's summary (StrategyResult.metrics): accuracy with CI, protocol, cost, parse failures, votes
    and the CoT bank's summary."""
    n = len(rows)
    acc = metric_summary([float(r["correct"]) for r in rows], seed, confidence=confidence)
    gens = sum(r["generations"] for r in rows)
    failed = sum(r["failed"] for r in rows)
    fail = metric_summary([1.0] * failed + [0.0] * (gens - failed), binary=True, confidence=confidence)
    ctoks = sum(r["completion_tokens"] for r in rows)
    ptoks = sum(r["prompt_tokens"] for r in rows)
    saved = sum(r.get("cached_tokens", 0) for r in rows)  # rows of shards written before prefix caching lack it
    answer_wall = sum(r["wall_s"] for r in rows)
    return {
        "strategy": strategy, "model": model, "n": n,
        "accuracy": acc["value"], "ci_low": acc["ci_low"], "ci_high": acc["ci_high"],
        "ci": {"method": "percentile bootstrap over items", "confidence": confidence,
               "resamples": DEFAULT_RESAMPLES},
        "protocol": protocol,
        "cost": {"completion_tokens": ctoks, "prompt_tokens": ptoks, "prefill_tokens": ptoks - saved,
                 "prefill_tokens_saved": saved, "generations": gens, "completion_tokens_per_item": ctoks / n if n else 0.0,
                 "answer_wall_s": round(answer_wall, 2), "setup_wall_s": round(setup_wall_s, 2),
                 "wall_s": round(answer_wall + setup_wall_s, 2)},
        "parse": {"generations": gens, "failed": failed, "failure_rate": failed / gens if gens else 0.0,
                  "failure_rate_ci": [fail["ci_low"], fail["ci_high"]], "retries": sum(r["retries"] for r in rows),
                  "unanswered_items": sum(r["pred"] is None for r in rows)},
        "votes": {"ties": sum(bool(r["tie"]) for r in rows),
                  "mean_agreement": sum(r["agreement"] for r in rows) / n if n else 0.0},
        "bank": bank,
    }


def strategy_results(task: str, rows: Sequence[dict[str, Any]], summary: dict[str, Any], *,
                     run_config: dict[str, Any], seed: int = 0,
                     started: float | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(results.json, samples) of a strategy run outside the engine (run_strategy): the layout of every MCQA
    results.json (build_results: per-item acc and parse_failure with CIs, the summary's sections under
    meditune.strategy as the engine writes them), plus the summary's own keys at the top level (accuracy,
    ci_low, ci_high, cost, parse, ...), where run_strategy's readers have always found them."""
    samples = [{**r, "metrics": strategy_row_metrics(r)} for r in rows]
    metric_list = [{"metric": m, "aggregation": "mean", "higher_is_better": m == "acc"}
                   for m in ("acc", "parse_failure")]
    task_config = {"task": task, "output_type": "generate_until", "metric_list": metric_list,
                   "metadata": {"version": 1.0}}
    results = build_results(task, samples, task_config=task_config, run_config=run_config,
                            protocol=summary["protocol"], extra={"strategy": {k: summary[k] for k in STRATEGY_SECTION}},
                            seed=seed, started=started, confidence=summary["ci"]["confidence"])
    return {**results, **summary}, samples


def write_outputs(out_dir: str | Path, results: dict[str, Any], samples: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Write samples.jsonl then results.json (atomically; under several ranks rank 0 writes, every rank holding
    the same merged samples); returns {"results": ..., "samples": ...}."""
    from meditune.distributed import current

    out = Path(out_dir)
    if current().is_main:
        write_jsonl(out / "samples.jsonl", samples)
        write_json(out / "results.json", results)
    return {"results": str(out / "results.json"), "samples": str(out / "samples.jsonl")}


def main_task(results: dict[str, Any], path: object = None) -> str:
    """The (single) task name of a results.json."""
    tasks = list(results.get("results", {}))
    if not tasks:
        raise InputError("no 'results' entries (not a results.json?)", file=path, field="results")
    return tasks[0]


def load_samples(results_path: str | Path) -> list[dict[str, Any]]:
    """The per-sample records of a results.json (samples.jsonl beside it)."""
    results_path = Path(results_path)
    res = read_json(results_path)
    name = (res.get("meditune") or {}).get("samples", "samples.jsonl")
    path = results_path.parent / str(name)
    if not is_inside(path, results_path.parent):
        raise InputError(f"{name!r} is not a file beside results.json", file=results_path, field="meditune.samples")
    samples = []
    for line, obj in iter_jsonl(path):
        if not isinstance(obj, dict) or "id" not in obj or not isinstance(obj.get("metrics"), dict):
            raise InputError("a sample needs 'id' and a 'metrics' object", file=path, line=line)
        samples.append(obj)
    return samples


def paired_metric_diffs(samples_a: Sequence[dict[str, Any]], samples_b: Sequence[dict[str, Any]],
                        metrics: Sequence[str] | None = None, *, seed: int = 0) -> dict[str, dict[str, Any]]:
    """B minus A per metric, over the items that have the metric in both runs (a safety run's harmful and benign
    items carry different metrics): means, the paired-bootstrap difference, its 95% CI and p-value, and n."""
    ia = {str(s.get("id", s.get("doc_id"))): s.get("metrics") or {} for s in samples_a}
    ib = {str(s.get("id", s.get("doc_id"))): s.get("metrics") or {} for s in samples_b}
    common = [i for i in ia if i in ib]
    names = list(metrics) if metrics is not None else list(dict.fromkeys(m for i in common for m in ia[i]))
    rows = {}
    for m in names:
        pairs = [(ia[i][m], ib[i][m]) for i in common if _is_num(ia[i].get(m)) and _is_num(ib[i].get(m))]
        if not pairs:
            continue
        a, b = [float(x) for x, _ in pairs], [float(y) for _, y in pairs]
        rows[m] = {"a": sum(a) / len(a), "b": sum(b) / len(b), **paired_bootstrap(a, b, seed=seed)}
    return rows


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def compare(a_path: str | Path, b_path: str | Path, metric: str | None = None, *, seed: int = 0) -> dict[str, Any]:
    """B minus A on the items both evaluated: per metric the paired-bootstrap difference, CI and p-value."""
    sa, sb = load_samples(a_path), load_samples(b_path)
    ia, ib = {s["id"] for s in sa}, {s["id"] for s in sb}
    common = ia & ib
    if not common:
        raise InputError(f"no item ids in common between {a_path} and {b_path}", file=b_path)
    rows = paired_metric_diffs(sa, sb, seed=seed)
    if metric:
        if metric not in rows:
            raise InputError(f"metric {metric!r} not in both runs; shared metrics: {list(rows)}", file=b_path,
                             field="metrics")
        rows = {metric: rows[metric]}
    return {"a": str(a_path), "b": str(b_path), "n_common": len(common), "only_a": len(ia - common),
            "only_b": len(ib - common), "metrics": rows,
            "method": "paired percentile bootstrap over the common items that have the metric, 95% CI, "
                      "diff = b - a"}
