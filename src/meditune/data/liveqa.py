"""TREC 2017 LiveQA medical (NLM consumer questions), XML.

Test files: NLM-QUESTION[qid] with Original-Question/{SUBJECT,MESSAGE}, NIST-PARAPHRASE, NLM-Summary (w-summaries
file), ANNOTATIONS/{FOCUS,TYPE,KEYWORD} and ReferenceAnswers/{ReferenceAnswer|RefAnswer}/ANSWER.
Train files: NLM-QUESTION with SUBJECT, MESSAGE and SUB-QUESTIONS/SUB-QUESTION/{ANNOTATIONS, ANSWERS/ANSWER}.
One LongFormItem per question; the first reference answer is `reference`, all of them are in meta.answers.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator

from meditune.data.common import Src, make
from meditune.data.registry import loader
from meditune.records import LongFormItem


def _text(el: ET.Element | None) -> str:
    return " ".join("".join(el.itertext()).split()) if el is not None else ""


@loader("liveqa", "longform", "LiveQA medical XML (train or test); question = NIST paraphrase for test files "
        "(question=original|summary to change), SUBJECT + MESSAGE for train", patterns=("*.xml",),
        options={"question": "test files: paraphrase (default), original or summary"})
def liveqa(src: Src, question: str = "paraphrase") -> Iterator[tuple[str, LongFormItem]]:
    if question not in ("paraphrase", "original", "summary"):
        raise src.error(f"option question must be paraphrase, original or summary, not {question!r}",
                        field="question")
    try:
        root = ET.parse(src.path).getroot()
    except ET.ParseError as e:
        raise src.error(f"invalid XML: {e}", line=e.position[0]) from None
    items = root.findall("NLM-QUESTION")
    if not items:
        raise src.error(f"no NLM-QUESTION elements under <{root.tag}>")
    for n, q in enumerate(items, start=1):
        qid = q.get("qid") or q.get("questionid") or str(n)
        key = f"NLM-QUESTION {qid}"
        original = q.find("Original-Question")
        if original is not None:  # test layout
            subject, message = _text(original.find("SUBJECT")), _text(original.find("MESSAGE"))
            paraphrase, summary = _text(q.find("NIST-PARAPHRASE")), _text(q.find("NLM-Summary"))
            answers = [_text(a.find("ANSWER")) for a in q.findall("ReferenceAnswers/*")]
            focus = [_text(f) for f in q.findall("ANNOTATIONS/FOCUS")]
            types = [_text(t) for t in q.findall("ANNOTATIONS/TYPE")]
            texts = {"paraphrase": paraphrase, "summary": summary,
                     "original": f"{subject}. {message}" if subject else message}
            # a few test questions lack a paraphrase: fall back to the summary, then the original message
            chosen = next((texts[k] for k in (question, "paraphrase", "summary", "original") if texts[k]), "")
            meta = {"qid": qid, "subject": subject, "message": message, "focus": focus, "types": types,
                    "answers": [a for a in answers if a]}
            if summary:
                meta["summary"] = summary
        else:  # train layout
            subject, message = _text(q.find("SUBJECT")), _text(q.find("MESSAGE"))
            chosen = f"{subject}. {message}" if subject else message
            answers = [_text(a) for a in q.findall("SUB-QUESTIONS/SUB-QUESTION/ANSWERS/ANSWER")]
            focus = [_text(f) for f in q.findall("SUB-QUESTIONS/SUB-QUESTION/ANNOTATIONS/FOCUS")]
            types = [_text(t) for t in q.findall("SUB-QUESTIONS/SUB-QUESTION/ANNOTATIONS/TYPE")]
            meta = {"qid": qid, "focus": focus, "types": types, "answers": [a for a in answers if a]}
        if not chosen.strip():
            raise src.error("question has no text", line=key, field="MESSAGE")
        yield key, make(src, LongFormItem, {
            "id": f"{src.rel}:{qid}", "question": chosen, "reference": meta["answers"][0] if meta["answers"]
            else None, "category": types[0] if types else None, "language": "en", "meta": meta}, key)
