"""Scale-out: the generation-heavy stage families (generate, eval_mcqa, open evaluations with and without a judge,
prefs with the answer and the safety scorers) run as one recipe under torchrun with 2 CPU processes (gloo) and
write exactly what one process writes.

One recipe runs once with one process and once with two (module fixture, about a minute on the tiny model); each
test then checks one stage family: the world size was 2, both ranks did part of the work, and the outputs equal
the single process's (results.json byte for byte apart from its timing fields, samples and datasets identical).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# results.json fields that hold wall-clock times (everything else must be identical)
TIMING_FIELDS = ("date", "start_time", "end_time", "total_evaluation_time_seconds", "generated_at")


def recipe(model: Path, questions: Path) -> dict:
    """Small settings so that every stage cuts its work into several units (and so both ranks get some)."""
    return {"name": "scaleout", "model": str(model), "device": "cpu", "seed": 0, "stages": [
        {"name": "gen", "type": "generate", "data": "sample:mcq", "limit": 12, "max_new_tokens": 6, "unit_size": 2,
         "batch_size": 2, "cache": False},
        {"name": "mcqa", "type": "eval_mcqa", "data": "sample:mcq", "limit": 24, "batch_size": 2},
        {"name": "mcqa_gen", "type": "eval_mcqa", "data": "sample:mcq", "limit": 8, "batch_size": 2,
         "mode": "generative", "max_new_tokens": 4},
        # 130 items: the evaluation's generation job has units of 64 requests, so both ranks get a unit
        {"name": "open", "type": "eval_open", "data": str(questions), "max_new_tokens": 4},
        {"name": "prefs", "type": "prefs", "questions": "sample:mcq", "limit": 6,
         "generators": [{"name": "a"}, {"name": "b", "temperature": 1.0}],
         "collection": {"max_new_tokens": 6, "chunk_size": 2}, "scorer": {"type": "answer"},
         "score_chunk_size": 2},
        # 100 harmful + 30 benign requests: 3 units of 64 in the answers' job and in the refusal judge's (the
        # evaluated model as judge), 2 in the harmfulness judge's
        {"name": "safety", "type": "eval_safety", "data": "sample:safety", "limit": 100, "benign": "sample:benign",
         "benign_limit": 30, "judge": str(model), "max_new_tokens": 4, "judge_max_new_tokens": 4},
        # the safety regime's preference pairs: a reference answer (rank 0 copies it), a prefilled refusal opening
        # and the model as it is, scored by the safety scorer
        {"name": "prefs_safety", "type": "prefs", "questions": "sample:safety", "limit": 6,
         "generators": [{"name": "reference", "backend": "reference"},
                        {"name": "cautious", "prefill": ["I can't help with that."], "max_new_tokens": 4},
                        {"name": "model", "temperature": 1.0}],
         "collection": {"instruction": "", "max_new_tokens": 6, "chunk_size": 2},
         "scorer": {"type": "safety", "classifier": "keyword"}, "score_chunk_size": 2},
    ]}


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT / "src")}


def _run(launcher: list[str], recipe_path: Path, run_dir: Path) -> None:
    proc = subprocess.run([*launcher, "-m", "meditune.cli", "run", str(recipe_path), "--run-dir", str(run_dir)],
                          env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("scaleout")
    questions = base / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is the treatment of case {i}?",
                                             "reference": f"Rest and fluids for case {i}."}) + "\n"
                                 for i in range(130)))
    path = base / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(tiny_model_dir, questions)))
    _run([sys.executable], path, base / "one")
    _run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"], path, base / "two")
    return base / "one", base / "two"


def _split(run: Path, stage: str) -> dict:
    """The manifest's record of how the stage ran across ranks."""
    m = json.loads((run / stage / "manifest.json").read_text())
    assert m["status"] == "done"
    return m.get("ranks") or {"world_size": 1}


def _assert_split(one: Path, two: Path, stage: str) -> None:
    assert _split(one, stage) == {"world_size": 1}
    ranks = _split(two, stage)
    assert ranks["world_size"] == 2 and ranks["all_ranks"]
    rows = ranks["rows_per_rank"]
    assert len(rows) == 2 and min(rows) > 0, rows  # both ranks did part of the work


def _results_text(path: Path) -> str:
    """results.json with its timing fields left out, re-serialised in the file's key order."""
    res = json.loads(path.read_text())
    for key in TIMING_FIELDS:
        res.pop(key)
    return json.dumps(res)


def _assert_same_results(one: Path, two: Path, stage: str) -> None:
    assert _results_text(one / stage / "results.json") == _results_text(two / stage / "results.json")
    assert (one / stage / "samples.jsonl").read_bytes() == (two / stage / "samples.jsonl").read_bytes()


def test_generate_splits_units_and_writes_the_same_generations(runs):
    one, two = runs
    _assert_split(one, two, "gen")
    assert (one / "gen" / "generations.jsonl").read_bytes() == (two / "gen" / "generations.jsonl").read_bytes()
    shards = sorted(p.name for p in (two / "gen" / "shards").iterdir())
    assert any(n.endswith("-r1.jsonl") for n in shards), shards  # rank 1 kept its own resumable shard


def test_eval_mcqa_splits_batches_and_writes_the_same_results(runs):
    one, two = runs
    for stage in ("mcqa", "mcqa_gen"):
        _assert_split(one, two, stage)
        _assert_same_results(one, two, stage)
        assert not list((two / stage).glob("samples.partial*"))  # every rank's shard removed once merged


def test_open_eval_splits_its_generation_job_and_writes_the_same_results(runs):
    one, two = runs
    _assert_split(one, two, "open")
    _assert_same_results(one, two, "open")


def test_safety_eval_splits_answers_and_judge_calls_and_writes_the_same_results(runs):
    one, two = runs
    _assert_split(one, two, "safety")
    _assert_same_results(one, two, "safety")
    samples = [json.loads(line) for line in (two / "safety" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 130 and all(s["judge_refusal"] is not None for s in samples)  # every judge call came back
    assert sum(s["judge_harm"] is not None for s in samples) == 100


@pytest.mark.parametrize(("stage", "generators"), [("prefs", ("a", "b")),
                                                   ("prefs_safety", ("reference", "cautious", "model"))])
def test_prefs_splits_collection_and_scoring_and_writes_the_same_dataset(runs, stage, generators):
    one, two = runs
    _assert_split(one, two, stage)
    for name in ("dataset.jsonl", "trl.jsonl", "scores.jsonl", *(f"answers/{g}.jsonl" for g in generators)):
        assert (one / stage / name).read_bytes() == (two / stage / name).read_bytes(), name
    assert sorted(p.name for p in (two / stage / "answers").iterdir()) == \
        sorted(p.name for p in (one / stage / "answers").iterdir())  # rank files merged into one per generator
    card = [json.loads((run / stage / "datacard.json").read_text()) for run in runs]
    for c in card:
        c.pop("created"), c.pop("timings_s")
    assert card[0] == card[1]
