"""Preference data end to end: questions -> answers (N generators) -> scores -> pairs -> (translation) -> datacard."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from meditune import __version__
from meditune.distributed import Ranks, current
from meditune.io import write_json, write_jsonl, write_text
from meditune.prefs.collect import CollectSettings, GeneratorConfig, build_messages, collect
from meditune.prefs.datacard import histogram, license_of, mean_ci, render_markdown
from meditune.prefs.pairing import Candidate, PairingConfig, pair_all
from meditune.prefs.questions import Question, load_questions, question_text, references
from meditune.prefs.translate import TranslationConfig, translate_pairs
from meditune.records import MCQItem, Message, Preference, SafetyItem
from meditune.scoring.base import Score, ScoreInput, Scorer
from meditune.scoring.dahl import dahl_model_score
from meditune.scoring.registry import (
    BackendFactory,
    DahlConfig,
    ScorerConfig,
    build_scorer,
    default_backend_factory,
)
from meditune.shards import Shard
from meditune.stages import BACKEND_DEFAULTS, StageConfig, default_targets

log = logging.getLogger(__name__)


class PrefsStageConfig(StageConfig):
    """The `prefs` stage: build a preference dataset from generator answers scored by a scorer."""

    type: str = "prefs"
    questions: str = Field(description="source spec (e.g. dahl:path/questions.csv) or a JSONL of records")
    limit: int | None = Field(None, ge=1)
    generators: list[GeneratorConfig] = Field(min_length=1)
    collection: CollectSettings = Field(default_factory=CollectSettings)
    scorer: ScorerConfig = Field(default_factory=DahlConfig)
    score_chunk_size: int = Field(64, ge=1)
    pairing: PairingConfig = Field(default_factory=PairingConfig)
    prompt_with_instruction: bool = False  # the dataset's prompt: the question alone (default) or as generated
    translation: TranslationConfig | None = None
    licenses: dict[str, str] = Field(default_factory=dict)  # source -> license, for sources we do not know
    description: str = ""

    def recipe_default_targets(self) -> list[tuple[BaseModel, tuple[str, ...]]]:
        """Generators and the judge the recipe did not point elsewhere use the recipe's model, device, dtype and
        trust_remote_code (their system prompts and sampling are their own)."""
        judge = getattr(self.scorer, "judge", None)
        return [t for b in [*self.generators, judge] if b is not None for t in default_targets(b, BACKEND_DEFAULTS)]

    @field_validator("generators")
    @classmethod
    def _labels_distinct(cls, v: list[GeneratorConfig]) -> list[GeneratorConfig]:
        labels = [g.label for g in v]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise ValueError(f"generators need distinct names (set 'name'): {sorted(dup)} appears twice")
        return v


def score_input(item: Question, answer: dict[str, Any]) -> ScoreInput:
    """What a scorer needs to know about one collected answer."""
    return ScoreInput(id=answer["id"], question=question_text(item), answer=answer["text"],
                      references=references(item), options=item.options if isinstance(item, MCQItem) else None,
                      gold=item.answer if isinstance(item, MCQItem) else None,
                      finish_reason=answer.get("finish_reason", "stop"),
                      meta={"harmful": item.harmful} if isinstance(item, SafetyItem) else {})


def score_answers(items_by_id: dict[str, Question], answers: list[dict[str, Any]], scorer: Scorer, path: Path,
                  chunk_size: int = 64, *, identity: Any = None, ranks: Ranks | None = None) -> dict[str, Score]:
    """Scores by answer id; appended to `path` (a meditune.shards.Shard) chunk by chunk and reused on restart.

    Under several ranks every rank starts from the same scores on disk and scores the chunks it owns (chunk k of
    the unscored answers on rank k mod N). `identity` (the scorer's settings) refuses scores of another scorer."""
    ranks = ranks or current()
    shard = Shard(path, key="answer_id", identity=identity, ranks=ranks,
                  identity_path=path.with_name(f"{path.stem}.config.json") if identity is not None else None,
                  on_mismatch="refuse")
    todo = [a for a in answers if a["id"] not in shard.done]
    chunks = [todo[i:i + chunk_size] for i in range(0, len(todo), chunk_size)]
    scored = 0
    for k, chunk in enumerate(chunks):
        if not ranks.owns(k):
            continue
        scores = scorer.score([score_input(items_by_id[a["question_id"]], a) for a in chunk])
        shard.add([{"answer_id": a["id"], "question_id": a["question_id"], "generator": a["generator"],
                    **s.to_dict()} for a, s in zip(chunk, scores, strict=True)])
        scored += len(chunk)
        log.info("scored %d / %d answers", scored, len(todo))
    done = shard.merge()
    shard.consolidate(done[a["id"]] for a in answers)  # under several ranks: one file, as one process writes it
    return {k: Score.from_dict(row) for k, row in done.items()}


def build_preferences(cfg: PrefsStageConfig, out_dir: Path, *, backends: BackendFactory | None = None,
                      seed: int = 0, items: list[Question] | None = None) -> dict[str, str]:
    """Run collection, scoring, pairing, translation and the datacard into out_dir; returns output paths."""
    t0 = time.time()
    backends = backends or default_backend_factory()
    items = items if items is not None else load_questions(cfg.questions, cfg.limit)
    by_id = {it.id: it for it in items}
    # Under torchrun every rank collects and scores its share of the chunks, every rank gets the merged answers
    # and scores, and rank 0 writes the outputs (meditune.distributed).
    ranks = current()
    answers = collect(items, cfg.generators, cfg.collection, out_dir / "answers", backends, seed=seed, ranks=ranks)
    t_collect = time.time()
    order = {it.id: i for i, it in enumerate(items)}
    # Question-major order: an interrupted scoring run has finished whole questions, all generators each.
    all_answers = sorted((a for rows in answers.values() for a in rows), key=lambda a: order[a["question_id"]])
    scorer = build_scorer(cfg.scorer, backends)
    # refuse scores of another scorer (identity file scores.config.json)
    scores = score_answers(by_id, all_answers, scorer, out_dir / "scores.jsonl", cfg.score_chunk_size,
                           identity=cfg.scorer.model_dump(), ranks=ranks)
    t_score = time.time()

    groups: dict[str, list[Candidate]] = {it.id: [] for it in items}
    for a in all_answers:  # generator order, then sample order: ties resolve to the first generator
        groups[a["question_id"]].append(Candidate(a["id"], a["generator"], a["text"], scores[a["id"]]))
    paired = pair_all(groups, cfg.pairing)

    prefs: list[Preference] = []
    for n, (qid, p) in enumerate(paired["pairs"]):
        item = by_id[qid]
        question = question_text(item, cfg.collection.question_template)
        msgs = (build_messages(question, cfg.collection.instruction, cfg.collection.instruction_placement)
                if cfg.prompt_with_instruction else [{"role": "user", "content": question}])
        prefs.append(Preference(
            id=f"{qid}-{n}", prompt=[Message(**m) for m in msgs], chosen=p.chosen.text, rejected=p.rejected.text,
            chosen_score=p.chosen.score.value, rejected_score=p.rejected.score.value, language=item.language,
            provenance={"question_id": qid, "source": item.source, "chosen_generator": p.chosen.generator,
                        "rejected_generator": p.rejected.generator, "chosen_answer": p.chosen.answer_id,
                        "rejected_answer": p.rejected.answer_id, "margin": round(p.margin, 6),
                        "scorer": cfg.scorer.type, "policy": cfg.pairing.policy}))
    translation_info = None
    if cfg.translation:
        original_language = prefs[0].language if prefs else items[0].language
        prefs, failed = translate_pairs(prefs, backends(cfg.translation.translator), cfg.translation)
        translation_info = {"target_language": cfg.translation.target_language, "model": cfg.translation.translator.label,
                            "source_language": original_language, "translated": len(prefs), "failed": failed}
    t_done = time.time()
    outputs = {"dataset": str(out_dir / "dataset.jsonl"), "datacard": str(out_dir / "datacard.json"),
               "datacard_md": str(out_dir / "datacard.md"), "scores": str(out_dir / "scores.jsonl"),
               "trl": str(out_dir / "trl.jsonl"), "answers": str(out_dir / "answers")}
    if not ranks.is_main:
        return outputs

    dataset = out_dir / "dataset.jsonl"
    write_jsonl(dataset, prefs)
    trl = out_dir / "trl.jsonl"  # TRL's conversational preference format (prompt / chosen / rejected messages)
    write_jsonl(trl, ({"prompt": [m.model_dump() for m in p.prompt],
                       "chosen": [{"role": "assistant", "content": p.chosen}],
                       "rejected": [{"role": "assistant", "content": p.rejected}]} for p in prefs))
    card = datacard(cfg, items, answers, scores, scorer, paired, prefs, translation_info,
                    {"collect_s": round(t_collect - t0, 1), "score_s": round(t_score - t_collect, 1),
                     "pair_translate_s": round(t_done - t_score, 1), "total_s": round(t_done - t0, 1)})
    write_json(out_dir / "datacard.json", card)
    write_text(out_dir / "datacard.md", render_markdown(card))
    return outputs


def datacard(cfg: PrefsStageConfig, items: list[Question], answers: dict[str, list[dict[str, Any]]],
             scores: dict[str, Score], scorer: Scorer, paired: dict[str, Any], prefs: list[Preference],
             translation: dict[str, Any] | None, timings: dict[str, float]) -> dict[str, Any]:
    """The datacard as a dict (see docs/preferences.md for the fields)."""
    sources: dict[str, int] = {}
    for it in items:
        sources[it.source or cfg.questions] = sources.get(it.source or cfg.questions, 0) + 1
    chosen_by = [p.chosen.generator for _, p in paired["pairs"]]
    rejected_by = [p.rejected.generator for _, p in paired["pairs"]]
    gens = []
    for gen_cfg, (label, rows) in zip(cfg.generators, answers.items(), strict=True):
        sc = [scores[r["id"]] for r in rows]
        vals = [s.value for s in sc if s.clean and s.value is not None]
        entry = {"label": label, "model": gen_cfg.model.spec, "backend": gen_cfg.backend,
                 "system_prompt": gen_cfg.system_prompt, "answers": len(rows),
                 "empty_answers": sum(not r["text"].strip() for r in rows),
                 "truncated_answers": sum(r.get("finish_reason") == "length" for r in rows),
                 "sampling": rows[0]["params"] if rows else None, "score": mean_ci(vals),
                 "histogram": histogram(vals, value_range=scorer.value_range),
                 "chosen": chosen_by.count(label), "rejected": rejected_by.count(label)}
        if cfg.scorer.type == "dahl":
            entry["dahl"] = dahl_model_score(sc)
        gens.append(entry)
    judge = getattr(cfg.scorer, "judge", None)
    margins = [p.margin for _, p in paired["pairs"]]
    languages = sorted({p.language for p in prefs} or {it.language for it in items})
    return {
        "name": cfg.name, "description": cfg.description or "Preference pairs chosen by score from several "
                                                            "generators' answers (KoMeP-style).",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "meditune_version": __version__,
        "language": ", ".join(languages),
        "sources": [{"source": s, "questions": n, "license": license_of(s, cfg.licenses)} for s, n in sources.items()],
        "questions_spec": cfg.questions,
        "generators": gens,
        "collection": cfg.collection.model_dump(),
        "scorer": cfg.scorer.model_dump(), "judge": judge.label if judge is not None else None,
        "pairing": cfg.pairing.model_dump(),
        "counts": {"questions": paired["questions"], "questions_with_pairs": paired["questions_with_pairs"],
                   "pairs": len(prefs), "pairs_before_translation": len(paired["pairs"]),
                   "questions_dropped": paired["questions_dropped"], "answers_dropped": paired["answers_dropped"]},
        "margin_histogram": histogram(margins, value_range=_margin_range(scorer)),
        "margin": mean_ci(margins),
        "translation": translation,
        "timings_s": timings,
    }


def _margin_range(scorer: Scorer) -> tuple[float, float] | None:
    r = scorer.value_range
    return (0.0, r[1] - r[0]) if r else None
