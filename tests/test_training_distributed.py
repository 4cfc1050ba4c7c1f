"""SFT, DPO, GRPO and rs as 2 CPU processes (DDP over gloo), through torchrun and through accelerate launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meditune.training.toy import write_toy

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(launcher: list[str], stage: str, data: Path, out: Path, model: Path, extra: tuple[str, ...] = ()) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    cmd = [*launcher, "-m", "meditune.cli", "train", stage, "--data", str(data), "--out", str(out),
           "--model", str(model), "--max-steps", "2", "--batch-size", "2", "--set", "device=cpu",
           "--set", "max_length=64", *(x for kv in extra for x in ("--set", kv))]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "train_summary.json").read_text())


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy(tmp_path_factory.mktemp("toy"), 8)


def test_sft_two_processes_torchrun(tmp_path, tiny_model_dir, toy):
    summary = _run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"], "sft", toy[0],
                   tmp_path / "sft", tiny_model_dir)
    assert summary["world_size"] == 2 and summary["steps"] == 2
    assert (tmp_path / "sft" / "model" / "adapter_model.safetensors").exists()


def test_dpo_two_processes_accelerate(tmp_path, tiny_model_dir, toy):
    # the multi-process launcher with a CPU stage; `accelerate launch --cpu` would run one process only
    summary = _run([str(BIN / "accelerate"), "launch", "--config_file",
                    str(ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml")], "dpo", toy[1], tmp_path / "dpo",
                   tiny_model_dir)
    assert summary["world_size"] == 2 and summary["steps"] == 2
    assert summary["metrics"]["first_loss"] == pytest.approx(0.6931, abs=0.01)  # reference log-probs line up


def test_grpo_two_processes_torchrun(tmp_path, tiny_model_dir):
    # each rank generates for its share of the prompts; rewards and advantages are gathered across ranks
    from meditune.records import MCQItem, write_records

    data = tmp_path / "mcq.jsonl"
    write_records(data, [MCQItem(id=f"q{i}", question=f"Which organ is affected in case {i}?",
                                 options=["heart", "lung", "liver", "kidney"], answer=i % 4) for i in range(8)])
    summary = _run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"], "grpo", data,
                   tmp_path / "grpo", tiny_model_dir,
                   ("max_length=256", "num_generations=2", "max_completion_length=8"))
    assert summary["world_size"] == 2 and summary["steps"] == 2
    rows = (tmp_path / "grpo" / "curves.csv").read_text().splitlines()
    assert "rewards/correct/mean" in rows[0] and "kl" in rows[0].split(",")
    assert (tmp_path / "grpo" / "model" / "adapter_model.safetensors").exists()


RS_SCRIPT = """
import sys
from pathlib import Path

from meditune.recipe import Recipe
from meditune.stages import StageContext
from meditune.training.rs import RSStageConfig, train_rs

model, prompts, out = sys.argv[1:4]
cfg = RSStageConfig(name="rs", type="rs", data=prompts, k=2, top_k=1, rounds=2, max_new_tokens=4, max_steps=1,
                    batch_size=2, max_length=64, device="cpu", learning_rate=1e-2)
train_rs(cfg, StageContext(Path(out), Path(out) / "rs", Recipe(name="t", model=model)),
         score_fn=lambda items, responses: [float(len(r)) for r in responses])
"""


def test_rs_rollouts_split_across_two_processes(tmp_path, tiny_model_dir, toy):
    # each rank samples half of the prompts; the gathered rows are complete, in order, and none is sampled twice
    script = tmp_path / "rs_2proc.py"
    script.write_text(RS_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(script),
                           str(tiny_model_dir), str(toy[0]), str(tmp_path)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = [json.loads(x)["id"] for x in toy[0].read_text().splitlines()]
    for rnd in (1, 2):
        rdir = tmp_path / "rs" / f"round_{rnd}"
        rows = [json.loads(x) for x in (rdir / "rollouts.jsonl").read_text().splitlines()]
        assert [r["id"] for r in rows] == ids  # every prompt once, in the input order
        assert [r["rank"] for r in rows] == [i % 2 for i in range(len(ids))]  # half each, no duplicated work
        assert all(len(r["responses"]) == 2 and len(r["scores"]) == 2 for r in rows)
        assert json.loads((rdir / "train_summary.json").read_text())["world_size"] == 2
