"""Peak RSS and seconds per step: LoRA SFT vs LoRA DPO vs full DPO with precomputed reference log-probs,
on the default model (batch 4, 256 tokens), each variant in a fresh subprocess; plain TRL defaults alongside.

    python bench/training_memory.py [--steps 6] [--variants sft_lora,dpo_lora,...] [--out results.json]

Goals (issue 7): LoRA DPO peak <= 1.25x LoRA SFT peak; DPO step <= 2.2x SFT step.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "sft_lora": "meditune LoRA SFT (assistant-only loss)",
    "dpo_lora": "meditune LoRA DPO (reference = adapter off, log-probs precomputed once)",
    "dpo_full": "meditune full DPO (reference log-probs precomputed, no reference model)",
    "trl_sft_lora": "plain TRL SFTTrainer defaults + LoRA",
    "trl_dpo_lora": "plain TRL DPOTrainer defaults + LoRA",
}
WORDS = ("patient fever cough dose renal hepatic infection antibiotic pressure cardiac chronic acute therapy "
         "symptom diagnosis history allergy monitor clinical trial evidence guideline risk benefit").split()


def rss_mib() -> float:
    """Current resident set size of this process in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)) + "."


def preferences(n: int):
    """Synthetic pairs of ~256 tokens per side (prompt ~110 + answer ~140) with the default tokenizer."""
    from meditune.records import Message, Preference

    rng = random.Random(0)
    return [Preference(id=f"p{i}", prompt=[Message(role="user", content=text(rng, 105))],
                       chosen=text(rng, 135), rejected=text(rng, 135)) for i in range(n)]


