"""Parity of meditune's multiple-choice log-likelihoods with lm-evaluation-harness, on real benchmark items.

Runs lm-eval (its Python API, a local task YAML written to a temp dir that reuses lm-eval's own medqa prompt
function / kormedmcqa prompt) and meditune on the same items with the default model (float32, CPU), then
compares every option's log-likelihood and the accuracies. Prints one table row per configuration.

  python bench/mcqa_parity.py --medqa 200 --kormed 200          # the issue's sizes
  python bench/mcqa_parity.py --medqa 40 --kormed 40            # quicker

Data (read here only, never copied into the project): ../shared/data/medqa_us/US/4_options/
phrases_no_exclude_dev.jsonl (first N) and ../shared/data/kormedmcqa: doctor/valid.csv (164 items) followed by
nurse/valid.csv (the rest up to N), in file order.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, ready  # noqa: E402

MEDQA = SHARED / "medqa_us" / "US" / "4_options" / "phrases_no_exclude_dev.jsonl"
KORMED = [SHARED / "kormedmcqa" / "doctor" / "valid.csv", SHARED / "kormedmcqa" / "nurse" / "valid.csv"]
LETTERS = "ABCDE"


# ------------------------------------------------------------------------------------------ small readers

def read_medqa(n: int) -> list[dict]:
    """First n MedQA-US 4-option dev rows as {id, question, options[4], answer}."""
    rows = []
    with open(MEDQA, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if len(rows) >= n:
                break
            d = json.loads(line)
            rows.append({"id": f"medqa-dev-{i}", "question": d["question"],
                         "options": [d["options"][k] for k in "ABCD"], "answer": "ABCD".index(d["answer_idx"]),
                         "subject": d.get("meta_info")})
    return rows


def read_kormed(n: int) -> list[dict]:
    """First n KorMedMCQA valid rows (doctor, then nurse) as {id, question, options[5], answer}."""
    rows = []
    for path in KORMED:
        with open(path, encoding="utf-8") as f:
            for i, d in enumerate(csv.DictReader(f)):
                if len(rows) >= n:
                    return rows
                rows.append({"id": f"kormed-{path.parent.name}-valid-{i}", "question": d["question"],
                             "options": [d[k] for k in LETTERS], "answer": LETTERS.index(d["answer"].strip()),
                             "subject": path.parent.name, "language": "ko"})
    return rows


def write_mcq_jsonl(rows: list[dict], path: Path) -> Path:
    """The rows as meditune MCQItem JSONL."""
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({k: v for k, v in r.items() if v is not None}, ensure_ascii=False) + "\n")
    return path


# ------------------------------------------------------------------------------------------ lm-eval side

MEDQA_PY = "from lm_eval.tasks.medqa.preprocess_medqa import doc_to_target, doc_to_text  # noqa: F401\n"


def lm_eval_task_dir(tmp: Path, medqa_rows: list[dict], kormed_rows: list[dict]) -> dict[str, str]:
    """Write local task YAMLs + data; returns {config name: lm-eval task name}."""
    tdir = tmp / "tasks"
    tdir.mkdir()
    (tdir / "preprocess_medqa.py").write_text(MEDQA_PY)
    with open(tmp / "medqa.jsonl", "w", encoding="utf-8") as f:  # GBaker/MedQA-USMLE-4-options-hf layout
        for r in medqa_rows:
            f.write(json.dumps({"sent1": r["question"], **{f"ending{i}": o for i, o in enumerate(r["options"])},
                                "label": r["answer"]}, ensure_ascii=False) + "\n")
    with open(tmp / "kormed.jsonl", "w", encoding="utf-8") as f:
        for r in kormed_rows:
            f.write(json.dumps({"question": r["question"], **dict(zip(LETTERS, r["options"], strict=True)),
                                "answer": r["answer"]}, ensure_ascii=False) + "\n")
    metrics = "metric_list:\n  - metric: acc\n  - metric: acc_norm\nmetadata:\n  version: 1.0\n"

    def data(name: str) -> str:
        return (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: {tmp / name}\n"
                "validation_split: validation\ntest_split: validation\noutput_type: multiple_choice\n")

    (tdir / "medqa_letters.yaml").write_text(
        "task: parity_medqa_letters\n" + data("medqa.jsonl")
        + "doc_to_text: !function preprocess_medqa.doc_to_text\ndoc_to_target: !function preprocess_medqa.doc_to_target\n"
        + "doc_to_choice: ['A', 'B', 'C', 'D']\n" + metrics)
    (tdir / "medqa_full.yaml").write_text(
        "task: parity_medqa_full\n" + data("medqa.jsonl")
        + "doc_to_text: !function preprocess_medqa.doc_to_text\ndoc_to_target: !function preprocess_medqa.doc_to_target\n"
        + "doc_to_choice: '{{[ending0, ending1, ending2, ending3]}}'\n" + metrics)
    # lm-eval's kormedmcqa prompt (its _template_yaml doc_to_text), scored as multiple choice over the letters
    (tdir / "kormed_letters.yaml").write_text(
        "task: parity_kormed_letters\n" + data("kormed.jsonl")
        + "doc_to_text: \"{{question.strip()}}\\nA. {{A}}\\nB. {{B}}\\nC. {{C}}\\nD. {{D}}\\nE. {{E}}\\n정답：\"\n"
        + "doc_to_target: answer\ndoc_to_choice: ['A', 'B', 'C', 'D', 'E']\n" + metrics)
    return {"medqa_letters": "parity_medqa_letters", "medqa_full": "parity_medqa_full",
            "kormed_letters": "parity_kormed_letters"}


def run_lm_eval(task_dir: Path, task: str, model_dir: str, *, chat: bool, batch_size: int) -> tuple[dict, float]:
    """(lm-eval output with samples, wall seconds)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    t0 = time.time()
    out = simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32,device=cpu",
                          tasks=[task], task_manager=TaskManager(include_path=str(task_dir)),
                          batch_size=batch_size, log_samples=True, apply_chat_template=chat, num_fewshot=0,
                          random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    return out, time.time() - t0


