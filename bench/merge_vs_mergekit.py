"""Merging: meditune vs mergekit on the same three models (the default model and two seeded variants).

For linear, SLERP, NuSLERP, task arithmetic, TIES, Model Breadcrumbs and Model Stock the output tensors must
equal mergekit's within 1e-5; each merge runs in a fresh subprocess that reports its wall time and peak RSS
(VmHWM), and ours must stay <= 1.3x the size of one model. TIES and breadcrumbs run twice: with
`tie_break: mergekit` (must equal mergekit) and with the default `tie_break: position` (streamed; only
entries tied at a trim threshold may differ).
DARE and DELLA are random, so their statistics are checked instead, for us and for mergekit side by side: the
drop rate per tensor (z-scores) and overall (99.9% Wilson interval around the expected rate), the rescale of
the kept deltas (one factor per tensor, equal to the L1 ratio of the observed mask, ~ its expected value),
for DELLA the keep rate by magnitude rank, and for the TIES variants the sign election (no output entry mixes
deltas of opposite signs; entry categories vs their expected counts).

Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/merge_vs_mergekit.py [--keep DIR] [--methods ...] [--threads N]
Needs mergekit (pip install 'meditune[bench]').
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOL = 1e-5
RSS_LIMIT = 1.3
Z_999 = 3.2905  # two-sided 99.9% normal quantile
TIES = {"base_model": "A", "models": [{"model": "B", "parameters": {"weight": 1.0, "density": 0.5}},
                                      {"model": "C", "parameters": {"weight": 0.7, "density": 0.3}}]}
CRUMBS = {"base_model": "A", "models": [{"model": "B", "parameters": {"weight": 1.0, "density": 0.5, "gamma": 0.05}},
                                        {"model": "C", "parameters": {"weight": 0.7, "density": 0.3}}]}
CRUMBS_TIES = {**CRUMBS, "parameters": {"rescale": True}}
# Model Stock with base B: the task vectors A - B and C - B are parallel where only B changed (t = 1), at
# ~45 degrees where both changed, and zero for A where only C changed (t = 0): all regimes of the ratio.
STOCK = {"base_model": "B", "models": [{"model": "A"}, {"model": "C"}]}
NUSLERP = {"base_model": "A", "models": [{"model": "B", "parameters": {"weight": 0.7}},
                                         {"model": "C", "parameters": {"weight": 0.3}}]}
# row label -> (method, spec, parameters given to meditune only). Every row must equal mergekit within TOL
# and stay within RSS_LIMIT, except the [mergekit] tie-breaks' RSS: they sort each tied tensor whole (a
# documented cost).
EXACT = {
    "linear": ("linear", {"models": [{"model": "A", "parameters": {"weight": 0.5}},
                                     {"model": "B", "parameters": {"weight": 0.3}},
                                     {"model": "C", "parameters": {"weight": 0.2}}]}, {}),
    "slerp": ("slerp", {"base_model": "A", "models": [{"model": "A"}, {"model": "B"}],
                        "parameters": {"t": [{"filter": "self_attn", "value": [0.0, 0.5, 0.3, 0.7, 1.0]},
                                             {"filter": "mlp", "value": [1.0, 0.5, 0.7, 0.3, 0.0]},
                                             {"value": 0.5}]}}, {}),
    "task_arithmetic": ("task_arithmetic", {"base_model": "A", "parameters": {"lambda": 0.9},
                                            "models": [{"model": "B", "parameters": {"weight": [0.2, 0.8]}},
                                                       {"model": "C", "parameters": {"weight": 0.6}}]}, {}),
    "ties[mergekit]": ("ties", TIES, {"tie_break": "mergekit"}),
    "ties[position]": ("ties", TIES, {}),  # the default tie-break
    "breadcrumbs[mergekit]": ("breadcrumbs", CRUMBS, {"tie_break": "mergekit"}),
    "breadcrumbs[position]": ("breadcrumbs", CRUMBS, {}),
    "breadcrumbs_ties[mergekit]": ("breadcrumbs_ties", CRUMBS_TIES, {"tie_break": "mergekit"}),
    "breadcrumbs_ties[position]": ("breadcrumbs_ties", CRUMBS_TIES, {}),
    "model_stock": ("model_stock", STOCK, {}),
    "model_stock[filter_wise]": ("model_stock", {**STOCK, "parameters": {"filter_wise": True}}, {}),
    "nuslerp": ("nuslerp", NUSLERP, {}),
    "nuslerp[rows]": ("nuslerp", {"models": [{"model": "B", "parameters": {"weight": 0.4}},
                                                      {"model": "C", "parameters": {"weight": 0.6}}],
                                           "parameters": {"nuslerp_flatten": False}}, {}),
    "nuslerp[row_wise]": ("nuslerp", {**NUSLERP, "parameters": {"nuslerp_flatten": False,
                                                                "nuslerp_row_wise": True}}, {}),
}
RANDOM = {
    "dare_linear": {"base_model": "A", "models": [{"model": "B", "parameters": {"weight": 1.0, "density": 0.3}}]},
    "dare_ties": {"base_model": "A", "models": [{"model": "B", "parameters": {"weight": 1.0, "density": 0.3}},
                                                {"model": "C", "parameters": {"weight": 1.0, "density": 0.5}}]},
    "della_linear": {"base_model": "A", "models": [
        {"model": "B", "parameters": {"weight": 1.0, "density": 0.4, "epsilon": 0.2}}]},
    "della": {"base_model": "A", "models": [  # normalize: true (della's default)
        {"model": "B", "parameters": {"weight": 1.0, "density": 0.3, "epsilon": 0.15}},
        {"model": "C", "parameters": {"weight": 1.0, "density": 0.5, "epsilon": 0.1}}]},
}
RANK_BINS = 5  # DELLA: keep rate by within-row magnitude rank, in this many bins


def make_variants(base: Path, root: Path) -> dict[str, Path]:
    """Two deterministic 'fine-tunes' of the base: seeded noise on a seeded subset of its tensors."""
    import torch
    from safetensors.torch import load_file, save_file

    sd = load_file(base / "model.safetensors")
    out = {"A": base}
    for label, seed in (("B", 1), ("C", 2)):
        g = torch.Generator().manual_seed(seed)
        d = root / label
        shutil.copytree(base, d, ignore=shutil.ignore_patterns("model.safetensors"), dirs_exist_ok=True)
        new = {}
        for name, t in sd.items():
            pick = torch.rand((), generator=g).item() < 0.7  # ~70% of tensors change
            new[name] = t + 0.02 * t.std() * torch.randn(t.shape, generator=g) if pick else t
        save_file(new, d / "model.safetensors", metadata={"format": "pt"})
        out[label] = d
    return out


def config_for(spec: dict, paths: dict[str, Path], method: str, extra: dict | None = None) -> dict:
    """Replace model labels by paths: the same dict is a mergekit and a meditune config (plus `extra`
    parameters that only meditune knows)."""
    sub = lambda m: str(paths[m])  # noqa: E731
    cfg = {"merge_method": method, "dtype": "float32",
           "models": [{**m, "model": sub(m["model"])} for m in spec["models"]]}
    if "base_model" in spec:
        cfg["base_model"] = sub(spec["base_model"])
    if "parameters" in spec or extra:
        cfg["parameters"] = {**spec.get("parameters", {}), **(extra or {})}
    return cfg


def child(tool: str, cfg_path: str, out: str) -> None:
    """Run one merge in this fresh process; print wall time and peak RSS as JSON."""
    import yaml

    cfg = yaml.safe_load(Path(cfg_path).read_text())
    if tool == "mergekit":
        from mergekit.config import MergeConfiguration
        from mergekit.merge import MergeOptions, run_merge

        base_rss = peak_rss_kb()
        t0 = time.perf_counter()
        run_merge(MergeConfiguration.model_validate(cfg), out,
                  MergeOptions(device="cpu", copy_tokenizer=True, quiet=True, random_seed=0))
    else:
        from meditune.merging.config import parse_merge_config
        from meditune.merging.merge import run_merge

        base_rss = peak_rss_kb()
        t0 = time.perf_counter()
        run_merge(parse_merge_config(cfg), out, seed=0)
    wall = time.perf_counter() - t0
    print(json.dumps({"wall_s": wall, "peak_rss_mb": peak_rss_kb() / 1024, "import_rss_mb": base_rss / 1024}))


def peak_rss_kb() -> int:
    """Peak RSS of this process's own memory (VmHWM).

    ru_maxrss would do on a fresh process, but Linux carries the parent's RSS at fork into a child's
    ru_maxrss across exec, so a big bench parent would inflate it; VmHWM belongs to the exec'd image only.
    """
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_child(tool: str, cfg: dict, out: Path, work: Path) -> dict:
    import yaml

    cfg_path = work / f"{out.name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # Both tools run with the default allocator: GLIBC_TUNABLES=...mmap_max=0:trim_threshold=huge (used to
    # speed up training steps) never returns freed memory, so RSS would measure heap fragmentation.
    env.pop("GLIBC_TUNABLES", None)
    proc = subprocess.run([sys.executable, __file__, "--child", tool, str(cfg_path), str(out)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{tool} failed on {cfg_path}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tensors(d: Path):
    """name -> (file, ) for every tensor of an output dir."""
    from safetensors import safe_open

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(f, "pt") as h:
            out.update({k: f for k in h.keys()})
    return out


def read(f: Path, name: str):
    from safetensors import safe_open

    with safe_open(f, "pt") as h:
        return h.get_tensor(name)


def max_diff(ours: Path, theirs: Path) -> tuple[float, int, list[str]]:
    a, b = tensors(ours), tensors(theirs)
    only = sorted(set(a) ^ set(b))
    worst = 0.0
    for name in sorted(set(a) & set(b)):
        x, y = read(a[name], name).double(), read(b[name], name).double()
        worst = max(worst, float((x - y).abs().max()))
    return worst, len(set(a) & set(b)), only


def trim_boundaries(mags, method: str, params: dict) -> list:
    """The magnitudes where a trim's kept set ends: entries tied there are kept by position (ours) or by
    mergekit's unstable sort. TIES keeps the top k; breadcrumbs a band of ascending ranks."""
    import torch

    density = params.get("density", 1.0)
    if density >= 1:
        return []
    ranked = torch.sort(mags.reshape(-1)).values  # ascending
    numel = ranked.numel()
    if method == "ties":
        return [ranked[numel - max(1, int(density * numel))]]
    target = int(density * numel)
    n_bot = max(0, numel - target - int(params.get("gamma", 0.01) * numel))
    return [ranked[r] for r in (n_bot, n_bot + target - 1) if 0 <= r < numel]


