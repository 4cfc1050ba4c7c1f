"""The `data` stage (filter, sample, split, decontaminate; outputs and stats) and the list/inspect commands."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml
from pydantic import ValidationError

from meditune.cli import main
from meditune.data.stage import DataStageConfig, estimate, run_data
from meditune.errors import ConfigError, InputError
from meditune.records import MCQItem, SafetyItem, read_records, write_records
from meditune.stages import StageContext
from tests.data_fixtures import jsonl, medqa_row


def items(prefix: str, n: int, language: str = "en") -> list[MCQItem]:
    return [MCQItem(id=f"{prefix}{i}", question=f"Invented question number {i} about {prefix} and dosing?",
                    options=["one", "two", "three", "four"], answer=i % 4, language=language) for i in range(n)]


def ctx(tmp_path, seed: int = 0) -> StageContext:
    d = tmp_path / "stage"
    d.mkdir(exist_ok=True)
    return StageContext(run_dir=tmp_path, stage_dir=d, recipe=SimpleNamespace(seed=seed))


def cfg(**kw) -> DataStageConfig:
    return DataStageConfig(name="data", type="data", **kw)


def test_sample_split_language_and_stats(tmp_path):
    write_records(tmp_path / "en.jsonl", items("en", 40))
    write_records(tmp_path / "ko.jsonl", items("ko", 10, "ko"))
    out = run_data(cfg(source=[str(tmp_path / "en.jsonl"), str(tmp_path / "ko.jsonl")], language="en", sample=30,
                       eval_fraction=0.2), ctx(tmp_path))
    train, held = read_records(out["dataset"]), read_records(out["eval"])
    assert len(train) == 24 and len(held) == 6 and not {r.id for r in train} & {r.id for r in held}
    assert all(r.language == "en" for r in train + held)
    stats = json.loads(open(out["stats"]).read())
    assert stats["counts"] == {"loaded": 50, "after_language": 40, "selected": 30, "dataset": 24, "eval": 6}
    (tmp_path / "second").mkdir()
    again = run_data(cfg(source=[str(tmp_path / "en.jsonl"), str(tmp_path / "ko.jsonl")], language="en", sample=30,
                         eval_fraction=0.2), ctx(tmp_path / "second"))
    assert read_records(again["dataset"]) == train  # seeded: same selection


def test_decontaminate_against_eval_source(tmp_path):
    train, evaluation = items("t", 20), items("e", 5)
    train[7] = train[7].model_copy(update={"question": evaluation[2].question})
    write_records(tmp_path / "train.jsonl", train)
    write_records(tmp_path / "eval.jsonl", evaluation)
    out = run_data(cfg(source=str(tmp_path / "train.jsonl"), decontaminate=str(tmp_path / "eval.jsonl")),
                   ctx(tmp_path))
    kept = read_records(out["dataset"])
    assert "t7" not in {r.id for r in kept}
    stats = json.loads(open(out["stats"]).read())
    assert stats["decontamination"]["dropped_ids"] == ["t7"] and stats["counts"]["after_decontamination"] < 20


def test_loader_spec_options_limit_and_kind(tmp_path):
    path = jsonl(tmp_path / "dev.jsonl", [medqa_row(f"Q{i}?") for i in range(5)])
    out = run_data(cfg(source=f"medqa_us:{path}", limit=3, options={"n_options": 5}, kind="mcq"), ctx(tmp_path))
    assert [r.id for r in read_records(out["dataset"])] == ["dev:1", "dev:2", "dev:3"]
    with pytest.raises(ConfigError, match="expected chat records"):
        run_data(cfg(source=f"medqa_us:{path}", kind="chat"), ctx(tmp_path))
    assert estimate(cfg(source=f"medqa_us:{path}", limit=2)) == {"items": 2}
    assert estimate(cfg(source=f"medqa_us:{path}")) == {"items": 5}


def test_mixed_record_types_rejected(tmp_path):
    write_records(tmp_path / "a.jsonl", items("a", 2))
    jsonl(tmp_path / "b.jsonl", [{"id": "x", "request": "Forge a note."}])
    with pytest.raises(ConfigError, match="several types"):
        run_data(cfg(source=[str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]), ctx(tmp_path))


def test_config_validation():
    with pytest.raises(ValidationError):
        cfg(source="x", eval_fraction=0.2, eval_size=3)
    with pytest.raises(ValidationError):
        cfg(source="x", kind="nope")
    with pytest.raises(ValidationError):
        cfg(source="x", limt=3)


def test_recipe_runs_data_stage(tmp_path):
    write_records(tmp_path / "in.jsonl", items("r", 12))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "t", "run_dir": str(tmp_path / "run"), "seed": 3, "stages": [
        {"name": "train_data", "type": "data", "source": str(tmp_path / "in.jsonl"), "eval_size": 2}]}))
    assert main(["run", str(recipe)]) == 0
    assert len(read_records(tmp_path / "run" / "train_data" / "dataset.jsonl")) == 10
    assert len(read_records(tmp_path / "run" / "train_data" / "eval.jsonl")) == 2


def test_list_and_inspect_commands(tmp_path, capsys):
    assert main(["data", "list"]) == 0
    assert "kormedmcqa" in capsys.readouterr().out
    path = jsonl(tmp_path / "dev.jsonl", [medqa_row(), medqa_row("Q2?", answer="A")])
    assert main(["data", "inspect", f"medqa_us:{path}", "--json", "--examples", "1"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["items"] == 2 and stats["options"] == {"5": 2} and stats["answers"] == {"A": 1, "C": 1}
    assert len(stats["examples"]) == 1 and stats["question_chars"]["max"] > 0
    csv = tmp_path / "x.csv"
    csv.write_text("stem,a,b,gold\nPick one?,x,y,b\n")
    assert main(["data", "inspect", str(csv), "-f", "question=stem", "-f", "options=a,b", "-f", "answer=gold",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["answers"] == {"B": 1}
    assert main(["data", "inspect", "medqa_usa:x.jsonl"]) == 2


def safety_items(splits: list[str | None]) -> list[SafetyItem]:
    return [SafetyItem(id=f"s{k}", request=f"Invented request {k}?", meta={} if s is None else {"split": s})
            for k, s in enumerate(splits)]


def test_split_keeps_only_records_of_that_split(tmp_path):
    write_records(tmp_path / "s.jsonl", safety_items(["train", "test", "train", "test", "test"]))
    out = run_data(cfg(source=str(tmp_path / "s.jsonl"), split="test"), ctx(tmp_path))
    assert [r.id for r in read_records(out["dataset"])] == ["s1", "s3", "s4"]
    stats = json.loads(open(out["stats"]).read())
    assert stats["counts"]["loaded"] == 5 and stats["counts"]["after_split"] == 3
    assert estimate(cfg(source=str(tmp_path / "s.jsonl"), split="train")) == {"items": 2}
    (tmp_path / "x").mkdir()
    held = run_data(cfg(source=str(tmp_path / "s.jsonl"), split="test", eval_size=1), ctx(tmp_path / "x"))
    assert {r.id for r in read_records(held["dataset"]) + read_records(held["eval"])} == {"s1", "s3", "s4"}


def test_split_rejects_records_without_meta_split_naming_the_first(tmp_path):
    write_records(tmp_path / "s.jsonl", safety_items(["test", None, "train", None]))
    with pytest.raises(InputError, match=r"'s1' has no meta\.split") as err:
        run_data(cfg(source=str(tmp_path / "s.jsonl"), split="test"), ctx(tmp_path))
    assert err.value.field == "meta.split" and str(tmp_path / "s.jsonl") in str(err.value)
    assert not (tmp_path / "stage" / "dataset.jsonl").exists()  # nothing half-written
    assert estimate(cfg(source=str(tmp_path / "s.jsonl"), split="test")) == {"items": "unknown"}
    write_records(tmp_path / "t.jsonl", safety_items(["train", "test"]))
    with pytest.raises(ConfigError, match=r"meta\.split 'dev' \(found: test, train\)"):
        run_data(cfg(source=str(tmp_path / "t.jsonl"), split="dev"), ctx(tmp_path))
    with pytest.raises(ValidationError):
        cfg(source="x", split="")


def test_split_in_a_recipe_fails_cleanly_without_meta_split(tmp_path, capsys):
    write_records(tmp_path / "in.jsonl", items("r", 3))  # MCQ items carry no meta.split
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "t", "run_dir": str(tmp_path / "run"), "stages": [
        {"name": "held_out", "type": "data", "source": str(tmp_path / "in.jsonl"), "split": "test"}]}))
    assert main(["run", str(recipe)]) == 2
    assert "'r0' has no meta.split" in capsys.readouterr().err
