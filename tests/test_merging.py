"""Merging on tiny random models: closed-form results, every method, gradients, sharding, errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import meditune.merging.merge as merge_mod
from meditune.errors import ConfigError, InputError
from meditune.merging.config import evaluate, parse_merge_config
from meditune.merging.io import SafetensorsModel
from meditune.merging.merge import layer_position, run_merge
from meditune.merging.methods import METHODS, TensorJob, slerp_coefficients
from meditune.merging.sparsify import MagnitudeTrim, TopK


def load_dir(d: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) output directory."""
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def variant(src: Path, dst: Path, seed: int, scale: float = 0.01, only: str | None = None) -> Path:
    """A copy of `src` with seeded Gaussian noise on its tensors (those whose name contains `only`)."""
    shutil.copytree(src, dst, dirs_exist_ok=True)
    sd = load_file(src / "model.safetensors")
    g = torch.Generator().manual_seed(seed)
    sd = {k: v + scale * torch.randn(v.shape, generator=g) if only is None or only in k else v
          for k, v in sd.items()}
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory, default_model_dir) -> Path:
    """A 2-layer random Llama with a 1024-row embedding (merges in well under a second) and a real tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("small-model")
    cfg = LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def trio(small_model_dir, tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("trio")
    return small_model_dir, variant(small_model_dir, root / "b", 1), variant(small_model_dir, root / "c", 2)


def merge(tmp_path: Path, cfg: dict, name: str = "out", **kw) -> tuple[Path, dict]:
    out = tmp_path / name
    summary = run_merge(parse_merge_config(cfg), out, **kw)
    return out, summary


def test_linear_three_models_closed_form(trio, tmp_path):
    a, b, c = trio
    cfg = {"merge_method": "linear", "models": [
        {"model": str(a), "parameters": {"weight": 1.0}}, {"model": str(b), "parameters": {"weight": 2.0}},
        {"model": str(c), "parameters": {"weight": 3.0}}]}
    out, summary = merge(tmp_path, cfg)
    A, B, C, M = load_dir(a), load_dir(b), load_dir(c), load_dir(out)
    assert set(M) == set(A) and summary["tensors"] == len(A)
    for k in A:
        torch.testing.assert_close(M[k], (A[k] + 2 * B[k] + 3 * C[k]) / 6, rtol=0, atol=1e-6)
    # unnormalized: the plain weighted sum
    cfg["parameters"] = {"normalize": False}
    out2, _ = merge(tmp_path, cfg, "out2")
    k = "model.layers.1.mlp.down_proj.weight"
    torch.testing.assert_close(load_dir(out2)[k], A[k] + 2 * B[k] + 3 * C[k], rtol=0, atol=1e-6)
    # tokenizer and chat template come along; config is the reference's
    assert (out / "tokenizer.json").exists() and (out / "chat_template.jinja").exists()
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2


def test_task_arithmetic_three_models_closed_form(trio, tmp_path):
    a, b, c = trio
    cfg = {"merge_method": "task_arithmetic", "base_model": str(a), "parameters": {"lambda": 0.8},
           "models": [{"model": str(b), "parameters": {"weight": 0.5}},
                      {"model": str(c), "parameters": {"weight": -0.25}}]}
    out, summary = merge(tmp_path, cfg)
    A, B, C, M = load_dir(a), load_dir(b), load_dir(c), load_dir(out)
    assert summary["base_model"] == str(a)
    for k in A:
        expected = A[k] + 0.8 * (0.5 * (B[k] - A[k]) - 0.25 * (C[k] - A[k]))
        torch.testing.assert_close(M[k], expected, rtol=0, atol=1e-6)


def reference_ties(base, others, weights, densities):
    """TIES written out plainly (top-k by sort, weighted sign election, disjoint mean) for comparison."""
    deltas = []
    for x, w, d in zip(others, weights, densities, strict=True):
        delta = (x - base).reshape(-1)
        k = max(1, int(d * delta.numel()))
        keep = torch.zeros_like(delta)
        keep[torch.argsort(delta.abs(), descending=True)[:k]] = 1
        deltas.append((delta * keep * w).reshape(base.shape))
    deltas = torch.stack(deltas)
    sign = torch.where(deltas.sum(0) >= 0, 1.0, -1.0)
    agree = (deltas.sign() == sign).float()
    w = torch.tensor(weights).reshape(-1, *[1] * base.dim())
    divisor = (w * agree).sum(0)
    divisor[divisor == 0] = 1
    return base + (deltas * agree).sum(0) / divisor


def test_ties_matches_plain_reference(trio, tmp_path):
    a, b, c = trio
    cfg = {"merge_method": "ties", "base_model": str(a), "models": [
        {"model": str(b), "parameters": {"weight": 1.0, "density": 0.4}},
        {"model": str(c), "parameters": {"weight": 0.6, "density": 0.7}}]}
    out, _ = merge(tmp_path, cfg)
    A, B, C, M = load_dir(a), load_dir(b), load_dir(c), load_dir(out)
    for k in A:
        torch.testing.assert_close(M[k], reference_ties(A[k], [B[k], C[k]], [1.0, 0.6], [0.4, 0.7]),
                                   rtol=0, atol=1e-6)


def test_slerp_endpoints_and_angle(trio, tmp_path):
    a, b, _ = trio
    A, B = load_dir(a), load_dir(b)
    for t in (0.0, 1.0):
        out, _ = merge(tmp_path, {"merge_method": "slerp", "base_model": str(a), "models": [str(a), str(b)],
                                  "parameters": {"t": t}}, f"t{t}")
        M = load_dir(out)
        for k in A:
            torch.testing.assert_close(M[k], A[k] if t == 0 else B[k], rtol=0, atol=1e-5)
    out, _ = merge(tmp_path, {"merge_method": "slerp", "base_model": str(a), "models": [str(b)],
                              "parameters": {"t": 0.5}}, "mid")
    k = "model.layers.0.self_attn.q_proj.weight"
    o, x, y = load_dir(out)[k].double(), A[k].double(), B[k].double()
    theta = torch.acos(torch.dot(x.flatten() / x.norm(), y.flatten() / y.norm()))
    expected = (torch.sin(0.5 * theta) * x + torch.sin(0.5 * theta) * y) / torch.sin(theta)
    torch.testing.assert_close(o, expected, rtol=0, atol=1e-6)


def test_slerp_coefficients_collinear_fall_back_to_linear():
    assert slerp_coefficients(0.25, 4.0, 16.0, 8.0) == (0.75, 0.25)  # b = 2a: collinear
    ca, cb = slerp_coefficients(0.5, 1.0, 1.0, 0.0)  # orthogonal unit vectors
    assert math.isclose(ca, math.sqrt(0.5)) and math.isclose(cb, math.sqrt(0.5))


def test_dare_statistics_and_seeding(trio, tmp_path):
    a, b, _ = trio
    A, B = load_dir(a), load_dir(b)
    k = "model.embed_tokens.weight"
    delta = B[k] - A[k]
    for rescale_by in ("l1", "density"):
        cfg = {"merge_method": "dare_linear", "base_model": str(a), "seed": 7,
               "parameters": {"rescale_by": rescale_by},
               "models": [{"model": str(b), "parameters": {"weight": 1.0, "density": 0.3}}]}
        out, _ = merge(tmp_path, cfg, f"dare-{rescale_by}")
        got = load_dir(out)[k] - A[k]
        kept = got.abs() > 1e-9
        assert abs(kept.float().mean().item() - 0.3) < 0.01  # drop rate ~ 1 - density
        ratio = (got[kept] / delta[kept]).median().item()
        assert abs(ratio - 1 / 0.3) < (0.05 if rescale_by == "l1" else 1e-3)  # rescaled by ~1/density
    again, _ = merge(tmp_path, cfg, "dare-again")
    assert torch.equal(load_dir(again)[k], load_dir(tmp_path / "dare-density")[k])  # same seed, same masks
    cfg["seed"] = 8
    other, _ = merge(tmp_path, cfg, "dare-seed8")
    assert not torch.equal(load_dir(other)[k], load_dir(again)[k])


def test_dare_ties_runs_and_density_one_is_ties_without_trim(trio, tmp_path):
    a, b, c = trio
    base = {"base_model": str(a), "models": [{"model": str(b), "parameters": {"weight": 1.0}},
                                             {"model": str(c), "parameters": {"weight": 1.0}}]}
    d1, _ = merge(tmp_path, {"merge_method": "dare_ties", **base}, "d1")
    t1, _ = merge(tmp_path, {"merge_method": "ties", "parameters": {"normalize": False}, **base}, "t1")
    for k, v in load_dir(d1).items():
        torch.testing.assert_close(v, load_dir(t1)[k], rtol=0, atol=1e-6)


def test_every_registered_method_runs(trio, tmp_path):
    a, b, c = trio
    given = {"slerp": {"t": 0.5}, "nuslerp": {"weight": 0.5}}  # their required parameters
    for name in METHODS:
        models = [str(b)] if name == "slerp" else [str(b), str(c)]
        cfg = {"merge_method": name, "base_model": str(a), "models": models, "parameters": given.get(name, {})}
        out, _ = merge(tmp_path, cfg, name)
        assert all(torch.isfinite(v).all() for v in load_dir(out).values())


def test_chunked_equals_whole_tensor(trio, tmp_path, monkeypatch):
    a, b, c = trio
    cfgs = {
        "ties": {"models": [{"model": str(b), "parameters": {"density": 0.3}},
                            {"model": str(c), "parameters": {"density": 0.6}}], "parameters": {"rescale": True}},
        "slerp": {"models": [str(b)], "parameters": {"t": 0.3}},
        "dare_ties": {"models": [{"model": str(b), "parameters": {"density": 0.5}}, str(c)]},
        "breadcrumbs_ties": {"models": [{"model": str(b), "parameters": {"density": 0.5, "gamma": 0.1}},
                                        {"model": str(c), "parameters": {"density": 0.3}}],
                             "parameters": {"rescale": True}},
        "model_stock": {"models": [str(b), str(c)]},
        "nuslerp": {"models": [{"model": str(b), "parameters": {"weight": 0.3}},
                               {"model": str(c), "parameters": {"weight": 0.6}}],
                    "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True}},
    }
    for name, extra in cfgs.items():
        cfg = {"merge_method": name, "base_model": str(a), "seed": 3, **extra}
        whole, _ = merge(tmp_path, cfg, f"{name}-whole")
        monkeypatch.setattr(merge_mod, "CHUNK_ELEMENTS", 1000)
        chunked, _ = merge(tmp_path, cfg, f"{name}-chunked")
        monkeypatch.setattr(merge_mod, "CHUNK_ELEMENTS", 1 << 22)
        W, C = load_dir(whole), load_dir(chunked)
        for k in W:
            if name == "dare_ties" and W[k].dim() == 2 and W[k].numel() > 1000:
                continue  # random masks are drawn per chunk: statistically, not bitwise, the same
            torch.testing.assert_close(C[k], W[k], rtol=0, atol=1e-6)


def test_parameter_gradients_and_filters(trio, tmp_path):
    a, b, _ = trio
    assert evaluate([0.0, 1.0], "x", 0.5) == 0.5
    assert evaluate([0.0, 0.5, 1.0, 0.0], "x", 1 / 3) == pytest.approx(0.5)
    assert layer_position("model.layers.1.mlp.up_proj.weight", 2) == 1.0
    assert layer_position("model.embed_tokens.weight", 2) == 0.0
    cfg = parse_merge_config({"merge_method": "task_arithmetic", "base_model": str(a), "models": [
        {"model": str(b), "parameters": {"weight": [{"filter": "mlp", "value": 0.0}, {"value": [0.0, 1.0]}]}}]})
    out = tmp_path / "grad"
    run_merge(cfg, out)
    A, B, M = load_dir(a), load_dir(b), load_dir(out)
    for k in A:
        if "mlp" in k or "layers.0." in k or "layers" not in k:  # filtered out, layer 0 (t=0), or non-layer
            torch.testing.assert_close(M[k], A[k], rtol=0, atol=1e-7)
        else:  # layer 1 of 2: t = 1, weight 1
            torch.testing.assert_close(M[k], B[k], rtol=0, atol=1e-6)


def _magnitude_stats(job: TensorJob, i: int, density: float, rescale: bool, tie_break: str = "position") -> TopK:
    return MagnitudeTrim(job, i, density, rescale, tie_break).topk


def _job_over(base: torch.Tensor, other: torch.Tensor, chunk_rows: int) -> TensorJob:
    chunks = [(r, min(base.shape[0], r + chunk_rows)) for r in range(0, base.shape[0], chunk_rows)]
    return TensorJob("t", tuple(base.shape), chunks, lambda i, a, b: (base, other)[i][a:b].clone(), 2, 0)


def _trim_mask(topk, mags: torch.Tensor, chunks: list[tuple[int, int]]) -> torch.Tensor:
    row = math.prod(mags.shape[1:])
    return torch.cat([topk.mask(mags[r0:r1], r0 * row) for r0, r1 in chunks])


def _tied_magnitudes(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    other = torch.randn(1000, 300, generator=g).abs()
    other[:, :100] = 0.5  # 100k entries tie at one value
    return other


@pytest.mark.parametrize("chunk_rows", [7, 1000])
def test_magnitude_trim_keeps_exactly_k_with_ties_by_position(chunk_rows):
    base, other = torch.zeros(1000, 300), _tied_magnitudes()
    for density, expect_ties in ((0.05, False), (0.6, True), (0.9, False)):
        k = int(density * other.numel())
        job = _job_over(base, other, chunk_rows)
        topk = _magnitude_stats(job, 1, density, rescale=True)
        assert topk.threshold == torch.sort(other.reshape(-1), descending=True).values[k - 1].item()
        assert topk.tied == int((other == topk.threshold).sum())
        keep = _trim_mask(topk, other, job.chunks)
        assert int(keep.sum()) == k and (topk.tied > 1) == expect_ties
        if expect_ties:  # the tied entries kept are the first ones in row-major order
            tied = (other == topk.threshold).reshape(-1).nonzero().squeeze(1)
            assert keep.reshape(-1)[tied[: topk.ties]].all() and not keep.reshape(-1)[tied[topk.ties:]].any()
        kept_l1 = float((other * keep).sum(dtype=torch.float64))
        assert topk.scale == pytest.approx(float(other.sum(dtype=torch.float64)) / kept_l1, rel=1e-9)
    # an unchanged tensor (all-zero task vector): every entry ties at 0, exactly k are kept
    topk = _magnitude_stats(_job_over(base, base, chunk_rows), 1, 0.3, rescale=False)
    assert topk.threshold == 0.0 and topk.ties == int(0.3 * base.numel())


@pytest.mark.parametrize("chunk_rows", [7, 1000])
def test_magnitude_trim_mergekit_tie_break_is_argsorts_top_k(chunk_rows):
    """tie_break: mergekit keeps exactly the entries of mergekit's `torch.argsort(w, descending=True)[:k]`."""
    base, other = torch.zeros(1000, 300), _tied_magnitudes()
    other[::3] *= -1  # magnitudes, not values, are ranked
    for density in (0.05, 0.6, 0.9):
        k = int(density * other.numel())
        reference = torch.zeros(other.numel(), dtype=torch.bool)
        reference[torch.argsort(other.abs().reshape(-1), descending=True)[:k]] = True
        job = _job_over(base, other, chunk_rows)
        topk = _magnitude_stats(job, 1, density, rescale=True, tie_break="mergekit")
        assert (topk.tied_kept is not None) == (density == 0.6)  # sorted only when the k-th value is tied
        keep = _trim_mask(topk, other.abs(), job.chunks)
        assert torch.equal(keep.reshape(-1), reference)
        position = _trim_mask(_magnitude_stats(job, 1, density, rescale=True), other.abs(), job.chunks)
        assert torch.equal(position, keep) == (density != 0.6)  # the two tie-breaks differ only at ties
    sparsify = pytest.importorskip("mergekit.sparsify")
    topk = _magnitude_stats(_job_over(base, other, chunk_rows), 1, 0.6, rescale=False, tie_break="mergekit")
    theirs = sparsify.magnitude(other.clone(), 0.6) != 0
    assert torch.equal(_trim_mask(topk, other.abs(), _job_over(base, other, chunk_rows).chunks), theirs)
    with pytest.raises(ConfigError, match="tie_break must be one of"):
        _magnitude_stats(_job_over(base, other, chunk_rows), 1, 0.6, rescale=False, tie_break="first")