def tie_diffs(ours: Path, theirs: Path, paths: dict[str, Path], method: str,
              spec: dict) -> tuple[int, int, float]:
    """(elements differing by > TOL, how many of them sit at a magnitude-trim tie, max diff elsewhere).

    mergekit keeps entries by a sort's order, and its unstable sort picks an arbitrary subset of the
    entries that tie at a trim boundary; we keep the first ones by position. Only those entries may differ.
    """
    import torch

    a, b, base = tensors(ours), tensors(theirs), tensors(paths["A"])
    srcs = [(tensors(paths[m["model"]]), m["parameters"]) for m in spec["models"]]
    n_diff = n_tie = 0
    worst_other = 0.0
    for name in a:
        diff = (read(a[name], name).double() - read(b[name], name).double()).abs()
        bad = diff > TOL
        if not bad.any():
            continue
        at_tie = torch.zeros_like(bad)
        x0 = read(base[name], name)
        for src, params in srcs:
            mags = (read(src[name], name) - x0).abs()
            for value in trim_boundaries(mags, method, params):
                at_tie |= mags == value
        n_diff += int(bad.sum())
        n_tie += int((bad & at_tie).sum())
        if (bad & ~at_tie).any():
            worst_other = max(worst_other, float(diff[bad & ~at_tie].max()))
    return n_diff, n_tie, worst_other


