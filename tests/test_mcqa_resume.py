"""`eval mcqa` after kill -9: finished batches are on disk (not whole 128-item pools), a resumed run re-runs only
unfinished batches, formed as before, so its samples equal an uninterrupted run's byte for byte; the same under
2 ranks (torchrun, gloo), whose per-rank shards are merged on resume. Batch formation is unchanged: the forward
passes of a run are exactly the planned batches of its pools (counted, not timed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from meditune.distributed import rank_siblings
from meditune.evaluation import loglik_tree
from meditune.evaluation.loglik import LoglikRequest, LoglikScorer
from meditune.evaluation.mcqa import MCQAOptions, evaluate_mcqa
from meditune.evaluation.strategies.direct import PARTIAL, pool_size
from meditune.prompts import PromptBuilder, get_template
from meditune.shards import Shard

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
N_ITEMS, BATCH = 40, 2  # 20 batches of 2, all in one pool of 128 items: the old resumable unit
TIMING_FIELDS = ("date", "start_time", "end_time", "total_evaluation_time_seconds", "generated_at")

# Runs the evaluation with every packed forward slowed down, so a kill lands mid-run on any machine.
SLOW_RUN = f"""
import sys, time
from meditune.evaluation import loglik_tree
from meditune.evaluation.mcqa import MCQAOptions, evaluate_mcqa

real = loglik_tree.score_tree_batch
loglik_tree.score_tree_batch = lambda model, rows: (time.sleep(float(sys.argv[3])), real(model, rows))[1]
evaluate_mcqa(MCQAOptions(model=sys.argv[1], data="sample:mcq", limit={N_ITEMS}, batch_size={BATCH}, device="cpu",
                          dtype="float32"), sys.argv[2])
"""


def options(model: Path) -> MCQAOptions:
    return MCQAOptions(model=str(model), data="sample:mcq", limit=N_ITEMS, batch_size=BATCH, device="cpu",
                       dtype="float32")


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT / "src")}


def _lines(out: Path) -> int:
    """Complete sample lines on disk, over every rank's shard."""
    files = [out / PARTIAL, *rank_siblings(out / PARTIAL)]
    return sum(p.read_bytes().count(b"\n") for p in files if p.exists())


def _ids_on_disk(out: Path) -> list[str]:
    """Item ids of the complete sample lines on disk, over every rank's shard (a torn last line left out)."""
    ids = []
    for p in [out / PARTIAL, *rank_siblings(out / PARTIAL)]:
        if p.exists():
            ids += [json.loads(line)["id"] for line in p.read_bytes().split(b"\n")[:-1]]
    return ids


def _record_appends(monkeypatch) -> list[str]:
    """Ids of every sample appended to a shard from now on."""
    added: list[str] = []
    real = Shard.add
    monkeypatch.setattr(Shard, "add", lambda self, rows, records=None: (
        added.extend(r["id"] for r in rows), real(self, rows, records))[1])
    return added


def _kill_after(cmd: list[str], out: Path, at_least: int, timeout: float = 300) -> int:
    """Start cmd in its own process group, SIGKILL the group once `at_least` samples are on disk."""
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + timeout
    try:
        while _lines(out) < at_least:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            assert time.time() < deadline, "no samples on disk in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return _lines(out)


def _results(path: Path) -> str:
    res = json.loads(path.read_text())
    for key in TIMING_FIELDS:
        res.pop(key)
    return json.dumps(res)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("reference")
    evaluate_mcqa(options(tiny_model_dir), out)
    return out


def _count_forwards(monkeypatch) -> list[tuple[int, int]]:
    """(questions, tokens) of every packed forward from now on."""
    calls = []
    real = loglik_tree.score_tree_batch
    monkeypatch.setattr(loglik_tree, "score_tree_batch", lambda model, rows: (
        calls.append((len(rows), sum(len(r.ids) for r in rows))), real(model, rows))[1])
    return calls


def test_kill_resume_loses_at_most_the_batch_in_flight(tmp_path, tiny_model_dir, reference, monkeypatch):
    script = tmp_path / "slow.py"
    script.write_text(SLOW_RUN)
    out = tmp_path / "out"
    on_disk = _kill_after([sys.executable, str(script), str(tiny_model_dir), str(out), "0.3"], out, 6)
    assert pool_size(options(tiny_model_dir)) >= N_ITEMS  # the whole run is one pool (the old unit)
    assert 6 <= on_disk < N_ITEMS and not (out / "results.json").exists()  # killed mid-pool, batches kept
    before = _ids_on_disk(out)
    calls, added = _count_forwards(monkeypatch), _record_appends(monkeypatch)
    evaluate_mcqa(options(tiny_model_dir), out)
    # no batch lost or written twice: the killed run's samples and the resumed run's are disjoint and cover all
    assert len(set(before)) == len(before) == on_disk and not set(before) & set(added), (before, added)
    assert sorted(before + added) == sorted(json.loads(line)["id"] for line in
                                            (reference / "samples.jsonl").read_text().splitlines())
    # only batches with an unfinished item ran again: at most one batch's items were computed twice
    assert BATCH * len(calls) <= N_ITEMS - on_disk + BATCH, (len(calls), on_disk)
    assert (out / "samples.jsonl").read_bytes() == (reference / "samples.jsonl").read_bytes()
    assert _results(out / "results.json") == _results(reference / "results.json")
    assert not (out / PARTIAL).exists()


