"""Collection: N generators (any backend, any mix) answer every question with the DAHL instruction; resumable.

A generator is a model behind a backend (with its own system prompt, sampling and optionally a prefilled opening
of its answer, which the model continues), or `backend: reference`: the answer shipped with the question (a
safety item's safe response, a long-form reference), for pairs that need a good answer the model cannot write.

Answers go to answers/<generator>.jsonl (a meditune.shards.Shard), appended chunk by chunk; a restarted run
skips questions whose answers are already on disk (a torn last line from a killed write is cut off). Under several
ranks (meditune.distributed) every rank starts from the same answers on disk and answers the chunks it owns (chunk
k of the unanswered questions on rank k mod N), so together they ask what one process asks.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from meditune.distributed import Ranks, current
from meditune.generation.base import BackendConfig, GenerationRequest, SamplingParams
from meditune.prefs.questions import Question, question_text, reference_answer
from meditune.prompts import TEMPLATES
from meditune.scoring.dahl import DAHL_INSTRUCTION, DAHL_SAMPLING
from meditune.scoring.registry import BackendFactory
from meditune.shards import Shard

log = logging.getLogger(__name__)


class GeneratorConfig(BackendConfig):
    """A generator: how to reach the model, plus optional per-generator overrides of the collection settings."""

    backend: Literal["transformers", "vllm", "openai", "reference"] = "transformers"  # type: ignore[assignment]
    # The opening of every answer, which the model continues (local backends); a list is used in turn, question
    # by question. E.g. a refusal opening, to collect the model's own over-cautious wording (docs/preferences.md).
    prefill: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    samples: int | None = Field(None, ge=1)
    instruction: str | None = None  # "" = no instruction for this generator
    # Which safety questions this generator answers: e.g. a refusal prefill only where over-caution is the
    # failure (benign questions), the model as it is only where compliance is (harmful requests); halves the cost.
    answers: Literal["all", "harmful", "benign"] = "all"

    def backend_config(self) -> BackendConfig:
        return BackendConfig(**{k: getattr(self, k) for k in BackendConfig.model_fields})

    def answers_question(self, item: Question) -> bool:
        """Whether this generator answers the item (`answers: harmful|benign` keeps only those SafetyItems)."""
        if self.answers == "all":
            return True
        harmful = getattr(item, "harmful", None)
        return isinstance(harmful, bool) and harmful == (self.answers == "harmful")

    def prefill_for(self, position: int) -> str:
        """The prefilled opening of the answer to the question at this position ("" for none)."""
        if not self.prefill:
            return ""
        return self.prefill if isinstance(self.prefill, str) else self.prefill[position % len(self.prefill)]

    @model_validator(mode="after")
    def _check_kind(self) -> GeneratorConfig:
        if self.backend == "reference" and (self.prefill or (self.samples or 1) > 1):
            raise ValueError("a reference generator returns the shipped answer: no prefill, one sample")
        if self.backend == "openai" and self.prefill:
            raise ValueError("prefill needs a local backend (transformers or vllm)")
        return self


class CollectSettings(BaseModel):
    """Defaults for every generator: the DAHL instruction and sampling (temperature 0.6, top_p 0.9, 256 tokens)."""

    model_config = ConfigDict(extra="forbid")

    instruction: str = DAHL_INSTRUCTION
    instruction_placement: Literal["user", "system"] = "user"
    temperature: float = DAHL_SAMPLING.temperature
    top_p: float = DAHL_SAMPLING.top_p
    max_new_tokens: int = DAHL_SAMPLING.max_new_tokens
    samples: int = Field(1, ge=1)
    chunk_size: int = Field(64, ge=1, description="requests per backend call (and per append to disk)")
    # How an MCQ question is written in the generators' prompts and the pair prompts: a meditune.prompts template
    # name. `cot` is the CoT strategies' prompt (instruction included; set instruction: ""), so pairs are built
    # on exactly the prompt `eval_mcqa --strategy cot` asks.
    question_template: str = "prefs_question"

    @field_validator("question_template")
    @classmethod
    def _known_template(cls, v: str) -> str:
        if v not in TEMPLATES:
            raise ValueError(f"unknown template {v!r}; one of {', '.join(TEMPLATES)}")
        return v


def build_messages(question: str, instruction: str, placement: str) -> list[dict[str, str]]:
    """The chat sent to a generator: the instruction really is in it (unlike the published HF script)."""
    if not instruction:
        return [{"role": "user", "content": question}]
    if placement == "system":
        return [{"role": "system", "content": instruction}, {"role": "user", "content": question}]
    return [{"role": "user", "content": f"{instruction}\n{question}"}]


def generator_label(gen: GeneratorConfig, index: int, taken: set[str]) -> str:
    """A unique, file-safe label per generator."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", gen.label).strip("_") or f"gen{index}"
    label = base if base not in taken else f"{base}-{index}"
    taken.add(label)
    return label


