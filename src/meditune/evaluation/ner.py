"""Clinical NER by prompting (CCKS-2019's six types): robust parsing of the model's output, mapping of the
entity strings back to character spans, and entity-level exact span+type precision/recall/F1.

Parsing accepts, in order: a JSON object {type: [entities]}, a JSON list of {type, entity} objects (also
inside ```json fences or surrounded by prose), a JSON object cut off before its end (an answer stopped by
max_new_tokens: every complete "type": ["e1", "e2" string before the cut counts, a string cut in the middle does
not), then lines "type: e1, e2" / "type：e1、e2" and "entity (type)" / "entity - type". Type names are normalised
(CCKS names, short Chinese names and English names).
Span mapping: predicted strings are placed longest first on every occurrence in the text that does not overlap
a span already placed (CCKS annotates repeated mentions, but not 胃 inside 胃癌); a string that does not occur in
the text is one false positive ("unmapped"). Gold entities fed back through this mapping score micro F1 0.980
on CCKS-2019 dev (0.967 on train): the ceiling the mapping imposes.
`ner_prompt` and `render_entities` write the question and the answer in the format the parser reads (SFT targets,
oracle outputs): parse_entities(render_entities(x)) == x.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from meditune.evaluation.open_common import (
    OpenEvalOptions,
    backends,
    finish,
    first_texts,
    load_records,
    run_config_of,
)
from meditune.generation.base import Backend, GenerationRequest, SamplingParams
from meditune.records import NERItem
from meditune.stats import DEFAULT_RESAMPLES

CCKS_TYPES = ("疾病和诊断", "影像检查", "实验室检验", "手术", "药物", "解剖部位")
TYPE_ALIASES: dict[str, str] = {
    **{t: t for t in CCKS_TYPES},
    "疾病": "疾病和诊断", "诊断": "疾病和诊断", "疾病与诊断": "疾病和诊断", "disease": "疾病和诊断",
    "diagnosis": "疾病和诊断", "disease and diagnosis": "疾病和诊断",
    "影像": "影像检查", "影像学检查": "影像检查", "imaging": "影像检查", "imaging examination": "影像检查",
    "检验": "实验室检验", "实验室检查": "实验室检验", "化验": "实验室检验", "laboratory": "实验室检验",
    "lab": "实验室检验", "laboratory test": "实验室检验", "lab test": "实验室检验",
    "手术名称": "手术", "surgery": "手术", "operation": "手术", "procedure": "手术",
    "药品": "药物", "药名": "药物", "drug": "药物", "medication": "药物", "medicine": "药物",
    "解剖": "解剖部位", "部位": "解剖部位", "anatomy": "解剖部位", "anatomical site": "解剖部位", "body part": "解剖部位",
}

NER_PROMPT = (
    "请从下面的电子病历文本中抽取医学实体。实体类型只有六种：疾病和诊断、影像检查、实验室检验、手术、药物、解剖部位。\n"
    "只输出一个JSON对象，键为实体类型，值为在原文中逐字出现的实体列表，没有的类型给空列表。\n"
    "示例：\n文本：患者2年前因胃癌行胃大部切除术，术后口服奥美拉唑，复查胸部CT及血常规未见异常。\n"
    '输出：{"疾病和诊断": ["胃癌"], "影像检查": ["胸部CT"], "实验室检验": ["血常规"], '
    '"手术": ["胃大部切除术"], "药物": ["奥美拉唑"], "解剖部位": ["胃"]}\n\n'
    "文本：{text}\n输出："
)

Triple = tuple[int, int, str]


def ner_prompt(text: str, template: str = NER_PROMPT) -> str:
    """The user message for one text ({text} in the template replaced; str.replace, as the example has braces)."""
    return template.replace("{text}", text)


def render_entities(entities: Iterable[tuple[str, str]], types: Sequence[str] = CCKS_TYPES) -> str:
    """The output the prompt asks for, as parse_entities reads it back: one JSON object with every type as a key
    (empty lists included) and each type's entity strings in the given order, repeats dropped."""
    by_type: dict[str, list[str]] = {t: [] for t in types}
    for etype, ent in entities:
        if etype not in by_type:
            raise ValueError(f"entity type {etype!r} is not one of {', '.join(types)}")
        if ent not in by_type[etype]:
            by_type[etype].append(ent)
    return json.dumps(by_type, ensure_ascii=False)


def normalise_type(name: str) -> str | None:
    """A CCKS type for a type name the model wrote (None when it is not one of the six)."""
    key = name.strip().strip("\"'[]【】<>《》*").strip().lower()
    return TYPE_ALIASES.get(key)