def wilson(k: int, n: int, z: float = Z_999) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n."""
    import math

    phat, d = k / n, 1 + z * z / n
    c = (phat + z * z / (2 * n)) / d
    h = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def keep_probabilities(delta, density: float, epsilon: float | None):
    """Each entry's keep probability (float64), and its within-row magnitude rank in [0, 1] for DELLA.

    DARE: density. DELLA: density - epsilon + 2 epsilon * rank, ranks along dim 1 (a 1-D tensor is one row),
    written out here from the paper's MagPrune and mergekit's della_magprune, independently of our code.
    """
    import torch

    if epsilon is None:
        return torch.full(delta.shape, density, dtype=torch.float64), None
    x = delta.abs() if delta.dim() >= 2 else delta.abs().unsqueeze(0)
    rank = (x.argsort(dim=1).argsort(dim=1).double() / max(1, x.shape[1] - 1)).reshape(delta.shape)
    return density - epsilon + 2 * epsilon * rank, rank


class DropStats:
    """One model's drop counts and rescale factors, per tensor and overall (DARE or DELLA)."""

    def __init__(self, density: float, epsilon: float | None = None):
        self.p, self.eps = density, epsilon
        self.n = self.dropped = self.off = self.kept = 0
        self.expected = 0.0  # expected drops: sum of 1 - p over the entries counted
        self.z: list[float] = []  # per tensor: (dropped - expected) / sd
        self.scale_ratio: list[float] = []  # per tensor: rescale factor / its expected value (~1)
        self.l1_err: list[float] = []  # per tensor: |factor / L1 ratio of the observed mask - 1|
        self.bins = [[0, 0.0, 0.0, 0] for _ in range(RANK_BINS)]  # DELLA: kept, expected, variance, entries

    def probabilities(self, delta):
        return keep_probabilities(delta, self.p, self.eps)

    def add_drops(self, n: int, dropped: int, expected: float, var: float) -> None:
        if n:
            self.n += n
            self.dropped += dropped
            self.expected += expected
            self.z.append((dropped - expected) / var**0.5 if var > 0 else 0.0)

    def add_ranks(self, rank, kept, p) -> None:
        """DELLA: kept counts by rank bin against the expected sum of probabilities."""
        import torch

        bins = torch.clamp((rank * RANK_BINS).long(), max=RANK_BINS - 1)
        for b in range(RANK_BINS):
            sel = bins == b
            self.bins[b][0] += int(kept[sel].sum())
            self.bins[b][1] += float(p[sel].sum())
            self.bins[b][2] += float((p[sel] * (1 - p[sel])).sum())
            self.bins[b][3] += int(sel.sum())

    def summary(self) -> dict:
        import statistics

        lo, hi = wilson(self.dropped, self.n)
        sr = sorted(self.scale_ratio)
        rank_z = [(k - e) / v**0.5 for k, e, v, _ in self.bins if v > 0]
        return {"drop": self.dropped / self.n, "expected": self.expected / self.n, "ci": (lo, hi),
                "in_ci": lo <= self.expected / self.n <= hi, "tensors": len(self.z),
                "z_max": max(abs(z) for z in self.z), "z_out": sum(abs(z) > Z_999 for z in self.z),
                "scale_median": statistics.median(sr), "scale_range": (sr[0], sr[-1]),
                "l1_err_max": max(self.l1_err, default=float("nan")), "off_frac": self.off / max(1, self.kept),
                "rank_z": rank_z}

    def line(self) -> str:
        s = self.summary()
        line = (f"drop {s['drop']:.5f} (99.9% CI {s['ci'][0]:.5f}-{s['ci'][1]:.5f}, expected {s['expected']:.5f} "
                f"{'inside' if s['in_ci'] else 'OUTSIDE'}); per tensor max|z| {s['z_max']:.2f}, "
                f"{s['z_out']}/{s['tensors']} beyond {Z_999:.2f}; scale / expected median {s['scale_median']:.4f} "
                f"[{s['scale_range'][0]:.3f}, {s['scale_range'][1]:.3f}]")
        if self.l1_err:
            line += (f"; scale = L1 ratio of the mask within {s['l1_err_max']:.1e}; kept entries off their "
                     f"tensor's factor {s['off_frac']:.1e}")
        if self.eps is not None and any(b[3] for b in self.bins):
            line += "; keep rate by rank fifth " + ", ".join(
                f"{k / n:.4f}/{e / n:.4f} (z {(k - e) / v**0.5:+.2f})" for k, e, v, n in self.bins if n)
        return line

    def ok(self) -> bool:
        s = self.summary()
        return (s["in_ci"] and s["z_out"] <= 2 and abs(s["scale_median"] - 1) < 0.01
                and all(abs(z) <= Z_999 for z in s["rank_z"])
                and (not self.l1_err or (s["l1_err_max"] < 1e-4 and s["off_frac"] < 1e-5)))