def answer_id(question_id: str, generator: str, sample: int) -> str:
    return f"{question_id}|{generator}|{sample}"


def collect(items: Sequence[Question], generators: Sequence[GeneratorConfig], settings: CollectSettings,
            out_dir: Path, backends: BackendFactory, *, seed: int = 0,
            ranks: Ranks | None = None) -> dict[str, list[dict[str, Any]]]:
    """Answers of every generator to every question, by generator label (loaded from disk where done)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = ranks or current()
    taken: set[str] = set()
    result: dict[str, list[dict[str, Any]]] = {}
    for gi, gen in enumerate(generators):
        label = generator_label(gen, gi, taken)
        n = 1 if gen.backend == "reference" else gen.samples or settings.samples
        params = SamplingParams(
            temperature=settings.temperature if gen.temperature is None else gen.temperature,
            top_p=settings.top_p if gen.top_p is None else gen.top_p,
            max_new_tokens=settings.max_new_tokens if gen.max_new_tokens is None else gen.max_new_tokens,
            n=n, seed=seed)
        instruction = settings.instruction if gen.instruction is None else gen.instruction
        position = {it.id: i for i, it in enumerate(items)}
        identity = ({"backend": "reference"} if gen.backend == "reference" else {
            "backend": gen.backend_config().model_dump(), "params": params.to_dict(), "instruction": instruction,
            "placement": settings.instruction_placement})
        if gen.prefill:
            identity["prefill"] = gen.prefill
        if gen.answers != "all":
            identity["answers"] = gen.answers
        if settings.question_template != "prefs_question":
            identity["question_template"] = settings.question_template
        # answers of an earlier (killed) run, refused when written under another configuration
        shard = Shard(out_dir / f"{label}.jsonl", identity_path=out_dir / f"{label}.config.json", identity=identity,
                      on_mismatch="refuse", ranks=ranks)
        done = shard.done
        answerable = [it for it in items if gen.answers_question(it)]
        todo = [it for it in answerable if any(answer_id(it.id, label, k) not in done for k in range(n))]
        chunks = [todo[i:i + settings.chunk_size] for i in range(0, len(todo), settings.chunk_size)]
        mine = [c for k, c in enumerate(chunks) if ranks.owns(k)]
        if todo and gen.backend == "reference":
            mine = []
            if ranks.is_main:  # nothing to generate: rank 0 copies the references, the merge shares them
                shard.add([{"id": answer_id(it.id, label, 0), "question_id": it.id, "generator": label,
                            "sample": 0, "text": reference_answer(it), "finish_reason": "stop", "prompt_tokens": 0,
                            "completion_tokens": 0, "messages": [], "params": None}
                           for it in todo if reference_answer(it)])
        elif todo:
            log.info("generator %s: %d of %d questions to answer", label, len(todo), len(answerable))
        if mine:
            backend = backends(gen.backend_config())
            for chunk in mine:
                messages = [build_messages(question_text(it, settings.question_template), instruction,
                                           settings.instruction_placement) for it in chunk]
                reqs = [GenerationRequest(it.id, m, params,
                                          prefill=gen.prefill_for(position[it.id]))
                        for it, m in zip(chunk, messages, strict=True)]
                rows = []
                for it, req, gens in zip(chunk, reqs, backend.generate(reqs), strict=True):
                    for g in gens:
                        rows.append({"id": answer_id(it.id, label, g.index), "question_id": it.id,
                                     "generator": label, "sample": g.index, "text": g.text,
                                     "finish_reason": g.finish_reason, "prompt_tokens": g.prompt_tokens,
                                     "completion_tokens": g.completion_tokens, "messages": req.messages,
                                     "params": params.to_dict()})
                shard.add(rows)
        done = shard.merge()
        order = {it.id: i for i, it in enumerate(items)}
        result[label] = sorted((r for r in done.values() if r["question_id"] in order),
                               key=lambda r: (order[r["question_id"]], r["sample"]))
        shard.consolidate(result[label])  # under several ranks: one file, as one (uninterrupted) process writes it
    return result
