"""Whole-process wall time of `meditune eval mcqa` vs lm-evaluation-harness 0.4.13 (`lm_eval run`), per protocol.

Every run is its own process, start-up included, as a user runs it: `python -m meditune.cli eval mcqa ...` and
`python -m lm_eval run --model hf ...`, default model (the converted safetensors directory for both), float32,
CPU, the same torch thread count. Protocols:
  full        MedQA-US 4-option dev, lm-eval's medqa_4options prompt, continuation " " + option text (Med42)
  letters     the same items, continuation " A".." D" (lm-eval's medqa_4options)
  generative  KorMedMCQA doctor valid, lm-eval's own kormedmcqa task (generate_until, its extraction filter) on
              local files via `include:` of its task YAML, k shots from the doctor fewshot split; meditune with
              --template kormedmcqa --mode generative and lm-eval's stop strings and token limit
Checks, per protocol: identical accuracies and per-item predictions (generative: identical prompts, responses and
extracted letters). Separately, in fresh processes: the time to import what each side's run imports, and to load
the model once imported (lm-eval also indexes its task registry), so start-up is visible on its own.

  python bench/mcqa_speed.py --n 60 --threads 2 --rounds 3            # the issue's bench (quiet machine)
  python bench/mcqa_speed.py --n 8 --kormed-n 8 --rounds 1            # quick check

Reads ../shared/data only (skips when absent). Rounds interleave the two tools, so a load change hits both; the
1-minute load average is printed with every round. Compare ratios within a round, not seconds across windows.
Both tools run with bytecode caching on (into the temp dir) after one untimed warm-up run each, as installed
packages run; `--no-bytecode-cache` keeps the environment's setting.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SHARED, ready  # noqa: E402
from mcqa_parity import LETTERS, lm_eval_task_dir, read_medqa, write_mcq_jsonl  # noqa: E402

KORMED_DOCTOR = SHARED / "kormedmcqa" / "doctor"
# lm-eval's kormedmcqa generation_kwargs.until (its _template_yaml)
KORMED_UNTIL = ["Q:", "</s>", "<|im_end|>", ".", "\n\n"]

# What each side's run imports before it loads a model (the probes time these in a fresh interpreter).
# meditune's log-likelihood runs load the model with meditune.plain_llama (no transformers import); its
# generative runs load it with transformers.
IMPORTS = {
    "meditune-loglik": ["meditune.cli", "meditune.evaluation.mcqa", "meditune.evaluation.loglik",
                        "meditune.evaluation.loglik_tree", "meditune.plain_llama"],
    "meditune-generative": ["meditune.cli", "meditune.evaluation.mcqa", "meditune.evaluation.generative",
                            "meditune.generation.transformers_backend", "transformers.models.llama.modeling_llama"],
    "lm-eval": ["lm_eval.__main__", "lm_eval._cli.run", "lm_eval.evaluator", "lm_eval.tasks",
                "lm_eval.models.huggingface", "transformers.models.llama.modeling_llama"],
}


# ------------------------------------------------------------------------------------------ start-up probes

def probe(side: str, model_dir: str) -> dict[str, float]:
    """In this (fresh) process: seconds to import what `side` imports, to load the model, and (lm-eval) to index
    its tasks. Printed as JSON by `--probe SIDE`."""
    import importlib

    t0 = time.perf_counter()
    for mod in IMPORTS[side]:
        importlib.import_module(mod)
    t1 = time.perf_counter()
    out = {"import_s": t1 - t0}
    if side.startswith("meditune"):
        from meditune.models import load_model, load_scoring_model

        load = load_scoring_model if side == "meditune-loglik" else load_model
        load("default", device="cpu", dtype="float32")
        out["load_s"] = time.perf_counter() - t1
    else:
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        HFLM(pretrained=model_dir, dtype="float32", device="cpu", batch_size=8)
        t2 = time.perf_counter()
        out["load_s"] = t2 - t1
        TaskManager()
        out["task_index_s"] = time.perf_counter() - t2
    return out


def run_probe(side: str, model_dir: str, env: dict[str, str]) -> dict[str, float]:
    """Start-up costs of one side, measured in a fresh interpreter (plus its bare start, `python -c pass`)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)
    python_s = time.perf_counter() - t0
    res = subprocess.run([sys.executable, __file__, "--probe", side, "--model-dir", model_dir], check=True, env=env,
                         capture_output=True, text=True)
    return {"python_s": python_s, **json.loads(res.stdout.strip().splitlines()[-1])}