def rounding_tol(base, x):
    """Float32 rounding of out - base where out = base + x (a few ulps of |base| + |x|)."""
    return 8 * 2.0**-24 * (base.abs() + x.abs()) + 1e-12


def expected_factor(delta, p) -> float:
    """The L1 rescale factor a mask with keep probabilities p gives on average: sum|d| / sum p|d|."""
    return float(delta.abs().sum() / (p * delta.abs()).sum())


def single_model_drops(stats: DropStats, a, delta, o) -> None:
    """A tensor only one model changed: out - base = factor * mask * delta, every mask entry observable."""
    nz = delta != 0
    kept = nz & (o != 0)
    p, rank = stats.probabilities(delta)
    n, k = int(nz.sum()), int(kept.sum())
    stats.add_drops(n, n - k, float((1 - p[nz]).sum()), float((p[nz] * (1 - p[nz])).sum()))
    if rank is not None:
        stats.add_ranks(rank[nz], kept[nz], p[nz])
    if not k:
        return
    r = o[kept] / delta[kept]
    factor = float(r.median())
    stats.scale_ratio.append(factor / expected_factor(delta[nz], p[nz]))
    stats.l1_err.append(abs(factor / float(delta[nz].abs().sum() / delta[kept].abs().sum()) - 1))
    stats.off += int(((o[kept] - factor * delta[kept]).abs() > rounding_tol(a[kept], o[kept])).sum())
    stats.kept += k


