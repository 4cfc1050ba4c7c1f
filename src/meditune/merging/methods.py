"""Merge methods: a registry of small functions over tensors, matching mergekit 0.1.5's math.

A method gets a TensorJob (lazy, row-chunked access to one output tensor's inputs) and yields the output
tensor's rows chunk by chunk, so the driver can stream them to disk. Methods that need whole-tensor
statistics (SLERP's angle, TIES's magnitude threshold, DARE's L1 rescale) take them in a first pass over
the chunks; everything else is elementwise. The pure helpers (linear_combine, slerp_coefficients,
combine_deltas, TopK, ...) are the math, testable on plain tensors.

"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from meditune.errors import ConfigError

SLERP_DOT_THRESHOLD = 0.9995  # above it the vectors are (anti)collinear: interpolate linearly
EPS = 1e-8


@dataclass
class TensorJob:
    """One output tensor's inputs: `read(i, start, stop)` returns rows of input i in the compute dtype."""

    name: str
    shape: tuple[int, ...]
    chunks: list[tuple[int, int]]
    read: Callable[[int, int, int], torch.Tensor]
    n_inputs: int
    base: int | None  # index of the base model among the inputs
    seed: int = 0
    input_ids: list[int] = field(default_factory=list)  # stable per-model ids (position in the config)

    def generator(self, i: int) -> torch.Generator:
        """A generator seeded by (seed, tensor name, model): masks do not depend on merge order or resume."""
        mid = self.input_ids[i] if self.input_ids else i
        digest = hashlib.sha256(f"{self.seed}|{self.name}|{mid}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


@dataclass(frozen=True)
class Method:
    """A merge method: its inputs contract, parameters (with defaults) and the chunk generator."""

    name: str
    run: Callable[[TensorJob, dict[str, Any], list[dict[str, Any]]], Iterator[torch.Tensor]]
    needs_base: bool
    shared: dict[str, Any]  # shared parameter -> default (REQUIRED when it must be given)
    per_model: dict[str, Any]  # per-model parameter -> default
    min_inputs: int = 1
    max_inputs: int | None = None
    description: str = ""


REQUIRED = object()
METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the registry."""
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """A registered method by name; unknown names are a ConfigError listing the choices."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown merge_method {name!r}; one of: {', '.join(sorted(METHODS))}") from None


# ---------------------------------------------------------------- pure math over tensors

def linear_combine(tensors: list[torch.Tensor], weights: list[float], normalize: bool = True) -> torch.Tensor:
    """sum_i w_i x_i, divided by sum_i w_i when normalize (mergekit `linear`)."""
    if normalize:  # folded into the weights: one pass less over the data
        total = sum(weights)
        weights = [w / total for w in weights]
    out = tensors[0] * weights[0]
    for x, w in zip(tensors[1:], weights[1:], strict=True):
        out.add_(x, alpha=w)
    return out


def slerp_coefficients(t: float, sumsq_a: float, sumsq_b: float, dot_ab: float) -> tuple[float, float]:
    """SLERP's (coef_a, coef_b) from the two vectors' squared norms and raw dot product."""
    norm_a = math.sqrt(sumsq_a) if math.sqrt(sumsq_a) > EPS else 1.0
    norm_b = math.sqrt(sumsq_b) if math.sqrt(sumsq_b) > EPS else 1.0
    dot = max(-1.0, min(1.0, dot_ab / (norm_a * norm_b)))
    if abs(dot) > SLERP_DOT_THRESHOLD:
        return 1 - t, t
    theta = math.acos(dot)
    return math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)


