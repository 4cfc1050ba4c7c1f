"""Samples -> lm-eval-compatible results.json (+ CIs, per-subject breakdown), and paired comparison of two runs.

A sample is a dict with at least: doc_id, id, subject, gold, pred, metrics ({name: per-item value}).
results.json keeps lm-eval's top-level layout (results / configs / versions / n-shot / higher_is_better /
n-samples / config / task_hashes / date) with lm-eval's "metric,filter" keys, and adds for every metric
"<metric>_ci_low,none" / "<metric>_ci_high,none" plus a `meditune` section: n, protocol, CIs, per-subject
breakdown, unparseable and truncation counts, and the path of samples.jsonl.
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


def aggregate(samples: Sequence[dict[str, Any]], seed: int = 0) -> tuple[dict[str, dict], dict[str, dict]]:
    """(overall {metric: summary}, per-subject {subject: {metric: summary}}) over the samples' metrics."""
    names: list[str] = []
    for s in samples:
        for k in s.get("metrics", {}):
            if k not in names:
                names.append(k)
    overall = {m: metric_summary([float(s["metrics"][m]) for s in samples if m in s["metrics"]], seed)
               for m in names}
    by_subject: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_subject[str(s.get("subject") or "all")].append(s)
    breakdown = {}
    if len(by_subject) > 1:
        for subj in sorted(by_subject):
            group = by_subject[subj]
            breakdown[subj] = {m: metric_summary([float(s["metrics"][m]) for s in group if m in s["metrics"]],
                                                 seed) for m in names}
    return overall, breakdown


def build_results(task: str, samples: Sequence[dict[str, Any]], *, task_config: dict[str, Any],
                  run_config: dict[str, Any], protocol: dict[str, Any], n_original: int | None = None,
                  num_fewshot: int = 0, extra: dict[str, Any] | None = None, seed: int = 0,
                  started: float | None = None) -> dict[str, Any]:
    """The results.json object for one task."""
    overall, breakdown = aggregate(samples, seed)
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
        "ci": {"method": "percentile bootstrap", "confidence": 0.95, "resamples": DEFAULT_RESAMPLES, "seed": seed},
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