def test_two_ranks_killed_then_resumed_equal_one_uninterrupted_run(tmp_path, tiny_model_dir, reference):
    script = tmp_path / "slow.py"
    script.write_text(SLOW_RUN)
    out = tmp_path / "out"
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    on_disk = _kill_after([*torchrun, str(script), str(tiny_model_dir), str(out), "0.3"], out, 6)
    assert on_disk < N_ITEMS and rank_siblings(out / PARTIAL)  # rank 1 kept its own shard
    proc = subprocess.run([*torchrun, str(script), str(tiny_model_dir), str(out), "0"], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "samples.jsonl").read_bytes() == (reference / "samples.jsonl").read_bytes()
    assert _results(out / "results.json") == _results(reference / "results.json")
    assert not (out / PARTIAL).exists() and not rank_siblings(out / PARTIAL)


def test_flushing_per_batch_keeps_the_pools_batches(tmp_path, tiny_model_dir, monkeypatch):
    """The engine scores a pool with the same packed forwards as scoring the pool in one call (the old unit):
    same number of forwards, same questions and tokens in each (packed: no padding)."""
    from meditune.evaluation.mcqa import load_items
    from meditune.models import load_model

    model, tok = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    template = get_template("generic")
    builder = PromptBuilder(template, template.choices, tokenizer=tok)
    reqs = [LoglikRequest(r.context, r.continuations)
            for r in (builder.render(it) for it in load_items("sample:mcq")[:N_ITEMS])]
    calls = _count_forwards(monkeypatch)
    LoglikScorer(model, tok, batch_size=BATCH).score(reqs)
    whole_pool = list(calls)
    calls.clear()
    evaluate_mcqa(options(tiny_model_dir), tmp_path / "out", preloaded=(model, tok))
    assert len(whole_pool) == N_ITEMS // BATCH and calls == whole_pool


def test_hooks_run_only_the_chosen_batches_with_the_same_numbers(tiny_model_dir):
    """Every scoring path (packed tree, two-pass, generative) plans its batches alike with or without hooks and
    gives a batch that runs the numbers it gives in a full run."""
    from meditune.evaluation.generative import GenOut, generate_texts
    from meditune.evaluation.loglik import BatchHooks
    from meditune.evaluation.mcqa import load_items
    from meditune.generation.base import BackendConfig
    from meditune.generation.factory import make_backend
    from meditune.models import load_model

    model, tok = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    template = get_template("generic")
    builder = PromptBuilder(template, template.choices, tokenizer=tok)
    rendered = [builder.render(it) for it in load_items("sample:mcq")[:10]]
    reqs = [LoglikRequest(r.context, r.continuations) for r in rendered]

    def every_other() -> tuple[BatchHooks, list[list[int]]]:
        seen: list[list[int]] = []
        return BatchHooks(lambda idx: (seen.append(idx), len(seen) % 2 == 0)[1],
                          lambda idx, results: None), seen

    for method in ("tree", "two-pass"):
        full = LoglikScorer(model, tok, batch_size=3, method=method).score(reqs)
        hooks, seen = every_other()
        part = LoglikScorer(model, tok, batch_size=3, method=method).score(reqs, hooks=hooks)
        ran = {i for k, b in enumerate(seen) for i in b if k % 2 == 1}
        assert sorted(i for b in seen for i in b) == list(range(10))  # every request planned once
        assert [p is not None for p in part] == [i in ran for i in range(10)], method
        assert all(part[i].loglik == full[i].loglik for i in ran), method
    prompts = [r.context for r in rendered]
    backend = make_backend(BackendConfig(model=str(tiny_model_dir), device="cpu", dtype="float32", batch_size=3),
                           model=model, tokenizer=tok)
    full_g = generate_texts(backend, prompts, max_new_tokens=3)
    hooks, seen = every_other()
    part_g = generate_texts(backend, prompts, max_new_tokens=3, hooks=hooks)
    ran = {i for k, b in enumerate(seen) for i in b if k % 2 == 1}
    assert sorted(i for b in seen for i in b) == list(range(10))

    def result(o: GenOut) -> GenOut:  # what was computed, not how much of the prompt a kept prefix served
        return replace(o, cached_tokens=0)

    assert ran and all(result(part_g[i]) == result(full_g[i]) for i in ran)
    assert all(part_g[i] is None for i in set(range(10)) - ran)
