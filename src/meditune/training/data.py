"""Data preparation: meditune records -> chat messages, TRL preference rows, corpus text, and token masks."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meditune.chat import render_chat, with_system
from meditune.errors import ConfigError, InputError
from meditune.io import iter_jsonl
from meditune.records import (
    Chat,
    FileChecks,
    LongFormItem,
    Preference,
    Record,
    SafetyItem,
    detect_kind,
    parse_record,
)


def load_records(data: str, kinds: tuple[type[Record], ...]) -> list[Record]:
    """Records from a JSONL file (type detected per line), or from a data source spec when the data layer has one."""
    path = Path(data)
    if path.is_file():
        out: list[Record] = []
        seen: dict[str, int] = {}
        checks = FileChecks(path)
        for line, obj in iter_jsonl(path):
            if not isinstance(obj, dict):
                raise InputError(f"expected a JSON object, got {type(obj).__name__}", file=path, line=line)
            kind = _kind_of(obj, kinds, path, line)
            rec = parse_record(kind, obj, file=path, line=line)
            rid = getattr(rec, "id", None)
            if rid in seen:
                raise InputError(f"duplicate id {rid!r} (first on line {seen[rid]})", file=path, line=line,
                                 field="id")
            seen[rid] = line
            checks.check(rec, line)
            out.append(rec)
        checks.finish()
        if not out:
            raise InputError("no records", file=path)
        return out
    from meditune.data import load_source

    recs = list(load_source(data))
    bad = [type(r).__name__ for r in recs if not isinstance(r, kinds)]
    if bad:
        raise ConfigError(f"data source {data!r} gives {bad[0]} records; this stage takes "
                          f"{', '.join(k.__name__ for k in kinds)}")
    return recs


def _kind_of(obj: dict[str, Any], kinds: tuple[type[Record], ...], path: Path, line: int) -> type[Record]:
    try:
        kind = detect_kind(obj)
    except InputError as e:
        raise InputError(e.reason, file=path, line=line) from None
    if kind not in kinds:
        raise InputError(f"a {kind.__name__} record; this stage takes {', '.join(k.__name__ for k in kinds)}",
                         file=path, line=line)
    return kind


SFT_KINDS = (Chat, Preference, SafetyItem, LongFormItem)
PREF_KINDS = (Preference,)


def record_messages(rec: Record) -> list[dict[str, str]]:
    """A supervised conversation from a record (Preference: its chosen answer; others: their reference)."""
    if isinstance(rec, Chat):
        msgs = rec.to_messages()
    elif isinstance(rec, Preference):
        msgs = [m.model_dump() for m in rec.prompt] + [{"role": "assistant", "content": rec.chosen}]
    elif isinstance(rec, SafetyItem):
        if not rec.safe_response:
            raise InputError("a SafetyItem needs safe_response to be SFT data", line=f"id {rec.id}",
                             field="safe_response")
        msgs = [{"role": "user", "content": rec.request}, {"role": "assistant", "content": rec.safe_response}]
    elif isinstance(rec, LongFormItem):
        if not rec.reference:
            raise InputError("a LongFormItem needs a reference answer to be SFT data", line=f"id {rec.id}",
                             field="reference")
        msgs = [{"role": "user", "content": rec.question}, {"role": "assistant", "content": rec.reference}]
    else:
        raise InputError(f"{type(rec).__name__} records cannot be SFT data", line=f"id {getattr(rec, 'id', '?')}")
    if not any(m["role"] == "assistant" for m in msgs):
        raise InputError("conversation has no assistant turn to learn", line=f"id {rec.id}", field="messages")
    return msgs


def tokenize_chat(tokenizer: Any, messages: list[dict[str, str]], system_prompt: str | None,
                  max_length: int) -> dict[str, list[int]]:
    """input_ids with assistant_masks (1 on assistant tokens, end-of-turn included), for any chat template.

    Works by rendering each prefix of the conversation: the text an assistant turn adds after the generation
    prompt is its span; templates that are not prefix-preserving are rejected with a clear message.
    """
    msgs = with_system(messages, tokenizer, system_prompt)
    full = render_chat(tokenizer, msgs, system_prompt=None, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = render_chat(tokenizer, msgs[:i], system_prompt=None, add_generation_prompt=True) if i else ""
        upto = render_chat(tokenizer, msgs[: i + 1], system_prompt=None, add_generation_prompt=False)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise ConfigError("the chat template does not render conversations prefix by prefix; "
                              "assistant-only loss cannot locate the assistant turns")
        spans.append((len(before), len(upto)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, mask = enc["input_ids"], []
    for start, end in enc["offset_mapping"]:
        mask.append(int(any(a <= start < b or (start < a < end) for a, b in spans)))
    return {"input_ids": ids[:max_length], "assistant_masks": mask[:max_length]}


def mix_general(med: list[Any], general: list[Any], ratio: float, seed: int) -> list[Any]:
    """Mix general data so that it makes up `ratio` of the result (Med42-v2 used 0.265); shuffled, seeded."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"general_ratio must be in [0, 1), got {ratio}")
    rng = random.Random(seed)
    want = round(len(med) * ratio / (1.0 - ratio)) if ratio else 0
    if want > len(general):
        raise ConfigError(f"general_ratio {ratio} needs {want} general examples for {len(med)} medical ones; "
                          f"general_data has only {len(general)}")
    mixed = list(med) + rng.sample(list(general), want)
    rng.shuffle(mixed)
    return mixed


