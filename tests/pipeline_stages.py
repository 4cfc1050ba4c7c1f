"""Stage types used only by the foundation tests: they write files and count their runs."""

from __future__ import annotations

from pathlib import Path

from meditune.io import read_json, write_json
from meditune.stages import REGISTRY, StageConfig, StageContext, stage_type

RUNS: dict[str, int] = {}


class CountConfig(StageConfig):
    value: int = 0
    label: str = ""
    source: str | None = None
    fail_first: bool = False


class ResumeConfig(StageConfig):
    items: int = 5
    crash_at: int | None = None


def register_test_stages() -> None:
    if "test_count" in REGISTRY:
        return

    @stage_type("test_count", CountConfig, "writes value (+ source's text) to out.json",
                estimate=lambda c, r: {"items": c.value})
    def run_count(cfg: CountConfig, ctx: StageContext) -> dict[str, str]:
        RUNS[cfg.name] = RUNS.get(cfg.name, 0) + 1
        marker = ctx.path("attempted")
        if cfg.fail_first and not marker.exists():
            marker.write_text("1")
            raise RuntimeError("planned failure")
        upstream = read_json(cfg.source)["value"] if cfg.source else 0
        out = ctx.path("out.json")
        write_json(out, {"value": cfg.value + upstream, "label": cfg.label})
        return {"result": str(out)}

    @stage_type("test_resume", ResumeConfig, "appends items one by one; resumes from what is on disk")
    def run_resume(cfg: ResumeConfig, ctx: StageContext) -> dict[str, str]:
        shard = ctx.path("items.txt")
        done = shard.read_text().split() if shard.exists() else []
        for i in range(len(done), cfg.items):
            if cfg.crash_at is not None and i == cfg.crash_at and not ctx.path("crashed").exists():
                ctx.path("crashed").write_text("1")
                raise RuntimeError("simulated crash")
            with open(shard, "a") as f:
                f.write(f"{i}\n")
        return {"items": str(Path(shard))}
