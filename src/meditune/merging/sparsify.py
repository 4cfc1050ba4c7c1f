"""Task-vector sparsification for the task-arithmetic family, streamed over a tensor's row chunks.

Each function returns a Trim: which entries of one model's task vector survive, and the factor the
survivors are scaled by (mergekit's `rescaled_masked_tensor` L1 matching when `rescale` is on). The math
follows mergekit 0.1.5's sparsify.py: `magnitude` (TIES), `magnitude_outliers` (Model Breadcrumbs),
`bernoulli` (DARE) and `della_magprune` (DELLA). Whole-tensor statistics (the k-th largest magnitude, the
L1 norms) are taken in passes over the chunks before the masks are applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from meditune.errors import ConfigError
from meditune.merging.job import TensorJob

TIE_BREAKS = ("position", "mergekit")
L1_EPS = 1e-7  # mergekit leaves a tensor unscaled when its L1 norm before or after masking is below this


@dataclass
class TopK:
    """Which entries are among the k largest magnitudes: |d| > threshold, plus `ties` of the `tied` equal to it.

    Exactly k entries are kept, as in mergekit (a sort's top k). Which tied entries are kept depends on
    the tie-break: "position" keeps the first ones in row-major order (streamed, no buffer); "mergekit" keeps
    the ones mergekit's sort keeps, listed in `tied_kept` (sorted flat positions).
    """

    threshold: float
    ties: int
    tied: int = 0
    scale: float = 1.0  # L1 rescale of a top-k trim (TIES with rescale)
    kept_l1: float = 0.0  # sum of the kept magnitudes
    total_l1: float = 0.0  # sum of all magnitudes
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

    def partly_tied(self) -> bool:
        """Some but not all entries at the threshold are kept (ties at zero need no choice: they add nothing)."""
        return self.threshold > 0 and 0 < self.ties < self.tied


def _check_tie_break(tie_break: str) -> None:
    if tie_break not in TIE_BREAKS:
        raise ConfigError(f"tie_break must be one of {', '.join(TIE_BREAKS)}, not {tie_break!r}")


def _magnitudes(job: TensorJob, i: int, r0: int, r1: int, tie_break: str) -> torch.Tensor:
    """|delta| of some rows; as float32 for the mergekit tie-break (mergekit sorts float32 on CPU)."""
    m = job.delta(i, r0, r1).abs()
    return m.float() if tie_break == "mergekit" else m


def top_k(job: TensorJob, i: int, k: int, tie_break: str = "position") -> TopK:
    """The k largest-|delta| entries of one model's task vector (0 <= k <= numel), found in streaming passes.

    Pass 1 takes a strided sample to bracket the k-th largest value; pass 2 counts above the bracket and
    keeps only the values inside it, so memory is the chunks in flight plus a few percent of the tensor
    (the bracket widens and pass 2 repeats in the rare case it missed). No sort, no index buffer.
    """
    _check_tie_break(tie_break)
    numel = math.prod(job.shape)
    if k <= 0 or k >= numel:
        total = sum(float(_magnitudes(job, i, r0, r1, tie_break).sum(dtype=torch.float64)) for r0, r1 in job.chunks)
        return TopK(math.inf, 0, kept_l1=0.0, total_l1=total) if k <= 0 else \
            TopK(-1.0, 0, kept_l1=total, total_l1=total)
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
    del sample
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
    ties = k - greater
    return TopK(thr, ties, tied, kept_l1=sum_greater + ties * thr, total_l1=total)


def l1_scale(before: float, after: float) -> float:
    """mergekit's L1 norm matching: before / after, or 1 when either is (near) zero."""
    return before / after if before >= L1_EPS and after >= L1_EPS else 1.0


def _sorted_magnitudes(job: TensorJob, i: int, descending: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 |delta| of the whole tensor, sorted as mergekit sorts it (values, flat indices).

    torch's CPU sort is not stable, but it is deterministic for the same input (checked: independent of the
    thread count and of the buffer's alignment), so running it on the same float32 magnitudes reproduces
    mergekit's choice among ties. Costs 20 bytes per element of this tensor (float32 magnitudes sorted in
    place, int64 indices, and 8 bytes per element that torch's sort allocates internally).
    """
    w = torch.empty(math.prod(job.shape), dtype=torch.float32)
    pos = 0
    for r0, r1 in job.chunks:
        m = _magnitudes(job, i, r0, r1, "mergekit").reshape(-1)
        w[pos:pos + m.numel()] = m
        pos += m.numel()
    idx = torch.empty(w.numel(), dtype=torch.long)
    torch.sort(w, descending=descending, out=(w, idx))  # the kernel torch.argsort/sort run: same order
    return w, idx


def _tied_positions(values: torch.Tensor, idx: torch.Tensor, start: int, thr: float) -> torch.Tensor:
    """Sorted flat positions of the entries equal to `thr` from rank `start` of a sort to its end."""
    return idx[start:][values[start:] == thr].sort().values


class Trim:
    """Keep all entries (density >= 1, or no sparsification)."""

    scale = 1.0

    def keep(self, d: torch.Tensor, start: int) -> torch.Tensor | None:
        """Keep-mask of a chunk of the task vector whose first element has flat index `start` (None: all)."""
        return None

    def apply(self, d: torch.Tensor, start: int) -> torch.Tensor:
        """The chunk masked and rescaled; chunks must come in order."""
        keep = self.keep(d, start)
        if keep is not None:
            d = d * keep
        if self.scale != 1.0:
            d *= self.scale
        return d


class ZeroTrim(Trim):
    """Drop everything (density <= 0)."""

    def apply(self, d: torch.Tensor, start: int) -> torch.Tensor:
        return d.zero_()


class MagnitudeTrim(Trim):
    """Keep the k = max(1, density * numel) largest magnitudes (TIES; mergekit `magnitude`)."""

    def __init__(self, job: TensorJob, i: int, density: float, rescale: bool, tie_break: str = "position"):
        _check_tie_break(tie_break)
        numel = math.prod(job.shape)
        k = max(1, int(density * numel))
        self.topk = top_k(job, i, k, tie_break)
        self.float_mags = tie_break == "mergekit"
        if rescale:
            self.topk.scale = l1_scale(self.topk.total_l1, self.topk.kept_l1)
        self.scale = self.topk.scale
        if tie_break == "mergekit" and self.topk.partly_tied():
            values, idx = _sorted_magnitudes(job, i, descending=True)  # mergekit: argsort(descending)[:k]
            self.topk.tied_kept = _tied_positions(values[:k], idx[:k], 0, self.topk.threshold)
            del values, idx

    def keep(self, d: torch.Tensor, start: int) -> torch.Tensor:
        return self.topk.mask(d.abs().float() if self.float_mags else d.abs(), start)


class OutlierTrim(Trim):
    """Drop the largest `gamma` and the smallest magnitudes, keeping int(density * numel) in between
    (Model Breadcrumbs; mergekit `magnitude_outliers`).

    mergekit sorts |d| ascending and keeps ranks [n_bot, n_bot + target) with n_top = int(gamma * numel)
    and n_bot = max(0, numel - target - n_top). That band is the top (numel - n_bot) minus the top
    (numel - n_bot - target): two top-k masks.
    """

    def __init__(self, job: TensorJob, i: int, density: float, gamma: float, rescale: bool,
                 tie_break: str = "position"):
        _check_tie_break(tie_break)
        numel = math.prod(job.shape)
        target = int(density * numel)
        n_bot = max(0, numel - target - int(gamma * numel))
        self.upper = top_k(job, i, numel - n_bot, tie_break)  # ranks >= n_bot
        self.outliers = top_k(job, i, numel - n_bot - target, tie_break)  # ranks >= n_bot + target
        self.float_mags = tie_break == "mergekit"
        if rescale:
            self.scale = l1_scale(self.upper.total_l1, self.upper.kept_l1 - self.outliers.kept_l1)
        if tie_break == "mergekit" and (self.upper.partly_tied() or self.outliers.partly_tied()):
            values, idx = _sorted_magnitudes(job, i, descending=False)  # mergekit: sort ascending, a band
            self.upper.tied_kept = _tied_positions(values, idx, n_bot, self.upper.threshold)
            self.outliers.tied_kept = _tied_positions(values, idx, n_bot + target, self.outliers.threshold)
            del values, idx

    def keep(self, d: torch.Tensor, start: int) -> torch.Tensor:
        mags = d.abs().float() if self.float_mags else d.abs()
        return self.upper.mask(mags, start) & ~self.outliers.mask(mags, start)


def uniform(gen: torch.Generator, shape: torch.Size) -> torch.Tensor:
    """The uniform draws random masks compare against (a seam for tests that pin the draws)."""
    return torch.rand(shape, generator=gen)


class RandomTrim(Trim):
    """Keep each entry with probability `density` (DARE; mergekit `bernoulli`), masks seeded per model.

    Rescaled by L1 norm matching (mergekit) or exactly 1/density (`rescale_by: density`, the DARE paper).
    """

    def __init__(self, job: TensorJob, i: int, density: float, rescale: bool, rescale_by: str = "l1"):
        if rescale_by not in ("l1", "density"):
            raise ConfigError(f"rescale_by must be 'l1' or 'density', not {rescale_by!r}")
        self.job, self.i, self.density = job, i, density
        self.gen = job.generator(i)
        if rescale:
            self.scale = 1.0 / density if rescale_by == "density" else self._l1_scale()
        self.gen = job.generator(i)  # the output's masks: the same draws as the L1 pass

    def probabilities(self, d: torch.Tensor) -> torch.Tensor | float:
        """Each entry's keep probability."""
        return self.density

    def keep(self, d: torch.Tensor, start: int) -> torch.Tensor:
        return uniform(self.gen, d.shape) < self.probabilities(d)

    def _l1_scale(self) -> float:
        before = after = 0.0
        for r0, r1 in self.job.chunks:
            d = self.job.delta(self.i, r0, r1)
            before += float(d.abs().sum(dtype=torch.float64))
            after += float((d.abs() * self.keep(d, r0)).sum(dtype=torch.float64))
        return l1_scale(before, after)


def della_probabilities(mags: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's keep probabilities: linear in each entry's magnitude rank along dim 1, from density - epsilon
    (smallest) to density + epsilon (largest); a 1-D tensor is one row (mergekit `della_magprune`).

    A row of one entry gets `density` (mergekit divides 0 by 0 there and fails).
    """
    x = mags if mags.dim() >= 2 else mags.unsqueeze(0)
    n = x.shape[1]
    if n == 1:
        return torch.full_like(mags, density)
    order = torch.argsort(x, dim=1)
    ranks = torch.empty_like(order)
    positions = torch.arange(n).reshape(1, n, *([1] * (x.dim() - 2))).expand_as(order)
    ranks.scatter_(1, order, positions)  # the inverse permutation: 0-based ascending ranks
    rank_norm = (ranks.to(mags.dtype) / (n - 1)).clamp(0, 1)  # mergekit: (rank - min) / (max - min)
    return ((density - epsilon) + rank_norm * 2 * epsilon).reshape(mags.shape)


class DellaTrim(RandomTrim):
    """Keep each entry with a probability that grows with its magnitude rank (DELLA's MagPrune)."""

    def __init__(self, job: TensorJob, i: int, density: float, epsilon: float, rescale: bool):
        self.epsilon = epsilon
        super().__init__(job, i, density, rescale)

    def probabilities(self, d: torch.Tensor) -> torch.Tensor:
        return della_probabilities(d.abs(), self.density, self.epsilon)
