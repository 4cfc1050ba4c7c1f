"""Generate over a whole dataset: fixed work units, append-only shards, resume after SIGKILL, progress bar.

Layout of a job directory:
  job.json            what the job is (model key + fingerprint of all requests); a different job is refused
  shards/shard-N.jsonl one shard per run of the job, one line per finished request, appended unit by unit
  generations.jsonl   the merged result in input order, written atomically when every request is done

Exactly-once (meditune.shards.ShardDir): a run never appends to an older shard (a torn last line stays at the end
of its own shard and is skipped), a request counts as done when its line is complete, and the merge keeps one
line per id.
Reproducibility: requests are cut into fixed units of `unit_size` in input order and a unit is always generated
as a whole (finished ids are dropped when writing), so a resumed job batches exactly like an uninterrupted one.
Several ranks (torchrun, meditune.distributed): each rank generates the units it owns into its own shard
(`shard-N-r<rank>.jsonl`), the rows are gathered to every rank and rank 0 writes generations.jsonl, the same
file one process writes; every rank gets the rows back (JobResult.rows).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meditune.distributed import Ranks, current, rank_path
from meditune.errors import ConfigError, InputError
from meditune.generation.base import Backend, Generation, GenerationRequest, SamplingParams
from meditune.generation.cache import GenerationCache, request_key
from meditune.io import hash_obj, write_jsonl
from meditune.shards import ShardDir, check_identity

log = logging.getLogger(__name__)

OUTPUT_NAME = "generations.jsonl"


@dataclass
class JobResult:
    """What a job run did; `path` is the merged output."""

    path: Path
    shards: Path
    records: int
    generated: int  # requests generated in this run (cache misses)
    cached: int  # requests answered from the cache in this run
    resumed: int  # requests already done by earlier runs
    completion_tokens: int
    seconds: float  # wall time of the run, model loading included
    generate_seconds: float = 0.0  # time spent generating (what tokens/s is measured against)
    world_size: int = 1  # ranks that shared the work (counts above are summed over them)
    rows: list[dict[str, Any]] | None = None  # the merged records in input order (what generations.jsonl holds)

    @property
    def tokens_per_second(self) -> float:
        """Completion tokens per second of generation time in this run."""
        return self.completion_tokens / self.generate_seconds if self.generate_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items() if k != "rows"}
        return {**d, "tokens_per_second": round(self.tokens_per_second, 2)}


def request_from_dict(obj: Any, *, file: object = None, line: int | None = None,
                      defaults: SamplingParams | None = None) -> GenerationRequest:
    """A GenerationRequest from its JSON form (`to_dict`); errors name file, line and field."""
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, got {type(obj).__name__}", file=file, line=line)
    rid = obj.get("id")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid) == "":
        raise InputError("missing or empty id", file=file, line=line, field="id")
    prompt, messages = obj.get("prompt"), obj.get("messages") or []
    if prompt is not None and not isinstance(prompt, str):
        raise InputError("must be a string", file=file, line=line, field="prompt")
    if prompt is None:
        if not isinstance(messages, list) or not messages:
            raise InputError("give a non-empty 'messages' list or a 'prompt'", file=file, line=line,
                             field="messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) \
                    or m.get("role") not in ("system", "user", "assistant"):
                raise InputError("must be {role: system|user|assistant, content: str}", file=file, line=line,
                                 field=f"messages[{i}]")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    params = defaults or SamplingParams()
    raw = obj.get("params") or {}
    if not isinstance(raw, dict):
        raise InputError("must be an object", file=file, line=line, field="params")
    fields = set(SamplingParams.__dataclass_fields__)
    for k in raw:
        if k not in fields:
            raise InputError(f"unknown sampling parameter; valid: {', '.join(sorted(fields))}", file=file,
                             line=line, field=f"params.{k}")
    merged = {**params.to_dict(), **raw}
    stop = merged["stop"]
    merged["stop"] = tuple([stop] if isinstance(stop, str) else stop or ())
    try:
        params = SamplingParams(**merged)
    except TypeError as e:
        raise InputError(str(e), file=file, line=line, field="params") from None
    return GenerationRequest(str(rid), messages if prompt is None else [], params, prompt)


def _job_identity(requests: Sequence[GenerationRequest], model: dict[str, Any], unit_size: int) -> dict[str, Any]:
    return {"model": model, "requests": hash_obj([r.to_dict() for r in requests]), "count": len(requests),
            "unit_size": unit_size}


def _lock(out_dir: Path, rank: int = 0):
    """An exclusive lock on the job directory (per rank): two runs appending to one job would waste work."""
    import fcntl

    f = open(rank_path(out_dir / ".lock", rank), "a")  # noqa: SIM115 - kept open for the lock's lifetime
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ConfigError(f"{out_dir} is being generated by another process") from None
    return f


def _next_shard(shards: Path) -> str:
    """The number of this run's own shard: one past the highest on disk."""
    nums = [int(p.stem.split("-")[1]) for p in shards.glob("shard-*.jsonl") if p.stem.split("-")[1].isdigit()]
    return f"{max(nums, default=-1) + 1:05d}"


