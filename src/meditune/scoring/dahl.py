"""The DAHL hallucination score: split an answer into atomic facts, verify each fact, score #true / #facts.

Follows the published DAHL code (github.com/seemdog/DAHL, evaluate/): the same generation instruction, the
same 3-shot atomic-fact prompt (judge at temperature 0), the same verification prompt and system message, and
the same verdict parsing. Two bugs of that code are not repeated here (see docs/preferences.md):
  1. its verifier loops over an undefined variable (`atomic_response_list`); we verify exactly the facts of
     each answer, flattened with their answer index and regrouped by it (tested);
  2. its HF generation prompt is the literal word "instruction" instead of the instruction; our collection
     really sends DAHL_INSTRUCTION (tested, see meditune.prefs.collect).
Extensions: a grounded verifier (facts judged against reference statements) and a model-free embedding
verifier (a fact is supported when MiniLM finds a reference statement above a similarity threshold).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from meditune.embeddings import Embedder
from meditune.generation.base import Backend, GenerationRequest, SamplingParams
from meditune.scoring.base import Score, ScoreInput, empty_score
from meditune.scoring.llm import ask
from meditune.stats import bootstrap_ci

DAHL_INSTRUCTION = ("An examination question from the biomedical domain will be given. Please answer the question "
                    "as truthfully as possible. If you don't know the answer to a question, tell me you don't "
                    "know. Never share false information.")
DAHL_SAMPLING = SamplingParams(temperature=0.6, top_p=0.9, max_new_tokens=256)

ATOMIC_SYSTEM = "You are a helpful assistant."
# The published 3-shot prompt, character for character (its "symptons" typo and indentation included), so
# judges see exactly what DAHL's gpt-3.5-turbo saw. Source: DAHL evaluate/to_atomic_units.py.
ATOMIC_TEMPLATE = (
    "Please split the sentences in the following text into smaller sentences which contain just one single fact. "
    "If the last sentence is incomplete, just ignore the last sentence and split only the previous sentences that "
    "are complete. The sentences should be separated with a newline. Avoid using pronouns. Each sentence should be "
    "a proper full sentence which contains subject and verb. \n\n    \n"
    "TEXT: She is a student and he is a teacher.\n"
    "SEPARATED SENTENCES: She is a student.\nHe is a teacher.\n\n"
    "TEXT: The symptoms include: coughing, headache, toothache.\n"
    "SEPARATED SENTENCES: The symptoms include coughing.\nThe symptons include headache.\n"
    "The symptoms include toothache.\n\n"
    "TEXT: Patrick enjoys playing basketball with his son, which is helpful for his son's emotional development.\n"
    "SEPARATED SENTENCES: Patrick enjoys playing basketball with his son.\nPatrick playing basketball with his "
    "son is helpful for his son's emotional development.\n    \n"
    "TEXT: {text}\n"
    "SEPARATED SENTENCES: \n    "
)
VERIFY_SYSTEM = "Be precise and concise."
VERIFY_PROMPT = "Is this true or false? Answer in one word.\n"
GROUNDED_PROMPT = ("Reference:\n{reference}\n\nJudge the statement below only by the reference above. "
                   "Is this true or false? Answer in one word.\n")

Verdict = Literal["true", "false", "bad"]
_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def strip_prompt_echo(answer: str, question: str) -> str:
    """The answer with the instruction and question removed, as the published code does before splitting."""
    return answer.replace(DAHL_INSTRUCTION, "").replace(question, "").strip()


def atomic_prompt(text: str) -> str:
    """The 3-shot atomic-fact prompt for one answer text."""
    return ATOMIC_TEMPLATE.format(text=text)


def parse_facts(judge_output: str) -> list[str]:
    """One fact per non-empty line of the judge's output (an echoed label and list markers removed)."""
    facts = []
    for line in judge_output.replace("\\n", "\n").split("\n"):
        line = line.strip()
        if line.upper().startswith("SEPARATED SENTENCES:"):
            line = line.split(":", 1)[1].strip()
        if line.upper().startswith("TEXT:"):
            break  # the judge started a new few-shot example of its own: the rest is not about this answer
        line = _LIST_MARKER.sub("", line).strip()
        if line:
            facts.append(line)
    return facts


