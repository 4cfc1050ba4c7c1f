"""The MCQA engine end to end on the tiny model: results.json, samples, CIs, breakdown, resume, generative mode,
strategies, compare, bad input, CLI and the eval_mcqa stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meditune.errors import ConfigError, InputError
from meditune.evaluation.mcqa import MCQAOptions, evaluate_mcqa
from meditune.evaluation.results import compare
from meditune.evaluation.strategies import StrategyContext, register_strategy
from meditune.io import read_json, read_jsonl

SUBJECTS = ["cardiology", "pharmacology"]


def write_items(path: Path, n: int = 8, n_options: int = 4) -> Path:
    rows = []
    for i in range(n):
        rows.append({"id": f"q{i}", "question": f"Question number {i}: which option is right for patient {i}?",
                     "options": [f"option {chr(65 + j)} for case {i}" for j in range(n_options)],
                     "answer": i % n_options, "subject": SUBJECTS[i % 2]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from meditune.models import load_model

    return load_model(str(tiny_model_dir), device="cpu", dtype="float32")


def opts(data: Path, model_dir: Path, **kw) -> MCQAOptions:
    return MCQAOptions(model=str(model_dir), data=str(data), device="cpu", dtype="float32", **kw)


def test_loglik_results_and_samples(tmp_path, tiny, tiny_model_dir):
    data = write_items(tmp_path / "items.jsonl")
    paths = evaluate_mcqa(opts(data, tiny_model_dir, template="medqa", choices="full", per_token=True,
                               batch_size=3), tmp_path / "out", preloaded=tiny)
    res = read_json(paths["results"])
    samples = read_jsonl(paths["samples"])
    task = "items"
    r = res["results"][task]
    for m in ("acc", "acc_norm", "acc_per_token"):
        assert 0.0 <= r[f"{m},none"] <= 1.0
        assert r[f"{m}_ci_low,none"] <= r[f"{m},none"] <= r[f"{m}_ci_high,none"]
    for key in ("configs", "versions", "n-shot", "n-samples", "config", "task_hashes", "higher_is_better"):
        assert task in res[key] or key == "config"
    assert res["n-samples"][task] == {"original": 8, "effective": 8}
    med = res["meditune"]
    assert med["n"] == 8 and med["protocol"]["choices"] == "full" and med["truncated"] == 0
    assert set(med["breakdown"]) == set(SUBJECTS) and med["breakdown"]["cardiology"]["acc"]["n"] == 4
    assert len(samples) == 8 and [s["id"] for s in samples] == [f"q{i}" for i in range(8)]
    s = samples[0]
    assert len(s["loglik"]) == 4 and s["pred"] == max(range(4), key=lambda i: s["loglik"][i])
    assert s["metrics"]["acc"] == float(s["pred"] == s["gold"])
    assert s["continuations"][1] == " option B for case 0" and s["prompt"].endswith("Answer:")
    acc = sum(x["metrics"]["acc"] for x in samples) / 8
    assert r["acc,none"] == pytest.approx(acc)
    assert not (tmp_path / "out" / "samples.partial.jsonl").exists()


def test_resume_uses_samples_on_disk(tmp_path, tiny, tiny_model_dir):
    data = write_items(tmp_path / "items.jsonl", n=4)
    cfg = opts(data, tiny_model_dir, template="medqa")
    first = read_jsonl(evaluate_mcqa(cfg, tmp_path / "a", preloaded=tiny)["samples"])
    # Simulate a run killed after two items (and a torn third line): a shard written under the same key.
    from meditune.evaluation.strategies.direct import PARTIAL, PARTIAL_KEY, direct_run_key
    from meditune.prompts import get_template

    out = tmp_path / "b"
    out.mkdir()
    key = direct_run_key(cfg, cfg.model.spec, get_template("medqa"), "loglik")
    planted = dict(first[0], metrics={"acc": 1.0, "acc_norm": 1.0}, marker="from-disk")
    (out / PARTIAL_KEY).write_text(json.dumps({"key": key}))
    (out / PARTIAL).write_text(json.dumps(planted) + "\n" + json.dumps(first[1]) + "\n{\"torn")
    resumed = read_jsonl(evaluate_mcqa(cfg, out, preloaded=tiny)["samples"])
    assert resumed[0].get("marker") == "from-disk"  # taken from disk, not recomputed
    assert [s["id"] for s in resumed] == [s["id"] for s in first]
    assert resumed[2]["loglik"] == pytest.approx(first[2]["loglik"])
    # a shard written under other settings is discarded
    (out / PARTIAL_KEY).write_text(json.dumps({"key": "other"}))
    (out / PARTIAL).write_text(json.dumps(planted) + "\n")
    again = read_jsonl(evaluate_mcqa(cfg, out, preloaded=tiny)["samples"])
    assert "marker" not in again[0]


def test_generative_mode_counts_unparseable(tmp_path, tiny, tiny_model_dir):
    data = write_items(tmp_path / "items.jsonl", n=3, n_options=5)
    paths = evaluate_mcqa(opts(data, tiny_model_dir, template="kormedmcqa", max_new_tokens=4, batch_size=2),
                          tmp_path / "gen", preloaded=tiny)
    res = read_json(paths["results"])
    samples = read_jsonl(paths["samples"])
    assert res["configs"]["items"]["output_type"] == "generate_until"
    assert "exact_match,none" in res["results"]["items"]
    assert res["meditune"]["unparseable"] == sum(1 for s in samples if not s["parsed"])
    for s in samples:
        assert s["prompt"].endswith("정답：") and isinstance(s["response"], str)
        assert s["metrics"]["exact_match"] == float(s["pred"] == s["gold"])


def test_generative_mode_gives_plain_greedy_answers_and_shares_the_shots(tmp_path, tiny, tiny_model_dir):
    """Generative MCQA runs on the batched backend: each answer is what plain greedy decoding of its prompt gives
    (cut at the stop strings), and the k-shot prefix common to the items is prefilled once."""
    import torch

    from meditune.generation.sampling import truncate_at_stop

    model, tok = tiny
    data = write_items(tmp_path / "items.jsonl", n=6, n_options=5)
    stop = ["Q:", "zz"]
    paths = evaluate_mcqa(opts(data, tiny_model_dir, template="kormedmcqa", shots=2, max_new_tokens=6,
                               batch_size=4, stop=stop), tmp_path / "gen", preloaded=tiny)
    samples = read_jsonl(paths["samples"])
    assert read_json(paths["results"])["configs"]["items"]["generation_kwargs"]["until"] == stop
    for s in samples:
        ids = tok(s["prompt"], return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        new = [t for t in out[0, ids["input_ids"].shape[1]:].tolist() if t != tok.eos_token_id]
        assert s["response"] == truncate_at_stop(tok.decode(new, skip_special_tokens=True), stop)[0]
    # items 2..5 take items 0 and 1 as shots (first_n without the item itself): one prompt prefix
    assert all(s["cached_tokens"] > 0 for s in samples[3:]) and samples[0]["cached_tokens"] == 0


def test_generative_mode_left_truncates_long_prompts(tmp_path, tiny, tiny_model_dir):
    data = write_items(tmp_path / "items.jsonl", n=2, n_options=5)
    paths = evaluate_mcqa(opts(data, tiny_model_dir, template="kormedmcqa", max_new_tokens=4, max_length=24),
                          tmp_path / "gen", preloaded=tiny)
    samples = read_jsonl(paths["samples"])
    assert read_json(paths["results"])["meditune"]["truncated"] == 2
    assert all(s["truncated_tokens"] > 0 and s["finish_reason"] in ("stop", "length") for s in samples)


def test_custom_strategy_plugs_in(tmp_path, tiny, tiny_model_dir):
    @register_strategy("always-first", "test strategy")
    def always_first(ctx: StrategyContext, options):
        assert options == {"k": 3}
        ctx.extra_results["cost"] = {"tokens": 0}
        return [ctx.sample(it, i, 0, {"acc": float(it.answer == 0)}, note="x") for i, it in enumerate(ctx.items)]

    data = write_items(tmp_path / "items.jsonl", n=8)
    paths = evaluate_mcqa(opts(data, tiny_model_dir, strategy="always-first", strategy_options={"k": 3}),
                          tmp_path / "s", preloaded=tiny)
    res = read_json(paths["results"])
    assert res["results"]["items"]["acc,none"] == pytest.approx(2 / 8)
    assert res["meditune"]["strategy"] == {"cost": {"tokens": 0}}
    with pytest.raises(ConfigError, match="unknown strategy"):
        evaluate_mcqa(opts(data, tiny_model_dir, strategy="nope"), tmp_path / "n", preloaded=tiny)


def test_compare_paired(tmp_path, tiny, tiny_model_dir):
    data = write_items(tmp_path / "items.jsonl", n=8)
    a = evaluate_mcqa(opts(data, tiny_model_dir, template="medqa"), tmp_path / "a", preloaded=tiny)["results"]
    b = evaluate_mcqa(opts(data, tiny_model_dir, template="medqa", choices="full"), tmp_path / "b",
                      preloaded=tiny)["results"]
    cmp = compare(a, b)
    assert cmp["n_common"] == 8
    row = cmp["metrics"]["acc"]
    assert row["diff"] == pytest.approx(row["b"] - row["a"])
    assert row["ci_low"] <= row["diff"] <= row["ci_high"]
    same = compare(a, a)["metrics"]["acc"]
    assert same["diff"] == 0 and same["ci_low"] == 0 == same["ci_high"]


@pytest.mark.parametrize("row,field", [
    ({"id": "x", "question": "Q?", "options": ["a", " "], "answer": 0}, "options"),
    ({"id": "x", "question": "Q?", "options": ["a", "b"], "answer": 2}, "answer"),
    ({"id": "x", "question": "Q?", "options": ["a", "b"], "answer": -1}, "answer"),
])
def test_bad_items_name_file_line_and_field(tmp_path, row, field):
    path = tmp_path / "bad.jsonl"
    ok = {"id": "ok", "question": "Fine?", "options": ["a", "b"], "answer": 0}
    path.write_text(json.dumps(ok) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(InputError) as e:
        evaluate_mcqa(MCQAOptions(data=str(path)), tmp_path / "o")
    assert e.value.line == 2 and str(path) in str(e.value) and e.value.field == field


def test_too_many_shots_is_a_config_error(tmp_path):
    data = write_items(tmp_path / "items.jsonl", n=3)
    with pytest.raises(ConfigError, match="shots=5"):
        evaluate_mcqa(MCQAOptions(data=str(data), shots=5), tmp_path / "o")


def test_cli_runs_and_reports_bad_input(tmp_path, tiny_model_dir, capsys):
    from meditune.cli import main

    data = write_items(tmp_path / "items.jsonl", n=4)
    rc = main(["eval", "mcqa", str(data), "--model", str(tiny_model_dir), "--out", str(tmp_path / "cli"),
               "--template", "medqa", "--device", "cpu", "--dtype", "float32"])
    assert rc == 0 and (tmp_path / "cli" / "results.json").exists()
    rc = main(["eval", "compare", str(tmp_path / "cli" / "results.json"), str(tmp_path / "cli" / "results.json")])
    assert rc == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "question": "Q?", "options": ["a", ""], "answer": 0}\n')
    assert main(["eval", "mcqa", str(bad), "--model", str(tiny_model_dir), "--out", str(tmp_path / "x")]) == 2
    assert main(["eval", "mcqa", str(data), "--mode", "sampling", "--out", str(tmp_path / "x")]) == 2


def test_stage_in_a_recipe(tmp_path, tiny_model_dir):
    from meditune.pipeline import Pipeline
    from meditune.recipe import parse_recipe

    data = write_items(tmp_path / "items.jsonl", n=4)
    recipe = parse_recipe({"name": "t", "model": str(tiny_model_dir), "device": "cpu", "dtype": "float32",
                           "run_dir": str(tmp_path / "run"),
                           "stages": [{"name": "medqa", "type": "eval_mcqa", "data": str(data),
                                       "template": "medqa", "limit": 3}]})
    Pipeline(recipe).run()
    res = read_json(tmp_path / "run" / "medqa" / "results.json")
    assert res["meditune"]["n"] == 3 and "medqa" in res["results"]
    assert res["config"]["model_spec"] == str(tiny_model_dir)