def _record(req: GenerationRequest, gens: list[Generation], label: str) -> dict[str, Any]:
    row: dict[str, Any] = {"id": req.id}
    if req.prompt is not None:
        row["prompt"] = req.prompt
    else:
        row["messages"] = req.messages
    row["params"] = req.params.to_dict()
    row["model"] = label
    row["generations"] = [{k: v for k, v in g.to_dict().items() if k != "request_id"} for g in gens]
    return row


def run_job(requests: Sequence[GenerationRequest], backend: Backend | Callable[[], Backend], out_dir: str | os.PathLike,
            *, model: dict[str, Any], label: str = "model", unit_size: int = 64,
            cache: GenerationCache | None = None, progress: bool = True, ranks: Ranks | None = None) -> JobResult:
    """Generate every request into out_dir, resuming whatever an earlier (killed) run finished.

    `backend` may be a zero-argument factory, called only when something is left to generate (on this rank).
    Under several ranks every rank calls this with the same requests (see the module docstring).
    """
    start = time.perf_counter()
    ranks = ranks or current()
    out_dir, unit_size = Path(out_dir), max(1, unit_size)
    ids = [r.id for r in requests]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"duplicate request id {dup!r}: ids must be unique to resume", field="id")
    (out_dir / "shards").mkdir(parents=True, exist_ok=True)
    lock = _lock(out_dir, ranks.rank)  # noqa: F841 - held (and released by the OS even on SIGKILL) until we return
    error = None
    if ranks.is_main:
        try:
            check_identity(out_dir / "job.json", _job_identity(requests, model, unit_size), on_mismatch="refuse",
                           refusal=f"{out_dir} holds a different generation job (other model, requests or unit "
                                   "size); choose another output directory or remove it")
        except ConfigError as e:
            error = str(e)
    error = ranks.broadcast(error)
    if error:
        raise ConfigError(error)
    writer = _next_shard(out_dir / "shards") + (f"-r{ranks.rank}" if ranks.distributed else "")
    shards = ShardDir(out_dir / "shards", prefix="shard", writer=writer, ranks=ranks)
    done = shards.done
    units = [list(requests[i:i + unit_size]) for i in range(0, len(requests), unit_size)]
    mine = [u for k, u in enumerate(units) if ranks.owns(k)]
    resumed = sum(1 for u in mine for r in u if r.id in done)
    todo_units = [u for u in mine if any(r.id not in done for r in u)]
    generated = cached = tokens = 0
    gen_s = 0.0
    failure: Exception | None = None
    try:
        if todo_units:
            generated, cached, tokens, gen_s = _generate_units(
                todo_units, backend, shards, model=model, label=label, cache=cache,
                progress=_Progress(progress and ranks.is_main, total=sum(len(u) for u in mine), done=resumed))
    except Exception as e:
        if not ranks.distributed:
            raise
        failure = e
    # A rank that failed must not leave the others waiting in the merge: every rank raises (so a caller that
    # retries, as the judges do, retries on every rank together and the collectives stay in step).
    failed = ranks.first_failure(f"rank {ranks.rank}: {type(failure).__name__}: {failure}" if failure else None)
    if failed:
        lock.close()  # free for the retry now: the failure's traceback keeps this frame (and the lock) alive
        if failure is not None:
            raise failure
        raise RuntimeError(f"{out_dir}: generation failed on {failed}")
    done = shards.merge()
    if ranks.distributed:  # the counts of the whole job; generation time of the slowest rank
        counts = ranks.all_gather((generated, cached, resumed, tokens, gen_s))
        generated, cached, resumed, tokens = (sum(c[i] for c in counts) for i in range(4))
        gen_s = max(c[4] for c in counts)
    missing = [i for i in ids if i not in done]
    if missing:  # a rank's shard files were not visible to rank 0, or a rank skipped a unit it owns
        raise RuntimeError(f"{out_dir}: {len(missing)} requests have no result after the merge (first "
                           f"{missing[0]!r})")
    rows = [done[i] for i in ids]
    path = out_dir / OUTPUT_NAME
    if ranks.is_main:
        write_jsonl(path, rows)
    return JobResult(path, shards.dir, len(rows), generated, cached, resumed, tokens, time.perf_counter() - start,
                     gen_s, ranks.world, rows)


