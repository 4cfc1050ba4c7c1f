"""Small inline-SVG charts (no JavaScript, no external files), so report.html is one self-contained file."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"]
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 510, 280, 56, 16, 24, 64


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 0.5:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def _frame(title: str, body: list[str], ticks_y: list[float], y_of, x_label: str, y_label: str) -> str:
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" '
             f'height="{H}" role="img" aria-label="{_esc(title)}">',
             f'<text x="{W / 2}" y="15" text-anchor="middle" font-size="13" font-weight="600">{_esc(title)}</text>']
    for t in ticks_y:
        y = y_of(t)
        parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        parts.append(f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{_fmt(t)}</text>')
    parts.append(f'<line x1="{PAD_L}" x2="{PAD_L}" y1="{PAD_T}" y2="{H - PAD_B}" stroke="#374151"/>')
    parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{H - PAD_B}" y2="{H - PAD_B}" stroke="#374151"/>')
    parts.append(f'<text x="{W / 2}" y="{H - 6}" text-anchor="middle" font-size="11">{_esc(x_label)}</text>')
    parts.append(f'<text x="12" y="{H / 2}" text-anchor="middle" font-size="11" '
                 f'transform="rotate(-90 12 {H / 2})">{_esc(y_label)}</text>')
    parts.extend(body)
    parts.append("</svg>")
    return "".join(parts)


def line_chart(title: str, series: dict[str, Sequence[tuple[float, float]]], x_label: str = "step",
               y_label: str = "") -> str:
    """One or more (x, y) series as lines, with a legend."""
    pts = [p for s in series.values() for p in s if all(math.isfinite(v) for v in p)]
    if not pts:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    ticks = _nice_ticks(min(ys), max(ys))
    y0, y1 = ticks[0], ticks[-1] if ticks[-1] > ticks[0] else ticks[0] + 1

    def x_of(x: float) -> float:
        return PAD_L + (x - x0) / (x1 - x0) * (W - PAD_L - PAD_R)

    def y_of(y: float) -> float:
        return H - PAD_B - (y - y0) / (y1 - y0) * (H - PAD_T - PAD_B)

    body = []
    for i, (name, s) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        good = [p for p in s if all(math.isfinite(v) for v in p)]
        path = " ".join(f"{'M' if j == 0 else 'L'}{x_of(x):.1f},{y_of(y):.1f}" for j, (x, y) in enumerate(good))
        body.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="1.8"/>')
        if len(good) == 1:
            body.append(f'<circle cx="{x_of(good[0][0]):.1f}" cy="{y_of(good[0][1]):.1f}" r="3" fill="{color}"/>')
        body.append(f'<text x="{W - PAD_R - 4}" y="{PAD_T + 12 + 13 * i}" text-anchor="end" font-size="10" '
                    f'fill="{color}">{_esc(name)}</text>')
    for t in (x0, (x0 + x1) / 2, x1):
        body.append(f'<text x="{x_of(t):.1f}" y="{H - PAD_B + 14}" text-anchor="middle" font-size="10">'
                    f'{_fmt(t)}</text>')
    return _frame(title, body, ticks, y_of, x_label, y_label)


def bar_chart(title: str, bars: Sequence[tuple[str, float]], *, errors: Sequence[tuple[float, float]] | None = None,
              y_label: str = "", x_label: str = "", y_max: float | None = None,
              groups: dict[str, Sequence[tuple[str, float]]] | None = None) -> str:
    """Vertical bars (optionally grouped series, optionally with [low, high] error bars)."""
    series = groups or {"": bars}
    labels = list(dict.fromkeys(lbl for s in series.values() for lbl, _ in s))
    values = [v for s in series.values() for _, v in s if math.isfinite(v)]
    if not labels or not values:
        return ""
    hi = max(values + ([e[1] for e in errors if math.isfinite(e[1])] if errors else []))
    ticks = _nice_ticks(min(0.0, min(values)), y_max if y_max is not None else hi)
    y0, y1 = ticks[0], ticks[-1] if ticks[-1] > ticks[0] else ticks[0] + 1

    def y_of(y: float) -> float:
        return H - PAD_B - (y - y0) / (y1 - y0) * (H - PAD_T - PAD_B)

    slot = (W - PAD_L - PAD_R) / len(labels)
    bw = slot * 0.8 / len(series)
    body = []
    for si, (sname, s) in enumerate(series.items()):
        color = PALETTE[si % len(PALETTE)]
        lookup = dict(s)
        for li, lbl in enumerate(labels):
            if lbl not in lookup or not math.isfinite(lookup[lbl]):
                continue
            v = lookup[lbl]
            x = PAD_L + li * slot + slot * 0.1 + si * bw
            top, base = y_of(max(v, 0)), y_of(min(v, 0))
            body.append(f'<rect x="{x:.1f}" y="{top:.1f}" width="{bw:.1f}" height="{max(base - top, 0.5):.1f}" '
                        f'fill="{color}"><title>{_esc(sname)} {_esc(lbl)}: {_fmt(v)}</title></rect>')
            if errors and not groups and li < len(errors):
                lo_e, hi_e = errors[li]
                cx = x + bw / 2
                body.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y_of(lo_e):.1f}" y2="{y_of(hi_e):.1f}" '
                            'stroke="#111827" stroke-width="1.2"/>')
        if sname:
            body.append(f'<text x="{W - PAD_R - 4}" y="{PAD_T + 12 + 13 * si}" text-anchor="end" font-size="10" '
                        f'fill="{color}">{_esc(sname)}</text>')
    step = max(1, len(labels) // 24)
    crowded = len(labels) > 6  # long category names: slant them so they do not overlap
    for li, lbl in enumerate(labels):
        if li % step == 0:
            x = PAD_L + li * slot + slot / 2
            short = lbl if len(lbl) <= 12 else lbl[:11] + "…"
            y = H - PAD_B + 12
            anchor = f'text-anchor="end" transform="rotate(-30 {x:.1f} {y})"' if crowded else 'text-anchor="middle"'
            body.append(f'<text x="{x:.1f}" y="{y}" {anchor} font-size="9"><title>{_esc(lbl)}</title>'
                        f'{_esc(short)}</text>')
    return _frame(title, body, ticks, y_of, x_label, y_label)


def histogram(title: str, samples: dict[str, Sequence[float]], *, bins: int = 10, lo: float | None = None,
              hi: float | None = None, x_label: str = "score") -> str:
    """Histograms of one or more samples over shared bins, as grouped bars."""
    vals = [v for s in samples.values() for v in s if v is not None and math.isfinite(v)]
    if not vals:
        return ""
    lo = min(vals) if lo is None else lo
    hi = max(vals) if hi is None else hi
    if hi <= lo:
        hi = lo + 1
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    groups = {}
    for name, s in samples.items():
        counts = [0] * bins
        for v in s:
            if v is None or not math.isfinite(v):
                continue
            counts[min(bins - 1, max(0, int((v - lo) / (hi - lo) * bins)))] += 1
        groups[name] = [(f"{edges[i]:.2g}", float(c)) for i, c in enumerate(counts)]
    return bar_chart(title, [], groups=groups, y_label="count", x_label=x_label)


def reliability_diagram(title: str, bins: Sequence[dict], *, subtitle: str = "") -> str:
    """Accuracy per confidence bin (bars, with item counts) against the diagonal of perfect calibration."""
    if not bins or not any(b.get("n") for b in bins):
        return ""

    def x_of(x: float) -> float:
        return PAD_L + x * (W - PAD_L - PAD_R)

    def y_of(y: float) -> float:
        return H - PAD_B - y * (H - PAD_T - PAD_B)

    body = [f'<line x1="{x_of(0):.1f}" y1="{y_of(0):.1f}" x2="{x_of(1):.1f}" y2="{y_of(1):.1f}" stroke="#9ca3af" '
            'stroke-dasharray="4 3"/>']
    for b in bins:
        if not b.get("n"):
            continue
        x0, x1, acc, conf = b["low"], b["high"], b["accuracy"], b["confidence"]
        top = y_of(acc)
        body.append(f'<rect x="{x_of(x0) + 1:.1f}" y="{top:.1f}" width="{x_of(x1) - x_of(x0) - 2:.1f}" '
                    f'height="{max(y_of(0) - top, 0.5):.1f}" fill="{PALETTE[0]}" fill-opacity="0.75"><title>'
                    f'confidence {x0:.1f}-{x1:.1f}: accuracy {acc:.3f}, mean confidence {conf:.3f}, n={b["n"]}'
                    '</title></rect>')
        body.append(f'<circle cx="{x_of(conf):.1f}" cy="{y_of(conf):.1f}" r="2.5" fill="{PALETTE[1]}"/>')
        body.append(f'<text x="{x_of((x0 + x1) / 2):.1f}" y="{top - 3:.1f}" text-anchor="middle" font-size="8">'
                    f'{b["n"]}</text>')
    for t in (0.0, 0.5, 1.0):
        body.append(f'<text x="{x_of(t):.1f}" y="{H - PAD_B + 14}" text-anchor="middle" font-size="10">{t:g}</text>')
    if subtitle:
        body.append(f'<text x="{W - PAD_R - 4}" y="{PAD_T + 12}" text-anchor="end" font-size="10">'
                    f'{_esc(subtitle)}</text>')
    return _frame(title, body, [0.0, 0.25, 0.5, 0.75, 1.0], y_of, "confidence (bin; dot = mean confidence)",
                  "accuracy")