def preference_row(rec: Preference, tokenizer: Any, system_prompt: str | None) -> dict[str, Any]:
    """A TRL conversational preference row: prompt (with our system policy), chosen and rejected turns."""
    prompt = with_system([m.model_dump() for m in rec.prompt], tokenizer, system_prompt)
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": rec.chosen}],
            "rejected": [{"role": "assistant", "content": rec.rejected}]}


def corpus_texts(data: str) -> list[str]:
    """Raw documents for continued pre-training: a .txt file, a directory of .txt files, or JSONL with "text"."""
    path = Path(data)
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise InputError("directory holds no .txt files", file=path)
        return [t for f in files if (t := f.read_text(encoding="utf-8").strip())]
    if not path.is_file():
        raise InputError("corpus not found (a .txt file, a directory of .txt files or a JSONL with 'text')",
                         file=path)
    if path.suffix == ".txt":
        text = path.read_text(encoding="utf-8")
        # documents are separated by blank lines, so one file can hold many short articles
        return [d.strip() for d in text.split("\n\n") if d.strip()]
    texts = []
    for line, obj in iter_jsonl(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise InputError("expected an object with a string 'text'", file=path, line=line, field="text")
        if obj["text"].strip():
            texts.append(obj["text"])
    if not texts:
        raise InputError("no non-empty 'text' in the corpus", file=path)
    return texts


def split_eval(rows: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, held-out) with a seeded shuffle; at least one held-out row when fraction > 0."""
    if fraction <= 0:
        return rows, []
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    n_eval = max(1, round(len(rows) * fraction))
    if n_eval >= len(rows):
        raise ConfigError(f"eval_fraction {fraction} leaves no training data from {len(rows)} rows")
    held = set(idx[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def count_examples(data: str | list[str] | None) -> int | None:
    """Non-empty lines of JSONL data files (None when a source spec or not yet produced)."""
    if data is None:
        return 0
    total = 0
    for d in data if isinstance(data, list) else [data]:
        p = Path(d)
        if not p.is_file():
            return None
        with open(p, encoding="utf-8", errors="replace") as f:
            if p.suffix == ".txt":
                total += sum(1 for block in f.read().split("\n\n") if block.strip())
            else:
                total += sum(1 for line in f if line.strip())
    return total


def planned_steps(cfg: Any, steps_per_epoch: Callable[[int], float]) -> tuple[int | None, int | None]:
    """(examples in the data, optimizer steps): `max_steps` when set, else epochs x steps_per_epoch(training
    examples left after the held-out split); steps None when the data cannot be counted yet."""
    m = count_examples(cfg.data)
    if cfg.max_steps and cfg.max_steps > 0:
        return m, cfg.max_steps
    if m is None:
        return None, None
    train = m - (max(1, round(m * cfg.eval_fraction)) if cfg.eval_fraction and not cfg.eval_data else 0)
    return m, math.ceil(steps_per_epoch(train) * cfg.epochs)