# ------------------------------------------------------------------------------------------ data and tasks

def kormed_answer(value: str) -> int:
    """The gold option index: the CSVs give the answer as 1-5 (KorMedMCQA on the Hub) or as a letter."""
    value = value.strip()
    return int(value) - 1 if value.isdigit() else LETTERS.index(value)


def read_kormed_doctor(n: int, split: str = "valid") -> list[dict]:
    """First n rows of KorMedMCQA doctor/<split>.csv as {id, question, options[5], answer}."""
    rows = []
    with open(KORMED_DOCTOR / f"{split}.csv", encoding="utf-8") as f:
        for i, d in enumerate(csv.DictReader(f)):
            if len(rows) >= n:
                break
            rows.append({"id": f"kormed-doctor-{split}-{i}", "question": d["question"],
                         "options": [d[k] for k in LETTERS], "answer": kormed_answer(d["answer"]),
                         "subject": "doctor", "language": "ko"})
    return rows


def kormed_task(tmp: Path, rows: list[dict], shots: list[dict]) -> str:
    """lm-eval's own kormedmcqa task config (included from its package) on local files; returns the task name."""
    import lm_eval.tasks.kormedmcqa as pkg

    def dump(name: str, items: list[dict]) -> Path:
        path = tmp / name
        with open(path, "w", encoding="utf-8") as f:  # the HF dataset's layout: answer is 1..5
            for r in items:
                f.write(json.dumps({"question": r["question"], **dict(zip(LETTERS, r["options"], strict=True)),
                                    "answer": r["answer"] + 1}, ensure_ascii=False) + "\n")
        return path

    test, fewshot = dump("kormed_test.jsonl", rows), dump("kormed_fewshot.jsonl", shots)
    template = Path(pkg.__path__[0]) / "_template_yaml"
    (tmp / "tasks" / "kormed_gen.yaml").write_text(
        f"include: {template}\ntask: speed_kormed_gen\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {test}\n    fewshot: {fewshot}\n"
        "test_split: test\nfewshot_split: fewshot\n", encoding="utf-8")
    return "speed_kormed_gen"


# ------------------------------------------------------------------------------------------ one run each

def timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one process; its output goes to `log`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{cmd[2]} failed (exit {proc.returncode}), see {log}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def meditune_cmd(spec: dict, out: Path, batch_size: int) -> list[str]:
    cmd = [sys.executable, "-m", "meditune.cli", "eval", "mcqa", str(spec["data"]), "--out", str(out),
           "--template", spec["template"], "--mode", spec["mode"], "--batch-size", str(batch_size),
           "--device", "cpu", "--dtype", "float32", "--model", "default"]
    if spec["mode"] == "loglik":
        cmd += ["--choices", spec["choices"]]
    else:
        cmd += ["--config", str(spec["gen_config"])]
        if spec["shots"]:
            cmd += ["--shots", str(spec["shots"]), "--fewshot-data", str(spec["fewshot"])]
    return cmd


def lm_eval_cmd(spec: dict, out: Path, model_dir: str, batch_size: int, task_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
           f"pretrained={model_dir},dtype=float32", "--device", "cpu", "--tasks", spec["task"], "--include_path",
           str(task_dir), "--batch_size", str(batch_size), "--output_path", str(out), "--log_samples", "--seed", "0"]
    if spec["mode"] == "generative":
        cmd += ["--num_fewshot", str(spec["shots"]), "--gen_kwargs", f"max_gen_toks={spec['max_gen_toks']}"]
    return cmd


def lm_eval_outputs(out: Path, task: str) -> tuple[dict, list[dict]]:
    """(results of the task, its logged samples in doc order) from an lm-eval output directory."""
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"][task]
    samples = [json.loads(line) for p in out.rglob(f"samples_{task}_*.jsonl") for line in p.open(encoding="utf-8")]
    return results, sorted(samples, key=lambda s: s["doc_id"])


