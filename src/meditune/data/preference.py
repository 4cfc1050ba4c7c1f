"""Preference pairs: UltraFeedback-style {prompt, chosen, rejected, metadata} and ShareGPT-style
{conversations: [{from, value}], chosen, rejected} (e.g. MedicalGPT's dpo_zh_500.jsonl)."""

from __future__ import annotations

import ast
import logging
from collections.abc import Iterator
from typing import Any

from meditune.data.common import Src, guess_language, iter_json_lines, make, need
from meditune.data.registry import loader
from meditune.records import Preference

log = logging.getLogger(__name__)
DROP_EMPTY = {
    "drop_empty": "skip pairs whose chosen or rejected answer is empty, with a warning (default true)",
    "drop_identical": "skip pairs whose chosen equals rejected, with one warning per file (default false: an error)",
}

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}


def _side(src: Src, value: Any, line: int, field: str) -> str:
    # chosen/rejected are strings here; TRL-style lists of messages keep the last assistant turn
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        value = value[-1].get("content", value[-1].get("value"))
    if not isinstance(value, str):
        raise src.error(f"expected a string, got {type(value).__name__}", line=line, field=field)
    return value


def _scores(src: Src, meta: Any, line: int) -> dict[str, float]:
    if meta is None:
        return {}
    if isinstance(meta, str):  # a stringified Python dict in some dumps
        try:
            meta = ast.literal_eval(meta)
        except (ValueError, SyntaxError):
            raise src.error("not a dict literal", line=line, field="metadata") from None
    if not isinstance(meta, dict):
        raise src.error(f"expected a dict, got {type(meta).__name__}", line=line, field="metadata")
    out = {}
    for side in ("chosen", "rejected"):
        if meta.get(f"score_{side}") is not None:
            try:
                out[f"{side}_score"] = float(meta[f"score_{side}"])
            except (TypeError, ValueError):
                raise src.error("not a number", line=line, field=f"metadata.score_{side}") from None
    return out


def _empty_side(src: Src, obj: dict, line: int, drop_empty: bool) -> bool:
    empty = [k for k in ("chosen", "rejected") if isinstance(obj.get(k), str) and not obj[k].strip()]
    if empty and drop_empty:
        log.warning("%s line %d: skipped, empty %s", src.display or src.path, line, " and ".join(empty))
    return bool(empty) and drop_empty


class _SameSides:
    """Pairs whose chosen equals rejected, skipped when asked (else load_source's checks reject them)."""

    def __init__(self, src: Src, drop: bool):
        self.src, self.drop, self.count, self.first = src, drop, 0, None

    def skip(self, pair: Preference, line: int) -> bool:
        if not self.drop or pair.chosen.strip() != pair.rejected.strip():
            return False
        self.count += 1
        self.first = self.first or line
        return True

    def report(self) -> None:
        if self.count:
            log.warning("%s: skipped %d pair(s) whose chosen equals rejected (first at line %d)",
                        self.src.display or self.src.path, self.count, self.first)


@loader("ultrafeedback", "preference", "UltraFeedback-style JSONL {prompt, chosen, rejected, metadata "
        "{score_chosen, score_rejected} (dict or stringified)}", options=DROP_EMPTY)
def ultrafeedback(src: Src, drop_empty: bool = True,
                  drop_identical: bool = False) -> Iterator[tuple[int, Preference]]:
    same = _SameSides(src, drop_identical)
    for line, obj in iter_json_lines(src):
        if _empty_side(src, obj, line, drop_empty):
            continue
        prompt = need(src, obj, "prompt", line, (str, list))
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        provenance = {"source_index": obj["source_index"]} if "source_index" in obj else {}
        pair = make(src, Preference, {
            "id": f"{src.rel}:{line}", "prompt": prompt,
            "chosen": _side(src, need(src, obj, "chosen", line, (str, list)), line, "chosen"),
            "rejected": _side(src, need(src, obj, "rejected", line, (str, list)), line, "rejected"),
            **_scores(src, obj.get("metadata"), line), "provenance": provenance,
            "language": guess_language(prompt[-1].get("content", "") if isinstance(prompt[-1], dict) else "")},
            line)
        if not same.skip(pair, line):  # type: ignore[arg-type]
            yield line, pair  # type: ignore[misc]
    same.report()


@loader("sharegpt", "preference", "ShareGPT-style preference JSONL {conversations: [{from, value}], chosen, "
        "rejected}; from = human/gpt/system", options=DROP_EMPTY)
def sharegpt(src: Src, drop_empty: bool = True,
             drop_identical: bool = False) -> Iterator[tuple[int, Preference]]:
    same = _SameSides(src, drop_identical)
    for line, obj in iter_json_lines(src):
        if _empty_side(src, obj, line, drop_empty):
            continue
        turns = need(src, obj, "conversations", line, list)
        prompt = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict):
                raise src.error("expected an object", line=line, field=f"conversations[{i}]")
            role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
            if role is None:
                raise src.error(f"unknown speaker {turn.get('from')!r}; expected one of {sorted(SHAREGPT_ROLES)}",
                                line=line, field=f"conversations[{i}].from")
            value = need(src, turn, "value", line, str, nonempty=role != "system")
            prompt.append({"role": role, "content": value})
        if not prompt or prompt[-1]["role"] != "user":
            raise src.error("the conversation must end with a human turn", line=line, field="conversations")
        pair = make(src, Preference, {
            "id": f"{src.rel}:{line}", "prompt": prompt,
            "chosen": _side(src, need(src, obj, "chosen", line, (str, list)), line, "chosen"),
            "rejected": _side(src, need(src, obj, "rejected", line, (str, list)), line, "rejected"),
            "language": guess_language(prompt[-1]["content"])}, line)
        if not same.skip(pair, line):  # type: ignore[arg-type]
            yield line, pair  # type: ignore[misc]
    same.report()
