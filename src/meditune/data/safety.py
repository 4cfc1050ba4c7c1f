"""MedSafetyBench: harmful medical requests (+ safe responses) in 9 categories (AMA Principles of Medical Ethics).

`{train,test}/{gpt4,llama2}/med_safety_demonstrations_category_N.csv` with header
`,harmful_medical_request,safe_response`; `med_harm_llama3/category_N.txt` has one request per line.
The category number comes from the file name; the generator (gpt4, llama2, llama3) goes to meta.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from meditune.data.common import Src, iter_csv, make, read_text
from meditune.data.registry import loader
from meditune.records import SafetyItem

CATEGORY = re.compile(r"category_(\d+)")


def _category(src: Src) -> str | None:
    m = CATEGORY.search(src.path.stem)
    return m.group(1) if m else None


def _generator(src: Src) -> str | None:
    parent = src.path.parent.name
    return "llama3" if parent == "med_harm_llama3" else parent if parent in ("gpt4", "llama2") else None


@loader("medsafetybench", "safety", "MedSafetyBench CSVs (request + safe response) and med_harm_llama3 "
        "*.txt (requests only); category from the file name", patterns=("*.csv", "*.txt"))
def medsafetybench(src: Src) -> Iterator[tuple[int, SafetyItem]]:
    category, generator = _category(src), _generator(src)
    meta = {"generator": generator} if generator else {}
    if src.path.suffix == ".txt":
        for line, text in enumerate(read_text(src.path).split("\n"), start=1):
            if text.strip():
                yield line, make(src, SafetyItem, {"id": f"{src.rel}:{line}", "request": text.strip(),
                                                   "category": category, "meta": meta}, line)
        return
    for line, row in iter_csv(src, required=("harmful_medical_request",)):
        response = (row.get("safe_response") or "").strip() or None
        yield line, make(src, SafetyItem, {"id": f"{src.rel}:{line}", "request": row["harmful_medical_request"],
                                           "safe_response": response, "category": category, "meta": meta}, line)