def majority_mask(deltas: torch.Tensor, method: str = "sum") -> torch.Tensor:
    """TIES sign election: True where a model's delta agrees with the elected sign ("sum" or "count")."""
    sign = deltas.sign()
    if method == "sum":
        majority = (deltas.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
    elif method == "count":
        majority = (sign.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
    else:
        raise ConfigError(f"unknown consensus method {method!r}: use sum or count")
    return sign == majority


def combine_deltas(deltas: torch.Tensor, weights: list[float], *, consensus: str | None, normalize: bool,
                   lam: float) -> torch.Tensor:
    """Weighted (and optionally sign-elected) sum of stacked task vectors [n, ...] (mergekit's GTA)."""
    w = torch.tensor(weights, dtype=deltas.dtype).reshape(-1, *([1] * (deltas.dim() - 1)))
    deltas.mul_(w)
    if consensus:
        mask = majority_mask(deltas, consensus).to(deltas.dtype)
        mixed = (deltas * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = w.sum(dim=0).expand_as(mixed).clone()
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed /= divisor
    if lam != 1:
        mixed *= lam
    return mixed


# ---------------------------------------------------------------- methods over chunked tensors

def _linear(job: TensorJob, p: dict[str, Any], per: list[dict[str, Any]]) -> Iterator[torch.Tensor]:
    weights = [float(q["weight"]) for q in per]
    if p["normalize"] and abs(sum(weights)) < 1e-12:
        raise ConfigError(f"linear: the weights for {job.name} sum to 0; set normalize: false or change them")
    for r0, r1 in job.chunks:
        yield linear_combine([job.read(i, r0, r1) for i in range(job.n_inputs)], weights, p["normalize"])


def _slerp(job: TensorJob, p: dict[str, Any], per: list[dict[str, Any]]) -> Iterator[torch.Tensor]:
    a_i = job.base
    b_i = 1 - a_i
    t = float(p["t"])
    sa = sb = dot = 0.0
    for r0, r1 in job.chunks:  # pass 1: norms and dot product (float64 accumulators)
        a, b = job.read(a_i, r0, r1).double(), job.read(b_i, r0, r1).double()
        sa += float((a * a).sum())
        sb += float((b * b).sum())
        dot += float((a * b).sum())
    ca, cb = slerp_coefficients(t, sa, sb, dot)
    for r0, r1 in job.chunks:  # pass 2: the interpolation
        a, b = job.read(a_i, r0, r1), job.read(b_i, r0, r1)
        yield a.mul_(ca).add_(b, alpha=cb)


def _delta(job: TensorJob, i: int, r0: int, r1: int) -> torch.Tensor:
    return job.read(i, r0, r1) - job.read(job.base, r0, r1)


TIE_BREAKS = ("position", "mergekit")


@dataclass
class TopK:
    """Which entries a magnitude trim keeps: |d| > threshold, plus `ties` of the `tied` entries equal to it.

    Exactly k entries are kept, as in mergekit (an argsort's top k). Which tied entries are kept depends on
    the tie-break: "position" keeps the first ones in row-major order (streamed, no buffer); "mergekit" keeps
    the ones torch.argsort(descending=True)[:k] keeps, listed in `tied_kept` (sorted flat positions).
    """

    threshold: float
    ties: int
    tied: int = 0
    scale: float = 1.0
    tied_kept: torch.Tensor | None = None
    _left: int = field(default=-1, repr=False)  # position tie-break: tied entries still to keep

    def mask(self, mags: torch.Tensor, start: int) -> torch.Tensor:
        """Keep-mask of the next chunk of magnitudes, whose first element has flat index `start`.

        Chunks must come in order (the position tie-break counts the tied entries seen so far).
        """
        keep = mags > self.threshold
        if self.tied_kept is not None:
            lo, hi = torch.searchsorted(self.tied_kept, torch.tensor([start, start + mags.numel()])).tolist()
            keep.reshape(-1)[self.tied_kept[lo:hi] - start] = True
            return keep
        if self._left < 0:
            self._left = self.ties
        if self._left > 0:
            eq = mags == self.threshold
            if bool(eq.any()):
                order = eq.reshape(-1).cumsum(0).reshape(eq.shape)
                keep |= eq & (order <= self._left)
                self._left -= min(self._left, int(eq.sum()))
        return keep


def _magnitudes(job: TensorJob, i: int, r0: int, r1: int, tie_break: str) -> torch.Tensor:
    """|delta| of some rows; as float32 for the mergekit tie-break (mergekit sorts float32 on CPU)."""
    m = _delta(job, i, r0, r1).abs()
    return m.float() if tie_break == "mergekit" else m


def _magnitude_stats(job: TensorJob, i: int, density: float, rescale: bool, tie_break: str = "position") -> TopK:
    """The k = density * numel largest-|delta| entries of one model's task vector, found in streaming passes.

    Pass 1 takes a strided sample to bracket the k-th largest value; pass 2 counts above the bracket and
    keeps only the values inside it, so memory is the chunks in flight plus a few percent of the tensor
    (the bracket widens and pass 2 repeats in the rare case it missed). Only when the k-th value is tied
    (some but not all of the tied entries are kept) does the mergekit tie-break sort the whole tensor.
    """
    if tie_break not in TIE_BREAKS:
        raise ConfigError(f"tie_break must be one of {', '.join(TIE_BREAKS)}, not {tie_break!r}")
    numel = math.prod(job.shape)
    k = max(1, int(density * numel))
    step = max(1, numel // (1 << 16))
    sample = torch.cat([_magnitudes(job, i, r0, r1, tie_break).reshape(-1)[::step] for r0, r1 in job.chunks])
    frac, margin = 1 - k / numel, 0.02
    while True:
        lo_rank, hi_rank = int((frac - margin) * sample.numel()), int((frac + margin) * sample.numel()) + 1
        lo = 0.0 if lo_rank < 1 else float(torch.kthvalue(sample, lo_rank).values)
        hi = math.inf if hi_rank >= sample.numel() else float(torch.kthvalue(sample, hi_rank).values)
        above = at_least_lo = n_hi = 0
        sum_above = total = 0.0
        inside = []  # only values strictly inside the bracket: ties at its ends are counted, not stored
        for r0, r1 in job.chunks:
            m = _magnitudes(job, i, r0, r1, tie_break).reshape(-1)
            gt = m > hi
            above += int(gt.sum())
            sum_above += float(m[gt].sum(dtype=torch.float64))
            at_least_lo += int((m >= lo).sum())
            n_hi += int((m == hi).sum())
            total += float(m.sum(dtype=torch.float64))
            inside.append(m[(m > lo) & (m < hi)])
        if above < k <= at_least_lo:
            break
        margin *= 4  # the sample's bracket missed the k-th value: widen it (lo -> 0, hi -> inf eventually)
    mid = torch.cat(inside)
    r = k - above  # rank (from the top) of the k-th largest among the values in [lo, hi]
    sum_hi = n_hi * hi if n_hi else 0.0
    if r <= n_hi:
        thr, greater, sum_greater, tied = hi, above, sum_above, n_hi
    elif r <= n_hi + mid.numel():
        thr = float(torch.kthvalue(mid, mid.numel() - (r - n_hi) + 1).values)
        sel = mid > thr
        greater = above + n_hi + int(sel.sum())
        sum_greater = sum_above + sum_hi + float(mid[sel].sum(dtype=torch.float64))
        tied = int((mid == thr).sum())
    else:
        thr = lo
        greater = above + n_hi + mid.numel()
        sum_greater = sum_above + sum_hi + float(mid.sum(dtype=torch.float64))
        tied = at_least_lo - greater  # the entries equal to lo
    topk = TopK(thr, k - greater, tied)
    if rescale:  # L1 norm matching, as mergekit's rescaled_masked_tensor
        after = sum_greater + topk.ties * thr
        if total >= 1e-7 and after >= 1e-7:
            topk.scale = total / after
    # Tied zeros need no choice: a zero delta adds nothing and has no sign to elect.
    if tie_break == "mergekit" and thr > 0 and 0 < topk.ties < topk.tied:
        del sample, inside, mid  # free the bracket's values before the whole-tensor sort
        topk.tied_kept = _argsort_tied_kept(job, i, k, thr)
    return topk


def _argsort_tied_kept(job: TensorJob, i: int, k: int, thr: float) -> torch.Tensor:
    """Flat positions of the entries equal to `thr` among mergekit's `torch.argsort(|d|, descending=True)[:k]`.

    torch's CPU sort is not stable, but it is deterministic for the same input (checked: independent of the
    thread count and of the buffer's alignment), so running it on the same float32 magnitudes reproduces
    mergekit's choice. Costs 20 bytes per element of this tensor (measured: float32 magnitudes sorted in
    place, int64 indices, and 8 bytes per element that torch's sort allocates internally).
    """
    w = torch.empty(math.prod(job.shape), dtype=torch.float32)
    pos = 0
    for r0, r1 in job.chunks:
        m = _magnitudes(job, i, r0, r1, "mergekit").reshape(-1)
        w[pos:pos + m.numel()] = m
        pos += m.numel()
    idx = torch.empty(w.numel(), dtype=torch.long)
    torch.sort(w, descending=True, out=(w, idx))  # the kernel torch.argsort runs: same order, no extra copy
    kept = idx[:k][w[:k] == thr]
    del w, idx
    return kept.sort().values


def _random_mask(gen: torch.Generator, shape: torch.Size, density: float) -> torch.Tensor:
    return torch.rand(shape, generator=gen) < density


def _random_scale(job: TensorJob, i: int, density: float, rescale: bool, rescale_by: str) -> float:
    """DARE's rescaling: L1 norm matching (mergekit) or the paper's 1/density."""
    if not rescale:
        return 1.0
    if rescale_by == "density":
        return 1.0 / density
    if rescale_by != "l1":
        raise ConfigError(f"rescale_by must be 'l1' or 'density', not {rescale_by!r}")
    gen = job.generator(i)
    before = after = 0.0
    for r0, r1 in job.chunks:
        d = _delta(job, i, r0, r1)
        before += float(d.abs().sum(dtype=torch.float64))
        after += float((d.abs() * _random_mask(gen, d.shape, density)).sum(dtype=torch.float64))
    return before / after if before >= 1e-7 and after >= 1e-7 else 1.0


def _gta(consensus: str | None, sparsify: str | None):
    """Generalized task arithmetic: task_arithmetic, ties, dare_linear, dare_ties."""

    def run(job: TensorJob, p: dict[str, Any], per: list[dict[str, Any]]) -> Iterator[torch.Tensor]:
        others = [i for i in range(job.n_inputs) if i != job.base]
        weights = [float(per[i]["weight"]) for i in others]
        dens = [float(per[i]["density"]) for i in others]
        for d in dens:
            if sparsify and not 0 <= d <= 1:
                raise ConfigError(f"density must be in [0, 1], got {d} for {job.name}")
        prep: list[tuple[str, Any, float]] = []  # (mode, TopK or None, scale) per non-base model
        for i, d in zip(others, dens, strict=True):
            if not sparsify or d >= 1:
                prep.append(("keep", None, 1.0))
            elif d <= 0:
                prep.append(("zero", None, 0.0))
            elif sparsify == "magnitude":
                topk = _magnitude_stats(job, i, d, p["rescale"], p["tie_break"])
                prep.append(("magnitude", topk, topk.scale))
            else:
                prep.append(("random", None, _random_scale(job, i, d, p["rescale"], p["rescale_by"])))
        gens = {k: job.generator(i) for k, i in enumerate(others) if prep[k][0] == "random"}
        row = math.prod(job.shape[1:]) if job.shape else 1
        for r0, r1 in job.chunks:
            base = job.read(job.base, r0, r1)
            deltas = torch.empty((len(others), *base.shape), dtype=base.dtype)
            for k, i in enumerate(others):
                mode, topk, scale = prep[k]
                d = job.read(i, r0, r1) - base
                if mode == "zero":
                    d.zero_()
                elif mode == "magnitude":
                    mags = d.abs().float() if p["tie_break"] == "mergekit" else d.abs()
                    d = d * topk.mask(mags, r0 * row)
                elif mode == "random":
                    d = d * _random_mask(gens[k], d.shape, dens[k])
                if scale != 1.0:
                    d *= scale
                deltas[k] = d
            if not others:
                yield base
                continue
            yield base + combine_deltas(deltas, weights, consensus=consensus, normalize=p["normalize"],
                                        lam=float(p["lambda"]))

    return run


_GTA_SHARED = {"lambda": 1.0, "rescale_by": "l1"}
register(Method("linear", _linear, needs_base=False, shared={"normalize": True}, per_model={"weight": 1.0},
                min_inputs=1, description="weighted average of the models (Wortsman et al. 2022)"))
register(Method("slerp", _slerp, needs_base=True, shared={"t": REQUIRED}, per_model={}, min_inputs=2,
                max_inputs=2, description="spherical interpolation between base (t=0) and the other (t=1)"))
register(Method("task_arithmetic", _gta(None, None), needs_base=True,
                shared={**_GTA_SHARED, "normalize": False, "rescale": False},
                per_model={"weight": 1.0, "density": 1.0},
                description="base + sum of weighted task vectors (Ilharco et al. 2023)"))
register(Method("ties", _gta("sum", "magnitude"), needs_base=True,
                shared={**_GTA_SHARED, "normalize": True, "rescale": False, "tie_break": "position"},
                per_model={"weight": 1.0, "density": 1.0},
                description="trim by magnitude, elect sign, disjoint merge (Yadav et al. 2023)"))
register(Method("dare_linear", _gta(None, "random"), needs_base=True,
                shared={**_GTA_SHARED, "normalize": False, "rescale": True},
                per_model={"weight": 1.0, "density": 1.0},
                description="random drop and rescale of task vectors, then sum (Yu et al. 2023)"))
register(Method("dare_ties", _gta("sum", "random"), needs_base=True,
                shared={**_GTA_SHARED, "normalize": False, "rescale": True},
                per_model={"weight": 1.0, "density": 1.0},
                description="DARE drop and rescale, then TIES sign election (as in Aloe)"))
