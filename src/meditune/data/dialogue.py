"""CMD Chinese medical dialogue (Toyhom), encoded in GB18030.

CSV `department,title,ask,answer` -> Chat(user: ask, assistant: answer) with department and title in meta;
the processed `*.txt` files hold blocks `title,ask\\nanswer` separated by two blank lines.
"""

from __future__ import annotations

from collections.abc import Iterator

from meditune.data.common import Src, iter_csv, make, read_text
from meditune.data.registry import loader
from meditune.records import Chat

OPTIONS = {"encoding": "file encoding (default gb18030; utf-8 copies also work with encoding=utf-8)"}


def _chat(src: Src, line: int, title: str, ask: str, answer: str, meta: dict) -> Chat:
    question = ask.strip() or title.strip()
    if not question:
        raise src.error("is empty", line=line, field="ask")
    if not answer.strip():
        raise src.error("is empty", line=line, field="answer")
    return make(src, Chat, {"id": f"{src.rel}:{line}", "language": "zh", "meta": {**meta, "title": title},
                            "messages": [{"role": "user", "content": question},
                                         {"role": "assistant", "content": answer.strip()}]}, line)


@loader("cmd", "chat", "CMD Chinese medical dialogue CSV (department,title,ask,answer) or processed .txt "
        "blocks; GB18030 by default", patterns=("*.csv", "*.txt"), options=OPTIONS)
def cmd(src: Src, encoding: str = "gb18030") -> Iterator[tuple[int, Chat]]:
    if src.path.suffix.lower() == ".txt":
        lines = read_text(src.path, encoding, script="zh").replace("\r\n", "\n").split("\n")
        block: list[str] = []
        start = 0
        for n, text in enumerate([*lines, ""], start=1):
            if text.strip():
                if not block:
                    start = n
                block.append(text)
                continue
            if not block:
                continue
            title, sep, ask = block[0].partition(",")
            if not sep:
                raise src.error("first line of a block must be 'title,question'", line=start)
            yield start, _chat(src, start, title, ask, "\n".join(block[1:]), {})
            block = []
        return
    for line, row in iter_csv(src, encoding=encoding, required=("ask", "answer"), script="zh"):
        meta = {"department": row["department"]} if row.get("department") else {}
        yield line, _chat(src, line, row.get("title", ""), row["ask"], row["answer"], meta)