def split_sentences(text: str, *, drop_incomplete_last: bool = True) -> list[str]:
    """Rule-based sentence split (the model-free splitter); an unterminated last sentence is dropped."""
    parts = []
    for block in text.split("\n"):
        block = _LIST_MARKER.sub("", block.strip())
        if block:
            parts.extend(s.strip() for s in _SENTENCE_END.split(block) if s.strip())
    if drop_incomplete_last and parts and not parts[-1].rstrip("\"')]").endswith((".", "!", "?")):
        parts.pop()  # DAHL: "if the last sentence is incomplete, just ignore the last sentence"
    return parts


def parse_verdict(text: str | None) -> Verdict:
    """Published parsing: both words -> bad; 'true' -> true; 'false' -> false; else (or no reply) -> bad.

    Substring tests on the lower-cased reply, as published (so "untrue" counts as true: a known quirk we keep
    so scores stay comparable with the DAHL paper).
    """
    if text is None:
        return "bad"
    t = text.lower()
    if "true" in t and "false" in t:
        return "bad"
    if "true" in t:
        return "true"
    if "false" in t:
        return "false"
    return "bad"


class FactSplitter(Protocol):
    def split(self, items: Sequence[ScoreInput]) -> list[list[str] | None]: ...


class FactVerifier(Protocol):
    name: str

    def verify(self, pairs: Sequence[tuple[ScoreInput, str]]) -> list[tuple[Verdict, dict[str, Any]]]: ...


class JudgeSplitter:
    """Atomic facts by a judge model with the published 3-shot prompt (temperature 0)."""

    def __init__(self, backend: Backend, *, max_new_tokens: int = 512, retries: int = 1):
        self.backend, self.retries = backend, retries
        self.params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)

    def requests(self, items: Sequence[ScoreInput]) -> list[GenerationRequest]:
        return [GenerationRequest(f"{it.id}/facts", [
            {"role": "system", "content": ATOMIC_SYSTEM},
            {"role": "user", "content": atomic_prompt(strip_prompt_echo(it.answer, it.question))}],
            self.params) for it in items]

    def split(self, items: Sequence[ScoreInput]) -> list[list[str] | None]:
        """Facts per answer; None where the judge call failed after the retry."""
        texts = ask(self.backend, self.requests(items), retries=self.retries)
        return [None if t is None else parse_facts(t) for t in texts]


class SentenceSplitter:
    """Model-free splitter: sentences of the answer (cheap, deterministic; coarser than atomic facts)."""

    def split(self, items: Sequence[ScoreInput]) -> list[list[str] | None]:
        return [split_sentences(strip_prompt_echo(it.answer, it.question)) for it in items]


class JudgeVerifier:
    """Each fact to a judge: 'Is this true or false? Answer in one word.' (grounded: against the references)."""

    def __init__(self, backend: Backend, *, grounded: bool = False, max_new_tokens: int = 8, retries: int = 1):
        self.backend, self.grounded, self.retries = backend, grounded, retries
        self.name = "grounded_judge" if grounded else "judge"
        self.params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)

    def request(self, n: int, item: ScoreInput, fact: str) -> GenerationRequest:
        prefix = VERIFY_PROMPT
        if self.grounded:
            prefix = GROUNDED_PROMPT.format(reference="\n".join(f"- {r}" for r in item.references))
        return GenerationRequest(f"{item.id}/fact{n}", [{"role": "system", "content": VERIFY_SYSTEM},
                                                        {"role": "user", "content": prefix + fact}], self.params)

    def verify(self, pairs: Sequence[tuple[ScoreInput, str]]) -> list[tuple[Verdict, dict[str, Any]]]:
        out: list[tuple[Verdict, dict[str, Any]] | None] = [None] * len(pairs)
        asked = []
        for k, (item, _fact) in enumerate(pairs):
            if self.grounded and not item.references:
                out[k] = ("bad", {"error": "no_reference"})
            else:
                asked.append(k)
        replies = ask(self.backend, [self.request(k, *pairs[k]) for k in asked], retries=self.retries)
        for k, reply in zip(asked, replies, strict=True):
            out[k] = (parse_verdict(reply), {"reply": reply} if reply is not None else {"error": "judge_error"})
        return out  # type: ignore[return-value]


