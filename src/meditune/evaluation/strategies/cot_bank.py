"""The CoT bank: self-generated rationales on training items, kept only when they reach the gold answer.

Each attempt (kept or not) is appended to a JSONL shard keyed by model + prompt + item, so an interrupted build
resumes where it stopped and a finished one is reused; changing the model, prompt or sampling makes new keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meditune.distributed import current
from meditune.errors import InputError
from meditune.generation.base import Backend, GenerationRequest, SamplingParams
from meditune.io import hash_obj
from meditune.letters import trim_rationale
from meditune.records import MCQItem, parse_record
from meditune.shards import Shard, read_shard

from .cot import PROMPT_VERSION, RetryPolicy, cot_messages, generate_parsed

log = logging.getLogger(__name__)


@dataclass
class BankEntry:
    """A training item with a self-generated rationale that ends in its gold "Answer: X"."""

    item: MCQItem
    rationale: str


@dataclass
class CotBank:
    """Kept entries (in training-file order) and what building the bank cost."""

    entries: list[BankEntry]
    attempted: int = 0
    reused: int = 0  # attempts found on disk (resumed or cached)
    completion_tokens: int = 0
    path: Path | None = None

    @property
    def kept(self) -> int:
        return len(self.entries)

    def summary(self) -> dict:
        """Counts for results.json."""
        return {"attempted": self.attempted, "kept": self.kept, "reused_from_disk": self.reused,
                "keep_rate": self.kept / self.attempted if self.attempted else 0.0,
                "completion_tokens": self.completion_tokens, "path": str(self.path) if self.path else None}


def bank_key(model: str, params: SamplingParams, item: MCQItem) -> str:
    """Cache key of one attempt: model, prompt version, sampling settings and the item's content."""
    return hash_obj({"model": model, "prompt": PROMPT_VERSION, "params": params.to_dict(),
                     "item": item.model_dump(mode="json", include={"question", "options", "answer", "context"})})


def _attempt(path: Path) -> Callable[[int, Any], dict]:
    """A bank row parser naming the file and line of a malformed row."""
    def parse(line: int, row: Any) -> dict:
        if not isinstance(row, dict) or "key" not in row or "item" not in row:
            raise InputError("not a CoT bank row (needs 'key' and 'item')", file=path, line=line)
        return {**row, "item": parse_record(MCQItem, row["item"], file=path, line=line)}

    return parse


def build_cot_bank(items: Sequence[MCQItem], backend: Backend, path: str | Path, *, model: str,
                   max_new_tokens: int = 256, temperature: float = 0.0, seed: int = 0,
                   policy: RetryPolicy = RetryPolicy(), chunk_size: int = 16,
                   progress: Callable[[int, int], None] | None = None) -> CotBank:
    """Generate a zero-shot CoT for every training item (resuming from `path`); keep those reaching gold."""
    ranks = current()  # under several ranks each rank attempts the chunks it owns (meditune.distributed)
    shard = Shard(path, key="key", parse=_attempt(Path(path)), ranks=ranks)
    done = shard.done
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    keys = [bank_key(model, params, it) for it in items]
    todo = [(it, key) for it, key in zip(items, keys, strict=True) if key not in done]
    reused, new = len(items) - len(todo), 0
    for k, start in enumerate(range(0, len(todo), chunk_size)):
        if not ranks.owns(k):  # every rank sees the same todo list: chunk k is rank k mod N's
            continue
        chunk = todo[start:start + chunk_size]
        reqs = [GenerationRequest(id=f"bank-{it.id}", messages=cot_messages(it), params=params) for it, _ in chunk]
        samples = generate_parsed(backend, reqs, [len(it.options) for it, _ in chunk], policy=policy)
        rows = []
        for (it, key), (smp,) in zip(chunk, samples, strict=True):
            correct = smp.answer == it.answer
            rows.append({"key": key, "item_id": it.id, "model": model, "prompt": PROMPT_VERSION,
                         "predicted": smp.answer, "correct": correct,
                         "rationale": trim_rationale(smp.text, len(it.options)) if correct else None,
                         "raw": smp.text, "retries": smp.retries, "completion_tokens": smp.completion_tokens,
                         "item": it.model_dump(mode="json", exclude_none=True)})
        shard.add(rows, [{**row, "item": MCQItem.model_validate(row["item"])} for row in rows])
        new += len(rows)
        log.info("CoT bank: %d/%d new attempts done", new, len(todo))
        if progress:
            progress(new, len(todo))
    done = shard.merge()
    attempts = [done[k] for k in keys]
    entries = [BankEntry(row["item"], row["rationale"]) for row in attempts if row["correct"] and row["rationale"]]
    log.info("CoT bank %s: %d of %d attempts kept (%d reused)", path, len(entries), len(attempts), reused)
    return CotBank(entries, attempted=len(attempts), reused=reused,
                   completion_tokens=sum(int(r.get("completion_tokens", 0)) for r in attempts), path=shard.main)


def load_cot_bank(path: str | Path) -> CotBank:
    """The kept entries of an existing bank file (no generation), e.g. one built by an earlier run."""
    path = Path(path)
    attempts = list({row["key"]: row for row in read_shard(path, parse=_attempt(path))}.values())
    entries = [BankEntry(r["item"], r["rationale"]) for r in attempts if r.get("correct") and r.get("rationale")]
    return CotBank(entries, attempted=len(attempts), reused=len(attempts),
                   completion_tokens=sum(int(r.get("completion_tokens", 0)) for r in attempts), path=path)
