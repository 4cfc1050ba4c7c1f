"""Merge methods: a registry of small functions over tensors, matching mergekit 0.1.5's math.

A method gets a TensorJob (lazy, row-chunked access to one output tensor's inputs) and yields the output
tensor's rows chunk by chunk, so the driver can stream them to disk. Methods that need whole-tensor
statistics (SLERP's and NuSLERP's angles, Model Stock's cosines, the trims' thresholds and L1 rescales) take
them in first passes over the chunks; everything else is elementwise. The pure helpers (linear_combine,
slerp_coefficients, nuslerp_coefficients, model_stock_ratio, combine_deltas) are the math, testable on plain
tensors; the task-vector trims live in sparsify.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from meditune.errors import ConfigError
from meditune.merging import sparsify
from meditune.merging.job import TensorJob

__all__ = ["METHODS", "REQUIRED", "Method", "TensorJob", "get_method", "register"]

SLERP_DOT_THRESHOLD = 0.9995  # above it the vectors are (anti)collinear: interpolate linearly
EPS = 1e-8


@dataclass(frozen=True)
class Method:
    """A merge method: its inputs contract, parameters (with defaults) and the chunk generator."""

    name: str
    run: Callable[[TensorJob, dict[str, Any], list[dict[str, Any]]], Iterator[torch.Tensor]]
    needs_base: bool
    shared: dict[str, Any]  # shared parameter -> default (REQUIRED when it must be given)
    per_model: dict[str, Any]  # per-model parameter -> default
    min_inputs: int = 1  # inputs in all, the base included
    max_inputs: int | None = None
    description: str = ""
    optional_base: bool = False  # a given base_model is used (its task vectors are merged), none is needed
    min_non_base: int = 0
    max_non_base: int | None = None
    check: Callable[[dict[str, Any], dict[str, Any]], str | None] | None = None  # (shared, one model's) -> error


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


def _trim(kind: str | None, job: TensorJob, i: int, p: dict[str, Any], q: dict[str, Any]) -> sparsify.Trim:
    """Model i's task-vector trim for one tensor (mergekit's `sparsify`, dispatching on the method)."""
    density = float(q["density"])
    if kind is None or density >= 1:
        return sparsify.Trim()
    if density <= 0:
        return sparsify.ZeroTrim()
    if kind == "magnitude":
        return sparsify.MagnitudeTrim(job, i, density, p["rescale"], p["tie_break"])
    if kind == "outliers":
        return sparsify.OutlierTrim(job, i, density, float(q["gamma"]), p["rescale"], p["tie_break"])
    if kind == "random":
        return sparsify.RandomTrim(job, i, density, p["rescale"], p["rescale_by"])
    return sparsify.DellaTrim(job, i, density, float(q["epsilon"]), p["rescale"])


def _gta(consensus: str | None, trim: str | None):
    """Generalized task arithmetic: task_arithmetic, ties, dare_*, breadcrumbs*, della* (mergekit's GTA)."""

    def run(job: TensorJob, p: dict[str, Any], per: list[dict[str, Any]]) -> Iterator[torch.Tensor]:
        others = job.others()
        if trim == "della" and len(job.shape) == 1:
            job = replace(job, chunks=[(0, job.shape[0])])  # DELLA ranks a 1-D tensor as one row
        trims = [_trim(trim, job, i, p, per[i]) for i in others]
        weights = [float(per[i]["weight"]) for i in others]
        row = math.prod(job.shape[1:]) if job.shape else 1
        for r0, r1 in job.chunks:
            base = job.read(job.base, r0, r1)
            if not others:
                yield base
                continue
            deltas = torch.empty((len(others), *base.shape), dtype=base.dtype)
            for k, i in enumerate(others):
                deltas[k] = trims[k].apply(job.read(i, r0, r1) - base, r0 * row)
            yield base + combine_deltas(deltas, weights, consensus=consensus, normalize=p["normalize"],
                                        lam=float(p["lambda"]))

    return run


def _gta_check(trim: str | None) -> Callable[[dict[str, Any], dict[str, Any]], str | None]:
    """Parameter ranges of a GTA method, checked for every tensor before anything is written."""

    def check(p: dict[str, Any], q: dict[str, Any]) -> str | None:
        if "tie_break" in p and p["tie_break"] not in sparsify.TIE_BREAKS:
            return f"'tie_break' must be one of {', '.join(sparsify.TIE_BREAKS)}, not {p['tie_break']!r}"
        if "rescale_by" in p and p["rescale_by"] not in ("l1", "density"):
            return f"'rescale_by' must be 'l1' or 'density', not {p['rescale_by']!r}"
        if trim is None:
            return None
        density = float(q["density"])
        if not 0 <= density <= 1:
            return f"'density' must be in [0, 1], got {density}"
        if trim == "outliers" and not 0 <= float(q["gamma"]) <= 1:
            return f"'gamma' must be in [0, 1], got {q['gamma']}"
        eps = float(q.get("epsilon", 0))
        if trim == "della" and 0 < density < 1 and not (density + eps < 1 and density - eps > 0):
            return (f"'epsilon' {eps} with 'density' {density}: density - epsilon and density + epsilon must "
                    "lie in (0, 1)")
        return None

    return check


NUSLERP_EPS = 1e-8  # mergekit's nuslerp: below 1 - cos^2 <= eps^2 the vectors are colinear
NORM_EPS = 1e-7  # mergekit's nuslerp normalizes by max(norm, this)


def gram(vectors: list[torch.Tensor], axis: str) -> torch.Tensor:
    """Float64 Gram matrix [n, n, ...] of the vectors' dot products over `axis`.

    "all": the whole tensors (scalars); "first": along dim 0 (one per index of the other dims); "last": along
    the last dim, kept as a size-1 dim so the result broadcasts against the rows.
    """
    x = [v.double() for v in vectors]
    n = len(x)
    dots: list[list[Any]] = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(i, n):
            prod = x[i] * x[j]
            dots[i][j] = dots[j][i] = (prod.sum() if axis == "all" else prod.sum(dim=0) if axis == "first"
                                       else prod.sum(dim=-1, keepdim=True))
    return torch.stack([torch.stack(row) for row in dots])


def _by_gram(job: TensorJob, load: Callable[[int, int], tuple[list[torch.Tensor], Any]],
             combine: Callable[[torch.Tensor, list[torch.Tensor], Any], torch.Tensor],
             axis: str) -> Iterator[torch.Tensor]:
    """Stream a method whose coefficients come from the Gram matrix of some vectors (see `gram`).

    `load(r0, r1)` gives a chunk's vectors and context, `combine(gram, vectors, context)` its output rows.
    Along the last dim every chunk holds whole vectors (one pass); otherwise a first pass sums the Gram matrix
    over the chunks.
    """
    total = None
    if axis != "last":
        for r0, r1 in job.chunks:
            part = gram(load(r0, r1)[0], axis)
            total = part if total is None else total.add_(part)
    for r0, r1 in job.chunks:
        vectors, context = load(r0, r1)
        yield combine(total if total is not None else gram(vectors, axis), vectors, context)


def nuslerp_coefficients(t: float, sumsq_a: torch.Tensor, sumsq_b: torch.Tensor,
                         dot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NuSLERP's (c_a, c_b), out = c_a a + c_b b, from squared norms and dot products (mergekit's `nuslerp`)."""
    norm_a, norm_b = sumsq_a.sqrt().clamp(min=NORM_EPS), sumsq_b.sqrt().clamp(min=NORM_EPS)
    cos = (dot / (norm_a * norm_b)).clamp(-1, 1)
    colinear = (1 - cos.square()) <= NUSLERP_EPS**2
    theta = torch.acos(torch.where(colinear, 0.0, cos))
    sin = torch.sin(theta)
    return (torch.where(colinear, 1 - t, torch.sin((1 - t) * theta) / sin),
            torch.where(colinear, t, torch.sin(t * theta) / sin))


def _nuslerp(job: TensorJob, p: dict[str, Any], per: list[dict[str, Any]]) -> Iterator[torch.Tensor]:
    a, b = job.others()
    total = float(per[a]["weight"]) + float(per[b]["weight"])
    t = 0.5 if abs(total) < 1e-6 else float(per[b]["weight"]) / total
    axis = ("all" if p["nuslerp_flatten"] or len(job.shape) < 2 else
            "first" if p["nuslerp_row_wise"] else "last")

    def load(r0: int, r1: int) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        x, y = job.read(a, r0, r1), job.read(b, r0, r1)
        if job.base is None:
            return [x, y], None
        base = job.read(job.base, r0, r1)
        return [x.sub_(base), y.sub_(base)], base  # with a base, the task vectors are interpolated

    def combine(g: torch.Tensor, v: list[torch.Tensor], base: torch.Tensor | None) -> torch.Tensor:
        ca, cb = nuslerp_coefficients(t, g[0, 0], g[1, 1], g[0, 1])
        out = v[0] * ca.to(v[0].dtype) + v[1] * cb.to(v[1].dtype)
        return out if base is None else base + out

    yield from _by_gram(job, load, combine, axis)


def model_stock_ratio(g: torch.Tensor) -> torch.Tensor:
    """Model Stock's interpolation ratio t = N cos / (1 + (N - 1) cos) from the task vectors' Gram matrix,
    cos the mean pairwise cosine; 0 where the denominator vanishes (mergekit's `model_stock`)."""
    n = g.shape[0]
    norms = [g[i, i].sqrt() for i in range(n)]
    cos = torch.stack([(g[i, j] / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1)
                       for i in range(n) for j in range(i + 1, n)]).mean(dim=0)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    return torch.where(singular, 0.0, n * cos / torch.where(singular, 1.0, denominator))


def _model_stock(job: TensorJob, p: dict[str, Any], per: list[dict[str, Any]]) -> Iterator[torch.Tensor]:
    others = job.others()
    axis = "last" if p["filter_wise"] and len(job.shape) >= 2 else "all"

    def load(r0: int, r1: int) -> tuple[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
        w0 = job.read(job.base, r0, r1)
        ws = [job.read(i, r0, r1) for i in others]
        return [w - w0 for w in ws], (w0, ws)

    def combine(g: torch.Tensor, _offsets: list[torch.Tensor], ctx: tuple) -> torch.Tensor:
        w0, ws = ctx
        t = model_stock_ratio(g).to(w0.dtype)
        return t * (sum(ws) / len(ws)) + (1 - t) * w0  # mergekit's expression, for the same rounding

    yield from _by_gram(job, load, combine, axis)

_GTA_SHARED = {"lambda": 1.0, "rescale_by": "l1"}
register(Method("linear", _linear, needs_base=False, shared={"normalize": True}, per_model={"weight": 1.0},
                min_inputs=1, description="weighted average of the models (Wortsman et al. 2022)"))
register(Method("slerp", _slerp, needs_base=True, shared={"t": REQUIRED}, per_model={}, min_inputs=2,
                max_inputs=2, description="spherical interpolation between base (t=0) and the other (t=1)"))
register(Method("task_arithmetic", _gta(None, None), needs_base=True,
                shared={**_GTA_SHARED, "normalize": False, "rescale": False},
                per_model={"weight": 1.0, "density": 1.0}, check=_gta_check(None),
                description="base + sum of weighted task vectors (Ilharco et al. 2023)"))
register(Method("ties", _gta("sum", "magnitude"), needs_base=True,
                shared={**_GTA_SHARED, "normalize": True, "rescale": False, "tie_break": "position"},
                per_model={"weight": 1.0, "density": 1.0}, check=_gta_check("magnitude"),
                description="trim by magnitude, elect sign, disjoint merge (Yadav et al. 2023)"))
register(Method("dare_linear", _gta(None, "random"), needs_base=True,
                shared={**_GTA_SHARED, "normalize": False, "rescale": True},
                per_model={"weight": 1.0, "density": 1.0}, check=_gta_check("random"),
                description="random drop and rescale of task vectors, then sum (Yu et al. 2023)"))
register(Method("dare_ties", _gta("sum", "random"), needs_base=True,
                shared={**_GTA_SHARED, "normalize": False, "rescale": True},
                per_model={"weight": 1.0, "density": 1.0}, check=_gta_check("random"),
                description="DARE drop and rescale, then TIES sign election (as in Aloe)"))
register(Method("breadcrumbs", _gta(None, "outliers"), needs_base=True,
                shared={"lambda": 1.0, "normalize": False, "rescale": False, "tie_break": "position"},
                per_model={"weight": 1.0, "density": 1.0, "gamma": 0.01}, check=_gta_check("outliers"),
                description="drop the largest (gamma) and smallest magnitudes, then sum (Davari & Belilovsky "
                            "2023, Model Breadcrumbs)"))
register(Method("breadcrumbs_ties", _gta("sum", "outliers"), needs_base=True,
                shared={"lambda": 1.0, "normalize": False, "rescale": False, "tie_break": "position"},
                per_model={"weight": 1.0, "density": 1.0, "gamma": 0.01}, check=_gta_check("outliers"),
                description="Model Breadcrumbs trim, then TIES sign election"))
register(Method("della", _gta("sum", "della"), needs_base=True,
                shared={"lambda": 1.0, "normalize": True, "rescale": True},
                per_model={"weight": 1.0, "density": 1.0, "epsilon": 0.15}, check=_gta_check("della"),
                description="drop with probabilities rising with magnitude rank, rescale, elect sign "
                            "(Deep et al. 2024, DELLA-Merging)"))
register(Method("della_linear", _gta(None, "della"), needs_base=True,
                shared={"lambda": 1.0, "normalize": False, "rescale": True},
                per_model={"weight": 1.0, "density": 1.0, "epsilon": 0.15}, check=_gta_check("della"),
                description="DELLA's magnitude-ranked drop and rescale, then sum"))
register(Method("model_stock", _model_stock, needs_base=True, shared={"filter_wise": False}, per_model={},
                min_inputs=3, description="base interpolated towards the models' average by the cosine of "
                                          "their task vectors (Jang et al. 2024, Model Stock)"))
register(Method("nuslerp", _nuslerp, needs_base=False, optional_base=True,
                shared={"nuslerp_flatten": True, "nuslerp_row_wise": False}, per_model={"weight": REQUIRED},
                min_non_base=2, max_non_base=2,
                description="spherical interpolation of two models (or their task vectors with a base) at "
                            "t = w2 / (w1 + w2), whole tensors, rows or columns (mergekit's NuSLERP)"))