class StepTimer:
    """Wall time of every optimizer step."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                timer.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer.times.append(time.perf_counter() - timer.t0)

        self.times: list[float] = []
        self.callback = _CB()


def child(variant: str, steps: int, batch: int, length: int) -> dict:
    """Run one variant in this process and return its measurements."""
    import torch

    from meditune.recipe import Recipe
    from meditune.stages import StageContext
    from meditune.training.common import base_model_dir, load_causal_lm, settings
    from meditune.training.data import preference_row
    from meditune.training.dpo import DPOStageConfig, build_dpo_trainer
    from meditune.training.outputs import CurvesCallback
    from meditune.training.sft import SFTStageConfig, build_sft_trainer, sft_rows

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{variant}-"))
    ctx = StageContext(tmp, tmp, Recipe(name="bench", model="default"))
    prefs = preferences(batch * steps)
    common = dict(batch_size=batch, max_length=length, max_steps=steps, device="cpu", logging_steps=1)
    timer = StepTimer()
    rss0 = None
    t_setup = time.perf_counter()
    if variant in ("sft_lora", "dpo_lora", "dpo_full"):
        if variant == "sft_lora":
            cfg = SFTStageConfig(name="b", type="sft", data="-", **common)
        else:
            cfg = DPOStageConfig(name="b", type="dpo", data="-", method="full" if variant == "dpo_full" else "lora",
                                 **common)
        s = settings(cfg, ctx.recipe)
        model, tok = load_causal_lm(base_model_dir("default", tmp)[0], s)
        rss0 = rss_mib()
        if variant == "sft_lora":
            trainer = build_sft_trainer(cfg, s, ctx, model, tok, sft_rows(prefs, tok, None, length, True), [],
                                        CurvesCallback(tmp))
        else:
            rows = [preference_row(p, tok, None) for p in prefs]
            trainer = build_dpo_trainer(cfg, s, ctx, model, tok, rows, [], CurvesCallback(tmp))
    else:
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from meditune.models import resolve

        path = resolve("default").path
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path)
        rss0 = rss_mib()
        peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
        kw = dict(output_dir=str(tmp / "out"), per_device_train_batch_size=batch, max_length=length,
                  max_steps=steps, use_cpu=True, report_to="none", logging_steps=1, save_strategy="no")
        if variant == "trl_sft_lora":
            from trl import SFTConfig, SFTTrainer

            ds = Dataset.from_list([{"messages": [m.model_dump() for m in p.prompt] +
                                     [{"role": "assistant", "content": p.chosen}]} for p in prefs])
            trainer = SFTTrainer(model=model, args=SFTConfig(**kw), train_dataset=ds, processing_class=tok,
                                 peft_config=peft)
        else:
            from trl import DPOConfig, DPOTrainer

            ds = Dataset.from_list([{"prompt": [m.model_dump() for m in p.prompt],
                                     "chosen": [{"role": "assistant", "content": p.chosen}],
                                     "rejected": [{"role": "assistant", "content": p.rejected}]} for p in prefs])
            trainer = DPOTrainer(model=model, args=DPOConfig(**kw), train_dataset=ds, processing_class=tok,
                                 peft_config=peft)
    setup_s = time.perf_counter() - t_setup
    trainer.add_callback(timer.callback)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    steady = timer.times[1:] or timer.times  # the first step pays one-off costs
    return {"variant": variant, "what": VARIANTS[variant], "steps": len(timer.times),
            "s_per_step": statistics.median(steady), "s_per_step_mean": statistics.fmean(steady),
            "setup_s": setup_s, "train_s": train_s, "rss_after_load_mib": rss0,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "activation_checkpointing": bool(trainer.args.activation_checkpointing),
            "checkpoint_every": (trainer.args.activation_checkpointing_kwargs or {}).get("every_n_layers", 1),
            "share_prompt": bool(getattr(getattr(trainer.model, "get_base_model", lambda: trainer.model)().forward,
                                         "meditune_shared_prompt", False)),
            "bf16": bool(trainer.args.bf16),
            "precompute_ref": bool(getattr(trainer.args, "precompute_ref_log_probs", False))}


def _report(results: dict, v: str, line: str) -> None:
    results[v] = r = json.loads(line[len("RESULT "):])
    print(f"{v:14s} peak {r['peak_rss_mib']:7.0f} MiB (after load {r['rss_after_load_mib']:6.0f})  "
          f"{r['s_per_step']:6.2f} s/step  setup {r['setup_s']:5.1f} s  ckpt={r['activation_checkpointing']}"
          f"/{r['checkpoint_every']} share_prompt={r['share_prompt']} bf16={r['bf16']} precompute={r['precompute_ref']}",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--jobs", type=int, default=1, help="variants run side by side (default 1: one at a time)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.steps, args.batch, args.length)), flush=True)
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}
    results = {}
    variants = args.variants.split(",")
    for i in range(0, len(variants), args.jobs):
        # --jobs > 1 runs variants side by side: each still has its own process (own peak RSS), and they share
        # the machine's load equally, which keeps step-time ratios fair on a busy machine
        procs = {v: subprocess.Popen([sys.executable, __file__, "--child", v, "--steps", str(args.steps),
                                      "--batch", str(args.batch), "--length", str(args.length)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for v in variants[i:i + args.jobs]}
        for v, proc in procs.items():
            out, err = proc.communicate()
            line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(f"{v}: failed\n{err[-2000:]}", file=sys.stderr)
                continue
            _report(results, v, line)
    ratios = {}
    for sft, dpo in (("sft_lora", "dpo_lora"), ("sft_lora", "dpo_full"), ("trl_sft_lora", "trl_dpo_lora")):
        if sft in results and dpo in results:
            ratios[f"{dpo}/{sft}"] = {"peak_rss": results[dpo]["peak_rss_mib"] / results[sft]["peak_rss_mib"],
                                      "s_per_step": results[dpo]["s_per_step"] / results[sft]["s_per_step"]}
            print(f"{dpo}/{sft}: peak RSS x{ratios[f'{dpo}/{sft}']['peak_rss']:.2f}, "
                  f"step time x{ratios[f'{dpo}/{sft}']['s_per_step']:.2f}")
    if "dpo_lora/sft_lora" in ratios:
        r = ratios["dpo_lora/sft_lora"]
        print(f"goals: peak <= 1.25x: {'met' if r['peak_rss'] <= 1.25 else 'NOT met'}; "
              f"step <= 2.2x: {'met' if r['s_per_step'] <= 2.2 else 'NOT met'}")
    if args.out:
        from meditune.io import write_json

        write_json(args.out, {"config": {"steps": args.steps, "batch": args.batch, "length": args.length,
                                         "model": "default (SmolLM2-135M-Instruct)", "device": "cpu"},
                              "results": results, "ratios": ratios})


if __name__ == "__main__":
    main()
