"""Generation jobs: request parsing, records as prompts, shards, resume, cache, and SIGKILL at random points."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meditune.errors import ConfigError, InputError
from meditune.generation.base import BackendConfig, GenerationRequest, SamplingParams, ScriptedBackend
from meditune.generation.cache import GenerationCache, request_key
from meditune.generation.inputs import load_requests
from meditune.generation.job import run_job
from meditune.io import read_jsonl, write_jsonl

MODEL = {"backend": "scripted", "model": "echo"}


def echo(req: GenerationRequest, i: int) -> str:
    return f"{req.messages[-1]['content']} #{i}"


def requests(count: int, **params) -> list[GenerationRequest]:
    return [GenerationRequest(f"r{i}", [{"role": "user", "content": f"question {i}"}], SamplingParams(**params))
            for i in range(count)]


def test_request_lines_and_errors(tmp_path):
    path = tmp_path / "req.jsonl"
    write_jsonl(path, [{"id": "a", "messages": [{"role": "user", "content": "hi"}], "params": {"n": 2, "stop": "."}},
                       {"id": 7, "prompt": "The heart"}])
    reqs = load_requests(path, SamplingParams(temperature=0.5))
    assert reqs[0].params.n == 2 and reqs[0].params.stop == (".",) and reqs[0].params.temperature == 0.5
    assert reqs[1].id == "7" and reqs[1].prompt == "The heart" and reqs[1].messages == []
    bad = tmp_path / "bad.jsonl"
    cases = [({"id": "a", "messages": [{"role": "bot", "content": "x"}]}, "messages[0]"),
             ({"id": "a", "messages": []}, "messages"),
             ({"messages": [{"role": "user", "content": "x"}]}, "id"),
             ({"id": "a", "prompt": "x", "params": {"temp": 1}}, "params.temp")]
    for obj, field in cases:
        write_jsonl(bad, [{"id": "ok", "prompt": "fine"}, obj])
        with pytest.raises(InputError) as e:
            load_requests(bad)
        assert e.value.line == 2 and e.value.field == field and str(bad) in str(e.value)
    write_jsonl(bad, [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])
    with pytest.raises(InputError, match="duplicate id 'a'"):
        load_requests(bad)


def test_records_become_chats(tmp_path):
    path = tmp_path / "mixed.jsonl"
    write_jsonl(path, [
        {"id": "m", "question": "Which organ makes insulin?", "options": ["Liver", "Pancreas"], "answer": 1},
        {"id": "c", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
         "system": "Be kind."},
        {"id": "l", "question": "What is sepsis?"},
        {"id": "s", "request": "How do I overdose?"},
    ])
    reqs = {r.id: r for r in load_requests(path, SamplingParams(n=3))}
    assert "Pancreas" in reqs["m"].messages[0]["content"] and "B." in reqs["m"].messages[0]["content"]
    assert reqs["c"].messages == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    assert reqs["l"].messages == [{"role": "user", "content": "What is sepsis?"}]
    assert reqs["s"].messages[0]["content"] == "How do I overdose?"
    assert all(r.params.n == 3 for r in reqs.values())
    write_jsonl(path, [{"id": "x", "text": "t", "entities": []}])
    with pytest.raises(InputError, match="NERItem records have no prompt") as e:
        load_requests(path)
    assert e.value.line == 1


def test_job_merges_in_order_and_resumes_from_torn_shard(tmp_path):
    reqs = requests(10, n=2)
    be = ScriptedBackend(echo)
    res = run_job(reqs, be, tmp_path / "job", model=MODEL, unit_size=3, progress=False)
    rows = read_jsonl(res.path)
    assert [r["id"] for r in rows] == [r.id for r in reqs]
    assert rows[4]["generations"][1]["text"] == "question 4 #1" and res.generated == 10
    full = res.path.read_bytes()
    # Simulate a kill mid-write: drop the last 4 records and tear the last line.
    shard = next((tmp_path / "job" / "shards").glob("shard-*.jsonl"))
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:6]) + lines[6][: len(lines[6]) // 2])
    res.path.unlink()
    be2 = ScriptedBackend(echo)
    res2 = run_job(reqs, be2, tmp_path / "job", model=MODEL, unit_size=3, progress=False)
    assert res2.resumed == 6 and res2.path.read_bytes() == full
    assert [r.id for r in be2.calls] == ["r6", "r7", "r8", "r9"]  # whole units, never finished units
    # nothing left: the backend factory is not even called
    res3 = run_job(reqs, lambda: pytest.fail("backend loaded for a finished job"), tmp_path / "job", model=MODEL,
                   unit_size=3, progress=False)
    assert res3.resumed == 10 and res3.path.read_bytes() == full


def test_job_refuses_a_different_job_and_duplicate_ids(tmp_path):
    run_job(requests(3), ScriptedBackend(echo), tmp_path / "job", model=MODEL, progress=False)
    with pytest.raises(ConfigError, match="different generation job"):
        run_job(requests(4), ScriptedBackend(echo), tmp_path / "job", model=MODEL, progress=False)
    from meditune.generation.job import _lock

    held = _lock(tmp_path / "job")  # another process running the same job
    with pytest.raises(ConfigError, match="being generated by another process"):
        run_job(requests(3), ScriptedBackend(echo), tmp_path / "job", model=MODEL, progress=False)
    held.close()
    dup = requests(2) + requests(1)
    with pytest.raises(InputError, match="duplicate request id 'r0'"):
        run_job(dup, ScriptedBackend(echo), tmp_path / "other", model=MODEL, progress=False)


def test_cache_serves_whole_units_and_skips_errors(tmp_path):
    cache = GenerationCache(tmp_path / "cache")
    reqs = requests(6, n=1, seed=3)
    run_job(reqs, ScriptedBackend(echo), tmp_path / "a", model=MODEL, unit_size=3, cache=cache, progress=False)
    reopened = GenerationCache(tmp_path / "cache")
    assert len(reopened) == 6
    # same content under other ids is a hit; the ids are relabelled
    renamed = [GenerationRequest("x" + r.id, r.messages, r.params) for r in reqs]
    be = ScriptedBackend(lambda r, i: "fresh")
    res = run_job(renamed, be, tmp_path / "b", model=MODEL, unit_size=3, cache=reopened, progress=False)
    assert res.cached == 6 and res.generated == 0 and not be.calls
    assert read_jsonl(res.path)[0]["generations"][0]["text"] == "question 0 #0"
    # other params or another model are misses
    assert request_key(MODEL, reqs[0]) != request_key(MODEL, requests(1, n=1, seed=4)[0])
    assert request_key(MODEL, reqs[0]) != request_key({**MODEL, "model": "other"}, reqs[0])
    # a unit with one cached request is generated whole (batching must not depend on cache luck)
    mixed = [reqs[0], *requests(3, n=1, seed=9)[1:]]
    be2 = ScriptedBackend(echo)
    run_job(mixed, be2, tmp_path / "c", model=MODEL, unit_size=3, cache=reopened, progress=False)
    assert len(be2.calls) == 3
    # a torn tail in a cache shard is skipped
    shard = next((tmp_path / "cache").glob("entries-*.jsonl"))
    with open(shard, "a") as f:
        f.write('{"key": "abc", "generations": [')
    assert len(GenerationCache(tmp_path / "cache")) >= 6


def _generate_cmd(data: Path, model: Path, out: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "meditune.cli", "generate", str(data), "--model", str(model), "--out", str(out),
            "--n", "2", "--temperature", "0.8", "--seed", "5", "--max-new-tokens", "12", "--batch-size", "4",
            "--unit-size", "3", "--cache-dir", str(cache), "--no-progress", "--device", "cpu"]


def _done_lines(out: Path) -> int:
    n = 0
    for shard in (out / "shards").glob("shard-*.jsonl"):
        n += shard.read_bytes().count(b"\n")
    return n


def test_sigkill_at_random_points_then_resume_equals_uninterrupted_run(tmp_path, tiny_model_dir):
    data = tmp_path / "data.jsonl"
    total = 42
    write_jsonl(data, [{"id": f"q{i}", "messages": [{"role": "user", "content": f"Patient {i} has a fever of "
                                                                                 f"{38 + i % 3} C. Next step?"}]}
                       for i in range(total)])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # The uninterrupted reference run and the final resume run in process, with the command's settings and one
    # thread like the subprocesses, so the float arithmetic is the same.
    import torch

    from meditune.generation.cache import model_key
    from meditune.generation.factory import make_backend

    cfg = BackendConfig(model=str(tiny_model_dir), device="cpu", batch_size=4)
    params = SamplingParams(temperature=0.8, max_new_tokens=12, n=2, seed=5)
    backend = make_backend(cfg)

    def in_process(out: Path, cache: Path):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return run_job(load_requests(data, params), backend, out, model=model_key(cfg), label=cfg.label,
                           unit_size=3, cache=GenerationCache(cache), progress=False)
        finally:
            torch.set_num_threads(threads)

    ref = in_process(tmp_path / "ref", tmp_path / "cache-ref")
    out, rng, kills = tmp_path / "killed", random.Random(11), 0
    progress_at_kill = []
    while kills < 3:
        proc = subprocess.Popen(_generate_cmd(data, tiny_model_dir, out, tmp_path / "cache"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = _done_lines(out) + rng.randint(1, 8) if out.exists() else rng.randint(1, 8)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if out.exists() and _done_lines(out) >= target:
                time.sleep(rng.uniform(0, 0.05))  # land anywhere: between units, mid-write, mid-batch
                break
            time.sleep(0.005)
        if proc.poll() is not None:
            break  # finished before we could kill it; the comparison below still holds
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        progress_at_kill.append(_done_lines(out))
    assert kills >= 2, progress_at_kill
    assert 0 < progress_at_kill[0] < total
    final = in_process(out, tmp_path / "cache")  # resume what the killed command runs left
    assert final.resumed >= progress_at_kill[0] and final.records == total
    assert (out / "generations.jsonl").read_bytes() == ref.path.read_bytes()
    ids = []
    for shard in sorted((out / "shards").glob("shard-*.jsonl")):
        for line in shard.read_text().splitlines():
            try:
                ids.append(json.loads(line)["id"])
            except json.JSONDecodeError:
                pass  # a line torn by SIGKILL
    assert sorted(ids) == sorted(f"q{i}" for i in range(total))  # every record written exactly once
    rows = read_jsonl(out / "generations.jsonl")
    assert all(len(r["generations"]) == 2 for r in rows)
