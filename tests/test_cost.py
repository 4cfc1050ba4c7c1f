"""Stage costs (meditune.cost): a stage that allocates a known amount shows it in its manifest and the report."""

from __future__ import annotations

import sys
import time
import types

import pytest

from meditune import cost
from meditune.io import read_json, write_json
from meditune.pipeline import Pipeline
from meditune.recipe import parse_recipe
from meditune.stages import REGISTRY, StageConfig, StageContext, stage_type

MIB = 1 << 20


class AllocConfig(StageConfig):
    mib: int = 0
    busy_s: float = 0.0
    generated: int = 0
    scored: int = 0


def _register() -> None:
    if "test_alloc" in REGISTRY:
        return

    @stage_type("test_alloc", AllocConfig, "allocates and touches `mib` MiB, burns CPU, counts tokens")
    def run_alloc(cfg: AllocConfig, ctx: StageContext) -> dict[str, str]:
        start = cost.current_rss_mb()
        block = b"\x01" * (cfg.mib * MIB)  # filled, so every page is resident
        end = time.process_time() + cfg.busy_s
        while time.process_time() < end:
            pass
        cost.count_tokens("generated", cfg.generated)
        cost.count_tokens("scored", cfg.scored)
        del block
        out = ctx.path("rss.json")
        write_json(out, {"start_mb": start})
        return {"rss": str(out)}


def _run(tmp_path, stages):
    _register()
    recipe = parse_recipe({"name": "costs", "stages": stages}, "test")
    pipe = Pipeline(recipe, tmp_path / "run")
    pipe.run()
    return pipe


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmRSS / VmHWM are Linux")
def test_stage_that_allocates_shows_its_peak_cpu_and_tokens(tmp_path):
    pipe = _run(tmp_path, [
        {"name": "big", "type": "test_alloc", "mib": 300, "busy_s": 0.3, "generated": 7, "scored": 5},
        {"name": "small", "type": "test_alloc", "mib": 10},
    ])
    big, small = pipe.manifest("big"), pipe.manifest("small")
    for m in (big, small):
        assert set(m["cost"]) >= {"wall_s", "cpu_s", "peak_rss_mb", "rss_method", "tokens_generated",
                                  "tokens_scored", "tokens_trained"}
    if big["cost"]["rss_method"] != "vmhwm-reset":
        pytest.skip("this kernel refuses the peak-RSS reset")
    start_big = read_json(big["outputs"]["rss"])["start_mb"]
    start_small = read_json(small["outputs"]["rss"])["start_mb"]
    assert big["cost"]["peak_rss_mb"] - start_big >= 290
    # the peak is the stage's own: the 300 MiB of the stage before do not show in the next one
    assert small["cost"]["peak_rss_mb"] - start_small < 100
    assert big["cost"]["cpu_s"] >= 0.25 and big["cost"]["wall_s"] >= big["cost"]["cpu_s"] * 0.5
    assert (big["cost"]["tokens_generated"], big["cost"]["tokens_scored"], big["cost"]["tokens_trained"]) == (7, 5, 0)
    assert small["cost"]["tokens_generated"] == 0


def test_report_shows_cost_columns_and_total(tmp_path):
    from meditune.report.stage import build_report

    _run(tmp_path, [
        {"name": "first", "type": "test_alloc", "generated": 1200, "scored": 30},
        {"name": "second", "type": "test_alloc", "generated": 34},
    ])
    run_dir = tmp_path / "run"
    for name, peak in (("first", 1536.0), ("second", 700.0)):  # known values: rewrite the measured ones
        m = read_json(run_dir / name / "manifest.json")
        m["cost"].update(peak_rss_mb=peak, cpu_s=3.0, wall_s=4.0)
        write_json(run_dir / name / "manifest.json", m)
    out = build_report(run_dir, tmp_path / "report.html", title="t", recipe={})
    html = out.read_text(encoding="utf-8")
    what_ran = html[html.index("What ran"):]
    what_ran = what_ran[:what_ran.index("</table>")]
    for header in ("time", "CPU", "peak RSS", "tokens generated", "tokens scored", "tokens trained"):
        assert f"<th>{header}</th>" in what_ran
    assert "peak GPU" not in what_ran  # no stage ran on CUDA
    assert "1.50 GiB" in what_ran and "700 MiB" in what_ran and "1,200" in what_ran
    total = what_ran[what_ran.index("total"):]
    assert "8 s" in total and "6 s" in total and "1.50 GiB" in total and "1,234" in total and ">30<" in total


def test_total_cost_adds_times_and_tokens_and_keeps_the_largest_peak():
    total = cost.total_cost([{"wall_s": 1.5, "cpu_s": 1.0, "peak_rss_mb": 900.0, "rss_method": "vmhwm-reset",
                              "tokens_generated": 10},
                             {"wall_s": 2.0, "cpu_s": 0.5, "peak_rss_mb": 1200.0, "tokens_generated": 5,
                              "peak_gpu_mb": 80.0}])
    assert total == {"wall_s": 3.5, "cpu_s": 1.5, "peak_rss_mb": 1200.0, "tokens_generated": 15, "peak_gpu_mb": 80.0}


def test_unknown_token_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown token kind"):
        cost.count_tokens("read", 1)


def test_peak_gpu_memory_is_reset_and_read_on_cuda(monkeypatch):
    calls = []
    fake_cuda = types.SimpleNamespace(
        is_initialized=lambda: True, device_count=lambda: 2,
        reset_peak_memory_stats=lambda d: calls.append(("reset", d)),
        max_memory_allocated=lambda d: (300 if d == 1 else 100) * MIB)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=fake_cuda))
    with cost.measure() as meter:
        pass
    assert calls == [("reset", 0), ("reset", 1)]
    assert meter.result["peak_gpu_mb"] == 300.0


def test_no_gpu_column_without_cuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(
        cuda=types.SimpleNamespace(is_initialized=lambda: False)))
    with cost.measure() as meter:
        pass
    assert "peak_gpu_mb" not in meter.result
