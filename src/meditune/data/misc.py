"""Smaller formats: MIRAGE benchmark.json (MCQ subsets) and ToxiGen generation prompts (raw text)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from meditune.data.common import Src, letter_index, load_json, make, need, read_text
from meditune.data.registry import loader
from meditune.records import LETTERS, MCQItem, TextItem

TOXIGEN_NAME = re.compile(r"^(hate|neutral)_(.+?)(_1k)?$")


@loader("mirage", "mcq", "MIRAGE benchmark.json {dataset: {qid: {question, options {A..}, answer}}} "
        "(PubMedQA/BioASQ there have no contexts)", patterns=("*.json",),
        options={"dataset": "keep one subset (e.g. medqa, medmcqa, pubmedqa, bioasq, mmlu)"})
def mirage(src: Src, dataset: str | None = None) -> Iterator[tuple[str, MCQItem]]:
    data = load_json(src)
    if not isinstance(data, dict):
        raise src.error(f"expected an object keyed by dataset name, got {type(data).__name__}")
    if dataset is not None and dataset not in data:
        raise src.error(f"no subset {dataset!r}; subsets: {sorted(data)}", field="dataset")
    for name, items in data.items():
        if dataset is not None and name != dataset:
            continue
        if not isinstance(items, dict):
            raise src.error("expected an object keyed by question id", line=f"key {name}")
        for qid, q in items.items():
            key = f"key {name}.{qid}"
            if not isinstance(q, dict):
                raise src.error("expected an object", line=key)
            opts = need(src, q, "options", key, dict)
            if list(opts) != list(LETTERS[: len(opts)]):
                raise src.error(f"option keys must be A, B, ... in order, got {list(opts)}", line=key,
                                field="options")
            field = "answer" if "answer" in q else "answer_letter"
            answer = letter_index(src, need(src, q, field, key), len(opts), key, field)
            yield key, make(src, MCQItem, {"id": f"{name}:{qid}", "question": need(src, q, "question", key),
                                           "options": list(opts.values()), "answer": answer, "language": "en",
                                           "subject": name}, key)


@loader("toxigen", "text", "ToxiGen prompts/{hate,neutral}_<group>_1k.txt: one few-shot prompt per line "
        "(literal \\n separators become newlines); meta.label and meta.group from the file name",
        patterns=("*.txt",))
def toxigen(src: Src) -> Iterator[tuple[int, TextItem]]:
    m = TOXIGEN_NAME.match(src.path.stem)
    if not m:
        raise src.error("file name must look like hate_<group>_1k.txt or neutral_<group>_1k.txt")
    meta = {"label": m.group(1), "group": m.group(2)}
    for line, text in enumerate(read_text(src.path).split("\n"), start=1):
        if text.strip():
            yield line, make(src, TextItem, {"id": f"{src.rel}:{line}", "text": text.replace("\\n", "\n"),
                                             "language": "en", "meta": meta}, line)
