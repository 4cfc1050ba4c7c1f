"""Wall time of lm-evaluation-harness (at its best batch size) vs meditune on MedQA items with full-text options.

Both score the same items with the same prompts (lm-eval's medqa_4options prompt, continuation = " " + option
text: the Med42 protocol) on the default model, float32, CPU, in this one process, with the model already in
memory for both (load time excluded). lm-eval's batch size is chosen by timing a few candidates on a warm-up
subset; meditune runs before and after lm-eval and its mean time is used (the machine may be shared). Prints
the ratio lm-eval / meditune and checks that the accuracies are identical.

  python bench/mcqa_speed.py --n 100
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ready  # noqa: E402
from mcqa_parity import lm_eval_task_dir, read_medqa, write_mcq_jsonl  # noqa: E402


def time_lm_eval(lm, task_dir: Path, task: str, batch_size: int, limit: int | None = None) -> tuple[float, dict]:
    """Seconds for lm-eval's simple_evaluate with a given batch size (model object reused)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    lm.batch_size_per_gpu = batch_size
    tm = TaskManager(include_path=str(task_dir))
    t0 = time.perf_counter()
    out = simple_evaluate(model=lm, tasks=[task], task_manager=tm, num_fewshot=0, limit=limit,
                          random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    return time.perf_counter() - t0, out


def time_meditune(model, tok, data: Path, out_dir: Path, batch_size: int, limit: int | None = None,
                  max_batch_tokens: int | None = None) -> tuple[float, dict]:
    """Seconds for meditune's evaluate_mcqa (model passed in)."""
    import shutil

    from meditune.evaluation.mcqa import MCQAOptions, evaluate_mcqa
    from meditune.io import read_json

    shutil.rmtree(out_dir, ignore_errors=True)  # no resume: time a full run
    opts = MCQAOptions(model="default", data=str(data), template="medqa", choices="full", mode="loglik",
                       batch_size=batch_size, max_batch_tokens=max_batch_tokens, limit=limit, device="cpu",
                       dtype="float32")
    t0 = time.perf_counter()
    paths = evaluate_mcqa(opts, out_dir, preloaded=(model, tok))
    return time.perf_counter() - t0, read_json(paths["results"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="MedQA-US dev items")
    ap.add_argument("--warmup", type=int, default=12, help="items used to pick lm-eval's batch size")
    ap.add_argument("--lm-batch-sizes", default="1,4,16", help="candidates (one value = no selection run)")
    ap.add_argument("--batch-size", type=int, default=16, help="meditune: most questions per forward")
    ap.add_argument("--max-batch-tokens", type=int, default=None, help="meditune: most tokens per forward")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds, each meditune then lm-eval")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args(argv)
    if not ready(args.threads):
        return 0
    import torch
    from lm_eval.models.huggingface import HFLM

    from meditune.models import load_model

    load_start = os.getloadavg()[0]
    model, tok = load_model("default", device="cpu", dtype="float32")
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1, device="cpu")
    rows = read_medqa(args.n)
    sizes = [int(b) for b in args.lm_batch_sizes.split(",")]
    mt_s, lm_s, same = [], [], True
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        task = lm_eval_task_dir(tmp, rows, [])["medqa_full"]
        data = write_mcq_jsonl(rows, tmp / "items.jsonl")
        time_meditune(model, tok, data, tmp / "warm", args.batch_size, limit=2)  # warm-up (first-call costs)
        trial = {}
        for bs in sizes if len(sizes) > 1 else []:
            trial[bs], _ = time_lm_eval(lm, tmp / "tasks", task, bs, limit=args.warmup)
            print(f"lm-eval warm-up ({args.warmup} items) batch {bs}: {trial[bs]:.1f}s", flush=True)
        best = min(trial, key=trial.__getitem__) if trial else sizes[0]
        if not trial:
            time_lm_eval(lm, tmp / "tasks", task, best, limit=2)  # warm-up (first-call costs)
        # Interleaved rounds: the two sides of a round run back to back, so a load change hits both.
        for r in range(args.rounds):
            m, res = time_meditune(model, tok, data, tmp / f"mt{r}", args.batch_size,
                                   max_batch_tokens=args.max_batch_tokens)
            t, out = time_lm_eval(lm, tmp / "tasks", task, best)
            mt_s.append(m)
            lm_s.append(t)
            lm_res, mt = out["results"][task], res["meditune"]["metrics"]
            same = same and (abs(lm_res["acc,none"] - mt["acc"]["value"]) < 1e-12
                             and abs(lm_res["acc_norm,none"] - mt["acc_norm"]["value"]) < 1e-12)
            print(f"round {r + 1}: meditune {m:.1f}s, lm-eval batch {best} {t:.1f}s, ratio {t / m:.2f}x "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    ratio = min(lm_s) / min(mt_s)
    pair = sorted(t / m for t, m in zip(lm_s, mt_s, strict=True))
    print("\n| items | options | lm-eval batch | lm-eval s (best) | meditune s (best) | ratio of bests | "
          "per-round ratios | acc | acc_norm | identical |\n|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {len(rows)} | full text, 4 | {best} | {min(lm_s):.1f} | {min(mt_s):.1f} | {ratio:.2f}x | "
          f"{' / '.join(f'{x:.2f}' for x in pair)} | {mt['acc']['value']:.4f} | {mt['acc_norm']['value']:.4f} | "
          f"{'yes' if same else 'NO'} |")
    print(f"\nCPU float32, torch threads {torch.get_num_threads()}, meditune batch {args.batch_size}, "
          f"{args.rounds} rounds; 1-min load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end; "
          f"meditune runs {', '.join(f'{x:.1f}' for x in mt_s)} s; lm-eval runs {', '.join(f'{x:.1f}' for x in lm_s)} s")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
