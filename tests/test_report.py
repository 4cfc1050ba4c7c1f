"""report.html: content from a run directory, honest before/after verdicts, and rendering in headless Chromium."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from meditune.io import write_json, write_jsonl, write_text
from meditune.report.stage import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def fake_eval(run: Path, name: str, correct: list[int]) -> None:
    d = run / name
    n = len(correct)
    acc = sum(correct) / n
    write_json(d / "results.json", {
        "results": {"sample_mcq": {"acc,none": acc, "acc_ci_low,none": acc - 0.1, "acc_ci_high,none": acc + 0.1}},
        "n-samples": {"sample_mcq": {"original": n, "effective": n}},
        "meditune": {"protocol": {"strategy": "direct", "mode": "loglik", "choices": "full", "shots": 0,
                                  "chat_template": True},
                     "breakdown": {"cardiology": {"acc": {"value": acc, "ci_low": acc - 0.2, "ci_high": acc + 0.1}},
                                   "neurology": {"acc": {"value": acc / 2, "ci_low": 0, "ci_high": acc}}}}})
    write_jsonl(d / "samples.jsonl", [{"id": f"q{i}", "metrics": {"acc": c}} for i, c in enumerate(correct)])
    write_json(d / "manifest.json", {"stage": name, "type": "eval_mcqa", "status": "done", "duration_s": 3,
                                     "config": {"data": "sample:mcq"}, "started": f"2026-01-01T00:0{len(name)}",
                                     "outputs": {"results": str(d / "results.json"),
                                                 "samples": str(d / "samples.jsonl")}})


def fake_run(tmp_path: Path, before: list[int], after: list[int]) -> Path:
    run = tmp_path / "run"
    fake_eval(run, "before", before)
    d = run / "dpo"
    write_text(d / "curves.csv", "step,loss,rewards/accuracies\n" + "".join(
        f"{s},{1 / (s + 1):.4f},{min(1, s / 10):.2f}\n" for s in range(1, 11)))
    write_text(d / "model" / "README.md", "# model card\ntrained with DPO")
    write_json(d / "manifest.json", {"stage": "dpo", "type": "dpo", "status": "done", "duration_s": 100,
                                     "config": {"beta": 0.1}, "started": "2026-01-01T00:07",
                                     "outputs": {"model": str(d / "model"), "curves": str(d / "curves.csv")}})
    p = run / "prefs"
    write_jsonl(p / "pairs.jsonl", [{"id": "p1", "prompt": [{"role": "user", "content": "What causes gout?"}],
                                     "chosen": "Uric acid crystals.", "rejected": "Eating cheese only.",
                                     "chosen_score": 1.0, "rejected_score": 0.0,
                                     "provenance": {"question_id": "q1", "chosen_answer": "q1|gen-a|0",
                                                    "rejected_answer": "q1|gen-b|0", "chosen_generator": "gen-a"}}])
    write_jsonl(p / "scores.jsonl", [{"answer_id": "q1|gen-a|0", "question_id": "q1", "value": 1.0,
                                      "evidence": {"facts": [{"fact": "Gout is caused by uric acid crystals.",
                                                              "verdict": "true"}]}}])
    edges = [i / 10 for i in range(11)]
    write_json(p / "datacard.json", {"generators": [
        {"label": "gen-a", "histogram": {"edges": edges, "counts": [0, 0, 0, 0, 0, 0, 0, 0, 1, 2]}},
        {"label": "gen-b", "histogram": {"edges": edges, "counts": [0, 0, 1, 0, 0, 1, 0, 0, 0, 0]}}],
        "margin_histogram": {"edges": edges, "counts": [0, 0, 0, 1, 0, 1, 0, 1, 0, 0]}})
    write_text(p / "datacard.md", "# datacard\n3 pairs")
    write_json(p / "manifest.json", {"stage": "prefs", "type": "prefs", "status": "done", "duration_s": 50,
                                     "config": {}, "started": "2026-01-01T00:05",
                                     "outputs": {"dataset": str(p / "pairs.jsonl"), "datacard": str(p / "datacard.json"),
                                                 "scores": str(p / "scores.jsonl")}})
    fake_eval(run, "after_eval", after)
    return run


def test_report_content_and_honest_verdict(tmp_path):
    rng = random.Random(0)
    before = [rng.random() < 0.3 for _ in range(200)]
    after = [b or rng.random() < 0.5 for b in before]  # clearly better
    run = fake_run(tmp_path, [int(x) for x in before], [int(x) for x in after])
    out = build_report(run, run / "report.html", title="t", recipe={"model": "default"},
                       order=["before", "prefs", "dpo", "after_eval"])
    page = out.read_text()
    assert "before → after_eval" in page and "a detectable rise, an improvement" in page
    assert page.count("<svg") >= 4  # curves, score histogram, margins, by-subject
    assert "Gout is caused by uric acid crystals." in page and "model card" in page and "datacard" in page
    assert "answer scores per generator" in page and "score margin" in page and "acc by subject" in page
    assert "direct, loglik, full choices, 0-shot, chat template" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")


def test_no_change_is_reported_as_such(tmp_path):
    same = [1, 0] * 30
    run = fake_run(tmp_path, same, same)
    page = build_report(run, run / "report.html", title="t", recipe={}).read_text()
    assert "no detectable change" in page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_report_renders_in_headless_chromium(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    run = fake_run(tmp_path, [1, 0, 0, 1] * 20, [1, 1, 0, 1] * 20)
    out = build_report(run, run / "report.html", title="render test", recipe={})
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(out.as_uri())
        charts = page.locator("svg.chart")
        assert charts.count() >= 4
        box = charts.first.bounding_box()
        assert box and box["width"] > 200 and box["height"] > 100
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        charts.first.screenshot(path=str(tmp_path / "chart.png"))
        browser.close()
    assert errors == []
    from PIL import Image

    img = Image.open(tmp_path / "chart.png").convert("RGB")
    colors = {c for _, c in img.getcolors(maxcolors=1 << 20)}
    assert (37, 99, 235) in colors or len(colors) > 20  # the chart has drawn, coloured content
    assert json.dumps(errors) == "[]"