def compare(spec: dict, mt_out: Path, lm_out: Path) -> dict:
    """Accuracy and per-item agreement of the two runs."""
    res = json.loads((mt_out / "results.json").read_text())
    mt = [json.loads(line) for line in (mt_out / "samples.jsonl").open(encoding="utf-8")]
    lm_res, lm = lm_eval_outputs(lm_out, spec["task"])
    if spec["mode"] == "loglik":
        lm_pred = [max(range(len(s["filtered_resps"])), key=lambda i: (float(s["filtered_resps"][i][0]), -i))
                   for s in lm]
        metrics = {m: (lm_res[f"{m},none"], res["meditune"]["metrics"][m]["value"]) for m in ("acc", "acc_norm")}
        same_items = [s["pred"] for s in mt] == lm_pred
        return {"metrics": metrics, "same_items": same_items, "n": len(mt)}
    lm_letter = [s["filtered_resps"][0] for s in lm]
    lm_text = [s["resps"][0][0] for s in lm]
    lm_prompt = [s["arguments"]["gen_args_0"]["arg_0"] for s in lm]
    key = next(k for k in lm_res if k.startswith("exact_match,"))
    return {"metrics": {"exact_match": (lm_res[key], res["meditune"]["metrics"]["exact_match"]["value"])},
            "same_items": [s["pred_letter"] or "" for s in mt] == lm_letter,
            "same_prompts": [s["prompt"] for s in mt] == lm_prompt,
            "same_responses": sum(s["response"] == t for s, t in zip(mt, lm_text, strict=True)),
            "n": len(mt)}


