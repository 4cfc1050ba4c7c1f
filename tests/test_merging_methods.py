"""The merge methods on small tensors: hand-computed cases, and equality with mergekit's own functions.

Each method runs through a TensorJob split into several row chunks (as the driver streams real tensors),
while mergekit gets the whole tensors, so these also check that the streamed statistics are exact.
"""

from __future__ import annotations

import math

import pytest
import torch

import meditune.merging.sparsify as sparsify
from meditune.merging.job import TensorJob
from meditune.merging.methods import METHODS, model_stock_ratio, nuslerp_coefficients
from meditune.merging.sparsify import della_probabilities

SHAPES = [(40, 30), (50,), (6, 5, 4)]


def job_over(tensors: list[torch.Tensor], base: int | None, chunk_rows: int = 3) -> TensorJob:
    rows = tensors[0].shape[0]
    chunks = [(r, min(rows, r + chunk_rows)) for r in range(0, rows, chunk_rows)]
    return TensorJob("t", tuple(tensors[0].shape), chunks, lambda i, a, b: tensors[i][a:b].clone(),
                     len(tensors), base)


def ours(name: str, tensors: list[torch.Tensor], base: int | None, shared: dict | None = None,
         per: dict | None = None, chunk_rows: int = 3) -> torch.Tensor:
    """Our method on in-memory tensors; `per` maps input index -> that model's parameters."""
    method = METHODS[name]
    p = {**method.shared, **(shared or {})}
    values = [{**method.per_model, **(per or {}).get(i, {})} for i in range(len(tensors))]
    return torch.cat(list(method.run(job_over(tensors, base, chunk_rows), p, values)))


def theirs(name: str, tensors: list[torch.Tensor], base: int | None, shared: dict | None = None,
           per: dict | None = None) -> torch.Tensor:
    """mergekit's method on the same tensors and parameters (our defaults are mergekit's)."""
    merge_methods = pytest.importorskip("mergekit.merge_methods")
    from mergekit.merge_methods.base import TensorGroup

    ids = [f"m{i}" for i in range(len(tensors))]
    group = TensorGroup.from_tensors(tensors, ids=ids, base_index=base)
    params = dict(shared or {})
    for key, default in METHODS[name].per_model.items():
        params[key] = {ids[i]: (per or {}).get(i, {}).get(key, default) for i in range(len(tensors)) if i != base}
    (out,) = merge_methods.get(name)((group,), parameters=params)
    return out