def mode_factor(o, delta) -> float:
    """The rescale factor of one model's delta in a two-model output: the most common out/delta ratio."""
    import torch

    r = o / delta
    r = r[(delta != 0) & (o != 0) & (r > 0) & (r <= 20)]
    bins = torch.round(r * 1000).long()
    center = float(torch.bincount(bins).argmax()) / 1000
    return float(r[(r - center).abs() <= 1e-3].median())


ELECTION = ["agree: both kept", "agree: B only", "agree: C only", "agree: none", "conflict: winner only",
            "conflict: loser only", "conflict: none"]


def ties_tensor(stats: dict, a, db, dc, o, normalize: bool) -> dict:
    """Classify each entry of a two-model sign-elected output as none / B / C / B+C and tally each category
    against its expected count (sums of per-entry probabilities: constant for DARE, by rank for DELLA).

    Entries where the two deltas agree in sign are kept independently (B+C possible); where they conflict,
    the elected sign (of fB*dB + fC*dC) drops the loser, so B+C must never appear there. With `normalize`
    (weights 1) an entry both models keep is their mean rather than their sum.
    """
    import torch

    fb, fc = mode_factor(o, db), mode_factor(o, dc)
    pb_all, _ = stats["B"].probabilities(db)
    pc_all, _ = stats["C"].probabilities(dc)
    for label, f, d, p in (("B", fb, db, pb_all), ("C", fc, dc, pc_all)):
        nz = d != 0
        stats[label].scale_ratio.append(f / expected_factor(d[nz], p[nz]))
    counts = {"unclassified": 0, "ambiguous": 0, "entries": o.numel(), "conflict: both kept": 0,
              "conflict: entries": 0, **{c: [0, 0.0, 0.0] for c in ELECTION}}
    a, db, dc, o, pb_all, pc_all = (t.reshape(-1) for t in (a, db, dc, o, pb_all, pc_all))
    drops = {"B": [0, 0, 0.0, 0.0], "C": [0, 0, 0.0, 0.0]}  # visible entries, dropped, expected, variance
    step = 1 << 21  # slices bound the [4, n] float64 candidate buffers
    for s0 in range(0, o.numel(), step):
        sa, sb, sc, so, pb, pc = (t[s0:s0 + step] for t in (a, db, dc, o, pb_all, pc_all))
        x, y = fb * sb, fc * sc
        err = (so - torch.stack([torch.zeros_like(x), x, y, (x + y) / 2 if normalize else x + y])).abs()
        ordered, best = err.sort(0)
        best = best[0]
        tol = rounding_tol(sa, so) + 1e-6 * (x.abs() + y.abs())  # + the factors' estimation error
        clear = (ordered[0] <= tol) & (ordered[1] > tol) & (sb != 0) & (sc != 0)
        counts["unclassified"] += int((ordered[0] > tol).sum())
        counts["ambiguous"] += int((ordered[1] <= tol).sum())
        agree = clear & (sb.sign() == sc.sign())
        conflict = clear & (sb.sign() != sc.sign())
        b_wins = conflict & ((x + y >= 0) == (sb > 0))  # the elected sign is + when the sum is >= 0
        c_wins = conflict & ~b_wins
        expected = [  # (category, entries, observed class, keep probability of that outcome)
            ("agree: both kept", agree, 3, pb * pc), ("agree: B only", agree, 1, pb * (1 - pc)),
            ("agree: C only", agree, 2, (1 - pb) * pc), ("agree: none", agree, 0, (1 - pb) * (1 - pc)),
            ("conflict: winner only", b_wins, 1, pb), ("conflict: winner only", c_wins, 2, pc),
            ("conflict: loser only", b_wins, 2, (1 - pb) * pc), ("conflict: loser only", c_wins, 1, pb * (1 - pc)),
            ("conflict: none", conflict, 0, (1 - pb) * (1 - pc)),
        ]
        for cat, sel, cls, prob in expected:
            counts[cat][0] += int((best[sel] == cls).sum())
            counts[cat][1] += float(prob[sel].sum())
            counts[cat][2] += float((prob[sel] * (1 - prob[sel])).sum())
        counts["conflict: both kept"] += int((best[conflict] == 3).sum())
        counts["conflict: entries"] += int(conflict.sum())
        # Drop rates where a model's fate is visible: agreeing entries, and conflicts it wins.
        for label, visible, gone, p in (("B", agree | b_wins, (best == 0) | (best == 2), pb),
                                        ("C", agree | c_wins, (best == 0) | (best == 1), pc)):
            drops[label][0] += int(visible.sum())
            drops[label][1] += int((visible & gone).sum())
            drops[label][2] += float((1 - p[visible]).sum())
            drops[label][3] += float((p[visible] * (1 - p[visible])).sum())
    for label, (n, dropped, exp, var) in drops.items():
        stats[label].add_drops(n, dropped, exp, var)
    return counts