def _json_candidates(text: str) -> Iterable[Any]:
    """Every JSON object/list that starts somewhere in the text (fences and prose around it are ignored)."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"[{\[]", text):
        try:
            yield decoder.raw_decode(text, m.start())[0]
        except json.JSONDecodeError:
            continue


def _from_json(obj: Any) -> list[tuple[str, str]] | None:
    out: list[tuple[str, str]] = []
    if isinstance(obj, dict):
        if {"type", "entity"} <= set(obj) or {"label", "text"} <= set(obj):
            obj = [obj]
        else:
            for k, v in obj.items():
                values = v if isinstance(v, list) else [v]
                out.extend((str(k), str(e)) for e in values if isinstance(e, (str, int, float)) and str(e).strip())
            return out
    if isinstance(obj, list):
        for e in obj:
            if isinstance(e, dict):
                t = e.get("type") or e.get("label") or e.get("entity_type") or e.get("类型")
                s = e.get("entity") or e.get("text") or e.get("name") or e.get("实体")
                if t and s:
                    out.append((str(t), str(s)))
        return out
    return None


_CUT_KEY_LIST = re.compile(r'"((?:[^"\\\n]|\\.){1,40})"\s*:\s*\[([^\]]*)')
_JSON_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def _from_cut_json(text: str) -> list[tuple[str, str]]:
    """(type, entity) pairs of a JSON object {type: [entities]} cut off before its end: the complete strings of
    every "type": [ list seen, the last list included up to its last closing quote."""
    def decoded(quoted: str) -> str:
        try:
            return json.loads(quoted)
        except json.JSONDecodeError:  # a bad escape: keep the characters as written
            return quoted[1:-1]

    out = []
    for m in _CUT_KEY_LIST.finditer(text):
        key = decoded(f'"{m.group(1)}"')
        out.extend((key, decoded(v)) for v in _JSON_STRING.findall(m.group(2)))
    return out


_LINE_TYPE_FIRST = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)、])?\s*([^:：\n]{1,20}?)\s*[:：]\s*(.*)$")
_LINE_ENTITY_FIRST = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)、])?\s*(.+?)\s*(?:[（(]([^()（）]{1,20})[)）]|\s[-–—]\s*(.+))\s*$")
_SEP = re.compile(r"[,，、;；/|]+")


def parse_entities(output: str) -> list[tuple[str, str]]:
    """(CCKS type, entity string) pairs named in a model's output; unknown types are dropped."""
    pairs: list[tuple[str, str]] | None = None
    for cand in _json_candidates(output):
        pairs = _from_json(cand)
        if pairs:
            break
    if not pairs:
        pairs = _from_cut_json(output)
    if not pairs:
        for line in output.splitlines():
            m = _LINE_TYPE_FIRST.match(line)
            if m and normalise_type(m.group(1)):
                pairs.extend((m.group(1), e) for e in _SEP.split(m.group(2)))
                continue
            m = _LINE_ENTITY_FIRST.match(line)
            if m:
                pairs.append((m.group(2) or m.group(3) or "", m.group(1)))
    out, seen = [], set()
    for t, e in pairs:
        etype, ent = normalise_type(t), e.strip().strip("\"'“”‘’[]【】。.").strip()
        if etype and ent and (etype, ent) not in seen:
            seen.add((etype, ent))
            out.append((etype, ent))
    return out


def map_spans(text: str, entities: Sequence[tuple[str, str]], mode: str = "all"
              ) -> tuple[set[Triple], list[tuple[str, str]]]:
    """(set of (start, end, type), entities not found in text).

    Longest strings are placed first and an occurrence overlapping an already placed span is skipped (胃 inside
    胃癌 is not a separate 解剖部位 mention); mode "all" keeps every remaining occurrence, "first" the first one.
    """
    spans: set[Triple] = set()
    taken = [False] * len(text)
    unmapped = []
    for etype, ent in sorted(entities, key=lambda e: -len(e[1])):
        found = [m.start() for m in re.finditer(re.escape(ent), text)]
        if not found:
            unmapped.append((etype, ent))
            continue
        free = [s for s in found if not any(taken[s:s + len(ent)])]
        for s in free[:1] if mode == "first" else free:
            spans.add((s, s + len(ent), etype))
            for k in range(s, s + len(ent)):
                taken[k] = True
    return spans, unmapped


def counts(gold: set[Triple], pred: set[Triple], unmapped: int = 0, etype: str | None = None) -> tuple[int, int, int]:
    """(tp, fp, fn) of exact span+type matches (restricted to one type when etype is given)."""
    if etype is not None:
        gold = {g for g in gold if g[2] == etype}
        pred = {p for p in pred if p[2] == etype}
    tp = len(gold & pred)
    return tp, len(pred) - tp + unmapped, len(gold) - tp


def prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """Precision, recall, F1 from counts (0 when undefined)."""
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def micro_scores(per_doc: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, dict]:
    """Micro precision/recall/F1 over documents (rows of tp, fp, fn) with a bootstrap CI over documents."""
    per_doc = np.asarray(per_doc, dtype=float).reshape(-1, 3)
    n = len(per_doc)
    value = prf(*per_doc.sum(0))
    rng = np.random.default_rng(seed)
    draws = np.array([prf(*per_doc[rng.integers(0, n, n)].sum(0)) for _ in range(resamples)]) if n else np.zeros((0, 3))
    out = {}
    for k, name in enumerate(("precision", "recall", "f1")):
        lo, hi = (np.quantile(draws[:, k], [0.025, 0.975]) if n else (float("nan"), float("nan")))
        out[name] = {"value": value[k], "ci_low": float(lo), "ci_high": float(hi), "n": n,
                     "stderr": float(draws[:, k].std(ddof=1)) if n > 1 else float("nan")}
    return out


class NEROptions(OpenEvalOptions):
    """`meditune eval ner`: prompt for the six CCKS types, score exact span+type matches."""

    prompt_template: str = Field(NER_PROMPT, description="user message; {text} is replaced")
    max_new_tokens: int = Field(256, ge=1)
    types: list[str] = Field(default_factory=lambda: list(CCKS_TYPES))
    span_mapping: Literal["all", "first"] = "all"


def evaluate_ner(opts: NEROptions, out_dir: str | Path, *, backend: Backend | None = None) -> dict[str, str]:
    """Extract entities with the model and write results.json + samples.jsonl (micro and per-type P/R/F1)."""
    started, out = time.time(), Path(out_dir)
    items: list[NERItem] = load_records(opts.data, (NERItem,), limit=opts.limit)
    gen, _ = backends(opts, out, backend)
    params = SamplingParams(temperature=opts.temperature, max_new_tokens=opts.max_new_tokens, seed=opts.seed)
    reqs = [GenerationRequest(it.id, [{"role": "user", "content": ner_prompt(it.text, opts.prompt_template)}], params)
            for it in items]
    texts = first_texts(gen.generate(reqs))
    samples, rows, per_type = [], [], {t: [] for t in opts.types}
    for doc_id, (it, (output, finish_reason)) in enumerate(zip(items, texts, strict=True)):
        predicted = [(t, e) for t, e in parse_entities(output) if t in opts.types]
        pred, unmapped = map_spans(it.text, predicted, opts.span_mapping)
        gold = {(e.start, e.end, e.type) for e in it.entities if e.type in opts.types}
        tp, fp, fn = counts(gold, pred, len(unmapped))
        rows.append((tp, fp, fn))
        for t in opts.types:
            per_type[t].append(counts(gold, pred, sum(u[0] == t for u in unmapped), t))
        p, r, f = prf(tp, fp, fn)
        samples.append({"doc_id": doc_id, "id": it.id, "prompt": reqs[doc_id].messages[-1]["content"],
                        "output": output, "finish_reason": finish_reason,
                        "gold": sorted(gold), "pred": sorted(pred), "unmapped": unmapped,
                        "counts": {"tp": tp, "fp": fp, "fn": fn},
                        "metrics": {"doc_precision": p, "doc_recall": r, "doc_f1": f}})
    micro = micro_scores(np.array(rows), seed=opts.seed)
    by_type = {name: {} for name in ("precision", "recall", "f1")}
    for t in opts.types:
        scores = micro_scores(np.array(per_type[t]), seed=opts.seed)
        for name in by_type:
            by_type[name][t] = {**scores[name], "support": int(sum(r[0] + r[2] for r in per_type[t]))}
    protocol = {"task": "clinical NER, entity-level exact span and type", "types": opts.types,
                "generation": params.to_dict(), "system_prompt": opts.system_prompt,
                "span_mapping": f"{opts.span_mapping} non-overlapping occurrences, longest strings first; strings "
                                "not in the text count as false positives",
                "ci": "micro P/R/F1: percentile bootstrap over documents"}
    overrides = {f"micro_{k}": v for k, v in micro.items()}
    return finish(out, opts.task or "ner", samples, protocol=protocol, run_config=run_config_of(opts, gen),
                  by_category=by_type, overrides=overrides, seed=opts.seed, n_original=len(items),
                  extra={"unmapped_entities": sum(len(s["unmapped"]) for s in samples),
                         "empty_outputs": sum(not s["output"].strip() for s in samples),
                         "no_entities_parsed": sum(not s["pred"] and not s["unmapped"] for s in samples)},
                  started=started)
