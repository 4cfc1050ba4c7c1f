"""Gather what a run directory holds: stage manifests, metrics with CIs, samples, curves, datacards, cards."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meditune.errors import InputError
from meditune.io import iter_jsonl, read_json
from meditune.report.curves import wanted

STAT_SUFFIXES = ("_stderr", "_ci_low", "_ci_high", "_n")


@dataclass
class MetricRow:
    stage: str
    task: str
    metric: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    protocol: str = ""


@dataclass
class StageInfo:
    name: str
    type: str
    dir: Path
    manifest: dict[str, Any]
    results: dict[str, Any] | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[MetricRow] = field(default_factory=list)

    @property
    def outputs(self) -> dict[str, str]:
        return self.manifest.get("outputs", {})


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def metric_rows(stage: str, results: dict[str, Any]) -> list[MetricRow]:
    """Metrics of an lm-eval-style results dict: `metric,filter` keys with `_ci_low/_ci_high/_stderr` companions."""
    rows = []
    n_samples = results.get("n-samples", {})
    med = results.get("meditune") if isinstance(results.get("meditune"), dict) else {}
    protocols = med.get("protocol", {})
    if isinstance(protocols, dict) and not all(isinstance(v, str) for v in protocols.values()):
        protocols = describe_protocol(protocols)  # one protocol for the whole result file
    for task, vals in (results.get("results") or {}).items():
        if not isinstance(vals, dict):
            continue
        n_task = n_samples.get(task, {}).get("effective") if isinstance(n_samples.get(task), dict) else None
        for key, v in vals.items():
            name, _, filt = key.partition(",")
            value = _num(v)
            if value is None or name.endswith(STAT_SUFFIXES) or name in ("alias", "n"):
                continue
            suffix = f",{filt}" if filt else ""
            lo, hi = _num(vals.get(f"{name}_ci_low{suffix}")), _num(vals.get(f"{name}_ci_high{suffix}"))
            if lo is None and (se := _num(vals.get(f"{name}_stderr{suffix}"))) is not None:
                lo, hi = value - 1.96 * se, value + 1.96 * se
            n = vals.get(f"{name}_n{suffix}") or vals.get("n") or n_task
            proto = protocols.get(task, "") if isinstance(protocols, dict) else str(protocols)
            if name.endswith("_per_token"):
                proto = f"{proto}; per-token normalisation" if proto else "per-token normalisation"
            rows.append(MetricRow(stage, task, name, value, lo, hi, int(n) if n else None, proto))
    return rows


def describe_protocol(p: dict[str, Any]) -> str:
    """A short human description of an evaluation protocol dict (mode, choices, shots, template, strategy)."""
    parts = []
    for key, fmt in (("strategy", "{}"), ("mode", "{}"), ("choices", "{} choices"), ("shots", "{}-shot"),
                     ("template", "template {}")):
        if p.get(key) not in (None, ""):
            parts.append(fmt.format(p[key]))
    if "chat_template" in p:
        parts.append("chat template" if p["chat_template"] else "no chat template")
    for key, val in p.items():  # other evaluations: short scalar settings
        if key not in ("strategy", "mode", "choices", "shots", "template", "chat_template") and \
                isinstance(val, (str, int, float, bool)) and len(str(val)) < 40:
            parts.append(f"{key} {val}")
    return ", ".join(parts)


def read_samples(path: str | Path, limit: int = 200_000) -> list[dict[str, Any]]:
    """Per-sample rows of an evaluation (JSONL)."""
    out = []
    for _, row in iter_jsonl(path, tolerate_torn_tail=True):
        out.append(row)
        if len(out) >= limit:
            break
    return out


def sample_metric(row: dict[str, Any], metric: str) -> float | None:
    """A per-item metric value from a sample row (`metrics` dict or a top-level key)."""
    m = row.get("metrics")
    if isinstance(m, dict) and metric in m:
        return _num(m[metric])
    return _num(row.get(metric))


def sample_key(row: dict[str, Any]) -> str:
    return str(row.get("id", row.get("doc_id")))


def paired_diffs(before: StageInfo, after: StageInfo) -> list[dict[str, Any]]:
    """For each metric both stages report per item: mean difference (after - before) with a paired bootstrap CI,
    and whether higher is better (from the after stage's results.json)."""
    from meditune.evaluation.results import paired_metric_diffs

    metrics = sorted({m.metric for m in before.metrics} & {m.metric for m in after.metrics})
    better = higher_is_better(after)
    return [{**row, "metric": metric, "before": row["a"], "after": row["b"], "higher_is_better": better.get(metric, True)}
            for metric, row in paired_metric_diffs(before.samples, after.samples, metrics).items()]


def higher_is_better(stage: StageInfo) -> dict[str, bool]:
    """metric -> whether a higher value is better, from a results.json's `higher_is_better` block."""
    hib = (stage.results or {}).get("higher_is_better") or {}
    out: dict[str, bool] = {}
    for per_task in hib.values():
        if isinstance(per_task, dict):
            out.update({k: bool(v) for k, v in per_task.items()})
    return out


def read_curves(stage: StageInfo) -> dict[str, list[tuple[float, float]]]:
    """Training curves from the stage's `curves` output (CSV with a step column), one series per numeric column."""
    path = stage.outputs.get("curves")
    if not path:
        cands = sorted(stage.dir.rglob("curves*.csv")) or sorted(stage.dir.rglob("*metrics*.csv"))
        path = str(cands[0]) if cands else None
    if not path or not Path(path).is_file():
        return {}
    series: dict[str, list[tuple[float, float]]] = {}
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            step = _num(_to_float(row.get("step")))
            if step is None:
                continue
            for k, v in row.items():
                val = _to_float(v)
                if k in ("step", "epoch") or val is None:
                    continue
                series.setdefault(k, []).append((step, val))
    return {k: v for k, v in series.items() if wanted(k)}


def _to_float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def load_stages(run_dir: Path, order: list[str] | None = None) -> list[StageInfo]:
    """Every stage directory with a manifest, in recipe order when given, else by start time.

    A finished stage whose manifest lists an output that is not on disk is an error (the report would
    otherwise silently leave out that stage's section)."""
    from meditune.pipeline import manifest_outputs

    infos = []
    for mpath in run_dir.glob("*/manifest.json"):
        m = read_json(mpath)
        m["outputs"] = manifest_outputs(m, run_dir)
        if m.get("status") == "done":
            for key, value in m["outputs"].items():
                if _looks_like_path(value) and not Path(value).exists():
                    raise InputError(f"output {key!r} of stage {m.get('stage', mpath.parent.name)!r} is missing: "
                                     f"{value} (moved or deleted? re-run the stage)", file=mpath)
        info = StageInfo(m.get("stage", mpath.parent.name), m.get("type", "?"), mpath.parent, m)
        res_path = info.outputs.get("results")
        if res_path and Path(res_path).is_file() and res_path.endswith(".json"):
            info.results = read_json(res_path)
            info.metrics = metric_rows(info.name, info.results)
        smp_path = info.outputs.get("samples")
        if smp_path and Path(smp_path).is_file():
            info.samples = read_samples(smp_path)
        infos.append(info)
    if order:
        rank = {n: i for i, n in enumerate(order)}
        infos.sort(key=lambda s: rank.get(s.name, len(rank)))
    else:
        infos.sort(key=lambda s: s.manifest.get("started") or "")
    return infos


def _looks_like_path(value: Any) -> bool:
    return isinstance(value, str) and ("/" in value or "\\" in value or Path(value).suffix != "")


def load_json_output(stage: StageInfo, key: str) -> Any:
    path = stage.outputs.get(key)
    if path and Path(path).is_file() and path.endswith(".json"):
        return json.loads(Path(path).read_text(encoding="utf-8"))
    return None
