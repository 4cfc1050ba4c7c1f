"""Merging: meditune vs mergekit on the same three models (the default model and two seeded variants).

For linear, SLERP, task arithmetic and TIES the output tensors must equal mergekit's within 1e-5; each
merge runs in a fresh subprocess that reports its wall time and peak RSS (ru_maxrss), and ours must stay
<= 1.3x the size of one model. DARE is random, so its statistics are checked instead: the drop rate
(~ 1 - density) and the rescaling of kept deltas (~ 1/density), for us and for mergekit.

Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/merge_vs_mergekit.py [--keep DIR]
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
EXACT = {
    "linear": {"models": [{"model": "A", "parameters": {"weight": 0.5}}, {"model": "B", "parameters": {"weight": 0.3}},
                          {"model": "C", "parameters": {"weight": 0.2}}]},
    "slerp": {"base_model": "A", "models": [{"model": "A"}, {"model": "B"}],
              "parameters": {"t": [{"filter": "self_attn", "value": [0.0, 0.5, 0.3, 0.7, 1.0]},
                                   {"filter": "mlp", "value": [1.0, 0.5, 0.7, 0.3, 0.0]}, {"value": 0.5}]}},
    "task_arithmetic": {"base_model": "A", "parameters": {"lambda": 0.9},
                        "models": [{"model": "B", "parameters": {"weight": [0.2, 0.8]}},
                                   {"model": "C", "parameters": {"weight": 0.6}}]},
    "ties": {"base_model": "A", "models": [{"model": "B", "parameters": {"weight": 1.0, "density": 0.5}},
                                           {"model": "C", "parameters": {"weight": 0.7, "density": 0.3}}]},
}
DARE = {
    "dare_linear": {"base_model": "A", "models": [{"model": "B", "parameters": {"weight": 1.0, "density": 0.3}}]},
    "dare_ties": {"base_model": "A", "models": [{"model": "B", "parameters": {"weight": 1.0, "density": 0.3}},
                                                {"model": "C", "parameters": {"weight": 1.0, "density": 0.5}}]},
}


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


def config_for(spec: dict, paths: dict[str, Path], method: str) -> dict:
    """Replace model labels by paths: the same dict is a mergekit and a meditune config."""
    sub = lambda m: str(paths[m])  # noqa: E731
    cfg = {"merge_method": method, "dtype": "float32",
           "models": [{**m, "model": sub(m["model"])} for m in spec["models"]]}
    if "base_model" in spec:
        cfg["base_model"] = sub(spec["base_model"])
    if "parameters" in spec:
        cfg["parameters"] = spec["parameters"]
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


def ties_tie_diffs(ours: Path, theirs: Path, paths: dict[str, Path], spec: dict) -> tuple[int, int, float]:
    """(elements differing by > TOL, how many of them sit at a magnitude-trim tie, max diff elsewhere).

    mergekit keeps an argsort's top k, and its unstable sort picks an arbitrary subset of the entries that
    tie at the threshold; we keep the first ones by position. Only those entries may differ.
    """
    import torch

    a, b, base = tensors(ours), tensors(theirs), tensors(paths["A"])
    srcs = [(tensors(paths[m["model"]]), m["parameters"]["density"]) for m in spec["models"]]
    n_diff = n_tie = 0
    worst_other = 0.0
    for name in a:
        diff = (read(a[name], name).double() - read(b[name], name).double()).abs()
        bad = diff > TOL
        if not bad.any():
            continue
        at_tie = torch.zeros_like(bad)
        x0 = read(base[name], name)
        for src, density in srcs:
            mags = (read(src[name], name) - x0).abs()
            k = max(1, int(density * mags.numel()))
            thr = torch.sort(mags.reshape(-1), descending=True).values[k - 1]
            at_tie |= mags == thr
        n_diff += int(bad.sum())
        n_tie += int((bad & at_tie).sum())
        if (bad & ~at_tie).any():
            worst_other = max(worst_other, float(diff[bad & ~at_tie].max()))
    return n_diff, n_tie, worst_other


def dare_stats(out: Path, paths: dict[str, Path], density: float) -> dict:
    """Over the tensors B changed: fraction of B's delta dropped, and median kept/original ratio."""
    import torch

    a, b, o = tensors(paths["A"]), tensors(paths["B"]), tensors(out)
    dropped = total = 0
    ratios = []
    for name in a:
        base = read(a[name], name)
        delta = read(b[name], name) - base
        if not delta.abs().gt(0).any():
            continue
        got = read(o[name], name) - base
        nz = delta.abs() > 1e-7
        kept = got.abs() > 1e-9
        dropped += int((nz & ~kept).sum())
        total += int(nz.sum())
        sel = nz & kept
        ratios.append((got[sel] / delta[sel]).median().item())
    return {"drop_rate": dropped / total, "expected_drop": 1 - density,
            "rescale_median": float(torch.tensor(ratios).median()), "expected_rescale": 1 / density}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", nargs=3, metavar=("TOOL", "CONFIG", "OUT"))
    ap.add_argument("--keep", type=Path, help="Keep the work directory here.")
    ap.add_argument("--methods", default=",".join([*EXACT, *DARE]))
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    from meditune.models import resolve

    base = Path(resolve("default").path)
    model_mb = sum(p.stat().st_size for p in base.glob("*.safetensors")) / 2**20
    work = args.keep or Path(tempfile.mkdtemp(prefix="merge-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    paths = make_variants(base, work)
    print(f"models: default ({model_mb:.0f} MB float32) + 2 seeded variants; RSS limit {RSS_LIMIT}x = "
          f"{RSS_LIMIT * model_mb:.0f} MB")
    print(f"{'method':16} {'tensors':>7} {'max|diff|':>10} {'ours s':>7} {'mk s':>7} {'time ratio':>10} "
          f"{'ours RSS MB':>11} {'mk RSS MB':>9} {'ours/model':>10}")
    ok = True
    methods = args.methods.split(",")
    for method in [m for m in EXACT if m in methods]:
        cfg = config_for(EXACT[method], paths, method)
        ours = run_child("meditune", cfg, work / f"ours-{method}", work)
        theirs = run_child("mergekit", cfg, work / f"mk-{method}", work)
        diff, n, only = max_diff(work / f"ours-{method}", work / f"mk-{method}")
        ratio = ours["peak_rss_mb"] / model_mb
        note = ""
        if method == "ties" and diff > TOL:
            n_diff, n_tie, other = ties_tie_diffs(work / f"ours-{method}", work / f"mk-{method}", paths,
                                                  EXACT[method])
            note = (f" | {n_diff} of {model_mb * 2**20 / 4:.0f} elements differ, {n_tie} of them at a "
                    f"trim-threshold tie (arbitrary in mergekit); max diff elsewhere {other:.1e}")
            diff = other if n_tie == n_diff else diff
        good = diff <= TOL and not only and ratio <= RSS_LIMIT
        ok &= good
        print(f"{method:16} {n:7d} {diff:10.2e} {ours['wall_s']:7.1f} {theirs['wall_s']:7.1f} "
              f"{ours['wall_s'] / theirs['wall_s']:9.2f}x {ours['peak_rss_mb']:11.0f} {theirs['peak_rss_mb']:9.0f} "
              f"{ratio:9.2f}x {'ok' if good else 'FAIL'}" + (f" only in one: {only[:3]}" if only else "") + note)
    for method in [m for m in DARE if m in methods]:
        cfg = config_for(DARE[method], paths, method)
        ours = run_child("meditune", cfg, work / f"ours-{method}", work)
        theirs = run_child("mergekit", cfg, work / f"mk-{method}", work)
        s_ours = dare_stats(work / f"ours-{method}", paths, 0.3)
        s_mk = dare_stats(work / f"mk-{method}", paths, 0.3)
        ratio = ours["peak_rss_mb"] / model_mb
        good = (abs(s_ours["drop_rate"] - 0.7) < 0.01 and abs(s_ours["rescale_median"] - 1 / 0.3) < 0.05
                and ratio <= RSS_LIMIT) if method == "dare_linear" else ratio <= RSS_LIMIT
        ok &= good
        print(f"{method:16} drop rate ours {s_ours['drop_rate']:.4f} / mergekit {s_mk['drop_rate']:.4f} "
              f"(expected {s_ours['expected_drop']:.2f}); kept-delta scale ours {s_ours['rescale_median']:.3f} / "
              f"mergekit {s_mk['rescale_median']:.3f} (expected {s_ours['expected_rescale']:.3f}); "
              f"time {ours['wall_s']:.1f}s vs {theirs['wall_s']:.1f}s = {ours['wall_s'] / theirs['wall_s']:.2f}x; "
              f"RSS {ours['peak_rss_mb']:.0f} MB ({ratio:.2f}x model) {'ok' if good else 'FAIL'}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print("ALL OK" if ok else "SOME CHECKS FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
