"""HEAD-QA (Spanish healthcare specialisation exams; es original and machine-translated en).

JSON {version, language, exams: {exam: {name, category, year, data: [{qid, qtext, ra, image, answers}]}}}.
`ra` is the 1-based `aid` of the right answer; 4 or 5 options (5 in older exams); questions that refer to
an image (not included) get meta.image and meta.has_image=true so evaluations can drop them.
"""

from __future__ import annotations

from collections.abc import Iterator

from meditune.data.common import Src, load_json, make, need
from meditune.data.registry import loader
from meditune.records import MCQItem


@loader("headqa", "mcq", "HEAD-QA JSON (es/en; 4-5 options; image questions flagged in meta; "
        "skip_images=true drops them)", patterns=("*.json",),
        options={"skip_images": "drop questions that refer to an image (default false)"})
def headqa(src: Src, skip_images: bool = False) -> Iterator[tuple[str, MCQItem]]:
    data = load_json(src)
    if not isinstance(data, dict) or not isinstance(data.get("exams"), dict):
        raise src.error("expected an object with an 'exams' mapping", field="exams")
    language = data.get("language") or "es"
    for exam_name, exam in data["exams"].items():
        if not isinstance(exam, dict):
            raise src.error("expected an object", line=f"exams.{exam_name}")
        questions = need(src, exam, "data", f"exams.{exam_name}", list, nonempty=False)
        for i, q in enumerate(questions):
            key = f"exams.{exam_name}.data[{i}]"
            if not isinstance(q, dict):
                raise src.error("expected an object", line=key)
            answers = need(src, q, "answers", key, list)
            aids, texts = [], []
            for j, a in enumerate(answers):
                if not isinstance(a, dict) or "aid" not in a or "atext" not in a:
                    raise src.error("answer needs 'aid' and 'atext'", line=key, field=f"answers[{j}]")
                aids.append(str(a["aid"]))
                texts.append(a["atext"])
            ra = str(need(src, q, "ra", key, (str, int)))
            if ra not in aids:
                raise src.error(f"right answer {ra!r} is not one of the answer ids {aids}", line=key, field="ra")
            image = q.get("image") or ""
            if image and skip_images:
                continue
            meta = {"exam": exam_name, "year": exam.get("year"), "qid": q.get("qid"), "has_image": bool(image)}
            if image:
                meta["image"] = image
            yield key, make(src, MCQItem, {
                "id": f"{language}:{exam_name}:{q.get('qid', i)}", "question": need(src, q, "qtext", key),
                "options": texts, "answer": aids.index(ra), "language": language,
                "subject": exam.get("category"), "meta": meta}, key)
