"""Open QA and dialogue: answers against references with BLEU-1/2/4 (sacrebleu) and ROUGE-1/2/L (rouge-score).

Tokenisation (one rule for every language, so mixed text works): Chinese/Japanese characters are one token
each (the usual character-level BLEU/ROUGE of Chinese medical papers); Korean is split into Hangul syllables
by default (`korean="syllable"`: robust to particles glued to words, 을/를/은/는, with no morphological
analyser) or into whitespace words (`korean="eojeol"`); other letters/digits form lower-cased words;
punctuation is dropped. Both metrics get the same tokens (sacrebleu with tokenize="none", rouge-score with
our tokenizer, whose default would delete every non-ASCII character). Scores are on a 0-100 scale.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from meditune.errors import InputError
from meditune.evaluation.open_common import (
    OpenEvalOptions,
    backends,
    by_group,
    finish,
    first_texts,
    load_records,
    run_config_of,
)
from meditune.generation.base import Backend, GenerationRequest, SamplingParams
from meditune.records import Chat, LongFormItem
from meditune.stats import DEFAULT_RESAMPLES

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff"
_HANGUL = "\uac00-\ud7a3"
_TOKEN = {
    "syllable": re.compile(f"[{_CJK}{_HANGUL}]|[^\\W_{_CJK}{_HANGUL}]+"),
    "eojeol": re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+"),
}
BLEU_ORDERS = (1, 2, 4)
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
Korean = Literal["syllable", "eojeol"]


def tokenize(text: str, korean: Korean = "syllable") -> list[str]:
    """Tokens for BLEU/ROUGE: CJK characters, Hangul syllables (or eojeol), lower-cased words; no punctuation."""
    return [t.casefold() for t in _TOKEN[korean].findall(text)]


class _RougeTokenizer:
    """The tokenizer object rouge-score expects (a `tokenize(text)` method)."""

    def __init__(self, korean: Korean):
        self.korean = korean

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text, self.korean)


@lru_cache(maxsize=8)
def _bleu(order: int, sentence: bool):
    from sacrebleu.metrics import BLEU

    # Sentence BLEU needs smoothing and effective order (short answers often have no 4-gram match);
    # corpus BLEU is the standard unsmoothed one.
    if sentence:
        return BLEU(tokenize="none", max_ngram_order=order, smooth_method="exp", effective_order=True)
    return BLEU(tokenize="none", max_ngram_order=order)


@lru_cache(maxsize=2)
def _rouge(korean: Korean):
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(list(ROUGE_TYPES), tokenizer=_RougeTokenizer(korean))


def sentence_bleu(hypothesis: str, references: Sequence[str], order: int = 4, korean: Korean = "syllable") -> float:
    """Smoothed sentence BLEU-n (0-100) of one hypothesis against its references."""
    hyp = " ".join(tokenize(hypothesis, korean))
    refs = [" ".join(tokenize(r, korean)) for r in references]
    return float(_bleu(order, True).sentence_score(hyp, refs).score)


def rouge(hypothesis: str, references: Sequence[str], korean: Korean = "syllable") -> dict[str, float]:
    """ROUGE-1/2/L F1 (0-100), the best over references."""
    scorer = _rouge(korean)
    best = dict.fromkeys(ROUGE_TYPES, 0.0)
    for ref in references:
        scores = scorer.score(ref, hypothesis)  # rouge-score's order: (target, prediction)
        for k in ROUGE_TYPES:
            best[k] = max(best[k], 100 * scores[k].fmeasure)
    return best


def text_metrics(hypothesis: str, references: Sequence[str], korean: Korean = "syllable") -> dict[str, float]:
    """bleu1, bleu2, bleu4, rouge1, rouge2, rougeL of one answer."""
    out = {f"bleu{n}": sentence_bleu(hypothesis, references, n, korean) for n in BLEU_ORDERS}
    out.update(rouge(hypothesis, references, korean))
    return out


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], order: int = 4, *,
                korean: Korean = "syllable", resamples: int = DEFAULT_RESAMPLES // 2,
                seed: int = 0) -> dict[str, Any]:
    """Corpus BLEU-n (one reference per item) with a percentile bootstrap CI over items."""
    bleu = _bleu(order, False)
    hyps = [" ".join(tokenize(h, korean)) for h in hypotheses]
    refs = [" ".join(tokenize(r, korean)) for r in references]
    value = float(bleu.corpus_score(hyps, [refs]).score)
    # Sentence statistics are additive: a resample's BLEU is computed from summed counts, no re-tokenising.
    stats = np.asarray(bleu._extract_corpus_statistics(hyps, [refs]), dtype=np.int64)
    rng = np.random.default_rng(seed)
    draws = [float(bleu._compute_score_from_stats(stats[rng.integers(0, len(hyps), len(hyps))].sum(0)
                                                  .tolist()).score) for _ in range(resamples)]
    return {"value": value, "ci_low": float(np.quantile(draws, 0.025)), "ci_high": float(np.quantile(draws, 0.975)),
            "n": len(hyps), "stderr": float(np.std(draws, ddof=1)) if len(draws) > 1 else float("nan")}


# ------------------------------------------------------------------------------------------------ evaluation

class OpenQAOptions(OpenEvalOptions):
    """`meditune eval open`: answer questions, score against reference answers."""

    prompt_template: str = Field("{question}", description="user message; {question} is replaced")
    korean: Korean = "syllable"


@dataclass
class QAItem:
    """One question with its reference answer(s) and the chat sent to the model."""

    id: str
    messages: list[dict[str, str]]
    references: list[str]
    category: str | None
    language: str


def qa_items(records: Sequence[Any], template: str, spec: str) -> tuple[list[QAItem], int]:
    """QAItems from LongFormItems (reference, else must-have statements) or Chats (last assistant turn is the
    reference); returns (items, number skipped for lack of a reference)."""
    items, skipped = [], 0
    for i, r in enumerate(records, start=1):
        if isinstance(r, LongFormItem):
            refs = [r.reference] if r.reference else ([" ".join(r.must_have)] if r.must_have else [])
            msgs = [{"role": "user", "content": template.replace("{question}", r.question)}]
            cat, lang = r.category, r.language
        else:
            turns = [m.model_dump() for m in r.messages]
            last = max((k for k, m in enumerate(turns) if m["role"] == "assistant"), default=None)
            if last is None or last == 0:
                raise InputError("a dialogue needs a user turn before its last assistant turn", file=spec,
                                 line=f"item {i}", field="messages")
            refs = [turns[last]["content"]]
            msgs = turns[:last]
            if msgs[-1]["role"] == "user":  # the template wraps the turn being answered only
                msgs[-1]["content"] = template.replace("{question}", msgs[-1]["content"])
            cat, lang = r.meta.get("department") if isinstance(r.meta, dict) else None, r.language
        if not refs or not any(x.strip() for x in refs):
            skipped += 1
            continue
        items.append(QAItem(r.id, msgs, refs, cat, lang))
    return items, skipped


def evaluate_openqa(opts: OpenQAOptions, out_dir: str | Path, *, backend: Backend | None = None) -> dict[str, str]:
    """Generate answers and write results.json + samples.jsonl with BLEU/ROUGE per item, corpus BLEU and CIs."""
    started, out = time.time(), Path(out_dir)
    records = load_records(opts.data, (LongFormItem, Chat), limit=opts.limit)
    items, skipped = qa_items(records, opts.prompt_template, opts.data)
    if not items:
        raise InputError("no item has a reference answer to compare with", file=opts.data, field="reference")
    gen, _ = backends(opts, out, backend)
    params = SamplingParams(temperature=opts.temperature, max_new_tokens=opts.max_new_tokens, seed=opts.seed)
    texts = first_texts(gen.generate([GenerationRequest(it.id, it.messages, params) for it in items]))
    samples = []
    for doc_id, (it, (text, finish_reason)) in enumerate(zip(items, texts, strict=True)):
        samples.append({"doc_id": doc_id, "id": it.id, "subject": it.category, "language": it.language,
                        "prompt": it.messages[-1]["content"], "answer": text, "references": it.references,
                        "finish_reason": finish_reason, "metrics": text_metrics(text, it.references, opts.korean)})
    hyps = [s["answer"] for s in samples]
    refs = [s["references"][0] for s in samples]
    overrides = {f"corpus_bleu{n}": corpus_bleu(hyps, refs, n, korean=opts.korean, seed=opts.seed)
                 for n in BLEU_ORDERS}
    metric_names = [f"bleu{n}" for n in BLEU_ORDERS] + list(ROUGE_TYPES)
    by_cat = {m: by_group(samples, m, lambda s: s.get("subject"), seed=opts.seed) for m in metric_names}
    by_lang = {m: by_group(samples, m, lambda s: s.get("language"), seed=opts.seed) for m in metric_names}
    protocol = {"task": "open QA against references", "generation": params.to_dict(),
                "system_prompt": opts.system_prompt, "prompt_template": opts.prompt_template,
                "tokenization": f"CJK characters, Korean {opts.korean}, lower-cased words, no punctuation",
                "bleu": "sacrebleu sentence BLEU (exp smoothing, effective order) per item; corpus BLEU unsmoothed",
                "rouge": "rouge-score F1, best over references", "scale": "0-100"}
    return finish(out, opts.task or "open_qa", samples, protocol=protocol, run_config=run_config_of(opts, gen),
                  by_category=by_cat, overrides=overrides, n_original=len(records), seed=opts.seed,
                  extra={"by_language": by_lang, "skipped_no_reference": skipped,
                         "truncated": sum(s["finish_reason"] == "length" for s in samples)}, started=started)