class EmbeddingVerifier:
    """Model-free grounded verifier: supported when a reference statement's cosine similarity >= threshold."""

    name = "embedding"

    def __init__(self, threshold: float = 0.7, model_path: str | None = None, device: str = "cpu"):
        self.threshold = threshold
        self.model_path, self.device = model_path, device
        self._embedder: Embedder | None = None

    def embed(self, texts: list[str]):
        """Normalised embeddings (meditune.embeddings, built on first use)."""
        if self._embedder is None:
            self._embedder = Embedder(self.model_path, device=self.device)
        return self._embedder(texts)

    def verify(self, pairs: Sequence[tuple[ScoreInput, str]]) -> list[tuple[Verdict, dict[str, Any]]]:
        out: list[tuple[Verdict, dict[str, Any]]] = [("bad", {"error": "no_reference"})] * len(pairs)
        refs = sorted({r for item, _ in pairs for r in item.references})
        live = [k for k, (item, _) in enumerate(pairs) if item.references]
        if not live:
            return out
        ref_vecs = self.embed(refs)
        fact_vecs = self.embed([pairs[k][1] for k in live])
        ref_index = {r: i for i, r in enumerate(refs)}
        for row, k in enumerate(live):
            cols = [ref_index[r] for r in pairs[k][0].references]
            sims = ref_vecs[cols] @ fact_vecs[row]
            best = int(sims.argmax())
            sim = float(sims[best])
            out[k] = ("true" if sim >= self.threshold else "false",
                      {"similarity": round(sim, 4), "nearest": pairs[k][0].references[best]})
        return out


class DahlScorer:
    """Per answer: #true / #facts ('bad' counts as not true); clean when every verdict parsed."""

    value_range = (0.0, 1.0)

    def __init__(self, splitter: FactSplitter, verifier: FactVerifier, name: str = "dahl"):
        self.splitter, self.verifier, self.name = splitter, verifier, name

    def score(self, items: Sequence[ScoreInput]) -> list[Score]:
        """Score a batch of answers (facts of all answers are verified in one batched pass)."""
        results: list[Score | None] = [empty_score() if not it.answer.strip() else None for it in items]
        live = [i for i, r in enumerate(results) if r is None]
        facts_per = self.splitter.split([items[i] for i in live])
        # Flatten with the answer index and regroup by it: the published loop's undefined variable cannot recur.
        flat: list[tuple[int, str]] = []
        for i, facts in zip(live, facts_per, strict=True):
            if facts is None:
                results[i] = Score(None, clean=False, reason="judge_error", evidence={"facts": None})
            elif not facts:
                results[i] = Score(None, clean=False, reason="no_facts", evidence={"facts": []})
            else:
                flat.extend((i, f) for f in facts)
        verdicts = self.verifier.verify([(items[i], f) for i, f in flat]) if flat else []
        grouped: dict[int, list[tuple[str, Verdict, dict[str, Any]]]] = {}
        for (i, fact), (verdict, ev) in zip(flat, verdicts, strict=True):
            grouped.setdefault(i, []).append((fact, verdict, ev))
        for i, rows in grouped.items():
            n_true = sum(v == "true" for _, v, _ in rows)
            n_bad = sum(v == "bad" for _, v, _ in rows)
            clean = n_bad == 0
            results[i] = Score(n_true / len(rows), clean=clean, reason=None if clean else "unparseable",
                               evidence={"n_facts": len(rows), "n_true": n_true,
                                         "n_false": len(rows) - n_true - n_bad, "n_bad": n_bad,
                                         "verifier": self.verifier.name,
                                         "facts": [{"fact": f, "verdict": v, **ev} for f, v, ev in rows]})
        return results  # type: ignore[return-value]


def dahl_model_score(scores: Sequence[Score], *, seed: int = 0) -> dict[str, Any]:
    """A model's DAHL score: mean over clean answers, with n, the count dropped (by reason) and a 95% CI."""
    clean = [s.value for s in scores if s.clean and s.value is not None]
    dropped: dict[str, int] = {}
    for s in scores:
        if not (s.clean and s.value is not None):
            dropped[s.reason or "unparseable"] = dropped.get(s.reason or "unparseable", 0) + 1
    lo, hi = bootstrap_ci(clean, seed=seed)
    return {"score": sum(clean) / len(clean) if clean else None, "n": len(clean), "n_total": len(scores),
            "n_dropped": len(scores) - len(clean), "dropped_by_reason": dropped, "ci95": [lo, hi],
            "protocol": "DAHL: mean of #true/#facts over clean answers (every verdict parsed); "
                        "percentile bootstrap CI"}