def random_stats(method: str, out: Path, paths: dict[str, Path], spec: dict) -> dict:
    """Drop rates and rescale factors per model (and, for the TIES variants, the sign election) of one DARE or
    DELLA output."""
    models = {m["model"]: m["parameters"] for m in spec["models"]}
    della = method.startswith("della")
    stats = {label: DropStats(q["density"], q.get("epsilon", 0.15) if della else None) for label, q in models.items()}
    normalize = spec.get("parameters", {}).get("normalize", method == "della")
    t_a, t_o = tensors(paths["A"]), tensors(out)
    t_m = {label: tensors(paths[label]) for label in models}
    total: dict | None = None
    for name in t_a:
        a = read(t_a[name], name)
        o = (read(t_o[name], name) - a).double()
        deltas = {label: (read(t[name], name) - a).double() for label, t in t_m.items()}
        changed = [label for label, d in deltas.items() if bool(d.any())]
        a = a.double()
        if len(changed) == 1:
            single_model_drops(stats[changed[0]], a, deltas[changed[0]], o)
        elif len(changed) == 2:
            counts = ties_tensor(stats, a, deltas["B"], deltas["C"], o, normalize)
            total = counts if total is None else {
                k: [s + c for s, c in zip(total[k], v, strict=True)] if isinstance(v, list) else total[k] + v
                for k, v in counts.items()}
    return {"stats": stats, "counts": total if method in ("dare_ties", "della") else None}


