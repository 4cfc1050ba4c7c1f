"""Run a recipe's stages in order with a manifest per stage; skip unchanged finished stages, resume others.

runs/<name>/<stage>/manifest.json holds the resolved config, hashes of inputs, package versions, times and
status. A stage is skipped when its manifest says "done" with the same fingerprint (config + input hashes +
upstream output hashes). A stage that crashed ("running"/"failed") with the same fingerprint re-runs in
place, so its own on-disk resume logic (generation shards, checkpoints) continues where it stopped.
A changed config, or --force, starts the stage from an empty directory.

Under torchrun / accelerate launch every rank runs the pipeline: rank 0 decides what runs and writes the manifests;
a stage type registered with all_ranks splits its work across the ranks (meditune.distributed), any other runs on
rank 0 alone while the others wait; every rank passes a barrier before rank 0 marks a stage done.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from meditune import distributed
from meditune.cost import measure
from meditune.errors import ConfigError
from meditune.io import child, hash_obj, hash_path, is_inside, read_json, remove_tree, write_json
from meditune.logs import log_to_file
from meditune.memory import release_stage_memory
from meditune.recipe import Recipe
from meditune.stages import (
    RECIPE_DEFAULTS,
    StageConfig,
    StageContext,
    apply_recipe_defaults,
    registry,
    upstream_refs,
)
from meditune.versions import package_versions

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
BIG_FILE = 256 << 20  # files larger than this are fingerprinted by size and mtime, not content


RUN_RELATIVE = "run-relative"  # manifest["paths"]: outputs are stored relative to the run directory


def store_outputs(outs: dict[str, str], run_dir: Path) -> dict[str, str]:
    """Outputs as a manifest stores them: paths inside the run directory relative to it (so the run directory
    can be moved, or read from another working directory), other existing paths absolute, other values as is."""
    stored = {}
    for key, value in outs.items():
        p = Path(value)
        if is_inside(p, run_dir):
            stored[key] = p.resolve().relative_to(run_dir.resolve()).as_posix()
        elif p.exists():
            stored[key] = str(p.resolve())
        else:
            stored[key] = value
    return stored


def manifest_outputs(m: dict[str, Any], run_dir: Path) -> dict[str, str]:
    """A manifest's outputs as paths usable from here. Old manifests stored paths relative to the working
    directory of the run; those are found again under the run directory by their stage-directory suffix."""
    outs = m.get("outputs") or {}
    if m.get("paths") == RUN_RELATIVE:
        return {k: v if Path(v).is_absolute() else str(run_dir / v) for k, v in outs.items()}
    stage = str(m.get("stage") or "")
    resolved = {}
    for key, value in outs.items():
        p = Path(value)
        if not p.is_absolute() and not p.exists() and stage in p.parts:
            idx = len(p.parts) - 1 - p.parts[::-1].index(stage)
            moved = run_dir.joinpath(*p.parts[idx:])
            if moved.exists():
                value = str(moved)
        resolved[key] = value
    return resolved


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def resolve_refs(value: Any, outputs: dict[str, dict[str, str]], *, keep_pending: bool = False) -> Any:
    """Replace "@stage[.output]" strings by the output paths of finished stages (keep_pending: leave references
    to stages not in `outputs` as they are, for a dry run's estimates)."""
    if isinstance(value, str) and value.startswith("@"):
        stage, _, key = value[1:].partition(".")
        if stage not in outputs:
            if keep_pending:
                return value
            raise ConfigError(f"reference {value!r}: stage {stage!r} has not run")
        outs = outputs[stage]
        if not key:
            if not outs:
                raise ConfigError(f"reference {value!r}: stage {stage!r} has no outputs")
            return next(iter(outs.values()))
        if key not in outs:
            raise ConfigError(f"reference {value!r}: stage {stage!r} has outputs {sorted(outs)}, not {key!r}")
        return outs[key]
    if isinstance(value, dict):
        return {k: resolve_refs(v, outputs, keep_pending=keep_pending) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_refs(v, outputs, keep_pending=keep_pending) for v in value]
    return value


def fingerprint_path(path: Path) -> str:
    """Content hash of a file or directory (big files by size and mtime, to keep re-runs fast)."""
    if path.is_file() and path.stat().st_size > BIG_FILE:
        st = path.stat()
        return f"size={st.st_size},mtime={int(st.st_mtime)}"
    if path.is_dir() and any(p.stat().st_size > BIG_FILE for p in path.rglob("*") if p.is_file()):
        return hash_obj(sorted((str(p.relative_to(path)), fingerprint_path(p))
                               for p in path.rglob("*") if p.is_file()))
    return hash_path(path)


def _local_path(value: str) -> Path | None:
    """The local file or directory a config string names: a path, or the file behind a `loader:path` spec."""
    try:
        p = Path(value).expanduser()
        if p.exists() and str(p) not in (".", "/"):
            return p
        if ":" in value:
            from meditune.data.registry import spec_path

            return spec_path(value)
    except (OSError, ValueError):
        return None
    return None


def input_hashes(value: Any) -> dict[str, str]:
    """Hashes of every existing local file or directory named in a (resolved) config."""
    found: dict[str, str] = {}

    def walk(v: Any) -> None:
        if isinstance(v, str) and v and len(v) < 4096 and not v.startswith(("http://", "https://")):
            p = _local_path(v)
            if p is not None:
                found[v] = fingerprint_path(p)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(value)
    return found


@dataclass
class PlanItem:
    stage: StageConfig
    action: str  # "run" | "skip" | "resume" | "excluded"
    reason: str
    estimate: dict[str, Any] | None = None


class Pipeline:
    """Runs the stages of a recipe in a run directory."""

    def __init__(self, recipe: Recipe, run_dir: Path | None = None):
        self.recipe = recipe
        self.run_dir = Path(run_dir) if run_dir else recipe.resolved_run_dir()
        self.types = registry()
        self._check_refs()

    def _check_refs(self) -> None:
        names = [s.name for s in self.recipe.stages]
        for i, s in enumerate(self.recipe.stages):
            for ref in upstream_refs(s.model_dump()):
                if ref not in names:
                    raise ConfigError(f"stage {s.name!r} refers to '@{ref}', which is not a stage of the recipe")
                if names.index(ref) >= i:
                    raise ConfigError(f"stage {s.name!r} refers to '@{ref}', which comes later; "
                                      "list stages in the order they run")

    def _upstream(self, stage: StageConfig) -> list[str]:
        """Stages whose outputs this one reads: its @refs, or every earlier stage for depends_on_all types."""
        if self.types[stage.type].depends_on_all:
            names = [s.name for s in self.recipe.stages]
            return names[: names.index(stage.name)]
        return upstream_refs(stage.model_dump())

    def stage_dir(self, name: str) -> Path:
        return child(self.run_dir, name)

    def manifest(self, name: str) -> dict[str, Any] | None:
        """A stage's manifest with its outputs as usable paths (see manifest_outputs)."""
        path = self.stage_dir(name) / MANIFEST
        if not path.exists():
            return None
        m = read_json(path)
        m["outputs"] = manifest_outputs(m, self.run_dir)
        return m

    def _fingerprint(self, stage: StageConfig, outputs: dict[str, dict[str, str]]) -> tuple[dict, dict, str]:
        resolved = resolve_refs(stage.model_dump(mode="json"), outputs)
        upstream = {ref: (self.manifest(ref) or {}).get("outputs_hash") for ref in self._upstream(stage)}
        inputs = input_hashes(resolved)
        recipe_wide = self.recipe.model_dump(include=set(RECIPE_DEFAULTS))
        if recipe_wide["batch_size"] is None:  # unset: the fingerprints runs had before the setting existed
            del recipe_wide["batch_size"]
        fp = hash_obj({"config": resolved, "recipe": recipe_wide, "inputs": inputs, "upstream": upstream})
        return resolved, inputs, fp

    def _selection(self, only, from_stage, force) -> tuple[set[str], set[str], set[str]]:
        names = [s.name for s in self.recipe.stages]
        for n in (only or []) + ([from_stage] if from_stage else []) + (force or []):
            if n not in names and n != "all":
                raise ConfigError(f"no stage named {n!r}; stages: {', '.join(names)}")
        start = names.index(from_stage) if from_stage else 0
        excluded = {n for i, n in enumerate(names) if (only and n not in only) or i < start}
        forced = set(names) if force and "all" in force else set(force or [])
        if from_stage:
            forced.add(from_stage)
        return set(names), excluded, forced

    def _decide(self, s: StageConfig, outputs: dict[str, dict[str, str]], excluded: set[str],
                forced: set[str], pending: set[str]) -> tuple[str, str]:
        """(action, reason) for one stage, given the outputs of the stages before it."""
        if s.name in excluded:
            return "excluded", "not selected"
        if s.name in forced:
            return "run", "forced"
        m = self.manifest(s.name)
        if m is None:
            return "run", "not run yet"
        upstream_pending = [r for r in self._upstream(s) if r in pending]
        if upstream_pending:
            return "run", f"after {', '.join(upstream_pending)} re-runs"
        try:
            _, _, fp = self._fingerprint(s, outputs)
        except ConfigError:
            return "run", "upstream not finished"
        if m.get("fingerprint") != fp:
            return "run", "config or inputs changed"
        if m.get("status") == "done" and self._outputs_exist(m):
            return "skip", f"done {m.get('finished', '')}, unchanged"
        return "resume", f"status {m.get('status')}: continues from disk"

    def plan(self, *, only: list[str] | None = None, from_stage: str | None = None,
             force: list[str] | None = None) -> list[PlanItem]:
        """What `run` would do for each stage, without running anything."""
        _, excluded, forced = self._selection(only, from_stage, force)
        items, outputs, pending = [], {}, set()
        for s in self.recipe.stages:
            est = self._estimate(s, outputs)
            action, reason = self._decide(s, outputs, excluded, forced, pending)
            items.append(PlanItem(s, action, reason, est))
            m = self.manifest(s.name)
            if action in ("run", "resume"):
                pending.add(s.name)
            elif m and m.get("status") == "done":
                outputs[s.name] = m.get("outputs", {})
        return items

    def _estimate(self, s: StageConfig, outputs: dict[str, dict[str, str]]) -> dict[str, Any] | None:
        """The stage type's work estimate, with references to finished stages resolved (so their outputs are
        counted); references to stages that will run first stay "@stage" (estimates print where from)."""
        st = self.types[s.type]
        if st.estimate is None:
            return None
        try:
            cfg = type(s).model_validate(resolve_refs(s.model_dump(mode="json", exclude_unset=True), outputs,
                                                      keep_pending=True))
        except ValidationError:
            cfg = s
        return st.estimate(cfg, self.recipe)

    @staticmethod
    def _outputs_exist(m: dict[str, Any]) -> bool:
        return all(Path(p).exists() for p in m.get("outputs", {}).values())

    def run(self, *, only: list[str] | None = None, from_stage: str | None = None,
            force: list[str] | None = None) -> dict[str, dict[str, str]]:
        """Run the stages in order, deciding skip/run/resume for each after its upstream ran."""
        _, excluded, forced = self._selection(only, from_stage, force)
        ranks = distributed.current(self.recipe.model.device)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        outputs: dict[str, dict[str, str]] = {}
        self.skipped: list[str] = []
        with log_to_file(self.run_dir / "run.log") if ranks.is_main else nullcontext():
            log.info("run %s in %s: %d stages", self.recipe.name, self.run_dir, len(self.recipe.stages))
            for s in self.recipe.stages:
                # rank 0 decides for every rank (their view of the run directory may lag behind)
                action, reason, done_outputs = ranks.broadcast(self._decision(s, outputs, excluded, forced)
                                                               if ranks.is_main else None)
                if action in ("skip", "excluded"):
                    if done_outputs is not None:
                        outputs[s.name] = done_outputs
                    if action == "skip":
                        self.skipped.append(s.name)
                        log.info("skip %s: %s", s.name, reason)
                    continue
                outputs[s.name] = self._run_stage(s, outputs, fresh=action == "run", ranks=ranks)
        return outputs

    def _decision(self, s: StageConfig, outputs: dict[str, dict[str, str]], excluded: set[str],
                  forced: set[str]) -> tuple[str, str, dict[str, str] | None]:
        """(action, reason, outputs of the finished stage or None) for one stage."""
        action, reason = self._decide(s, outputs, excluded, forced, set())
        m = self.manifest(s.name)
        return action, reason, m["outputs"] if m and m.get("status") == "done" else None

    def _run_stage(self, s: StageConfig, outputs: dict[str, dict[str, str]], *, fresh: bool,
                   ranks: distributed.Ranks = distributed.SOLO) -> dict[str, str]:
        sdir = self.stage_dir(s.name)
        resolved, inputs, fp = self._fingerprint(s, outputs)
        manifest = {"stage": s.name, "type": s.type, "status": "running", "config": resolved,
                    "recipe": {"name": self.recipe.name, "model": self.recipe.model.spec, "seed": self.recipe.seed},
                    "inputs": inputs, "fingerprint": fp, "versions": package_versions(),
                    "started": now(), "finished": None, "paths": RUN_RELATIVE, "outputs": {}}
        if ranks.is_main:
            if fresh and sdir.exists():
                remove_tree(sdir, inside=self.run_dir)  # a changed or forced stage starts clean; a crashed one resumes
            sdir.mkdir(parents=True, exist_ok=True)
            write_json(sdir / MANIFEST, manifest)
        ranks.barrier()  # no rank touches the stage directory before rank 0 has cleaned it
        log.info("run %s (%s)", s.name, s.type)
        # re-validate from the keys the recipe set (refs resolved), so "unset" stays unset (model_fields_set), then
        # fill what the stage left unset from the recipe-wide settings: the one place that happens
        cfg = type(s).model_validate(resolve_refs(s.model_dump(mode="json", exclude_unset=True), outputs))
        cfg = apply_recipe_defaults(cfg, self.recipe)
        ctx = StageContext(run_dir=self.run_dir, stage_dir=sdir, recipe=self.recipe, outputs=outputs)
        stage = self.types[s.type]
        t0 = time.time()
        distributed.take_tally()
        try:
            with measure() as meter, log_to_file(sdir / "stage.log") if ranks.is_main else nullcontext():
                if stage.all_ranks or not ranks.distributed:
                    outs = stage.run(cfg, ctx) or {}
                elif ranks.is_main:
                    with distributed.solo():  # rank 0 alone; the others wait at the barrier below
                        outs = stage.run(cfg, ctx) or {}
                else:
                    outs = {}
        except BaseException as e:
            if ranks.is_main:
                manifest.update(status="failed", finished=now(), error=f"{type(e).__name__}: {e}",
                                duration_s=round(time.time() - t0, 2), cost=meter.result)
                write_json(sdir / MANIFEST, manifest)
            raise
        finally:
            release_stage_memory()  # what the stage loaded goes, and freed heap pages go back to the OS
        ranks.barrier()  # every rank has finished its share before the stage is marked done
        outs = ranks.broadcast({k: str(v) for k, v in outs.items()})
        if ranks.is_main:
            if ranks.distributed:
                manifest["ranks"] = {"world_size": ranks.world, "all_ranks": stage.all_ranks,
                                     "rows_per_rank": distributed.take_tally()}
            # cost: this process's (rank 0's) share, before the barrier
            manifest.update(status="done", finished=now(), duration_s=round(time.time() - t0, 2), cost=meter.result,
                            outputs=store_outputs(outs, self.run_dir),
                            outputs_hash=hash_obj({k: fingerprint_path(Path(v)) for k, v in outs.items()
                                                   if Path(v).exists()}))
            write_json(sdir / MANIFEST, manifest)
        log.info("done %s in %.1f s (CPU %.1f s, peak RSS %.0f MiB)", s.name, time.time() - t0,
                 meter.result["cpu_s"], meter.result["peak_rss_mb"])
        return outs
