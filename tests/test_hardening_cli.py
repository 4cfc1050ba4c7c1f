"""Bad command lines and bad files: every one exits 2 with a one-line message, no traceback, nothing left behind.

The table CLI_ERRORS is the corpus of error paths (tests/bad_inputs holds the files); each row is
(argv, text the message must contain). `{bad}` is tests/bad_inputs, `{tmp}` a fresh directory, `{file}` an
existing file and `{dir}` an existing directory in it.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from meditune.cli import main

BAD = Path(__file__).parent / "bad_inputs"

CLI_ERRORS = [
    # usage errors (raised by the click that typer bundles)
    (["eval", "mcqa", "sample:mcq", "--bogus"], "No such option: --bogus"),
    (["bogus"], "No such command 'bogus'"),
    (["eval", "mcqa"], "Missing argument 'DATA'"),
    (["eval", "mcqa", "sample:mcq", "--limit", "abc"], "Invalid value for '--limit'"),
    (["data", "convert", "sample:mcq"], "Missing option '--to'"),
    (["train", "sft", "--out", "{tmp}/o", "--data"], "requires an argument"),
    (["generate", "sample:mcq", "--out", "{tmp}/g", "--n", "1.5"], "Invalid value for '--n'"),
    (["data", "validate", "sample:mcq", "--max-errors", "0"], "Invalid value for '--max-errors'"),
    (["report"], "Missing argument"),
    # file-system errors
    (["data", "convert", "sample:mcq", "--to", "/proc/nope/x.jsonl"], "/proc/nope: No such file or directory"),
    (["data", "convert", "sample:mcq", "--to", "{dir}"], "is a directory"),
    (["data", "convert", "sample:mcq", "--to", "{file}", "--format", "hf"], "is an existing file"),
    (["data", "convert", "sample:mcq", "--to", "{file}/x.jsonl"], "afile: is a file, where a directory is needed"),
    (["eval", "mcqa", "sample:mcq", "--out", "{file}"], "--out {file} is an existing file"),
    (["generate", "sample:mcq", "--out", "{file}"], "--out {file} is an existing file"),
    (["train", "sft", "--data", "sample:chat", "--out", "{file}"], "--out {file} is an existing file"),
    (["report", "{dir}"], "is not a run directory"),
    (["run", "{tmp}/missing.yaml"], "recipe not found"),
    (["merge", "{tmp}/missing.yaml"], "not found"),
    # text that looks like rich markup is printed literally
    (["data", "inspect", "{tmp}/a[/b].jsonl"], "a[/b].jsonl: file not found"),
    (["data", "inspect", "[red]Z"], "[red]Z: file not found"),
    (["data", "convert", "{bad}/medqa_markup_values.jsonl", "--to", "{tmp}/o.jsonl"], "got '[/x]'"),
    # data errors
    (["data", "inspect", "{bad}/empty.jsonl"], "no items"),
    (["data", "inspect", "{bad}/blank_lines.jsonl"], "no items"),
    (["data", "convert", "{bad}/empty.jsonl", "--to", "{tmp}/o.jsonl"], "no items"),
    (["data", "inspect", "ultrafeedback:{bad}/preference_same_sides.jsonl"], "line 2: field 'rejected'"),
    (["data", "inspect", "kormedmcqa:{bad}/kormedmcqa_cp949.csv"], "encoding=cp949"),
    (["data", "inspect", "kormedmcqa:{bad}/kormedmcqa_cp949.csv", "-o", "encoding=gb18030"],
     "decoded as gb18030, this is not Korean (Hangul) text"),
    (["data", "inspect", "medqa_us:{bad}/medqa_latin1.jsonl"], "encoding=cp1252"),
    (["data", "inspect", "sample:../../pyproject"], "no bundled sample"),
    # recipe errors
    (["run", "{bad}/recipe_seed_abc.yaml", "--dry-run"], "recipe_seed_abc.yaml:2: 'seed'"),
    (["run", "{bad}/recipe_stage_absolute.yaml", "--dry-run"],
     "'stages[0].name': it names a directory: use letters, digits, '_' and '-' only"),
    (["run", "{bad}/recipe_stage_dot.yaml", "--dry-run"], "recipe_stage_dot.yaml:3: 'stages[0].name'"),
    (["run", "{bad}/recipe_stage_parent.yaml", "--dry-run"], "'stages[0].name'"),
    (["run", "quickstart", "--dry-run", "--set", "name=../up"], "'name': it names a directory"),
    # server exposure: refused before the model is loaded
    (["serve", "--host", "0.0.0.0"], "--api-key-env"),
    (["serve", "--api-key-env", "MEDITUNE_TEST_UNSET_KEY"], "MEDITUNE_TEST_UNSET_KEY"),
]


def _fill(argv: list[str], tmp: Path) -> list[str]:
    return [a.format(bad=BAD, tmp=tmp, file=tmp / "afile", dir=tmp / "adir") for a in argv]


@pytest.fixture
def places(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDITUNE_TEST_UNSET_KEY", raising=False)
    return tmp_path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(("argv", "expected"), CLI_ERRORS, ids=[" ".join(a)[:60] for a, _ in CLI_ERRORS])
def test_cli_error_exits_2_with_one_line(argv, expected, places, capsys):
    before = sorted(p.name for p in places.iterdir())
    assert main(_fill(argv, places)) == 2
    line = _one_line_error(capsys)
    assert _fill([expected], places)[0] in line
    assert sorted(p.name for p in places.iterdir()) == before  # nothing half-written


def test_error_paths_count():
    """The issue asks for the count of error paths tried: keep it visible (and growing)."""
    assert len(CLI_ERRORS) >= 35


def test_entry_point_prints_no_traceback(tmp_path):
    """Through the real `python -m meditune.cli` process: exit status 2 and one line on stderr."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    for argv in (["eval", "mcqa", "sample:mcq", "--bogus"], ["data", "inspect", "a[/b].jsonl"]):
        proc = subprocess.run([sys.executable, "-m", "meditune.cli", *argv], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_permission_denied_and_disk_full_are_one_line(places, capsys, monkeypatch):
    import meditune.io

    def no_permission(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(places / "locked"))

    monkeypatch.setattr(meditune.io.tempfile, "mkstemp", no_permission)
    assert main(["data", "convert", "sample:mcq", "--to", "locked/x.jsonl"]) == 2
    assert "Permission denied" in _one_line_error(capsys)
    monkeypatch.undo()
    monkeypatch.chdir(places)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(meditune.io.os, "fsync", disk_full)
    assert main(["data", "convert", "sample:mcq", "--to", "full.jsonl"]) == 2
    assert "No space left on device" in _one_line_error(capsys)
    assert not list(places.glob("*full*"))  # the temporary file went too


def test_validate_reports_every_error_with_a_count(capsys):
    assert main(["data", "validate", f"medqa_us:{BAD}/medqa_three_errors.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert [re.search(r":line (\d+):", ln).group(1) for ln in lines[:3]] == ["2", "4", "6"]
    assert "answer 'F' out of range" in lines[0] and "'question'" in lines[1] and "invalid JSON" in lines[2]
    assert lines[3].endswith("3 errors") and len(lines) == 4


def test_validate_caps_the_error_list(tmp_path, capsys):
    bad = tmp_path / "many.jsonl"
    bad.write_text("".join("{bad\n" for _ in range(8)))
    assert main(["data", "validate", str(bad), "--max-errors", "5"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 6 and "at least 5 errors (stopped after the first 5)" in lines[-1]


def test_validate_takes_any_source_spec(capsys):
    assert main(["data", "validate", "sample:mcq"]) == 0
    assert main(["data", "validate", f"medqa_us:{BAD}/medqa_duplicate_options.jsonl"]) == 0
    out = capsys.readouterr()
    assert "3 valid mcq records" in out.out
    warnings = [ln for ln in out.err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "2 item(s) have two options with the same text (first at line 2)" in warnings[0]


def test_usage_error_from_a_sub_group_names_its_help(capsys):
    assert main(["data", "convert", "sample:mcq", "--to", "x.jsonl", "--limit", "x"]) == 2
    assert "(see 'meditune data convert --help')" in _one_line_error(capsys)


def test_train_data_error_leaves_nothing(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "sft"
    rc = main(["train", "sft", "--data", str(BAD / "chats_bad.jsonl"), "--out", str(out), "--model",
               str(tiny_model_dir), "--max-steps", "1", "--set", "device=cpu"])
    assert rc == 2 and "chats_bad.jsonl:line 2" in _one_line_error(capsys)
    assert not out.exists()  # no empty train.log, no directory


def test_train_data_error_in_an_existing_dir_removes_only_what_it_made(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "sft"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = main(["train", "dpo", "--data", f"ultrafeedback:{BAD}/preference_same_sides.jsonl", "--out", str(out),
               "--model", str(tiny_model_dir), "--max-steps", "1", "--set", "device=cpu"])
    assert rc == 2 and "field 'rejected'" in _one_line_error(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_generate_model_error_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "gen"
    rc = main(["generate", "sample:mcq", "--out", str(out), "--model", str(tmp_path / "no-model"), "--limit", "1",
               "--no-cache", "--no-progress"])
    assert rc == 2 and "no-model" in _one_line_error(capsys)
    assert not out.exists()


def test_failed_merge_leaves_no_partial(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "merged"
    assert main(["merge", str(BAD / "merge_missing_model.yaml"), "--out", str(out)]) == 2
    assert "does/not-exist-anywhere" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither merged/ nor merged.partial/