def election_lines(counts: dict) -> tuple[list[str], bool]:
    """Observed vs expected entry categories of a two-model sign-elected output."""
    lines, ok = [], True
    for cat in ELECTION:
        obs, exp, var = counts[cat]
        z = (obs - exp) / var**0.5 if var else 0.0
        ok &= abs(z) <= Z_999
        lines.append(f"{cat} {obs} (expected {exp:.0f}, z {z:+.2f})")
    both = counts["conflict: both kept"]
    ok &= both == 0
    lines.append(f"conflict: both kept {both} of {counts['conflict: entries']} conflicting entries")
    lines.append(f"{counts['unclassified']} of {counts['entries']} entries unclassified, {counts['ambiguous']} ambiguous")
    ok &= counts["unclassified"] <= 1e-4 * counts["entries"]
    return lines, ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", nargs=3, metavar=("TOOL", "CONFIG", "OUT"))
    ap.add_argument("--keep", type=Path, help="Keep the work directory here.")
    ap.add_argument("--methods", default=",".join([*EXACT, *RANDOM]), help="Rows to run (comma-separated).")
    ap.add_argument("--model", default="default", help="Base model spec (a single-file safetensors model).")
    ap.add_argument("--threads", type=int, help="Threads of every merge (OMP_NUM_THREADS; default: torch's).")
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # the children's
    rows = args.methods.split(",")
    unknown = [r for r in rows if r not in EXACT and r not in RANDOM]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {', '.join([*EXACT, *RANDOM])}")
    from meditune.models import resolve

    base = Path(resolve(args.model).path)
    model_mb = sum(p.stat().st_size for p in base.glob("*.safetensors")) / 2**20
    work = args.keep or Path(tempfile.mkdtemp(prefix="merge-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    paths = make_variants(base, work)
    print(f"models: {args.model} ({model_mb:.0f} MB float32) + 2 seeded variants; RSS limit {RSS_LIMIT}x = "
          f"{RSS_LIMIT * model_mb:.0f} MB")
    print(f"{'method':26} {'tensors':>7} {'max|diff|':>10} {'ours s':>7} {'mk s':>7} {'time ratio':>10} "
          f"{'ours RSS MB':>11} {'mk RSS MB':>9} {'ours/model':>10}")
    ok = exact_rows([r for r in EXACT if r in rows], paths, work, model_mb)
    ok &= random_rows([r for r in RANDOM if r in rows], paths, work, model_mb)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print("ALL OK" if ok else "SOME CHECKS FAILED")
    sys.exit(0 if ok else 1)


def row_line(label: str, n: int | str, diff: float | str, ours: dict, theirs: dict, model_mb: float) -> str:
    diff_s = f"{diff:10.2e}" if isinstance(diff, float) else f"{diff:>10}"
    return (f"{label:26} {n:>7} {diff_s} {ours['wall_s']:7.1f} {theirs['wall_s']:7.1f} "
            f"{ours['wall_s'] / theirs['wall_s']:9.2f}x {ours['peak_rss_mb']:11.0f} {theirs['peak_rss_mb']:9.0f} "
            f"{ours['peak_rss_mb'] / model_mb:9.2f}x")


def exact_rows(labels: list[str], paths: dict[str, Path], work: Path, model_mb: float) -> bool:
    """Rows whose output must equal mergekit's (within TOL; [position] rows: except entries at trim ties)."""
    ok = True
    mk_done: dict[str, tuple[Path, dict]] = {}  # one mergekit run per distinct mergekit config
    for label in labels:
        method, spec, extra = EXACT[label]
        tag = label.replace("[", "-").replace("]", "")
        ours = run_child("meditune", config_for(spec, paths, method, extra), work / f"ours-{tag}", work)
        mk_cfg = config_for(spec, paths, method)
        key = json.dumps(mk_cfg, sort_keys=True)
        if key not in mk_done:
            mk_done[key] = (work / f"mk-{tag}", run_child("mergekit", mk_cfg, work / f"mk-{tag}", work))
        mk_out, theirs = mk_done[key]
        diff, n, only = max_diff(work / f"ours-{tag}", mk_out)
        ratio = ours["peak_rss_mb"] / model_mb
        note = ""
        if label.endswith("[position]") and diff > TOL:
            n_diff, n_tie, other = tie_diffs(work / f"ours-{tag}", mk_out, paths, method, spec)
            note = (f" | {n_diff} of {model_mb * 2**20 / 4:.0f} elements differ, {n_tie} of them at a "
                    f"trim-threshold tie (kept by position, not by mergekit's sort); max diff elsewhere {other:.1e}")
            diff = other if n_tie == n_diff else diff
        rss_ok = ratio <= RSS_LIMIT or label.endswith("[mergekit]")
        if ratio > RSS_LIMIT and rss_ok:
            note += " | RSS over the limit: the whole-tensor sort of tie_break: mergekit (documented cost)"
        good = diff <= TOL and not only and rss_ok
        ok &= good
        print(row_line(label, n, diff, ours, theirs, model_mb) + f" {'ok' if good else 'FAIL'}"
              + (f" only in one: {only[:3]}" if only else "") + note, flush=True)
    return ok


def random_rows(methods: list[str], paths: dict[str, Path], work: Path, model_mb: float) -> bool:
    """DARE and DELLA rows: statistics of ours and of mergekit's output, side by side."""
    ok = True
    for method in methods:
        spec = RANDOM[method]
        cfg = config_for(spec, paths, method)
        ours = run_child("meditune", cfg, work / f"ours-{method}", work)
        theirs = run_child("mergekit", cfg, work / f"mk-{method}", work)
        good = ours["peak_rss_mb"] / model_mb <= RSS_LIMIT
        print(row_line(method, "", "(stats)", ours, theirs, model_mb), flush=True)
        for tool, out in (("ours", work / f"ours-{method}"), ("mergekit", work / f"mk-{method}")):
            res = random_stats(method, out, paths, spec)
            tool_ok = True
            for label, st in res["stats"].items():
                tool_ok &= st.ok()
                eps = f", epsilon {st.eps}" if st.eps is not None else ""
                print(f"  {tool:8} model {label} (density {st.p}{eps}): {st.line()}")
            if res["counts"]:
                lines, election_ok = election_lines(res["counts"])
                tool_ok &= election_ok
                print(f"  {tool:8} sign election: " + "; ".join(lines))
            print(f"  {tool:8} {'statistics as expected' if tool_ok else 'STATISTICS OFF'}", flush=True)
            if tool == "ours":
                good &= tool_ok
        ok &= good
        print(f"{method:26} {'ok' if good else 'FAIL'}")
    return ok


if __name__ == "__main__":
    main()