def test_torch_argsort_tie_order_is_deterministic_across_threads():
    """The mergekit tie-break relies on torch's unstable CPU sort choosing the same ties for the same input."""
    w = (torch.randint(0, 50, (300_000,), generator=torch.Generator().manual_seed(1)) * 0.01).float()
    threads = torch.get_num_threads()
    try:
        picks = []
        for n in (1, 2, 4, 1):
            torch.set_num_threads(n)
            picks.append(torch.argsort(w, descending=True)[:150_000].sort().values)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(p, picks[0]) for p in picks)
    stable = torch.argsort(w, descending=True, stable=True)[:150_000].sort().values
    assert not torch.equal(stable, picks[0])  # unstable indeed: a position tie-break would not reproduce it


@pytest.fixture(scope="module")
def tied_trio(small_model_dir, tmp_path_factory) -> tuple[Path, Path, Path]:
    """Variants whose task vectors take few distinct values, so magnitude trims tie at their threshold."""
    root = tmp_path_factory.mktemp("tied-trio")
    sd = load_file(small_model_dir / "model.safetensors")
    out = [small_model_dir]
    for label, seed in (("b", 1), ("c", 2)):
        g = torch.Generator().manual_seed(seed)
        d = shutil.copytree(small_model_dir, root / label)
        save_file({k: v + 0.01 * torch.randint(-3, 4, v.shape, generator=g).float() for k, v in sd.items()},
                  d / "model.safetensors", metadata={"format": "pt"})
        out.append(d)
    return tuple(out)