def lm_eval_lls(out: dict, task: str) -> dict[int, list[float]]:
    """doc_id -> per-option log-likelihoods from lm-eval's logged samples."""
    return {s["doc_id"]: [float(r[0]) for r in s["filtered_resps"]] for s in out["samples"][task]}


# ------------------------------------------------------------------------------------------ meditune side

def run_meditune(data: Path, out_dir: Path, *, template: str, choices: str, chat: bool,
                 batch_size: int) -> tuple[list[dict], dict, float]:
    """(samples, results, wall seconds)."""
    from meditune.evaluation.mcqa import MCQAOptions, evaluate_mcqa
    from meditune.io import read_json, read_jsonl

    t0 = time.time()
    opts = MCQAOptions(model="default", data=str(data), template=template, choices=choices, chat_template=chat,
                       system_prompt="model-default" if chat else None, mode="loglik", batch_size=batch_size,
                       device="cpu", dtype="float32")
    paths = evaluate_mcqa(opts, out_dir)
    return read_jsonl(paths["samples"]), read_json(paths["results"]), time.time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--medqa", type=int, default=200, help="MedQA-US dev items (0 = skip)")
    ap.add_argument("--kormed", type=int, default=200, help="KorMedMCQA valid items (0 = skip)")
    ap.add_argument("--configs", default="medqa_letters,medqa_full,medqa_chat,kormed_letters")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args(argv)
    if not ready(args.threads):
        return 0
    from meditune.models import resolve

    model_dir = resolve("default").path
    medqa, kormed = read_medqa(args.medqa), read_kormed(args.kormed)
    # config -> (items, lm-eval task, meditune template, choices, chat)
    plan = {
        "medqa_letters": (medqa, "medqa_letters", "medqa", "letters", False),
        "medqa_full": (medqa, "medqa_full", "medqa", "full", False),
        "medqa_chat": (medqa, "medqa_letters", "medqa", "letters", True),
        "kormed_letters": (kormed, "kormed_letters", "kormedmcqa", "letters", False),
    }
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        tasks = lm_eval_task_dir(tmp, medqa, kormed)
        for name in [c for c in args.configs.split(",") if c]:
            items, lm_key, template, choices, chat = plan[name]
            if not items:
                continue
            data = write_mcq_jsonl(items, tmp / f"{name}.items.jsonl")
            lm_out, lm_s = run_lm_eval(tmp / "tasks", tasks[lm_key], model_dir, chat=chat,
                                       batch_size=args.batch_size)
            ref = lm_eval_lls(lm_out, tasks[lm_key])
            samples, res, mt_s = run_meditune(data, tmp / f"out-{name}", template=template, choices=choices,
                                              chat=chat, batch_size=args.batch_size)
            diffs = [abs(a - b) for s in samples for a, b in zip(s["loglik"], ref[s["doc_id"]], strict=True)]
            lm_res = lm_out["results"][tasks[lm_key]]
            mt = res["meditune"]["metrics"]
            same_acc = (abs(lm_res["acc,none"] - mt["acc"]["value"]) < 1e-12
                        and abs(lm_res["acc_norm,none"] - mt["acc_norm"]["value"]) < 1e-12)
            good = max(diffs) <= args.tol and same_acc
            ok &= good
            rows.append((name, len(samples), max(diffs), lm_res["acc,none"], mt["acc"]["value"],
                         lm_res["acc_norm,none"], mt["acc_norm"]["value"], lm_s, mt_s, good))
            print(f"[{name}] done: max|dll|={max(diffs):.2e} lm-eval {lm_s:.0f}s meditune {mt_s:.0f}s", flush=True)
    head = ("config", "n", "max|Δll|", "acc lm-eval", "acc meditune", "acc_norm lm-eval", "acc_norm meditune",
            "lm-eval s", "meditune s", "parity")
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.2e} | {r[3]:.4f} | {r[4]:.4f} | {r[5]:.4f} | {r[6]:.4f} | {r[7]:.0f} | "
              f"{r[8]:.0f} | {'yes' if r[9] else 'NO'} |")
    print(f"\ntolerance {args.tol}; default model, float32, CPU, batch size {args.batch_size}; "
          "medqa_chat = lm-eval --apply_chat_template vs meditune --chat --system-prompt model-default")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
