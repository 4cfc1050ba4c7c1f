"""MedQA (Jin et al. 2020): US (4 and 5 options), Mainland (zh-Hans) and Taiwan (zh-Hant + translations).

JSON lines with `question`, `options` {letter: text}, `answer` (text), `answer_idx` (letter), `meta_info`.
Every item of a file must have the same number of options unless `n_options` says otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator

from meditune.data.common import Src, check_option_count, iter_json_lines, letter_index, make, need
from meditune.data.registry import loader
from meditune.records import LETTERS, MCQItem

OPTIONS = {
    "n_options": "required number of options per item (default: that of the first item; mixed counts are errors)",
    "encoding": "file encoding (default utf-8)",
}


def read_medqa(src: Src, *, language: str, n_options: int | None = None,
               encoding: str = "utf-8") -> Iterator[tuple[int, MCQItem]]:
    """MCQItems of one MedQA JSONL file."""
    expected = n_options
    script = "zh" if language.startswith("zh") else "latin" if language == "en" else None
    for line, obj in iter_json_lines(src, encoding, script):
        question = need(src, obj, "question", line)
        opts = need(src, obj, "options", line, dict)
        letters = list(opts)
        if letters != list(LETTERS[: len(letters)]):
            raise src.error(f"option keys must be A, B, C, ... in order, got {letters}", line=line,
                            field="options")
        if expected is None:
            expected = len(letters)
        check_option_count(src, len(letters), expected, line)
        for k, v in opts.items():
            if not isinstance(v, str) or not v.strip():
                raise src.error("option is empty or not a string", line=line, field=f"options.{k}")
        answer = letter_index(src, need(src, obj, "answer_idx", line), len(letters), line, "answer_idx")
        text = obj.get("answer")
        if isinstance(text, str) and text.strip() and text.strip() != opts[LETTERS[answer]].strip():
            raise src.error(f"answer text {text!r} differs from option {LETTERS[answer]} "
                            f"{opts[LETTERS[answer]]!r}", line=line, field="answer")
        meta = {k: obj[k] for k in ("meta_info", "metamap_phrases") if k in obj}
        yield line, make(src, MCQItem, {
            "id": f"{src.rel}:{line}", "question": question, "options": list(opts.values()), "answer": answer,
            "language": language, "subject": obj.get("meta_info") if isinstance(obj.get("meta_info"), str)
            else None, "meta": meta}, line)


@loader("medqa", "mcq", "MedQA JSONL (any region); language from the `language` option (default en)",
        options=OPTIONS)
def medqa(src: Src, n_options: int | None = None, encoding: str = "utf-8") -> Iterator[tuple[int, MCQItem]]:
    return read_medqa(src, language="en", n_options=n_options, encoding=encoding)


@loader("medqa_us", "mcq", "MedQA US (USMLE), 5-option dev.jsonl or 4_options/phrases_no_exclude_*.jsonl",
        options=OPTIONS)
def medqa_us(src: Src, n_options: int | None = None, encoding: str = "utf-8") -> Iterator[tuple[int, MCQItem]]:
    return read_medqa(src, language="en", n_options=n_options, encoding=encoding)


@loader("medqa_mainland", "mcq", "MedQA Mainland China (MCMLE, simplified Chinese), 5 or 4 options",
        options=OPTIONS)
def medqa_mainland(src: Src, n_options: int | None = None,
                   encoding: str = "utf-8") -> Iterator[tuple[int, MCQItem]]:
    return read_medqa(src, language="zh", n_options=n_options, encoding=encoding)


@loader("medqa_taiwan", "mcq", "MedQA Taiwan (TWMLE, traditional Chinese, 4 options); "
        "tw_translated_jsonl/en|zh get language en / zh", options=OPTIONS)
def medqa_taiwan(src: Src, n_options: int | None = None,
                 encoding: str = "utf-8") -> Iterator[tuple[int, MCQItem]]:
    # the translated copies live under tw_translated_jsonl/<lang>/dev-2<lang>.jsonl
    stem = src.path.stem
    language = "en" if stem.endswith("-2en") else "zh" if stem.endswith("-2zh") else "zh-Hant"
    return read_medqa(src, language=language, n_options=n_options, encoding=encoding)