def inputs(shape: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    """A base, two independent fine-tunes and a third close to the first (so cosines are not all ~0)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    x = base + 0.1 * torch.randn(shape, generator=g)
    y = base + 0.1 * torch.randn(shape, generator=g)
    return [base, x, y, x + 0.05 * torch.randn(shape, generator=g)]


TRIMS = {1: {"weight": 1.0, "density": 0.5, "gamma": 0.1}, 2: {"weight": 0.6, "density": 0.3, "gamma": 0.05},
         3: {"weight": 0.5, "density": 0.9}}
CASES = [
    ("model_stock", {}, {}),
    ("model_stock", {"filter_wise": True}, {}),
    ("breadcrumbs", {}, TRIMS),
    ("breadcrumbs", {"rescale": True, "lambda": 0.7}, TRIMS),
    ("breadcrumbs_ties", {}, TRIMS),
    ("breadcrumbs_ties", {"normalize": True, "rescale": True}, {**TRIMS, 1: {"density": 0.5, "gamma": 0.8}}),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("name", "shared", "per"), CASES)
def test_deterministic_methods_equal_mergekit(name, shared, per, shape):
    tensors = inputs(shape)
    torch.testing.assert_close(ours(name, tensors, 0, shared, per), theirs(name, tensors, 0, shared, per),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("shared", [{}, {"nuslerp_flatten": False},
                                    {"nuslerp_flatten": False, "nuslerp_row_wise": True}])
def test_nuslerp_equals_mergekit_with_and_without_base(shared, shape):
    base, x, y, _ = inputs(shape)
    with_base = {1: {"weight": 0.7}, 2: {"weight": 0.3}}
    torch.testing.assert_close(ours("nuslerp", [base, x, y], 0, shared, with_base),
                               theirs("nuslerp", [base, x, y], 0, shared, with_base), rtol=0, atol=1e-6)
    plain = {0: {"weight": 0.2}, 1: {"weight": 0.5}}
    torch.testing.assert_close(ours("nuslerp", [x, y], None, shared, plain),
                               theirs("nuslerp", [x, y], None, shared, plain), rtol=0, atol=1e-6)


def tied_inputs(shape: tuple[int, ...], seed: int = 1) -> list[torch.Tensor]:
    """Task vectors with 7 distinct values: magnitude ranks tie everywhere, at every trim boundary."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return [base] + [base + 0.01 * torch.randint(-3, 4, shape, generator=g).float() for _ in range(2)]


@pytest.mark.parametrize("name", ["breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize(("density", "gamma"), [(0.5, 0.1), (0.3, 0.01), (0.9, 0.2), (0.2, 0.0)])
def test_breadcrumbs_tie_break_mergekit_is_exact_where_position_differs_only_at_ties(name, density, gamma):
    tensors = tied_inputs((300, 200))
    per = {1: {"density": density, "gamma": gamma}, 2: {"weight": 0.6, "density": 0.4, "gamma": 0.05}}
    expected = theirs(name, tensors, 0, {}, per)
    torch.testing.assert_close(ours(name, tensors, 0, {"tie_break": "mergekit"}, per, chunk_rows=7), expected,
                               rtol=0, atol=0)
    differ = (ours(name, tensors, 0, {}, per, chunk_rows=7) - expected).abs() > 1e-6
    assert differ.any()  # the default keeps other tied entries than mergekit's unstable sort
    at_boundary = torch.zeros_like(differ)
    for i, q in ((1, per[1]), (2, per[2])):
        mags = (tensors[i] - tensors[0]).abs().reshape(-1)
        numel, target = mags.numel(), int(q["density"] * mags.numel())
        n_bot = max(0, numel - target - int(q["gamma"] * numel))
        ranked = mags.sort().values
        for rank in (n_bot, n_bot + target - 1):
            at_boundary |= (tensors[i] - tensors[0]).abs() == ranked[rank]
    assert not (differ & ~at_boundary).any()


def test_breadcrumbs_hand_computed():
    base = torch.zeros(10)
    delta = torch.tensor([3.0, -1, 10, 2, -7, 5, 4, -9, 6, 8])  # magnitudes 1..10
    # density 0.5, gamma 0.2: keep 5, drop the 2 largest (10, 9) and the 3 smallest (1, 2, 3)
    out = ours("breadcrumbs", [base, delta], 0, {}, {1: {"density": 0.5, "gamma": 0.2}})
    assert out.tolist() == [0, 0, 0, 0, -7, 5, 4, 0, 6, 8]
    # rescale matches the L1 norm: 55 / (4 + 5 + 6 + 7 + 8)
    out = ours("breadcrumbs", [base, delta], 0, {"rescale": True}, {1: {"density": 0.5, "gamma": 0.2}})
    torch.testing.assert_close(out, torch.tensor([0, 0, 0, 0, -7, 5, 4, 0, 6, 8]) * 55 / 30)
    # density + gamma > 1: the outlier drop shrinks so that int(density * numel) entries stay
    out = ours("breadcrumbs", [base, delta], 0, {}, {1: {"density": 0.9, "gamma": 0.5}})
    assert out.tolist() == [3, -1, 0, 2, -7, 5, 4, -9, 6, 8]


def test_model_stock_ratio_hand_computed():
    def ratio(cos: float) -> float:
        return float(model_stock_ratio(torch.tensor([[1.0, cos], [cos, 1.0]], dtype=torch.float64)))

    assert ratio(0.0) == 0.0  # orthogonal task vectors: stay at the base
    assert ratio(1.0) == 1.0  # identical: the models' average
    assert ratio(0.5) == pytest.approx(2 / 3)  # N cos / (1 + (N - 1) cos)
    assert ratio(-1.0) == 0.0  # singular denominator: the base
    base = torch.zeros(2, 2)
    a, b = torch.tensor([[1.0, 0], [0, 0]]), torch.tensor([[0.5, 0.5 * math.sqrt(3)], [0, 0]])  # cos 0.5
    out = ours("model_stock", [base, a, b], 0)
    torch.testing.assert_close(out, (a + b) / 2 * 2 / 3)
    # filter_wise: row 0 has cos 0.5, row 1 is unchanged (t = 0)
    assert torch.equal(ours("model_stock", [base, a, b], 0, {"filter_wise": True})[1], torch.zeros(2))


def test_nuslerp_hand_computed():
    f64 = torch.float64
    ca, cb = nuslerp_coefficients(0.5, torch.tensor(1.0, dtype=f64), torch.tensor(1.0, dtype=f64),
                                  torch.tensor(0.0, dtype=f64))  # orthogonal unit vectors
    assert float(ca) == pytest.approx(math.sqrt(0.5)) and float(cb) == pytest.approx(math.sqrt(0.5))
    ca, cb = nuslerp_coefficients(0.25, torch.tensor(4.0, dtype=f64), torch.tensor(16.0, dtype=f64),
                                  torch.tensor(8.0, dtype=f64))  # colinear: linear
    assert (float(ca), float(cb)) == (0.75, 0.25)
    x, y = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    # t = w_y / (w_x + w_y) = 0.5; row 0 orthogonal, row 1 colinear (per row); weights summing to 0 -> t 0.5
    for w in ({0: {"weight": 1.0}, 1: {"weight": 1.0}}, {0: {"weight": 1.0}, 1: {"weight": -1.0}}):
        rows = ours("nuslerp", [x, y], None, {"nuslerp_flatten": False}, w)
        torch.testing.assert_close(rows, torch.tensor([[math.sqrt(0.5), math.sqrt(0.5)], [1.5, 0.0]]))
    # with a base, the task vectors are interpolated
    base = torch.ones(2, 2)
    out = ours("nuslerp", [base, base + x, base + y], 0, {"nuslerp_flatten": False},
               {1: {"weight": 1.0}, 2: {"weight": 1.0}})
    torch.testing.assert_close(out, base + torch.tensor([[math.sqrt(0.5), math.sqrt(0.5)], [1.5, 0.0]]))


def test_della_probabilities_hand_computed():
    probs = della_probabilities(torch.tensor([[3.0, 1.0, 2.0], [0.1, 0.3, 0.2]]), 0.5, 0.2)
    torch.testing.assert_close(probs, torch.tensor([[0.7, 0.3, 0.5], [0.3, 0.7, 0.5]]))
    torch.testing.assert_close(della_probabilities(torch.tensor([2.0, 1.0]), 0.4, 0.1), torch.tensor([0.5, 0.3]))
    # a row of one entry has no rank spread (mergekit divides 0 by 0 there): density
    torch.testing.assert_close(della_probabilities(torch.tensor([[5.0], [1.0]]), 0.4, 0.1), torch.full((2, 1), 0.4))
    # ranks run along dim 1 for higher-rank tensors
    mags = torch.tensor([[[1.0, 9.0], [2.0, 8.0], [3.0, 7.0]]])
    torch.testing.assert_close(della_probabilities(mags, 0.5, 0.1)[0, :, 0], torch.tensor([0.4, 0.5, 0.6]))
    torch.testing.assert_close(della_probabilities(mags, 0.5, 0.1)[0, :, 1], torch.tensor([0.6, 0.5, 0.4]))


def pin_draws(monkeypatch, job: TensorJob, draws: list[torch.Tensor]) -> None:
    """Make our masks and mergekit's come from the same uniform draws (one tensor per non-base model)."""
    ours_by_seed = {job.generator(i).initial_seed(): u for i, u in zip(job.others(), draws, strict=True)}
    used: dict[int, int] = {}

    def uniform(gen: torch.Generator, shape: torch.Size) -> torch.Tensor:
        start = used.get(id(gen), 0)  # each pass uses a fresh generator and reads its chunks in order
        used[id(gen)] = start + shape.numel()
        return ours_by_seed[gen.initial_seed()].reshape(-1)[start:start + shape.numel()].reshape(shape)

    calls: list[int] = []

    def bernoulli(probs: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        calls.append(1)  # mergekit draws each model's mask once, in model order
        return (draws[len(calls) - 1].reshape(probs.shape) < probs).to(probs.dtype)

    monkeypatch.setattr(sparsify, "uniform", uniform)
    monkeypatch.setattr(torch, "bernoulli", bernoulli)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["della", "della_linear"])
@pytest.mark.parametrize("shared", [{}, {"rescale": False}, {"normalize": True, "lambda": 0.8}])
def test_della_equals_mergekit_given_the_same_draws(monkeypatch, name, shared, shape):
    pytest.importorskip("mergekit")
    tensors = inputs(shape, seed=3)[:3]
    per = {1: {"density": 0.4, "epsilon": 0.2}, 2: {"weight": 0.5, "density": 0.7}}
    g = torch.Generator().manual_seed(4)
    pin_draws(monkeypatch, job_over(tensors, 0), [torch.rand(shape, generator=g) for _ in range(2)])
    torch.testing.assert_close(ours(name, tensors, 0, shared, per), theirs(name, tensors, 0, shared, per),
                               rtol=0, atol=1e-6)


def test_della_drop_rate_follows_magnitude_rank_and_l1_rescale():
    base, x = torch.zeros(200, 500), torch.randn(200, 500, generator=torch.Generator().manual_seed(5))
    density, eps = 0.4, 0.15
    job = job_over([base, x], 0, chunk_rows=16)
    trim = sparsify.DellaTrim(job, 1, density, eps, rescale=True)
    kept = torch.cat([trim.keep(job.delta(1, r0, r1), r0) for r0, r1 in job.chunks])
    n = kept.numel()
    # overall: mean keep probability is exactly density; the variance is below the binomial one
    assert abs(kept.float().mean().item() - density) < 3.29 * math.sqrt(density * (1 - density) / n)
    # by within-row rank decile: kept fraction ~ density - eps + 2 eps (decile centre)
    ranks = x.abs().argsort(dim=1).argsort(dim=1).float() / (x.shape[1] - 1)
    for d in range(10):
        sel = (ranks >= d / 10) & (ranks < (d + 1) / 10 if d < 9 else ranks <= 1)
        p = density - eps + 2 * eps * ranks[sel].mean().item()
        assert abs(kept[sel].float().mean().item() - p) < 3.29 * math.sqrt(p * (1 - p) / int(sel.sum()))
    assert trim.scale == pytest.approx(x.abs().sum().item() / (x.abs() * kept).sum().item(), rel=1e-6)
    out = ours("della_linear", [base, x], 0, {}, {1: {"density": density, "epsilon": eps}}, chunk_rows=16)
    torch.testing.assert_close(out, x * kept * trim.scale)  # same seed, same masks: the output is these
