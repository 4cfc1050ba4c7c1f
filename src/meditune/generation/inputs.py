"""Turn a data file into generation requests: request lines as-is, records mapped to a user turn.

A line whose keys are among {id, messages, prompt, params} is a request; a line of a generations.jsonl is
its request again (without the old params). Any other line is read as a record
(meditune.records.detect_kind) and asked as a chat: Chat -> its messages up to the last user turn,
LongFormItem -> question, MCQItem -> question + lettered options, SafetyItem -> request,
Preference -> its prompt.
"""

from __future__ import annotations

import os
from typing import Any

from meditune.errors import InputError
from meditune.generation.base import GenerationRequest, SamplingParams
from meditune.generation.job import request_from_dict
from meditune.io import iter_jsonl
from meditune.prompts import render_mcq

REQUEST_KEYS = {"id", "messages", "prompt", "params"}
OUTPUT_KEYS = REQUEST_KEYS | {"model", "generations"}  # lines of a generations.jsonl (ours)


def record_messages(rec: Any) -> list[dict[str, str]]:
    """The chat to generate a reply to, for a record."""
    from meditune.records import Chat, LongFormItem, MCQItem, Preference, SafetyItem

    if isinstance(rec, Chat):
        msgs = [{"role": m.role, "content": m.content} for m in rec.messages]
        while msgs and msgs[-1]["role"] == "assistant":  # regenerate the reply, not continue after it
            msgs.pop()
        if rec.system and not (msgs and msgs[0]["role"] == "system"):
            msgs.insert(0, {"role": "system", "content": rec.system})
        return msgs
    if isinstance(rec, Preference):
        return [{"role": m.role, "content": m.content} for m in rec.prompt]
    if isinstance(rec, MCQItem):  # the SFT export's user turn, so generations match training data
        return [{"role": "user", "content": render_mcq(rec, "chat_turn")}]
    if isinstance(rec, LongFormItem):
        return [{"role": "user", "content": rec.question}]
    if isinstance(rec, SafetyItem):
        return [{"role": "user", "content": rec.request}]
    raise InputError(f"{type(rec).__name__} records have no prompt to generate from")


def requests_from_objects(rows: list[tuple[int, Any]], source: object,
                          defaults: SamplingParams) -> list[GenerationRequest]:
    """Requests from (line, object) pairs; errors name source, line and field; duplicate ids are refused."""
    from meditune.records import detect_kind_at, parse_record

    out, seen = [], {}
    for line, obj in rows:
        if isinstance(obj, dict) and set(obj) <= REQUEST_KEYS:
            req = request_from_dict(obj, file=source, line=line, defaults=defaults)
        elif isinstance(obj, dict) and "generations" in obj and set(obj) <= OUTPUT_KEYS:
            # an earlier generation's output: ask the same prompts again with this job's sampling settings
            req = request_from_dict({k: obj[k] for k in ("id", "messages", "prompt") if k in obj}, file=source,
                                    line=line, defaults=defaults)
        else:
            if hasattr(obj, "model_dump"):
                rec = obj
            else:
                rec = parse_record(detect_kind_at(obj, file=source, line=line), obj, file=source, line=line)
            try:
                msgs = record_messages(rec)
            except InputError as e:
                raise InputError(e.reason, file=source, line=line) from None
            if not msgs:
                raise InputError("no user turn to answer", file=source, line=line, field="messages")
            req = GenerationRequest(str(rec.id), msgs, defaults)
        if req.id in seen:
            raise InputError(f"duplicate id {req.id!r} (first on line {seen[req.id]})", file=source, line=line,
                             field="id")
        seen[req.id] = line
        out.append(req)
    return out


def load_requests(path: str | os.PathLike, defaults: SamplingParams | None = None,
                  limit: int | None = None) -> list[GenerationRequest]:
    """Requests from a JSONL file of requests or records."""
    rows = []
    for line, obj in iter_jsonl(path):
        rows.append((line, obj))
        if limit is not None and len(rows) >= limit:
            break
    return requests_from_objects(rows, path, defaults or SamplingParams())