def test_ties_mergekit_tie_break_matches_argsort_reference(tied_trio, tmp_path, monkeypatch):
    a, b, c = tied_trio
    cfg = {"merge_method": "ties", "base_model": str(a), "models": [
        {"model": str(b), "parameters": {"weight": 1.0, "density": 0.4}},
        {"model": str(c), "parameters": {"weight": 0.6, "density": 0.7}}]}
    A, B, C = load_dir(a), load_dir(b), load_dir(c)
    monkeypatch.setattr(merge_mod, "CHUNK_ELEMENTS", 5000)  # several chunks per tensor
    exact, _ = merge(tmp_path, {**cfg, "parameters": {"tie_break": "mergekit"}}, "exact")
    default, _ = merge(tmp_path, cfg, "default")
    E, D = load_dir(exact), load_dir(default)
    n_differ = 0
    for k in A:
        ref = reference_ties(A[k], [B[k], C[k]], [1.0, 0.6], [0.4, 0.7])
        torch.testing.assert_close(E[k], ref, rtol=0, atol=1e-6)
        n_differ += int(((D[k] - ref).abs() > 1e-6).sum())
    assert n_differ > 0  # the position tie-break keeps other tied entries than argsort does


def test_sharded_output_loads_with_transformers(trio, tmp_path):
    from transformers import AutoModelForCausalLM

    a, b, _ = trio
    cfg = {"merge_method": "linear", "models": [str(a), str(b)], "shard_size": "50KB", "out_dtype": "bfloat16"}
    out, summary = merge(tmp_path, cfg)
    assert summary["shards"] > 2
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in out.glob("*.safetensors")}
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    A, B = load_dir(a), load_dir(b)
    k = "model.layers.0.self_attn.k_proj.weight"
    got = dict(model.named_parameters())[k]
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ((A[k] + B[k]) / 2).bfloat16().float())
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_resume_keeps_finished_shards(trio, tmp_path):
    a, b, _ = trio
    cfg = {"merge_method": "linear", "models": [str(a), str(b)], "shard_size": "50KB"}
    calls = {"n": 0}
    real = METHODS["linear"].run

    def flaky(job, p, per):
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt  # killed mid-merge
        yield from real(job, p, per)

    object.__setattr__(METHODS["linear"], "run", flaky)
    try:
        with pytest.raises(KeyboardInterrupt):
            merge(tmp_path, cfg)
        partial = tmp_path / "out.partial"
        finished = sorted(p.name for p in partial.glob("model-*.safetensors"))
        assert finished and not (tmp_path / "out").exists()
        calls["n"] = -10_000
        out, _ = merge(tmp_path, cfg)
        assert 0 < calls["n"] - (-10_000) < 20  # tensors of finished shards were not merged again
    finally:
        object.__setattr__(METHODS["linear"], "run", real)
    A, B, M = load_dir(a), load_dir(b), load_dir(out)
    for k in A:
        torch.testing.assert_close(M[k], (A[k] + B[k]) / 2, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- validation errors

def _edit_config(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst, dirs_exist_ok=True)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_shape_mismatch_names_the_tensor(trio, tmp_path):
    a, b, _ = trio
    bad = variant(a, tmp_path / "bad", 3)
    sd = load_file(bad / "model.safetensors")
    sd["model.layers.1.mlp.up_proj.weight"] = torch.zeros(96, 64)
    save_file(sd, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"shape mismatch on tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        merge(tmp_path, {"merge_method": "linear", "models": [str(a), str(bad)]})


def test_missing_tensor_and_architecture_mismatch(trio, tmp_path):
    a, _, _ = trio
    short = variant(a, tmp_path / "short", 3)
    sd = load_file(short / "model.safetensors")
    del sd["model.layers.1.input_layernorm.weight"]
    save_file(sd, short / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match="model.layers.1.input_layernorm.weight' is missing"):
        merge(tmp_path, {"merge_method": "linear", "models": [str(a), str(short)]})
    other = _edit_config(a, tmp_path / "mistral", model_type="mistral", architectures=["MistralForCausalLM"])
    with pytest.raises(ConfigError, match="architecture mismatch.*model_type"):
        merge(tmp_path, {"merge_method": "linear", "models": [str(a), str(other)]})


def test_vocab_mismatch_is_an_error_or_resized(trio, tmp_path):
    a, b, _ = trio
    big = _edit_config(b, tmp_path / "big", vocab_size=1032)
    sd = load_file(big / "model.safetensors")
    extra = torch.full((8, 64), 0.5)
    sd["model.embed_tokens.weight"] = torch.cat([sd["model.embed_tokens.weight"], extra])
    save_file(sd, big / "model.safetensors", metadata={"format": "pt"})
    cfg = {"merge_method": "linear", "models": [str(a), str(big)]}
    with pytest.raises(InputError, match="vocabulary size mismatch.*resize_vocab"):
        merge(tmp_path, cfg)
    out, summary = merge(tmp_path, {**cfg, "resize_vocab": True, "tokenizer_source": str(big)})
    M, A, B = load_dir(out), load_dir(a), load_dir(big)
    k = "model.embed_tokens.weight"
    assert M[k].shape == (1032, 64) and summary["resized_vocab"] == [k]
    torch.testing.assert_close(M[k][:1024], (A[k] + B[k][:1024]) / 2, rtol=0, atol=1e-6)
    torch.testing.assert_close(M[k][1024:], extra)  # rows only the big model has: taken from it
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 1032
    # truncating to the smaller tokenizer's vocabulary
    out2, _ = merge(tmp_path, {**cfg, "resize_vocab": True, "tokenizer_source": str(a)}, "small")
    assert load_dir(out2)[k].shape == (1024, 64)
    # tokenizers that disagree on a shared id cannot be resized by padding
    tok = json.loads((big / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    t1, t2 = (t for t, i in vocab.items() if i in (500, 501))
    vocab[t1], vocab[t2] = vocab[t2], vocab[t1]
    (big / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(InputError, match="disagree at id 500"):
        merge(tmp_path, {**cfg, "resize_vocab": True, "tokenizer_source": str(big)}, "swapped")


def test_config_errors(trio, tmp_path):
    a, b, _ = trio
    with pytest.raises(ConfigError, match="unknown merge_method 'tie'"):
        merge(tmp_path, {"merge_method": "tie", "base_model": str(a), "models": [str(b)]})
    with pytest.raises(ConfigError, match="needs a base_model"):
        merge(tmp_path, {"merge_method": "ties", "models": [str(b)]})
    with pytest.raises(ConfigError, match="unknown parameter 'densty'"):
        merge(tmp_path, {"merge_method": "ties", "base_model": str(a),
                         "models": [{"model": str(b), "parameters": {"densty": 0.5}}]})
    with pytest.raises(ConfigError, match="'tie_break' must be one of"):
        merge(tmp_path, {"merge_method": "ties", "base_model": str(a), "parameters": {"tie_break": "first"},
                         "models": [{"model": str(b), "parameters": {"density": 0.5}}]})
    with pytest.raises(ConfigError, match="'t' is required"):
        merge(tmp_path, {"merge_method": "slerp", "base_model": str(a), "models": [str(b)]})
    with pytest.raises(ConfigError, match="exactly 2"):
        merge(tmp_path, {"merge_method": "slerp", "base_model": str(a), "models": [str(b), str(b) + "/"],
                         "parameters": {"t": 0.5}})
    with pytest.raises(ConfigError, match="unknown key 'modles'; did you mean 'models'"):
        parse_merge_config({"merge_method": "linear", "modles": []})


def test_new_methods_config_errors_name_the_key_before_writing(trio, tmp_path):
    a, b, c = trio

    def fails(cfg: dict, match: str) -> None:
        with pytest.raises(ConfigError, match=match):
            merge(tmp_path, cfg, "bad")
        assert not (tmp_path / "bad").exists() and not list((tmp_path / "bad.partial").glob("model*"))

    for name in ("della", "della_linear", "breadcrumbs", "breadcrumbs_ties", "model_stock"):
        fails({"merge_method": name, "models": [str(b), str(c)]}, f"^{name} needs a base_model")
    fails({"merge_method": "della", "base_model": str(a), "models": [
        str(b), {"model": str(c), "parameters": {"density": 1.5}}]},
        r"della: 'density' must be in \[0, 1\], got 1.5 \(model .*/c, tensor ")
    fails({"merge_method": "della_linear", "base_model": str(a), "models": [str(b)],
           "parameters": {"density": 0.8, "epsilon": 0.3}}, "'epsilon' 0.3 with 'density' 0.8")
    fails({"merge_method": "della", "base_model": str(a), "models": [str(b)],  # a gradient: bad in one layer
           "parameters": {"density": [0.5, 0.1], "epsilon": 0.15}}, r"'epsilon' 0.15 with 'density' 0.1: .*layers\.1")
    fails({"merge_method": "breadcrumbs", "base_model": str(a), "models": [str(b)],
           "parameters": {"density": 0.5, "gamma": -0.1}}, "'gamma' must be in")
    fails({"merge_method": "nuslerp", "models": [{"model": str(b), "parameters": {"weight": 1.0}}, str(c)]},
          "nuslerp: parameter 'weight' is required for every model but the base .*/c")
    fails({"merge_method": "nuslerp", "models": [str(a), str(b), str(c)], "parameters": {"weight": 1.0}},
          "nuslerp needs exactly 2 models besides the base; got 3")
    fails({"merge_method": "model_stock", "base_model": str(a), "models": [str(b)]}, "at least 3 models")
    fails({"merge_method": "della", "base_model": str(a), "models": [str(b)], "parameters": {"gama": 0.1}},
          "unknown parameter 'gama'")


def test_nuslerp_base_is_optional(trio, tmp_path):
    from meditune.merging.methods import nuslerp_coefficients

    a, b, c = trio
    models = [{"model": str(b), "parameters": {"weight": 1.0}}, {"model": str(c), "parameters": {"weight": 3.0}}]
    plain, summary = merge(tmp_path, {"merge_method": "nuslerp", "models": models}, "plain")
    assert summary["base_model"] is None
    based, _ = merge(tmp_path, {"merge_method": "nuslerp", "base_model": str(a), "models": models}, "based")
    A, B, C = load_dir(a), load_dir(b), load_dir(c)
    k = "model.layers.0.mlp.up_proj.weight"
    for out, x, y, shift in ((plain, B[k], C[k], 0), (based, B[k] - A[k], C[k] - A[k], A[k])):
        xd, yd = x.double(), y.double()
        ca, cb = nuslerp_coefficients(0.75, (xd * xd).sum(), (yd * yd).sum(), (xd * yd).sum())
        torch.testing.assert_close(load_dir(out)[k], shift + float(ca) * x + float(cb) * y, rtol=0, atol=1e-6)


def test_lazy_reader_reads_row_ranges(trio):
    a, _, _ = trio
    m = SafetensorsModel(a)
    full = load_file(a / "model.safetensors")["model.embed_tokens.weight"]
    assert torch.equal(m.read_rows("model.embed_tokens.weight", 100, 130), full[100:130])