# ------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=60, help="MedQA-US dev items (full and letters)")
    ap.add_argument("--kormed-n", type=int, default=60, help="KorMedMCQA doctor valid items (generative)")
    ap.add_argument("--shots", type=int, default=5, help="generative: shots from the doctor fewshot split")
    ap.add_argument("--max-gen-toks", type=int, default=32, help="generative: token limit of both sides")
    ap.add_argument("--protocols", default="full,letters,generative")
    ap.add_argument("--lm-batch-sizes", default="8", help="lm-eval batch size; several = pick the fastest on the "
                    "first protocol's first round")
    ap.add_argument("--batch-size", type=int, default=16, help="meditune --batch-size")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds, each meditune then lm-eval")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads of both (OMP_NUM_THREADS)")
    ap.add_argument("--no-bytecode-cache", action="store_true", help="keep the environment's bytecode setting "
                    "(PYTHONDONTWRITEBYTECODE=1 makes every run recompile the modules outside site-packages)")
    ap.add_argument("--probe", choices=sorted(IMPORTS), help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.probe, args.model_dir)))
        return 0
    if not ready(0):
        return 0
    from meditune.models import resolve

    model_dir = resolve("default").path
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if not args.no_bytecode_cache:  # as an installed package runs: compiled modules are reused between runs
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    protocols = [p for p in args.protocols.split(",") if p]
    sizes = [int(b) for b in args.lm_batch_sizes.split(",")]
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        medqa = read_medqa(args.n)
        tasks = lm_eval_task_dir(tmp, medqa, [])
        medqa_data = write_mcq_jsonl(medqa, tmp / "medqa.items.jsonl")
        specs = {
            "full": {"mode": "loglik", "choices": "full", "template": "medqa", "data": medqa_data,
                     "task": tasks["medqa_full"], "rows": medqa},
            "letters": {"mode": "loglik", "choices": "letters", "template": "medqa", "data": medqa_data,
                        "task": tasks["medqa_letters"], "rows": medqa},
        }
        if "generative" in protocols:
            kormed, shots = read_kormed_doctor(args.kormed_n), read_kormed_doctor(args.shots, "fewshot")
            gen_config = tmp / "generative.yaml"
            gen_config.write_text(json.dumps({"stop": KORMED_UNTIL, "max_new_tokens": args.max_gen_toks}))
            specs["generative"] = {"mode": "generative", "template": "kormedmcqa", "shots": args.shots,
                                   "data": write_mcq_jsonl(kormed, tmp / "kormed.items.jsonl"),
                                   "fewshot": write_mcq_jsonl(shots, tmp / "kormed.fewshot.jsonl"),
                                   "gen_config": gen_config, "task": kormed_task(tmp, kormed, shots),
                                   "max_gen_toks": args.max_gen_toks, "rows": kormed}

        if not args.no_bytecode_cache:
            env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")  # both sides compile once, outside the source trees
        warm = protocols[0]  # untimed runs: compiled modules, file cache and lm-eval's dataset cache are warm
        small = write_mcq_jsonl(specs[warm]["rows"][:2], tmp / "warm.jsonl")
        timed(meditune_cmd({**specs[warm], "data": small}, tmp / "mt-warm", args.batch_size), env, tmp / "mt-warm.log")
        timed(lm_eval_cmd(specs[warm], tmp / "lm-warm", model_dir, sizes[0], tmp / "tasks") + ["--limit", "2"], env,
              tmp / "lm-warm.log")
        sides = ["lm-eval"] + (["meditune-loglik"] if {"full", "letters"} & set(protocols) else []) \
            + (["meditune-generative"] if "generative" in protocols else [])
        startup = {side: run_probe(side, model_dir, env) for side in sides}
        for side, s in startup.items():
            extra = f", task index {s['task_index_s']:.2f} s" if "task_index_s" in s else ""
            print(f"start-up {side}: python {s['python_s']:.2f} s, imports {s['import_s']:.2f} s, model load "
                  f"{s['load_s']:.2f} s{extra}", flush=True)

        lm_batch = sizes[0]
        times: dict[str, dict[str, list[tuple[float, float]]]] = {p: {"meditune": [], "lm-eval": []}
                                                                  for p in protocols}
        checks: dict[str, dict] = {}
        for r in range(args.rounds):
            for name in protocols:
                spec = specs[name]
                mt_out, lm_out = tmp / f"mt-{name}-{r}", tmp / f"lm-{name}-{r}"
                mt = timed(meditune_cmd(spec, mt_out, args.batch_size), env, tmp / f"mt-{name}-{r}.log")
                if r == 0 and name == protocols[0] and len(sizes) > 1:
                    trial = {}
                    for bs in sizes:
                        trial[bs] = timed(lm_eval_cmd(spec, tmp / f"lm-trial-{bs}", model_dir, bs, tmp / "tasks"),
                                          env, tmp / f"lm-trial-{bs}.log")[0]
                        print(f"lm-eval batch {bs}: {trial[bs]:.1f} s", flush=True)
                    lm_batch = min(trial, key=trial.__getitem__)
                lm = timed(lm_eval_cmd(spec, lm_out, model_dir, lm_batch, tmp / "tasks"), env,
                           tmp / f"lm-{name}-{r}.log")
                times[name]["meditune"].append(mt)
                times[name]["lm-eval"].append(lm)
                checks[name] = compare(spec, mt_out, lm_out)
                print(f"round {r + 1} {name}: meditune {mt[0]:.1f} s (cpu {mt[1]:.1f}), lm-eval {lm[0]:.1f} s "
                      f"(cpu {lm[1]:.1f}), ratio {lm[0] / mt[0]:.2f}x (load {os.getloadavg()[0]:.1f})", flush=True)

    print("\n| protocol | items | lm-eval s (best) | meditune s (best) | ratio of bests | per-round ratios | "
          "CPU-time ratio | metrics (lm-eval = meditune) | same per item |\n|---|---|---|---|---|---|---|---|---|")
    ok = True
    for name in protocols:
        lm, mt, c = times[name]["lm-eval"], times[name]["meditune"], checks[name]
        per_round = " / ".join(f"{a[0] / b[0]:.2f}" for a, b in zip(lm, mt, strict=True))
        cpu = min(a[1] for a in lm) / min(b[1] for b in mt)
        same_metrics = all(abs(a - b) < 1e-12 for a, b in c["metrics"].values())
        metrics = ", ".join(f"{m} {a:.4f}{' = ' if abs(a - b) < 1e-12 else ' vs '}{b:.4f}"
                            for m, (a, b) in c["metrics"].items())
        same = "yes" if c["same_items"] else "NO"
        if name == "generative":
            same += (f"; prompts {'identical' if c['same_prompts'] else 'DIFFER'}; responses {c['same_responses']}/"
                     f"{c['n']} identical")
        ok &= same_metrics and c["same_items"] and c.get("same_prompts", True)
        print(f"| {name} | {c['n']} | {min(a[0] for a in lm):.1f} | {min(b[0] for b in mt):.1f} | "
              f"{min(a[0] for a in lm) / min(b[0] for b in mt):.2f}x | {per_round} | {cpu:.2f}x | {metrics} | {same} |")
    print(f"\nwhole processes, CPU float32, {args.threads} torch threads each, lm-eval batch {lm_batch}, meditune "
          f"batch {args.batch_size}, {args.rounds} rounds; generative: {args.shots}-shot, max {args.max_gen_toks} "
          f"tokens, lm-eval's stop strings on both sides; 1-min load average {load_start:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
