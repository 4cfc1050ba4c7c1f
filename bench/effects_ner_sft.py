"""Does SFT teach a task? LoRA SFT of the default model on CCKS-2019 NER train, in exactly the prompt format of
`eval_ner`, then NER micro F1 on CCKS-2019 dev before and after.

Data (../shared/data/ccks2019_ner, read only; the bench writes its derived records under --out, nothing goes
into the project). CCKS documents are long (median ~730 tokens of this tokenizer on dev, with a ~260-token
answer), too long to train on and generate for in minutes on a CPU, so every document is cut into segments: runs
of whole sentences (cut only after a 。 that no entity spans, so every entity stays whole) of up to --max-chars
characters, entities re-offset. Each document contributes ONE segment, drawn at random (seed) among its
segments of at least 20 characters, so items are independent and the bootstrap over items is one over documents.
  train   the first --train CCKS train documents, one segment each; each becomes one chat whose user turn is the
          evaluation's own prompt (meditune.evaluation.ner.ner_prompt, the default one-shot template) and whose
          assistant turn is the gold entities as the JSON object that prompt asks for (render_entities, which
          parse_entities reads back unchanged)
  test    the first --n CCKS dev documents, one segment each (never trained on)
Training: ChiMed-GPT's SFT settings (recipes/chimed.yaml: LoRA r 16, 2 epochs, batch 4, the stage's default
learning rate 2e-4, max_length 1024, which every segment chat fits), activation checkpointing on every 3rd layer
(memory on a shared machine). The sizes were set a priori from the CPU budget, not tuned on dev.
Evaluation: eval_ner, greedy, --max-new-tokens (192: the 95th percentile of the train segments' gold answers is
183 tokens), exact span+type micro P/R/F1 with a bootstrap CI over items; micro F1 is a ratio of sums, so its
difference is shown with the two CIs, and the paired bootstrap is that of the per-item F1 (`doc_f1`).

    python bench/effects_ner_sft.py --out bench/out/effects_ner [--threads 2]     # full run (~25 min)
    python bench/effects_ner_sft.py --tiny --out bench/out/effects_ner_tiny        # 3 items, 2 steps
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

import common
from common import SHARED, paired, with_ci

CCKS = SHARED / "ccks2019_ner"
MIN_SEGMENT_CHARS = 20


def segments(item: Any, max_chars: int) -> list[Any]:
    """The document as runs of whole sentences of up to max_chars (longer when one sentence is), entities
    re-offset; a cut is made only after a 。 that no entity spans."""
    inside = {k for e in item.entities for k in range(e.start, e.end)}
    cuts = [i + 1 for i, ch in enumerate(item.text) if ch == "。" and i not in inside and i + 1 not in inside]
    pieces, start, last = [], 0, 0
    for cut in [*cuts, len(item.text)]:
        if cut - start > max_chars and last > start:
            pieces.append((start, last))
            start = last
        last = cut
    pieces.append((start, len(item.text)))
    return [item.model_copy(update={
        "id": f"{item.id}#{s}", "text": item.text[s:e],
        "entities": [en.model_copy(update={"start": en.start - s, "end": en.end - s})
                     for en in item.entities if s <= en.start and en.end <= e],
        "meta": {**item.meta, "document": item.id, "offset": s}}) for s, e in pieces]


def one_segment_each(split: str, documents: int, max_chars: int, seed: int) -> list[Any]:
    """One random segment (of at least MIN_SEGMENT_CHARS characters) of each of the first `documents` documents."""
    from meditune.data import load_source

    rng = random.Random(seed)
    out = []
    for doc in load_source(f"ccks:{CCKS / f'{split}.json'}")[:documents]:
        pool = [s for s in segments(doc, max_chars) if len(s.text.strip()) >= MIN_SEGMENT_CHARS]
        if pool:
            out.append(rng.choice(pool))
    return out


def write_data(out: Path, args: argparse.Namespace) -> tuple[Path, Path, dict[str, int]]:
    """Train chats and dev segments under out/; their paths and counts."""
    from meditune.evaluation.ner import ner_prompt, render_entities
    from meditune.records import Chat, Message, write_records

    train = one_segment_each("train", args.train, args.max_chars, args.seed)
    dev = one_segment_each("dev", args.n, args.max_chars, args.seed)
    chats = [Chat(id=it.id, language="zh", messages=[
        Message(role="user", content=ner_prompt(it.text)),
        Message(role="assistant", content=render_entities(
            (e.type, e.text) for e in sorted(it.entities, key=lambda e: (e.start, e.end))))]) for it in train]
    train_path, dev_path = out / "ccks_train_chats.jsonl", out / "ccks_dev_segments.jsonl"
    write_records(train_path, chats)
    write_records(dev_path, dev)
    counts = {"train_segments": len(chats), "train_entities": sum(len(it.entities) for it in train),
              "dev_segments": len(dev), "dev_entities": sum(len(it.entities) for it in dev),
              "dev_chars_median": sorted(len(it.text) for it in dev)[len(dev) // 2] if dev else 0}
    return train_path, dev_path, counts


def recipe_data(args: argparse.Namespace, train_path: Path, dev_path: Path) -> dict:
    evaluation = {"type": "eval_ner", "data": "@ner_dev", "task": "ccks2019_dev_segments",
                  "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    sft = {"name": "sft", "type": "sft", "data": str(train_path), "method": "lora", "epochs": 2,
           "batch_size": 4, "max_length": 1024, "activation_checkpointing": True, "checkpoint_every": 3}
    if args.max_steps:
        sft["max_steps"] = args.max_steps
    return {"name": "effects_ner_sft", "model": args.model, "seed": args.seed, "system_prompt": None, "stages": [
        {"name": "ner_dev", "type": "data", "source": str(dev_path)},
        {"name": "ner_before", **evaluation},
        sft,
        {"name": "ner_after", "model": "@sft", **evaluation},
        {"name": "report", "type": "report", "title": "SFT on CCKS-2019 NER train: NER F1 on CCKS-2019 dev",
         "compare": [["ner_before", "ner_after"]]}]}


def main() -> int:
    ap = common.effect_parser(__doc__, "bench/out/effects_ner")
    ap.add_argument("--n", type=int, default=160, help="CCKS dev documents evaluated (the first N, one segment each)")
    ap.add_argument("--train", type=int, default=64, help="CCKS train documents trained on (one segment each)")
    ap.add_argument("--max-chars", type=int, default=100, help="segment length in characters (whole sentences)")
    ap.add_argument("--max-new-tokens", type=int, default=192, help="answer length")
    ap.add_argument("--batch-size", type=int, default=16, help="generation batch")
    common.effect_args(ap, "SFT", {"n": 3, "train": 8, "max_new_tokens": 48})
    args = ap.parse_args()
    if not common.begin(args):
        return 0
    train_path, dev_path, counts = write_data(args.out, args)
    print(f"data: {counts}")
    recipe = common.build_recipe(recipe_data(args, train_path, dev_path), args.set)
    stages, wall = common.run_stages(recipe, args.out / "run")
    before, after = stages["ner_before"], stages["ner_after"]
    mb, ma = before.results["meditune"], after.results["meditune"]
    fb, fa = mb["metrics"]["micro_f1"], ma["metrics"]["micro_f1"]
    doc = paired(before, after, "doc_f1")
    protocol = (f"LoRA SFT (chimed.yaml settings) on {counts['train_segments']} CCKS train segments in the eval's "
                f"prompt format; greedy, {args.max_new_tokens} new tokens; exact span+type")
    data = (f"CCKS-2019 dev, one segment (<= {args.max_chars} chars) of each of the first {args.n} documents: "
            f"n = {fb['n']} items, {counts['dev_entities']} entities")
    common.print_effects(["NER micro F1 (bootstrap over items)", data, protocol, with_ci(fb), with_ci(fa),
                          f"{fa['value'] - fb['value']:+.3f} (see the two CIs)", common.stage_minutes(stages)],
                         ["NER per-item F1 (paired bootstrap)", f"same items, n = {doc['n']}", "same run",
                          f"{doc['before']:.3f}", f"{doc['after']:.3f}", with_ci(doc, signed=True), "(same run)"])
    for name, m in (("before", mb), ("after", ma)):
        print(f"{name}: micro P {with_ci(m['metrics']['micro_precision'])}, R {with_ci(m['metrics']['micro_recall'])}"
              f"; no entity parsed in {m['no_entities_parsed']}/{fb['n']} items, unmapped entities "
              f"{m['unmapped_entities']}, empty outputs {m['empty_outputs']}")
    print(common.train_line(stages["sft"]))
    print(f"this invocation {wall / 60:.1f} min; end: {common.load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
