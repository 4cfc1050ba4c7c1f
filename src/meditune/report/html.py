"""Render report.html: one self-contained file (inline CSS and SVG, no scripts, no external resources)."""

from __future__ import annotations

import html
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from meditune.cost import total_cost
from meditune.io import iter_jsonl
from meditune.report import charts
from meditune.report.collect import StageInfo, load_json_output, paired_diffs, read_curves
from meditune.report.curves import curve_charts

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#111827;background:#f9fafb}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:32px 0 8px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px;margin:8px 0}
th,td{border:1px solid #e5e7eb;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f3f4f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#6b7280;font-size:12px}.verdict{padding:8px 12px;border-radius:6px;margin:6px 0;background:#fff;
border-left:4px solid #6b7280}.up{border-left-color:#16a34a}.down{border-left-color:#dc2626}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{background:#fff;border:1px solid #e5e7eb;border-radius:6px}
details{background:#fff;border:1px solid #e5e7eb;border-radius:6px;margin:6px 0;padding:6px 10px}
summary{cursor:pointer;font-weight:600}pre{white-space:pre-wrap;font-size:12px;background:#f3f4f6;padding:8px;
border-radius:4px;max-height:420px;overflow:auto}.pair{display:grid;grid-template-columns:1fr 1fr;gap:10px}
.ok{color:#16a34a}.bad{color:#dc2626}.tag{font-size:11px;background:#e5e7eb;border-radius:4px;padding:1px 5px}
"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _seconds(d: Any) -> str:
    if not isinstance(d, (int, float)):
        return "–"
    return f"{d:.0f} s" if d < 120 else f"{d / 60:.1f} min"


def _mib(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return "–"
    return f"{v:.0f} MiB" if v < 1024 else f"{v / 1024:.2f} GiB"


def _count(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) and v else "–"


# "What ran" cost columns: (header, manifest cost key, formatter)
COST_COLUMNS = [("time", "wall_s", _seconds), ("CPU", "cpu_s", _seconds), ("peak RSS", "peak_rss_mb", _mib),
                ("peak GPU", "peak_gpu_mb", _mib), ("tokens generated", "tokens_generated", _count),
                ("tokens scored", "tokens_scored", _count), ("tokens trained", "tokens_trained", _count)]


def stage_cost(m: dict[str, Any]) -> dict[str, Any]:
    """A manifest's cost (meditune.cost); manifests written before costs were recorded have only a duration."""
    cost = m.get("cost")
    if isinstance(cost, dict) and cost:
        return cost
    return {"wall_s": m["duration_s"]} if isinstance(m.get("duration_s"), (int, float)) else {}


def section_stages(stages: list[StageInfo]) -> str:
    costs = [stage_cost(s.manifest) for s in stages]
    cols = [c for c in COST_COLUMNS if c[1] != "peak_gpu_mb" or any(c[1] in cost for cost in costs)]
    rows = []
    for s, cost in zip(stages, costs, strict=True):
        cfg = {k: v for k, v in s.manifest.get("config", {}).items() if k not in ("name", "type")}
        outs = ", ".join(esc(k) for k in s.outputs)
        inputs = s.manifest.get("inputs", {})
        cells = "".join(f"<td class='num'>{f(cost.get(key))}</td>" for _, key, f in cols)
        rows.append(
            f"<tr><td>{esc(s.name)}</td><td><span class='tag'>{esc(s.type)}</span></td>"
            f"<td>{esc(s.manifest.get('status'))}</td>{cells}"
            f"<td><details><summary>settings</summary><pre>{esc(json.dumps(cfg, indent=1, ensure_ascii=False))}"
            f"</pre>{'<p class=muted>inputs: ' + esc(', '.join(inputs)) + '</p>' if inputs else ''}</details></td>"
            f"<td>{outs}</td></tr>")
    total = total_cost(costs)
    cells = "".join(f"<td class='num'>{f(total.get(key))}</td>" for _, key, f in cols)
    rows.append(f"<tr><th colspan='3'>total (peaks: the largest stage)</th>{cells}<td></td><td></td></tr>")
    method = {c.get("rss_method") for c in costs} - {None}
    note = ("<p class='muted'>time = wall clock, CPU = user + system time of the process; peak RSS = the stage's "
            "own peak" + (" (process peak so far on this platform)" if "process-peak" in method else "") +
            "; tokens as counted by the generation backends, scorers and trainers (meditune.cost).</p>")
    head = "".join(f"<th>{esc(h)}</th>" for h, _, _ in cols)
    return ("<h2>What ran</h2>" + note + "<table><tr><th>stage</th><th>type</th><th>status</th>" + head +
            "<th>settings</th><th>outputs</th></tr>" + "".join(rows) + "</table>")


def section_metrics(stages: list[StageInfo]) -> str:
    rows = []
    for s in stages:
        for m in s.metrics:
            ci = f"[{fmt(m.ci_low)}, {fmt(m.ci_high)}]" if m.ci_low is not None else "–"
            rows.append(f"<tr><td>{esc(m.stage)}</td><td>{esc(m.task)}</td><td>{esc(m.metric)}</td>"
                        f"<td class='num'>{fmt(m.value)}</td><td class='num'>{ci}</td><td class='num'>"
                        f"{m.n if m.n is not None else '–'}</td><td class='muted'>{esc(m.protocol)}</td></tr>")
    if not rows:
        return ""
    return ("<h2>Metrics</h2><p class='muted'>95% confidence intervals (bootstrap unless noted).</p><table><tr>"
            "<th>stage</th><th>task</th><th>metric</th><th>value</th><th>95% CI</th><th>n</th><th>protocol</th>"
            "</tr>" + "".join(rows) + "</table>")


def verdict(d: dict[str, Any]) -> tuple[str, str]:
    """An honest sentence about a paired difference (an increase is an improvement only where higher is better)."""
    lo, hi = d["ci_low"], d["ci_high"]
    base = (f"{d['metric']}: {fmt(d['before'])} → {fmt(d['after'])}, difference {d['diff']:+.3f} "
            f"(95% CI {lo:+.3f} to {hi:+.3f}, paired bootstrap p={d['p_value']:.3f}, n={d['n']})")
    if lo <= 0 <= hi:
        return base + ": the interval includes 0, so no detectable change on this data.", ""
    better = (lo > 0) == d.get("higher_is_better", True)
    word = "rise" if lo > 0 else "drop"
    return (base + f": a detectable {word}, an improvement.", "up") if better else \
        (base + f": a detectable {word}, a decline.", "down")


def comparisons(stages: list[StageInfo], pairs: list[tuple[str, str]] | None) -> list[tuple[StageInfo, StageInfo]]:
    """Explicit (before, after) pairs, else consecutive evaluation stages of the same type and data."""
    by_name = {s.name: s for s in stages}
    if pairs:
        return [(by_name[a], by_name[b]) for a, b in pairs if a in by_name and b in by_name]
    evals = [s for s in stages if s.metrics and s.samples]
    out = []
    for i, a in enumerate(evals):
        for b in evals[i + 1:]:
            same_data = a.manifest.get("config", {}).get("data") == b.manifest.get("config", {}).get("data")
            if a.type == b.type and same_data:
                out.append((a, b))
                break
    return out


def section_headline(stages: list[StageInfo], headline: list[dict[str, Any]]) -> str:
    """The lead story: the metrics the regime is about, before and after, with paired CIs, and what it cost."""
    by_name = {s.name: s for s in stages}
    rows, notes = [], []
    for h in headline:
        a, b = by_name.get(h["before"]), by_name.get(h["after"])
        d = next((d for d in paired_diffs(a, b) if d["metric"] == h["metric"]), None) if a and b else None
        label = h.get("label") or h["metric"]
        if d is None:
            rows.append(f"<tr><td>{esc(label)}</td><td colspan=5 class='muted'>not measured in this run "
                        f"({esc(h['before'])} → {esc(h['after'])}, {esc(h['metric'])})</td></tr>")
            continue
        text, cls = verdict(d)
        rows.append(f"<tr><td>{esc(label)}</td><td class='num'>{fmt(d['before'])}</td><td class='num'>"
                    f"{fmt(d['after'])}</td><td class='num'>{d['diff']:+.3f} [{d['ci_low']:+.3f}, "
                    f"{d['ci_high']:+.3f}]</td><td class='num'>{d['n']}</td><td class='verdict {cls}'>"
                    f"{esc(text.rsplit(': ', 1)[-1])}</td></tr>")
    if not rows:
        return ""
    ran = [s for s in stages if s.manifest.get("duration_s")]
    total = sum(s.manifest["duration_s"] for s in ran)
    if ran:
        slowest = max(ran, key=lambda s: s.manifest["duration_s"])
        notes.append(f"Wall time of the stages: {total / 60:.1f} min in all; the longest, {esc(slowest.name)} "
                     f"({esc(slowest.type)}), took {slowest.manifest['duration_s'] / 60:.1f} min.")
    return ("<h2>What changed</h2><table><tr><th>what</th><th>before</th><th>after</th><th>change [95% CI]</th>"
            "<th>n</th><th>verdict</th></tr>" + "".join(rows) + "</table><p class='muted'>Paired bootstrap over "
            "the same held-out items before and after; a change counts only when its interval excludes 0. "
            + " ".join(notes) + "</p>")


def section_before_after(stages: list[StageInfo], pairs: list[tuple[str, str]] | None) -> str:
    parts = []
    for a, b in comparisons(stages, pairs):
        diffs = paired_diffs(a, b)
        if not diffs:
            continue
        parts.append(f"<h3>{esc(a.name)} → {esc(b.name)}</h3>")
        parts.append("<table><tr><th>metric</th><th>before</th><th>after</th><th>difference</th><th>95% CI</th>"
                     "<th>p</th><th>n</th></tr>" + "".join(
                         f"<tr><td>{esc(d['metric'])}</td><td class='num'>{fmt(d['before'])}</td><td class='num'>"
                         f"{fmt(d['after'])}</td><td class='num'>{d['diff']:+.3f}</td><td class='num'>"
                         f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]</td><td class='num'>{d['p_value']:.3f}</td>"
                         f"<td class='num'>{d['n']}</td></tr>" for d in diffs) + "</table>")
        for d in diffs:
            text, cls = verdict(d)
            parts.append(f"<div class='verdict {cls}'>{esc(text)}</div>")
    return ("<h2>Before / after</h2>" + "".join(parts)) if parts else ""


def _breakdown_blocks(med: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(title, {metric: {group: value-dict}}) blocks; MCQA's `breakdown` is {subject: {metric: ...}}."""
    blocks = [(title, med[key]) for key, title in (("by_subject", "by subject"), ("by_category", "by category"),
                                                   ("by_group", "by group"), ("by_dimension", "by dimension"))
              if isinstance(med.get(key), dict)]
    bd = med.get("breakdown")
    if isinstance(bd, dict) and bd:
        flipped: dict[str, dict[str, Any]] = {}
        for group, metrics in bd.items():
            for metric, v in (metrics or {}).items():
                flipped.setdefault(metric, {})[group] = v
        blocks.append(("by subject", flipped))
    return blocks


def _breakdown_charts(s: StageInfo) -> list[str]:
    """Accuracy by subject / rate by category from results' meditune breakdowns (first metric of each)."""
    out = []
    med = (s.results or {}).get("meditune", {}) if isinstance((s.results or {}).get("meditune"), dict) else {}
    for title, block in _breakdown_blocks(med):
        for metric, groups in list(block.items())[:2]:
            if not isinstance(groups, dict):
                continue
            bars, errs = [], []
            for g, v in sorted(groups.items()):
                val = v.get("value") if isinstance(v, dict) else v
                if isinstance(val, (int, float)):
                    bars.append((str(g), float(val)))
                    errs.append((v.get("ci_low", val), v.get("ci_high", val)) if isinstance(v, dict) else (val, val))
            if bars:
                out.append(charts.bar_chart(f"{s.name}: {metric} {title}", bars, errors=errs, y_label=metric))
    return out


def _binned(hist: Any) -> list[tuple[str, float]] | None:
    """Bars of a {"edges": [...], "counts": [...]} histogram."""
    if not isinstance(hist, dict) or not isinstance(hist.get("counts"), list):
        return None
    edges = hist.get("edges") or list(range(len(hist["counts"]) + 1))
    return [(f"{edges[i]:.2g}", float(c)) for i, c in enumerate(hist["counts"])]


def _datacard_charts(stage: str, card: dict[str, Any]) -> list[str]:
    """Score histograms per generator and the pair-margin histogram of a preference datacard."""
    out = []
    groups = {g.get("label", f"gen{i}"): bars for i, g in enumerate(card.get("generators") or [])
              if isinstance(g, dict) and (bars := _binned(g.get("histogram")))}
    if groups:
        out.append(charts.bar_chart(f"{stage}: answer scores per generator", [], groups=groups,
                                    y_label="answers", x_label="score (bin start)"))
    margins = _binned(card.get("margin_histogram"))
    if margins:
        out.append(charts.bar_chart(f"{stage}: chosen - rejected score margin", margins, y_label="pairs",
                                    x_label="margin (bin start)"))
    return out


def _calibration_charts(s: StageInfo) -> list[str]:
    """A reliability diagram per confidence source of an MCQA result (meditune.calibration)."""
    med = (s.results or {}).get("meditune")
    cal = med.get("calibration") if isinstance(med, dict) else None
    if not isinstance(cal, dict):
        return []
    out = []
    for source, res in cal.items():
        if isinstance(res, dict) and isinstance(res.get("bins"), list):
            e = (res.get("metrics") or {}).get("ece") or {}
            sub = f"ECE {e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}], n={res.get('n')}" if e else ""
            out.append(charts.reliability_diagram(f"{s.name}: reliability ({source})", res["bins"], subtitle=sub))
    return out


def section_plots(stages: list[StageInfo]) -> str:
    svgs = []
    for s in stages:
        svgs.extend(curve_charts(s.name, read_curves(s)))
        card = load_json_output(s, "datacard")
        if isinstance(card, dict):
            svgs.extend(_datacard_charts(s.name, card))
        svgs.extend(_breakdown_charts(s))
        svgs.extend(_calibration_charts(s))
    svgs = [x for x in svgs if x]
    return ("<h2>Plots</h2><div class='charts'>" + "".join(svgs) + "</div>") if svgs else ""


def section_pairs(stages: list[StageInfo], n: int) -> str:
    parts = []
    for s in stages:
        path = s.outputs.get("dataset") if s.type == "prefs" else None
        if not path or not Path(path).is_file():
            continue
        evidence = {}
        spath = s.outputs.get("scores")
        if spath and Path(spath).is_file() and spath.endswith(".jsonl"):
            for _, row in iter_jsonl(spath, tolerate_torn_tail=True):
                evidence[str(row.get("answer_id"))] = row
        items = []
        for _, pref in iter_jsonl(path):
            items.append(pref)
            if len(items) >= n:
                break
        parts.append(f"<h3>{esc(s.name)}: {len(items)} sample pairs</h3>")
        for p in items:
            prompt = " ".join(m.get("content", "") for m in p.get("prompt", []) if m.get("role") == "user")
            prov = p.get("provenance", {})
            sides = []
            for side in ("chosen", "rejected"):
                ev = evidence.get(str(prov.get(f"{side}_answer")))
                facts = ""
                if ev and isinstance(ev.get("evidence"), dict):
                    fs = ev["evidence"].get("facts") or []
                    facts = "<ul>" + "".join(
                        f"<li class='{'ok' if f.get('verdict') == 'true' else 'bad'}'>{esc(f.get('fact'))} "
                        f"<span class='tag'>{esc(f.get('verdict'))}</span></li>" for f in fs if isinstance(f, dict)
                    ) + "</ul>"
                score = p.get(f"{side}_score")
                gen = prov.get(f"{side}_generator")
                sides.append(f"<div><b>{side}</b> <span class='tag'>score {fmt(score, 2) if score is not None else '–'}"
                             f"</span>{f' <span class=tag>{esc(gen)}</span>' if gen else ''}"
                             f"<pre>{esc(p.get(side))}</pre>{facts}</div>")
            parts.append(f"<details><summary>{esc(prompt[:160])}</summary><div class='pair'>{''.join(sides)}</div>"
                         "</details>")
    return ("<h2>Preference pairs</h2>" + "".join(parts)) if parts else ""


def section_cards(stages: list[StageInfo]) -> str:
    parts = []
    for s in stages:
        for key in ("datacard_md", "model_card"):
            path = s.outputs.get(key)
            if path and Path(path).is_file():
                parts.append(f"<details><summary>{esc(s.name)}: {esc(key.replace('_', ' '))}</summary><pre>"
                             f"{esc(Path(path).read_text(encoding='utf-8'))}</pre></details>")
        model_dir = s.outputs.get("model")
        if model_dir and (Path(model_dir) / "README.md").is_file() and "model_card" not in s.outputs:
            parts.append(f"<details><summary>{esc(s.name)}: model card</summary><pre>"
                         f"{esc((Path(model_dir) / 'README.md').read_text(encoding='utf-8'))}</pre></details>")
        md = s.outputs.get("datacard")
        if md and md.endswith(".json") and "datacard_md" not in s.outputs:
            mdp = Path(md).with_suffix(".md")
            if mdp.is_file():
                parts.append(f"<details><summary>{esc(s.name)}: datacard</summary><pre>"
                             f"{esc(mdp.read_text(encoding='utf-8'))}</pre></details>")
    return ("<h2>Data and model cards</h2>" + "".join(parts)) if parts else ""


def render(title: str, recipe: dict[str, Any], stages: list[StageInfo], *,
           compare: list[tuple[str, str]] | None = None, pair_samples: int = 20,
           headline: list[dict[str, Any]] | None = None) -> str:
    """The whole report page."""
    started = min((s.manifest.get("started") or "" for s in stages), default="")
    total = sum(s.manifest.get("duration_s") or 0 for s in stages)
    versions = next((s.manifest.get("versions") for s in stages if s.manifest.get("versions")), {})
    head = (f"<h1>{esc(title)}</h1><p class='muted'>{esc(recipe.get('description', ''))}</p>"
            f"<table><tr><th>model</th><td>{esc(recipe.get('model', ''))}</td><th>seed</th>"
            f"<td>{esc(recipe.get('seed', ''))}</td></tr><tr><th>started</th><td>{esc(started)}</td>"
            f"<th>stage time (sum)</th><td>{total / 60:.1f} min</td></tr><tr><th>versions</th><td colspan=3>"
            f"{esc(', '.join(f'{k} {v}' for k, v in versions.items()))}</td></tr></table>")
    body = (head + section_headline(stages, headline or []) + section_before_after(stages, compare) + section_metrics(stages) + section_plots(stages)
            + section_stages(stages) + section_pairs(stages, pair_samples) + section_cards(stages))
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<meta name='generator' content='meditune {datetime.now().date()}'><style>{CSS}</style></head>"
            f"<body><main>{body}</main></body></html>")
