"""Hallucination: the DAHL score of a model on a question set (meditune.scoring.dahl: answer -> atomic facts ->
verification, #true / #facts per answer, averaged over clean answers) and MedLFQA-style coverage of the
reference's must-have / nice-to-have statements (share of statements the answer states, by a judge or by
embedding similarity between each statement and the answer's sentences)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from meditune.embeddings import Embedder
from meditune.errors import ConfigError
from meditune.evaluation.open_common import (
    OpenEvalOptions,
    backends,
    by_group,
    finish,
    first_texts,
    judge_config,
    load_records,
    run_config_of,
)
from meditune.generation.base import Backend, BackendConfig, GenerationRequest, SamplingParams
from meditune.records import LongFormItem
from meditune.scoring.base import ScoreInput
from meditune.scoring.dahl import DAHL_INSTRUCTION, split_sentences
from meditune.scoring.registry import DahlConfig, build_scorer

COVER_SYSTEM = "You are a careful medical expert. Be precise and concise."
COVER_TEMPLATE = ("Answer:\n{answer}\n\nStatement: {statement}\n\nDoes the answer above state or clearly imply "
                  "the statement? Answer with one word: YES or NO.")


def parse_yes(reply: str | None) -> bool | None:
    """True / False for a leading yes / no (also 是/否, 예/아니오), None otherwise."""
    if not reply:
        return None
    m = re.search(r"\b(yes|no)\b|(是|否|예|아니)", reply, flags=re.I)
    if not m:
        return None
    word = (m.group(1) or m.group(2)).lower()
    return word in ("yes", "是", "예")


class HallucinationOptions(OpenEvalOptions):
    """`meditune eval hallucination`: DAHL score and must-have / nice-to-have coverage."""

    splitter: Literal["auto", "judge", "sentences"] = "auto"  # auto: judge when configured, else sentences
    verifier: Literal["auto", "judge", "grounded_judge", "embedding"] = "auto"  # auto: judge, else embedding
    threshold: float = Field(0.7, ge=-1, le=1, description="embedding similarity for 'supported' / 'covered'")
    coverage: Literal["auto", "judge", "embedding", "off"] = "auto"
    embedding_model: str | None = None  # a sentence-transformers directory; default: the bundled MiniLM
    instruction: str | None = Field(DAHL_INSTRUCTION, description="prepended to the question (DAHL's)")
    max_new_tokens: int = Field(256, ge=1)
    judge_max_new_tokens: int = Field(512, ge=1)


def _references(it: LongFormItem) -> list[str]:
    if it.must_have or it.nice_to_have:
        return list(it.must_have) + list(it.nice_to_have)
    return split_sentences(it.reference, drop_incomplete_last=False) if it.reference else []


def evaluate_hallucination(opts: HallucinationOptions, out_dir: str | Path, *, backend: Backend | None = None,
                           judge: Backend | None = None) -> dict[str, str]:
    """Answer the questions; write DAHL score and statement coverage with CIs (per category too)."""
    started, out = time.time(), Path(out_dir)
    items: list[LongFormItem] = load_records(opts.data, (LongFormItem,), limit=opts.limit)
    needs_judge = "judge" in (opts.splitter, opts.coverage) or opts.verifier in ("judge", "grounded_judge")
    gen, judge_backend = backends(opts, out, backend, judge, need_judge=needs_judge)
    splitter_name = opts.splitter if opts.splitter != "auto" else ("judge" if judge_backend else "sentences")
    verifier_name = opts.verifier if opts.verifier != "auto" else ("judge" if judge_backend else "embedding")
    coverage = opts.coverage if opts.coverage != "auto" else ("judge" if judge_backend else "embedding")
    params = SamplingParams(temperature=opts.temperature, max_new_tokens=opts.max_new_tokens, seed=opts.seed)
    prefix = f"{opts.instruction}\n" if opts.instruction else ""
    reqs = [GenerationRequest(it.id, [{"role": "user", "content": prefix + it.question}], params) for it in items]
    answers = first_texts(gen.generate(reqs))
    # the DAHL scorer of every part (meditune.scoring.registry), its judge calls going to this run's judge backend
    dahl = DahlConfig(splitter=splitter_name, verifier=verifier_name, threshold=opts.threshold,
                      embedding_model=opts.embedding_model, judge=judge_config(opts) or BackendConfig())
    scorer = build_scorer(dahl, backends=lambda _cfg: judge_backend)
    inputs = [ScoreInput(it.id, it.question, text, _references(it), finish_reason=fr)
              for it, (text, fr) in zip(items, answers, strict=True)]
    scores = scorer.score(inputs)
    embedder = Embedder(opts.embedding_model) if coverage == "embedding" else None
    cover = _coverage(items, [t for t, _ in answers], coverage, judge_backend, embedder, opts)
    samples = []
    for k, (it, (text, fr), sc) in enumerate(zip(items, answers, scores, strict=True)):
        metrics: dict[str, float] = {}
        if sc.clean and sc.value is not None:
            metrics["dahl"] = sc.value
        metrics.update(cover[k][0])
        samples.append({"doc_id": k, "id": it.id, "subject": it.category, "prompt": reqs[k].messages[-1]["content"],
                        "answer": text, "finish_reason": fr, "dahl": sc.to_dict(), "coverage": cover[k][1],
                        "metrics": metrics})
    names = ["dahl", "must_have_coverage", "nice_to_have_coverage"]
    by_cat = {m: g for m in names if (g := by_group(samples, m, lambda s: s.get("subject"), seed=opts.seed))}
    dropped: dict[str, int] = {}
    for sc in scores:
        if not (sc.clean and sc.value is not None):
            dropped[sc.reason or "unparseable"] = dropped.get(sc.reason or "unparseable", 0) + 1
    protocol = {"task": "hallucination: DAHL score and statement coverage", "instruction": opts.instruction,
                "generation": params.to_dict(), "system_prompt": opts.system_prompt, "splitter": splitter_name,
                "verifier": verifier_name, "coverage": coverage, "judge": str(opts.judge),
                "embedding_threshold": opts.threshold,
                "dahl": "mean of #true/#facts over clean answers (every verdict parsed)"}
    return finish(out, opts.task or "hallucination", samples, protocol=protocol, run_config=run_config_of(opts, gen),
                  by_category=by_cat, seed=opts.seed, n_original=len(items),
                  extra={"dahl_dropped_by_reason": dropped,
                         "no_statements": sum(1 for it in items if not (it.must_have or it.nice_to_have))},
                  started=started)


def _coverage(items: Sequence[LongFormItem], answers: Sequence[str], method: str, judge: Backend | None,
              embedder: Embedder | None, opts: HallucinationOptions) -> list[tuple[dict[str, float], dict]]:
    """Per item ({must_have_coverage, nice_to_have_coverage}, evidence) over the statements it has."""
    out: list[tuple[dict[str, float], dict[str, Any]]] = [({}, {}) for _ in items]
    if method == "off":
        return out
    asks = [(k, kind, st) for k, it in enumerate(items)
            for kind, sts in (("must_have", it.must_have), ("nice_to_have", it.nice_to_have)) for st in sts]
    if not asks:
        return out
    covered: list[bool | None] = [False] * len(asks)  # an empty answer covers nothing
    live = [n for n, (k, _, _) in enumerate(asks) if answers[k].strip()]
    if method == "judge":
        if judge is None:
            raise ConfigError("coverage=judge needs a judge")
        p = SamplingParams(temperature=0.0, max_new_tokens=8, seed=opts.seed)
        reqs = [GenerationRequest(f"cover/{items[asks[n][0]].id}/{n}", [
            {"role": "system", "content": COVER_SYSTEM},
            {"role": "user", "content": COVER_TEMPLATE.format(answer=answers[asks[n][0]], statement=asks[n][2])}], p)
            for n in live]
        for n, (t, _) in zip(live, first_texts(judge.generate(reqs)), strict=True):
            covered[n] = parse_yes(t)
    elif live and embedder is not None:
        items_live = sorted({asks[n][0] for n in live})
        vecs = {k: embedder.embed(split_sentences(answers[k], drop_incomplete_last=False) or [answers[k]])
                for k in items_live}
        statement_vecs = embedder.embed([asks[n][2] for n in live])
        for row, n in enumerate(live):
            covered[n] = bool((vecs[asks[n][0]] @ statement_vecs[row]).max() >= opts.threshold)
    per: dict[int, dict[str, list[tuple[str, bool | None]]]] = {}
    for (k, kind, st), c in zip(asks, covered, strict=True):
        per.setdefault(k, {}).setdefault(kind, []).append((st, c))
    for k, kinds in per.items():
        metrics = {}
        for kind, rows in kinds.items():
            judged = [c for _, c in rows if c is not None]
            if judged:
                metrics[f"{kind}_coverage"] = sum(judged) / len(judged)
        out[k] = (metrics, {kind: [{"statement": s, "covered": c} for s, c in rows] for kind, rows in kinds.items()})
    return out