def _generate_units(units: list[list[GenerationRequest]], backend: Backend | Callable[[], Backend], shards: ShardDir,
                    *, model: dict[str, Any], label: str, cache: GenerationCache | None,
                    progress: _Progress) -> tuple[int, int, int, float]:
    """Generate (or take from the cache) each unit whole and append its unfinished requests to `shards`;
    returns (generated, cached, completion tokens, generation seconds)."""
    done = shards.done
    generated = cached = tokens = 0
    gen_s = 0.0
    inner = backend() if callable(backend) and not hasattr(backend, "generate") else backend
    with progress as bar:
        for unit in units:
            keys = [request_key(model, r) for r in unit] if cache is not None else []
            hits = [cache.get(k, r.id) for k, r in zip(keys, unit, strict=True)] if cache is not None else [None]
            # All or nothing per unit: a partly cached unit is generated whole, so batching never depends
            # on how far an earlier (killed) run got.
            if all(h is not None for h in hits):
                results, cached = hits, cached + len(unit)
            else:
                t0 = time.perf_counter()
                results = inner.generate(unit)
                gen_s += time.perf_counter() - t0
                generated += len(unit)
            rows = [_record(r, g, label) for r, g in zip(unit, results, strict=True) if r.id not in done]
            shards.add(rows)
            if cache is not None and results is not hits:
                cache.put(list(zip(keys, results, strict=True)))
            new_tokens = sum(g["completion_tokens"] for row in rows for g in row["generations"])
            tokens += new_tokens
            bar.advance(len(rows), new_tokens)
    return generated, cached, tokens, gen_s


class _Progress:
    """A rich progress bar with records and completion tokens/s (silent when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.enabled, self.total, self.done = enabled, total, done
        self.tokens, self.t0 = 0, time.perf_counter()

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._p = Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                               console=Console(stderr=True))
            self._p.__enter__()
            self._task = self._p.add_task("generate", total=self.total, completed=self.done, rate="- tok/s")
        return self

    def advance(self, records: int, tokens: int) -> None:
        self.tokens += tokens
        rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
        if self.enabled:
            self._p.update(self._task, advance=records, rate=f"{rate:,.1f} tok/s")
        else:
            log.debug("generated %d records, %.1f tok/s", records, rate)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._p.__exit__(*exc)
