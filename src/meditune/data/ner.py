"""CCKS-2019 clinical NER (Yidu-S4K): processed {text, entity_list: [{entity_index: {begin, end}, entity_type,
entity}]} or original {originalText, entities: [{start_pos, end_pos, label_type}]}; spans are end-exclusive."""

from __future__ import annotations

from collections.abc import Iterator

from meditune.data.common import Src, iter_json_lines, make, need
from meditune.data.registry import loader
from meditune.records import NERItem


@loader("ccks", "ner", "CCKS-2019 NER JSON lines (processed entity_list or original entities); end exclusive",
        patterns=("*.json", "*.jsonl"))
def ccks(src: Src) -> Iterator[tuple[int, NERItem]]:
    for line, obj in iter_json_lines(src):
        original = "originalText" in obj
        text = need(src, obj, "originalText" if original else "text", line)
        key = "entities" if original else "entity_list"
        raw = need(src, obj, key, line, list, nonempty=False)
        entities = []
        for i, e in enumerate(raw):
            field = f"{key}[{i}]"
            if not isinstance(e, dict):
                raise src.error("expected an object", line=line, field=field)
            try:
                if original:
                    start, end, etype = int(e["start_pos"]), int(e["end_pos"]), str(e["label_type"])
                else:
                    start, end = int(e["entity_index"]["begin"]), int(e["entity_index"]["end"])
                    etype = str(e["entity_type"])
            except (KeyError, TypeError, ValueError) as err:
                raise src.error(f"bad or missing span field {err}", line=line, field=field) from None
            if not 0 <= start < end <= len(text):
                raise src.error(f"span [{start}, {end}) outside text of length {len(text)}", line=line, field=field)
            if not original and e.get("entity") is not None and text[start:end] != e["entity"]:
                raise src.error(f"entity {e['entity']!r} != text[{start}:{end}] {text[start:end]!r} "
                                "(spans are end-exclusive)", line=line, field=f"{field}.entity")
            entities.append({"start": start, "end": end, "type": etype, "text": text[start:end]})
        yield line, make(src, NERItem, {"id": f"{src.rel}:{line}", "text": text, "entities": entities,
                                        "language": "zh"}, line)
